"""How the ops treat a DTensor: each shard masked as a part of the whole tensor.

A mask is a function of each element's *global* index (docs/contract.md, 'Mask definition'), so a
shard must be masked with its place in the whole tensor, which a sharding rule (output placed like
the input) cannot pass to a kernel. This module registers, for DTensor, a rule that does: each rank
masks its local shard with that shard's window in the whole tensor (an element offset and, for a
shard of columns, the whole tensor's row length), and the result is a DTensor placed like `w` whose
``full_tensor()`` is, bit for bit, the mask of the unsharded tensor. It covers
`bernoulli_mask_apply` (forward and backward), `bernoulli_mask` and the module; Shard, Replicate
and Partial placements, uneven shards and meshes of any number of dimensions.

Imported (so registered) at the first DTensor an entry point sees (ops.py), by
``tinybig_cuda.distributed``, or with the package if DTensor is already loaded: importing
torch.distributed.tensor costs about a second."""

import math

import torch

from . import _op_handles as handles
from . import _torch_compat as compat

compat.require("DTensor support (tinybig_cuda.distributed)", compat.DTENSOR)
from torch.distributed.tensor import DeviceMesh, DTensor, Partial, Replicate, Shard

__all__ = ["sharded_bernoulli_mask"]


# ---------------------------------------------------------------- where a shard lies


def _check_placements(op, what, placements, ndim):
    for placement in placements:
        # _StridedShard (FSDP2 over tensor parallelism) subclasses Shard but is no box of the
        # global tensor; Partial commutes with masking (the mask selects before any reduction).
        if not (type(placement) is Shard or isinstance(placement, (Replicate, Partial))):
            raise NotImplementedError(
                f"{op}: expected {what} placed with Shard, Replicate or Partial, but got {placement!r}"
            )
        if type(placement) is Shard and not -ndim <= placement.dim < ndim:
            raise ValueError(
                f"{op}: expected {what}'s Shard dimensions in [{-ndim}, {ndim}) (it has {ndim} dimensions), but got {placement!r}"
            )


def _window(op, global_shape, local_shape, global_offset):
    """The local shard as rows of a 2-D window of the whole tensor: (rows, width, element offset,
    row length or None). A shard of rows is one run; a shard of columns, rows of the whole
    tensor's row length."""
    numel = math.prod(local_shape)
    if numel == 0:
        return 0, 1, 0, None
    strides = _contiguous_strides(global_shape)
    offset = sum(o * s for o, s in zip(global_offset, strides))
    partial_dims = [d for d in range(len(global_shape)) if local_shape[d] != global_shape[d]]
    if not partial_dims:
        return 1, numel, 0, None
    last = partial_dims[-1]  # every dimension after it is whole: a row of the window
    width = local_shape[last] * strides[last]
    rows = numel // width
    # The rows are evenly spaced only if, of the dimensions before `last`, those after the first
    # one with more than one local index are whole.
    outer = [d for d in range(last) if local_shape[d] > 1]
    if outer and any(local_shape[d] != global_shape[d] for d in range(outer[0] + 1, last)):
        raise NotImplementedError(
            f"{op}: the local shard of shape {tuple(local_shape)} at {tuple(global_offset)} of a tensor of shape "
            f"{tuple(global_shape)} is not a window of evenly spaced rows; shard at most one dimension before the last sharded one"
        )
    row_length = strides[last - 1] if last > 0 and rows > 1 else None
    return rows, width, offset, row_length


