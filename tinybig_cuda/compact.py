"""Compact parameters: store only the entries a fixed mask keeps.

A mask that is a pure function of ``rng_state`` (docs/contract.md, 'Mask definition') lets a
model keep just the ``K`` entries it keeps out of an ``(n, D)`` matrix, in row-major order, and
fabricate the full matrix when it is used (docs/contract.md, 'Compact parameters'). These are the typed entry points of the three compiled ops that make that work,
with their fake kernels (their autograd is in csrc/ops/autograd.cpp):

    bernoulli_mask_count(numel, p, rng_state)           K, as an int64 tensor on rng_state's device
    count_kept(numel, p, rng_state)                     K, as a Python int
    bernoulli_mask_expand(values, p, rng_state, shape)  the K values scattered into a zero matrix
    bernoulli_mask_compress(full, p, rng_state, K)      the K kept entries of a full matrix
    empty_compact_cache()                               forget the masks expand and compress counted

Expand and compress are each other's adjoint, so each is the other's backward.
"""

from typing import Optional, Sequence

import torch

from . import _C
from . import _arguments as arguments
from . import _op_handles as handles
from . import _torch_compat as compat

__all__ = ["bernoulli_mask_count", "count_kept", "bernoulli_mask_expand", "bernoulli_mask_compress", "empty_compact_cache"]


def bernoulli_mask_count(numel: int, p: float, rng_state: torch.Tensor, element_offset: int = 0) -> torch.Tensor:
    """How many of ``numel`` elements the Bernoulli(p) mask of `rng_state` keeps, counted by a
    kernel without materialising the mask.

    Args:
        numel: number of elements (``n*D`` for an (n, D) matrix).
        p: keep probability in [0, 1].
        rng_state: int64 tensor ``[seed, offset]``; the count is made on its device.
        element_offset: flat index of the first element in a larger logical matrix.

    Returns:
        An int64 scalar tensor on `rng_state`'s device (no host sync on CUDA). Its expectation is
        ``p * numel``.
    """
    op = "tinybig_cuda.bernoulli_mask_count"
    arguments.rng_state(op, rng_state)
    numel = arguments.integer(op, "numel", numel)
    p = arguments.keep_probability(op, p)
    element_offset = arguments.integer(op, "element_offset", element_offset)
    return handles.bernoulli_mask_count(numel, p, rng_state, element_offset)


def count_kept(numel: int, p: float, rng_state: torch.Tensor, element_offset: int = 0) -> int:
    """`bernoulli_mask_count` as a Python int (on CUDA, this waits for the count)."""
    return int(bernoulli_mask_count(numel, p, rng_state, element_offset).item())


def bernoulli_mask_expand(
    values: torch.Tensor, p: float, rng_state: torch.Tensor, shape: Sequence[int], element_offset: int = 0
) -> torch.Tensor:
    """The full matrix of `shape` whose kept entries, in row-major order, are `values`.

    Entry i of the result (row-major) is ``values[r]`` where the mask keeps i and r kept entries
    precede it, and +0.0 where the mask drops i. So for any full matrix ``w``,
    ``bernoulli_mask_expand(bernoulli_mask_compress(w, ...), ...)`` is
    ``bernoulli_mask_apply(w, ...)`` bit for bit. Differentiable in `values`; the backward is
    `bernoulli_mask_compress` of the incoming gradient.

    Args:
        values: 1-D float32, float64, float16 or bfloat16 tensor holding exactly the mask's kept
            count of entries (anything else raises a ValueError that says both counts; on CUDA,
            checking costs a host sync per call, or only on a mask's first call where
            `rng_state` is on the CPU).
        p: keep probability in [0, 1].
        rng_state: int64 tensor ``[seed, offset]`` on `values`' device, or on the CPU (on
            CUDA, the count is then checked without waiting for the GPU).
        shape: the full matrix's shape.
        element_offset: flat index of the matrix's element 0 in a larger logical matrix (for
            shards); ``values[0]`` is then the shard's first kept entry.

    Returns:
        A new contiguous tensor of `shape` and `values`' dtype.
    """
    op = "tinybig_cuda.bernoulli_mask_expand"
    arguments.rng_state(op, rng_state)
    shape = arguments.shape(op, shape)
    p = arguments.keep_probability(op, p)
    element_offset = arguments.integer(op, "element_offset", element_offset)
    return handles.bernoulli_mask_expand(values, p, rng_state, shape, element_offset)


def bernoulli_mask_compress(
    full: torch.Tensor, p: float, rng_state: torch.Tensor, kept_count: Optional[int] = None, element_offset: int = 0
) -> torch.Tensor:
    """The entries of `full` that the mask keeps, in row-major order.

    Differentiable in `full`; the backward is `bernoulli_mask_expand` of the incoming gradient.

    Args:
        full: float32, float64, float16 or bfloat16 tensor of any shape and strides.
        p: keep probability in [0, 1].
        rng_state: int64 tensor ``[seed, offset]`` on `full`'s device, or on the CPU (as for
            `bernoulli_mask_expand`).
        kept_count: the mask's kept count for ``full.numel()`` elements (from `count_kept`). The op
            needs it to know its output's size without running (torch.compile, fake tensors), and
            refuses any other value. None counts it here first (on CUDA, a host sync).
        element_offset: flat index of `full`'s element 0 in a larger logical matrix.

    Returns:
        A new contiguous 1-D tensor of `kept_count` elements, `full`'s dtype.
    """
    op = "tinybig_cuda.bernoulli_mask_compress"
    arguments.rng_state(op, rng_state)
    p = arguments.keep_probability(op, p)
    element_offset = arguments.integer(op, "element_offset", element_offset)
    if kept_count is None:
        kept_count = count_kept(full.numel(), p, rng_state, element_offset)
    kept_count = arguments.integer(op, "kept_count", kept_count)
    return handles.bernoulli_mask_compress(full, p, rng_state, kept_count, element_offset)


def empty_compact_cache() -> None:
    """Forgets every mask that expand and compress have counted. They remember, by value, the
    ranks of the masks they count, so that later calls on the same mask skip the counting: on the
    CPU a few KiB per mask (at most 16 MiB), and on CUDA, for a ``rng_state`` on the CPU, 1/4 byte
    per element of GPU memory (at most 256 MiB per process; freed by itself when the GPU runs out
    of memory for a new mask). The next call on a forgotten mask counts it again."""
    _C.empty_compact_cache()


# ---------------------------------------------------------------- fake kernels
# The same checks as the kernels, in the same order (tinybig_cuda/_arguments.py).


@compat.register_fake("tinybig_cuda::bernoulli_mask_count")
def _(numel, p, rng_state, element_offset=0):
    arguments.fake_check_count_arguments("tinybig_cuda.bernoulli_mask_count", numel, p, rng_state, element_offset)
    return torch.empty((), dtype=torch.int64, device=rng_state.device)


@compat.register_fake("tinybig_cuda::bernoulli_mask_expand")
def _(values, p, rng_state, shape, element_offset=0):
    arguments.fake_check_expand_arguments("tinybig_cuda.bernoulli_mask_expand", values, p, rng_state, shape, element_offset)
    # Whether values holds the mask's kept count depends on data; the real kernels check it.
    return torch.empty(shape, dtype=values.dtype, device=values.device)


@compat.register_fake("tinybig_cuda::bernoulli_mask_compress")
def _(full, p, rng_state, kept_count, element_offset=0):
    arguments.fake_check_compress_arguments("tinybig_cuda.bernoulli_mask_compress", full, p, rng_state, kept_count, element_offset)
    return torch.empty((kept_count,), dtype=full.dtype, device=full.device)
