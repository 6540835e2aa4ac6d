"""The compact ops (count, expand and compress): bit-exact agreement with the reference and with
bernoulli_mask_apply, whose mask (docs/contract.md, 'Mask definition') they must share exactly, and
the masks they remember.

Laid out as the masking ops' tests are: their autograd is in test_autograd.py, their errors in
test_errors.py, masking_reconciliation(compact=True) in test_modules.py, torch.compile in
test_compile.py and CUDA in test_cuda.py."""

import pytest
import torch

import tinybig_cuda
from tinybig_cuda import _C, reference

from conftest import (
    DEVICES,
    DTYPE_IDS,
    DTYPES,
    LAYOUTS,
    Snapshot,
    assert_bitwise_equal,
    compact_state,
    error_pattern,
    make_input,
    make_state,
    random_bits,
    reference_kept_count,
)

# Odd sizes: single elements, partial Philox blocks, partial 64-element CUDA chunks, and more than
# one 2**16-element CPU chunk.
SHAPES = [(1,), (3,), (7, 9), (65, 3), (1, 4099), (300, 301)]
SHAPE_IDS = ["1", "3", "7x9", "65x3", "1x4099", "300x301"]
PROBABILITIES = [0.0, 0.3, 0.5, 1.0]


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
    state = compact_state(device)
    kept = reference_kept_count(shape, p, state)
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
    state = compact_state(device)
    full = random_bits(shape, dtype, device, seed=1)
    kept = reference_kept_count(shape, p, state)
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
    state = compact_state(device)
    full = make_input((37, 41), layout, torch.float32, device, seed=3)
    values = tinybig_cuda.bernoulli_mask_compress(full, 0.4, state)
    assert_bitwise_equal(values, reference.bernoulli_mask_compress(full.contiguous(), 0.4, state))


@pytest.mark.parametrize("device", DEVICES)
def test_expand_reads_strided_values(device):
    state = compact_state(device)
    kept = reference_kept_count((40, 50), 0.5, state)
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
    state, p, shape = compact_state(device), 0.35, (101, 67)
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
    state = compact_state(device)
    for shape in [(0,), (0, 5), (5, 0)]:
        values = torch.empty(0, device=device)
        assert tinybig_cuda.count_kept(0, 0.5, state) == 0
        assert tinybig_cuda.bernoulli_mask_expand(values, 0.5, state, shape).shape == shape
        assert tinybig_cuda.bernoulli_mask_compress(torch.empty(shape, device=device), 0.5, state, 0).shape == (0,)


def test_same_bits_on_every_thread_count_and_cpu_instruction_set(restore_num_threads):
    state, p, shape = compact_state(), 0.5, (513, 517)  # several 2**16-element chunks
    full = random_bits(shape, torch.float32)
    kept = reference_kept_count(shape, p, state)
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


def test_expand_and_compress_take_a_cpu_state_with_data_on_any_device():
    """A CPU state lets the host check the kept count without waiting for the device (on CUDA, no
    sync). Checked here on the meta device (the fake kernels' rules); the CUDA kernels' use of it
    is in tests/test_cuda.py."""
    state = compact_state("cpu")
    kept = tinybig_cuda.count_kept(12, 0.5, state)
    full = tinybig_cuda.bernoulli_mask_expand(torch.empty(kept, device="meta"), 0.5, state, (3, 4))
    assert full.device.type == "meta" and full.shape == (3, 4)
    values = tinybig_cuda.bernoulli_mask_compress(torch.empty(3, 4, device="meta"), 0.5, state, kept)
    assert values.device.type == "meta" and values.shape == (kept,)
    # The masking ops read the state on the data's device: only the compact ops need the count.
    with pytest.raises(ValueError, match=error_pattern("rng_state", "meta", "cpu")):
        tinybig_cuda.bernoulli_mask_apply(torch.empty(3, 4, device="meta"), 0.5, state)


# ---------------------------------------------------------------- the remembered masks


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
