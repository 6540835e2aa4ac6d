"""bernoulli_mask_apply and bernoulli_mask: bit-exact agreement with the reference, and the
properties the contract promises (layout, dtype, thread and device independence, keep rate)."""

import math

import pytest
import torch

import tinybig_cuda
from tinybig_cuda import reference

from conftest import (
    DEVICES,
    DTYPE_IDS,
    DTYPES,
    LAYOUTS,
    STATE_VALUES,
    Snapshot,
    as_bits,
    assert_bitwise_equal,
    make_input,
    make_state,
    random_bits,
)

ODD_SHAPES = [(1,), (3,), (4099,), (37, 129)]
SHAPE_LAYOUTS = [
    (shape, layout)
    for shape in ODD_SHAPES
    for layout in LAYOUTS
    if not (layout == "transposed" and len(shape) != 2)
]


def _expected(w, p, state, element_offset=0):
    """The reference result, computed from a contiguous copy: the mask follows logical positions."""
    return reference.bernoulli_mask_apply(w.contiguous(), p, state, element_offset)


def _check_output_form(out, w):
    assert out.shape == w.shape and out.dtype == w.dtype and out.device == w.device
    assert out.is_contiguous()
    if w.numel() > 0:
        assert out.data_ptr() != w.data_ptr(), "the output must be a new tensor"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape, layout", SHAPE_LAYOUTS, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference_bitwise(device, shape, layout, dtype):
    w = make_input(shape, layout, dtype, device, seed=len(shape) + shape[0])
    state = make_state(0x5EED, 17, device)
    snapshot = Snapshot(w, state)
    out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    snapshot.assert_unchanged()
    _check_output_form(out, w)
    assert_bitwise_equal(out, _expected(w, 0.5, state))
    if w.numel() >= 64:  # a test of a mask that keeps nothing or everything would prove little
        kept = int((as_bits(out) == as_bits(w.contiguous())).sum())
        assert 0 < kept < w.numel()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_mask_follows_logical_position_not_memory(device, layout):
    """A strided w is masked exactly as its contiguous copy is."""
    w = make_input((37, 129), layout, torch.float32, device)
    state = make_state(-3, 2**40, device)
    out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    assert_bitwise_equal(out, tinybig_cuda.bernoulli_mask_apply(w.contiguous(), 0.5, state))
    # ... and not as its storage order: masking the transposed buffer gives a different mask.
    if layout == "transposed":
        storage_order = tinybig_cuda.bernoulli_mask_apply(w.t().contiguous(), 0.5, state).t()
        assert not torch.equal(as_bits(out), as_bits(storage_order.contiguous()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(), (2, 3, 5), (2, 3, 4, 5)], ids=["scalar", "3d", "4d"])
def test_any_rank_matches_reference(device, shape):
    w = random_bits(shape, torch.float32, device, seed=3)
    if len(shape) == 4:
        w = w.to(memory_format=torch.channels_last)
    state = make_state(11, 12, device)
    out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    _check_output_form(out, w)
    assert_bitwise_equal(out, _expected(w, 0.5, state))


@pytest.mark.parametrize("device", DEVICES)
def test_mask_independent_of_dtype(device):
    state = make_state(123456789, -987654321, device)
    masks = [
        tinybig_cuda.bernoulli_mask_apply(torch.ones(37, 129, dtype=dtype, device=device), 0.5, state) != 0
        for dtype in DTYPES
    ]
    for mask in masks[1:]:
        assert torch.equal(mask, masks[0])
    assert torch.equal(masks[0], tinybig_cuda.bernoulli_mask((37, 129), 0.5, state))


@pytest.mark.parametrize("device", DEVICES)
def test_mask_independent_of_shape(device):
    """The mask of element i depends on i, not on the shape w is passed in."""
    state = make_state(99, 100, device)
    w = random_bits((12, 35), torch.float16, device)
    flat = tinybig_cuda.bernoulli_mask_apply(w.reshape(-1), 0.3, state)
    for shape in [(12, 35), (1, 420), (420, 1), (7, 5, 12)]:
        out = tinybig_cuda.bernoulli_mask_apply(w.reshape(shape), 0.3, state)
        assert_bitwise_equal(out.reshape(-1), flat)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", STATE_VALUES)
