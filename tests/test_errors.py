"""Every bad input raises an exception whose message names the argument, what was expected and what
came, and leaves every input (and the module's state) untouched."""

import re
import warnings

import pytest
import torch

import tinybig_cuda

from conftest import BAD_W_DTYPES, CUDA_AVAILABLE, DEVICES, Snapshot, compact_state, error_pattern, make_state, reference_kept_count

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
        # torch 2.2 has no uint64: its widest unsigned dtype is uint8
        (torch.tensor([1, 2], dtype=getattr(torch, "uint64", torch.uint8), device=device), TypeError, "int64", r"(UInt64|uint64|Byte|uint8)"),
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
    return ["int32", "float64", "unsigned", "shape3", "shape1", "scalar", "shape2x2", "on_meta", "on_other_device"]


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


@pytest.mark.parametrize("bad", [[1, 2], 7, (1, 2), None], ids=["list", "int", "tuple", "None"])
def test_every_entry_point_names_an_rng_state_that_is_not_a_tensor(bad):
    """Not the dispatcher's "Unable to cast [1, 2] to Tensor": a TypeError that names rng_state."""
    w = torch.randn(3)
    snapshot = Snapshot(w)
    calls = _functional_calls(bad)
    calls["count_kept"] = lambda: tinybig_cuda.count_kept(12, 0.5, bad)
    for op, call in calls.items():
        name = "bernoulli_mask_count" if op == "count_kept" else op
        expected = f"tinybig_cuda.{name}: expected rng_state to be an int64 tensor [seed, offset], but got {type(bad).__name__}"
        with pytest.raises(TypeError, match=f"^{re.escape(expected)}$"):
            call()
    with pytest.raises(TypeError, match=error_pattern("rng_state", "int64 tensor", "list")):
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


# ---------------------------------------------------------------- the compact ops (count, expand, compress)


@pytest.mark.parametrize("device", DEVICES)
def test_values_of_the_wrong_length_are_refused(device):
    state, shape = compact_state(device), (20, 30)
    kept = reference_kept_count(shape, 0.5, state)
    for wrong in (kept - 1, kept + 1, 0, 600):
        values = torch.randn(wrong, device=device)
        snapshot = Snapshot(values, state)
        with pytest.raises(ValueError, match=error_pattern("values", rf"\b{kept}\b", rf"\b{wrong}\b")):
            tinybig_cuda.bernoulli_mask_expand(values, 0.5, state, shape)
        snapshot.assert_unchanged()
        full = torch.randn(shape, device=device)
        with pytest.raises(ValueError, match=error_pattern("kept_count", rf"\b{kept}\b", rf"\b{wrong}\b")):
            tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, wrong)


@pytest.mark.parametrize("device", DEVICES)
def test_compact_ops_refuse_bad_arguments_with_named_messages(device):
    state = compact_state(device)
    values, full = torch.randn(5, device=device), torch.randn(3, 4, device=device)
    with pytest.raises(ValueError, match=error_pattern("values", "1-D", r"\[5, 1\]")):
        tinybig_cuda.bernoulli_mask_expand(values.view(5, 1), 0.5, state, (3, 4))
    with pytest.raises(TypeError, match=error_pattern("values", "float32", r"\b(Long|int64)\b")):
        tinybig_cuda.bernoulli_mask_expand(values.long(), 0.5, state, (3, 4))
    with pytest.raises(TypeError, match=error_pattern("full", "float32", r"\b(Int|int32)\b")):
        tinybig_cuda.bernoulli_mask_compress(full.int(), 0.5, state, 5)
    with pytest.raises(ValueError, match=error_pattern("kept_count", ">= 0", "-1")):
        tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, -1)
    with pytest.raises(ValueError, match=error_pattern("numel", ">= 0", "-3")):
        tinybig_cuda.bernoulli_mask_count(-3, 0.5, state)
    with pytest.raises(ValueError, match=error_pattern("shape", "non-negative", re.escape("[3, -4]"))):
        tinybig_cuda.bernoulli_mask_expand(values, 0.5, state, (3, -4))
    for call in (
        lambda p: tinybig_cuda.bernoulli_mask_count(12, p, state),
        lambda p: tinybig_cuda.bernoulli_mask_expand(values, p, state, (3, 4)),
        lambda p: tinybig_cuda.bernoulli_mask_compress(full, p, state, 5),
    ):
        with pytest.raises(ValueError, match=error_pattern("p", r"\[0, 1\]", re.escape("1.0000001"))):
            call(1.0000001)
    with pytest.raises(ValueError, match=error_pattern("element_offset", ">= 0", "-2")):
        tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, 5, element_offset=-2)
    with pytest.raises(ValueError, match=error_pattern("rng_state", re.escape(str(torch.device(device))), "meta")):
        tinybig_cuda.bernoulli_mask_expand(values, 0.5, state.to("meta"), (3, 4))


