"""Compact parameters: the count, expand and compress ops, and masking_reconciliation(compact=True).

Every op output is compared bit for bit, with the pure-PyTorch reference (tinybig_cuda.reference)
and with bernoulli_mask_apply, whose mask (docs/contract.md, 'Mask definition') the compact ops
must share exactly."""

import io
import os
import re

import pytest
import torch

import tinybig_cuda
from tinybig_cuda import _C, masking_reconciliation, reference

from conftest import (
    CUDA_AVAILABLE,
    DEVICES,
    DTYPE_IDS,
    DTYPES,
    LAYOUTS,
    Snapshot,
    assert_bitwise_equal,
    error_pattern,
    make_input,
    make_state,
    random_bits,
    random_values,
    requires_compile,
    requires_opcheck,
)

COUNT = torch.ops.tinybig_cuda.bernoulli_mask_count.default
EXPAND = torch.ops.tinybig_cuda.bernoulli_mask_expand.default
COMPRESS = torch.ops.tinybig_cuda.bernoulli_mask_compress.default

# Odd sizes: single elements, partial Philox blocks, partial 64-element CUDA chunks, and more than
# one 2**16-element CPU chunk.
SHAPES = [(1,), (3,), (7, 9), (65, 3), (1, 4099), (300, 301)]
SHAPE_IDS = ["1", "3", "7x9", "65x3", "1x4099", "300x301"]
PROBABILITIES = [0.0, 0.3, 0.5, 1.0]


def _state(device="cpu"):
    return make_state(0x0123456789ABCDEF, -(2**40) + 3, device)


def _kept(shape, p, state, element_offset=0):
    return reference.bernoulli_mask_count(torch.Size(shape).numel(), p, state.cpu(), element_offset)


# ---------------------------------------------------------------- count


@pytest.mark.slow  # 84 cases against the reference's Philox in PyTorch
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", PROBABILITIES + [1e-9, 0.999999])
@pytest.mark.parametrize("numel", [0, 1, 5, 64, 4099, 2**16 + 1, 300 * 301])
def test_count_is_the_masks_popcount(device, p, numel):
    for seed, offset, element_offset in [(1, 2, 0), (-1, 2**63 - 1, 3), (2**32, -(2**63), 2**40 + 1)]:
        state = make_state(seed, offset, device)
        count = tinybig_cuda.bernoulli_mask_count(numel, p, state, element_offset)
        assert count.dtype == torch.int64 and count.shape == () and count.device == state.device
        expected = int(tinybig_cuda.bernoulli_mask((numel,), p, state, element_offset).sum())
        assert int(count) == expected == reference.bernoulli_mask_count(numel, p, state.cpu(), element_offset)
        assert tinybig_cuda.count_kept(numel, p, state, element_offset) == expected
    if p in (0.0, 1.0):
        assert expected == numel * p


def test_count_of_a_large_matrix_is_near_p_times_numel():
    numel = 2**22
    for p in (0.1, 0.25, 0.5):
        kept = tinybig_cuda.count_kept(numel, p, make_state(5, 6))
        sigma = (numel * p * (1 - p)) ** 0.5
        assert abs(kept - p * numel) < 5 * sigma


# ---------------------------------------------------------------- expand and compress


@pytest.mark.slow  # 192 cases with the reference's Philox in PyTorch
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("p", PROBABILITIES)
def test_expand_equals_masking_its_own_expansion_and_the_reference(device, dtype, shape, p):
    state = _state(device)
    kept = _kept(shape, p, state)
    values = random_bits((kept,), dtype, device, seed=kept)  # NaNs, infinities and -0.0 included
    snapshot = Snapshot(values, state)
    full = tinybig_cuda.bernoulli_mask_expand(values, p, state, shape)
    snapshot.assert_unchanged()
    assert full.is_contiguous()
    assert_bitwise_equal(full, reference.bernoulli_mask_expand(values, p, state, shape))
    # Already masked: masking it again changes no bit.
    assert_bitwise_equal(tinybig_cuda.bernoulli_mask_apply(full, p, state), full)
    # And the kept positions hold values, in row-major order.
    mask = tinybig_cuda.bernoulli_mask(shape, p, state)
    assert_bitwise_equal(full[mask], values)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("p", PROBABILITIES)
