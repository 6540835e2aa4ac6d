"""tinybig_cuda as a drop-in for tinyBIG's own masking reconciliation, on any torch it supports."""

import importlib
import importlib.util
import os
import sys
import types
import warnings

from .modules import masking_reconciliation

__all__ = ["import_tinybig", "patch_tinybig"]

# Where tinyBIG 0.2.1 defines its masking_reconciliation and where it re-exports it: its configs
# name the class by either path, and tinyBIG's config.get_obj_from_str looks the name up there.
_TINYBIG_MODULES = ("tinybig.reconciliation.basic_reconciliation", "tinybig.reconciliation")
_DATA_FOLDER = os.sep + os.path.join("tinybig", "data") + os.sep


def import_tinybig():
    """Imports tinyBIG and returns it, also where a newer torch leaves its data loaders behind.

    ``import tinybig`` imports every loader of ``tinybig.data``, and its text and vision loaders
    need torchtext and torchvision as tinyBIG pins them (torchtext exists only up to torch 2.3).
    Where importing them fails, tinyBIG is imported without them, with a warning:
    ``tinybig.data`` is then its folder with nothing imported, so ``tinybig.data.base_data`` and
    each loader whose requirements are met still import by their full names. Everything else of
    tinyBIG (models, layers, heads, functions, configs, learners) is whole. In tinyBIG's own
    environment this is plain ``import tinybig``.

    Raises:
        ImportError: tinyBIG is not installed, or fails to import outside its data loaders.
    """
    try:
        return importlib.import_module("tinybig")
    except Exception as error:  # an ImportError, or a loader's RuntimeError or SyntaxError
        if not _raised_in_data_loaders(error):
            raise
        reason = f"{type(error).__name__}: {error}"
    for name in [name for name in sys.modules if name == "tinybig" or name.startswith("tinybig.")]:
        del sys.modules[name]  # what the failed import left half made
    data = types.ModuleType("tinybig.data")
    data.__path__ = [os.path.join(path, "data") for path in importlib.util.find_spec("tinybig").submodule_search_locations]
    sys.modules["tinybig.data"] = data
    tinybig = importlib.import_module("tinybig")
    warnings.warn(
        f"tinyBIG imported without its data loaders (tinybig.data), which cannot import with torch "
        f"{_torch_version()} ({reason}); the rest of tinyBIG is whole",
        stacklevel=2,
    )
    return tinybig


def _raised_in_data_loaders(error):
    if isinstance(error, SyntaxError) and _DATA_FOLDER in (error.filename or ""):
        return True
    traceback = error.__traceback__
    while traceback is not None:
        if _DATA_FOLDER in traceback.tb_frame.f_code.co_filename:
            return True
        traceback = traceback.tb_next
    return False


def _torch_version():
    import torch

    return torch.__version__


def patch_tinybig():
    """Makes tinyBIG build tinybig_cuda's `masking_reconciliation` wherever it reaches its own.

    After this call, ``tinybig.reconciliation.masking_reconciliation``, the class in the module
    that defines it, and so every config string that names either (``"function_class":
    "tinybig.reconciliation.masking_reconciliation"``) give this package's class; calling it again
    changes nothing. Code that already holds tinyBIG's class (``from tinybig.reconciliation import
    masking_reconciliation`` before the call, or modules built before it) keeps it: call this first,
    as Liger Kernel's ``apply_liger_kernel_to_*`` are called before a model is built. tinyBIG is
    imported by `import_tinybig`, so this works with a torch too new for tinyBIG's data loaders.

    Raises:
        ImportError: tinyBIG is not installed (or fails to import).
    """
    import_tinybig()
    for name in _TINYBIG_MODULES:
        setattr(importlib.import_module(name), "masking_reconciliation", masking_reconciliation)
