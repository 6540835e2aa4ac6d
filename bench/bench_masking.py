"""Benchmarks tinybig_cuda's fused Bernoulli masking against tinyBIG's own and PyTorch's ways.

    python bench/bench_masking.py                  # 1024² and 4096², the ratios (about a minute on 2 cores)
    python bench/bench_masking.py --check          # the same, each ratio against its target; exit 1 if one is missed
    python bench/bench_masking.py --quick          # smaller sizes, 3 repeats, for development
    python bench/bench_masking.py --full           # 256² to 8192², float32, float16 and bfloat16 (several minutes)
    python bench/bench_masking.py --sizes 4096 8192 --dtypes float32 bfloat16 --impls ours_fixed copy

The op is memory-bound: the best it can do is move the bytes of one copy. So every time is also
given as effective GB/s (the bytes a one-pass kernel must move: w read and the output written,
twice that for forward+backward) and as a percentage of the copy floor measured in the same run.
Times are medians of several samples after warm-up; CUDA is timed with events. A "ratios" block
then compares the cases that matter at 4096² float32, each ratio measured over interleaved samples
of its two cases, so machine noise hits both alike; --check also states each ratio's target and
whether it was met, and exits with status 1 when one was not.

Implementations (--impls):
  ours_fixed        tinybig_cuda.masking_reconciliation(fixed_mask=True), called as tinyBIG's heads do
  ours_fresh        the same with fixed_mask=False: a new 16-byte state per call
  tinybig_fresh     tinyBIG 0.2.1's masking_reconciliation, new mask per call: the installed tinyBIG where
                    it imports, else the replica in bench/tinybig_replica.py (the report says which)
  tinybig_cached    the same with fixed_mask=True: mask drawn once, then reused
  tinybig_compiled  torch.compile of tinybig_fresh (inductor may fuse rand, compare and multiply)
  dropout           F.dropout(w, 1 - p): PyTorch's built-in Bernoulli masking (it also rescales by 1/p)
  copy              out.copy_(w) into a preallocated tensor: the memory floor
  clone             w.clone(): a new tensor from torch's allocator per call; on the CPU, above 32 MiB,
                    that is fresh pages from the OS (ours reuses freed outputs: tinybig_cuda.memory)

Per call at tinyBIG's own sizes: a tabular RPN head fabricates small matrices (6×12 to 512×3072),
where a call's fixed costs (Python, dispatch, autograd) outweigh its bytes. The "per call" block
times ours against tinyBIG there on 1 thread, fixed and fresh masks, forward and forward+backward,
each ratio again over interleaved sample pairs (--per-call-sizes, --no-per-call).

Output: markdown tables on stdout (progress goes to stderr), a JSON file, and a log-log plot when
matplotlib is installed (`pip install matplotlib`).
"""

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import tinybig_cuda
from tinybig_cuda._torch_compat import COMPILE_SUPPORTED

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tinybig_replica  # noqa: E402  (beside this file, not an installed package)