def test_compress_then_expand_is_masking_and_expand_then_compress_is_identity(device, dtype, shape, p):
    state = _state(device)
    full = random_bits(shape, dtype, device, seed=1)
    kept = _kept(shape, p, state)
    snapshot = Snapshot(full, state)
    values = tinybig_cuda.bernoulli_mask_compress(full, p, state, kept)
    snapshot.assert_unchanged()
    assert values.shape == (kept,) and values.is_contiguous()
    assert_bitwise_equal(values, reference.bernoulli_mask_compress(full, p, state))
    expanded = tinybig_cuda.bernoulli_mask_expand(values, p, state, shape)
    assert_bitwise_equal(expanded, tinybig_cuda.bernoulli_mask_apply(full, p, state))
    assert_bitwise_equal(tinybig_cuda.bernoulli_mask_compress(expanded, p, state, kept), values)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_compress_reads_any_layout_in_row_major_order(device, layout):
    state = _state(device)
    full = make_input((37, 41), layout, torch.float32, device, seed=3)
    values = tinybig_cuda.bernoulli_mask_compress(full, 0.4, state)
    assert_bitwise_equal(values, reference.bernoulli_mask_compress(full.contiguous(), 0.4, state))


@pytest.mark.parametrize("device", DEVICES)
def test_expand_reads_strided_values(device):
    state = _state(device)
    kept = _kept((40, 50), 0.5, state)
    wide = random_bits((2 * kept,), torch.float32, device)
    strided = wide[::2]
    assert not strided.is_contiguous()
    assert_bitwise_equal(
        tinybig_cuda.bernoulli_mask_expand(strided, 0.5, state, (40, 50)),
        tinybig_cuda.bernoulli_mask_expand(strided.contiguous(), 0.5, state, (40, 50)),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_element_offset_shards_concatenate_to_the_whole(device):
    """A matrix split into row shards at any element_offset: each shard's compact values are the
    whole matrix's values for its rows, counted from the shard's first kept entry."""
    state, p, shape = _state(device), 0.35, (101, 67)
    full = random_bits(shape, torch.float64, device)
    whole_values = tinybig_cuda.bernoulli_mask_compress(full, p, state)
    whole_full = tinybig_cuda.bernoulli_mask_expand(whole_values, p, state, shape)
    rank = 0
    for begin, end in [(0, 1), (1, 30), (30, 31), (31, 101)]:
        element_offset = begin * shape[1]
        shard = full[begin:end]
        kept = tinybig_cuda.count_kept(shard.numel(), p, state, element_offset)
        shard_values = tinybig_cuda.bernoulli_mask_compress(shard, p, state, kept, element_offset)
        assert_bitwise_equal(shard_values, whole_values[rank : rank + kept])
        shard_full = tinybig_cuda.bernoulli_mask_expand(shard_values, p, state, shard.shape, element_offset)
        assert_bitwise_equal(shard_full, whole_full[begin:end])
        assert_bitwise_equal(shard_full, tinybig_cuda.bernoulli_mask_apply(shard, p, state, element_offset))
        rank += kept
    assert rank == whole_values.numel()


@pytest.mark.parametrize("device", DEVICES)
def test_empty_matrices(device):
    state = _state(device)
    for shape in [(0,), (0, 5), (5, 0)]:
        values = torch.empty(0, device=device)
        assert tinybig_cuda.count_kept(0, 0.5, state) == 0
        assert tinybig_cuda.bernoulli_mask_expand(values, 0.5, state, shape).shape == shape
        assert tinybig_cuda.bernoulli_mask_compress(torch.empty(shape, device=device), 0.5, state, 0).shape == (0,)


def test_same_bits_on_every_thread_count_and_cpu_instruction_set(restore_num_threads):
    state, p, shape = _state(), 0.5, (513, 517)  # several 2**16-element chunks
    full = random_bits(shape, torch.float32)
    kept = _kept(shape, p, state)
    expected_values = reference.bernoulli_mask_compress(full, p, state)
    expected_full = reference.bernoulli_mask_expand(expected_values, p, state, shape)
    try:
        for isa in _C.supported_cpu_isas():
            _C.set_cpu_isa(isa)
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                assert tinybig_cuda.count_kept(full.numel(), p, state) == kept
                assert_bitwise_equal(tinybig_cuda.bernoulli_mask_compress(full, p, state, kept), expected_values)
                assert_bitwise_equal(tinybig_cuda.bernoulli_mask_expand(expected_values, p, state, shape), expected_full)
    finally:
        _C.set_cpu_isa("auto")


# ---------------------------------------------------------------- autograd and custom-op checks


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_flow_into_exactly_the_kept_entries(device):
    state, p, shape = _state(device), 0.3, (23, 29)
    kept = _kept(shape, p, state)
    values = random_values((kept,), torch.float64, device).requires_grad_()
    grad_full = random_values(shape, torch.float64, device, seed=9)
    tinybig_cuda.bernoulli_mask_expand(values, p, state, shape).backward(grad_full)
    mask = tinybig_cuda.bernoulli_mask(shape, p, state)
    assert torch.equal(values.grad, grad_full[mask])

    full = random_values(shape, torch.float64, device).requires_grad_()
    grad_values = random_values((kept,), torch.float64, device, seed=4)
    tinybig_cuda.bernoulli_mask_compress(full, p, state, kept).backward(grad_values)
    assert torch.equal(full.grad[mask], grad_values)
    assert torch.equal(full.grad[~mask], torch.zeros_like(full.grad[~mask]))


@requires_opcheck
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["float32", "float64", "bfloat16"])
def test_opcheck(device, requires_grad, dtype):
    state, shape = _state(device), (9, 13)
    for p, element_offset in [(0.5, 0), (0.3, 7)]:
        kept = _kept(shape, p, state, element_offset)
        values = torch.randn(kept, device=device).to(dtype).requires_grad_(requires_grad)
        full = torch.randn(shape, device=device).to(dtype).requires_grad_(requires_grad)
        torch.library.opcheck(EXPAND, (values, p, state, list(shape), element_offset))
        torch.library.opcheck(COMPRESS, (full, p, state, kept, element_offset))
        torch.library.opcheck(COMPRESS, (full.t(), p, state, _kept(shape[::-1], p, state, element_offset), element_offset))
    torch.library.opcheck(COUNT, (117, 0.5, state, 3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_gradcheck_and_gradgradcheck_float64(device, p):
    state, shape = _state(device), (6, 7)
    kept = _kept(shape, p, state, 5)
    values = torch.randn(kept, dtype=torch.float64, device=device, requires_grad=True)
    full = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)

    def expand(values):
        return tinybig_cuda.bernoulli_mask_expand(values, p, state, shape, element_offset=5)

    def compress(full):
        return tinybig_cuda.bernoulli_mask_compress(full, p, state, kept, element_offset=5)

    for function, argument in [(expand, values), (compress, full)]:
        assert torch.autograd.gradcheck(function, (argument,))
        assert torch.autograd.gradgradcheck(function, (argument,))


@requires_compile
def test_compiled_compact_module_matches_eager():
    torch.manual_seed(0)
    module = masking_reconciliation(p=0.4, compact=True)
    n, D = 33, 17
    w = torch.randn(1, module.calculate_l(n, D), requires_grad=True)

    def step(w):
        return (module(w=w, n=n, D=D) ** 2).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_loss = step(w)
    (eager_grad,) = torch.autograd.grad(eager_loss, w)
    compiled_loss = compiled(w)
    (compiled_grad,) = torch.autograd.grad(compiled_loss, w)
    assert torch.equal(compiled_loss, eager_loss) and torch.equal(compiled_grad, eager_grad)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("device", DEVICES)
def test_values_of_the_wrong_length_are_refused(device):
    state, shape = _state(device), (20, 30)
    kept = _kept(shape, 0.5, state)
    for wrong in (kept - 1, kept + 1, 0, 600):
        values = torch.randn(wrong, device=device)
        snapshot = Snapshot(values, state)
        with pytest.raises(ValueError, match=error_pattern("values", rf"\b{kept}\b", rf"\b{wrong}\b")):
            tinybig_cuda.bernoulli_mask_expand(values, 0.5, state, shape)
        snapshot.assert_unchanged()
        full = torch.randn(shape, device=device)
        with pytest.raises(ValueError, match=error_pattern("kept_count", rf"\b{kept}\b", rf"\b{wrong}\b")):
            tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, wrong)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_arguments_are_refused_with_named_messages(device):
    state = _state(device)
    values, full = torch.randn(5, device=device), torch.randn(3, 4, device=device)
    with pytest.raises(ValueError, match=error_pattern("values", "1-D", r"\[5, 1\]")):
        tinybig_cuda.bernoulli_mask_expand(values.view(5, 1), 0.5, state, (3, 4))
    with pytest.raises(TypeError, match=error_pattern("values", "float32", r"\b(Long|int64)\b")):
        tinybig_cuda.bernoulli_mask_expand(values.long(), 0.5, state, (3, 4))
    with pytest.raises(TypeError, match=error_pattern("full", "float32", r"\b(Int|int32)\b")):
        tinybig_cuda.bernoulli_mask_compress(full.int(), 0.5, state, 5)
    with pytest.raises(ValueError, match=error_pattern("kept_count", ">= 0", "-1")):
        tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, -1)
    with pytest.raises(ValueError, match=error_pattern("numel", ">= 0", "-3")):
        tinybig_cuda.bernoulli_mask_count(-3, 0.5, state)
    with pytest.raises(ValueError, match=error_pattern("shape", "non-negative", re.escape("[3, -4]"))):
        tinybig_cuda.bernoulli_mask_expand(values, 0.5, state, (3, -4))
    for call in (
        lambda p: tinybig_cuda.bernoulli_mask_count(12, p, state),
        lambda p: tinybig_cuda.bernoulli_mask_expand(values, p, state, (3, 4)),
        lambda p: tinybig_cuda.bernoulli_mask_compress(full, p, state, 5),
    ):
        with pytest.raises(ValueError, match=error_pattern("p", r"\[0, 1\]", re.escape("1.0000001"))):
            call(1.0000001)
    with pytest.raises(ValueError, match=error_pattern("element_offset", ">= 0", "-2")):
        tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, 5, element_offset=-2)
    with pytest.raises(ValueError, match=error_pattern("rng_state", re.escape(str(torch.device(device))), "meta")):
        tinybig_cuda.bernoulli_mask_expand(values, 0.5, state.to("meta"), (3, 4))


