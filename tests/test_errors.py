"""Every bad input raises an exception whose message names the argument, what was expected and what
came, and leaves every input (and the module's state) untouched."""

import re

import pytest
import torch

import tinybig_cuda

from conftest import BAD_W_DTYPES, CUDA_AVAILABLE, DEVICES, Snapshot, error_pattern, make_state

BAD_P = [-0.5, -1e-12, 1.5, 1.0000001, float("nan"), float("inf"), -float("inf")]
BAD_P_IDS = ["-0.5", "tiny_negative", "1.5", "just_above_1", "nan", "inf", "-inf"]


def _got_p(p):
    """The 'got' part for a bad p: its full repr (a message that rounds 1.0000001 to 1 would say
    'expected [0, 1], got 1', which contradicts itself)."""
    return re.escape(repr(p))


def _p_pattern(p):
    return error_pattern("p", r"\[0, 1\]", _got_p(p))


# ---------------------------------------------------------------- the functional ops


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", BAD_P, ids=BAD_P_IDS)
@pytest.mark.parametrize("shape", [(3, 5), (0, 5)], ids=["3x5", "empty"])
def test_op_rejects_bad_p(device, p, shape):
    w = torch.randn(shape, device=device)
    state = make_state(1, 2, device)
    snapshot = Snapshot(w, state)
    with pytest.raises(ValueError, match=_p_pattern(p)):
        tinybig_cuda.bernoulli_mask_apply(w, p, state)
    with pytest.raises(ValueError, match=_p_pattern(p)):
        tinybig_cuda.bernoulli_mask(shape, p, state)
    snapshot.assert_unchanged()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad_dtype", list(BAD_W_DTYPES), ids=[str(d).split(".")[-1] for d in BAD_W_DTYPES])
@pytest.mark.parametrize("shape", [(3, 5), (0,)], ids=["3x5", "empty"])
def test_op_rejects_non_float_w(device, bad_dtype, shape):
    w = torch.ones(shape, dtype=bad_dtype, device=device)
    state = make_state(1, 2, device)
    snapshot = Snapshot(w, state)
    c10_name, torch_name = BAD_W_DTYPES[bad_dtype]
    pattern = error_pattern("w", "float32", rf"\b({c10_name}|{torch_name})\b")
    with pytest.raises(TypeError, match=pattern):
        tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    snapshot.assert_unchanged()


def _bad_states(device):
    """(rng_state, exception type, expected regex, got regex) for states that are not int64 [2] on `device`."""
    cases = [
        (torch.tensor([1, 2], dtype=torch.int32, device=device), TypeError, "int64", r"\bInt\b|int32"),
        (torch.tensor([1.0, 2.0], dtype=torch.float64, device=device), TypeError, "int64", r"\bDouble\b|float64"),
        (torch.tensor([1, 2], dtype=torch.uint64, device=device), TypeError, "int64", r"UInt64|uint64"),
        (torch.tensor([1, 2, 3], dtype=torch.int64, device=device), ValueError, r"\[2\]|two", r"\[3\]"),
        (torch.tensor([1], dtype=torch.int64, device=device), ValueError, r"\[2\]|two", r"\[1\]"),
        (torch.tensor(1, dtype=torch.int64, device=device), ValueError, r"\[2\]|two", r"\[\]"),
        (torch.zeros(2, 2, dtype=torch.int64, device=device), ValueError, r"\[2\]|two", r"\[2, 2\]"),
    ]
    other_devices = ["meta"] + (["cpu"] if device != "cpu" else (["cuda"] if CUDA_AVAILABLE else []))
    for other in other_devices:
        cases.append((make_state(1, 2, other), (ValueError, RuntimeError), re.escape(str(torch.device(device))), other))
    return cases


def _state_ids():
    return ["int32", "float64", "uint64", "shape3", "shape1", "scalar", "shape2x2", "on_meta", "on_other_device"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(len(_state_ids())), ids=_state_ids())
