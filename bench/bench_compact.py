"""Compact parameters vs full ones vs tinyBIG: the memory a masked (n, D) weight costs to train and
to checkpoint, and the time of its fabrication forward and forward+backward.

    python bench/bench_compact.py                      # 4096 x 4096 float32, p = 0.1, 0.25, 0.5
    python bench/bench_compact.py --size 1024 --repeats 3 --device cuda
    python bench/bench_compact.py --threads 1          # where other jobs keep the cores busy
    python bench/bench_compact.py --check              # the targets only; exit 1 if one is missed
    python bench/bench_compact.py --check --cpu-isa avx2   # on another CPU path than the fastest

Then the targets, at p = 0.1 and 0.5 (those of --p): compact forward no slower than the full op's
(it reads p of the bytes and writes as many), and compact forward+backward within 1.25x the full
op's, each the median ratio over interleaved sample pairs of the two modules, as bench_masking.py
measures its targets. Only --check fails (exit status 1) when a target is missed.

Variants, each a fixed mask applied to one (1, l) parameter row as tinyBIG's heads do:
  tinyBIG   tinyBIG 0.2.1's masking_reconciliation (bench/tinybig_replica.py): l = n*D, mask = torch.rand < p,
            a bool (n, D) tensor kept alive as a plain attribute (so not in the checkpoint: a
            reloaded model draws a different mask), applied as w.view(n, D) * mask
  full      tinybig_cuda.masking_reconciliation: l = n*D, the mask regenerated from a 16-byte state
  compact   tinybig_cuda.masking_reconciliation(compact=True): l = K ~ p*n*D kept entries; its
            rng_state stays on the CPU, so on CUDA a call checks w's count with no host sync
  compact, state on GPU   (CUDA only) the same with rng_state moved to the GPU, as .to("cuda")
            does: each call reads the 16-byte state back (one host sync)

Memory is measured, not computed: parameter, gradient and Adam state bytes after one Adam step,
the bytes of mask state the module keeps alive (on CUDA, with the GPU memory the compact ops keep
for the mask: tinybig_cuda.empty_compact_cache), and the size of torch.save(state_dict()).
Times are medians of at least --repeats calls after a warm-up, timed as bench_masking.py times them.
"""

import argparse
import io
import statistics
import sys
import time

import torch

import tinybig_cuda
import tinybig_replica
from bench_masking import make_sampler, time_step, warm_up

MIB = 2**20
TARGETS = {"fwd": 1.0, "fwd+bwd": 1.25}  # compact time / full time
TARGET_P = (0.1, 0.5)


class OneRowHead(torch.nn.Module):
    """The part of a tinyBIG head that owns the parameters: w = Parameter(rand(1, l))."""

    def __init__(self, fabrication, n, D, dtype, device):
        super().__init__()
        self.fabrication, self.n, self.D, self.device = fabrication, n, D, device
        self.w = torch.nn.Parameter(torch.rand(1, fabrication.calculate_l(n=n, D=D), dtype=dtype, device=device))

    def forward(self):
        return self.fabrication(w=self.w, n=self.n, D=self.D, device=self.device)


GPU_STATE = "compact, state on GPU"


def variants(device):
    return ("tinyBIG", "full", "compact") + ((GPU_STATE,) if torch.device(device).type == "cuda" else ())


def make_fabrication(variant, p, device):
    if variant == "tinyBIG":
        return tinybig_replica.masking_reconciliation(p=p, fixed_mask=True)
    fabrication = tinybig_cuda.masking_reconciliation(p=p, compact=variant != "full", device=device)
    if variant == GPU_STATE:
        fabrication.rng_state = fabrication.rng_state.to(device)
    return fabrication


def tensor_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def measure_memory(head):
    """(parameters, gradients, Adam state, mask state, checkpoint) bytes after one Adam step."""
    if head.w.is_cuda:
        tinybig_cuda.empty_compact_cache()  # so that what it holds after the step is this head's
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=0.0)
    head().sum().backward()
    optimizer.step()
    parameters = tensor_bytes(head.parameters())
    gradients = tensor_bytes(p.grad for p in head.parameters())
    adam = tensor_bytes(value for state in optimizer.state.values() for value in state.values())
    fabrication = head.fabrication
    # What the module keeps alive: tensor attributes (tinyBIG's mask_matrix is one; ours is made from
    # rng_state when read, so reading it would count a mask that is never kept) and buffers.
    mask = tensor_bytes(vars(fabrication).values()) + tensor_bytes(fabrication.buffers())
    if head.w.is_cuda:  # and what the compact ops keep of the mask on the GPU (nothing for the others)
        held = torch.cuda.memory_allocated(head.w.device)
        tinybig_cuda.empty_compact_cache()
        mask += held - torch.cuda.memory_allocated(head.w.device)
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    head.w.grad = None
    del optimizer
    return parameters, gradients, adam, mask, buffer.getbuffer().nbytes


def steps(head, device):
    """The head's forward (no autograd) and forward+backward, as callables."""
    grad_output = torch.randn(head.n, head.D, dtype=head.w.dtype, device=device)

    def forward():
        with torch.no_grad():
            head()

    def forward_backward():
        head.w.grad = None
        head().backward(grad_output)

    return forward, forward_backward


def measure_time(head, repeats, device):
    def median_ms(step):
        median_seconds, _, _ = time_step(step, device, repeats, warmup=1, budget_seconds=0.2, warmup_seconds=0.3)
        return median_seconds * 1e3

    return tuple(median_ms(step) for step in steps(head, device))


