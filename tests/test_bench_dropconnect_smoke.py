"""Smoke test of bench/bench_dropconnect.py: every case runs and reports sane numbers, and the
bytes kept for the backward are what each way keeps. It checks behaviour, never speed (the bench
prints its targets without failing them)."""

import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
SIZE = 64


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    sys.path.insert(0, str(BENCH_DIR))  # the bench imports its neighbours
    try:
        import bench_dropconnect

        path = tmp_path_factory.mktemp("bench") / "results.json"
        argv = ["--size", str(SIZE), "--batches", "1", "256", "--rounds", "2", "--warmup", "1", "--device", "cpu",
                "--lstm-hidden", "16", "--lstm-steps", "3", "--lstm-batch", "2", "--json", str(path)]
        return bench_dropconnect.main(argv), json.loads(path.read_text())
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_every_batch_and_mode_has_a_row_with_positive_times_and_ratios(results):
    returned, written = results
    assert written["linear"] == json.loads(json.dumps(returned["linear"]))
    assert [(row["batch"], row["mode"]) for row in returned["linear"]] == [(1, "fwd"), (1, "fwd+bwd"), (256, "fwd"), (256, "fwd+bwd")]
    for row in returned["linear"]:
        for key in ("ours_ms", "mask_then_linear_ms", "dropout_then_linear_ms", "mask_then_linear_over_ours", "dropout_then_linear_over_ours"):
            assert row[key] > 0, (key, row)
    assert [row["target"] for row in returned["linear"]] == [1.8, 1.8, 1.0, 1.0]


def test_only_ours_keeps_nothing_of_the_weight_for_the_backward(results):
    saved = {row["impl"]: row for row in results[0]["saved_for_backward"]}
    weight_bytes = SIZE * SIZE * 4
    assert saved["ours"]["saved_for_backward_bytes"] == 0
    assert saved["mask_then_linear"]["saved_for_backward_bytes"] >= weight_bytes
    assert saved["dropout_then_linear"]["saved_for_backward_bytes"] >= weight_bytes


def test_lstm_step_is_timed_and_ours_keeps_less(results):
    lstm = results[0]["lstm"]
    assert lstm["ours_ms"] > 0 and lstm["dropout_on_weight_ms"] > 0 and lstm["dropout_on_weight_over_ours"] > 0
    # F.dropout keeps its mask (or a second masked weight) for the backward; ours only the state.
    assert lstm["ours_saved_bytes"] < lstm["dropout_on_weight_saved_bytes"]
