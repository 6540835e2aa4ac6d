"""The kernels for devices without a native one (MPS, XPU, PrivateUse1; csrc/ops/fallback_kernels.cpp).

No such device is attached here, so each registered kernel is called for its dispatch key with CPU
tensors (OpOverload._op_dk), where it must give the CPU kernel's bits; and a PrivateUse1 device is
emulated on the CPU (the key forced on the thread, every aten op it reaches run by the CPU kernel)
to run autograd and torch.compile through the fallback end to end.
"""

import contextlib
import re
import subprocess
import sys

import pytest
import torch
from torch._C import DispatchKey

import tinybig_cuda
from tinybig_cuda import _C

from conftest import DTYPES, DTYPE_IDS, assert_bitwise_equal, requires_compile

OPS = ["bernoulli_mask_apply", "bernoulli_mask", "bernoulli_mask_count", "bernoulli_mask_expand", "bernoulli_mask_compress"]
FALLBACK_KEYS = ["MPS", "XPU", "PrivateUse1"]


def op(name):
    return getattr(torch.ops.tinybig_cuda, name).default


def call(key, name, *args):
    return op(name)._op_dk(getattr(DispatchKey, key), *args)


def assert_same_bits(actual, expected):
    """The same bits, and the new contiguous tensor every kernel returns."""
    assert_bitwise_equal(actual, expected)
    assert actual.is_contiguous()