def test_expand_and_compress_take_a_cpu_state_with_data_on_any_device():
    """A CPU state lets the host check the kept count without waiting for the device (on CUDA, no
    sync). Checked here on the meta device (the fake kernels' rules); the CUDA kernels' use of it
    is in tests/test_cuda.py."""
    state = _state("cpu")
    kept = tinybig_cuda.count_kept(12, 0.5, state)
    full = tinybig_cuda.bernoulli_mask_expand(torch.empty(kept, device="meta"), 0.5, state, (3, 4))
    assert full.device.type == "meta" and full.shape == (3, 4)
    values = tinybig_cuda.bernoulli_mask_compress(torch.empty(3, 4, device="meta"), 0.5, state, kept)
    assert values.device.type == "meta" and values.shape == (kept,)
    # The masking ops read the state on the data's device: only the compact ops need the count.
    with pytest.raises(ValueError, match=error_pattern("rng_state", "meta", "cpu")):
        tinybig_cuda.bernoulli_mask_apply(torch.empty(3, 4, device="meta"), 0.5, state)


# ---------------------------------------------------------------- the compact module


class Head(torch.nn.Module):
    """tinyBIG's head, reduced to its use of a fabrication: w = Parameter(rand(channels, l)), and per
    channel F.linear(x, fab(w=w[c:c+1, :], n=n, D=D))."""

    def __init__(self, fabrication, n, D, channels=1):
        super().__init__()
        self.fabrication, self.n, self.D = fabrication, n, D
        self.w = torch.nn.Parameter(torch.rand(channels, fabrication.calculate_l(n=n, D=D)))

    def forward(self, x):
        return sum(
            torch.nn.functional.linear(x, self.fabrication(w=self.w[c : c + 1, :], n=self.n, D=self.D))
            for c in range(self.w.shape[0])
        )


