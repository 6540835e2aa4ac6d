"""The 2-process checks of tests/test_distributed.py: run as a script, it spawns 2 gloo ranks on
this machine (meeting through a file), runs every check on both (the collectives need both), and
rank 0 writes each check's outcome to the JSON file named by its argument. Every comparison is with the same op on the whole,
unsharded tensor in one process, bit for bit.

    python tests/distributed_checks.py results.json [--timeout 120]
"""

import argparse
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor, init_device_mesh

import tinybig_cuda
from tinybig_cuda.distributed import broadcast_rng_states

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from gloo_ranks import exit_rank, join_ranks, run_ranks  # noqa: E402  (the examples' launcher)

WORLD_SIZE = 2
P = 0.45
STATE = torch.tensor([0x0123456789ABCDEF, -3], dtype=torch.int64)
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16}


def same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.contiguous().view(BITS[a.dtype]), b.contiguous().view(BITS[b.dtype]))


def check_apply(mesh, placements, shape, dtype, dtensor_state):
    """bernoulli_mask_apply on a DTensor, forward and backward, against the whole tensor."""
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    whole = weight.clone().requires_grad_()
    expected = tinybig_cuda.bernoulli_mask_apply(whole, P, STATE)
    expected.backward(upstream)

    if any(isinstance(placement, Partial) for placement in placements):
        # Each rank holds half of every entry (exact in binary floats): the sum is the weight.
        w = DTensor.from_local(weight / WORLD_SIZE, mesh, placements, run_check=False)
    else:
        w = distribute_tensor(weight, mesh, placements)
    w = w.detach().requires_grad_()
    state = distribute_tensor(STATE, mesh, [Replicate()] * mesh.ndim) if dtensor_state else STATE
    out = tinybig_cuda.bernoulli_mask_apply(w, P, state)
    result = {"placed_like_w": isinstance(out, DTensor) and tuple(out.placements) == tuple(placements)}
    result["forward"] = same_bits(out.full_tensor(), expected.detach())
    if not result["placed_like_w"] or any(isinstance(placement, Partial) for placement in placements):
        return result
    out.backward(distribute_tensor(upstream, mesh, placements))
    result["backward"] = same_bits(w.grad.full_tensor(), whole.grad)
    return result


def check_mask(mesh, placements, shape):
    expected = tinybig_cuda.bernoulli_mask(shape, P, STATE)
    mask = tinybig_cuda.bernoulli_mask(shape, P, STATE, device_mesh=mesh, placements=placements)
    replicated_state = distribute_tensor(STATE, mesh, [Replicate()] * mesh.ndim)
    from_state = tinybig_cuda.bernoulli_mask(shape, P, replicated_state)
    return {
        "placed": tuple(mask.placements) == tuple(placements),
        "mask": torch.equal(mask.full_tensor(), expected),
        "mask_of_replicated_state": from_state.placements == (Replicate(),) and torch.equal(from_state.full_tensor(), expected),
    }


def check_module(mesh, placements, shape):
    n, D = shape
    torch.manual_seed(0)  # the same module state on every rank
    module = tinybig_cuda.masking_reconciliation(p=P)
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    whole = weight.clone().requires_grad_()
    expected = module(w=whole, n=n, D=D)
    expected.sum().backward()
    w = distribute_tensor(weight, mesh, placements).requires_grad_()
    out = module(w=w, n=n, D=D)
    out.sum().backward()
    return {"forward": same_bits(out.full_tensor(), expected.detach()), "backward": same_bits(w.grad.full_tensor(), whole.grad)}


def check_fresh_mask_module(mesh, placements, shape):
    """fixed_mask=False: each rank draws the call's state from its own generator, so ranks seeded
    alike mask as one process seeded the same way."""
    n, D = shape
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    module = tinybig_cuda.masking_reconciliation(p=P, fixed_mask=False)
    torch.manual_seed(11)
    expected = module(w=weight, n=n, D=D)
    torch.manual_seed(11)
    out = module(w=distribute_tensor(weight, mesh, placements), n=n, D=D)
    return {"forward": same_bits(out.full_tensor(), expected)}


def gathered(tensor):
    pieces = [torch.empty_like(tensor) for _ in range(WORLD_SIZE)]
    dist.all_gather(pieces, tensor)
    return pieces


