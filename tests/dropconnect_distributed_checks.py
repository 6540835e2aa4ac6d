"""The 2-process checks of tests/test_dropconnect_distributed.py: run as a script, it spawns 2 gloo
ranks on this machine, runs every check on both, and rank 0 writes each check's outcome to the
JSON file named by its argument. Each compares MaskedLinear under tensor parallelism or FSDP2
with the same module in one process, or checks that FSDP2 finds ranks whose fixed masks differ.

    python tests/dropconnect_distributed_checks.py results.json [--timeout 120]
"""

import copy

import torch
import torch.distributed as dist
from torch.distributed.tensor import Replicate, init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import tinybig_cuda
from tinybig_cuda.distributed import broadcast_rng_states

import distributed_checks  # beside this file: the 2-rank launcher and the bitwise comparison
from distributed_checks import WORLD_SIZE, same_bits

P = 0.45
IN_FEATURES, OUT_FEATURES = 6, 7  # uneven shards: 3 + 3 columns, 4 + 3 rows


def one_process_reference(upstream):
    """The module and its output and weight gradient in one process. The input is the identity, so
    each output is one product (exact): the output is the masked weight, bit for bit."""
    torch.manual_seed(0)  # the same module on every rank
    module = tinybig_cuda.MaskedLinear(IN_FEATURES, OUT_FEATURES, bias=False, p=P)
    reference = copy.deepcopy(module)
    x = torch.eye(IN_FEATURES)
    y = reference(x)
    y.backward(upstream)
    return module, x, y.detach(), reference.weight.grad


def check_tensor_parallel(style):
    upstream = torch.randn(IN_FEATURES, OUT_FEATURES, generator=torch.Generator().manual_seed(2))
    module, x, expected, expected_grad = one_process_reference(upstream)
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    if style == "colwise":
        parallel = parallelize_module(module, mesh, ColwiseParallel(use_local_output=False))
        y = parallel(x)  # a replicated input, an output sharded on its columns
    else:
        parallel = parallelize_module(module, mesh, RowwiseParallel(use_local_output=False))
        rank = dist.get_rank()
        y = parallel(x[:, rank * 3:(rank + 1) * 3])  # each rank's columns of the input
    full = y.full_tensor()
    (full * upstream).sum().backward()
    return {"forward_bits": same_bits(full, expected),
            "weight_grad": torch.allclose(parallel.weight.grad.full_tensor(), expected_grad)}


def check_fsdp2():
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(tinybig_cuda.MaskedLinear(IN_FEATURES, OUT_FEATURES, p=P), torch.nn.Tanh(),
                                tinybig_cuda.MaskedLinear(OUT_FEATURES, 3, p=P))
    reference = copy.deepcopy(model)
    x = torch.randn(5, IN_FEATURES, generator=torch.Generator().manual_seed(3))
    expected = reference(x)
    expected.sum().backward()
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    y = model(x)
    y.sum().backward()  # both ranks take the same input: the averaged gradient is the same
    grads = [(p.grad.full_tensor(), q.grad) for p, q in zip(model.parameters(), reference.parameters())]
    return {"forward": torch.allclose(y, expected.detach()), "grads": all(torch.allclose(a, b) for a, b in grads)}


def check_broadcast_rng_states():
    torch.manual_seed(100 + dist.get_rank())  # ranks seeded differently: different states
    model = torch.nn.Sequential(tinybig_cuda.MaskedLinear(2, 2), tinybig_cuda.dropconnect(torch.nn.Linear(2, 2), fixed_mask=True))
    states = [model[0].rng_state, model[1].parametrizations.weight[0].rng_state]
    before = [torch.empty(2, 2, dtype=torch.int64) for _ in range(WORLD_SIZE)]
    dist.all_gather(before, torch.stack(states))
    count = broadcast_rng_states(model)
    after = [torch.empty(2, 2, dtype=torch.int64) for _ in range(WORLD_SIZE)]
    dist.all_gather(after, torch.stack(states))
    return {"differed_before": not torch.equal(before[0], before[1]), "count": count == 2,
            "equal_to_rank_0_after": all(torch.equal(state, before[0]) for state in after)}


class Fabricated(torch.nn.Module):
    """A tinyBIG-style layer: its (out, in) weight is masking_reconciliation's fabrication of a (1, l) parameter."""

    def __init__(self, in_features, out_features, fixed_mask):
        super().__init__()
        self.shape = (out_features, in_features)
        self.w = torch.nn.Parameter(torch.randn(1, out_features * in_features))
        self.masking = tinybig_cuda.masking_reconciliation(p=P, fixed_mask=fixed_mask)

    def forward(self, x):
        return x @ self.masking(*self.shape, self.w).t()