TINYBIG_CLASS, TINYBIG_SOURCE = tinybig_replica.baseline()

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMPLEMENTATIONS = ["ours_fixed", "ours_fresh", "tinybig_fresh", "tinybig_cached", "tinybig_compiled", "dropout", "copy", "clone"]
MODES = ["fwd", "fwd+bwd"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
KEEP_PROBABILITY = 0.5
TWO_THREADS_TARGET = "ours fixed fwd: 2 threads speed / 1 thread"
# (n, D) of tinyBIG's tabular heads, smallest first; the first two carry the per-call targets.
TINYBIG_SIZES = [(6, 12), (10, 256), (10, 4160), (64, 4160), (512, 3072)]
PER_CALL_TARGETS = {"fwd": 1.3, "fwd+bwd": 1.1}  # tinyBIG time / ours at the first two sizes


# --------------------------------------------------------------------------------------------
# The implementations: build_case turns a name into step(), one forward (or one forward and
# backward) on prepared tensors, plus the module (or None) that holds its mask state.
# --------------------------------------------------------------------------------------------

def build_case(impl, n, dtype, device, mode, D=None):
    """Prepares one (implementation, n×D, dtype, mode) case and returns (step, module, w); D
    defaults to n."""
    D = n if D is None else D
    backward = mode == "fwd+bwd"
    # tinyBIG's heads pass each channel's parameters as a (1, n*D) row: fabricate from that shape.
    w = torch.randn(1, n * D, dtype=dtype, device=device, requires_grad=backward)
    grad_output = torch.randn(n, D, dtype=dtype, device=device)
    module = None

    if impl in ("copy", "clone"):
        # The floors take no autograd: forward+backward is simply two passes over the bytes.
        source = w.detach().view(n, D)
        if impl == "copy":
            out, grad_out = torch.empty_like(source), torch.empty_like(source)
            forward = lambda: out.copy_(source)  # noqa: E731
            second_pass = lambda: grad_out.copy_(grad_output)  # noqa: E731
        else:
            forward = source.clone
            second_pass = grad_output.clone
        if not backward:
            return forward, None, w

        def both():
            forward()
            second_pass()
        return both, None, w

    if impl == "dropout":
        forward = lambda: F.dropout(w.view(n, D), p=1.0 - KEEP_PROBABILITY, training=True)  # noqa: E731
    else:
        if impl.startswith("ours"):
            module = tinybig_cuda.masking_reconciliation(p=KEEP_PROBABILITY, fixed_mask=impl == "ours_fixed", device=device)
            call = module
        elif impl in ("tinybig_fresh", "tinybig_cached", "tinybig_compiled"):
            module = TINYBIG_CLASS(p=KEEP_PROBABILITY, fixed_mask=impl == "tinybig_cached")
            call = module
            if impl == "tinybig_compiled":
                # A fresh compile per case: one static-shape graph each, never the recompile limit.
                torch._dynamo.reset()
                call = torch.compile(module, dynamic=False)
        else:
            raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLEMENTATIONS}")
        device_name = str(device)
        forward = lambda: call(n=n, D=D, w=w, device=device_name)  # noqa: E731  (tinyBIG's keyword call)

    if not backward:
        return forward, module, w

    def forward_backward():
        out = forward()
        torch.autograd.grad(out, w, grad_output)
    return forward_backward, module, w


def saved_for_backward_bytes(step, w):
    """Bytes autograd keeps between forward and backward in one (warm) `step`, seen by
    saved_tensors_hooks.

    Counted once per storage; the parameters w themselves are not counted (the model holds them
    anyway). The floors run no autograd and so save nothing."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() != w.untyped_storage().data_ptr():
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(storages.values())


def mask_state_bytes(module):
    """Bytes of tensors a module keeps between calls: buffers and plain tensor attributes (where
    tinyBIG keeps its mask). Parameters are not mask state and are not counted."""
    if module is None:
        return 0
    tensors = {id(t): t for t in module.buffers()}
    for child in module.modules():
        tensors.update({id(v): v for v in vars(child).values() if isinstance(v, torch.Tensor)})
    return sum(t.numel() * t.element_size() for t in tensors.values())


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(step, device, warmup, warmup_seconds):
    """At least `warmup` calls, and for at least `warmup_seconds`: the first calls at a new size
    pay one-off costs (compiling, the OS backing fresh memory, huge pages) that are not the op's."""
    warm_until = time.perf_counter() + warmup_seconds
    calls_made = 0
    while calls_made < warmup or time.perf_counter() < warm_until:
        step()
        calls_made += 1
    synchronize(device)


def make_sampler(step, device):
    """A function that times one sample of `step` and returns its seconds per call.

    On the CPU a sample is one call: on a shared machine a call that loses its core to another
    process is an outlier the median ignores, where an average over a loop would absorb it. On
    CUDA a sample is a loop of calls between two events on the current stream, about 1 ms long (a
    host timer would measure launches, and one small kernel per event pair would measure the gaps
    between launches)."""
    if torch.device(device).type != "cuda":
        def sample():
            begin = time.perf_counter()
            step()
            return time.perf_counter() - begin
        return sample

    calls = 1

    def sample():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    calls = max(1, min(1000, math.ceil(1e-3 / max(sample(), 1e-7))))
    return sample


