"""DTensors under torch.compile, with 2 gloo processes on this machine
(tests/distributed_compile_checks.py): a training step compiled with fullgraph=True (the aot_eager
backend: TorchDynamo and AOTAutograd trace the DTensor rules as for inductor) masks each
placement's shards, forward and backward, bit for bit as the eager op on the whole tensor in one
process, and TorchDynamo breaks no graph."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from conftest import requires_compile, requires_dtensor

pytestmark = [
    requires_dtensor,
    requires_compile,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"),
    pytest.mark.slow,  # it starts gloo processes that compile
]

CHECKS = Path(__file__).resolve().parent / "distributed_compile_checks.py"
TIMEOUT_S = 240  # a launch takes ~10 s here; the bound is for a hung rank on a busy machine


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("distributed_compile")
    run = subprocess.run([sys.executable, str(CHECKS), str(directory / "results.json"), "--timeout", str(TIMEOUT_S)],
                         cwd=directory, capture_output=True, text=True, timeout=TIMEOUT_S + 30)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return json.loads((directory / "results.json").read_text())


@pytest.mark.parametrize("placement", ["shard0", "shard1", "replicate"])
@pytest.mark.parametrize("what", ["op", "module"])
def test_compiled_step_on_a_dtensor_equals_the_unsharded_eager_step(results, what, placement):
    outcome = results[f"{what} {placement}"]
    assert "error" not in outcome, outcome.get("error")
    assert outcome["placed_like_w"] and outcome["forward"] and outcome["backward"], outcome
    assert outcome["graph_breaks"] == 0, outcome
