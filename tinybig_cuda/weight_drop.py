"""DropConnect for any PyTorch model: the masked matrix product, a masked nn.Linear, and a
parametrization that masks any parameter.

    masked_linear(x, w, p, rng_state, bias)   F.linear(x, bernoulli_mask_apply(w, p, rng_state), bias),
                                             the masked weight made a block of rows at a time
    MaskedLinear(in_features, out_features)  an nn.Linear on masked_linear
    dropconnect(module, name)                a torch.nn.utils.parametrize parametrization

The op's autograd is registered in C++ (csrc/ops/autograd.cpp, csrc/ops/masked_linear.cpp)."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from . import _arguments as arguments
from . import _fsdp_agreement
from . import _op_handles as handles
from . import _torch_compat as compat
from ._rng_state import draw_rng_state
from .ops import bernoulli_mask_apply

__all__ = ["masked_linear", "MaskedLinear", "dropconnect"]


def masked_linear(x: torch.Tensor, w: torch.Tensor, p: float, rng_state: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, bernoulli_mask_apply(w, p, rng_state), bias)`` without the masked weight.

    The mask is the one `bernoulli_mask_apply` draws for `w` (element ``(r, c)`` kept iff Philox
    word ``r * in_features + c`` of `rng_state` is below ``floor(p * 2**32)``, docs/contract.md),
    bit for bit; the values equal F.linear's up to the order of floating-point sums. The masked
    weight is made a block of rows at a time (1 MiB, more at large batches, at most 16 MiB) and
    multiplied by torch's BLAS into its slice of the output, so no weight-sized tensor is written,
    and the backward keeps only `x`, `w` itself and the 16-byte `rng_state`: it makes the masked
    blocks again (``grad_x``), and masks ``grad_y^T x`` block by block (``grad_w``). Nothing is
    rescaled. See docs/dropconnect.md.

    Args:
        x: input of shape ``(..., in_features)``, of w's dtype and device.
        w: weight of shape ``(out_features, in_features)``: float32, float64, float16 or bfloat16.
        p: keep probability in [0, 1] (not dropout's drop probability).
        rng_state: int64 tensor ``[seed, offset]`` on w's device.
        bias: optional, of shape ``(out_features,)``, of w's dtype and device.

    Returns:
        A new contiguous tensor of shape ``(..., out_features)``.
    """
    p = arguments.keep_probability("tinybig_cuda.masked_linear", p)
    return handles.masked_linear(x, w, p, rng_state, bias)





class MaskedLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose weight is masked by a Bernoulli(p) keep-mask (DropConnect), through
    `masked_linear`: ``y = x (M ⊙ W)^T + b``. Nothing is rescaled, and the mask applies in
    ``eval()`` too (a fixed mask is part of the model; fresh masks give MC-DropConnect samples).

    Args:
        in_features, out_features, bias, device, dtype: as for ``nn.Linear``.
        p: keep probability in [0, 1].
        fixed_mask: if True, every call uses the one mask of the ``rng_state`` buffer, drawn at
            construction from torch's default CPU generator (so ``torch.manual_seed`` reproduces
            it), saved in ``state_dict`` and moved by ``.to()``. If False, each call draws a fresh
            state on the weight's device (its backward reuses that call's state) and keeps it in
            the buffer, which is then not saved.

    Under FSDP2 (``fully_shard``) the forward sees the unsharded weight and runs `masked_linear`.
    Under tensor parallelism (``ColwiseParallel``, ``RowwiseParallel``) the weight is a DTensor:
    each rank masks its shard as part of the whole weight (the masks are those of one process) and
    multiplies it with ``F.linear``. Every rank needs the same ``rng_state``: seed the ranks alike,
    or call ``tinybig_cuda.distributed.broadcast_rng_states`` after init.

    Attributes:
        rng_state: the int64 ``[seed, offset]`` buffer the mask is a function of.
    """

    def __init__(self, in_features, out_features, bias=True, p=0.5, fixed_mask=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.p = arguments.keep_probability("MaskedLinear", p)
        self.fixed_mask = bool(fixed_mask)
        # As masking_reconciliation's: drawn on the CPU (one seed, one mask on every device); on
        # the meta device (FSDP2's deferred init) nothing is drawn until reset_parameters().
        if self.weight.device.type == "meta":
            state = torch.empty(2, dtype=torch.int64, device="meta")
        else:
            state = draw_rng_state("cpu").to(self.weight.device)
        self.register_buffer("rng_state", state, persistent=self.fixed_mask)
        if self.fixed_mask:
            _fsdp_agreement.watch(self)

    def reset_parameters(self):
        """``nn.Linear``'s initialisation, then a new ``rng_state`` (a new mask) from torch's default
        CPU generator, in place on the buffer's device."""
        super().reset_parameters()
        if "rng_state" in self._buffers:  # not yet during nn.Linear's own __init__
            with torch.no_grad():
                self.rng_state.copy_(draw_rng_state("cpu"))

    def forward(self, input):
        if self.fixed_mask:
            state = self.rng_state
        else:
            state = self.rng_state = draw_rng_state(self.weight.device)
        if arguments.is_dtensor(self.weight):
            # Tensor parallelism (ColwiseParallel, RowwiseParallel) holds a DTensor weight: each
            # rank masks its shard with its place in the whole weight (bernoulli_mask_apply's
            # DTensor rule), and DTensor's linear does the rest. The masked shard is written out.
            return F.linear(input, bernoulli_mask_apply(self.weight, self.p, state), self.bias)
        return masked_linear(input, self.weight, self.p, state, self.bias)

    def extra_repr(self):
        return f"{super().extra_repr()}, p={self.p}, fixed_mask={self.fixed_mask}"


