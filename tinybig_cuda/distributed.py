"""Scale-out: DTensor support, and one mask state on every rank.

Importing this module registers how the ops treat a DTensor (tinybig_cuda/_dtensor.py): each
shard is masked as its part of the whole tensor, so that a DTensor result's ``full_tensor()`` is,
bit for bit, the mask of the unsharded tensor (docs/distributed.md). The entry points register it
themselves at the first DTensor they see; code that passes DTensors to ``torch.ops.tinybig_cuda``
directly imports this module first.

The other half is keeping every rank's mask state equal: `broadcast_rng_states`. And
`FabricatedColwiseParallel` is the tensor-parallel style of a tinyBIG-style layer.
"""

import torch
import torch.distributed as dist

from . import _dtensor  # noqa: F401  (registers the rules; raises on a torch without DTensor)
from .modules import masking_reconciliation
from .weight_drop import DropConnect, MaskedLinear

from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor  # noqa: E402
from torch.distributed.tensor.parallel import ParallelStyle  # noqa: E402

__all__ = ["broadcast_rng_states", "FabricatedColwiseParallel"]

_STATE_HOLDERS = (masking_reconciliation, MaskedLinear, DropConnect)


def broadcast_rng_states(module: torch.nn.Module, src: int = 0, group=None) -> int:
    """Makes every ``rng_state`` of a ``masking_reconciliation``, ``MaskedLinear`` or ``dropconnect``
    parametrization in `module`'s tree equal to rank `src`'s, in place, with one collective call.

    FSDP2 (``fully_shard``) does not broadcast buffers, so after a meta-device init the ranks'
    states are whatever ``reset_parameters()`` drew on each: equal only if every rank seeded torch
    alike. Call this once after init otherwise (DDP needs neither: it broadcasts buffers).

    Args:
        module: the model (any ``torch.nn.Module``); every rank must call with the same tree.
        src: the global rank whose states every rank takes.
        group: the process group (default: the world).

    Returns:
        The number of states broadcast.

    Raises:
        TypeError, ValueError: a state is not an int64 tensor of shape [2] (checked on every rank
            before any communication, so a refused state stops every rank alike); it is refused
            rather than converted, which would change its mask.
    """
    states = []
    for name, submodule in module.named_modules():
        if isinstance(submodule, _STATE_HOLDERS):
            states.append(_checked_state(f"{name}.rng_state" if name else "rng_state", _local(submodule.rng_state)))
    if not states:
        return 0
    # One call for the whole tree, on a device the backend can send (NCCL only sends GPU memory):
    # int64 states stacked stay int64, so every value, above 2**53 too, arrives exact.
    backend = str(dist.get_backend(group))
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")
    packed = torch.stack([state.detach().to(device) for state in states])
    dist.broadcast(packed, src=src, group=group)
    with torch.no_grad():
        for state, value in zip(states, packed):
            state.copy_(value)
    return len(states)


def _local(tensor):
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _checked_state(name, state):
    op = "broadcast_rng_states"
    if not isinstance(state, torch.Tensor) or state.dtype != torch.int64:
        got = f"dtype {state.dtype}" if isinstance(state, torch.Tensor) else type(state).__name__
        raise TypeError(f"{op}: expected {name} to be an int64 tensor [seed, offset], but got {got}")
    if state.shape != (2,):
        raise ValueError(f"{op}: expected {name} to have shape [2] ([seed, offset]), but got shape {list(state.shape)}")
    return state


class FabricatedColwiseParallel(ParallelStyle):
    """Tensor parallelism for a tinyBIG-style layer, whose ``(1, l)`` parameter a
    ``masking_reconciliation`` fabricates into its ``(n, D)`` weight ``W`` and which computes
    ``x @ W.T``: ``ColwiseParallel`` for such a layer, for ``parallelize_module``.

    Every ``(1, l)`` parameter of the module (its own, not its submodules') is sharded along ``l``
    (``Shard(1)``). Its entries are ``W``'s in row-major order, so each rank holds whole rows of
    ``W``: a block of output features, masked as part of the whole weight (the DTensor rule of
    ``masking_reconciliation``). ``n`` must be a multiple of the mesh's size, or DTensor's view of
    the uneven shard refuses. The input is replicated, so the layer's ops see DTensors only; the
    output is sharded on its last dimension, or laid out as `output_layouts` says.

    Args:
        output_layouts: the output's placement: ``Shard(-1)`` (the default) or ``Replicate()``.
        use_local_output: return the local tensor (the default) rather than the DTensor.
    """

    def __init__(self, *, output_layouts=None, use_local_output=True):
        super().__init__()
        self.output_layouts = (output_layouts or Shard(-1),)
        self.use_local_output = use_local_output

    def _apply(self, module, device_mesh):
        return distribute_module(module, device_mesh, self._partition, self._replicate_inputs, self._lay_out_output)

    @staticmethod
    def _partition(name, submodule, device_mesh):
        if name:  # distribute_module asks about every submodule: theirs are replicated, as it does
            return
        for parameter_name, parameter in list(submodule.named_parameters(recurse=False)):
            if parameter.dim() == 2 and parameter.shape[0] == 1:
                sharded = distribute_tensor(parameter, device_mesh, [Shard(1)])
                submodule.register_parameter(parameter_name, torch.nn.Parameter(sharded, parameter.requires_grad))

    @staticmethod
    def _replicate_inputs(module, inputs, device_mesh):
        return tuple(DTensor.from_local(value, device_mesh, [Replicate()], run_check=False)
                     if isinstance(value, torch.Tensor) and not isinstance(value, DTensor) else value for value in inputs)

    def _lay_out_output(self, module, output, device_mesh):
        if output.placements != self.output_layouts:
            output = output.redistribute(placements=self.output_layouts)
        return output.to_local() if self.use_local_output else output
