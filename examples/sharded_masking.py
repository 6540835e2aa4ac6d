"""Row-sharded masking across processes gives the mask of the whole matrix, bit for bit.

Each of `--world-size` processes (gloo backend, on this machine) holds a block of rows of one
(rows, cols) weight and masks it with `element_offset = first_row * cols`, the flat index of its
first element in the whole matrix. The only thing the ranks share is the 16-byte rng_state,
broadcast from rank 0. Rank 0 then gathers the masked shards and their gradients and checks
them against one single-process call on the whole matrix.

    python examples/sharded_masking.py                    # 2 processes, 1001 x 257 (uneven shards)
    python examples/sharded_masking.py --world-size 3 --rows 4096 --cols 4096

Exits 0 and prints "OK" when the gathered result equals the single-process one.
"""

import argparse
import sys

import torch
import torch.distributed as dist

import tinybig_cuda

from gloo_ranks import join_ranks, run_ranks


def row_range(rows: int, world_size: int, rank: int):
    """Rows [start, stop) of `rank`, split as evenly as possible (the first ranks take one more)."""
    base, extra = divmod(rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def full_weight(rows: int, cols: int, seed: int) -> torch.Tensor:
    # Every rank can rebuild the same weight; a real model would only ever create its own shard.
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=generator)


def upstream_gradient(rows: int, cols: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randn(rows, cols, generator=generator)


def gather_rows(shard: torch.Tensor, rows: int, world_size: int) -> torch.Tensor:
    """All-gathers row shards of unequal length (gloo needs equal sizes, so pad, then trim)."""
    longest = row_range(rows, world_size, 0)[1]
    padded = torch.zeros(longest, shard.shape[1], dtype=shard.dtype)
    padded[: shard.shape[0]] = shard
    pieces = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[: stop - start] for piece, (start, stop) in
                      zip(pieces, (row_range(rows, world_size, r) for r in range(world_size)))])


def worker(rank, world_size, rows, cols, p, seed, timeout_s):
    torch.set_num_threads(1)  # each rank is its own process: do not oversubscribe the cores
    join_ranks(rank, world_size, timeout_s)
    try:
        # The mask state is the one thing every shard must agree on: rank 0 draws it, all use it.
        torch.manual_seed(seed)
        fabrication = tinybig_cuda.masking_reconciliation(p=p, fixed_mask=True)
        dist.broadcast(fabrication.rng_state, src=0)

        start, stop = row_range(rows, world_size, rank)
        shard = full_weight(rows, cols, seed)[start:stop].clone().requires_grad_()
        masked_shard = tinybig_cuda.bernoulli_mask_apply(shard, fabrication.p, fabrication.rng_state,
                                                         element_offset=start * cols)
        masked_shard.backward(upstream_gradient(rows, cols, seed)[start:stop])

        gathered = gather_rows(masked_shard.detach(), rows, world_size)
        gathered_grad = gather_rows(shard.grad, rows, world_size)

        if rank == 0:
            whole = full_weight(rows, cols, seed).requires_grad_()
            expected = fabrication(w=whole, n=rows, D=cols)  # one process, the whole matrix
            expected.backward(upstream_gradient(rows, cols, seed))
            values_match = torch.equal(gathered.view(torch.int32), expected.detach().view(torch.int32))
            grads_match = torch.equal(gathered_grad.view(torch.int32), whole.grad.view(torch.int32))
            shards = ", ".join(f"rank {r}: rows {a}..{b - 1}" for r, (a, b) in
                               enumerate(row_range(rows, world_size, r) for r in range(world_size)))
            print(f"{world_size} ranks masked a {rows} x {cols} weight ({shards})")
            print(f"kept fraction {expected.ne(0).float().mean().item():.4f} (p = {p})")
            print(f"gathered masked weight == single-process result, bit for bit: {values_match}")
            print(f"gathered gradient      == single-process gradient, bit for bit: {grads_match}")
            if not (values_match and grads_match):
                raise SystemExit("MISMATCH between the sharded and the single-process masks")
            print("OK")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1001)
    parser.add_argument("--cols", type=int, default=257)
    parser.add_argument("--p", type=float, default=0.5, help="keep probability")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before the run is abandoned")
    args = parser.parse_args(argv)

    run_ranks(worker, args.world_size, args.timeout,
              args.world_size, args.rows, args.cols, args.p, args.seed, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
