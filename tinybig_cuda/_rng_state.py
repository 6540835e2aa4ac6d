"""The mask state the modules keep: a fresh int64 ``[seed, offset]``, and the buffer that holds it.

A mask is a pure function of its 16-byte state (docs/contract.md, 'Mask definition'), so the
modules (masking_reconciliation, MaskedLinear, the dropconnect parametrization) store only this."""

import torch

from . import _C
from . import _torch_compat as compat


def draw_rng_state(device):
    """A fresh [seed, offset] from torch's generator for `device`, covering all 64 bits of each, made
    on the device itself (a CUDA state costs no host sync). Eager: two draws of the generator in C++
    (masked_fabrication draws the same way). Compiled, or under FakeTensorMode (which has no data
    to write the draws into, as for nn.Linear's init there): torch.randint, which the compiler traces
    into the graph and makes with its own generator."""
    if compat.is_compiling() or _fake_mode_active():
        return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=device)
    return _C.draw_rng_state(torch.device(device))


def _fake_mode_active():
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None


def as_buffer(make):
    """make(), a tensor a module keeps as its rng_state buffer: made outside inference mode, so
    that a first call under torch.inference_mode() does not leave an inference tensor that
    training can not save for backward nor reset_parameters() write. (torch.compile cannot trace
    the inference-mode query: there the tensor is made as traced.)"""
    if compat.is_compiling() or not torch.is_inference_mode_enabled():
        return make()
    with torch.inference_mode(False):
        return make()


def is_rng_state(value):
    """Whether `value` can be a state as it is: converting one (copy_ does) would change its mask."""
    return isinstance(value, torch.Tensor) and value.dtype == torch.int64 and value.shape == (2,)
