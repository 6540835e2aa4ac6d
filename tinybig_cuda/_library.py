"""Loads tinybig_cuda's compiled parts: the op library (which registers torch.ops.tinybig_cuda and
needs no Python) and the `_C` module of Python-side controls, which uses the library's symbols.

Both are compiled against one exact torch, whose C++ ABI is not stable across versions: a build is
checked against the torch it finds here before either is loaded, so a torch upgrade reads as one
clear error instead of an undefined symbol."""

import ctypes
import os
import warnings

import torch

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
REBUILD = "pip install --no-build-isolation --no-deps --force-reinstall ."

NOT_BUILT = (
    f"tinybig_cuda is not built in {PACKAGE_DIR}. If that is its source tree, Python found it before "
    "the installed package (which happens when Python runs from the repository root): run from "
    "another directory, and the tests with the `pytest` command (not `python -m pytest`). If "
    "tinybig_cuda is not installed yet: `pip install --no-build-isolation .` from its source directory."
)

try:
    from . import _build_info as build_info
except ImportError:
    raise ImportError(NOT_BUILT) from None
OP_LIBRARY_PATH = os.path.join(PACKAGE_DIR, build_info.OP_LIBRARY)
if not os.path.exists(OP_LIBRARY_PATH):  # a source tree that setup.py wrote _build_info.py into
    raise ImportError(NOT_BUILT)

if torch.__version__ != build_info.TORCH_VERSION:
    raise ImportError(
        f"tinybig_cuda was built against torch {build_info.TORCH_VERSION}, but torch "
        f"{torch.__version__} is installed: compiled torch extensions load only into the torch they "
        f"were built with. Rebuild it against this torch, from tinybig_cuda's source directory: {REBUILD}"
    )

# RTLD_GLOBAL: _C, loaded next, finds the library's functions (the CPU path, the output cache) by
# name instead of carrying a second copy of them.
ctypes.CDLL(OP_LIBRARY_PATH, mode=ctypes.RTLD_GLOBAL)
torch.ops.loaded_libraries.add(OP_LIBRARY_PATH)

from . import _C  # noqa: E402

if build_info.CUDA_KERNELS != _C.has_cuda_kernels():
    raise ImportError(f"tinybig_cuda's {OP_LIBRARY_PATH} is not the one its build recorded: {REBUILD}")

if not build_info.CUDA_KERNELS and torch.version.cuda is not None and torch.cuda.is_available():
    warnings.warn(
        f"torch {torch.__version__} can use this machine's GPU, but tinybig_cuda was built without its "
        f"CUDA kernels ({build_info.CUDA_REASON}), so its ops refuse CUDA tensors. Rebuild with the CUDA "
        f"toolkit present (TINYBIG_CUDA_BUILD=1 makes the build fail if it cannot build them): {REBUILD}",
        stacklevel=3,
    )