def test_impossible_counts_are_refused_at_once_naming_numel():
    state = compact_state()
    for numel in (2**62, 2**63 - 1):
        with pytest.raises(ValueError, match=error_pattern("numel", re.escape("2**62 - 1"), str(numel))):
            tinybig_cuda.bernoulli_mask_count(numel, 0.5, state)
    with pytest.raises(ValueError, match=error_pattern("shape", re.escape("2**62 - 1"), str(2**31))):
        tinybig_cuda.bernoulli_mask_expand(torch.zeros(3), 0.5, state, (2**31, 2**31))
    module = tinybig_cuda.masking_reconciliation(p=0.5, compact=True)
    with pytest.raises(ValueError, match=error_pattern("n", re.escape("2**62 - 1"), f"n={2**62}, D=4")):
        module.calculate_l(2**62, 4)


def test_counts_that_cannot_match_are_refused_before_the_mask_is_counted():
    state = compact_state()
    # More values than the matrix has entries, or a kept_count beyond them: no count needed.
    with pytest.raises(ValueError, match=error_pattern("values", "at most 3", "10")):
        tinybig_cuda.bernoulli_mask_expand(torch.zeros(10), 0.5, state, (3,))
    with pytest.raises(ValueError, match=error_pattern("kept_count", "<= 12", "13")):
        tinybig_cuda.bernoulli_mask_compress(torch.zeros(3, 4), 0.5, state, 13)
    # A large mask: counting stops once the partial count rules the claimed count out.
    numel = 2**30  # 2 GiB of float16 output, allocated (not touched) before counting
    with pytest.raises(ValueError, match=error_pattern("values", "at least", r"\b3\b")) as refused:
        tinybig_cuda.bernoulli_mask_expand(torch.zeros(3, dtype=torch.float16), 0.5, state, (numel,))
    assert "counting stopped" in str(refused.value)
    full = torch.zeros(2**25, dtype=torch.float16)
    with pytest.raises(ValueError, match=error_pattern("kept_count", "at most", str(2**25 - 1))):
        tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, 2**25 - 1)
    # And a right count still works after a refused one (nothing half-counted is remembered).
    kept = tinybig_cuda.count_kept(2**25, 0.5, state)
    assert tinybig_cuda.bernoulli_mask_compress(full, 0.5, state, kept).shape == (kept,)


# ---------------------------------------------------------------- one argument policy


def _functional_calls(state):
    """Every functional entry point, as f(p=..., element_offset=...)."""
    w = torch.randn(12)
    return {
        "bernoulli_mask_apply": lambda p=0.5, element_offset=0: tinybig_cuda.bernoulli_mask_apply(w, p, state, element_offset),
        "bernoulli_mask": lambda p=0.5, element_offset=0: tinybig_cuda.bernoulli_mask((3, 4), p, state, element_offset),
        "bernoulli_mask_count": lambda p=0.5, element_offset=0: tinybig_cuda.bernoulli_mask_count(12, p, state, element_offset),
        "bernoulli_mask_expand": lambda p=0.5, element_offset=0: tinybig_cuda.bernoulli_mask_expand(torch.randn(0), p, state, (0,), element_offset),
        "bernoulli_mask_compress": lambda p=0.5, element_offset=0: tinybig_cuda.bernoulli_mask_compress(w, p, state, None, element_offset),
    }


@pytest.mark.parametrize("op", list(_functional_calls(None)))
def test_every_entry_point_has_one_policy_for_python_arguments(op):
    """A bool or a non-number is a TypeError, an int past int64 a ValueError, each naming the
    argument, for the functional ops as for the module (the dispatcher alone would take True as 1
    and report 2**63 as "expected 'int' but found 'int'")."""
    call = _functional_calls(make_state(1, 2))[op]
    for bad in (True, "0.5", None, torch.tensor([0.5, 0.5])):
        with pytest.raises(TypeError, match=error_pattern("p", "float", re.escape(repr(bad)))):
            call(p=bad)
    for bad in (True, 2.0, "1"):
        with pytest.raises(TypeError, match=error_pattern("element_offset", "int", re.escape(repr(bad)))):
            call(element_offset=bad)
    with pytest.raises(ValueError, match=error_pattern("element_offset", "int64", str(2**63))):
        call(element_offset=2**63)
    call(p=0.5, element_offset=0)  # and the valid values still pass
    call(p=1, element_offset=torch.tensor(0))  # an int p, a 0-d integer tensor offset


