"""The cache of CPU output memory.

Every op returns a new tensor. On the CPU, memory for one of 8 MiB or more is kept when the tensor
is freed and handed to the next output of the same size (rounded up to 2 MiB), like PyTorch's
CUDA caching allocator does for the GPU. Without it, glibc would map fresh pages for each large
output and unmap them on free, and the page faults and zeroing would cost about as much as the
op itself. The cache holds at most 1 GiB by default, per process (so also in each DataLoader
worker that runs the ops); smaller outputs and CUDA outputs use torch's own allocators. The
profiler's memory view counts a block as allocated while a tensor uses it, as for CUDA."""

from . import _C
from . import _arguments as arguments

__all__ = ["cpu_output_cache_info", "set_cpu_output_cache_limit", "empty_cpu_output_cache"]


def cpu_output_cache_info() -> dict:
    """The cache's state: ``limit_bytes``, ``cached_bytes`` and ``cached_blocks`` (memory no tensor
    uses, kept for reuse), and the ``hits`` and ``misses`` of cacheable outputs so far."""
    return dict(_C.output_cache_info())


def set_cpu_output_cache_limit(limit_bytes: int) -> None:
    """Keeps at most `limit_bytes` of freed CPU outputs from now on (0 keeps none), freeing the
    least recently used blocks beyond it at once."""
    _C.set_output_cache_limit(arguments.non_negative("set_cpu_output_cache_limit", "limit_bytes", limit_bytes))


def empty_cpu_output_cache() -> None:
    """Frees every cached block. Blocks in use by tensors return to the cache when those are freed."""
    _C.empty_output_cache()