def time_step(step, device, repeats, warmup, budget_seconds, warmup_seconds=0.0):
    """Median and minimum seconds per call of `step`, and the number of samples, after warm-up.
    At least `repeats` samples are taken, more while they fit in `budget_seconds`, so small sizes
    get many."""
    warm_up(step, device, warmup, warmup_seconds)
    sample = make_sampler(step, device)
    samples = []
    deadline = time.perf_counter() + budget_seconds
    while len(samples) < repeats or (time.perf_counter() < deadline and len(samples) < 100 * repeats):
        samples.append(sample())
    return statistics.median(samples), min(samples), len(samples)


@contextlib.contextmanager
def num_threads(threads):
    """torch's intra-op thread count inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def paired_ratio(numerator, denominator, n, device, args, D=None):
    """The median over interleaved sample pairs of time(numerator) / time(denominator), the number
    of pairs, and each case's median seconds per call; each case is (impl, mode, dtype, threads)."""
    steps = []
    for impl, mode, dtype, threads in (numerator, denominator):
        with num_threads(threads):
            steps.append((build_case(impl, n, DTYPES[dtype], device, mode, D)[0], threads))
    return paired_steps(steps, device, args)


def paired_steps(steps, device, args):
    """paired_ratio of two prepared (step, threads) cases.

    The two cases alternate, sample by sample, so each ratio compares two moments of the same
    machine: on a shared VM whose speed drifts by tens of percent over seconds, a ratio of two
    medians taken at different times measures the drift as much as the code."""
    samplers = []
    for step, threads in steps:
        with num_threads(threads):
            warm_up(step, device, args.warmup, args.warmup_seconds)
            samplers.append((make_sampler(step, device), threads))
    samples = []
    deadline = time.perf_counter() + args.target_seconds
    while len(samples) < args.repeats or (time.perf_counter() < deadline and len(samples) < 100 * args.repeats):
        times = []
        for sample, threads in samplers:
            with num_threads(threads):
                times.append(sample())
        samples.append(times)
    ratio = statistics.median(a / b for a, b in samples)
    return ratio, len(samples), [statistics.median(times) for times in zip(*samples)]


# Gradient layouts the backward meets, against a contiguous one (the target: within 20% of it).
def gradient_layouts(n, device):
    return {
        "stride 0 (the gradient of .sum())": torch.ones((), device=device).expand(n, n),
        "one row expanded": torch.randn(n, device=device).expand(n, n),
        "a column slice of a wider tensor": torch.randn(n, n + 64, device=device)[:, 32 : 32 + n],
        "every other column": torch.randn(n, 2 * n, device=device)[:, ::2],
        "transposed": torch.randn(n, n, device=device).t(),
    }


def evaluate_layouts(n, device, args, progress):
    """Masking a non-contiguous float32 (n, n) tensor over masking a contiguous one: what the
    backward costs for each gradient layout. Returns dict rows."""
    state = torch.tensor([1, 2], device=device)
    contiguous = torch.randn(n, n, device=device)
    rows = []
    for name, layout in gradient_layouts(n, device).items():
        progress(f"layouts: {name}")
        steps = [(lambda g=g: tinybig_cuda.bernoulli_mask_apply(g, KEEP_PROBABILITY, state), None) for g in (layout, contiguous)]
        ratio, pairs, _ = paired_steps(steps, device, args)
        rows.append({"layout": name, "ratio": ratio, "pairs": pairs, "within_20_percent": ratio <= 1.2})
    return rows


def markdown_layouts(rows, n, check=False):
    lines = [f"**gradient layouts at {n}² float32**: masking each layout / masking a contiguous tensor (paired ratio"
             + ("; the target is within 20%)" if check else ")"), "",
             "| layout | time / contiguous | pairs |" + (" within 20% |" if check else ""),
             "|:---|---:|---:|" + (":---|" if check else "")]
    for r in rows:
        verdict = f" {'yes' if r['within_20_percent'] else 'no'} |" if check else ""
        lines.append(f"| {r['layout']} | {r['ratio']:.2f}× | {r['pairs']} |{verdict}")
    return "\n".join(lines)