def test_module_shares_the_policy():
    with pytest.raises(TypeError, match=error_pattern("p", "float", "True")):
        tinybig_cuda.masking_reconciliation(p=True)
    module = tinybig_cuda.masking_reconciliation(p=0.5)
    with pytest.raises(TypeError, match=error_pattern("n", "int", "True")):
        module.calculate_l(True, 3)
    with pytest.raises(TypeError, match=error_pattern("D", "int", re.escape("2.0"))):
        module.generate_masking_matrix(2, 2.0)


def test_row_length_is_checked_and_named():
    state = make_state(1, 2)
    w = torch.ones(3, 4)
    with pytest.raises(ValueError, match=error_pattern("row_length", ">= 4", "3")):
        tinybig_cuda.bernoulli_mask_apply(w, 0.5, state, 0, row_length=3)
    with pytest.raises(ValueError, match=error_pattern("row_length", ">= 4", "-1")):
        tinybig_cuda.bernoulli_mask((3, 4), 0.5, state, 0, row_length=-1)
    with pytest.raises(TypeError, match=error_pattern("row_length", "int", re.escape("4.0"))):
        tinybig_cuda.bernoulli_mask_apply(w, 0.5, state, 0, row_length=4.0)
    # Also for an empty tensor, as every other argument (the rule is the same; the row is 5 wide).
    with pytest.raises(ValueError, match=error_pattern("row_length", ">= 5", "-3")):
        tinybig_cuda.bernoulli_mask_apply(torch.ones(0, 5), 0.5, state, 0, row_length=-3)
    with pytest.raises(ValueError, match=error_pattern("row_length", ">= 5", "-3")):
        tinybig_cuda.bernoulli_mask((0, 5), 0.5, state, 0, row_length=-3)
    # An offset within int64 whose window's last row is not: refused, not wrapped around.
    with pytest.raises(ValueError, match=error_pattern("element_offset", r"2\*\*63", str(2**63 - 20))):
        tinybig_cuda.bernoulli_mask_apply(w, 0.5, state, 2**63 - 20, row_length=10)


def test_p_as_data_that_requires_grad_is_refused():
    # The mask is a step function of p: a gradient could never reach it, so p.grad would stay None.
    p = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=error_pattern("p", "not to require grad", "requires grad")):
        torch.ops.tinybig_cuda.bernoulli_mask_apply_p_tensor(torch.ones(3), p, make_state(1, 2))
    out = torch.ops.tinybig_cuda.bernoulli_mask_apply_p_tensor(torch.ones(3), p.detach(), make_state(1, 2))
    assert out.shape == (3,)


def test_counts_and_shapes_follow_the_policy():
    state = make_state(1, 2)
    with pytest.raises(TypeError, match=error_pattern("kept_count", "int", "True")):
        tinybig_cuda.bernoulli_mask_compress(torch.ones(1), 1.0, state, True)
    with pytest.raises(TypeError, match=error_pattern("numel", "int", re.escape("12.0"))):
        tinybig_cuda.bernoulli_mask_count(12.0, 0.5, state)
    with pytest.raises(TypeError, match=error_pattern("shape", "sequence of ints", "Tensor")):
        tinybig_cuda.bernoulli_mask(torch.tensor([3, 4]), 0.5, state)
    with pytest.raises(TypeError, match=error_pattern("shape", "int", "True")):
        tinybig_cuda.bernoulli_mask((True, 4), 0.5, state)
    with pytest.raises(ValueError, match=error_pattern("shape", "int64", str(2**64))):
        tinybig_cuda.bernoulli_mask_expand(torch.zeros(0), 0.5, state, (2**64,))
    # One int is a 1-D shape, as for torch.empty.
    assert torch.equal(tinybig_cuda.bernoulli_mask(5, 0.5, state), tinybig_cuda.bernoulli_mask((5,), 0.5, state))


# ---------------------------------------------------------------- fake kernels refuse what the kernels refuse