def _full_and_compact(p, device="cpu"):
    """A full and a compact module with the same mask."""
    full = masking_reconciliation(p=p, device=device)
    compact = masking_reconciliation(p=p, compact=True, device=device)
    compact.load_state_dict(full.state_dict())
    return full, compact


def test_compact_module_leaves_a_cpu_state_on_the_cpu():
    """The host reads a CPU state without waiting for the device, so on CUDA a compact module whose
    state is on the CPU checks w's count with no sync (tests/test_cuda.py). Here the data is on the
    meta device, where a state moved with it could not even be read."""
    n, D = 9, 7
    module = masking_reconciliation(p=0.3, compact=True)
    w = torch.empty(1, module.calculate_l(n, D), device="meta")
    for _ in range(2):
        assert module(n, D, w).device.type == "meta"
        assert module.rng_state.device.type == "cpu"
    assert module.mask_matrix.device.type == "meta"  # the mask of the last call, on its device
    assert module.expand_parameters(w, n, D).shape == (1, n * D)
    assert module.compress_parameters(torch.empty(2, n * D, device="meta"), n, D).shape == (2, w.shape[-1])
    assert module.rng_state.device.type == "cpu"


@pytest.mark.parametrize("p, n, D", [(1e-12, 3, 4), (0.5, 0, 4), (0.5, 3, 0)], ids=["nothing kept", "n=0", "D=0"])
@pytest.mark.parametrize("rows", [(2,), (), (0,)], ids=["2 rows", "1-D", "no rows"])
def test_conversions_of_a_mask_that_keeps_nothing_or_of_no_matrix(p, n, D, rows):
    """K = 0 (a tiny p) or n*D = 0: every shape is known from the arguments, so nothing is ambiguous."""
    module = masking_reconciliation(p=p, compact=True)
    assert module.calculate_l(n, D) == 0
    full = random_values(rows + (n * D,), torch.float32)
    compact = module.compress_parameters(full, n, D)
    assert compact.shape == rows + (0,)
    expanded = module.expand_parameters(compact, n, D)
    assert_bitwise_equal(expanded, torch.zeros(rows + (n * D,)))
    assert_bitwise_equal(module(n, D, compact.reshape(-1)), torch.zeros(n, D))