def check_broadcast_rng_states():
    torch.manual_seed(100 + dist.get_rank())  # ranks seeded differently: different states
    model = torch.nn.Sequential(tinybig_cuda.masking_reconciliation(p=0.3), torch.nn.Linear(2, 2), tinybig_cuda.masking_reconciliation(p=0.6))
    before = gathered(torch.stack([model[0].rng_state, model[2].rng_state]))
    rank0 = before[0].clone()
    count = broadcast_rng_states(model)
    after = gathered(torch.stack([model[0].rng_state, model[2].rng_state]))
    return {
        "differed_before": not torch.equal(before[0], before[1]),
        "count": count == 2,
        "equal_to_rank_0_after": all(torch.equal(state, rank0) for state in after),
    }


def check_broadcast_rng_states_exact():
    """Values above 2**53 (which a float64 would round) and at both ends of int64 arrive exact."""
    model = torch.nn.Sequential(tinybig_cuda.masking_reconciliation(p=0.3), tinybig_cuda.masking_reconciliation(p=0.6))
    rank0 = torch.tensor([[2**62 + 1, -(2**63)], [2**63 - 1, 2**53 + 1]])
    with torch.no_grad():
        for module, state in zip(model, rank0 if dist.get_rank() == 0 else -rank0[:, [1, 0]] + 7):
            module.rng_state.copy_(state)
    broadcast_rng_states(model)
    return {"exact": all(torch.equal(module.rng_state, state) for module, state in zip(model, rank0))}


def raises(call, error_type, *texts):
    """Whether call() raises error_type with a message containing every text."""
    try:
        call()
    except error_type as error:
        return all(text in str(error) for text in texts)
    return False


def check_refusals(mesh):
    """What the DTensor rules do not support is refused with an error that names it."""
    w = distribute_tensor(torch.randn(7, 5), mesh, [Shard(1)])
    compact = tinybig_cuda.masking_reconciliation(p=P, compact=True)
    return {
        "shard_past_the_last_dimension": raises(
            lambda: tinybig_cuda.bernoulli_mask((7, 5), P, STATE, device_mesh=mesh, placements=[Shard(2)]),
            ValueError, "bernoulli_mask", "Shard dimensions in [-2, 2)", "Shard(dim=2)",
        ),
        "negative_shard_dimension": torch.equal(
            tinybig_cuda.bernoulli_mask((7, 5), P, STATE, device_mesh=mesh, placements=[Shard(-1)]).full_tensor(),
            tinybig_cuda.bernoulli_mask((7, 5), P, STATE),
        ),
        "compress_parameters": raises(
            lambda: compact.compress_parameters(w.reshape(1, 35), 7, 5), NotImplementedError, "compress_parameters", "DTensor"
        ),
        "dtensor_p": raises(
            lambda: torch.ops.tinybig_cuda.bernoulli_mask_apply_p_tensor(
                w, distribute_tensor(torch.tensor(0.5, dtype=torch.float64), mesh, [Replicate()]), STATE
            ),
            TypeError, "bernoulli_mask_apply: expected p as one float on the CPU", "DTensor",
        ),
    }


def check_compact_module(mesh, placements):
    """A compact module whose K kept values are a DTensor: the matrix, replicated, and the values'
    gradient equal one process's bit for bit (expanding and compressing move values, no arithmetic)."""
    torch.manual_seed(0)
    module = tinybig_cuda.masking_reconciliation(p=P, compact=True)
    n, D = 7, 5
    values = torch.randn(1, module.calculate_l(n=n, D=D), generator=torch.Generator().manual_seed(4)).requires_grad_()
    upstream = torch.randn(n, D, generator=torch.Generator().manual_seed(5))
    expected = module(w=values, n=n, D=D)
    (expected * upstream).sum().backward()
    shards = distribute_tensor(values.detach(), mesh, placements).requires_grad_()
    matrix = module(w=shards, n=n, D=D)
    (matrix.to_local() * upstream).sum().backward()
    return {"replicated": matrix.placements == (Replicate(),), "matrix_bits": same_bits(matrix.full_tensor(), expected.detach()),
            "values_grad_bits": same_bits(shards.grad.full_tensor(), values.grad)}


