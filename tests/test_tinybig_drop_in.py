"""tinybig_cuda as a drop-in for tinyBIG 0.2.1's masking_reconciliation: its API (to_config,
mask_matrix, generate_masking_matrix, checkpoints without a mask, no device work at construction),
and, where tinyBIG is installed, inside tinyBIG itself: its config mechanism, its rpn_head, its
checkpoints and patch_tinybig()."""

import importlib
import io
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import tinybig_cuda
from tinybig_cuda import bernoulli_mask, bernoulli_mask_apply, masking_reconciliation

from conftest import assert_bitwise_equal, error_pattern, random_values, requires_compile

OURS = "tinybig_cuda.masking_reconciliation"
THEIRS = "tinybig.reconciliation.masking_reconciliation"


def instantiate(config):
    """What tinyBIG's config.instantiation_from_configs does with a function config."""
    module_name, class_name = config["function_class"].rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)(**config["function_parameters"])


# ---- tinyBIG's API, without tinyBIG ------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{}, {"p": 0.25, "fixed_mask": False, "name": "m", "device": "mps"}, {"p": 0.1, "compact": True}])
def test_to_config_builds_an_equal_module(kwargs):
    module = masking_reconciliation(**kwargs)
    config = module.to_config()
    assert set(config) == {"function_class", "function_parameters"}
    rebuilt = instantiate(config)
    assert type(rebuilt) is masking_reconciliation
    assert rebuilt.to_config() == config
    assert (rebuilt.p, rebuilt.fixed_mask, rebuilt.compact, rebuilt.device) == (module.p, module.fixed_mask, module.compact, module.device)


@pytest.mark.parametrize("fixed_mask", [True, False], ids=["fixed", "fresh"])
def test_mask_matrix_is_the_mask_of_the_last_call(fixed_mask):
    module = masking_reconciliation(p=0.5, fixed_mask=fixed_mask)
    assert module.mask_matrix is None  # as tinyBIG's, before the first call
    for n, D in [(6, 12), (10, 25)]:
        w = random_values((1, n * D), torch.float32)
        out = module(w=w, n=n, D=D, device="cpu")
        mask = module.mask_matrix
        assert mask.shape == (n, D) and mask.dtype == torch.bool
        assert torch.equal(out, torch.where(mask, w.view(n, D), 0.0))
        assert torch.equal(mask, bernoulli_mask((n, D), 0.5, module.rng_state))


def test_generate_masking_matrix_sets_and_returns_mask_matrix():
    module = masking_reconciliation(p=0.3)
    mask = module.generate_masking_matrix(7, 9)
    assert torch.equal(mask, module.mask_matrix)
    assert torch.equal(mask, bernoulli_mask((7, 9), 0.3, module.rng_state))
    assert mask.shape == (7, 9)


def test_mask_matrix_cannot_be_set():
    module = masking_reconciliation()
    with pytest.raises(AttributeError, match="mask_matrix is made from rng_state"):
        module.mask_matrix = torch.ones(2, 2, dtype=torch.bool)


def test_nothing_of_the_mask_is_stored():
    module = masking_reconciliation(p=0.5)
    module(w=torch.ones(1, 64 * 64), n=64, D=64)
    assert module.mask_matrix.shape == (64, 64)
    tensors = [v for v in vars(module).values() if isinstance(v, torch.Tensor)] + list(module.buffers())
    assert sum(t.numel() * t.element_size() for t in tensors) == 16


def test_construction_touches_no_device():
    """tinyBIG's example configs say device: mps; construction must work on a machine without it."""
    module = masking_reconciliation(p=0.5, device="mps")
    assert module.device == "mps" and module.rng_state.device.type == "cpu"
    w = random_values((1, 12), torch.float32)
    assert torch.equal(module(w=w, n=3, D=4, device="cpu"), bernoulli_mask_apply(w.view(3, 4), 0.5, module.rng_state))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_state_moves_to_ws_device_at_the_first_call():
    """The state is made on the CPU and follows w, for good, at the first call on its device (but
    not to the meta device: tests/test_modules.py, a meta call leaves the state alone)."""
    module = masking_reconciliation(p=0.5, device="cuda")
    assert module.rng_state.device.type == "cpu"
    out = module(w=torch.empty(1, 12, device="cuda"), n=3, D=4, device="cuda")
    assert out.shape == (3, 4) and out.device.type == "cuda"
    assert module.rng_state.device.type == "cuda"


