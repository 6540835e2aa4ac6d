"""tinybig_cuda: fused Philox Bernoulli masking for tinyBIG-style parameter fabrication.

    bernoulli_mask_apply(w, p, rng_state)   w where a Bernoulli(p) keep-mask is set, else 0
    bernoulli_mask(shape, p, rng_state)     that mask, materialised for inspection
    fabrication                             tinyBIG's parameter-fabrication base module
    masking_reconciliation                  tinyBIG's masking reconciliation on the fused op
"""

from . import reference
from .modules import fabrication, masking_reconciliation
from .ops import bernoulli_mask, bernoulli_mask_apply

__all__ = ["bernoulli_mask_apply", "bernoulli_mask", "fabrication", "masking_reconciliation", "reference"]
__version__ = "0.1.0"