def measure(impl, n, dtype_name, mode, device, args):
    """Times one case and returns its JSON row (without the copy-relative column)."""
    dtype = DTYPES[dtype_name]
    step, module, w = build_case(impl, n, dtype, device, mode)
    median, best, samples = time_step(step, device, args.repeats, args.warmup, args.budget_seconds, args.warmup_seconds)
    held = mask_state_bytes(module)
    saved = saved_for_backward_bytes(step, w) if mode == "fwd+bwd" else None
    numel = n * n
    moved = (2 if mode == "fwd" else 4) * numel * torch.empty((), dtype=dtype).element_size()
    return {
        "impl": impl, "mode": mode, "n": n, "D": n, "numel": numel, "dtype": dtype_name,
        "device": str(device), "threads": torch.get_num_threads(),
        "ms": median * 1e3, "ms_min": best * 1e3, "samples": samples, "gbps": moved / median / 1e9,
        "elements_per_s": numel / median,
        "saved_for_backward_bytes": saved, "mask_state_bytes": held,
    }


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------

def format_bytes(count):
    if count is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def add_copy_percentages(rows):
    """% of copy = copy's time / this time, for the same size, dtype, mode and thread count:
    100% means as fast as the memory floor."""
    floors = {(r["n"], r["dtype"], r["mode"], r["threads"]): r["ms"] for r in rows if r["impl"] == "copy"}
    for row in rows:
        floor = floors.get((row["n"], row["dtype"], row["mode"], row["threads"]))
        row["pct_of_copy"] = 100.0 * floor / row["ms"] if floor else None


def markdown_tables(rows):
    """One table per mode; the memory column is the one that matters for that mode."""
    lines = []
    for mode in MODES:
        mode_rows = [r for r in rows if r["mode"] == mode]
        if not mode_rows:
            continue
        memory_title, memory_key = (
            ("mask state held", "mask_state_bytes") if mode == "fwd" else ("saved for backward", "saved_for_backward_bytes"))
        lines += [f"**{'forward' if mode == 'fwd' else 'forward + backward'}**", "",
                  f"| size | dtype | implementation | ms | GB/s | % of copy | {memory_title} |",
                  "|---:|:---|:---|---:|---:|---:|---:|"]
        for r in mode_rows:
            pct = "-" if r["pct_of_copy"] is None else f"{r['pct_of_copy']:.0f}%"
            lines.append(f"| {r['n']}² | {r['dtype']} | {r['impl']} | {r['ms']:.3f} | {r['gbps']:.1f} | {pct} | "
                         f"{format_bytes(r[memory_key])} |")
        lines.append("")
    return "\n".join(lines)


def evaluate_targets(n, device, args, progress):
    """The project's performance targets at n² float32, each a ratio measured over interleaved
    sample pairs (paired_ratio). Returns a list of target dicts; nothing fails when one is missed."""
    def case(impl, mode="fwd", dtype="float32", threads=None):
        return (impl, mode, dtype, threads)

    # name, numerator case, denominator case, target, whether higher is better
    wanted = [
        ("ours fixed fwd time / copy", case("ours_fixed"), case("copy"), 1.3, False),
        ("tinyBIG fresh fwd / ours fresh fwd", case("tinybig_fresh"), case("ours_fresh"), 20.0, True),
        ("tinyBIG cached fwd / ours fixed fwd", case("tinybig_cached"), case("ours_fixed"), 7.0, True),
        ("torch.compile(tinyBIG fresh) fwd / ours fresh fwd", case("tinybig_compiled"), case("ours_fresh"), 10.0, True),
        ("ours fixed fwd+bwd time / copy fwd", case("ours_fixed", "fwd+bwd"), case("copy"), 2.6, False),
    ]
    if not COMPILE_SUPPORTED:
        wanted = [entry for entry in wanted if entry[1][0] != "tinybig_compiled"]
    if torch.device(device).type == "cpu" and torch.get_num_threads() >= 2:
        wanted.append((TWO_THREADS_TARGET,
                       case("ours_fixed", threads=1), case("ours_fixed", threads=2), 1.8, True))
    for half in ("float16", "bfloat16"):
        # Same element count, so the elements/s ratio is the inverse time ratio.
        wanted.append((f"ours fixed fwd: {half} elements/s / float32",
                       case("ours_fixed"), case("ours_fixed", dtype=half), 1.0, True))
    targets = []
    for name, numerator, denominator, target, higher in wanted:
        progress(f"ratios: {name}")
        ratio, pairs, _ = paired_ratio(numerator, denominator, n, device, args)
        targets.append({"name": name, "ratio": ratio, "pairs": pairs, "target": target, "higher_is_better": higher,
                        "met": ratio >= target if higher else ratio <= target})
    for target in targets:
        if target["name"] == TWO_THREADS_TARGET:
            # With 2 threads the op is memory-bound: it can be no faster than a 2-thread copy, so
            # this bounds what the second thread can gain on this machine.
            progress("ratios: the 2-thread ceiling (ours on 1 thread / copy on 2)")
            target["ceiling"], _, _ = paired_ratio(case("ours_fixed", threads=1), case("copy", threads=2), n, device, args)
    return targets