def test_checkpoint_without_rng_state_loads_strictly_and_keeps_the_mask():
    module = masking_reconciliation(p=0.5)
    state = module.rng_state.clone()
    with pytest.warns(UserWarning, match=r"no 'rng_state' \(tinyBIG saves no mask\)") as caught:
        result = module.load_state_dict({}, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(module.rng_state, state)
    # The warning points at the line that loaded the checkpoint, not into torch.
    assert caught[0].filename == __file__


def test_checkpoint_warning_points_at_the_caller_through_nested_modules():
    model = torch.nn.Sequential(torch.nn.ModuleDict({"fabrication": masking_reconciliation(p=0.5)}))
    with pytest.warns(UserWarning, match=r"0\.fabrication\.rng_state") as caught:
        model.load_state_dict({}, strict=True)
    assert caught[0].filename == __file__


def test_mask_matrix_changes_only_when_a_call_succeeds():
    module = masking_reconciliation(p=0.5)
    module(w=torch.randn(1, 12), n=3, D=4)
    with pytest.raises(TypeError, match="w"):
        module(w=torch.ones(1, 10, dtype=torch.int64), n=2, D=5)
    with pytest.raises(ValueError, match="w"):
        module(w=torch.randn(1, 11), n=2, D=5)
    assert module.mask_matrix.shape == (3, 4)


@pytest.mark.parametrize(
    "loaded",
    [torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.0]), torch.tensor([1, 2], dtype=torch.int32),
     torch.tensor([True, False]), torch.tensor([1, 2, 3]), torch.tensor([[1, 2]])],
    ids=["float64", "float32", "int32", "bool", "three", "2d"],
)
def test_checkpoint_rng_state_of_another_dtype_or_shape_is_refused(loaded):
    module = masking_reconciliation(p=0.5)
    state = module.rng_state.clone()
    with pytest.raises(RuntimeError, match=error_pattern("rng_state", "int64", str(loaded.dtype).split(".")[1])):
        module.load_state_dict({"rng_state": loaded})
    assert torch.equal(module.rng_state, state) and module.rng_state.dtype == torch.int64


def test_p_is_checked_when_set():
    module = masking_reconciliation(p=0.5)
    for bad, error in ((1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError), (True, TypeError), ("0.5", TypeError)):
        with pytest.raises(error, match="expected p"):
            module.p = bad
    assert module.p == 0.5
    module.p = 1
    assert module.p == 1.0 and isinstance(module.p, float)


def test_eager_call_and_checked_call_agree():
    """A numpy integer for n sends the call through the fully checked Python path."""
    numpy = pytest.importorskip("numpy")
    module = masking_reconciliation(p=0.5)
    w = random_values((1, 6 * 12), torch.float32).requires_grad_()
    fast = module(w=w, n=6, D=12, device="cpu")
    checked = module(w=w, n=numpy.int64(6), D=12, device="cpu")
    assert_bitwise_equal(fast, checked)
    (fast_grad,) = torch.autograd.grad(fast.sum(), w)
    (checked_grad,) = torch.autograd.grad(checked.sum(), w)
    assert_bitwise_equal(fast_grad, checked_grad)
    assert fast_grad.shape == w.shape


def test_eager_call_refuses_what_the_op_refuses():
    module = masking_reconciliation(p=0.5)
    with pytest.raises(TypeError, match="expected w to be float32"):
        module(w=torch.ones(1, 4, dtype=torch.int32), n=2, D=2)
    with pytest.raises(ValueError, match="expected device to be w's device"):
        module(w=torch.ones(1, 4), n=2, D=2, device="meta")
    module.rng_state = torch.tensor([1, 2], dtype=torch.int32)
    with pytest.raises(TypeError, match=error_pattern("rng_state", "int64", "Int")):
        module(w=torch.ones(1, 4), n=2, D=2)


def test_reset_parameters_redraws_from_torch_default_generator():
    module = masking_reconciliation(p=0.5)
    torch.manual_seed(3)
    module.reset_parameters()
    first = module.rng_state.clone()
    torch.manual_seed(3)
    module.reset_parameters()
    assert torch.equal(first, module.rng_state)
    module.reset_parameters()
    assert not torch.equal(first, module.rng_state)


