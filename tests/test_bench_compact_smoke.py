"""Smoke test of bench/bench_compact.py: every variant and target runs and reports sane numbers.
It checks behaviour, never speed (the bench reports its target without failing it)."""

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the benchmark's sweep

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def results():
    sys.path.insert(0, str(BENCH_DIR))  # the bench imports its neighbours
    try:
        import bench_compact

        return bench_compact.main(["--size", "64", "--p", "0.1", "0.5", "--repeats", "1", "--target-seconds", "0", "--device", "cpu"])
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_every_variant_has_a_row_and_compact_keeps_about_p_of_the_parameters(results):
    rows, _ = results
    assert [(row[0], row[1]) for row in rows] == [(p, v) for p in (0.1, 0.5) for v in ("tinyBIG", "full", "compact")]
    for p, variant, l, parameters, *_ , forward_ms, forward_backward_ms in rows:
        assert forward_ms > 0 and forward_backward_ms > 0
        if variant == "compact":
            assert abs(l / 64**2 - p) < 0.1 and parameters == 4 * l
        else:
            assert l == 64**2


def test_targets_are_reported_for_both_modes_and_probabilities(results):
    _, targets = results
    assert [(t["p"], t["mode"]) for t in targets] == [(0.1, "fwd"), (0.1, "fwd+bwd"), (0.5, "fwd"), (0.5, "fwd+bwd")]
    for t in targets:
        target = {"fwd": 1.0, "fwd+bwd": 1.25}[t["mode"]]
        assert t["ratio"] > 0 and t["pairs"] >= 1 and t["target"] == target and t["met"] == (t["ratio"] <= target)
