"""MaskedLinear scaled out, with 2 gloo processes on this machine (tests/dropconnect_distributed_checks.py):
ColwiseParallel and RowwiseParallel masks bit for bit those of one process, FSDP2 trains as one
process does, broadcast_rng_states covers MaskedLinear and dropconnect, and FSDP2's first forward
raises where the ranks' fixed masks differ, without waiting on ranks that run other modules."""


import pytest
import torch.distributed as dist

from conftest import requires_dtensor, run_rank_checks

pytestmark = [
    requires_dtensor,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"),
    pytest.mark.slow,  # it starts gloo processes
]

@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_rank_checks("dropconnect_distributed_checks.py", tmp_path_factory.mktemp("dropconnect_distributed"))


@pytest.mark.parametrize("name, keys", [
    ("colwise", ["forward_bits", "weight_grad"]),
    ("rowwise", ["forward_bits", "weight_grad"]),
    ("fsdp2", ["forward", "grads"]),
    ("broadcast_rng_states", ["differed_before", "count", "equal_to_rank_0_after"]),
    ("fsdp2_fixed_masks_agree", ["differing_states_raise", "no_longer_watched"]),
    ("pipeline_stages", ["stages_ran"]),
    ("fabricated_colwise", ["forward_bits", "local_output_bits", "whole_rows_per_rank", "submodule_replicated",
                            "parameter_grad"]),
])
def test_check(results, name, keys):
    outcome = results[name]
    assert "error" not in outcome, outcome.get("error")
    assert set(keys) <= set(outcome), outcome
    assert all(outcome.values()), outcome