def test_compact_requires_a_fixed_mask():
    with pytest.raises(ValueError, match=error_pattern("fixed_mask", "True", "False")):
        masking_reconciliation(p=0.5, fixed_mask=False, compact=True)
    # compact is keyword-only: positional arguments after fixed_mask still reach fabrication.
    module = masking_reconciliation("m", 0.5, True, True, False, "cpu")
    assert module.compact is False and module.require_parameters is True and module.enable_bias is False


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_calculate_l_is_the_kept_count(device, p):
    module = masking_reconciliation(p=p, compact=True, device=device)
    for n, D in [(1, 1), (6, 11), (0, 7), (128, 3)]:
        expected = int(module.generate_masking_matrix(n, D, device=device).sum())
        assert module.calculate_l(n, D) == expected == module.calculate_l(n=n, D=D)
        if p in (0.0, 1.0):
            assert expected == p * n * D
    assert "compact=True" in repr(module)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("w_shape", ["1xK", "K"])
def test_compact_forward_equals_full_forward(device, w_shape):
    n, D, p = 31, 19, 0.3
    full, compact = _full_and_compact(p, device)
    K = compact.calculate_l(n, D)
    values = random_bits((K,), torch.float32, device)
    w = values.view(1, K) if w_shape == "1xK" else values
    out = compact(w=w, n=n, D=D, device=device)
    assert out.shape == (n, D) and out.dtype == w.dtype and out.is_contiguous()
    assert_bitwise_equal(out, full(w=compact.expand_parameters(values.view(1, K), n, D), n=n, D=D, device=device))
    assert_bitwise_equal(out, reference.bernoulli_mask_expand(values, p, compact.rng_state, (n, D)))


