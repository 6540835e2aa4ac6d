"""Windows of a larger matrix (row_length): a shard of columns is masked as part of the whole.

Local element (r, c) of a window is global element element_offset + r * row_length + c. Every case
compares the window's output with the same slice of the whole matrix's output, bit for bit, and
the sharding arithmetic of tinybig_cuda.distributed is run here for 2-D meshes of every rank
(in one process: the 2-process tests are in test_distributed.py).
"""

import itertools

import pytest
import torch

if not torch.distributed.is_available():
    pytest.skip("needs torch.distributed (DTensor)", allow_module_level=True)

from torch.distributed.tensor import Partial, Replicate, Shard
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset

import tinybig_cuda
from tinybig_cuda import bernoulli_mask, bernoulli_mask_apply
from tinybig_cuda.distributed import _window

from conftest import DEVICES, DTYPES, DTYPE_IDS, assert_bitwise_equal, make_state

STATE = (0x0123456789ABCDEF, -3)
# (rows, cols, (row0, row1, col0, col1)) windows: single columns, tails, one row, interiors.
WINDOWS = [
    (7, 5, (0, 7, 0, 2)),
    (7, 5, (1, 6, 2, 5)),
    (7, 5, (3, 4, 1, 4)),
    (33, 1031, (0, 33, 1, 1030)),
    (64, 4100, (5, 64, 2048, 4100)),
    (9, 17, (0, 9, 16, 17)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rows, cols, window", WINDOWS)
def test_window_equals_the_slice_of_the_whole(rows, cols, window, dtype, device):
    r0, r1, c0, c1 = window
    state = make_state(*STATE, device)
    weight = torch.randn(rows, cols, device=device).to(dtype)
    whole = bernoulli_mask_apply(weight, 0.37, state)
    view = weight[r0:r1, c0:c1]
    expected = whole[r0:r1, c0:c1].contiguous()
    # A strided view, its contiguous copy and a transposed layout: each read path of the kernel.
    for w in (view, view.contiguous(), view.t().contiguous().t()):
        assert_bitwise_equal(bernoulli_mask_apply(w, 0.37, state, r0 * cols + c0, row_length=cols), expected)
    mask = bernoulli_mask((r1 - r0, c1 - c0), 0.37, state, r0 * cols + c0, row_length=cols)
    assert torch.equal(mask, bernoulli_mask((rows, cols), 0.37, state)[r0:r1, c0:c1])
    if c1 - c0 < cols and r1 - r0 > 1:  # without the row length, the rows would read the wrong words
        assert not torch.equal(bernoulli_mask_apply(view, 0.37, state, r0 * cols + c0), expected)


def test_window_gradient_is_the_windows_mask():
    state = make_state(*STATE)
    weight = torch.randn(6, 11, dtype=torch.float64)
    view = weight[:, 3:8].clone().requires_grad_()
    out = bernoulli_mask_apply(view, 0.5, state, 3, row_length=11)
    out.backward(torch.ones_like(out))
    assert torch.equal(view.grad != 0, bernoulli_mask((6, 11), 0.5, state)[:, 3:8])
    torch.autograd.gradcheck(lambda w: bernoulli_mask_apply(w, 0.5, state, 3, row_length=11), (view.detach().requires_grad_(),))


def test_row_length_of_contiguous_rows_is_the_flat_case():
    state = make_state(*STATE)
    w = torch.randn(5, 8)
    assert_bitwise_equal(bernoulli_mask_apply(w, 0.4, state, 9, row_length=8), bernoulli_mask_apply(w, 0.4, state, 9))


@pytest.mark.parametrize("key", ["MPS", "XPU", "PrivateUse1"])
def test_window_on_the_fallback_kernel_equals_the_cpu_kernel(key):
    # The fallback of devices without a kernel (run here on CPU tensors, through its dispatch key).
    state = make_state(*STATE)
    w = torch.randn(4, 6)
    for name, args in (("bernoulli_mask_apply", (w, 0.3, state, 2, 13)), ("bernoulli_mask", ([4, 6], 0.3, state, 2, 13))):
        op = getattr(torch.ops.tinybig_cuda, name).default
        expected = op._op_dk(torch._C.DispatchKey.CPU, *args)
        assert_bitwise_equal(op._op_dk(getattr(torch._C.DispatchKey, key), *args), expected)
    # Element (r, c) is global element 2 + 13 r + c.
    assert torch.equal(expected, bernoulli_mask(2 + 4 * 13, 0.3, state)[2:].view(4, 13)[:, :6])


def _assemble(global_shape, mesh_shape, placements, make_local):
    """Builds the global tensor from every mesh coordinate's local shard (Shard and Replicate only)."""
    full = None
    for coordinate in itertools.product(*(range(n) for n in mesh_shape)):
        local_shape, offset = _compute_local_shape_and_global_offset(global_shape, mesh_shape, list(coordinate), placements)
        local = make_local(tuple(local_shape), tuple(offset))
        if full is None:
            full = torch.zeros(global_shape, dtype=local.dtype)
        full[tuple(slice(o, o + n) for o, n in zip(offset, local_shape))] = local
    return full


@pytest.mark.parametrize(
    "global_shape, mesh_shape, placements",
    [
        ((7, 5), (2,), [Shard(0)]),
        ((7, 5), (2,), [Shard(1)]),
        ((7, 5), (3,), [Shard(1)]),
        ((7, 5), (2, 2), [Shard(0), Shard(1)]),
        ((7, 5), (2, 2), [Shard(1), Shard(0)]),
        ((9, 13), (2, 3), [Shard(1), Shard(1)]),
        ((9, 13), (2, 3), [Shard(0), Shard(0)]),
        ((9, 13), (2, 3), [Replicate(), Shard(1)]),
        ((3, 7, 5), (2,), [Shard(1)]),
        ((1, 7, 5), (2, 2), [Shard(2), Shard(1)]),
        ((4, 6, 10), (2, 2), [Shard(0), Shard(2)]),
    ],
)
def test_every_shard_of_a_mesh_masks_its_part_of_the_whole(global_shape, mesh_shape, placements):
    state = make_state(*STATE)
    weight = torch.randn(global_shape)
    whole = bernoulli_mask_apply(weight, 0.45, state)

    def masked_shard(local_shape, offset):
        rows, width, element_offset, row_length = _window("test", global_shape, local_shape, offset)
        local = weight[tuple(slice(o, o + n) for o, n in zip(offset, local_shape))]
        return bernoulli_mask_apply(local.reshape(rows, width), 0.45, state, element_offset, row_length).view(local_shape)

    assert_bitwise_equal(_assemble(global_shape, mesh_shape, placements, masked_shard), whole)


def test_a_shard_that_is_no_window_is_refused():
    # Dimensions 1 and 2 of a 3-D tensor sharded (a mesh's [Shard(2), Shard(1)]): rows of
    # (a, b) pairs, 5 apart within a block of b and 20 apart across blocks.
    with pytest.raises(NotImplementedError, match="not a window of evenly spaced rows"):
        _window("test", (3, 7, 5), (3, 4, 3), (0, 0, 0))
    assert _window("test", (7, 5), (0, 5), (7, 0)) == (0, 1, 0, None)  # an empty shard


def test_placements_that_are_no_box_are_refused():
    from torch.distributed.tensor.placement_types import _StridedShard

    from tinybig_cuda.distributed import _check_placements

    _check_placements("op", "w", [Shard(0), Replicate(), Partial(), Shard(-2)], 2)
    with pytest.raises(NotImplementedError, match="expected w placed with Shard, Replicate or Partial"):
        _check_placements("op", "w", [_StridedShard(0, split_factor=2)], 2)
    for past in (Shard(2), Shard(-3)):  # past a 2-D tensor's dimensions (compute_local_shape_and_global_offset: IndexError)
        with pytest.raises(ValueError, match=r"expected w's Shard dimensions in \[-2, 2\) \(it has 2 dimensions\), but got Shard"):
            _check_placements("op", "w", [Replicate(), past], 2)


def test_dtensor_support_is_registered_on_first_use_only(tmp_path):
    # Importing torch.distributed.tensor costs about a second: tinybig_cuda does not, unasked.
    import subprocess
    import sys

    code = "import sys, tinybig_cuda; print('torch.distributed.tensor' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip() == "False"
    assert tinybig_cuda.distributed.broadcast_rng_states is not None
