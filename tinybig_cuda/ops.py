"""Typed Python entry points of the compiled ops, with their fake kernels.

The ops' autograd is registered in C++ (csrc/ops/autograd.cpp)."""

from typing import Optional, Sequence

import torch

from . import _arguments as arguments
from . import _op_handles as handles
from . import _torch_compat as compat

__all__ = ["bernoulli_mask_apply", "bernoulli_mask"]


def bernoulli_mask_apply(w: torch.Tensor, p: float, rng_state: torch.Tensor, element_offset: int = 0,
                         row_length: Optional[int] = None) -> torch.Tensor:
    """Masks `w` with a Bernoulli(p) keep-mask generated on the fly from `rng_state`.

    Element i of `w` (its row-major flat index, whatever its strides) is kept iff Philox word
    ``element_offset + i`` is below ``floor(p * 2**32)`` (docs/contract.md, 'Mask definition');
    kept elements are copied, dropped ones are written as +0.0. Nothing is rescaled. Differentiable in `w`: the backward
    regenerates the mask from the saved 16-byte `rng_state` instead of storing it.

    Args:
        w: float32, float64, float16 or bfloat16 tensor of any shape and strides.
        p: keep probability in [0, 1] (tinyBIG's convention; not dropout's drop probability).
        rng_state: int64 tensor ``[seed, offset]`` on `w`'s device.
        element_offset: flat index of `w`'s first element in a larger logical matrix (for
            shards of one weight); 0 for a whole matrix.
        row_length: for a window of a larger matrix (a shard of columns): the larger matrix's
            row length, so that element (r, c) of `w` (r counting rows of its last dimension) is
            element ``element_offset + r * row_length + c`` of the larger one. None (the default):
            rows follow one another, element i is ``element_offset + i``.

    A DTensor `w` is masked shard by shard with the geometry of each shard in the whole tensor
    (`rng_state` a plain tensor, the same on every rank, or a replicated DTensor): the result is
    a DTensor placed like `w` whose ``full_tensor()`` is the mask of the unsharded tensor
    (`tinybig_cuda.distributed`).

    Returns:
        A new contiguous tensor of `w`'s shape and dtype.
    """
    op = "tinybig_cuda.bernoulli_mask_apply"
    arguments.rng_state(op, rng_state)
    # Traced by torch.compile, p becomes data (below) that the kernel checks when the graph runs,
    # with this same message: an error raised while dynamo traces would reach the user as dynamo's
    # "Unsupported" under fullgraph=True.
    p = arguments.keep_probability(op, p, check_range=not _is_dynamo_compiling())
    element_offset = arguments.integer(op, "element_offset", element_offset)
    if row_length is not None:
        row_length = arguments.integer(op, "row_length", row_length)
    if not _dtensor_rules_registered and (type(w) not in arguments.PLAIN_TENSOR_TYPES or type(rng_state) not in arguments.PLAIN_TENSOR_TYPES):
        if arguments.is_dtensor(w) or arguments.is_dtensor(rng_state):
            _register_dtensor_rules()
    if _is_dynamo_compiling():
        # p as data: torch.compile specialises an op's float argument (a graph per value), not a
        # tensor. After p changes once, torch.compile traces it as a symbolic float held in a
        # tensor, and this product (1.0 * p: exact) becomes that tensor: one graph for any p.
        # (torch.scalar_tensor(p) would specialise p again.) torch.export (non-strict) runs no
        # TorchDynamo: its program keeps the op with p as a float.
        p_tensor = torch.ones((), dtype=torch.float64, device="cpu") * p
        return handles.bernoulli_mask_apply_p_tensor(w, p_tensor, rng_state, element_offset, row_length)
    if row_length is None:  # the common call, without the argument parsing of a None
        return handles.bernoulli_mask_apply(w, p, rng_state, element_offset)
    return handles.bernoulli_mask_apply(w, p, rng_state, element_offset, row_length)


