"""The sharding arithmetic of the DTensor rules (tinybig_cuda/_dtensor.py): every shard of a
DTensor is masked as its window of the whole tensor. Run here for meshes of every rank in one
process (the multi-process tests are in test_distributed.py)."""

import itertools
import math

import pytest
import torch

import tinybig_cuda
from tinybig_cuda import bernoulli_mask_apply

from conftest import HAS_DTENSOR, assert_bitwise_equal, make_state

if not HAS_DTENSOR:
    pytest.skip(f"DTensor support needs torch 2.5 or newer; this is torch {torch.__version__}", allow_module_level=True)

from torch.distributed.tensor import Partial, Replicate, Shard  # noqa: E402

from tinybig_cuda._dtensor import _window  # noqa: E402

STATE = (0x0123456789ABCDEF, -3)


def _local_box(global_shape, mesh_shape, coordinate, placements):
    """The local shape and global offset of one mesh coordinate's shard, as Shard(d) documents it:
    each mesh dimension in turn takes its piece of torch.chunk along d (an empty piece where chunk
    makes fewer than the mesh size). Read from a tensor of global indices cut that way."""
    box = torch.arange(math.prod(global_shape)).view(global_shape)
    for size, index, placement in zip(mesh_shape, coordinate, placements):
        if isinstance(placement, Shard):
            dim = placement.dim % len(global_shape)
            pieces = torch.chunk(box, size, dim)
            box = pieces[index] if index < len(pieces) else box.narrow(dim, box.shape[dim], 0)
    if box.numel() == 0:  # where an empty piece sits along its dimension is not read here
        return list(box.shape), None
    first = int(box.reshape(-1)[0])
    offset = [first // math.prod(global_shape[d + 1:]) % global_shape[d] for d in range(len(global_shape))]
    return list(box.shape), offset


def _assemble(global_shape, mesh_shape, placements, make_local):
    """Builds the global tensor from every mesh coordinate's local shard (Shard and Replicate only)."""
    full = None
    for coordinate in itertools.product(*(range(n) for n in mesh_shape)):
        local_shape, offset = _local_box(global_shape, mesh_shape, coordinate, placements)
        if offset is None:  # an empty shard holds nothing of the whole
            continue
        local = make_local(tuple(local_shape), tuple(offset))
        if full is None:
            full = torch.zeros(global_shape, dtype=local.dtype)
        full[tuple(slice(o, o + n) for o, n in zip(offset, local_shape))] = local
    return full


MESHES = [
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
]


@pytest.mark.parametrize("global_shape, mesh_shape, placements", MESHES)
def test_every_shard_of_a_mesh_masks_its_part_of_the_whole(global_shape, mesh_shape, placements):
    state = make_state(*STATE)
    weight = torch.randn(global_shape)
    whole = bernoulli_mask_apply(weight, 0.45, state)

    def masked_shard(local_shape, offset):
        rows, width, element_offset, row_length = _window("test", global_shape, local_shape, offset)
        local = weight[tuple(slice(o, o + n) for o, n in zip(offset, local_shape))]
        return bernoulli_mask_apply(local.reshape(rows, width), 0.45, state, element_offset, row_length).view(local_shape)

    assert_bitwise_equal(_assemble(global_shape, mesh_shape, placements, masked_shard), whole)


@pytest.mark.parametrize("global_shape, mesh_shape, placements", MESHES)
def test_the_package_places_every_shard_as_shard_documents(global_shape, mesh_shape, placements):
    # The package's own arithmetic (plain integers, which torch.compile traces) against the oracle.
    from tinybig_cuda._dtensor import _local_box as package_local_box

    for coordinate in itertools.product(*(range(n) for n in mesh_shape)):
        shape, offset = package_local_box(global_shape, mesh_shape, coordinate, placements)
        expected_shape, expected_offset = _local_box(global_shape, mesh_shape, coordinate, placements)
        assert list(shape) == expected_shape and (expected_offset is None or list(offset) == expected_offset), coordinate


def test_a_shard_that_is_no_window_is_refused():
    # Dimensions 1 and 2 of a 3-D tensor sharded (a mesh's [Shard(2), Shard(1)]): rows of
    # (a, b) pairs, 5 apart within a block of b and 20 apart across blocks.
    with pytest.raises(NotImplementedError, match="not a window of evenly spaced rows"):
        _window("test", (3, 7, 5), (3, 4, 3), (0, 0, 0))
    assert _window("test", (7, 5), (0, 5), (7, 0)) == (0, 1, 0, None)  # an empty shard


def test_placements_that_are_no_box_are_refused():
    from torch.distributed.tensor.placement_types import _StridedShard

    from tinybig_cuda._dtensor import _check_placements

    _check_placements("op", "w", [Shard(0), Replicate(), Partial(), Shard(-2)], 2)
    with pytest.raises(NotImplementedError, match="expected w placed with Shard, Replicate or Partial"):
        _check_placements("op", "w", [_StridedShard(0, split_factor=2)], 2)
    for past in (Shard(2), Shard(-3)):  # past a 2-D tensor's dimensions
        with pytest.raises(ValueError, match=r"expected w's Shard dimensions in \[-2, 2\) \(it has 2 dimensions\), but got Shard"):
            _check_placements("op", "w", [Replicate(), past], 2)


@pytest.mark.slow  # fresh interpreters that import DTensor
def test_dtensor_support_is_registered_on_first_use_only(tmp_path):
    # Importing torch.distributed.tensor costs about a second: tinybig_cuda does not, unasked.
    import subprocess
    import sys

    code = "import sys, tinybig_cuda; print('torch.distributed.tensor' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip() == "False"
    assert tinybig_cuda.distributed.broadcast_rng_states is not None