OPS = torch.ops.tinybig_cuda
STATE = make_state(1, 2)
# (op, arguments): each breaks one rule of csrc/ops/argument_checks.cpp or csrc/ops/compact.cpp, or none.
FAKE_AND_REAL_CASES = {
    "apply ok": (OPS.bernoulli_mask_apply, (torch.ones(3), 0.5, STATE, 5)),
    "apply int w": (OPS.bernoulli_mask_apply, (torch.ones(3, dtype=torch.int32), 0.5, STATE, 0)),
    "apply p": (OPS.bernoulli_mask_apply, (torch.ones(3), 1.5, STATE, 0)),
    "apply state dtype": (OPS.bernoulli_mask_apply, (torch.ones(3), 0.5, STATE.int(), 0)),
    "apply state shape": (OPS.bernoulli_mask_apply, (torch.ones(3), 0.5, torch.ones(3, dtype=torch.int64), 0)),
    "apply 2-D state": (OPS.bernoulli_mask_apply, (torch.ones(3), 0.5, STATE.view(1, 2), 0)),
    "apply negative offset": (OPS.bernoulli_mask_apply, (torch.ones(3), 0.5, STATE, -1)),
    "apply offset past int64": (OPS.bernoulli_mask_apply, (torch.ones(3), 0.5, STATE, 2**63 - 1)),
    "apply window ok": (OPS.bernoulli_mask_apply, (torch.ones(3, 4), 0.5, STATE, 5, 10)),
    "apply rows overlap": (OPS.bernoulli_mask_apply, (torch.ones(3, 4), 0.5, STATE, 0, 3)),
    "apply empty rows overlap": (OPS.bernoulli_mask_apply, (torch.ones(0, 5), 0.5, STATE, 0, -3)),
    "apply empty window ok": (OPS.bernoulli_mask_apply, (torch.ones(4, 0), 0.5, STATE, 0, 0)),
    "apply window past int64": (OPS.bernoulli_mask_apply, (torch.ones(3, 4), 0.5, STATE, 0, 2**62)),
    "apply window offset past int64": (OPS.bernoulli_mask_apply, (torch.ones(3, 4), 0.5, STATE, 2**63 - 20, 10)),
    "mask ok": (OPS.bernoulli_mask, ([2, 0, 2**62], 0.5, STATE, 0)),
    "mask window ok": (OPS.bernoulli_mask, ([2, 3], 0.5, STATE, 7, 3)),
    "mask rows overlap": (OPS.bernoulli_mask, ([2, 3], 0.5, STATE, 0, 2)),
    "mask empty rows overlap": (OPS.bernoulli_mask, ([0, 5], 0.5, STATE, 0, 4)),
    "mask negative size": (OPS.bernoulli_mask, ([3, -1], 0.5, STATE, 0)),
    "mask 2**63 elements": (OPS.bernoulli_mask, ([2**32, 2**31], 0.5, STATE, 0)),
    "mask offset past int64": (OPS.bernoulli_mask, ([10], 0.5, STATE, 2**63 - 5)),
    "count ok": (OPS.bernoulli_mask_count, (12, 0.5, STATE, 3)),
    "count negative": (OPS.bernoulli_mask_count, (-1, 0.5, STATE, 0)),
    "count 2**62": (OPS.bernoulli_mask_count, (2**62, 0.5, STATE, 0)),
    "count offset past int64": (OPS.bernoulli_mask_count, (1, 0.5, STATE, 2**63 - 1)),
    "count p nan": (OPS.bernoulli_mask_count, (1, float("nan"), STATE, 0)),
    "expand 2-D values": (OPS.bernoulli_mask_expand, (torch.ones(1, 1), 0.5, STATE, [3], 0)),
    "expand int values": (OPS.bernoulli_mask_expand, (torch.ones(1, dtype=torch.int64), 0.5, STATE, [3], 0)),
    "expand 2**62 elements": (OPS.bernoulli_mask_expand, (torch.ones(1), 0.5, STATE, [2**31, 2**31], 0)),
    "expand 2**63 elements": (OPS.bernoulli_mask_expand, (torch.ones(1), 0.5, STATE, [2**32, 2**31], 0)),
    "expand negative size": (OPS.bernoulli_mask_expand, (torch.ones(1), 0.5, STATE, [-3], 0)),
    "expand too many values": (OPS.bernoulli_mask_expand, (torch.ones(4), 0.5, STATE, [3], 0)),
    "expand offset past int64": (OPS.bernoulli_mask_expand, (torch.ones(1), 0.5, STATE, [3], 2**63 - 2)),
    "compress ok": (OPS.bernoulli_mask_compress, (torch.ones(3), 1.0, STATE, 3, 0)),
    "compress negative count": (OPS.bernoulli_mask_compress, (torch.ones(3), 0.5, STATE, -1, 0)),
    "compress count past numel": (OPS.bernoulli_mask_compress, (torch.ones(3), 0.5, STATE, 4, 0)),
    "compress offset past int64": (OPS.bernoulli_mask_compress, (torch.ones(3), 0.5, STATE, 1, 2**63 - 2)),
    "compress bool full": (OPS.bernoulli_mask_compress, (torch.ones(3, dtype=torch.bool), 0.5, STATE, 1, 0)),
}


