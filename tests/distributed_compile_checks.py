"""The 2-process checks of tests/test_distributed_compile.py: DTensors under torch.compile. Run as a
script, it spawns 2 gloo ranks on this machine, runs every check on both, and rank 0 writes each
check's outcome to the JSON file named by its argument. Each check compiles a training step (the
masked weight and a loss's gradient) with fullgraph=True and compares its mask and gradient, bit
for bit, with the same step run eagerly on the whole tensor in one process; then it compiles the
step again with fullgraph=False and counts TorchDynamo's graph breaks.

    python tests/distributed_compile_checks.py results.json [--timeout 120]
"""

import torch
from torch._dynamo.utils import counters
from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

import tinybig_cuda

import distributed_checks  # beside this file: the 2-rank launcher and the bitwise comparison
from distributed_checks import P, STATE, WORLD_SIZE, same_bits

SHAPE = (7, 5)  # on 2 ranks: 4 + 3 rows, or 3 + 2 columns
PLACEMENTS = {"shard0": [Shard(0)], "shard1": [Shard(1)], "replicate": [Replicate()]}


def op_step(w, upstream):
    masked = tinybig_cuda.bernoulli_mask_apply(w, P, STATE)
    return masked.detach(), (masked * upstream).sum()


def module_step():
    torch.manual_seed(0)  # the same fixed mask on every rank
    module = tinybig_cuda.masking_reconciliation(p=P)

    def step(w, upstream):
        masked = module(w=w, n=SHAPE[0], D=SHAPE[1])
        return masked.detach(), (masked * upstream).sum()

    return step


def run_step(step, w, upstream):
    w = w.detach().requires_grad_()
    masked, loss = step(w, upstream)  # the masked weight detached: the gradient is the loss's
    loss.backward()
    return masked, w.grad


def check_compiled(make_step, placements):
    weight = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    upstream = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    expected, expected_grad = run_step(make_step(), weight, upstream)
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    w, dupstream = distribute_tensor(weight, mesh, placements), distribute_tensor(upstream, mesh, placements)

    torch._dynamo.reset()
    # aot_eager: the graphs and the DTensor rules as inductor takes them, without compiling C++ (slow here).
    masked, grad = run_step(torch.compile(make_step(), backend="aot_eager", fullgraph=True), w, dupstream)
    result = {
        "placed_like_w": tuple(masked.placements) == tuple(placements) and tuple(grad.placements) == tuple(placements),
        "forward": same_bits(masked.full_tensor(), expected),
        "backward": same_bits(grad.full_tensor(), expected_grad),
    }
    torch._dynamo.reset()
    counters.clear()
    run_step(torch.compile(make_step(), backend="aot_eager"), w, dupstream)
    result["graph_breaks"] = sum(counters["graph_break"].values())
    return result


def compile_checks():
    checks = {}
    for name, placements in PLACEMENTS.items():
        checks[f"op {name}"] = lambda p=placements: check_compiled(lambda: op_step, p)
        checks[f"module {name}"] = lambda p=placements: check_compiled(module_step, p)
    return checks


if __name__ == "__main__":
    distributed_checks.main(compile_checks, __doc__)