def special_values(dtype, shape, seed):
    """Random values with NaN, infinities and negative zeros mixed in: select semantics must hold."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    flat = w.view(-1)
    flat[::7] = float("nan")
    flat[1::11] = float("inf")
    flat[2::13] = -0.0
    return w


# ---------------------------------------------------------------- registrations


def dispatch_table(name):
    """{dispatch key: where its kernel was registered} for the keys that have one."""
    table = {}
    for line in torch._C._dispatch_dump_table(f"tinybig_cuda::{name}").splitlines():
        key, _, where = line.partition(": ")
        table[key] = where
    return table


@pytest.mark.parametrize("name", OPS)
def test_fallback_is_registered_for_exactly_the_devices_without_a_kernel(name):
    table = dispatch_table(name)
    fallback_keys = {key for key, where in table.items() if "fallback_kernels.cpp" in where}
    assert fallback_keys == set(FALLBACK_KEYS)
    # Nothing catches other devices: no composite kernel, the CPU kernel is the native one, and
    # CUDA has a kernel exactly when the CUDA kernels were built (a CUDA tensor errors otherwise).
    assert not any(key.startswith("Composite") for key in table)
    assert re.search(r"cpu[/\\](masking|compact)_cpu\.cpp", table["CPU"])
    assert ("CUDA" in table) == _C.has_cuda_kernels()
    if "CUDA" in table:
        assert re.search(r"cuda[/\\](masking|compact)_cuda\.cpp", table["CUDA"])


@pytest.mark.parametrize("name", ["bernoulli_mask_apply", "bernoulli_mask_expand", "bernoulli_mask_compress"])
@pytest.mark.parametrize("key", FALLBACK_KEYS)
def test_autograd_kernel_covers_the_fallback_devices(name, key):
    assert "autograd.cpp" in dispatch_table(name)[f"Autograd{key}"]


# ---------------------------------------------------------------- bits, through _op_dk


@pytest.mark.parametrize("key", FALLBACK_KEYS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "misaligned", "expanded"])
@pytest.mark.parametrize("p", [0.0, 0.37, 1.0])
def test_apply_matches_cpu_kernel(key, dtype, layout, p):
    w = special_values(dtype, (37, 29), seed=int(p * 100))
    if layout == "transposed":
        w = w.t()
    elif layout == "misaligned":
        w = w.view(-1)[1:1 + 36 * 29].view(36, 29)
    elif layout == "expanded":
        w = w[:1].expand(5, 29)
    for state, element_offset in ((torch.tensor([-1, 7]), 0), (torch.tensor([2**40, -(2**63)]), 2**33 + 3)):
        expected = call("CPU", "bernoulli_mask_apply", w, p, state, element_offset)
        assert_same_bits(call(key, "bernoulli_mask_apply", w, p, state, element_offset), expected)


@pytest.mark.parametrize("key", FALLBACK_KEYS)
@pytest.mark.parametrize("shape", [(0,), (1,), (13, 17), (2, 3, 129)])
def test_mask_and_count_match_cpu_kernels(key, shape):
    state = torch.tensor([0x0123456789ABCDEF, 5])
    numel = torch.Size(shape).numel()
    for p, element_offset in ((0.5, 0), (0.1, 3), (1.0, 2**45)):
        assert_same_bits(call(key, "bernoulli_mask", list(shape), p, state, element_offset),
                         call("CPU", "bernoulli_mask", list(shape), p, state, element_offset))
        assert_same_bits(call(key, "bernoulli_mask_count", numel, p, state, element_offset),
                         call("CPU", "bernoulli_mask_count", numel, p, state, element_offset))


@pytest.mark.parametrize("key", FALLBACK_KEYS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_expand_and_compress_match_cpu_kernels(key, dtype, p):
    state = torch.tensor([99, -3])
    full = special_values(dtype, (41, 23), seed=3).t()  # strided: compress reads logical order
    for element_offset in (0, 5, 2**34 + 1):
        kept = int(call("CPU", "bernoulli_mask_count", full.numel(), p, state, element_offset))
        values = call("CPU", "bernoulli_mask_compress", full, p, state, kept, element_offset)
        assert_same_bits(call(key, "bernoulli_mask_compress", full, p, state, kept, element_offset), values)
        expected = call("CPU", "bernoulli_mask_expand", values, p, state, list(full.shape), element_offset)
        assert_same_bits(call(key, "bernoulli_mask_expand", values, p, state, list(full.shape), element_offset), expected)


@pytest.mark.parametrize("key", FALLBACK_KEYS)
def test_errors_match_cpu_kernels(key):
    w = torch.randn(4, 5)
    state = torch.tensor([1, 2])
    cases = [
        ("bernoulli_mask_apply", (w.int(), 0.5, state, 0)),
        ("bernoulli_mask_apply", (w, 1.5, state, 0)),
        ("bernoulli_mask_apply", (w, 0.5, state.int(), 0)),
        ("bernoulli_mask_apply", (w, 0.5, torch.tensor([1, 2], device="meta"), 0)),
        ("bernoulli_mask_apply", (w, 0.5, state, -1)),
        ("bernoulli_mask", ([4, -5], 0.5, state, 0)),
        ("bernoulli_mask_count", (-1, 0.5, state, 0)),
        ("bernoulli_mask_expand", (torch.randn(3), 0.5, state, [4, 5], 0)),  # not the kept count
        ("bernoulli_mask_expand", (torch.randn(2, 2), 0.5, state, [4, 5], 0)),
        ("bernoulli_mask_compress", (w, 0.5, state, 3, 0)),  # not the kept count
        ("bernoulli_mask_compress", (w, float("nan"), state, 3, 0)),
    ]
    for name, args in cases:
        with pytest.raises(Exception) as cpu_error:
            call("CPU", name, *args)
        with pytest.raises(type(cpu_error.value), match=re.escape(str(cpu_error.value).splitlines()[0])):
            call(key, name, *args)


# ---------------------------------------------------------------- an emulated PrivateUse1 device


def _include_guard_restores_dispatch():
    """Whether leaving torch's _IncludeDispatchKeyGuard(PrivateUse1) gives CPU tensors back their CPU
    kernels: in some releases (2.6, 2.9) aten ops on CPU tensors still reach PrivateUse1 after it,
    for the rest of the process, so this asks a fresh interpreter."""
    probe = (
        "import torch\n"
        "with torch._C._IncludeDispatchKeyGuard(torch._C.DispatchKey.PrivateUse1):\n"
        "    pass\n"
        "torch.equal(torch.ones(2), torch.ones(2))\n"
    )
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


requires_emulation = pytest.mark.skipif(
    not hasattr(torch.library.Library, "fallback") or not _include_guard_restores_dispatch(),
    reason=f"torch {torch.__version__} keeps dispatching CPU tensors to PrivateUse1 after the emulation's dispatch-key guard",
)


@contextlib.contextmanager
def emulated_privateuse1():
    """Routes every op of this thread to its PrivateUse1 kernel: ours reach the fallback, and aten
    ops (which have none here) a fallback that runs their CPU kernel. Yields the aten ops it ran."""
    aten_calls = []

    def run_cpu_kernel(operator, *args, **kwargs):
        aten_calls.append(str(operator))
        return operator._op_dk(DispatchKey.CPU, *args, **kwargs)

    library = torch.library.Library("_", "IMPL")
    library.fallback(run_cpu_kernel, "PrivateUse1")
    try:
        with torch._C._IncludeDispatchKeyGuard(DispatchKey.PrivateUse1):
            yield aten_calls
    finally:
        library._destroy()


def masked_twice(w, state):
    return tinybig_cuda.bernoulli_mask_apply(w * 2, 0.4, state, 3) + 1


def forward_and_backward(function, w, state):
    w.grad = None
    out = function(w, state)
    out.sum().backward()
    return out.detach(), w.grad


@requires_emulation
@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=requires_compile)], ids=["eager", "compiled"])
def test_emulated_device_runs_autograd_and_compile_through_the_fallback(compiled):
    state = torch.tensor([5, 6])
    w = torch.randn(33, 65, dtype=torch.float64, requires_grad=True)
    expected_out, expected_grad = forward_and_backward(masked_twice, w, state)
    function = torch.compile(masked_twice, fullgraph=True) if compiled else masked_twice
    with emulated_privateuse1() as aten_calls:
        out, grad = forward_and_backward(function, w, state)
    # where_out is what the fallback applies the mask with: once forward, once backward.
    assert aten_calls.count("aten.where.self_out") == 2
    assert torch.equal(out, expected_out) and torch.equal(grad, expected_grad)


@requires_emulation
def test_emulated_device_runs_the_compact_ops_through_the_fallback():
    state = torch.tensor([8, 9])
    values = torch.randn(tinybig_cuda.count_kept(200, 0.3, state), requires_grad=True)
    expected_out, expected_grad = forward_and_backward(
        lambda v, s: tinybig_cuda.bernoulli_mask_expand(v, 0.3, s, (10, 20)) * 3, values, state)
    with emulated_privateuse1() as aten_calls:
        out, grad = forward_and_backward(
            lambda v, s: tinybig_cuda.bernoulli_mask_expand(v, 0.3, s, (10, 20)) * 3, values, state)
    # expand scatters forward; its backward is compress, which selects.
    assert "aten.masked_scatter_.default" in aten_calls
    assert any(call.startswith("aten.masked_select.") for call in aten_calls)
    assert torch.equal(out, expected_out) and torch.equal(grad, expected_grad)