@pytest.mark.parametrize("device", DEVICES)
def test_compact_module_refuses_w_of_the_wrong_length_naming_w(device):
    module = masking_reconciliation(p=0.5, compact=True, device=device)
    K = module.calculate_l(8, 8)
    for wrong in (K - 1, K + 1, 64):
        with pytest.raises(ValueError, match=error_pattern("w", rf"\b{K}\b", rf"\b{wrong}\b")):
            module(w=torch.randn(1, wrong, device=device), n=8, D=8, device=device)
    with pytest.raises(TypeError, match=error_pattern("w", "float32", r"\b(Long|int64)\b")):
        module(w=torch.ones(1, K, dtype=torch.int64, device=device), n=8, D=8)


def test_remembered_count_follows_a_new_state():
    """calculate_l and forward remember K per state; loading another state must not reuse it."""
    module = masking_reconciliation(p=0.5, compact=True)
    K1 = module.calculate_l(50, 50)
    other = masking_reconciliation(p=0.5, compact=True)
    module.load_state_dict(other.state_dict())
    K2 = other.calculate_l(50, 50)
    assert K1 != K2, "pick seeds whose counts differ"
    assert module.calculate_l(50, 50) == K2
    assert module(w=torch.randn(K2), n=50, D=50).shape == (50, 50)
    # Even a state written behind autograd's back (no version bump) never refuses a right w.
    module.rng_state.data.copy_(make_state(1, 2))
    K3 = tinybig_cuda.count_kept(2500, 0.5, make_state(1, 2))
    assert module(w=torch.randn(K3), n=50, D=50).shape == (50, 50)


@pytest.mark.parametrize("device", DEVICES)
def test_conversion_from_full_parameters_and_back(device):
    """Full tinyBIG-style (channels, n*D) weights loaded into a compact module compute the same."""
    n, D, p, channels = 24, 40, 0.25, 3
    full, compact = _full_and_compact(p, device)
    full_head = Head(full, n, D, channels).to(device)
    compact_head = Head(compact, n, D, channels).to(device)
    K = compact.calculate_l(n, D)
    assert compact_head.w.shape == (channels, K)
    with torch.no_grad():
        compact_head.w.copy_(compact.compress_parameters(full_head.w, n, D))
    x = torch.randn(5, D, device=device)
    assert torch.equal(compact_head(x), full_head(x))
    back = compact.expand_parameters(compact_head.w.detach(), n, D)
    assert back.shape == (channels, n * D)
    mask = compact.generate_masking_matrix(n, D, device=device).reshape(-1)
    assert torch.equal(back[:, mask], full_head.w.detach()[:, mask])
    assert torch.equal(back[:, ~mask], torch.zeros_like(back[:, ~mask]))
    assert torch.equal(compact.compress_parameters(back, n, D), compact_head.w.detach())
    with pytest.raises(ValueError, match=error_pattern("w", str(n * D), str(K))):
        compact.compress_parameters(compact_head.w, n, D)
    with pytest.raises(ValueError, match=error_pattern("w", str(K), str(n * D))):
        compact.expand_parameters(full_head.w, n, D)


