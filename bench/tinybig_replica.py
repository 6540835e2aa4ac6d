"""tinyBIG 0.2.1's `masking_reconciliation`, the baseline the bench beats: the installed tinyBIG
where it imports (`baseline()`), else a faithful replica of it.

The replica is kept deliberately as tinyBIG wrote it, slow parts included, so the speed-ups the
bench reports are against the real thing and not against a tidied-up version:

- the mask is ``torch.rand(n, D) < p``: a float32 tensor drawn by the single-threaded CPU generator
  (MT19937), then compared, on the CPU whatever ``device`` says, and moved by ``.to(device)`` in
  every call (a host-to-device copy on CUDA, even for a cached mask);
- it is a plain attribute (``mask_matrix``): not a buffer, so not in ``state_dict`` and not moved
  by ``.to()``; it stays alive between calls, also when ``fixed_mask=False``;
- ``fixed_mask=False`` draws a new mask every call; ``fixed_mask=True`` draws it at the first
  call and reuses it, never checking it against a new ``(n, D)``;
- the output is ``w.view(n, D) * mask``: a bool-to-float multiply, whose autograd saves the
  ``n*D``-byte boolean mask for backward;
- ``p`` is the fraction kept; nothing is rescaled or range-checked.

Only the docstrings and the trimmed base class (tinyBIG's ``fabrication`` is a ``Module`` plus a
``function`` holding ``name`` and ``device``) differ from tinyBIG's code.
"""

import importlib.util

import torch


def baseline():
    """(tinyBIG's masking_reconciliation class, a description of which one it is)."""
    if importlib.util.find_spec("tinybig") is None:
        return masking_reconciliation, "the replica of tinyBIG 0.2.1 (bench/tinybig_replica.py; tinyBIG is not installed)"
    import tinybig_cuda

    tinybig = tinybig_cuda.import_tinybig()
    from tinybig.reconciliation.basic_reconciliation import masking_reconciliation as installed

    return installed, f"tinyBIG {tinybig.__version__}, installed"


class fabrication(torch.nn.Module):
    """tinyBIG's base class: a Module whose ``device`` is a string fixed at construction."""

    def __init__(self, name="base_fabrication", require_parameters=True, enable_bias=False, device="cpu", *args, **kwargs):
        super().__init__()
        self.name = name
        self.require_parameters = require_parameters
        self.enable_bias = enable_bias
        self.device = device

    def get_name(self):
        return self.name


class masking_reconciliation(fabrication):
    """psi(w) = M ⊙ reshape(w) with M = torch.rand(n, D) < p, exactly as tinyBIG 0.2.1 does it."""

    def __init__(self, name="masking_reconciliation", p=0.5, fixed_mask=True, *args, **kwargs):
        super().__init__(name=name, *args, **kwargs)
        self.p = p
        self.mask_matrix = None
        self.fixed_mask = fixed_mask

    def calculate_l(self, n, D):
        return n * D

    def generate_masking_matrix(self, n, D, device="cpu"):
        self.mask_matrix = torch.rand(n, D, device=device) < self.p

    def forward(self, n, D, w, device="cpu", *args, **kwargs):
        if not self.fixed_mask:
            self.generate_masking_matrix(n=n, D=D)
        elif self.mask_matrix is None:
            self.generate_masking_matrix(n=n, D=D)
        return w.view(n, D) * self.mask_matrix.to(device)