@pytest.mark.parametrize("shape", [(3, 5), (0,)], ids=["3x5", "empty"])
def test_op_rejects_bad_rng_state(device, case, shape):
    cases = _bad_states(device)
    if case >= len(cases):
        pytest.skip("no second real device here")
    state, error, expected, got = cases[case]
    w = torch.randn(shape, device=device)
    snapshot = Snapshot(w, state if state.device.type != "meta" else None)
    with pytest.raises(error, match=error_pattern("rng_state", expected, got)):
        tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    snapshot.assert_unchanged()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(7), ids=_state_ids()[:7])
def test_bernoulli_mask_rejects_bad_rng_state(device, case):
    state, error, expected, got = _bad_states(device)[case]
    snapshot = Snapshot(state)
    with pytest.raises(error, match=error_pattern("rng_state", expected, got)):
        tinybig_cuda.bernoulli_mask((3, 5), 0.5, state)
    snapshot.assert_unchanged()


def test_op_rejects_rng_state_that_is_not_a_tensor():
    w = torch.randn(3)
    snapshot = Snapshot(w)
    # The dispatcher's own message: "Expected a value of type 'Tensor' for argument 'rng_state' but
    # instead found type 'list'".
    pattern = r"(?s)^(?=.*\brng_state\b)(?=.*[Ee]xpected.*Tensor)(?=.*(got|found).*list)"
    with pytest.raises((TypeError, RuntimeError), match=pattern):
        tinybig_cuda.bernoulli_mask_apply(w, 0.5, [1, 2])
    snapshot.assert_unchanged()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(-1, 3), (3, -2)])
def test_bernoulli_mask_rejects_negative_sizes(device, shape):
    state = make_state(1, 2, device)
    snapshot = Snapshot(state)
    with pytest.raises(ValueError, match=error_pattern("shape", "non-negative", re.escape(str(list(shape))))):
        tinybig_cuda.bernoulli_mask(shape, 0.5, state)
    snapshot.assert_unchanged()


@pytest.mark.parametrize("device", DEVICES)
def test_op_rejects_bad_element_offset(device):
    w = torch.randn(10, device=device)
    state = make_state(1, 2, device)
    snapshot = Snapshot(w, state)
    with pytest.raises(ValueError, match=error_pattern("element_offset", ">= 0", "-1")):
        tinybig_cuda.bernoulli_mask_apply(w, 0.5, state, element_offset=-1)
    with pytest.raises(ValueError, match=error_pattern("element_offset", r"2\*\*63", str(2**63 - 5))):
        tinybig_cuda.bernoulli_mask_apply(w, 0.5, state, element_offset=2**63 - 5)
    with pytest.raises(ValueError, match=error_pattern("element_offset", ">= 0", "-4")):
        tinybig_cuda.bernoulli_mask((2, 5), 0.5, state, element_offset=-4)
    snapshot.assert_unchanged()


# ---------------------------------------------------------------- the modules


@pytest.mark.parametrize("p", BAD_P + ["0.5", None, True], ids=BAD_P_IDS + ["str", "None", "bool"])
def test_module_rejects_bad_p_at_construction(p):
    with pytest.raises((ValueError, TypeError), match=error_pattern("p", r"\[0, 1\]", re.escape(repr(p)))):
        tinybig_cuda.masking_reconciliation(p=p)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fixed_mask", [True, False], ids=["fixed", "fresh"])
@pytest.mark.parametrize("p", [1.5, float("nan"), -0.25], ids=["1.5", "nan", "-0.25"])
def test_module_rejects_bad_p_when_set(device, fixed_mask, p):
    """A p set after construction is checked as it is set (so no call ever meets a bad one); the
    module keeps its p, its state and its mask."""
    module = tinybig_cuda.masking_reconciliation(p=0.5, fixed_mask=fixed_mask, device=device)
    w = torch.randn(1, 6, device=device)
    if not fixed_mask:
        module(w=w, n=2, D=3)  # a successful call, whose state must survive the refused p
    snapshot = Snapshot(w, module.rng_state)
    mask = module.generate_masking_matrix(2, 3, device=device)
    with pytest.raises(ValueError, match=_p_pattern(p)):
        module.p = p
    assert module.p == 0.5
    assert torch.equal(module.generate_masking_matrix(2, 3, device=device), mask)
    snapshot.assert_unchanged()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("w_shape", [(1, 5), (7,), (3, 2), (2, 2)], ids=["1x5", "7", "3x2", "2x2"])