def markdown_targets(targets, n, check=False):
    lines = [f"**ratios at {n}² float32** (each the median ratio over interleaved sample pairs of its two cases)", "",
             "| ratio | measured | pairs |" + (" target | |" if check else ""),
             "|:---|---:|---:|" + ("---:|:---|" if check else "")]
    for t in targets:
        bound = "≥" if t["higher_is_better"] else "≤"
        verdict = f" {bound} {t['target']:g}× | {'met' if t['met'] else 'not met'} |" if check else ""
        lines.append(f"| {t['name']} | {t['ratio']:.2f}× | {t['pairs']} |{verdict}")
    for t in targets:
        if "ceiling" in t:
            lines += ["", f"The 2-thread ratio's ceiling here is {t['ceiling']:.2f}×: ours on 1 thread over a copy on 2 "
                          "threads, the memory floor that the op reaches with 2 threads."]
    return "\n".join(lines)


def evaluate_per_call(device, args, progress):
    """tinyBIG's time over ours at each of its tabular sizes, on 1 thread, for fixed and fresh masks,
    forward and forward+backward; each a paired ratio (interleaved samples). Returns dict rows."""
    pairs = {"fixed": ("tinybig_cached", "ours_fixed"), "fresh": ("tinybig_fresh", "ours_fresh")}
    rows = []
    for n, D in args.per_call_sizes:
        for mask, (theirs, ours) in pairs.items():
            for mode in MODES:
                progress(f"per call: {n}×{D} {mask} {mode}")
                ratio, count, (their_s, our_s) = paired_ratio(
                    (theirs, mode, "float32", 1), (ours, mode, "float32", 1), n, device, args, D)
                target = PER_CALL_TARGETS[mode] if (n, D) in TINYBIG_SIZES[:2] else 1.0
                rows.append({"n": n, "D": D, "mask": mask, "mode": mode, "tinybig_us": their_s * 1e6, "ours_us": our_s * 1e6,
                             "ratio": ratio, "pairs": count, "target": target, "met": ratio >= target})
    return rows


def markdown_per_call(rows, check=False):
    targets = (f"; targets: ≥ {PER_CALL_TARGETS['fwd']:g}× forward and ≥ {PER_CALL_TARGETS['fwd+bwd']:g}× forward+backward at "
               f"{TINYBIG_SIZES[0][0]}×{TINYBIG_SIZES[0][1]} and {TINYBIG_SIZES[1][0]}×{TINYBIG_SIZES[1][1]}, ≥ 1× elsewhere")
    lines = [f"**per call at tinyBIG's sizes** (1 thread, float32, w a (1, n·D) parameter, tinyBIG's keyword call; "
             f"tinyBIG = {TINYBIG_SOURCE}; speed-up = tinyBIG time / ours, the median over interleaved sample pairs"
             f"{targets if check else ''})", "",
             "| n×D | mask | mode | tinyBIG µs | ours µs | speed-up | pairs |" + (" target | |" if check else ""),
             "|:---|:---|:---|---:|---:|---:|---:|" + ("---:|:---|" if check else "")]
    for r in rows:
        verdict = f" ≥ {r['target']:g}× | {'met' if r['met'] else 'not met'} |" if check else ""
        lines.append(f"| {r['n']}×{r['D']} | {r['mask']} | {r['mode']} | {r['tinybig_us']:.1f} | {r['ours_us']:.1f} | "
                     f"{r['ratio']:.2f}× | {r['pairs']} |{verdict}")
    return "\n".join(lines)