def test_sum_backward_gradient_is_the_mask():
    """.sum() hands the backward a stride-0 gradient (one value expanded)."""
    module = masking_reconciliation(p=0.5)
    w = random_values((1, 40 * 70), torch.float32).requires_grad_()
    module(w=w, n=40, D=70).sum().backward()
    assert torch.equal(w.grad, module.mask_matrix.reshape(1, -1).float())


# ---- inside the real tinyBIG -------------------------------------------------------------------

def make_head(fabrication_class=OURS, channel_num=1, m=4, remainder=True, **fabrication_parameters):
    from tinybig.head import rpn_head

    return rpn_head(
        m=m, n=3, channel_num=channel_num,
        data_transformation_configs={"function_class": "tinybig.expansion.taylor_expansion", "function_parameters": {"d": 2}},
        parameter_fabrication_configs={"function_class": fabrication_class, "function_parameters": {"p": 0.5, **fabrication_parameters}},
        remainder_configs={"function_class": "tinybig.remainder.zero_remainder"} if remainder else None,
        device="cpu",
    )


def test_rpn_head_from_config_trains(tinybig):
    torch.manual_seed(0)
    head = make_head(channel_num=2)
    assert type(head.parameter_fabrication) is masking_reconciliation
    x = torch.randn(128, 4)
    target = torch.stack([x[:, 0] * x[:, 1], x[:, 2] ** 2, x[:, 3] - x[:, 0]], dim=1)
    w_before = head.w.detach().clone()
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = F.mse_loss(head(x, device="cpu"), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    # One fixed mask serves every channel and step: a dropped entry's gradient is always zero, so
    # Adam never moves it, and every kept entry has moved.
    D = head.w.shape[1] // 3
    kept = head.parameter_fabrication.generate_masking_matrix(3, D).reshape(-1)
    moved = head.w.detach() != w_before
    assert not moved[:, ~kept].any() and moved[:, kept].all()


def test_head_to_config_round_trip(tinybig):
    head = make_head(m=3, remainder=False, fixed_mask=False)
    config = head.to_config()  # tinyBIG calls to_config() on its fabrication
    fabrication_config = config["head_parameters"]["parameter_fabrication_configs"]
    rebuilt = tinybig.config.config.instantiation_from_configs(config, class_name="head_class", parameter_name="head_parameters")
    again = rebuilt.parameter_fabrication.to_config()
    assert type(rebuilt.parameter_fabrication) is masking_reconciliation
    assert (again["function_class"], again["function_parameters"]) == (fabrication_config["function_class"], fabrication_config["function_parameters"])
    assert rebuilt.parameter_fabrication.fixed_mask is False and rebuilt.l == head.l


def test_mask_matrix_is_the_mask_the_head_used(tinybig):
    head = make_head()
    fabrication = head.parameter_fabrication
    D = head.w.shape[1] // 3
    phi_w = head.calculate_phi_w(D=D, channel_index=0, device="cpu")
    assert torch.equal(phi_w, torch.where(fabrication.mask_matrix, head.w[0].detach().view(3, D), 0.0))


def test_tinybig_checkpoint_loads_strictly(tinybig):
    theirs = make_head(THEIRS)
    ours = make_head()
    state = ours.parameter_fabrication.rng_state.clone()
    with pytest.warns(UserWarning, match="parameter_fabrication.rng_state"):
        ours.load_state_dict(theirs.state_dict(), strict=True)
    assert torch.equal(ours.w, theirs.w)
    assert torch.equal(ours.parameter_fabrication.rng_state, state)
    # The reverse direction: tinyBIG has no rng_state to load it into.
    with pytest.raises(RuntimeError, match="Unexpected key.*rng_state"):
        theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=False)


