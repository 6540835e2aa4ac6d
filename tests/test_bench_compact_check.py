"""bench/bench_compact.py --check, run as a user runs it (a fresh interpreter, from outside the
repository): it measures only the targets, states each with its verdict, and exits with status 1
exactly when one is missed. It checks behaviour, never speed: at this size either status may come."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a benchmark run

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_compact.py"


def run_bench(tmp_path, *arguments):
    command = [sys.executable, str(BENCH), "--size", "64", "--p", "0.1", "0.5", "--repeats", "1",
               "--target-seconds", "0", "--device", "cpu", *arguments]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("cpu_isa", ["auto", "scalar"])
def test_check_states_each_target_and_fails_exactly_when_one_is_missed(tmp_path, cpu_isa):
    result = run_bench(tmp_path, "--check", "--cpu-isa", cpu_isa)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    verdicts = re.findall(r"^\| (0\.[15]) \| (fwd|fwd\+bwd) \| [0-9.]+× \| \d+ \| ≤ ([0-9.]+)× \| (met|not met) \|$",
                          result.stdout, re.MULTILINE)
    assert [(p, mode, target) for p, mode, target, _ in verdicts] == [
        ("0.1", "fwd", "1"), ("0.1", "fwd+bwd", "1.25"), ("0.5", "fwd", "1"), ("0.5", "fwd+bwd", "1.25")]
    missed = sum(verdict == "not met" for *_, verdict in verdicts)
    assert f"--check: {missed} target(s) missed" in result.stderr
    assert result.returncode == (1 if missed else 0)
    assert "| variant |" not in result.stdout  # the memory and time table is not measured
    path = "scalar" if cpu_isa == "scalar" else None
    assert re.search(rf"CPU path {path or '[a-z0-9]+'} of \[", result.stderr)


def test_without_check_a_missed_target_does_not_fail(tmp_path):
    result = run_bench(tmp_path, "--p", "0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 0.5 | compact |" in result.stdout
