"""A tensor-parallel (column-sharded) masked weight gives the mask one process gives, bit for bit.

A tinyBIG-style layer's (out, in) weight is a DTensor sharded by columns over 2 processes (gloo, on
this machine): each rank holds a block of input features, as row-parallel linear layers do. The
masking reconciliation module masks the DTensor directly: each rank masks only its block, with
the block's place in the whole matrix (a window: the whole matrix's row length between its rows),
so the masked DTensor is the one-process masked matrix split by columns. The layer then computes
x W^T on the shards (partial sums, added across ranks) and trains for a few SGD steps.

Rank 0 checks, against one process training the same layer on the whole matrix: the masked weight
and every kept/dropped position bit for bit, and the outputs, gradients and trained weights to
floating-point rounding (the two ranks' partial sums are added in another order than one matmul).

    python examples/tensor_parallel_masking.py
    python examples/tensor_parallel_masking.py --out 64 --in 1031 --steps 3

Exits 0 and prints "OK" when the checks pass.
"""

import argparse
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

import tinybig_cuda

from gloo_ranks import exit_rank, join_ranks, run_ranks

WORLD_SIZE = 2


def layer_data(args):
    generator = torch.Generator().manual_seed(args.seed)
    weight = torch.randn(args.out, args.inputs, generator=generator, dtype=torch.float64)
    x = torch.randn(args.batch_size, args.inputs, generator=generator, dtype=torch.float64)
    target = torch.randn(args.batch_size, args.out, generator=generator, dtype=torch.float64)
    return weight, x, target


def train(weight, x, target, fabrication, args):
    """SGD on the mean squared error of x W^T, W the masked weight. Returns the first step's
    masked weight and output, and the weight's first gradient."""
    optimizer = torch.optim.SGD([weight], lr=args.lr)
    first = None
    for _ in range(args.steps):
        optimizer.zero_grad()
        masked = fabrication(w=weight, n=args.out, D=args.inputs)
        output = x @ masked.t()
        torch.nn.functional.mse_loss(output, target).backward()
        if first is None:
            first = (masked.detach(), output.detach(), weight.grad.clone())
        optimizer.step()
    return first


def worker(rank, args):
    torch.set_num_threads(1)
    join_ranks(rank, WORLD_SIZE, args.timeout)
    try:
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        torch.manual_seed(args.seed)  # every rank draws the same rng_state: one mask
        fabrication = tinybig_cuda.masking_reconciliation(p=args.p, fixed_mask=True)
        weight, x, target = layer_data(args)

        # Columns of W (input features) on each rank, and x's matching columns.
        sharded_weight = torch.nn.Parameter(distribute_tensor(weight, mesh, [Shard(1)]))
        sharded_x = distribute_tensor(x, mesh, [Shard(1)])
        replicated_target = distribute_tensor(target, mesh, [Replicate()])
        masked, output, grad = train(sharded_weight, sharded_x, replicated_target, fabrication, args)
        placements = masked.placements
        masked, output, grad = masked.full_tensor(), output.full_tensor(), grad.full_tensor()
        trained = sharded_weight.detach().full_tensor()

        if rank == 0:
            whole = torch.nn.Parameter(weight.clone())
            expected_masked, expected_output, expected_grad = train(whole, x, target, fabrication, args)
            mask_matches = torch.equal(masked.view(torch.int64), expected_masked.view(torch.int64))
            zeros_match = torch.equal(grad == 0, expected_grad == 0)
            close = all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in
                        ((output, expected_output), (grad, expected_grad), (trained, whole.detach())))
            local_columns = [args.inputs // WORLD_SIZE + (1 if r < args.inputs % WORLD_SIZE else 0) for r in range(WORLD_SIZE)]
            print(f"{WORLD_SIZE} ranks, a {args.out} x {args.inputs} weight sharded by columns {local_columns}, masked as {placements}")
            print(f"kept fraction {expected_masked.ne(0).double().mean().item():.4f} (p = {args.p})")
            print(f"masked weight == one process, bit for bit: {mask_matches}")
            print(f"dropped positions of the gradient == one process: {zeros_match}")
            print(f"outputs, gradients and weights after {args.steps} steps == one process to 1e-12: {close}")
            if not (mask_matches and zeros_match and close):
                raise SystemExit("MISMATCH between tensor parallelism and one process")
            print("OK")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    exit_rank()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=int, default=7, help="output features (rows of W)")
    parser.add_argument("--in", dest="inputs", type=int, default=13, help="input features (columns of W, sharded)")
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--p", type=float, default=0.5, help="keep probability")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before the run is abandoned")
    args = parser.parse_args(argv)

    run_ranks(worker, WORLD_SIZE, args.timeout, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