def bernoulli_mask(shape: Sequence[int], p: float, rng_state: torch.Tensor, element_offset: int = 0,
                   row_length: Optional[int] = None, *, device_mesh=None, placements=None) -> torch.Tensor:
    """The boolean keep-mask that `bernoulli_mask_apply` uses, materialised for inspection.

    Args:
        shape: the mask's shape: a sequence of ints, or one int for a 1-D mask.
        p: keep probability in [0, 1].
        rng_state: int64 tensor ``[seed, offset]``; the mask is made on its device.
        element_offset: flat index of the mask's first element in a larger logical matrix.
        row_length: the larger matrix's row length when the mask is a window of it (see
            `bernoulli_mask_apply`); None: rows follow one another.
        device_mesh, placements: keyword only. Make the mask as a DTensor of global `shape` with
            these placements (as ``torch.distributed.tensor.randn`` takes them): each rank makes
            only its shard, and ``full_tensor()`` is the unsharded mask. With a replicated DTensor
            `rng_state`, its mesh is the default and Replicate() the default placement.

    Returns:
        A contiguous bool tensor of `shape`, True where elements are kept.
    """
    op = "tinybig_cuda.bernoulli_mask"
    shape = arguments.shape(op, shape)
    arguments.rng_state(op, rng_state)
    p = arguments.keep_probability(op, p)
    element_offset = arguments.integer(op, "element_offset", element_offset)
    if row_length is not None:
        row_length = arguments.integer(op, "row_length", row_length)
    if device_mesh is not None or placements is not None or arguments.is_dtensor(rng_state):
        return _register_dtensor_rules().sharded_bernoulli_mask(shape, p, rng_state, element_offset, row_length, device_mesh, placements)
    return handles.bernoulli_mask(shape, p, rng_state, element_offset, row_length)


# Bound once (each call asks): False in eager code, True while torch.compile traces it.
_is_dynamo_compiling = compat.is_dynamo_compiling
_dtensor_rules_registered = False


def _register_dtensor_rules():
    """Imports and returns tinybig_cuda._dtensor, which registers how the ops treat a DTensor:
    at the first DTensor the entry points see, or at import if DTensor is already loaded
    (tinybig_cuda/__init__.py). ``tinybig_cuda.distributed`` imports it too."""
    global _dtensor_rules_registered
    from . import _dtensor

    _dtensor_rules_registered = True
    return _dtensor


@compat.register_fake("tinybig_cuda::bernoulli_mask_apply_p_tensor")
def _(w, p, rng_state, element_offset=0, row_length=None):
    # p is data here: only the kernel can check its value.
    op = "tinybig_cuda.bernoulli_mask_apply"
    torch._check_value(
        p.numel() == 1 and p.dtype.is_floating_point and p.device.type == "cpu",
        lambda: f"{op}: expected p as one float on the CPU, but got {p.numel()} of dtype {p.dtype} on {p.device}",
    )
    arguments.check_maskable_dtype(op, "w", w)
    arguments.fake_check_rng_state(op, rng_state, w.device)
    arguments.fake_check_window(op, element_offset, row_length, w.shape, w.numel())
    return torch.empty(w.shape, dtype=w.dtype, device=w.device)


@compat.register_fake("tinybig_cuda::bernoulli_mask_apply")
def _(w, p, rng_state, element_offset=0, row_length=None):
    # The same checks as the kernels (tinybig_cuda/_arguments.py): the fakes also run where no
    # real kernel would (a meta rng_state beside a CPU w dispatches here).
    op = "tinybig_cuda.bernoulli_mask_apply"
    arguments.check_maskable_dtype(op, "w", w)
    arguments.fake_check_probability(op, p)
    arguments.fake_check_rng_state(op, rng_state, w.device)
    arguments.fake_check_window(op, element_offset, row_length, w.shape, w.numel())
    # The real kernels always return a fresh contiguous tensor, so the fake one does too.
    return torch.empty(w.shape, dtype=w.dtype, device=w.device)


@compat.register_fake("tinybig_cuda::bernoulli_mask")
def _(shape, p, rng_state, element_offset=0, row_length=None):
    op = "tinybig_cuda.bernoulli_mask"
    numel = arguments.fake_check_shape(op, shape)
    arguments.fake_check_probability(op, p)
    arguments.fake_check_rng_state(op, rng_state, rng_state.device)
    arguments.fake_check_window(op, element_offset, row_length, shape, numel)
    return torch.empty(shape, dtype=torch.bool, device=rng_state.device)
