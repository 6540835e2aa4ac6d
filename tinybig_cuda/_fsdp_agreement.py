"""FSDP2 does not broadcast buffers, so ranks seeded differently before init would each train
with their own fixed mask, silently. This finds out at the first forward and raises.

A module that keeps a fixed mask calls `watch` when it is made in a process where torch.distributed
is initialized. That registers, once, a global forward pre-hook. Global pre-hooks run before a
module's own, so when an FSDP module's forward begins, its parameters are still sharded DTensors
on its mesh, and every rank of that mesh is about to run the same forward (FSDP's all-gather needs
them all). Only then, and only on that mesh's groups, the ranks compare the watched states in the
module's tree, with one all-reduce of the states' maximum and one of their minimum. Ranks running
other modules (pipeline stages) are never asked, so nothing can wait for them.

A watched module whose own forward comes first was not reached through an FSDP module, and is no
longer watched. The hook removes itself once nothing is watched: it costs a Python call per
module call until every watched module has run once (in eager mode: under torch.compile it does
nothing, so a model that only ever runs compiled keeps it).
"""

import functools
import weakref

import torch
import torch.distributed as dist

from . import _torch_compat as compat

_watched = weakref.WeakSet()
_hook = None


def watch(holder):
    """Checks `holder`'s ``rng_state`` at the first forward of an FSDP module that contains it."""
    global _hook
    if not (dist.is_available() and dist.is_initialized()) or _fsdp_module_type() is None:
        return
    _watched.add(holder)
    if _hook is None:
        _hook = torch.nn.modules.module.register_module_forward_pre_hook(_before_forward)


@functools.lru_cache(maxsize=None)
def _fsdp_module_type():
    try:
        from torch.distributed.fsdp import FSDPModule  # torch 2.6 on
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import FSDPModule  # torch 2.4 and 2.5
        except ImportError:
            return None
    return FSDPModule


def _before_forward(module, args):
    global _hook
    if compat.is_compiling():
        return
    try:
        if module in _watched:  # its own forward, and no FSDP module around it checked it first
            _watched.discard(module)
        elif isinstance(module, _fsdp_module_type()):
            _check_agreement(module)
    finally:
        if not _watched and _hook is not None:
            _hook.remove()
            _hook = None


def _check_agreement(module):
    meshes = {parameter.device_mesh for parameter in module.parameters() if hasattr(parameter, "device_mesh")}
    holders = [(name, holder) for name, holder in module.named_modules() if holder in _watched]
    if not meshes or not holders:
        return
    for _, holder in holders:
        _watched.discard(holder)
    states = torch.stack([_local(holder.rng_state).detach() for _, holder in holders])
    groups = [mesh.get_group(dim) for mesh in meshes for dim in range(mesh.ndim)]
    if any("nccl" in str(dist.get_backend(group)) for group in groups):  # NCCL sends GPU memory only
        states = states.to(torch.device("cuda", torch.cuda.current_device()))
    highest, lowest = states.clone(), states.clone()
    for group in groups:
        dist.all_reduce(highest, op=dist.ReduceOp.MAX, group=group)
        dist.all_reduce(lowest, op=dist.ReduceOp.MIN, group=group)
    differing = [name or type(holder).__name__ for (name, holder), high, low in zip(holders, highest, lowest)
                 if not torch.equal(high, low)]
    if differing:  # every rank of the mesh sees the same maximum and minimum, so all raise alike
        raise RuntimeError(
            f"tinybig_cuda: the fixed masks of {', '.join(differing)} differ between the ranks of an FSDP module's "
            "mesh, so each rank would train with its own mask. FSDP2 does not broadcast buffers: every rank's "
            "rng_state is what that rank drew at init. Seed every rank alike before the modules are made (or "
            "before reset_parameters()), or call tinybig_cuda.distributed.broadcast_rng_states(model) once after init"
        )


def _local(tensor):
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
