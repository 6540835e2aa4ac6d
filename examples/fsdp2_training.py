"""Training a tinyBIG-style masked layer under FSDP2 gives, bit for bit, what one process gives.

Each of 2 processes (gloo, on this machine) builds the model on the meta device, shards it with
`fully_shard`, materialises it with `to_empty` and initialises it with `reset_parameters()` on
every module that has one: the standard FSDP2 deferred init. FSDP2 does not broadcast buffers, so
the masks' `rng_state` buffers agree only because every rank seeded torch alike and drew the same
amount from its CPU generator before each reset_parameters() (or, with `--broadcast`, because
`tinybig_cuda.distributed.broadcast_rng_states` copied rank 0's). On this CPU mesh the parameters'
init draws each rank's shard from that same generator, so the shards must be equal: tinyBIG's
(1, l) parameters are sharded along l (sharding their one row would leave rank 1 nothing, and the
ranks' generators, hence their masks, apart). Each rank
then trains on its half of every batch. Rank 0 checks that every rank has the same masks, and that
the trained parameters equal those of one process training the same model on the whole batches
(as the mean of the two halves' losses), bit for bit.

    python examples/fsdp2_training.py                  # ranks seeded alike
    python examples/fsdp2_training.py --broadcast      # ranks seeded differently, then broadcast

Exits 0 and prints "OK" when the checks pass.
"""

import argparse
import math
import sys
import warnings

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard

import tinybig_cuda
from tinybig_cuda.distributed import broadcast_rng_states

from gloo_ranks import exit_rank, join_ranks, run_ranks

WORLD_SIZE = 2


class MaskedLinear(torch.nn.Module):
    """A tinyBIG-style layer: l = n*D parameters fabricated into its (out, in) weight matrix by
    masking reconciliation (a fixed Bernoulli(p) keep-mask), then x W^T."""

    def __init__(self, in_features, out_features, p):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.fabrication = tinybig_cuda.masking_reconciliation(p=p, fixed_mask=True)
        self.w = torch.nn.Parameter(torch.empty(1, self.fabrication.calculate_l(n=out_features, D=in_features)))
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.in_features)
        torch.nn.init.uniform_(self.w, -bound, bound)

    def forward(self, x):
        weight = self.fabrication(w=self.w, n=self.out_features, D=self.in_features)
        return x @ weight.t()


def build_model(p):
    return torch.nn.Sequential(MaskedLinear(16, 32, p), torch.nn.ReLU(), MaskedLinear(32, 4, p))


def batches(steps, batch_size, seed):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 16, generator=generator), torch.randn(batch_size, 4, generator=generator)) for _ in range(steps)]


def rng_states(model):
    return torch.stack([m.rng_state for m in model.modules() if isinstance(m, tinybig_cuda.masking_reconciliation)])


def train(model, data, lr, halves):
    """SGD on the mean of the halves' mean squared errors (one half per rank under FSDP2)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for x, y in data:
        optimizer.zero_grad()
        losses = [torch.nn.functional.mse_loss(model(xh), yh) for xh, yh in zip(x.chunk(2)[halves], y.chunk(2)[halves])]
        (sum(losses) / len(losses)).backward()
        optimizer.step()


def worker(rank, args):
    torch.set_num_threads(1)
    # torch's note that a CPU mesh has no DTensor RNG tracker: here each rank draws its own shard.
    warnings.filterwarnings("ignore", message="DTensor random operators may not have complete support")
    join_ranks(rank, WORLD_SIZE, args.timeout)
    try:
        # The rule: seed every rank alike, or broadcast the states once after init.
        torch.manual_seed(args.seed + (rank if args.broadcast else 0))
        with torch.device("meta"):
            model = build_model(args.p)
        # tinyBIG's parameters are (1, l): shard their l entries (dim 1), not their single row.
        shard_entries = dict(shard_placement_fn=lambda param: Shard(param.dim() - 1))
        for layer in model:
            if isinstance(layer, MaskedLinear):
                fully_shard(layer, **shard_entries)
        fully_shard(model, **shard_entries)
        model.to_empty(device="cpu")
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        if args.broadcast:
            broadcast_rng_states(model)

        # The one-process model starts from the same parameters and masks.
        initial = {name: param.full_tensor() for name, param in model.named_parameters()}
        states = [torch.empty(2 * 2, dtype=torch.int64) for _ in range(WORLD_SIZE)]
        dist.all_gather(states, rng_states(model).flatten())

        data = batches(args.steps, args.batch_size, args.seed)
        train(model, data, args.lr, slice(rank, rank + 1))  # this rank's half of every batch
        trained = {name: param.full_tensor() for name, param in model.named_parameters()}

        if rank == 0:
            reference = build_model(args.p)
            reference.load_state_dict({**initial, **{k: v for k, v in model.state_dict().items() if k.endswith("rng_state")}})
            train(reference, data, args.lr, slice(0, 2))
            masks_agree = all(torch.equal(states[0], other) for other in states[1:])
            params_match = all(torch.equal(trained[name].view(torch.int32), param.detach().view(torch.int32))
                               for name, param in reference.named_parameters())
            weight = reference[0].fabrication(w=reference[0].w, n=32, D=16)
            print(f"{WORLD_SIZE} ranks, FSDP2, meta-device init, {'broadcast states' if args.broadcast else 'ranks seeded alike'}")
            print(f"every rank has the same rng_state buffers: {masks_agree}")
            print(f"kept fraction of layer 0's weight: {weight.ne(0).float().mean().item():.3f} (p = {args.p})")
            print(f"parameters after {args.steps} steps == one process, bit for bit: {params_match}")
            if not (masks_agree and params_match):
                raise SystemExit("MISMATCH between FSDP2 and one process")
            print("OK")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    exit_rank()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--p", type=float, default=0.5, help="keep probability")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--broadcast", action="store_true", help="seed ranks differently, then broadcast_rng_states")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before the run is abandoned")
    args = parser.parse_args(argv)

    run_ranks(worker, WORLD_SIZE, args.timeout, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
