"""A masked model on a 2-D mesh (FSDP2 x tensor parallel, 4 processes), compiled, trained, saved with
torch.distributed.checkpoint (DCP), and resumed on 2 processes, against one process throughout.

The model: MaskedLinear(16, 32) -> tanh -> MaskedLinear(32, 16) -> a tinyBIG-style layer (16 -> 4,
whose (1, l) parameter masking reconciliation fabricates into its weight), fixed masks, float64.

1. 4 gloo processes, mesh (data 2, tensor 2): the MaskedLinear layers are tensor parallel on the
   "tensor" dimension (ColwiseParallel, then RowwiseParallel), every layer is sharded by FSDP2 on
   the "data" dimension (the tinyBIG-style parameter along its l entries), the model is compiled
   (torch.compile, aot_eager) and trained --steps SGD steps with momentum; DCP saves the model
   and optimizer states.
2. 2 gloo processes, FSDP2 alone (mesh: data 2): a model made with another seed (so its parameters
   and masks can only come from the checkpoint) loads the checkpoint, is compiled and trains
   --steps more steps.

After each phase rank 0 checks against one process training the same model on the same batches:
every rng_state bit for bit (so every mask), the masks in use (the zeros of each layer's masked
weight) bit for bit, and the losses and parameters to floating-point rounding (tensor parallelism
adds partial sums in another order than one matmul).

    python examples/fsdp_tp_resume.py
    python examples/fsdp_tp_resume.py --steps 3 --timeout 300

Exits 0 and prints "OK" when the checks pass.
"""

import argparse
import sys
import tempfile
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard, init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import tinybig_cuda

from gloo_ranks import exit_rank, join_ranks, run_ranks

P = 0.6
LR, MOMENTUM = 0.05, 0.9


class Fabricated(torch.nn.Module):
    """A tinyBIG-style layer: its (out, in) weight is masking reconciliation's fabrication of l = out * in parameters."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.shape = (out_features, in_features)
        self.fabrication = tinybig_cuda.masking_reconciliation(p=P)
        self.w = torch.nn.Parameter(torch.randn(1, out_features * in_features, dtype=torch.float64) / in_features**0.5)

    def weight(self):
        return self.fabrication(*self.shape, self.w)

    def forward(self, x):
        return x @ self.weight().t()


def build_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(tinybig_cuda.MaskedLinear(16, 32, p=P, dtype=torch.float64), torch.nn.Tanh(),
                               tinybig_cuda.MaskedLinear(32, 16, p=P, dtype=torch.float64), Fabricated(16, 4))


def batches(steps, first, seed):
    """Steps first .. first + steps - 1 of one stream of batches, the same on every rank."""
    generator = torch.Generator().manual_seed(seed)
    data = [(torch.randn(8, 16, generator=generator, dtype=torch.float64),
             torch.randn(8, 4, generator=generator, dtype=torch.float64)) for _ in range(first + steps)]
    return data[first:]


def train(model, optimizer, data):
    losses = []
    for x, target in data:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def masks_in_use(model):
    """The zeros of each layer's masked weight, as the layer uses it."""
    with torch.no_grad():
        layers = [tinybig_cuda.bernoulli_mask_apply(full(model[i].weight), P, full(model[i].rng_state)) for i in (0, 2)]
        fabricated = model[3].fabrication(*model[3].shape, full(model[3].w))
    return [weight != 0 for weight in (*layers, fabricated)]


def snapshot(model):
    """What rank 0 compares, gathered on every rank (full_tensor is a collective)."""
    return {"states": [full(m.rng_state) for m in model.modules() if hasattr(m, "rng_state")],
            "masks": masks_in_use(model), "parameters": [full(p.detach()) for p in model.parameters()]}


def compare(seen, losses, steps, seed, label):
    """Rank 0: a phase's snapshot against one process training the same model for `steps` steps in all."""
    reference = build_model(seed)
    expected_losses = train(reference, sgd(reference), batches(steps, 0, seed))
    expected = snapshot(reference)
    checks = {
        "every rng_state, bit for bit": all(map(torch.equal, seen["states"], expected["states"])),
        "the masks in use, bit for bit": all(map(torch.equal, seen["masks"], expected["masks"])),
        "losses": torch.allclose(losses, expected_losses[-len(losses):], rtol=1e-9, atol=1e-12),
        "parameters": all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(seen["parameters"], expected["parameters"])),
    }
    print(f"{label}: " + ", ".join(f"{name}: {ok}" for name, ok in checks.items()))
    if not all(checks.values()):
        raise SystemExit(f"MISMATCH between {label} and one process")


def quiet():
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="DTensor random operators may not have complete support")
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")


def save_phase(rank, args, checkpoint):
    quiet()
    join_ranks(rank, 4, args.timeout)
    try:
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("data", "tensor"))
        model = build_model(args.seed)
        parallelize_module(model, mesh["tensor"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
        for layer in (model[0], model[2], model[3]):
            fully_shard(layer, mesh=mesh["data"], shard_placement_fn=lambda param: Shard(param.dim() - 1))
        fully_shard(model, mesh=mesh["data"])
        optimizer = sgd(model)
        losses = train(torch.compile(model, backend="aot_eager"), optimizer, batches(args.steps, 0, args.seed))
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint)
        seen = snapshot(model)
        if rank == 0:
            compare(seen, losses, args.steps, args.seed, "4 ranks, FSDP2 x tensor parallel, compiled")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    exit_rank()


def resume_phase(rank, args, checkpoint):
    quiet()
    join_ranks(rank, 2, args.timeout)
    try:
        mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("data",))
        model = build_model(args.seed + 1)  # another init: what it trains with comes from the checkpoint
        for layer in (model[0], model[2], model[3]):
            fully_shard(layer, mesh=mesh, shard_placement_fn=lambda param: Shard(param.dim() - 1))
        fully_shard(model, mesh=mesh)
        optimizer = sgd(model)
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=checkpoint)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        losses = train(torch.compile(model, backend="aot_eager"), optimizer, batches(args.steps, args.steps, args.seed))
        seen = snapshot(model)
        if rank == 0:
            compare(seen, losses, 2 * args.steps, args.seed, "resumed on 2 ranks, FSDP2, compiled")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    exit_rank()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="SGD steps in each phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds each phase may take")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as checkpoint:
        run_ranks(save_phase, 4, args.timeout, args, checkpoint)
        run_ranks(resume_phase, 2, args.timeout, args, checkpoint)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