def _saved_bytes(module):
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_state_dict_is_about_p_times_the_full_one(p):
    n, D = 256, 256
    full, compact = _full_and_compact(p)
    full_bytes, compact_bytes = _saved_bytes(Head(full, n, D)), _saved_bytes(Head(compact, n, D))
    assert full_bytes > 4 * n * D
    assert abs(compact_bytes / full_bytes - p) < 0.02, (compact_bytes, full_bytes)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.2, 0.7])
def test_adam_step_matches_the_full_modules_kept_entries(device, p):
    """Adam (weight decay off) on the compact parameters moves the kept entries exactly as it
    moves them in the full parameters, where the dropped entries' zero gradients leave them be."""
    n, D, channels = 20, 33, 2
    torch.manual_seed(0)
    full, compact = _full_and_compact(p, device)
    full_head, compact_head = Head(full, n, D, channels).to(device), Head(compact, n, D, channels).to(device)
    with torch.no_grad():
        compact_head.w.copy_(compact.compress_parameters(full_head.w, n, D))
    optimizers = [torch.optim.Adam(head.parameters(), lr=0.05, weight_decay=0.0) for head in (full_head, compact_head)]
    for step in range(3):
        x = torch.randn(7, D, device=device)
        target = torch.randn(7, n, device=device)
        for head, optimizer in zip((full_head, compact_head), optimizers):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(head(x), target).backward()
            optimizer.step()
        assert torch.equal(compact.compress_parameters(full_head.w.detach(), n, D), compact_head.w.detach()), step
    state = optimizers[1].state[compact_head.w]
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == (channels, compact.calculate_l(n, D))


# ---------------------------------------------------------------- CUDA


EXPECT_CUDA_BUILD = os.environ.get("TINYBIG_EXPECT_CUDA_BUILD") == "1"


@pytest.mark.skipif(not _C.has_cuda_kernels() and not EXPECT_CUDA_BUILD, reason="CPU-only build of tinybig_cuda")
@pytest.mark.parametrize("op", ["bernoulli_mask_count", "bernoulli_mask_expand", "bernoulli_mask_compress"])
def test_cuda_kernels_are_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tinybig_cuda::{op}", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tinybig_cuda::{op}", "CPU")


@pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA GPU visible")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("element_offset", [0, 5, 2**33 + 3])
def test_cuda_matches_cpu_bit_for_bit(dtype, element_offset):
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

    from test_cuda import find_cuobjdump

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


@pytest.mark.skipif(not _C.has_cuda_kernels() and not EXPECT_CUDA_BUILD, reason="CPU-only build of tinybig_cuda")
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


# ---------------------------------------------------------------- review defects


def test_kept_count_follows_the_states_value_however_it_is_written():
    """The remembered count is keyed on the state's value: writes that skip the version counter
    (through .data or a NumPy view) and new state tensors at a freed address (version 0 again)
    must never give the old mask's count."""
    n, D, p = 50, 50, 0.5
    module = masking_reconciliation(p=p, compact=True)

    def expected():
        return tinybig_cuda.count_kept(n * D, p, module.rng_state)

    before = module.calculate_l(n, D)
    module.rng_state.data[0] += 1  # no version bump
    assert expected() != before, "pick a state whose count changes"
    assert module.calculate_l(n, D) == expected()
    w = torch.randn(1, expected())
    assert module.expand_parameters(w, n, D).shape == (1, n * D)
    before = module.calculate_l(n, D)
    module.rng_state.numpy()[1] += 7
    assert expected() != before
    assert module.calculate_l(n, D) == expected()
    for seed in range(10):  # new tensors, often at the address just freed
        module.rng_state = make_state(seed, 0)
        assert module.calculate_l(n, D) == expected(), seed


def test_impossible_counts_are_refused_at_once_naming_numel():
    state = _state()
    for numel in (2**62, 2**63 - 1):
        with pytest.raises(ValueError, match=error_pattern("numel", re.escape("2**62 - 1"), str(numel))):
            tinybig_cuda.bernoulli_mask_count(numel, 0.5, state)
    with pytest.raises(ValueError, match=error_pattern("shape", re.escape("2**62 - 1"), str(2**31))):
        tinybig_cuda.bernoulli_mask_expand(torch.zeros(3), 0.5, state, (2**31, 2**31))
    module = masking_reconciliation(p=0.5, compact=True)
    with pytest.raises(ValueError, match=error_pattern("n", re.escape("2**62 - 1"), f"n={2**62}, D=4")):
        module.calculate_l(2**62, 4)