def test_module_rejects_w_of_wrong_size(device, w_shape):
    module = tinybig_cuda.masking_reconciliation(p=0.5, device=device)
    w = torch.randn(w_shape, device=device)
    numel = w.numel()
    snapshot = Snapshot(w, module.rng_state)
    if numel == 6:  # (3, 2) has n*D elements: it is accepted and masked as a (2, 3) matrix
        assert module(w=w, n=2, D=3).shape == (2, 3)
    else:
        with pytest.raises(ValueError, match=error_pattern("w", r"\b6\b", rf"\b{numel}\b")):
            module(w=w, n=2, D=3, device=device)
    snapshot.assert_unchanged()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, D", [(-1, 3), (3, -1), (-2, -2)])
def test_module_rejects_negative_sizes(device, n, D):
    module = tinybig_cuda.masking_reconciliation(p=0.5, device=device)
    w = torch.randn(1, 6, device=device)
    snapshot = Snapshot(w, module.rng_state)
    argument, value = ("n", n) if n < 0 else ("D", D)
    pattern = error_pattern(argument, "non-negative", re.escape(str(value)))
    with pytest.raises(ValueError, match=pattern):
        module(w=w, n=n, D=D, device=device)
    with pytest.raises(ValueError, match=pattern):
        module.calculate_l(n, D)
    with pytest.raises(ValueError, match=pattern):
        module.generate_masking_matrix(n, D, device=device)
    snapshot.assert_unchanged()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fixed_mask", [True, False], ids=["fixed", "fresh"])
@pytest.mark.parametrize("bad_dtype", [torch.int64, torch.bool, torch.complex64], ids=["int64", "bool", "complex64"])
def test_module_rejects_non_float_w(device, fixed_mask, bad_dtype):
    module = tinybig_cuda.masking_reconciliation(p=0.5, fixed_mask=fixed_mask, device=device)
    w = torch.ones(1, 6, dtype=bad_dtype, device=device)
    c10_name, torch_name = BAD_W_DTYPES[bad_dtype]
    snapshot = Snapshot(w, module.rng_state)
    with pytest.raises(TypeError, match=error_pattern("w", "float32", rf"\b({c10_name}|{torch_name})\b")):
        module(w=w, n=2, D=3, device=device)
    snapshot.assert_unchanged()


@pytest.mark.parametrize("device", DEVICES)
def test_failed_call_keeps_the_last_calls_mask(device):
    """fixed_mask=False: generate_masking_matrix shows the mask of the last call that produced an
    output; a call that raised must not replace the module's rng_state."""
    module = tinybig_cuda.masking_reconciliation(p=0.5, fixed_mask=False, device=device)
    w = torch.randn(1, 64, device=device)
    out = module(w=w, n=8, D=8, device=device)
    mask = module.generate_masking_matrix(8, 8, device=device)
    assert torch.equal(out != 0, mask)
    with pytest.raises(TypeError):
        module(w=w.to(torch.int64), n=8, D=8, device=device)
    assert torch.equal(module.generate_masking_matrix(8, 8, device=device), mask)


def test_module_rejects_w_that_is_not_a_tensor():
    module = tinybig_cuda.masking_reconciliation(p=0.5)
    with pytest.raises(TypeError, match=error_pattern("w", "Tensor", "list")):
        module(w=[1.0] * 6, n=2, D=3)


@pytest.mark.parametrize("device", DEVICES)
def test_module_rejects_device_that_is_not_ws(device):
    other = "meta" if device == "cpu" else "cpu"
    module = tinybig_cuda.masking_reconciliation(p=0.5, device=device)
    w = torch.randn(1, 6, device=device)
    snapshot = Snapshot(w, module.rng_state)
    with pytest.raises(ValueError, match=error_pattern("device", re.escape(str(w.device)), other)):
        module(w=w, n=2, D=3, device=other)
    snapshot.assert_unchanged()