def _local_box(shape, mesh_shape, coordinate, placements):
    """The local shape and global offset of the shard at mesh `coordinate`, as Shard(d) places it:
    each mesh dimension in turn cuts the box it is given along d into torch.chunk's pieces (ceil(n / k)
    long, the last ones short or empty). Plain integer arithmetic, so that torch.compile traces it
    as it runs eagerly (torch's own helper indexes a tensor of offsets: a data-dependent value)."""
    local_shape, offset = list(shape), [0] * len(shape)
    for size, index, placement in zip(mesh_shape, coordinate, placements):
        if type(placement) is Shard:
            dim = placement.dim % len(shape)
            piece = -(-local_shape[dim] // size)
            start = min(index * piece, local_shape[dim])
            local_shape[dim] = min(piece, local_shape[dim] - start)
            offset[dim] += start
    return tuple(local_shape), tuple(offset)


def _local_window(op, shape, mesh, placements):
    shape = tuple(shape)
    coordinate = mesh.get_coordinate()
    if coordinate is None:  # this rank is not in the mesh: it holds nothing
        local_shape, global_offset = (0,) * len(shape), (0,) * len(shape)
    else:
        local_shape, global_offset = _local_box(shape, mesh.shape, coordinate, placements)
    return local_shape, _window(op, shape, local_shape, global_offset)


def _contiguous_strides(shape):
    return tuple(math.prod(shape[d + 1:]) for d in range(len(shape)))


def _plain_state(op, rng_state):
    if isinstance(rng_state, DTensor):
        if not all(isinstance(placement, Replicate) for placement in rng_state.placements):
            raise ValueError(
                f"{op}: expected rng_state to be a plain tensor or a replicated DTensor (the same state on every rank), "
                f"but got placements {rng_state.placements}"
            )
        return rng_state.to_local()
    return rng_state


# ---------------------------------------------------------------- the DTensor rules

_APPLY_ARGUMENTS = ("w", "p", "rng_state", "element_offset", "row_length")


def _mask_apply_rule(_dtensor_class, op, _types, args, kwargs):
    """bernoulli_mask_apply (and its tensor-p form) on a DTensor w: each rank masks its shard
    with the shard's window; the backward comes here too, with the gradient as w."""
    name = "tinybig_cuda.bernoulli_mask_apply"  # as the kernels name both forms
    bound = {"element_offset": 0, "row_length": None, **dict(zip(_APPLY_ARGUMENTS, args)), **kwargs}
    if isinstance(bound["p"], DTensor):
        raise TypeError(f"{name}: expected p as one float on the CPU (a plain tensor), but got a DTensor")
    w, rng_state = bound["w"], _plain_state(name, bound["rng_state"])
    if not isinstance(w, DTensor):
        raise TypeError(f"{name}: expected w to be a DTensor when rng_state is one, but got {type(w).__name__}")
    if bound["row_length"] is not None:
        raise ValueError(
            f"{name}: expected row_length=None for a DTensor w (each shard's geometry comes from its placements), "
            f"but got {bound['row_length']}"
        )
    _check_placements(name, "w", w.placements, w.ndim)
    local_shape, (rows, width, offset, row_length) = _local_window(name, w.shape, w.device_mesh, w.placements)
    local = w.to_local()
    masked = op(local.reshape(rows, width), bound["p"], rng_state, bound["element_offset"] + offset, row_length)
    return DTensor.from_local(masked.view(local_shape), w.device_mesh, w.placements, run_check=False,
                              shape=w.shape, stride=_contiguous_strides(tuple(w.shape)))


def _mask_rule(_dtensor_class, op, _types, args, kwargs):
    """bernoulli_mask called through torch.ops with a replicated DTensor rng_state."""
    bound = {"element_offset": 0, "row_length": None, **dict(zip(("shape", "p", "rng_state"), args)), **kwargs}
    return sharded_bernoulli_mask(bound["shape"], bound["p"], bound["rng_state"], bound["element_offset"],
                                  bound["row_length"], None, None)


def sharded_bernoulli_mask(shape, p, rng_state, element_offset=0, row_length=None, device_mesh=None, placements=None):
    """`bernoulli_mask` as a DTensor of global `shape` (called by it for a mesh or a DTensor state)."""
    op = "tinybig_cuda.bernoulli_mask"
    if device_mesh is None:
        if not isinstance(rng_state, DTensor):
            raise ValueError(f"{op}: expected device_mesh for placements {placements}, but got none")
        device_mesh = rng_state.device_mesh
    if not isinstance(device_mesh, DeviceMesh):
        raise TypeError(f"{op}: expected device_mesh to be a DeviceMesh, but got {type(device_mesh).__name__}")
    placements = tuple(placements) if placements is not None else (Replicate(),) * device_mesh.ndim
    if len(placements) != device_mesh.ndim:
        raise ValueError(f"{op}: expected one placement per mesh dimension ({device_mesh.ndim}), but got {placements}")
    if row_length is not None:
        raise ValueError(f"{op}: expected row_length=None for a sharded mask (its geometry comes from placements), but got {row_length}")
    shape = tuple(shape)
    _check_placements(op, "the mask", placements, len(shape))
    # A negative Shard dimension counts from the end, as distribute_tensor takes it.
    placements = tuple(Shard(pl.dim % len(shape)) if type(pl) is Shard else pl for pl in placements)
    local_shape, (rows, width, offset, window_row_length) = _local_window(op, shape, device_mesh, placements)
    local = handles.bernoulli_mask(
        [rows, width], p, _plain_state(op, rng_state), element_offset + offset, window_row_length
    )
    return DTensor.from_local(local.view(local_shape), device_mesh, placements, run_check=False,
                              shape=torch.Size(shape), stride=_contiguous_strides(shape))


torch.library.register_torch_dispatch("tinybig_cuda::bernoulli_mask_apply", DTensor, _mask_apply_rule)
torch.library.register_torch_dispatch("tinybig_cuda::bernoulli_mask_apply_p_tensor", DTensor, _mask_apply_rule)
torch.library.register_torch_dispatch("tinybig_cuda::bernoulli_mask", DTensor, _mask_rule)
