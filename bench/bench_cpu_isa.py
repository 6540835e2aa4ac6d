"""Elements per second of each CPU instruction-set path of the masking kernel, on one thread.

    python bench/bench_cpu_isa.py                    # float32, 2**18 elements (1 MiB: cache-resident)
    python bench/bench_cpu_isa.py --numel 1048576 --dtype bfloat16 --p 0.3

The size stays inside the caches by default, so the Philox arithmetic, not memory, sets the rate:
this is the number to compare between paths and CPUs. Each path is timed in turn, round after
round, and the median over rounds is printed, so drift of a shared machine hits every path alike.
"""

import argparse
import statistics
import time

import torch

import tinybig_cuda
from tinybig_cuda import _C

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def seconds_per_call(w, p, state, calls):
    start = time.perf_counter()
    for _ in range(calls):
        tinybig_cuda.bernoulli_mask_apply(w, p, state)
    return (time.perf_counter() - start) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numel", type=int, default=1 << 18)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--p", type=float, default=0.5, help="keep probability")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    torch.set_num_threads(1)
    w = torch.randn(args.numel).to(DTYPES[args.dtype])
    state = torch.tensor([1234, 5678])
    paths = _C.supported_cpu_isas()
    calls = max(1, (1 << 24) // args.numel)  # ~16 M elements per sample
    samples = {path: [] for path in paths}
    try:
        for round_index in range(args.rounds + 1):
            for path in paths:
                _C.set_cpu_isa(path)
                seconds = seconds_per_call(w, args.p, state, calls)
                if round_index > 0:  # round 0 warms up
                    samples[path].append(seconds)
    finally:
        _C.set_cpu_isa("auto")

    print(f"{args.numel} {args.dtype} elements, p = {args.p}, 1 thread, median of {args.rounds} rounds")
    print("| path | G elements/s | ns per element |")
    print("|:---|---:|---:|")
    for path in paths:
        seconds = statistics.median(samples[path])
        print(f"| {path} | {args.numel / seconds / 1e9:.3f} | {seconds / args.numel * 1e9:.2f} |")


if __name__ == "__main__":
    main()
