"""Typed Python entry points of the compiled ops, with their fake kernels.

The ops' autograd is registered in C++ (csrc/autograd.cpp)."""

import os
from typing import Sequence

import torch

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.tinybig_cuda)
except ImportError as error:  # most often: the source tree shadows the installed package
    raise ImportError(
        f"tinybig_cuda's compiled extension could not be loaded from {os.path.dirname(__file__)}: {error}. "
        "Install it with `pip install --no-build-isolation .` and import it from outside the "
        "source tree (run tests with the `pytest` command, not `python -m pytest`)."
    ) from error

__all__ = ["bernoulli_mask_apply", "bernoulli_mask"]


def bernoulli_mask_apply(w: torch.Tensor, p: float, rng_state: torch.Tensor, element_offset: int = 0) -> torch.Tensor:
    """Masks `w` with a Bernoulli(p) keep-mask generated on the fly from `rng_state`.

    Element i of `w` (its row-major flat index, whatever its strides) is kept iff Philox word
    ``element_offset + i`` is below ``floor(p * 2**32)`` (DESIGN.md §2); kept elements are copied,
    dropped ones are written as +0.0. Nothing is rescaled. Differentiable in `w`: the backward
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
    return torch.ops.tinybig_cuda.bernoulli_mask_apply.default(w, p, rng_state, element_offset)


def bernoulli_mask(shape: Sequence[int], p: float, rng_state: torch.Tensor, element_offset: int = 0) -> torch.Tensor:
    """The boolean keep-mask that `bernoulli_mask_apply` uses, materialised for inspection.

    Args:
        shape: the mask's shape.
        p: keep probability in [0, 1].
        rng_state: int64 tensor ``[seed, offset]``; the mask is made on its device.
        element_offset: flat index of the mask's first element in a larger logical matrix.

    Returns:
        A contiguous bool tensor of `shape`, True where elements are kept.
    """
    return torch.ops.tinybig_cuda.bernoulli_mask.default(list(shape), p, rng_state, element_offset)


_MASKABLE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_like_the_kernels(op, p, rng_state, device, element_offset):
    """The C++ argument checks, repeated for the fake kernels: they also run where no real kernel
    would (a meta rng_state beside a CPU w dispatches here), and must refuse the same inputs."""
    torch._check_value(0.0 <= p <= 1.0, lambda: f"{op}: expected p, the keep probability, in [0, 1], but got {p!r}")
    torch._check_type(
        rng_state.dtype == torch.int64,
        lambda: f"{op}: expected rng_state to be an int64 tensor [seed, offset], but got dtype {rng_state.dtype}",
    )
    torch._check_value(
        rng_state.shape == (2,), lambda: f"{op}: expected rng_state to have shape [2] ([seed, offset]), but got shape {list(rng_state.shape)}"
    )
    torch._check_value(
        rng_state.device == device,
        lambda: f"{op}: expected rng_state on {device} (the device of the data it masks), but got it on {rng_state.device}",
    )
    torch._check_value(element_offset >= 0, lambda: f"{op}: expected element_offset >= 0, but got {element_offset}")


@torch.library.register_fake("tinybig_cuda::bernoulli_mask_apply")
def _(w, p, rng_state, element_offset=0):
    op = "tinybig_cuda.bernoulli_mask_apply"
    torch._check_type(
        w.dtype in _MASKABLE_DTYPES, lambda: f"{op}: expected w to be float32, float64, float16 or bfloat16, but got dtype {w.dtype}"
    )
    _check_like_the_kernels(op, p, rng_state, w.device, element_offset)
    # The real kernels always return a fresh contiguous tensor, so the fake one does too.
    return torch.empty(w.shape, dtype=w.dtype, device=w.device)


@torch.library.register_fake("tinybig_cuda::bernoulli_mask")
def _(shape, p, rng_state, element_offset=0):
    _check_like_the_kernels("tinybig_cuda.bernoulli_mask", p, rng_state, rng_state.device, element_offset)
    return torch.empty(shape, dtype=torch.bool, device=rng_state.device)