def paired_ratio(numerator, denominator, device, repeats, target_seconds):
    """Median over interleaved sample pairs of time(numerator) / time(denominator), and the number
    of pairs (see bench_masking.paired_ratio: on a drifting shared machine, only samples taken
    side by side compare the code rather than the moments)."""
    samplers = []
    for step in (numerator, denominator):
        warm_up(step, device, 1, 0.3)
        samplers.append(make_sampler(step, device))
    ratios = []
    deadline = time.perf_counter() + target_seconds
    while len(ratios) < repeats or (time.perf_counter() < deadline and len(ratios) < 100 * repeats):
        first, second = (sample() for sample in samplers)
        ratios.append(first / second)
    return statistics.median(ratios), len(ratios)


def evaluate_targets(n, dtype, device, probabilities, repeats, target_seconds):
    """Compact / full time at each p of TARGET_P in `probabilities`, forward and forward+backward."""
    targets = []
    for p in (p for p in TARGET_P if p in probabilities):
        torch.manual_seed(0)
        full_fabrication, compact_fabrication = make_fabrication("full", p, device), make_fabrication("compact", p, device)
        compact_fabrication.load_state_dict(full_fabrication.state_dict())  # one mask for both
        full = OneRowHead(full_fabrication, n, n, dtype, device)
        compact = OneRowHead(compact_fabrication, n, n, dtype, device)
        for mode, compact_step, full_step in zip(("fwd", "fwd+bwd"), steps(compact, device), steps(full, device)):
            ratio, pairs = paired_ratio(compact_step, full_step, device, repeats, target_seconds)
            target = TARGETS[mode]
            targets.append({"p": p, "mode": mode, "ratio": ratio, "pairs": pairs, "target": target, "met": ratio <= target})
            print(f"  target p={p} {mode}: done", file=sys.stderr)
    return targets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="n = D (default 4096)")
    parser.add_argument("--p", type=float, nargs="+", default=[0.1, 0.25, 0.5], help="keep probabilities")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target-seconds", type=float, default=3.0, help="time per target's paired samples (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cpu-isa", default="auto", help="the CPU path of the ops (default: the fastest this CPU runs)")
    parser.add_argument("--check", action="store_true", help="only the targets; exit with status 1 if one is missed")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tinybig_cuda._C.set_cpu_isa(args.cpu_isa)
    device, dtype, n = torch.device(args.device), getattr(torch, args.dtype), args.size

    print(
        f"{n} x {n} {args.dtype} on {device} (torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"CPU path {tinybig_cuda._C.cpu_isa()} of {tinybig_cuda._C.supported_cpu_isas()}); "
        "MiB = 2**20 bytes; 'training state' = parameters + gradients + Adam state + mask state",
        file=sys.stderr,
    )
    rows = []
    for p in [] if args.check else args.p:
        for variant in variants(device):
            torch.manual_seed(0)
            head = OneRowHead(make_fabrication(variant, p, args.device), n, n, dtype, args.device)
            parameters, gradients, adam, mask, checkpoint = measure_memory(head)
            forward_ms, forward_backward_ms = measure_time(head, args.repeats, device)
            total = parameters + gradients + adam + mask
            rows.append((p, variant, head.w.shape[1], parameters, gradients, adam, mask, total, checkpoint, forward_ms, forward_backward_ms))
            print(f"  p={p} {variant}: done", file=sys.stderr)
            del head
    targets = evaluate_targets(n, dtype, args.device, args.p, args.repeats, args.target_seconds)

    if rows:
        print_rows(rows)
    if targets:
        print()
        print(f"**targets at {n}² {args.dtype}** (compact time / full time, the median ratio over interleaved sample pairs)")
        print()
        print("| p | mode | compact / full | pairs | target | |")
        print("|---|---|---:|---:|---:|:---|")
        for t in targets:
            print(f"| {t['p']} | {t['mode']} | {t['ratio']:.2f}× | {t['pairs']} | ≤ {t['target']:g}× | {'met' if t['met'] else 'not met'} |")
    if args.check:
        missed = [f"p={t['p']} {t['mode']}" for t in targets if not t["met"]]
        print(f"--check: {len(missed)} target(s) missed" + (": " + "; ".join(missed) if missed else ""), file=sys.stderr)
        if missed:
            sys.exit(1)
    return rows, targets


def print_rows(rows):
    print("| p | variant | l | parameters | gradients | Adam state | mask state | training state | vs full | checkpoint | forward ms | fwd+bwd ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    full_totals = {row[0]: row[7] for row in rows if row[1] == "full"}
    for p, variant, l, parameters, gradients, adam, mask, total, checkpoint, forward_ms, forward_backward_ms in rows:
        full_total = full_totals[p]
        mask_text = f"{mask / MIB:.1f} MiB" if mask >= MIB else f"{mask} B"
        print(
            f"| {p} | {variant} | {l:,} | {parameters / MIB:.1f} MiB | {gradients / MIB:.1f} MiB | {adam / MIB:.1f} MiB | "
            f"{mask_text} | {total / MIB:.1f} MiB | {total / full_total:.2f} | {checkpoint / MIB:.1f} MiB | "
            f"{forward_ms:.1f} | {forward_backward_ms:.1f} |"
        )


if __name__ == "__main__":
    main()
