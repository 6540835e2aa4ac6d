"""Typed Python entry points of the compiled ops, with their fake kernels.

The ops' autograd is registered in C++ (csrc/ops/autograd.cpp)."""

from typing import Sequence

import torch

from . import _arguments as arguments

__all__ = ["bernoulli_mask_apply", "bernoulli_mask"]


def bernoulli_mask_apply(w: torch.Tensor, p: float, rng_state: torch.Tensor, element_offset: int = 0) -> torch.Tensor:
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

    Returns:
        A new contiguous tensor of `w`'s shape and dtype.
    """
    op = "tinybig_cuda.bernoulli_mask_apply"
    p = arguments.keep_probability(op, p)
    element_offset = arguments.integer(op, "element_offset", element_offset)
    return torch.ops.tinybig_cuda.bernoulli_mask_apply.default(w, p, rng_state, element_offset)


def bernoulli_mask(shape: Sequence[int], p: float, rng_state: torch.Tensor, element_offset: int = 0) -> torch.Tensor:
    """The boolean keep-mask that `bernoulli_mask_apply` uses, materialised for inspection.

    Args:
        shape: the mask's shape: a sequence of ints, or one int for a 1-D mask.
        p: keep probability in [0, 1].
        rng_state: int64 tensor ``[seed, offset]``; the mask is made on its device.
        element_offset: flat index of the mask's first element in a larger logical matrix.

    Returns:
        A contiguous bool tensor of `shape`, True where elements are kept.
    """
    op = "tinybig_cuda.bernoulli_mask"
    shape = arguments.shape(op, shape)
    p = arguments.keep_probability(op, p)
    element_offset = arguments.integer(op, "element_offset", element_offset)
    return torch.ops.tinybig_cuda.bernoulli_mask.default(shape, p, rng_state, element_offset)


@torch.library.register_fake("tinybig_cuda::bernoulli_mask_apply")
def _(w, p, rng_state, element_offset=0):
    # The same checks as the kernels (tinybig_cuda/_arguments.py): the fakes also run where no
    # real kernel would (a meta rng_state beside a CPU w dispatches here).
    op = "tinybig_cuda.bernoulli_mask_apply"
    arguments.check_maskable_dtype(op, "w", w)
    arguments.fake_check_probability(op, p)
    arguments.fake_check_rng_state(op, rng_state, w.device)
    arguments.fake_check_element_offset(op, element_offset, w.numel())
    # The real kernels always return a fresh contiguous tensor, so the fake one does too.
    return torch.empty(w.shape, dtype=w.dtype, device=w.device)


@torch.library.register_fake("tinybig_cuda::bernoulli_mask")
def _(shape, p, rng_state, element_offset=0):
    op = "tinybig_cuda.bernoulli_mask"
    numel = arguments.fake_check_shape(op, shape)
    arguments.fake_check_probability(op, p)
    arguments.fake_check_rng_state(op, rng_state, rng_state.device)
    arguments.fake_check_element_offset(op, element_offset, numel)
    return torch.empty(shape, dtype=torch.bool, device=rng_state.device)
