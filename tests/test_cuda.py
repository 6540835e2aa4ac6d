"""The CUDA build: its kernels are registered, its machine code has the intended shape, and (only
where a GPU is present) it gives the CPU's bits, also under CUDA graphs and on side streams.

Without a GPU the build is checked, not run: the kernel's per-thread body runs on the host in
the C++ tests (tests/cpp/test_simulated_cuda_launch.cpp, and
test_masked_matvec_simulated_cuda_launch.cpp for masked_linear's kernel) instead."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import tinybig_cuda
from tinybig_cuda import _C

from conftest import DTYPES, DTYPE_IDS, assert_bitwise_equal, random_bits, requires_opcheck

EXPECT_CUDA_BUILD = os.environ.get("TINYBIG_EXPECT_CUDA_BUILD") == "1"
OPS = ("tinybig_cuda::bernoulli_mask_apply", "tinybig_cuda::bernoulli_mask")

needs_cuda_build = pytest.mark.skipif(
    not _C.has_cuda_kernels() and not EXPECT_CUDA_BUILD, reason="CPU-only build of tinybig_cuda"
)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")


@pytest.mark.skipif(not EXPECT_CUDA_BUILD, reason="TINYBIG_EXPECT_CUDA_BUILD is not 1: no CUDA build is expected")
def test_build_matches_expectation():
    """In CI's CUDA leg, a CPU-only build is a failure, not a skip."""
    assert _C.has_cuda_kernels(), "TINYBIG_EXPECT_CUDA_BUILD=1 but the CUDA kernels were not built"


@needs_cuda_build
@pytest.mark.parametrize("op", OPS)
def test_cuda_kernel_is_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU")


def find_cuobjdump():
    candidates = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump"]
    try:
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    except ImportError:
        pass
    found = [path for path in candidates if path.exists()] or ([Path(shutil.which("cuobjdump"))] if shutil.which("cuobjdump") else [])
    if not found:
        pytest.fail("no cuobjdump found (it ships with the CUDA toolkit and with triton)")
    return found[0]


@pytest.fixture(scope="module")
def sass_by_kernel():
    """{(architecture, element bytes): SASS text} for every compiled masked-copy kernel."""
    dump = subprocess.run([find_cuobjdump(), "--dump-sass", tinybig_cuda.op_library_path], capture_output=True, text=True, check=True).stdout
    element_bytes = {"h": 1, "t": 2, "j": 4, "m": 8}  # Itanium mangling of uint8/16/32/64
    kernels = {}
    for arch, body in re.findall(r"arch = (sm_\d+).*?\n(.*?)(?=\n\s*arch = sm_|\Z)", dump, flags=re.S):
        for mangled, text in re.findall(r"Function : (\S+)\n(.*?)(?=Function : |\Z)", body, flags=re.S):
            if re.search(r"compact_cu_\w+_kernel|masked_matvec_kernel", mangled):
                continue  # the compact ops' and masked_linear's kernels: checked below
            match = re.search(r"masked_copy_kernelI(\w)E", mangled)
            assert match, f"unexpected kernel {mangled}"
            kernels[(arch, element_bytes[match.group(1)])] = text
    return kernels


@needs_cuda_build
def test_every_architecture_has_every_kernel(sass_by_kernel):
    architectures = {arch for arch, _ in sass_by_kernel}
    assert architectures, "no SASS found in the extension"
    assert {size for _, size in sass_by_kernel} == {1, 2, 4, 8}
    assert len(sass_by_kernel) == 4 * len(architectures)


@needs_cuda_build
def test_float32_path_uses_16_byte_loads_and_stores(sass_by_kernel):
    for (arch, size), sass in sass_by_kernel.items():
        if size in (2, 4):
            assert re.search(r"LDG\.E\.128", sass), f"{arch}, {size}-byte kernel: no 16-byte global load"
            assert re.search(r"STG\.E\.128", sass), f"{arch}, {size}-byte kernel: no 16-byte global store"


@needs_cuda_build
def test_no_kernel_touches_local_memory(sass_by_kernel):
    for key, sass in sass_by_kernel.items():
        assert not re.search(r"\b(LDL|STL)\b", sass), f"{key}: local-memory traffic (spills or a stack array)"


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("make_view", [lambda t: t, lambda t: t[1:], lambda t: t.view(-1, 7).t()], ids=["whole", "misaligned", "transposed"])
def test_cuda_matches_cpu_bit_for_bit(dtype, make_view):
    w = make_view(torch.randn(4099 * 7 + 1).to(dtype)[: 4099 * 7])
    state = torch.tensor([-3, 2**63 - 1])
    cpu = tinybig_cuda.bernoulli_mask_apply(w, 0.4, state)
    cuda = tinybig_cuda.bernoulli_mask_apply(w.cuda(), 0.4, state.cuda())
    assert torch.equal(cpu.view(torch.uint8), cuda.cpu().view(torch.uint8))