@pytest.mark.parametrize("offset", STATE_VALUES[::2] + [STATE_VALUES[7]])
def test_full_64_bit_seeds_and_offsets(device, seed, offset):
    state = make_state(seed, offset, device)
    w = random_bits((67,), torch.float32, device, seed=abs(seed) % 1000)
    assert_bitwise_equal(tinybig_cuda.bernoulli_mask_apply(w, 0.5, state), _expected(w, 0.5, state))
    assert_bitwise_equal(tinybig_cuda.bernoulli_mask((67,), 0.5, state), reference.bernoulli_mask((67,), 0.5, state))


@pytest.mark.parametrize("device", DEVICES)
def test_different_states_give_different_masks(device):
    """Seed and offset each change the mask, and offsets never share a Philox block: the mask of
    offset 1 is not the mask of offset 0 shifted by whole blocks."""
    n = 4096
    base = tinybig_cuda.bernoulli_mask((n,), 0.5, make_state(5, 0, device))
    other_seed = tinybig_cuda.bernoulli_mask((n,), 0.5, make_state(6, 0, device))
    other_offset = tinybig_cuda.bernoulli_mask((n,), 0.5, make_state(5, 1, device))
    assert not torch.equal(base, other_seed)
    assert not torch.equal(base, other_offset)
    for shift_blocks in (1, 2, n // 4):
        shifted = tinybig_cuda.bernoulli_mask((n,), 0.5, make_state(5, 0, device), element_offset=4 * shift_blocks)
        assert not torch.equal(other_offset, shifted)
    # Negative and positive int64 of the same magnitude are different unsigned seeds.
    assert not torch.equal(
        tinybig_cuda.bernoulli_mask((n,), 0.5, make_state(-5, 0, device)), base
    )


@pytest.mark.slow  # large tensors on every thread count
@pytest.mark.parametrize("num_threads", [1, 2])
def test_thread_count_does_not_change_bits(num_threads, dtype, restore_num_threads):
    """Enough elements that the CPU kernel splits the work across threads (tasks of 2**15)."""
    torch.set_num_threads(num_threads)
    assert torch.get_num_threads() == num_threads
    numel = 3 * 2**15 + 5
    w = random_bits((numel,), dtype, "cpu", seed=7)
    state = make_state(-2, 3)
    out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    mask = tinybig_cuda.bernoulli_mask((numel,), 0.5, state)
    assert_bitwise_equal(out, _expected(w, 0.5, state))
    assert torch.equal(mask, reference.bernoulli_mask((numel,), 0.5, state))
    # Element offsets not a multiple of 4 put task boundaries in the middle of Philox blocks.
    out_offset = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state, element_offset=3)
    assert_bitwise_equal(out_offset, _expected(w, 0.5, state, element_offset=3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.001, 0.1, 0.5, 0.77, 0.999])