def test_counts_that_cannot_match_are_refused_before_the_mask_is_counted():
    state = _state()
    # More values than the matrix has entries, or a kept_count beyond them: no count needed.
    with pytest.raises(ValueError, match=error_pattern("values", "at most 3", "10")):
        tinybig_cuda.bernoulli_mask_expand(torch.zeros(10), 0.5, state, (3,))
    with pytest.raises(ValueError, match=error_pattern("kept_count", "<= 12", "13")):
        tinybig_cuda.bernoulli_mask_compress(torch.zeros(3, 4), 0.5, state, 13)
    # A large mask: counting stops once the partial count rules the claimed count out.
    numel = 2**30  # 2 GiB of float16 output, allocated (not touched) before counting
    with pytest.raises(ValueError, match=error_pattern("values", "at least", r"\b3\b")) as refused:
        tinybig_cuda.bernoulli_mask_expand(torch.zeros(3, dtype=torch.float16), 0.5, state, (numel,))
    assert "counting stopped" in str(refused.value)
    full = torch.zeros(2**25, dtype=torch.float16)
    with pytest.raises(ValueError, match=error_pattern("kept_count", "at most", str(2**25 - 1))):
        tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, 2**25 - 1)
    # And a right count still works after a refused one (nothing half-counted is remembered).
    kept = tinybig_cuda.count_kept(2**25, 0.5, state)
    assert tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, kept).shape == (kept,)


def test_empty_compact_cache_forgets_the_counted_masks():
    """A remembered mask refuses a wrong count with the exact count; a forgotten one is counted
    again, and (past 2**24 elements) the counting stops once the claim is ruled out."""
    state, numel = make_state(77, 78), 2**25
    full = torch.zeros(numel, dtype=torch.float16)
    kept = tinybig_cuda.count_kept(numel, 0.5, state)  # counts the mask, and remembers its ranks
    with pytest.raises(ValueError, match=error_pattern("kept_count", rf"\b{kept}\b", str(kept - 1))):
        tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, kept - 1)
    tinybig_cuda.empty_compact_cache()
    with pytest.raises(ValueError, match=error_pattern("kept_count", "at most", str(numel - 1))) as refused:
        tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, numel - 1)
    assert "counting stopped" in str(refused.value)
    assert tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, kept).shape == (kept,)


@pytest.mark.slow  # 12 masks of 2**18 elements against the reference's Philox in PyTorch
def test_remembered_ranks_are_keyed_on_every_input_of_the_mask():
    """The CPU ops remember each mask's per-chunk ranks: every input that changes the mask must
    give its own (checked against the reference after the cache holds the others)."""
    numel = 3 * 2**16 + 5  # several chunks
    base = dict(p=0.4, seed=1, offset=2, element_offset=0, numel=numel)
    variants = [base, {**base, "p": 0.41}, {**base, "seed": 2}, {**base, "offset": 3},
                {**base, "element_offset": 1}, {**base, "numel": numel - 1}]
    for _ in range(2):  # the second round runs on remembered ranks
        for v in variants:
            state = make_state(v["seed"], v["offset"])
            kept = reference.bernoulli_mask_count(v["numel"], v["p"], state, v["element_offset"])
            assert tinybig_cuda.count_kept(v["numel"], v["p"], state, v["element_offset"]) == kept, v
            values = random_bits((kept,), torch.float32, seed=kept)
            full = tinybig_cuda.bernoulli_mask_expand(values, v["p"], state, (v["numel"],), v["element_offset"])
            assert_bitwise_equal(full, reference.bernoulli_mask_expand(values, v["p"], state, (v["numel"],), v["element_offset"]))
