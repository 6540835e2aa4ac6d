"""tinybig_cuda: fused Philox Bernoulli masking for tinyBIG-style parameter fabrication.

    bernoulli_mask_apply(w, p, rng_state)   w where a Bernoulli(p) keep-mask is set, else 0
    bernoulli_mask(shape, p, rng_state)     that mask, materialised for inspection
    fabrication                             tinyBIG's parameter-fabrication base module
    masking_reconciliation                  tinyBIG's masking reconciliation on the fused op
                                            (compact=True: only the kept entries are parameters)
    bernoulli_mask_count / count_kept       how many entries a mask keeps (tensor / int)
    bernoulli_mask_expand                   kept values -> the full masked matrix
    bernoulli_mask_compress                 full matrix -> its kept values
    empty_compact_cache                     forget the masks expand and compress have counted
    cpu_output_cache_info, set_cpu_output_cache_limit, empty_cpu_output_cache
                                            the cache that reuses large CPU outputs' memory
    patch_tinybig()                         make tinyBIG build this package's masking_reconciliation
    import_tinybig()                        import tinyBIG, also on a torch too new for its data loaders
    distributed.broadcast_rng_states        one mask state on every rank (FSDP2); DTensor support
    distributed.FabricatedColwiseParallel   tensor parallelism for a tinyBIG-style layer
    masked_linear, MaskedLinear, dropconnect  DropConnect for any model (docs/dropconnect.md)
"""

import importlib
import sys

from . import _library  # first: checks the build against this torch and loads the ops
from . import ops, reference
from .modules import fabrication, masking_reconciliation
from .compact import bernoulli_mask_compress, bernoulli_mask_count, bernoulli_mask_expand, count_kept, empty_compact_cache
from .drop_in import import_tinybig, patch_tinybig
from .memory import cpu_output_cache_info, empty_cpu_output_cache, set_cpu_output_cache_limit
from .ops import bernoulli_mask, bernoulli_mask_apply
from .weight_drop import MaskedLinear, dropconnect, masked_linear

from . import _torch_compat

# DTensor in use: register its rules now (else at first use, which on an older torch says which torch has them).
if "torch.distributed.tensor" in sys.modules and _torch_compat.TORCH_VERSION >= _torch_compat.DTENSOR[0]:
    ops._register_dtensor_rules()

__all__ = ["bernoulli_mask_apply", "bernoulli_mask", "fabrication", "masking_reconciliation", "reference"]
__all__ += ["bernoulli_mask_count", "count_kept", "bernoulli_mask_expand", "bernoulli_mask_compress", "empty_compact_cache"]
__all__ += ["cpu_output_cache_info", "set_cpu_output_cache_limit", "empty_cpu_output_cache", "import_tinybig", "patch_tinybig"]
__all__ += ["masked_linear", "MaskedLinear", "dropconnect"]
__version__ = "0.1.0"
op_library_path = _library.OP_LIBRARY_PATH  # for torch.ops.load_library, AOTInductor runners and C++


def __getattr__(name):
    # tinybig_cuda.distributed on first use: it imports torch.distributed.tensor (about a second).
    # (Not `from . import distributed`, which asks this function for the attribute first.)
    if name == "distributed":
        return importlib.import_module(f"{__name__}.distributed")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