def test_keep_rate_within_5_sigma(device, p):
    numel = 2**17
    sigma_fraction = lambda count: 5 * math.sqrt(count * p * (1 - p))  # noqa: E731
    for seed in (0, -1, 2**62 + 12345):
        state = make_state(seed, seed // 3, device)
        mask = tinybig_cuda.bernoulli_mask((numel,), p, state)
        assert abs(int(mask.sum()) - numel * p) < sigma_fraction(numel)
        # Each of the four words of a block keeps at rate p (not only word 0, say).
        for position in range(4):
            count = numel // 4
            kept = int(mask[position::4].sum())
            assert abs(kept - count * p) < sigma_fraction(count), (seed, position)
        applied = tinybig_cuda.bernoulli_mask_apply(torch.ones(numel, device=device), p, state)
        assert torch.equal(applied != 0, mask)


@pytest.mark.parametrize("device", DEVICES)
def test_p_zero_keeps_nothing_and_p_one_keeps_everything(device, dtype):
    numel = 4099
    w = random_bits((numel,), dtype, device, seed=1)
    for seed in (0, -1, 77):
        state = make_state(seed, seed, device)
        assert_bitwise_equal(tinybig_cuda.bernoulli_mask_apply(w, 0.0, state), torch.zeros_like(w))
        assert_bitwise_equal(tinybig_cuda.bernoulli_mask_apply(w, 1.0, state), w)
        assert not tinybig_cuda.bernoulli_mask((numel,), 0.0, state).any()
        assert tinybig_cuda.bernoulli_mask((numel,), 1.0, state).all()
        # Integer p is a valid keep probability too.
        assert_bitwise_equal(tinybig_cuda.bernoulli_mask_apply(w, 1, state), w)
        assert_bitwise_equal(tinybig_cuda.bernoulli_mask_apply(w, 0, state), torch.zeros_like(w))


@pytest.mark.parametrize("device", DEVICES)
def test_dropped_entries_are_positive_zero_and_kept_entries_are_copied(device, dtype):
    """Select semantics: a dropped NaN, Inf, negative or -0.0 becomes +0.0 (sign bit clear); a kept
    entry keeps its exact bits, NaN payload and -0.0 included."""
    special = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), -0.0, -1.5, 0.0, 2.0])
    w = special.to(dtype).repeat(64).to(device)
    w = torch.cat([w, random_bits((512,), dtype, device, seed=9)])
    state = make_state(2024, 7, device)
    out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    mask = tinybig_cuda.bernoulli_mask(w.shape, 0.5, state)
    assert 0 < int(mask.sum()) < w.numel()
    assert torch.equal(as_bits(out)[mask], as_bits(w)[mask])
    dropped = as_bits(out)[~mask]
    assert torch.equal(dropped, torch.zeros_like(dropped)), "dropped entries must be +0.0 bits"
    assert not torch.signbit(out[~mask]).any()
    # Every special value lands in a dropped slot at least once (so the check above saw them).
    dropped_special = (~mask[: special.numel() * 64]).reshape(64, -1).any(dim=0)
    assert dropped_special.all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0,), (0, 5), (5, 0), (0, 0), (3, 0, 2)])
def test_empty_inputs_return_empty_results(device, dtype, shape):
    w = torch.empty(shape, dtype=dtype, device=device)
    state = make_state(1, 2, device)
    out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    assert out.shape == w.shape and out.dtype == dtype and out.device == w.device and out.is_contiguous()
    mask = tinybig_cuda.bernoulli_mask(shape, 0.5, state)
    assert mask.shape == shape and mask.dtype == torch.bool and mask.device == state.device
    # Empty and differentiable.
    w = w.requires_grad_()
    tinybig_cuda.bernoulli_mask_apply(w, 0.5, state).sum().backward()
    assert w.grad.shape == shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1,), (3,), (4099,), (37, 129)], ids=lambda s: "x".join(map(str, s)))
def test_bernoulli_mask_matches_reference_and_apply(device, shape):
    state = make_state(-77, 2**33 + 1, device)
    mask = tinybig_cuda.bernoulli_mask(shape, 0.4, state)
    assert mask.dtype == torch.bool and mask.shape == shape and mask.is_contiguous()
    assert mask.device == state.device
    assert torch.equal(mask, reference.bernoulli_mask(shape, 0.4, state))
    ones = torch.ones(shape, dtype=torch.float32, device=device)
    assert torch.equal(mask, tinybig_cuda.bernoulli_mask_apply(ones, 0.4, state) != 0)


