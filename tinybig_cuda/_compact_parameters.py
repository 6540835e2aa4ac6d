"""masking_reconciliation's ``compact=True`` half: parameters that are only the K entries its fixed
mask keeps (docs/compact.md), on the compact ops of compact.py.

`CompactParameters` is a base of masking_reconciliation (tinybig_cuda/modules.py), which keeps
the state, p and the fixed-mask switch that these methods read."""

import math

import torch

from . import _arguments as arguments
from . import _torch_compat as compat
from ._rng_state import as_buffer
from .compact import bernoulli_mask_compress, bernoulli_mask_expand, count_kept

_NAME = "masking_reconciliation"


class CompactParameters:
    """The compact parameters of a module with ``rng_state``, ``p``, ``fixed_mask``,
    ``_kept_counts`` (a dict) and ``_state_on(device)``."""

    def _compact_forward(self, n, D, w, device):
        """`forward` with ``compact=True``: w's K values scattered into the (n, D) matrix, with n, D
        checked and w a tensor."""
        if arguments.is_dtensor(w):
            return self._compact_forward_dtensor(n, D, w, device)
        arguments.check_device(_NAME, w, device)
        arguments.check_maskable_dtype(_NAME, "w", w)  # the op would call it `values`
        state = self._compact_ops_state(w.device)
        if state.device.type == "cpu" and not compat.is_compiling():  # the op checks the count again, also when compiled
            kept = self._kept_count(n, D, state)
            if w.numel() != kept:
                raise ValueError(
                    f"{_NAME}: expected w to have calculate_l({n}, {D}) = {kept} elements (compact=True: "
                    f"the entries the mask keeps of the {n}x{D} matrix), but got shape {tuple(w.shape)} ({w.numel()} elements)"
                )
        matrix = bernoulli_mask_expand(w.reshape(-1), self.p, state, (n, D))
        self._mask_matrix_of = (n, D, w.device)  # once the call succeeded
        return matrix

    def _compact_forward_dtensor(self, n, D, w, device):
        """A DTensor of values (each rank a shard of the K kept entries, or all of them): a shard's
        entries land anywhere in the matrix (each depends on how many entries before it are kept),
        so the values are gathered and scattered on every rank, giving a replicated (n, D) DTensor
        on w's mesh that is the one-process matrix bit for bit. Differentiable: each rank's gradient
        of its shard is its part of the one-process gradient."""
        from torch.distributed.tensor import DTensor, Replicate

        whole = [Replicate()] * w.device_mesh.ndim
        matrix = self._compact_forward(n, D, w.redistribute(w.device_mesh, whole).to_local(), device)
        return DTensor.from_local(matrix, w.device_mesh, whole, run_check=False)

    def _kept_count(self, n, D, state=None):
        """K of the mask of `state` (the module's rng_state if None), remembered by value."""
        if n * D > arguments.MAX_COMPACT_ELEMENTS:
            raise ValueError(
                f"{_NAME}: expected n*D <= {arguments.limit_text(arguments.MAX_COMPACT_ELEMENTS)} (the most elements "
                f"a compact matrix can have), but got n={n}, D={D}"
            )
        state = self.rng_state if state is None else state
        # Keyed on the state's value (on CUDA, reading it is a 16-byte copy): a new state tensor
        # at a freed address, or one written behind autograd's back, can never give a stale count.
        # The count is the same on every device.
        key = (n, D, self.p, tuple(state.tolist()))
        kept = self._kept_counts.get(key)
        if kept is None:
            if len(self._kept_counts) >= 64:
                self._kept_counts.clear()
            kept = self._kept_counts[key] = count_kept(n * D, self.p, state)
        return kept

    def _compact_ops_state(self, device):
        """The fixed state as the compact ops take it for data on `device`: on the CPU wherever
        its value can be read, so that the ops check the kept count without waiting for the device
        and, on CUDA, skip counting a mask they have seen (csrc/ops/cuda/compact_cuda.cpp).

        - A state on the CPU stays there. Used with CUDA data it is pinned, once, so that a CUDA
          graph captured with it copies its value at every replay.
        - A state elsewhere moves to `device` for good, as for the masking ops; its 16 bytes are
          then read back on each call (on CUDA, one host sync). Under torch.compile or CUDA graph
          capture, where no value can be read, and on the meta device, the state itself is passed.
        """
        state = self._buffers["rng_state"]
        if state.device.type == "cpu":
            if device.type == "cuda" and not compat.is_compiling() and not state.is_pinned():
                state = self._buffers["rng_state"] = as_buffer(state.pin_memory)
            return state
        state = self._state_on(device)
        if compat.is_compiling() or state.is_meta or (state.is_cuda and torch.cuda.is_current_stream_capturing()):
            return state
        return state.cpu()

    def compress_parameters(self, w, n, D):
        """Full parameters -> compact ones: the entries of each (n, D) row of `w` that this module's
        mask keeps, for loading full-size (tinyBIG-style) weights into a compact module.

        Args:
            w: tensor of shape (..., n*D), e.g. tinyBIG's (1, n*D) or (channels, n*D) parameter.
            n, D: the matrix's shape.

        Returns:
            A new tensor of shape (..., K), K = calculate_l(n, D) of a compact module with this
            ``rng_state`` and ``p``; `forward` of a compact module on it gives the same matrix as
            `forward` of a full module on `w`. (tinyBIG's own masks come from torch.rand and
            cannot be reproduced: a converted model uses this module's mask.)
        """
        n, D = arguments.matrix_shape(_NAME, n, D)
        self._check_fixed_mask("compress_parameters")
        if w.dim() == 0 or w.shape[-1] != n * D:
            raise ValueError(f"{_NAME}: expected w of shape (..., n*D) = (..., {n * D}), but got shape {tuple(w.shape)}")
        _refuse_dtensor("compress_parameters", w)
        state = self._compact_ops_state(w.device)
        kept = self._kept_count(n, D, state)
        rows = [bernoulli_mask_compress(row, self.p, state, kept) for row in _rows(w, n * D)]
        return _stack_rows(rows, w, kept)

    def expand_parameters(self, w, n, D):
        """Compact parameters -> full ones: each row of K kept entries scattered into its (n, D)
        matrix's row-major positions, zeros elsewhere; the inverse of `compress_parameters` up to
        the dropped entries.

        Args:
            w: tensor of shape (..., K), K = calculate_l(n, D) of a compact module.
            n, D: the matrix's shape.

        Returns:
            A new tensor of shape (..., n*D).
        """
        n, D = arguments.matrix_shape(_NAME, n, D)
        self._check_fixed_mask("expand_parameters")
        _refuse_dtensor("expand_parameters", w)
        state = self._compact_ops_state(w.device)
        kept = self._kept_count(n, D, state)
        if w.dim() == 0 or w.shape[-1] != kept:
            raise ValueError(
                f"{_NAME}: expected w of shape (..., K) = (..., {kept}), K the entries the mask keeps "
                f"of the {n}x{D} matrix, but got shape {tuple(w.shape)}"
            )
        rows = [bernoulli_mask_expand(row, self.p, state, (n * D,)) for row in _rows(w, kept)]
        return _stack_rows(rows, w, n * D)

    def _check_fixed_mask(self, method):
        if not self.fixed_mask:
            raise ValueError(f"{_NAME}.{method}: converts parameters under one fixed mask, so it expected fixed_mask=True, but got fixed_mask=False")


def _refuse_dtensor(method, w):
    if arguments.is_dtensor(w):
        raise NotImplementedError(
            f"{_NAME}.{method}: expected w to be a plain tensor, but got a DTensor: compress_parameters and "
            "expand_parameters convert plain tensors (a shard's kept entries depend on every entry before it); "
            "convert w.full_tensor() and distribute the result"
        )


def _rows(w, row_length):
    """w's rows of `row_length`, as a 2-D tensor: counted from w's leading sizes, since a -1 cannot
    be inferred for rows of no elements."""
    return w.reshape(math.prod(w.shape[:-1]), row_length)


def _stack_rows(rows, w, row_length):
    if not rows:
        return w.new_empty(tuple(w.shape[:-1]) + (row_length,))
    return torch.stack(rows).reshape(tuple(w.shape[:-1]) + (row_length,))
