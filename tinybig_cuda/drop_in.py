"""tinybig_cuda as a drop-in for tinyBIG's own masking reconciliation."""

from .modules import masking_reconciliation

__all__ = ["patch_tinybig"]

# Where tinyBIG 0.2.1 defines its masking_reconciliation and where it re-exports it: its configs
# name the class by either path, and tinyBIG's config.get_obj_from_str looks the name up there.
_TINYBIG_MODULES = ("tinybig.reconciliation.basic_reconciliation", "tinybig.reconciliation")


def patch_tinybig():
    """Makes tinyBIG build tinybig_cuda's `masking_reconciliation` wherever it reaches its own.

    After this call, ``tinybig.reconciliation.masking_reconciliation``, the class in the module
    that defines it, and so every config string that names either (``"function_class":
    "tinybig.reconciliation.masking_reconciliation"``) give this package's class; calling it again
    changes nothing. Code that already holds tinyBIG's class (``from tinybig.reconciliation import
    masking_reconciliation`` before the call, or modules built before it) keeps it: call this first,
    as Liger Kernel's ``apply_liger_kernel_to_*`` are called before a model is built.

    Raises:
        ImportError: tinyBIG is not installed (or fails to import).
    """
    import importlib

    for name in _TINYBIG_MODULES:
        setattr(importlib.import_module(name), "masking_reconciliation", masking_reconciliation)