@pytest.mark.parametrize("device", DEVICES)
def test_bernoulli_mask_accepts_a_strided_rng_state(device):
    """rng_state's values matter, not its layout: a 2-element view with stride 2 works."""
    backing = torch.tensor([-9, 0, 2**40], dtype=torch.int64, device=device)
    strided = backing[::2]
    assert strided.stride() == (2,)
    contiguous = strided.contiguous()
    w = random_bits((37, 3), torch.float32, device)
    assert_bitwise_equal(
        tinybig_cuda.bernoulli_mask_apply(w, 0.5, strided), tinybig_cuda.bernoulli_mask_apply(w, 0.5, contiguous)
    )
    assert torch.equal(tinybig_cuda.bernoulli_mask((37, 3), 0.5, strided), reference.bernoulli_mask((37, 3), 0.5, contiguous))


def test_non_contiguous_and_expanded_states_are_read_by_value():
    w = torch.randn(50)
    three = torch.tensor([11, 99, -7])
    assert torch.equal(tinybig_cuda.bernoulli_mask_apply(w, 0.5, three[::2]), reference.bernoulli_mask_apply(w, 0.5, torch.tensor([11, -7])))
    assert torch.equal(tinybig_cuda.bernoulli_mask_apply(w, 0.5, torch.tensor([5]).expand(2)), reference.bernoulli_mask_apply(w, 0.5, torch.tensor([5, 5])))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("start, length", [(0, 10), (5, 101), (7, 1), (3 * 37, 5 * 37), (369, 1)])
def test_element_offset_shard_equals_slice_of_whole(device, start, length):
    """Masking a shard with element_offset = its first flat index reproduces that slice of the
    whole matrix's result, including shards that start mid-block."""
    whole = random_bits((10, 37), torch.float64, device, seed=4)
    state = make_state(31, -31, device)
    whole_out = tinybig_cuda.bernoulli_mask_apply(whole, 0.5, state).reshape(-1)
    shard = whole.reshape(-1)[start : start + length]
    shard_out = tinybig_cuda.bernoulli_mask_apply(shard, 0.5, state, element_offset=start)
    assert_bitwise_equal(shard_out, whole_out[start : start + length])
    whole_mask = tinybig_cuda.bernoulli_mask((10, 37), 0.5, state).reshape(-1)
    shard_mask = tinybig_cuda.bernoulli_mask((length,), 0.5, state, element_offset=start)
    assert torch.equal(shard_mask, whole_mask[start : start + length])
    if start > 0:  # the offset matters
        unshifted = tinybig_cuda.bernoulli_mask((length + 64,), 0.5, state)
        shifted = tinybig_cuda.bernoulli_mask((length + 64,), 0.5, state, element_offset=start)
        assert not torch.equal(unshifted, shifted)


@pytest.mark.parametrize("device", DEVICES)
def test_element_offset_near_int64_max(device):
    state = make_state(1, 1, device)
    element_offset = 2**63 - 1 - 10
    w = random_bits((10,), torch.float32, device)
    out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state, element_offset=element_offset)
    assert_bitwise_equal(out, _expected(w, 0.5, state, element_offset=element_offset))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_the_same_mask(device, dtype):
    """The gradient of sum(out) is the mask itself, in w's dtype; the backward regenerates the mask."""
    state = make_state(-123, 456, device)
    w = torch.randn(37, 129, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_()
    out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    upstream = random_bits(out.shape, dtype, device, seed=5)
    out.backward(upstream)
    mask = tinybig_cuda.bernoulli_mask(w.shape, 0.5, state)
    assert_bitwise_equal(w.grad, reference.bernoulli_mask_apply(upstream, 0.5, state))
    assert torch.equal(w.grad != 0, mask & (upstream != 0))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_uses_the_state_of_its_forward(device):
    """Changing the state tensor in place after the forward cannot change the gradient: the op
    either saved a copy or the autograd version counter refuses the backward."""
    state = make_state(1, 2, device)
    w = torch.ones(64, 64, device=device, requires_grad=True)
    out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    expected_grad = (out != 0).to(w.dtype)
    state.copy_(make_state(3, 4, device))
    try:
        out.sum().backward()
    except RuntimeError as error:
        assert "modified by an inplace operation" in str(error)
    else:
        assert torch.equal(w.grad, expected_grad)