def test_fake_kernels_use_the_kernels_limit():
    assert tinybig_cuda._arguments.MAX_COMPACT_ELEMENTS == tinybig_cuda._C.MAX_COMPACT_ELEMENTS == 2**62 - 1


def test_the_dtype_table_is_the_kernels():
    """Python's table is read from the kernels' (csrc/ops/argument_checks.h), in the order their
    messages name it."""
    assert tinybig_cuda._C.maskable_dtype_names() == ["float32", "float64", "float16", "bfloat16"]
    assert tinybig_cuda._arguments.MASKABLE_DTYPES == (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    assert tinybig_cuda._arguments.MASKABLE_DTYPE_NAMES == "float32, float64, float16 or bfloat16"
    with pytest.raises(TypeError, match="expected w to be float32, float64, float16 or bfloat16, but got dtype Int"):
        OPS.bernoulli_mask_apply.default(torch.zeros(3, dtype=torch.int32), 0.5, STATE, 0)


def _outcome(call):
    try:
        call()
    except (ValueError, TypeError, RuntimeError) as error:
        return type(error), str(error).split(": expected")[0], re.findall(r"expected (\w+)", str(error))[:1]
    return None


@pytest.mark.parametrize("case", list(FAKE_AND_REAL_CASES))
def test_fake_kernels_refuse_exactly_what_the_kernels_refuse(case):
    """Same exception type, op and argument named, for every rule; no refusal where none is due.
    (Sizes that only fail to allocate, like 2**62 bools, are outside the rules: the fake kernel
    allocates nothing.)"""
    op, args = FAKE_AND_REAL_CASES[case]
    real = _outcome(lambda: op.default(*args))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = _outcome(lambda: op.default(*fake_args))
    assert fake == real
    assert (real is None) == case.endswith(" ok")


# ---------------------------------------------------------------- the one dtype table


def _every_dtype():
    """Every dtype torch has that a plain tensor can hold (quantized and sub-byte ones cannot)."""
    dtypes = {value for value in vars(torch).values() if isinstance(value, torch.dtype)}
    usable = []
    for dtype in sorted(dtypes, key=str):
        try:
            with warnings.catch_warnings():  # quantized dtypes warn that they are deprecated
                warnings.simplefilter("ignore")
                torch.zeros(3, dtype=dtype)
        except (RuntimeError, TypeError):
            continue
        usable.append(dtype)
    return usable


@pytest.mark.parametrize("dtype", _every_dtype(), ids=str)
def test_the_kernels_and_the_fake_kernels_take_exactly_the_dtype_table(dtype):
    """tinybig_cuda._arguments.MASKABLE_DTYPES is the table the fake kernels, the module and the
    tests read; the compiled kernels must accept exactly the dtypes it lists, out of every dtype."""
    maskable = dtype in tinybig_cuda._arguments.MASKABLE_DTYPES
    w = torch.zeros(3, dtype=dtype)
    calls = {
        "apply": lambda w, state: OPS.bernoulli_mask_apply.default(w, 0.5, state, 0),
        "expand": lambda w, state: OPS.bernoulli_mask_expand.default(w[:0], 0.0, state, [3], 0),
        "compress": lambda w, state: OPS.bernoulli_mask_compress.default(w, 0.0, state, 0, 0),
    }
    for name, call in calls.items():
        real = _outcome(lambda: call(w, STATE))
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = _outcome(lambda: call(mode.from_tensor(w), mode.from_tensor(STATE)))
        assert real == fake, name
        assert (real is None) == maskable, (name, real)
    if not maskable:
        with pytest.raises(TypeError, match=error_pattern("w", re.escape(tinybig_cuda._arguments.MASKABLE_DTYPE_NAMES), str(dtype).split(".")[-1])):
            tinybig_cuda.masking_reconciliation(p=0.5, compact=True)(w=torch.zeros(3, dtype=dtype), n=1, D=3)


def test_docstrings_name_the_dtype_table():
    names = tinybig_cuda._arguments.MASKABLE_DTYPE_NAMES
    for function in (tinybig_cuda.bernoulli_mask_apply, tinybig_cuda.bernoulli_mask_expand, tinybig_cuda.bernoulli_mask_compress):
        assert names in " ".join(function.__doc__.split()), function.__name__
