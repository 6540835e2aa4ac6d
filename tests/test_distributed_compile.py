"""DTensors under torch.compile, with 2 gloo processes on this machine
(tests/distributed_compile_checks.py): a training step compiled with fullgraph=True (the aot_eager
backend: TorchDynamo and AOTAutograd trace the DTensor rules as for inductor) masks each
placement's shards, forward and backward, bit for bit as the eager op on the whole tensor in one
process, and TorchDynamo breaks no graph."""


import pytest
import torch.distributed as dist

from conftest import requires_compile, requires_dtensor, run_rank_checks

pytestmark = [
    requires_dtensor,
    requires_compile,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"),
    pytest.mark.slow,  # it starts gloo processes that compile
]

@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_rank_checks("distributed_compile_checks.py", tmp_path_factory.mktemp("distributed_compile"))


@pytest.mark.parametrize("placement", ["shard0", "shard1", "replicate"])
@pytest.mark.parametrize("what", ["op", "module"])
def test_compiled_step_on_a_dtensor_equals_the_unsharded_eager_step(results, what, placement):
    outcome = results[f"{what} {placement}"]
    assert "error" not in outcome, outcome.get("error")
    assert outcome["placed_like_w"] and outcome["forward"] and outcome["backward"], outcome
    assert outcome["graph_breaks"] == 0, outcome
