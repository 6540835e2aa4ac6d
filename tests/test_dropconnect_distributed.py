"""MaskedLinear scaled out, with 2 gloo processes on this machine (tests/dropconnect_distributed_checks.py):
ColwiseParallel and RowwiseParallel masks bit for bit those of one process, FSDP2 trains as one
process does, and broadcast_rng_states covers MaskedLinear and dropconnect."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from conftest import requires_dtensor

pytestmark = [
    requires_dtensor,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"),
    pytest.mark.slow,  # it starts gloo processes
]

CHECKS = Path(__file__).resolve().parent / "dropconnect_distributed_checks.py"
TIMEOUT_S = 240  # a launch takes seconds; the bound is for a hung rank on a busy machine


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dropconnect_distributed")
    run = subprocess.run([sys.executable, str(CHECKS), str(directory / "results.json"), "--timeout", str(TIMEOUT_S)],
                         cwd=directory, capture_output=True, text=True, timeout=TIMEOUT_S + 30)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return json.loads((directory / "results.json").read_text())


@pytest.mark.parametrize("name, keys", [
    ("colwise", ["forward_bits", "weight_grad"]),
    ("rowwise", ["forward_bits", "weight_grad"]),
    ("fsdp2", ["forward", "grads"]),
    ("broadcast_rng_states", ["differed_before", "count", "equal_to_rank_0_after"]),
])
def test_check(results, name, keys):
    outcome = results[name]
    assert "error" not in outcome, outcome.get("error")
    assert set(keys) <= set(outcome), outcome
    assert all(outcome.values()), outcome