def draw_plot(rows, path, title):
    """Time vs size, log-log, one line per implementation and dtype, one panel per mode.
    Skipped (returns False) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    figure, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    styles = dict(zip(DTYPES, ["-", "--", ":", "-."]))
    for axis, mode in zip(axes[0], modes):
        for color, impl in enumerate(IMPLEMENTATIONS):  # a colour per implementation, a line style per dtype
            for dtype in DTYPES:
                line = sorted((r["numel"], r["ms"]) for r in rows if (r["impl"], r["dtype"], r["mode"]) == (impl, dtype, mode))
                if line:
                    axis.plot(*zip(*line), styles[dtype], color=f"C{color}", marker="o", label=f"{impl} {dtype}")
        axis.set(xscale="log", yscale="log", xlabel="elements (n × D)", ylabel="ms (median)",
                 title=f"{'forward' if mode == 'fwd' else 'forward + backward'}")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="n, for n×n matrices")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32"])
    parser.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS, default=IMPLEMENTATIONS)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case at least; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (compiles torch.compile)")
    parser.add_argument("--warmup-seconds", type=float, default=0.2, help="and untimed calls for at least this long")
    parser.add_argument("--budget-seconds", type=float, default=0.1,
                        help="time more calls than --repeats while they fit in this (small sizes)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the sweep")
    parser.add_argument("--target-size", type=int, default=4096, help="n at which the ratios are measured")
    parser.add_argument("--target-seconds", type=float, default=1.0,
                        help="interleave sample pairs of each ratio's two cases for this long (at least --repeats pairs)")
    parser.add_argument("--no-targets", action="store_true", help="skip the ratios block (and the gradient layouts)")
    parser.add_argument("--check", action="store_true",
                        help="state each ratio's target and whether it was met; exit with status 1 if one was not")
    parser.add_argument("--per-call-sizes", type=lambda text: tuple(int(x) for x in text.split("x")), nargs="+",
                        default=TINYBIG_SIZES, metavar="NxD", help="(n, D) sizes of the per-call block, e.g. 6x12 10x256")
    parser.add_argument("--per-call-seconds", type=float, default=0.4, help="interleave each per-call pair for this long")
    parser.add_argument("--no-per-call", action="store_true", help="skip the per-call block at tinyBIG's sizes")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "bench_masking.json")
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / "bench_masking.png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--no-output-cache", action="store_true",
                        help="turn off tinybig_cuda's CPU output cache: every large output then gets fresh memory")
    parser.add_argument("--quick", action="store_true", help="sizes 256 1024, 3 repeats, ratios at 1024²")
    parser.add_argument("--full", action="store_true",
                        help="sizes 256 to 8192, float32, float16 and bfloat16, each ratio paired for 2 s")
    args = parser.parse_args(argv)
    if args.full:
        args.sizes, args.dtypes = [256, 512, 1024, 2048, 4096, 8192], ["float32", "float16", "bfloat16"]
        args.target_seconds, args.per_call_seconds = 2.0, 1.0
    if args.quick:
        args.sizes, args.repeats, args.target_size = [256, 1024], 3, 1024
        args.per_call_sizes = TINYBIG_SIZES[:2]
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def busy_cores_of_others(seconds=0.5):
    """How many cores other processes kept busy over `seconds` while this one slept (from
    /proc/stat; None where it cannot be read). Unlike the load average, it does not remember a run
    that has just ended."""
    def busy_and_total():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)
    try:
        busy_before, total_before = busy_and_total()
        time.sleep(seconds)
        busy_after, total_after = busy_and_total()
    except (OSError, ValueError, IndexError):
        return None
    cores = os.cpu_count() or 1
    return cores * (busy_after - busy_before) / max(1, total_after - total_before)


def environment(device):
    info = {"torch": torch.__version__, "tinybig_cuda": tinybig_cuda.__version__, "device": str(device),
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cpu": cpu_name(), "cpu_isa": tinybig_cuda._C.cpu_isa(),
            "cpu_output_cache_limit_bytes": tinybig_cuda.cpu_output_cache_info()["limit_bytes"]}
    busy = busy_cores_of_others()
    if busy is not None:
        info["busy_cores_at_start"] = busy
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv=None):
    """Runs the sweep, prints the markdown report and writes JSON (and the plot); returns the results."""
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    cache_limit_before = tinybig_cuda.cpu_output_cache_info()["limit_bytes"]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_output_cache:
        tinybig_cuda.set_cpu_output_cache_limit(0)
    try:
        return run_sweep(args)
    finally:
        torch.set_num_threads(threads_before)
        tinybig_cuda.set_cpu_output_cache_limit(cache_limit_before)


def run_sweep(args):
    device = torch.device(args.device)
    torch.manual_seed(0)
    impls = list(args.impls)
    ours_runs = device.type != "cuda" or tinybig_cuda._C.has_cuda_kernels()
    if not ours_runs:
        print("note: this build of tinybig_cuda has no CUDA kernels; skipping ours_* on CUDA", file=sys.stderr)
        impls = [i for i in impls if not i.startswith("ours")]
    if "tinybig_compiled" in impls and not COMPILE_SUPPORTED:
        print(f"note: torch {torch.__version__} has no torch.compile on this Python; skipping tinybig_compiled", file=sys.stderr)
        impls.remove("tinybig_compiled")
    if "copy" not in impls:
        impls.append("copy")  # every other row is reported relative to it

    env = environment(device)
    cases = [(n, dtype, mode, impl) for n in args.sizes for dtype in args.dtypes for mode in args.modes for impl in impls]
    started = time.perf_counter()

    def progress(message):
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    rows = []
    for index, (n, dtype, mode, impl) in enumerate(cases, 1):
        row = measure(impl, n, dtype, mode, device, args)
        rows.append(row)
        progress(f"{index}/{len(cases)} {n}² {dtype} {mode:7} {impl:16} {row['ms']:10.3f} ms")

    targets, layouts = [], []
    target_ready = args.target_size in args.sizes and not args.no_targets and ours_runs
    if target_ready:
        targets = evaluate_targets(args.target_size, device, args, progress)
        layouts = evaluate_layouts(args.target_size, device, args, progress)
    add_copy_percentages(rows)
    per_call = []
    if not args.no_per_call and ours_runs:
        per_call_args = argparse.Namespace(**{**vars(args), "target_seconds": args.per_call_seconds})
        per_call = evaluate_per_call(device, per_call_args, progress)

    cache_mib = env["cpu_output_cache_limit_bytes"] / 2**20
    where = env.get("gpu") or (f"{env['cpu']} CPU, {env['threads']} threads, tinybig_cuda CPU ISA {env['cpu_isa']}, "
                               + (f"output cache {cache_mib:g} MiB" if cache_mib else "output cache off"))
    print(f"## Bernoulli masking: torch {env['torch']}, {where}\n")
    print(f"Median of ≥ {args.repeats} timed calls per case; p = {KEEP_PROBABILITY}; effective GB/s counts the bytes a one-pass "
          "kernel must move (w read + output written; twice that with backward); % of copy = copy's time / this time.\n")
    if env.get("busy_cores_at_start", 0) > 0.25 and device.type == "cpu":
        print(f"Warning: other processes kept {env['busy_cores_at_start']:.1f} cores busy at the start: they share these cores, "
              "so times (above all with several threads) are noisy.\n")
    print(markdown_tables(rows))
    if targets:
        print(markdown_targets(targets, args.target_size, args.check))
        print()
        print(markdown_layouts(layouts, args.target_size, args.check))
    elif not args.no_targets:
        print(f"(ratios skipped: they need {args.target_size} in --sizes and ours on {device})")
    if per_call:
        print()
        print(markdown_per_call(per_call, args.check))
    missed = [t["name"] for t in targets if not t["met"]] + [r["layout"] for r in layouts if not r["within_20_percent"]]
    missed += [f"per call {r['n']}×{r['D']} {r['mask']} {r['mode']}" for r in per_call if not r["met"]]

    results = {"environment": env, "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "rows": rows, "targets": targets, "layouts": layouts, "per_call": per_call, "tinybig": TINYBIG_SOURCE,
               "missed_targets": missed, "seconds": time.perf_counter() - started}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    progress(f"wrote {args.json}")
    if not args.no_plot:
        if draw_plot(rows, args.plot, f"tinybig_cuda masking, {where}"):
            progress(f"wrote {args.plot}")
        else:
            progress("no plot: matplotlib is not installed (pip install matplotlib)")
    if args.check:
        progress(f"--check: {len(missed)} target(s) missed" + (": " + "; ".join(missed) if missed else ""))
    return results


if __name__ == "__main__":
    results = main()
    sys.exit(1 if results["arguments"]["check"] and results["missed_targets"] else 0)
