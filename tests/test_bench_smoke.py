"""Smoke test of bench/bench_masking.py (every implementation runs and reports sane rows) and of
bench/bench_cpu_isa.py (a row per supported CPU path).

It checks behaviour (the rows, their keys, the memory each implementation keeps), never speed:
timings on a shared CI machine say nothing, and the bench reports targets without failing them.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinybig_cuda._torch_compat import COMPILE_SUPPORTED

pytestmark = pytest.mark.slow  # runs the benchmarks' sweeps

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_masking.py"
N = 64


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_masking", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def results(bench, tmp_path_factory):
    """One tiny sweep of every implementation (one process, so torch.compile compiles once)."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--sizes", str(N), "--repeats", "1", "--warmup", "1", "--warmup-seconds", "0", "--budget-seconds", "0", "--device", "cpu",
            "--target-seconds", "0", "--target-size", str(N), "--json", str(out / "results.json"), "--plot", str(out / "plot.png")]
    returned = bench.main(argv)
    return returned, out


def test_every_implementation_and_mode_has_one_row(bench, results):
    returned, _ = results
    # Without torch.compile (an old torch on Python 3.12) the compiled baseline is left out, saying so.
    implementations = [impl for impl in bench.IMPLEMENTATIONS if bench.COMPILE_SUPPORTED or impl != "tinybig_compiled"]
    assert sorted((r["impl"], r["mode"]) for r in returned["rows"]) == sorted(
        (impl, mode) for impl in implementations for mode in bench.MODES)


def test_json_rows_have_the_expected_keys_and_positive_numbers(results):
    returned, out = results
    written = json.loads((out / "results.json").read_text())
    assert written["rows"] == json.loads(json.dumps(returned["rows"]))
    expected = {"impl", "mode", "n", "D", "numel", "dtype", "device", "threads", "ms", "ms_min", "samples",
                "gbps", "elements_per_s", "pct_of_copy", "saved_for_backward_bytes", "mask_state_bytes"}
    for row in written["rows"]:
        assert expected <= row.keys(), row
        assert (row["n"], row["D"], row["numel"]) == (N, N, N * N)
        for key in ("ms", "ms_min", "gbps", "elements_per_s"):
            assert row[key] > 0, (key, row)
        assert row["pct_of_copy"] > 0, row
    for key in ("torch", "device", "threads", "cpu_isa"):
        assert key in written["environment"]


def find(rows, impl, mode):
    return next(r for r in rows if (r["impl"], r["mode"], r["n"], r["dtype"]) == (impl, mode, N, "float32"))


def test_memory_columns_show_what_each_implementation_keeps(results):
    rows = results[0]["rows"]
    # Ours keeps and saves only the 16-byte [seed, offset] state, never a mask.
    for impl in ("ours_fixed", "ours_fresh"):
        assert find(rows, impl, "fwd+bwd")["saved_for_backward_bytes"] == 16
        assert find(rows, impl, "fwd")["mask_state_bytes"] == 16
    # tinyBIG saves its n*D boolean mask for backward and keeps it as an attribute.
    for impl in ("tinybig_fresh", "tinybig_cached") + (("tinybig_compiled",) if COMPILE_SUPPORTED else ()):
        assert find(rows, impl, "fwd+bwd")["saved_for_backward_bytes"] >= N * N
        assert find(rows, impl, "fwd")["mask_state_bytes"] == N * N
    for impl in ("copy", "clone"):
        assert find(rows, impl, "fwd+bwd")["saved_for_backward_bytes"] == 0
        assert find(rows, impl, "fwd")["mask_state_bytes"] == 0
    assert find(rows, "copy", "fwd")["pct_of_copy"] == pytest.approx(100.0)


def test_targets_are_reported_not_enforced(results):
    targets = results[0]["targets"]
    assert len(targets) >= (7 if COMPILE_SUPPORTED else 6)
    for target in targets:
        assert {"name", "ratio", "pairs", "target", "higher_is_better", "met"} <= target.keys()
        assert target["ratio"] > 0 and target["pairs"] >= 1 and isinstance(target["met"], bool)


def test_ratios_are_printed_without_verdicts_unless_checked(bench, results):
    returned = results[0]
    targets, layouts, per_call = returned["targets"], returned["layouts"], returned["per_call"]
    for check in (False, True):
        printed = "\n".join([bench.markdown_targets(targets, N, check), bench.markdown_layouts(layouts, N, check),
                              bench.markdown_per_call(per_call, check)])
        assert ("met |" in printed) == check and ("target" in printed) == check, printed
    missed = [t["name"] for t in targets if not t["met"]] + [r["layout"] for r in layouts if not r["within_20_percent"]]
    assert returned["missed_targets"][:len(missed)] == missed


def test_plot_is_drawn_when_matplotlib_is_installed(results):
    pytest.importorskip("matplotlib")
    plot = results[1] / "plot.png"
    assert plot.stat().st_size > 0


def test_markdown_table_lists_every_row(bench, results):
    rows = results[0]["rows"]
    table = bench.markdown_tables(rows)
    assert table.count(f"| {N}² | float32 |") == len(rows)


def test_output_cache_switch_is_recorded_and_restored(bench, results, tmp_path):
    import tinybig_cuda

    limit = tinybig_cuda.cpu_output_cache_info()["limit_bytes"]
    assert results[0]["environment"]["cpu_output_cache_limit_bytes"] == limit > 0
    argv = ["--sizes", str(N), "--impls", "ours_fixed", "--modes", "fwd", "--repeats", "1", "--warmup-seconds", "0",
            "--budget-seconds", "0", "--device", "cpu", "--no-targets", "--no-plot", "--json", str(tmp_path / "r.json"),
            "--no-output-cache"]
    assert bench.main(argv)["environment"]["cpu_output_cache_limit_bytes"] == 0
    assert tinybig_cuda.cpu_output_cache_info()["limit_bytes"] == limit


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_busy_cores_of_others_sees_a_spinning_process(bench):
    import subprocess
    import sys

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = bench.busy_cores_of_others(seconds=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert 0.5 <= busy <= os.cpu_count() + 0.01


def test_cpu_isa_bench_prints_a_row_per_supported_path():
    import tinybig_cuda

    script = Path(__file__).resolve().parents[1] / "bench" / "bench_cpu_isa.py"
    result = subprocess.run([sys.executable, str(script), "--numel", "4096", "--rounds", "1"],
                            capture_output=True, text=True, check=True)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| path")]
    assert [row.split("|")[1].strip() for row in rows] == tinybig_cuda._C.supported_cpu_isas()
    for row in rows:
        assert float(row.split("|")[2]) > 0