def check_meta_init_reset_parameters():
    """The FSDP2 init: a meta module, to_empty, then reset_parameters on ranks seeded alike."""
    with torch.device("meta"):
        module = tinybig_cuda.masking_reconciliation(p=0.3)
    meta = module.rng_state.is_meta
    module.to_empty(device="cpu")
    torch.manual_seed(7)
    module.reset_parameters()
    torch.manual_seed(7)
    expected = tinybig_cuda.masking_reconciliation(p=0.3).rng_state  # drawn the same way at construction
    states = gathered(module.rng_state.clone())
    return {"meta_buffer": meta, "ranks_agree": torch.equal(states[0], states[1]), "same_as_construction": torch.equal(module.rng_state, expected)}


def dtensor_checks():
    """{name: check} of this file: made on each rank, since the meshes need its process group."""
    one_d = init_device_mesh("cpu", (WORLD_SIZE,))
    checks = {}
    for name, placements in (("shard0", [Shard(0)]), ("shard1", [Shard(1)]), ("replicate", [Replicate()]), ("partial", [Partial()])):
        for dtype in (torch.float32, torch.bfloat16):
            for dtensor_state in (False, True):
                # 7 x 5 on 2 ranks: 4 + 3 rows, or 3 + 2 columns.
                key = f"apply {name} 7x5 {str(dtype).split('.')[1]} {'dtensor' if dtensor_state else 'plain'} state"
                checks[key] = lambda p=placements, d=dtype, s=dtensor_state: check_apply(one_d, p, (7, 5), d, s)
    checks["apply shard1 3-D 3x7x5"] = lambda: check_apply(one_d, [Shard(1)], (3, 7, 5), torch.float32, False)
    checks["apply shard1 1030x1031"] = lambda: check_apply(one_d, [Shard(1)], (1030, 1031), torch.float32, False)
    for mesh_shape in ((2, 1), (1, 2)):
        mesh = init_device_mesh("cpu", mesh_shape)
        for placements in ([Shard(0), Shard(1)], [Shard(1), Shard(0)], [Shard(1), Shard(1)], [Replicate(), Shard(1)]):
            key = f"apply mesh {mesh_shape} {placements}"
            checks[key] = lambda m=mesh, p=placements: check_apply(m, p, (7, 5), torch.float32, True)
    checks["mask shard1 7x5"] = lambda: check_mask(one_d, [Shard(1)], (7, 5))
    checks["mask shard0 7x5"] = lambda: check_mask(one_d, [Shard(0)], (7, 5))
    checks["module shard1 7x5"] = lambda: check_module(one_d, [Shard(1)], (7, 5))
    checks["module shard0 7x5"] = lambda: check_module(one_d, [Shard(0)], (7, 5))
    checks["fresh-mask module shard1 7x5"] = lambda: check_fresh_mask_module(one_d, [Shard(1)], (7, 5))
    checks["broadcast_rng_states"] = check_broadcast_rng_states
    checks["meta init + reset_parameters"] = check_meta_init_reset_parameters
    checks["broadcast_rng_states exact"] = check_broadcast_rng_states_exact
    checks["refusals"] = lambda: check_refusals(one_d)
    checks["compact module shard1"] = lambda: check_compact_module(one_d, [Shard(1)])
    checks["compact module replicate"] = lambda: check_compact_module(one_d, [Replicate()])
    return checks


def run_recorded(checks):
    results = {}
    for key, check in checks.items():
        try:
            results[key] = check()
        except Exception:  # recorded, so one broken check does not hide the others
            results[key] = {"error": traceback.format_exc()}
    return results


def worker(rank, out_path, timeout_s, make_checks):
    torch.set_num_threads(1)
    join_ranks(rank, WORLD_SIZE, timeout_s)
    try:
        results = run_recorded(make_checks())
        if rank == 0:
            with open(out_path, "w") as out:
                json.dump(results, out, indent=1)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    exit_rank()


def main(make_checks=dtensor_checks, description=__doc__):
    """Runs make_checks() on WORLD_SIZE ranks; also the launcher of the other 2-process check files."""
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    run_ranks(worker, WORLD_SIZE, args.timeout, args.out, args.timeout, make_checks)


if __name__ == "__main__":
    main()