class DropConnect(torch.nn.Module):
    """The parametrization `dropconnect` registers: ``weight -> bernoulli_mask_apply(weight, p,
    rng_state)``, with a fixed ``rng_state`` buffer or a fresh one drawn at every evaluation."""

    def __init__(self, p=0.5, fixed_mask=False, device=None):
        super().__init__()
        self.p = arguments.keep_probability("dropconnect", p)
        self.fixed_mask = bool(fixed_mask)
        state = draw_rng_state("cpu")
        self.register_buffer("rng_state", state if device is None else state.to(device), persistent=self.fixed_mask)
        if self.fixed_mask:
            _fsdp_agreement.watch(self)

    def forward(self, weight):
        if self.fixed_mask:
            state = self.rng_state
        else:
            state = self.rng_state = draw_rng_state(weight.device)
        return bernoulli_mask_apply(weight, self.p, state)

    def extra_repr(self):
        return f"p={self.p}, fixed_mask={self.fixed_mask}"


def dropconnect(module, name="weight", p=0.5, fixed_mask=False):
    """Applies DropConnect to the parameter `name` of `module`: every access to ``module.<name>``
    (so every forward) returns it masked by a Bernoulli(p) keep-mask, dropped entries +0.0,
    nothing rescaled; gradients reach the original parameter through the mask.

    A ``torch.nn.utils.parametrize`` parametrization, as ``torch.nn.utils.parametrizations.
    weight_norm`` is: the original parameter becomes ``module.parametrizations.<name>.original``,
    and ``torch.nn.utils.parametrize.remove_parametrizations(module, name,
    leave_parametrized=False)`` restores it. Works on any floating-point parameter of float32,
    float64, float16 or bfloat16 (an LSTM's ``weight_hh_l0``, a Conv2d's or an Embedding's weight).
    The mask applies in ``eval()`` too.

    Args:
        module: the module holding the parameter.
        name: the parameter's name.
        p: keep probability in [0, 1].
        fixed_mask: if False (AWD-LSTM's weight drop), every access draws a new mask. If True, one
            mask, from an ``rng_state`` buffer of the parametrization drawn now from torch's
            default CPU generator and saved in ``state_dict``.

    Returns:
        `module`, parametrized.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"dropconnect: expected module to be a torch.nn.Module, but got {type(module).__name__}")
    parameter = getattr(module, name, None) if isinstance(name, str) else None
    if not isinstance(parameter, torch.Tensor):
        raise ValueError(f"dropconnect: expected name to be a parameter of {type(module).__name__}, but got {name!r}")
    arguments.check_maskable_dtype("dropconnect", name, parameter)
    parametrize.register_parametrization(module, name, DropConnect(p, fixed_mask, parameter.device))
    return module


# ---------------------------------------------------------------- fake kernels


@compat.register_fake("tinybig_cuda::masked_linear")
def _(x, w, p, rng_state, bias=None):
    # csrc/ops/masked_linear.cpp's checks, in its order.
    op = "tinybig_cuda.masked_linear"
    arguments.check_maskable_dtype(op, "w", w)
    torch._check_value(w.dim() == 2, lambda: f"{op}: expected w of shape (out_features, in_features), but got shape {list(w.shape)}")
    _fake_check_like_w(op, "x", x, w)
    torch._check_value(
        x.dim() >= 1 and x.shape[-1] == w.shape[1],
        lambda: f"{op}: expected x of shape (..., {w.shape[1]}) (in_features, w's second dimension), but got shape {list(x.shape)}",
    )
    if bias is not None:
        _fake_check_like_w(op, "bias", bias, w)
        torch._check_value(
            bias.dim() == 1 and bias.shape[0] == w.shape[0],
            lambda: f"{op}: expected bias of shape ({w.shape[0]},) (out_features, w's first dimension), but got shape {list(bias.shape)}",
        )
    arguments.fake_check_probability(op, p)
    arguments.fake_check_rng_state(op, rng_state, w.device)
    return x.new_empty((*x.shape[:-1], w.shape[0]))


def _fake_check_like_w(op, argument, tensor, w):
    torch._check_type(tensor.dtype == w.dtype, lambda: f"{op}: expected {argument} of w's dtype {w.dtype}, but got dtype {tensor.dtype}")
    torch._check_value(tensor.device == w.device, lambda: f"{op}: expected {argument} on w's device {w.device}, but got it on {tensor.device}")


@compat.register_fake("tinybig_cuda::masked_linear_backward_input")
def _(grad_output, w, p, rng_state):
    return grad_output.new_empty((*grad_output.shape[:-1], w.shape[1]))


@compat.register_fake("tinybig_cuda::masked_linear_backward_weight")
def _(grad_output, x, p, rng_state):
    return x.new_empty((grad_output.shape[-1], x.shape[-1]))