@requires_opcheck
@needs_gpu
def test_opcheck_on_cuda():
    w = torch.randn(37, 129, device="cuda", dtype=torch.float64, requires_grad=True)
    state = torch.tensor([1, 2], device="cuda")
    torch.library.opcheck(torch.ops.tinybig_cuda.bernoulli_mask_apply.default, (w, 0.5, state, 0))


@needs_gpu
def test_graph_replay_reads_the_new_state():
    w = torch.randn(1000, device="cuda")
    state = torch.tensor([1, 2], device="cuda")
    tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)  # warm up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    for seed in (7, -8):
        state.copy_(torch.tensor([seed, 3]))
        graph.replay()
        expected = tinybig_cuda.bernoulli_mask_apply(w.cpu(), 0.5, torch.tensor([seed, 3]))
        assert torch.equal(out.cpu(), expected)


@needs_gpu
def test_side_stream():
    w = torch.randn(5000, device="cuda")
    state = torch.tensor([5, 6], device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(out.cpu(), tinybig_cuda.bernoulli_mask_apply(w.cpu(), 0.5, state.cpu()))


@pytest.fixture
def sync_is_an_error():
    """Any host sync torch sees (c10's copy-and-sync included) raises, until the test ends."""
    torch.cuda.set_sync_debug_mode("error")
    yield
    torch.cuda.set_sync_debug_mode("default")


@needs_gpu
def test_compact_ops_with_a_cpu_state_check_the_count_without_a_sync(request):
    state = torch.tensor([3, -4])
    full = torch.randn(300, 70, device="cuda")
    kept = tinybig_cuda.count_kept(full.numel(), 0.3, state)  # on the CPU: the state's device
    values = tinybig_cuda.bernoulli_mask_compress(full, 0.3, state, kept)  # ranks the mask: one sync
    cuda_state = state.cuda()
    request.getfixturevalue("sync_is_an_error")
    again = tinybig_cuda.bernoulli_mask_compress(full, 0.3, state, kept)
    expanded = tinybig_cuda.bernoulli_mask_expand(values, 0.3, state, full.shape)
    with pytest.raises(ValueError, match="kept_count"):
        tinybig_cuda.bernoulli_mask_compress(full, 0.3, state, kept + 1)
    with pytest.raises(ValueError, match="values"):
        tinybig_cuda.bernoulli_mask_expand(values[1:], 0.3, state, full.shape)
    # A state on the GPU cannot be read without waiting: each call syncs, and torch sees it.
    with pytest.raises(RuntimeError, match="synchroniz"):
        tinybig_cuda.bernoulli_mask_compress(full, 0.3, cuda_state, kept)
    torch.cuda.set_sync_debug_mode("default")
    expected = tinybig_cuda.bernoulli_mask_compress(full.cpu(), 0.3, state, kept)
    assert torch.equal(values.cpu(), expected) and torch.equal(again.cpu(), expected)
    assert torch.equal(expanded.cpu(), tinybig_cuda.bernoulli_mask_apply(full.cpu(), 0.3, state))


@needs_gpu
def test_compact_module_with_a_cpu_state_trains_on_cuda_without_a_sync(request):
    n, D = 64, 48
    module = tinybig_cuda.masking_reconciliation(p=0.3, compact=True)  # its state stays on the CPU
    w = torch.randn(1, module.calculate_l(n, D), device="cuda", requires_grad=True)
    module(n, D, w).sum().backward()  # pins the state, ranks the mask
    assert module.rng_state.device.type == "cpu" and module.rng_state.is_pinned()
    request.getfixturevalue("sync_is_an_error")
    w.grad = None
    out = module(n, D, w)
    out.sum().backward()
    torch.cuda.set_sync_debug_mode("default")
    cpu_w = w.detach().cpu().requires_grad_()
    cpu_out = module(n, D, cpu_w)
    cpu_out.sum().backward()
    assert torch.equal(out.detach().cpu(), cpu_out.detach()) and torch.equal(w.grad.cpu(), cpu_w.grad)
    # Moved with .to(), the state stays on the GPU (each call then reads it back) and gives the same bits.
    module.cuda()
    assert torch.equal(module(n, D, w).cpu(), cpu_out.detach()) and module.rng_state.is_cuda


@needs_gpu
def test_compact_graph_replays_read_a_pinned_cpu_state():
    state = torch.tensor([9, 10]).pin_memory()
    full = torch.randn(129, 65, device="cuda")
    kept = tinybig_cuda.count_kept(full.numel(), 0.6, state)
    values = tinybig_cuda.bernoulli_mask_compress(full, 0.6, state, kept)  # warm-up: ranks and caches
    tinybig_cuda.bernoulli_mask_expand(values, 0.6, state, full.shape)  # and loads the expand kernel
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        expanded = tinybig_cuda.bernoulli_mask_expand(values, 0.6, state, full.shape)
    tinybig_cuda.empty_compact_cache()  # the graph owns what it replays on
    assert tinybig_cuda.count_kept(full.numel(), 0.6, torch.tensor([11, -12])) != kept
    for new_state in ([9, 10], [11, -12]):
        state.copy_(torch.tensor(new_state))
        values.mul_(-2.0)
        graph.replay()
        # A state whose mask keeps another count: the graph scatters what values has, zeros past it.
        mask = tinybig_cuda.bernoulli_mask(full.shape, 0.6, state).reshape(-1)
        kept_here = mask.nonzero().squeeze(1)[: values.numel()]
        expected = torch.zeros(full.numel())
        expected[kept_here] = values.cpu()[: kept_here.numel()]
        assert torch.equal(expanded.cpu().reshape(-1), expected)
    with pytest.raises(ValueError, match=r"rng_state.*pinned"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            tinybig_cuda.bernoulli_mask_expand(values, 0.6, torch.tensor([9, 10]), full.shape)

# ---------------------------------------------------------------- the compact ops' kernels


@needs_cuda_build
@pytest.mark.parametrize("op", ["bernoulli_mask_count", "bernoulli_mask_expand", "bernoulli_mask_compress"])
def test_compact_cuda_kernels_are_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tinybig_cuda::{op}", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tinybig_cuda::{op}", "CPU")


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("element_offset", [0, 5, 2**33 + 3])
def test_compact_cuda_matches_cpu_bit_for_bit(dtype, element_offset):
    state, p, shape = torch.tensor([-3, 2**63 - 1]), 0.4, (257, 1031)  # > 1024 chunks of 64
    full = random_bits(shape, dtype)
    kept = tinybig_cuda.count_kept(full.numel(), p, state, element_offset)
    assert tinybig_cuda.count_kept(full.numel(), p, state.cuda(), element_offset) == kept
    values = tinybig_cuda.bernoulli_mask_compress(full, p, state, kept, element_offset)
    cuda_values = tinybig_cuda.bernoulli_mask_compress(full.cuda(), p, state.cuda(), kept, element_offset)
    assert_bitwise_equal(cuda_values.cpu(), values)
    # A view starting one element into its storage takes the element-wise path of the kernel.
    misaligned = torch.cat([full.reshape(-1)[:1], full.reshape(-1)]).cuda()[1:].view(shape)
    assert_bitwise_equal(tinybig_cuda.bernoulli_mask_compress(misaligned, p, state.cuda(), kept, element_offset).cpu(), values)
    expanded = tinybig_cuda.bernoulli_mask_expand(values.cuda(), p, state.cuda(), shape, element_offset)
    assert_bitwise_equal(expanded.cpu(), tinybig_cuda.bernoulli_mask_expand(values, p, state, shape, element_offset))


@pytest.fixture(scope="module")
def compact_sass():
    """{(architecture, kernel, element bytes or None): SASS text} of the compact kernels."""
    import subprocess

    dump = subprocess.run([find_cuobjdump(), "--dump-sass", tinybig_cuda.op_library_path], capture_output=True, text=True, check=True).stdout
    element_bytes = {"t": 2, "j": 4, "m": 8}  # Itanium mangling of uint16/32/64
    kernels = {}
    for arch, body in re.findall(r"arch = (sm_\d+).*?\n(.*?)(?=\n\s*arch = sm_|\Z)", dump, flags=re.S):
        for mangled, text in re.findall(r"Function : (\S+)\n(.*?)(?=Function : |\Z)", body, flags=re.S):
            if "compact_cu" not in mangled:
                continue
            match = re.search(r"(count_chunks|sum_segments|scan_segments|segment_offsets|expand|compress)_kernel(?:I(\w)E)?", mangled)
            assert match, f"unexpected compact kernel {mangled}"
            kernels[(arch, match.group(1), element_bytes.get(match.group(2)))] = text
    return kernels


@needs_cuda_build
def test_compact_kernels_compiled_for_every_architecture_without_local_memory(compact_sass):
    architectures = {arch for arch, _, _ in compact_sass}
    assert architectures, "no compact kernels in the extension's SASS"
    expected = {("count_chunks", None), ("sum_segments", None), ("scan_segments", None), ("segment_offsets", None)}
    expected |= {(kernel, size) for kernel in ("expand", "compress") for size in (2, 4, 8)}
    for arch in architectures:
        assert {(kernel, size) for a, kernel, size in compact_sass if a == arch} == expected, arch
    for key, sass in compact_sass.items():
        assert not re.search(r"\b(LDL|STL)\b", sass), f"{key}: local-memory traffic (spills or a stack array)"
        # The full matrix moves in 16-byte vectors: stored by expand, loaded by compress.
        if key[1] == "expand":
            assert re.search(r"STG\.E\.128", sass), f"{key}: no 16-byte global store"
        if key[1] == "compress":
            assert re.search(r"LDG\.E\.128", sass), f"{key}: no 16-byte global load"


# ---------------------------------------------------------------- masked_linear's small-batch kernel


@needs_cuda_build
def test_masked_linear_has_its_own_cuda_kernel():
    table = torch._C._dispatch_dump_table("tinybig_cuda::masked_linear")
    assert re.search(r"^CUDA: .*cuda[/\\]masked_linear_cuda\.cpp", table, flags=re.M), table


@needs_cuda_build
def test_masked_matvec_kernels_compiled_for_every_architecture_without_local_memory():
    dump = subprocess.run([find_cuobjdump(), "--dump-sass", tinybig_cuda.op_library_path], capture_output=True, text=True, check=True).stdout
    kernels = {}
    for arch, body in re.findall(r"arch = (sm_\d+).*?\n(.*?)(?=\n\s*arch = sm_|\Z)", dump, flags=re.S):
        for mangled, text in re.findall(r"Function : (\S+)\n(.*?)(?=Function : |\Z)", body, flags=re.S):
            match = re.search(r"masked_matvec_kernelI([fd])Li(\d)E", mangled)
            if match:
                kernels[(arch, match.group(1), int(match.group(2)))] = text
    architectures = {arch for arch, _, _ in kernels}
    assert architectures, "no masked_matvec kernels in the extension's SASS"
    for arch in architectures:  # float and double, batches 1 to 4
        assert {(t, b) for a, t, b in kernels if a == arch} == {(t, b) for t in "fd" for b in range(1, 5)}, arch
    for key, sass in kernels.items():
        assert not re.search(r"\b(LDL|STL)\b", sass), f"{key}: local-memory traffic (spills or a stack array)"


@needs_gpu
@pytest.mark.parametrize("batch", [1, 2, 4, 5])  # 5: the blocked product
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_masked_linear_small_batches_on_cuda_match_the_cpu(batch, dtype):
    state = torch.tensor([-3, 2**63 - 1])
    w = torch.randn(301, 1001, dtype=dtype)
    columns = torch.randint(0, 1001, (batch,))
    one_hot = torch.nn.functional.one_hot(columns, 1001).to(dtype)  # reads single weights: exact
    cpu = tinybig_cuda.masked_linear(one_hot, w, 0.4, state)
    assert_bitwise_equal(tinybig_cuda.masked_linear(one_hot.cuda(), w.cuda(), 0.4, state.cuda()).cpu(), cpu)
    x, bias = torch.randn(batch, 1001, dtype=dtype), torch.randn(301, dtype=dtype)
    torch.testing.assert_close(tinybig_cuda.masked_linear(x.cuda(), w.cuda(), 0.4, state.cuda(), bias.cuda()).cpu(),
                               tinybig_cuda.masked_linear(x, w, 0.4, state, bias))


@needs_gpu
def test_masked_linear_graph_replay_reads_the_new_state():
    w, x = torch.randn(300, 500, device="cuda"), torch.randn(1, 500, device="cuda")
    state = torch.tensor([1, 2], device="cuda")
    tinybig_cuda.masked_linear(x, w, 0.5, state)  # warm up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = tinybig_cuda.masked_linear(x, w, 0.5, state)
    for seed in (7, -8):
        state.copy_(torch.tensor([seed, 3]))
        graph.replay()
        expected = tinybig_cuda.masked_linear(x.cpu(), w.cpu(), 0.5, torch.tensor([seed, 3]))
        torch.testing.assert_close(y.cpu(), expected)
