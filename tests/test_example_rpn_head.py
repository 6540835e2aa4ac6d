"""examples/tinybig_rpn_head.py in its short mode: a tinyBIG-style RPN head trained with
tinybig_cuda.masking_reconciliation and with a replica of tinyBIG's reaches the same accuracy."""

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tinybig_rpn_head.py"


@pytest.fixture(scope="module")
def rpn_example():
    spec = importlib.util.spec_from_file_location("tinybig_rpn_head_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replica_is_tinybigs_masking_reconciliation(rpn_example):
    # The replica behaves as tinyBIG 0.2.1: torch.rand(n, D) < p, w.view(n, D) * mask, drawn at
    # the first call when fixed, at every call otherwise.
    fixed = rpn_example.TinybigMaskingReconciliation(p=0.3, fixed_mask=True)
    w = torch.randn(1, 12)
    torch.manual_seed(0)
    out = fixed(w=w, n=3, D=4, device="cpu")
    torch.manual_seed(0)
    assert torch.equal(out, w.view(3, 4) * (torch.rand(3, 4) < 0.3))
    assert torch.equal(fixed(w=w, n=3, D=4), out)
    fresh = rpn_example.TinybigMaskingReconciliation(p=0.5, fixed_mask=False)
    assert not torch.equal(fresh(w=torch.ones(1, 400), n=20, D=20), fresh(w=torch.ones(1, 400), n=20, D=20))


def test_taylor_expansion_dimension(rpn_example):
    x = torch.randn(2, 5)
    expanded = rpn_example.taylor_expansion(x)
    assert expanded.shape == (2, 5 + 25)
    assert torch.allclose(expanded[:, 5:].view(2, 5, 5), x[:, :, None] * x[:, None, :])


def test_short_training_run_reaches_matching_accuracy(rpn_example, capsys):
    threads = torch.get_num_threads()
    try:
        results = rpn_example.main(["--quick"])
    finally:
        torch.set_num_threads(threads)  # main() sets its own thread count
    table = capsys.readouterr().out
    assert "| fresh | tinybig_cuda" in table and "| fixed | tinyBIG replica" in table

    by_key = {(r["mask"], r["implementation"]): r for r in results}
    assert len(by_key) == 4
    for mask in ("fresh", "fixed"):
        ours, theirs = by_key[mask, "tinybig_cuda"], by_key[mask, "tinyBIG replica"]
        # Six classes: chance is 0.17. The masks differ (Philox versus MT19937), so the
        # accuracies agree statistically, not exactly.
        assert ours["accuracy"] > 0.8 and theirs["accuracy"] > 0.8
        assert abs(ours["accuracy"] - theirs["accuracy"]) < 0.06
        assert ours["epoch_s"] > 0 and theirs["epoch_s"] > 0