def sharded_model(seed, fixed_mask=True, mesh=None):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model = torch.nn.Sequential(tinybig_cuda.MaskedLinear(IN_FEATURES, OUT_FEATURES, p=P, fixed_mask=fixed_mask),
                                torch.nn.Tanh(), Fabricated(OUT_FEATURES, 3, fixed_mask))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def raises_naming_broadcast(forward):
    try:
        forward()
    except RuntimeError as error:
        return "broadcast_rng_states" in str(error) and "0" in str(error) and "2.masking" in str(error)
    return False


def check_fsdp2_fixed_masks_agree():
    """FSDP2 with ranks seeded differently: the first forward raises on every rank, naming the modules
    and broadcast_rng_states; after broadcast_rng_states, with ranks seeded alike, or with fresh masks
    (each rank its own, as dropout's), it runs; and the modules are no longer watched after it."""
    from tinybig_cuda import _fsdp_agreement

    rank = dist.get_rank()
    x = torch.randn(5, IN_FEATURES, generator=torch.Generator().manual_seed(3))
    differing = sharded_model(100 + rank)
    outcome = {"differing_states_raise": raises_naming_broadcast(lambda: differing(x))}
    broadcast = sharded_model(100 + rank)
    broadcast_rng_states(broadcast)
    alike, fresh = sharded_model(7), sharded_model(100 + rank, fixed_mask=False)
    for model in (broadcast, alike, fresh):
        model(x).sum().backward()
    outcome["no_longer_watched"] = not any(module in _fsdp_agreement._watched
                                           for model in (differing, broadcast, alike) for module in model.modules())
    return outcome


def check_pipeline_stages_do_not_wait_for_each_other():
    """Pipeline parallelism: each rank a different stage, sharded on its own data-parallel group of
    one rank. Each stage's first forward checks its own group only, so neither waits for the other."""
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD_SIZE, 1), mesh_dim_names=("pipeline", "data"))
    torch.manual_seed(100 + dist.get_rank())
    stage = (tinybig_cuda.MaskedLinear(IN_FEATURES, OUT_FEATURES, p=P) if dist.get_rank() == 0
             else Fabricated(IN_FEATURES, OUT_FEATURES, fixed_mask=True))
    fully_shard(stage, mesh=mesh["data"])
    stage(torch.randn(5, IN_FEATURES))
    dist.barrier()  # both stages got here
    return {"stages_ran": True}


def check_fabricated_colwise():
    """A tinyBIG-style layer under FabricatedColwiseParallel: each rank holds whole rows of the
    fabricated weight (a block of output features). With the identity as input the output is the
    masked weight itself, so it is compared bit for bit; the (1, l) parameter's gradient to rounding."""
    from tinybig_cuda.distributed import FabricatedColwiseParallel

    torch.manual_seed(0)
    out_features = 8  # 4 rows of the weight per rank
    layer = Fabricated(IN_FEATURES, out_features, fixed_mask=True)
    layer.submodule = torch.nn.Module()  # a submodule's (1, k) parameter is not the layer's: replicated
    layer.submodule.scale = torch.nn.Parameter(torch.ones(1, 4))
    reference = copy.deepcopy(layer)
    x = torch.eye(IN_FEATURES)
    upstream = torch.randn(IN_FEATURES, out_features, generator=torch.Generator().manual_seed(2))
    expected = reference(x)
    (expected * upstream).sum().backward()
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    parallel = parallelize_module(layer, mesh, FabricatedColwiseParallel(output_layouts=Replicate()))
    y = parallel(x)  # a plain tensor: the output gathered
    (y * upstream).sum().backward()
    rank, rows = dist.get_rank(), out_features // WORLD_SIZE
    local = parallelize_module(copy.deepcopy(reference), mesh, FabricatedColwiseParallel())(x)  # this rank's columns
    return {"forward_bits": same_bits(y, expected.detach()),
            "local_output_bits": same_bits(local, expected.detach()[:, rank * rows:(rank + 1) * rows]),
            "whole_rows_per_rank": tuple(parallel.w.to_local().shape) == (1, rows * IN_FEATURES),
            "submodule_replicated": parallel.submodule.scale.placements == (Replicate(),),
            "parameter_grad": torch.allclose(parallel.w.grad.full_tensor(), reference.w.grad)}


def tensor_parallel_checks():
    return {"colwise": lambda: check_tensor_parallel("colwise"), "rowwise": lambda: check_tensor_parallel("rowwise"),
            "fsdp2": check_fsdp2, "broadcast_rng_states": check_broadcast_rng_states,
            "fsdp2_fixed_masks_agree": check_fsdp2_fixed_masks_agree, "fabricated_colwise": check_fabricated_colwise,
            "pipeline_stages": check_pipeline_stages_do_not_wait_for_each_other}


if __name__ == "__main__":
    distributed_checks.main(tensor_parallel_checks, __doc__)