def test_outputs_equal_the_same_model_with_the_op_by_hand(tinybig):
    from tinybig.module.base_fabrication import fabrication as tinybig_fabrication

    class masked_by_hand(tinybig_fabrication):
        def __init__(self, p, rng_state, **kwargs):
            super().__init__(**kwargs)
            self.p, self.state = p, rng_state

        def calculate_l(self, n, D):
            return n * D

        def forward(self, n, D, w, device="cpu", *args, **kwargs):
            return bernoulli_mask_apply(w.view(n, D), self.p, self.state)

    torch.manual_seed(1)
    ours = make_head(channel_num=2)
    by_hand = make_head(channel_num=2)
    by_hand.parameter_fabrication = masked_by_hand(0.5, ours.parameter_fabrication.rng_state.clone())
    by_hand.load_state_dict(ours.state_dict(), strict=False)
    x = torch.randn(16, 4)
    out_ours, out_by_hand = ours(x, device="cpu"), by_hand(x, device="cpu")
    assert_bitwise_equal(out_ours, out_by_hand)
    out_ours.square().sum().backward()
    out_by_hand.square().sum().backward()
    assert_bitwise_equal(ours.w.grad, by_hand.w.grad)


def test_patch_tinybig_makes_tinybig_build_ours(tinybig, monkeypatch):
    from tinybig.reconciliation import basic_reconciliation

    for module in (tinybig.reconciliation, basic_reconciliation):  # restored after the test
        monkeypatch.setattr(module, "masking_reconciliation", module.masking_reconciliation)
    tinybig_cuda.patch_tinybig()
    tinybig_cuda.patch_tinybig()  # twice is harmless
    assert tinybig.reconciliation.masking_reconciliation is masking_reconciliation
    assert basic_reconciliation.masking_reconciliation is masking_reconciliation
    for path in (THEIRS, "tinybig.reconciliation.basic_reconciliation.masking_reconciliation"):
        head = make_head(path)
        assert type(head.parameter_fabrication) is masking_reconciliation
        head(torch.randn(5, 4), device="cpu").sum().backward()


@requires_compile
def test_compiled_autograd_gives_eager_gradients():
    """Compiled autograd traces the backward: the op's and the module's must both be traceable."""
    state = torch.tensor([1, 2])
    module = masking_reconciliation(p=0.5)
    w = random_values((6, 12), torch.float32).requires_grad_()

    def gradients():
        (op_grad,) = torch.autograd.grad(bernoulli_mask_apply(w, 0.5, state).square().sum(), w)
        (module_grad,) = torch.autograd.grad(module(w=w, n=6, D=12).square().sum(), w)
        return op_grad, module_grad

    eager = gradients()
    compiled_autograd = torch._dynamo.compiled_autograd
    enable = getattr(compiled_autograd, "_enable", None) or compiled_autograd.enable  # named enable up to 2.5
    with enable(torch.compile(backend="eager")):
        compiled = gradients()
    for actual, expected in zip(compiled, eager):
        assert_bitwise_equal(actual, expected)


def test_module_call_after_a_torch_func_transform():
    """A finished transform leaves functorch's thread state behind; calls after it still work
    (and may take the fast path again), inside one they go through the op's functorch keys."""
    module = masking_reconciliation(p=0.5)
    w = random_values((1, 72), torch.float32)
    torch.func.vmap(torch.sin)(torch.ones(3, 2))
    expected = bernoulli_mask_apply(w.view(6, 12), 0.5, module.rng_state)
    assert_bitwise_equal(module(w=w, n=6, D=12), expected)
    batched = torch.func.vmap(lambda row: module(w=row, n=6, D=12))(w.expand(3, 72))
    assert_bitwise_equal(batched, expected.expand(3, 6, 12).contiguous())


