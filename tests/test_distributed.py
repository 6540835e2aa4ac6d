"""Scale-out with 2 gloo processes on this machine: DTensor shards masked as parts of the whole
tensor (forward and backward, bit for bit against one process), one mask state on every rank
(FSDP2's meta-device init, broadcast_rng_states), and the two examples. Each process run is
bounded by a timeout; tests/distributed_checks.py runs all DTensor checks in one launch.
"""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import tinybig_cuda

from conftest import RANKS_TIMEOUT_S, requires_dtensor, run_bounded, run_rank_checks

pytestmark = [
    requires_dtensor,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"),
    pytest.mark.slow,  # each test starts gloo processes
]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_rank_checks("distributed_checks.py", tmp_path_factory.mktemp("distributed"))


def assert_check(results, name, *expected_keys):
    outcome = results[name]
    assert "error" not in outcome, outcome.get("error")
    assert set(expected_keys) <= set(outcome), outcome
    assert all(outcome.values()), outcome


PLACEMENTS = ["shard0", "shard1", "replicate"]
VARIANTS = [f"{dtype} {state} state" for dtype in ("float32", "bfloat16") for state in ("plain", "dtensor")]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_dtensor_apply_equals_the_unsharded_op(results, placement, variant):
    # 7 x 5 on 2 ranks: uneven shards (4 + 3 rows, 3 + 2 columns).
    assert_check(results, f"apply {placement} 7x5 {variant}", "placed_like_w", "forward", "backward")


@pytest.mark.parametrize("variant", VARIANTS)
def test_dtensor_apply_of_a_partial_tensor_equals_the_unsharded_op(results, variant):
    assert_check(results, f"apply partial 7x5 {variant}", "placed_like_w", "forward")


@pytest.mark.parametrize("name", ["apply shard1 3-D 3x7x5", "apply shard1 1030x1031"])
def test_dtensor_column_shards_of_larger_tensors(results, name):
    assert_check(results, name, "forward", "backward")


def test_dtensor_on_two_dimensional_meshes(results):
    names = [name for name in results if name.startswith("apply mesh")]
    assert len(names) == 8
    for name in names:
        assert_check(results, name, "placed_like_w", "forward", "backward")


@pytest.mark.parametrize("placement", ["shard0", "shard1"])
def test_dtensor_mask_equals_the_unsharded_mask(results, placement):
    assert_check(results, f"mask {placement} 7x5", "placed", "mask", "mask_of_replicated_state")


@pytest.mark.parametrize("placement", ["shard0", "shard1"])
def test_module_on_a_dtensor_weight(results, placement):
    assert_check(results, f"module {placement} 7x5", "forward", "backward")


def test_fresh_mask_module_on_a_dtensor_weight_with_ranks_seeded_alike(results):
    assert_check(results, "fresh-mask module shard1 7x5", "forward")


def test_broadcast_rng_states_gives_every_rank_rank_0s_states(results):
    assert_check(results, "broadcast_rng_states", "differed_before", "count", "equal_to_rank_0_after")


def test_broadcast_rng_states_keeps_every_state_exact(results):
    assert_check(results, "broadcast_rng_states exact", "exact")


@pytest.mark.parametrize("bad_state, error", [(torch.tensor([1.0, 2.0]), TypeError), (torch.tensor([1, 2, 3]), ValueError)], ids=["float32", "shape [3]"])
def test_broadcast_rng_states_refuses_a_state_that_is_not_int64_2(bad_state, error):
    """Stacked with int64 states, a float state would turn them all into floats (an int64 above
    2**53 would change): refused on every rank before any communication, so no process group is
    needed to see it."""
    from tinybig_cuda.distributed import broadcast_rng_states

    model = torch.nn.Sequential(tinybig_cuda.masking_reconciliation(), tinybig_cuda.masking_reconciliation())
    model[1].rng_state = bad_state
    with pytest.raises(error, match=r"broadcast_rng_states: expected 1\.rng_state to (be an int64 tensor|have shape \[2\])"):
        broadcast_rng_states(model)


def test_what_the_dtensor_rules_do_not_support_is_refused_by_name(results):
    assert_check(results, "refusals", "shard_past_the_last_dimension", "negative_shard_dimension", "compress_parameters", "dtensor_p")


@pytest.mark.parametrize("placement", ["shard1", "replicate"])
def test_compact_module_on_dtensor_values_equals_one_process(results, placement):
    assert_check(results, f"compact module {placement}", "replicated", "matrix_bits", "values_grad_bits")


def test_meta_device_init_then_reset_parameters_agrees_across_ranks(results):
    assert_check(results, "meta init + reset_parameters", "meta_buffer", "ranks_agree", "same_as_construction")


@pytest.mark.parametrize("example", ["fsdp2_training.py", "tensor_parallel_masking.py", "fsdp_tp_resume.py"])
def test_example_matches_one_process(example, tmp_path):
    output = run_bounded([EXAMPLES / example, "--timeout", RANKS_TIMEOUT_S], cwd=tmp_path)
    assert output.rstrip().endswith("OK"), output
