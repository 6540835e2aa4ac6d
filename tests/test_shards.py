"""Shard-consistent masks: element_offset places a shard inside the whole matrix's mask stream.

A weight split by rows across processes must see the mask the whole matrix would: shard k of rows
[start, stop) is masked with element_offset = start * D. These tests hold the op to that bit for
bit, at flat indices past 2**32 and 2**40 too, and run examples/sharded_masking.py, which does it
with torch.distributed (gloo, two processes).
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tinybig_cuda
from tinybig_cuda import bernoulli_mask, bernoulli_mask_apply, reference

from conftest import DTYPES, DTYPE_IDS, assert_bitwise_equal, requires_opcheck

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def row_bounds(rows, shards):
    """Uneven row boundaries, the way torch.tensor_split cuts: [0, ..., rows]."""
    base, extra = divmod(rows, shards)
    bounds = [0]
    for k in range(shards):
        bounds.append(bounds[-1] + base + (1 if k < extra else 0))
    return bounds


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rows, cols, shards", [(7, 5, 2), (7, 5, 7), (33, 3, 4), (10, 1, 3), (1001, 257, 2), (64, 1031, 5)])
def test_row_shards_concatenate_to_the_whole_matrix(rows, cols, shards, dtype):
    torch.manual_seed(rows * cols + shards)
    weight = torch.randn(rows, cols).to(dtype)
    state = torch.tensor([0x0123456789ABCDEF, -3], dtype=torch.int64)
    whole = bernoulli_mask_apply(weight, 0.37, state)
    bounds = row_bounds(rows, shards)
    pieces = [bernoulli_mask_apply(weight[a:b], 0.37, state, element_offset=a * cols) for a, b in zip(bounds, bounds[1:])]
    assert_bitwise_equal(torch.cat(pieces), whole)
    # Without the offset every shard would restart the stream: the shards would share one mask.
    if rows // shards >= 2:
        unshifted = [bernoulli_mask_apply(weight[a:b], 0.37, state) for a, b in zip(bounds, bounds[1:])]
        assert not torch.equal(torch.cat(unshifted), whole)


def test_shard_boundaries_need_not_align_with_philox_blocks():
    # Four words per Philox block: shards starting at every residue mod 4 must still agree.
    state = torch.tensor([11, 12], dtype=torch.int64)
    weight = torch.randn(1, 1000)
    whole = bernoulli_mask_apply(weight, 0.5, state)
    for start in range(1, 9):
        for stop in (start + 1, start + 3, start + 4, start + 5, 1000):
            shard = bernoulli_mask_apply(weight[:, start:stop], 0.5, state, element_offset=start)
            assert_bitwise_equal(shard, whole[:, start:stop])


def test_row_shard_masks_concatenate_to_the_whole_mask():
    state = torch.tensor([-1, 2**62], dtype=torch.int64)
    rows, cols = 37, 29
    whole = bernoulli_mask((rows, cols), 0.6, state)
    bounds = row_bounds(rows, 4)
    pieces = [bernoulli_mask((b - a, cols), 0.6, state, element_offset=a * cols) for a, b in zip(bounds, bounds[1:])]
    assert torch.equal(torch.cat(pieces), whole)


def test_shard_gradients_are_the_rows_of_the_whole_gradient():
    state = torch.tensor([5, 6], dtype=torch.int64)
    rows, cols = 19, 23
    weight = torch.randn(rows, cols, dtype=torch.float64)
    upstream = torch.randn(rows, cols, dtype=torch.float64)
    whole = weight.clone().requires_grad_()
    bernoulli_mask_apply(whole, 0.3, state).backward(upstream)
    bounds = row_bounds(rows, 3)
    for a, b in zip(bounds, bounds[1:]):
        shard = weight[a:b].clone().requires_grad_()
        bernoulli_mask_apply(shard, 0.3, state, element_offset=a * cols).backward(upstream[a:b])
        assert_bitwise_equal(shard.grad, whole.grad[a:b])


def test_module_state_masks_shards_like_the_module_masks_the_whole():
    # How a sharded model uses masking_reconciliation: its rng_state with the shard's offset.
    torch.manual_seed(0)
    fabrication = tinybig_cuda.masking_reconciliation(p=0.5)
    rows, cols = 12, 10
    weight = torch.randn(1, rows * cols)
    whole = fabrication(w=weight, n=rows, D=cols)
    shard = bernoulli_mask_apply(weight.view(rows, cols)[4:9], fabrication.p, fabrication.rng_state, element_offset=4 * cols)
    assert_bitwise_equal(shard, whole[4:9])


LARGE_OFFSETS = [
    2**31 - 5,  # past int32
    2**32 - 6,  # the block index's low word wraps inside the range
    2**32,
    2**34 + 1,
    2**40 - 3,  # the same wrap at 2**40
    2**40,
    2**40 + 123457,
    2**53 + 7,  # past exact float64 integers
    2**62 + 2,
    2**63 - 1 - 41,  # the last offset the op accepts for 41 elements
]


@pytest.mark.parametrize("element_offset", LARGE_OFFSETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_element_offsets_match_the_reference(element_offset, dtype):
    state = torch.tensor([0x243F6A8885A308D3, 0x13198A2E03707344], dtype=torch.int64)
    weight = torch.randn(41, dtype=torch.float64).to(dtype) + 2  # no zeros, so every dropped slot shows
    for p in (0.5, 0.9):
        actual = bernoulli_mask_apply(weight, p, state, element_offset=element_offset)
        assert_bitwise_equal(actual, reference.bernoulli_mask_apply(weight, p, state, element_offset))
        assert torch.equal(bernoulli_mask((41,), p, state, element_offset), reference.bernoulli_mask((41,), p, state, element_offset))


@pytest.mark.parametrize("boundary", [2**32, 2**34, 2**40])
def test_a_shard_straddling_a_word_boundary_equals_its_two_halves(boundary):
    # A matrix past 2**32 elements cannot be allocated here, but its shards can: the piece across
    # the boundary (element index past 32 bits at 2**32, block index past 32 bits at 2**34) must
    # equal the pieces on each side of it.
    state = torch.tensor([77, 78], dtype=torch.int64)
    weight = torch.randn(4, 25)
    start = boundary - 37
    across = bernoulli_mask_apply(weight, 0.5, state, element_offset=start)
    below = bernoulli_mask_apply(weight.view(-1)[:37], 0.5, state, element_offset=start)
    above = bernoulli_mask_apply(weight.view(-1)[37:], 0.5, state, element_offset=boundary)
    assert_bitwise_equal(across.view(-1), torch.cat([below, above]))


@pytest.mark.parametrize("element_offset", [2**32, 2**34, 2**40 + 8])
def test_high_index_bits_change_the_mask(element_offset):
    # A kernel that kept the element index, or the block index, in 32 bits would repeat the mask
    # of a lower index here.
    state = torch.tensor([77, 78], dtype=torch.int64)
    mask = bernoulli_mask((256,), 0.5, state, element_offset)
    for truncated in {element_offset % 2**32, 4 * ((element_offset // 4) % 2**32)} - {element_offset}:
        assert not torch.equal(mask, bernoulli_mask((256,), 0.5, state, truncated))


@pytest.mark.parametrize("element_offset", [-1, -(2**63)])
def test_negative_element_offset_is_rejected(element_offset):
    with pytest.raises(ValueError, match="element_offset"):
        bernoulli_mask_apply(torch.ones(3), 0.5, torch.tensor([1, 2]), element_offset=element_offset)
    with pytest.raises(ValueError, match="element_offset"):
        bernoulli_mask((3,), 0.5, torch.tensor([1, 2]), element_offset=element_offset)


def test_element_offset_that_overflows_int64_is_rejected():
    with pytest.raises(ValueError, match="element_offset"):
        bernoulli_mask_apply(torch.ones(42), 0.5, torch.tensor([1, 2]), element_offset=2**63 - 41)
    with pytest.raises(ValueError, match="element_offset"):
        bernoulli_mask((42,), 0.5, torch.tensor([1, 2]), element_offset=2**63 - 41)


@requires_opcheck
def test_opcheck_with_element_offset():
    # The fake kernel, the schema and the autograd registration must all carry element_offset.
    weight = torch.randn(5, 6, requires_grad=True)
    torch.library.opcheck(torch.ops.tinybig_cuda.bernoulli_mask_apply.default, (weight, 0.5, torch.tensor([3, 4]), 2**40 + 3))
    torch.library.opcheck(torch.ops.tinybig_cuda.bernoulli_mask.default, ([5, 6], 0.5, torch.tensor([3, 4]), 2**40 + 3))


@pytest.mark.slow  # starts gloo processes
def test_distributed_example_two_gloo_ranks_match_one_process():
    # examples/sharded_masking.py: 2 processes, gloo, uneven row shards; it checks values and
    # gradients bit for bit on rank 0 and exits non-zero on any mismatch.
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "sharded_masking.py"), "--world-size", "2", "--timeout", "90"],
        capture_output=True, text=True, timeout=150,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "gathered masked weight == single-process result, bit for bit: True" in completed.stdout
    assert "gathered gradient      == single-process gradient, bit for bit: True" in completed.stdout
    assert completed.stdout.rstrip().endswith("OK")