def test_import_tinybig_and_patch_in_a_fresh_process(tinybig, tmp_path):
    # As a user runs it: a fresh interpreter outside the repository, nothing imported but
    # tinybig_cuda. On a torch too new for tinyBIG's data loaders, tinyBIG comes without them and
    # says so; in tinyBIG's own environment it is whole and says nothing.
    script = (
        "import warnings, tinybig_cuda\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    tinybig_cuda.patch_tinybig()\n"
        "import tinybig\n"
        "assert tinybig.reconciliation.masking_reconciliation is tinybig_cuda.masking_reconciliation\n"
        "print(hasattr(tinybig.data, 'dataloader'), sum('data loaders' in str(w.message) for w in caught))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    whole, warned = result.stdout.split()
    assert (whole, warned) in {("True", "0"), ("False", "1")}
    if os.environ.get("TINYBIG_EXPECT_TINYBIG") == "whole":
        assert whole == "True"


def _patched(tinybig, monkeypatch):
    from tinybig.reconciliation import basic_reconciliation

    for module in (tinybig.reconciliation, basic_reconciliation):  # restored after the test
        monkeypatch.setattr(module, "masking_reconciliation", module.masking_reconciliation)
    tinybig_cuda.patch_tinybig()


def _pickled(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return buffer


def test_a_model_pickled_by_tinybig_keeps_its_fixed_mask_after_patch_tinybig(tinybig, monkeypatch):
    """torch.save(model) pickles tinyBIG's class by name, which patch_tinybig() makes ours. Its
    fixed mask came from torch.rand, which no rng_state reproduces: the module keeps and applies it,
    so the loaded model computes what the saved one did, and trains."""
    torch.manual_seed(2)
    theirs = make_head(THEIRS, channel_num=2)
    x = torch.randn(16, 4)
    expected = theirs(x, device="cpu").detach()
    mask = theirs.parameter_fabrication.mask_matrix.clone()
    pickled = _pickled(theirs).getvalue()
    _patched(tinybig, monkeypatch)
    head = torch.load(io.BytesIO(pickled), weights_only=False)
    fabrication = head.parameter_fabrication
    assert isinstance(fabrication, masking_reconciliation) and "pickled tinyBIG mask" in repr(fabrication)
    assert torch.equal(fabrication.mask_matrix, mask) and torch.equal(fabrication.generate_masking_matrix(3, mask.shape[1]), mask)
    out = head(x, device="cpu")
    assert torch.equal(out, expected)
    out.square().sum().backward()
    assert not head.w.grad[:, ~mask.reshape(-1)].any() and head.w.grad[:, mask.reshape(-1)].any()
    # Saved again (whole, or its state_dict into another such module), the mask is still there.
    again = torch.load(_pickled(head), weights_only=False)
    assert torch.equal(again(x, device="cpu"), out)
    other = torch.load(io.BytesIO(pickled), weights_only=False)
    other.parameter_fabrication.tinybig_mask.zero_()
    other.load_state_dict(head.state_dict())
    assert torch.equal(other.parameter_fabrication.mask_matrix, mask)
    with pytest.raises(ValueError, match=error_pattern("n, D", re.escape(str(tuple(mask.shape))), re.escape("(2, 5)"))):
        fabrication(w=torch.ones(10), n=2, D=5)
    with pytest.raises(NotImplementedError, match="compress_parameters.*pickled tinyBIG mask.*reset_parameters"):
        fabrication.compress_parameters(head.w, 3, mask.shape[1])
    # reset_parameters() draws a Philox mask: a plain module from then on.
    fabrication.reset_parameters()
    assert type(fabrication) is masking_reconciliation and "tinybig_mask" not in fabrication.state_dict()
    head(x, device="cpu")
    assert torch.equal(fabrication.mask_matrix, bernoulli_mask(mask.shape, 0.5, fabrication.rng_state))


@pytest.mark.parametrize("fixed_mask, called", [(True, False), (False, True)], ids=["fixed, never called", "fresh"])
def test_a_model_pickled_by_tinybig_without_a_fixed_mask_loads_as_ours(tinybig, monkeypatch, fixed_mask, called):
    # No mask to keep: tinyBIG would draw one at the next call, and so does this module (from rng_state).
    theirs = make_head(THEIRS, fixed_mask=fixed_mask)
    x = torch.randn(8, 4)
    if called:
        theirs(x, device="cpu")
    buffer = _pickled(theirs)
    _patched(tinybig, monkeypatch)
    head = torch.load(buffer, weights_only=False)
    fabrication = head.parameter_fabrication
    assert type(fabrication) is masking_reconciliation and fabrication.fixed_mask is fixed_mask and fabrication.p == 0.5
    assert ("rng_state" in fabrication.state_dict()) is fixed_mask
    out = head(x, device="cpu")
    out.sum().backward()
    assert torch.equal(head.w.grad[0].view(3, -1) != 0, fabrication.mask_matrix & (head.w.grad[0].view(3, -1) != 0))
    assert torch.equal(torch.load(_pickled(head), weights_only=False).parameter_fabrication.rng_state, fabrication.rng_state)
