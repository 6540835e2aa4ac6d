"""tinyBIG's module API: fabrication and masking_reconciliation on the fused op."""

import importlib
import io
import pickle
import pickletools

import numpy as np
import pytest
import torch

import tinybig_cuda
from tinybig_cuda import fabrication, masking_reconciliation, reference

from conftest import (
    CUDA_AVAILABLE,
    DEVICES,
    DTYPE_IDS,
    DTYPES,
    Snapshot,
    assert_bitwise_equal,
    error_pattern,
    make_state,
    random_bits,
    random_values,
)

N, D = 6, 11


# ---------------------------------------------------------------- fabrication


def test_fabrication_base_cannot_be_instantiated():
    with pytest.raises(TypeError):
        fabrication()
    with pytest.raises(TypeError):
        fabrication(name="x", require_parameters=False, enable_bias=True, device="cpu")


def test_fabrication_subclass_works():
    class doubling(fabrication):
        def calculate_l(self, n, D):
            return n * D

        def forward(self, n, D, w, *args, **kwargs):
            return 2 * w.view(n, D)

    default = doubling()
    assert default.get_name() == "base_fabrication"
    assert isinstance(default, torch.nn.Module)
    named = doubling(name="doubling", require_parameters=False, enable_bias=True, device="cpu")
    assert named.get_name() == "doubling"
    assert named.require_parameters is False and named.enable_bias is True and named.device == "cpu"
    w = torch.arange(6.0)
    assert torch.equal(named(w=w, n=2, D=3), 2 * w.view(2, 3))  # calling the instance runs forward

    class incomplete(fabrication):
        def calculate_l(self, n, D):
            return n * D

    with pytest.raises(TypeError):
        incomplete()


def test_masking_reconciliation_is_a_fabrication():
    module = masking_reconciliation()
    assert isinstance(module, fabrication) and isinstance(module, torch.nn.Module)
    assert module.get_name() == "masking_reconciliation"
    assert masking_reconciliation(name="mask").get_name() == "mask"
    assert module.p == 0.5 and module.fixed_mask is True


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("n, D", [(3, 5), (1, 1), (0, 7), (128, 3)])
def test_calculate_l_is_n_times_D(p, n, D):
    """n*D as tinyBIG's code does, not its docstring's p*n*D."""
    assert masking_reconciliation(p=p).calculate_l(n, D) == n * D
    assert masking_reconciliation(p=p).calculate_l(n=n, D=D) == n * D


# ---------------------------------------------------------------- forward


def _w_of_shape(kind, n, D, dtype=torch.float32, device="cpu", seed=0):
    flat = random_bits((n * D,), dtype, device, seed)
    return {"1xnD": flat.reshape(1, n * D), "nD": flat, "nxD": flat.reshape(n, D)}[kind]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["1xnD", "nD", "nxD"])
@pytest.mark.parametrize("fixed_mask", [True, False], ids=["fixed", "fresh"])
def test_tinybig_keyword_call(device, kind, fixed_mask):
    module = masking_reconciliation(p=0.5, fixed_mask=fixed_mask, device=device)
    w = _w_of_shape(kind, N, D, device=device)
    snapshot = Snapshot(w)
    out = module(w=w, n=N, D=D, device=device)
    snapshot.assert_unchanged()
    assert out.shape == (N, D) and out.dtype == w.dtype and out.device == w.device and out.is_contiguous()
    state = module.rng_state
    assert state.dtype == torch.int64 and state.shape == (2,) and state.device == w.device
    assert_bitwise_equal(out, reference.bernoulli_mask_apply(w.reshape(N, D), 0.5, state))
    # Positional (n, D, w) and omitting device work too.
    if fixed_mask:
        assert_bitwise_equal(module(N, D, w), out)


@pytest.mark.parametrize("device", DEVICES)
def test_every_w_shape_gets_the_same_fixed_mask(device):
    module = masking_reconciliation(p=0.5, device=device)
    results = [module(w=_w_of_shape(kind, N, D, device=device), n=N, D=D, device=device) for kind in ("1xnD", "nD", "nxD")]
    for result in results[1:]:
        assert_bitwise_equal(result, results[0])


@pytest.mark.parametrize("device", DEVICES)
def test_tinybig_head_usage_with_channel_rows(device):
    """tinyBIG's heads call fab(w=w[c:c+1, :], ...) per channel: one fixed mask for every channel,
    and gradients reach exactly the kept entries of each row of the parameter."""
    module = masking_reconciliation(p=0.5, device=device)
    channels = 3
    weight = torch.nn.Parameter(random_values((channels, module.calculate_l(N, D)), torch.float32, device))
    outputs = [module(w=weight[c : c + 1, :], n=N, D=D, device=device) for c in range(channels)]
    mask = module.generate_masking_matrix(N, D, device=device)
    for c, out in enumerate(outputs):
        assert torch.equal(out, torch.where(mask, weight[c].detach().view(N, D), 0.0))
    sum(out.sum() for out in outputs).backward()
    assert torch.equal(weight.grad, mask.reshape(1, -1).float().expand(channels, -1))


@pytest.mark.parametrize("device", DEVICES)
def test_fixed_mask_is_the_same_every_call(device):
    module = masking_reconciliation(p=0.5, fixed_mask=True, device=device)
    state_before = module.rng_state.clone()
    masks = []
    for seed in range(3):
        w = random_values((1, N * D), torch.float32, device, seed=seed)
        masks.append(module(w=w, n=N, D=D, device=device) != 0)
    assert 0 < int(masks[0].sum()) < N * D
    for mask in masks[1:]:
        assert torch.equal(mask, masks[0])
    assert torch.equal(module.rng_state, state_before)
    assert torch.equal(masks[0], module.generate_masking_matrix(N, D, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_fresh_mask_each_call_and_backward_uses_that_calls_state(device):
    module = masking_reconciliation(p=0.5, fixed_mask=False, device=device)
    n, D = 16, 16
    w1 = random_values((1, n * D), torch.float64, device, seed=1).requires_grad_()
    w2 = random_values((1, n * D), torch.float64, device, seed=2).requires_grad_()
    out1 = module(w=w1, n=n, D=D, device=device)
    mask1 = module.generate_masking_matrix(n, D, device=device)
    out2 = module(w=w2, n=n, D=D, device=device)
    mask2 = module.generate_masking_matrix(n, D, device=device)
    assert not torch.equal(mask1, mask2), "fixed_mask=False must draw a new mask per call"
    assert torch.equal(out1, torch.where(mask1, w1.detach().view(n, D), 0.0))
    assert torch.equal(out2, torch.where(mask2, w2.detach().view(n, D), 0.0))
    # Backward of the first call, run after the second call, still uses the first call's mask.
    out1.sum().backward()
    assert torch.equal(w1.grad, mask1.reshape(1, -1).double())
    out2.sum().backward()
    assert torch.equal(w2.grad, mask2.reshape(1, -1).double())


@pytest.mark.parametrize("device", DEVICES)
def test_fresh_mask_states_come_from_torch_generator(device):
    module = masking_reconciliation(p=0.5, fixed_mask=False, device=device)
    w = torch.ones(1, N * D, device=device)
    torch.manual_seed(2024)
    first = [module(w=w, n=N, D=D, device=device) for _ in range(2)]
    torch.manual_seed(2024)
    second = [module(w=w, n=N, D=D, device=device) for _ in range(2)]
    for a, b in zip(first, second):
        assert_bitwise_equal(a, b)
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fixed_mask", [True, False], ids=["fixed", "fresh"])
@pytest.mark.parametrize("n, D", [(1, 1), (37, 129), (5, 3)])
def test_generate_masking_matrix_equals_applied_mask(device, fixed_mask, n, D):
    module = masking_reconciliation(p=0.37, fixed_mask=fixed_mask, device=device)
    w = random_values((n * D,), torch.float32, device, seed=n)  # no zeros, so out != 0 is the mask
    out = module(w=w, n=n, D=D, device=device)
    mask = module.generate_masking_matrix(n, D, device=device)
    assert mask.dtype == torch.bool and mask.shape == (n, D) and mask.device.type == torch.device(device).type
    assert torch.equal(out != 0, mask)
    assert torch.equal(mask, reference.bernoulli_mask((n, D), 0.37, module.rng_state))


@pytest.mark.parametrize("fixed_mask", [True, False], ids=["fixed", "fresh"])
def test_p_zero_keeps_nothing_and_p_one_keeps_everything(fixed_mask):
    w = random_bits((1, 64 * 65), torch.float32, seed=3)
    nothing = masking_reconciliation(p=0.0, fixed_mask=fixed_mask)(w=w, n=64, D=65)
    assert_bitwise_equal(nothing, torch.zeros(64, 65))
    everything = masking_reconciliation(p=1.0, fixed_mask=fixed_mask)(w=w, n=64, D=65)
    assert_bitwise_equal(everything, w.view(64, 65))
    assert not masking_reconciliation(p=0).generate_masking_matrix(64, 65).any()
    assert masking_reconciliation(p=1).generate_masking_matrix(64, 65).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, D, w_shape", [(0, 4, (1, 0)), (0, 4, (0,)), (0, 4, (0, 4)), (3, 0, (3, 0)), (0, 0, (0,))])
def test_empty_matrices(device, n, D, w_shape):
    module = masking_reconciliation(p=0.5, device=device)
    w = torch.empty(w_shape, device=device, requires_grad=True)
    out = module(w=w, n=n, D=D, device=device)
    assert out.shape == (n, D) and out.dtype == w.dtype
    out.sum().backward()
    assert w.grad.shape == w_shape
    assert module.generate_masking_matrix(n, D, device=device).shape == (n, D)
    assert module.calculate_l(n, D) == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_module_keeps_w_dtype(dtype):
    module = masking_reconciliation(p=0.5)
    w = random_bits((1, N * D), dtype)
    out = module(w=w, n=N, D=D)
    assert out.dtype == dtype
    assert torch.equal(out != 0, module.generate_masking_matrix(N, D) & (w.view(N, D) != 0))
    assert_bitwise_equal(out, reference.bernoulli_mask_apply(w.view(N, D), 0.5, module.rng_state))


# ---------------------------------------------------------------- state


def test_state_dict_round_trip_reproduces_the_mask():
    original = masking_reconciliation(p=0.5)
    w = random_values((1, 32 * 32), torch.float32)
    expected = original(w=w, n=32, D=32)
    saved = original.state_dict()
    assert set(saved) == {"rng_state"}
    restored = masking_reconciliation(p=0.5)
    assert not torch.equal(restored(w=w, n=32, D=32), expected), "a new module should draw a new mask"
    restored.load_state_dict(saved)
    assert_bitwise_equal(restored(w=w, n=32, D=32), expected)
    assert torch.equal(restored.generate_masking_matrix(32, 32), original.generate_masking_matrix(32, 32))


def test_state_dict_round_trip_through_torch_save(tmp_path):
    original = masking_reconciliation(p=0.25)
    torch.save(original.state_dict(), tmp_path / "mask.pt")
    restored = masking_reconciliation(p=0.25)
    restored.load_state_dict(torch.load(tmp_path / "mask.pt"))
    assert torch.equal(restored.generate_masking_matrix(40, 40), original.generate_masking_matrix(40, 40))


# The paths that pickles (torch.save(model)) and tinyBIG configs name the classes by: a model saved
# by an earlier version loads only while each path still leads to its class.
SAVED_CLASS_PATHS = [
    "tinybig_cuda.modules.fabrication",
    "tinybig_cuda.modules.masking_reconciliation",
    "tinybig_cuda.modules._tinybig_mask_reconciliation",  # a tinyBIG pickle loaded, then saved again
    "tinybig_cuda.weight_drop.MaskedLinear",
]


def test_pickles_name_the_classes_by_their_saved_paths():
    model = torch.nn.ModuleList([masking_reconciliation(p=0.5), masking_reconciliation(p=0.5, compact=True), tinybig_cuda.MaskedLinear(3, 2)])
    pickled = pickle.dumps(model, protocol=2)  # protocol 2 names each class by one GLOBAL opcode
    named = {argument.replace(" ", ".") for opcode, argument, _ in pickletools.genops(pickled)
             if opcode.name == "GLOBAL" and argument.startswith("tinybig_cuda")}
    assert named == {"tinybig_cuda.modules.masking_reconciliation", "tinybig_cuda.weight_drop.MaskedLinear"}
    for path in SAVED_CLASS_PATHS:
        module, name = path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        assert f"{cls.__module__}.{cls.__qualname__}" == path
    assert masking_reconciliation(p=0.5).to_config()["function_class"] == "tinybig_cuda.modules.masking_reconciliation"


def test_manual_seed_reproduces_a_new_modules_mask():
    torch.manual_seed(1234)
    first = masking_reconciliation(p=0.5).generate_masking_matrix(32, 32)
    torch.manual_seed(1234)
    second = masking_reconciliation(p=0.5).generate_masking_matrix(32, 32)
    torch.manual_seed(1235)
    third = masking_reconciliation(p=0.5).generate_masking_matrix(32, 32)
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


@pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA device")
def test_manual_seed_gives_one_mask_on_every_device():
    torch.manual_seed(77)
    on_cpu = masking_reconciliation(p=0.5, device="cpu")
    torch.manual_seed(77)
    on_cuda = masking_reconciliation(p=0.5, device="cuda")
    assert on_cuda.rng_state.device.type == "cpu"  # construction touches no device (as tinyBIG's)
    on_cuda(w=torch.ones(1, 33 * 9, device="cuda"), n=33, D=9, device="cuda")
    assert on_cuda.rng_state.device.type == "cuda"  # moved by the first call
    assert torch.equal(on_cpu.generate_masking_matrix(33, 9), on_cuda.generate_masking_matrix(33, 9, device="cuda").cpu())


def test_rng_state_covers_the_64_bit_range():
    """States are drawn over all of int64, so negative seeds and offsets occur."""
    states = torch.stack([masking_reconciliation().rng_state for _ in range(64)])
    assert (states < 0).any() and (states > 2**32).any()
    assert len({tuple(s) for s in states.tolist()}) == 64


def test_to_dtype_leaves_the_state_alone():
    module = masking_reconciliation(p=0.5)
    before = module.rng_state.clone()
    module.to(torch.float64)
    module.half()
    assert module.rng_state.dtype == torch.int64
    assert torch.equal(module.rng_state, before)


@pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA device")
def test_to_moves_the_state_and_keeps_the_mask():
    module = masking_reconciliation(p=0.5)
    w = random_values((1, N * D), torch.float32)
    expected = module(w=w, n=N, D=D)
    module.to("cuda")
    assert module.rng_state.device.type == "cuda"
    assert_bitwise_equal(module(w=w.cuda(), n=N, D=D, device="cuda").cpu(), expected)


def _sizes(path):
    """n = 3 for the module's eager call, or as a NumPy integer, which takes the checked Python path."""
    return 3 if path == "eager" else np.int64(3)


@pytest.mark.parametrize("path", ["eager", "checked"])
@pytest.mark.parametrize("fixed_mask", [True, False], ids=["fixed", "fresh"])
def test_a_meta_call_leaves_the_state_alone(path, fixed_mask):
    """Shape inference (a meta w) must not replace the state with a meta tensor, which holds no data:
    the next real call would fail, and a fixed mask would be lost."""
    module = masking_reconciliation(p=0.5, fixed_mask=fixed_mask)
    w = random_values((1, 12), torch.float32)
    first = module(3, 4, w)
    state = module.rng_state.clone()
    out = module(_sizes(path), 4, torch.empty(1, 12, device="meta"))
    assert out.shape == (3, 4) and out.is_meta
    assert module.rng_state.device.type == "cpu" and torch.equal(module.rng_state, state)
    assert torch.equal(module.mask_matrix, reference.bernoulli_mask((3, 4), 0.5, state))
    if fixed_mask:
        assert_bitwise_equal(module(3, 4, w), first)
    else:
        module(3, 4, w)
    module.reset_parameters()


@pytest.mark.parametrize("path", ["eager", "checked"])
def test_a_fresh_mask_call_under_inference_mode_leaves_a_writable_state(path):
    """The fresh state a call keeps is not an inference tensor, which reset_parameters() could not
    write, nor training save for backward."""
    module = masking_reconciliation(p=0.5, fixed_mask=False)
    with torch.inference_mode():
        out = module(_sizes(path), 4, random_values((1, 12), torch.float32))
    assert not module.rng_state.is_inference()
    assert torch.equal(out != 0, reference.bernoulli_mask((3, 4), 0.5, module.rng_state))
    module.reset_parameters()


@pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA device")
@pytest.mark.parametrize("path", ["eager", "checked"])
def test_a_first_call_under_inference_mode_leaves_a_trainable_state(path):
    """The fixed state moved to w's device at the first call becomes the module's buffer: not an
    inference tensor, which training could not save for backward nor reset_parameters write."""
    module = masking_reconciliation(p=0.5)
    with torch.inference_mode():
        module(_sizes(path), 4, torch.ones(1, 12, device="cuda"))
    assert module.rng_state.device.type == "cuda" and not module.rng_state.is_inference()
    module(_sizes(path), 4, torch.ones(1, 12, device="cuda", requires_grad=True)).sum().backward()
    module.reset_parameters()


@pytest.mark.parametrize("fixed_mask", [True, False], ids=["fixed", "fresh"])
def test_fake_tensor_mode_constructs_calls_and_resets(fixed_mask):
    """As nn.Linear does (export and meta-init flows construct modules under FakeTensorMode)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        module = masking_reconciliation(p=0.5, fixed_mask=fixed_mask)
        assert isinstance(module.rng_state, FakeTensor)
        assert module.rng_state.dtype == torch.int64 and module.rng_state.shape == (2,)
        module.reset_parameters()
        out = module(w=torch.empty(1, 12), n=3, D=4)
        assert isinstance(out, FakeTensor) and out.shape == (3, 4)


def test_a_subclass_overriding_generate_masking_matrix_alone_is_refused():
    """tinyBIG's forward applies the mask generate_masking_matrix makes; this one's never calls it,
    so the override would be silently ignored: refused where the subclass is defined."""
    with pytest.raises(TypeError, match="banded: overrides generate_masking_matrix.*override forward as well"):

        class banded(masking_reconciliation):
            def generate_masking_matrix(self, n, D, device="cpu"):
                return torch.ones(n, D, dtype=torch.bool).triu()

    class banded_with_forward(masking_reconciliation):  # a forward of its own decides what it calls
        def generate_masking_matrix(self, n, D, device="cpu"):
            return torch.ones(n, D, dtype=torch.bool).triu()

        def forward(self, n, D, w, device=None, *args, **kwargs):
            return torch.where(self.generate_masking_matrix(n, D), w.view(n, D), 0.0)

    assert torch.equal(banded_with_forward()(2, 2, torch.ones(4)), torch.tensor([[1.0, 1.0], [0.0, 1.0]]))

    class renamed(masking_reconciliation):  # other overrides are fine
        def extra_repr(self):
            return "renamed"

    assert renamed()(2, 2, torch.ones(4)).shape == (2, 2)


@pytest.mark.parametrize("bad_state", [torch.tensor([3.0, 5.0], dtype=torch.float64), torch.tensor([3, 5], dtype=torch.int32)], ids=["float64", "int32"])
def test_load_state_dict_refuses_a_state_that_is_not_int64(bad_state):
    """copy_ would convert it (and a float64 one loses integers above 2**53): refused, the module's
    own state kept."""
    module = masking_reconciliation(p=0.5)
    before = module.rng_state.clone()
    with pytest.raises(RuntimeError, match=r"expected rng_state to be an int64 tensor of shape \[2\].*but got dtype " + str(bad_state.dtype)):
        module.load_state_dict({"rng_state": bad_state})
    assert module.rng_state.dtype == torch.int64 and torch.equal(module.rng_state, before)


@pytest.mark.parametrize("device", DEVICES + ["meta"])
def test_rng_state_on_is_the_one_rule_for_where_the_fixed_state_lives(device):
    """_C.rng_state_on (csrc/ops/fabrication.cpp), which the module's eager call applies: the state
    itself on its own device; elsewhere a copy of its value, made outside inference mode so the
    module can keep it as its buffer; on the meta device, a data-less one, the state untouched."""
    state = torch.tensor([3, 5], dtype=torch.int64)
    assert tinybig_cuda._C.rng_state_on(state, torch.device("cpu")) is state
    with torch.inference_mode():
        moved = tinybig_cuda._C.rng_state_on(state, torch.device(device))
    assert moved.device.type == device and moved.dtype == torch.int64 and moved.shape == (2,)
    assert not moved.is_inference()
    if device == "meta":
        assert torch.equal(state, torch.tensor([3, 5]))
    else:
        assert torch.equal(moved.cpu(), state)


# ---------------------------------------------------------------- compact=True: only the kept entries are parameters


class Head(torch.nn.Module):
    """tinyBIG's head, reduced to its use of a fabrication: w = Parameter(rand(channels, l)), and per
    channel F.linear(x, fab(w=w[c:c+1, :], n=n, D=D))."""

    def __init__(self, fabrication, n, D, channels=1):
        super().__init__()
        self.fabrication, self.n, self.D = fabrication, n, D
        self.w = torch.nn.Parameter(torch.rand(channels, fabrication.calculate_l(n=n, D=D)))

    def forward(self, x):
        return sum(
            torch.nn.functional.linear(x, self.fabrication(w=self.w[c : c + 1, :], n=self.n, D=self.D))
            for c in range(self.w.shape[0])
        )


def _full_and_compact(p, device="cpu"):
    """A full and a compact module with the same mask."""
    full = masking_reconciliation(p=p, device=device)
    compact = masking_reconciliation(p=p, compact=True, device=device)
    compact.load_state_dict(full.state_dict())
    return full, compact


def test_compact_module_leaves_a_cpu_state_on_the_cpu():
    """The host reads a CPU state without waiting for the device, so on CUDA a compact module whose
    state is on the CPU checks w's count with no sync (tests/test_cuda.py). Here the data is on the
    meta device, where a state moved with it could not even be read."""
    n, D = 9, 7
    module = masking_reconciliation(p=0.3, compact=True)
    w = torch.empty(1, module.calculate_l(n, D), device="meta")
    for _ in range(2):
        assert module(n, D, w).device.type == "meta"
        assert module.rng_state.device.type == "cpu"
    assert module.mask_matrix.device.type == "meta"  # the mask of the last call, on its device
    assert module.expand_parameters(w, n, D).shape == (1, n * D)
    assert module.compress_parameters(torch.empty(2, n * D, device="meta"), n, D).shape == (2, w.shape[-1])
    assert module.rng_state.device.type == "cpu"


@pytest.mark.parametrize("p, n, D", [(1e-12, 3, 4), (0.5, 0, 4), (0.5, 3, 0)], ids=["nothing kept", "n=0", "D=0"])
@pytest.mark.parametrize("rows", [(2,), (), (0,)], ids=["2 rows", "1-D", "no rows"])
def test_conversions_of_a_mask_that_keeps_nothing_or_of_no_matrix(p, n, D, rows):
    """K = 0 (a tiny p) or n*D = 0: every shape is known from the arguments, so nothing is ambiguous."""
    module = masking_reconciliation(p=p, compact=True)
    assert module.calculate_l(n, D) == 0
    full = random_values(rows + (n * D,), torch.float32)
    compact = module.compress_parameters(full, n, D)
    assert compact.shape == rows + (0,)
    expanded = module.expand_parameters(compact, n, D)
    assert_bitwise_equal(expanded, torch.zeros(rows + (n * D,)))
    assert_bitwise_equal(module(n, D, compact.reshape(-1)), torch.zeros(n, D))


def test_compact_requires_a_fixed_mask():
    with pytest.raises(ValueError, match=error_pattern("fixed_mask", "True", "False")):
        masking_reconciliation(p=0.5, fixed_mask=False, compact=True)
    # compact is keyword-only: positional arguments after fixed_mask still reach fabrication.
    module = masking_reconciliation("m", 0.5, True, True, False, "cpu")
    assert module.compact is False and module.require_parameters is True and module.enable_bias is False


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_calculate_l_is_the_kept_count(device, p):
    module = masking_reconciliation(p=p, compact=True, device=device)
    for n, D in [(1, 1), (6, 11), (0, 7), (128, 3)]:
        expected = int(module.generate_masking_matrix(n, D, device=device).sum())
        assert module.calculate_l(n, D) == expected == module.calculate_l(n=n, D=D)
        if p in (0.0, 1.0):
            assert expected == p * n * D
    assert "compact=True" in repr(module)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("w_shape", ["1xK", "K"])
def test_compact_forward_equals_full_forward(device, w_shape):
    n, D, p = 31, 19, 0.3
    full, compact = _full_and_compact(p, device)
    K = compact.calculate_l(n, D)
    values = random_bits((K,), torch.float32, device)
    w = values.view(1, K) if w_shape == "1xK" else values
    out = compact(w=w, n=n, D=D, device=device)
    assert out.shape == (n, D) and out.dtype == w.dtype and out.is_contiguous()
    assert_bitwise_equal(out, full(w=compact.expand_parameters(values.view(1, K), n, D), n=n, D=D, device=device))
    assert_bitwise_equal(out, reference.bernoulli_mask_expand(values, p, compact.rng_state, (n, D)))


@pytest.mark.parametrize("device", DEVICES)
def test_compact_module_refuses_w_of_the_wrong_length_naming_w(device):
    module = masking_reconciliation(p=0.5, compact=True, device=device)
    K = module.calculate_l(8, 8)
    for wrong in (K - 1, K + 1, 64):
        with pytest.raises(ValueError, match=error_pattern("w", rf"\b{K}\b", rf"\b{wrong}\b")):
            module(w=torch.randn(1, wrong, device=device), n=8, D=8, device=device)
    with pytest.raises(TypeError, match=error_pattern("w", "float32", r"\b(Long|int64)\b")):
        module(w=torch.ones(1, K, dtype=torch.int64, device=device), n=8, D=8)


def test_remembered_count_follows_a_new_state():
    """calculate_l and forward remember K per state; loading another state must not reuse it."""
    module = masking_reconciliation(p=0.5, compact=True)
    K1 = module.calculate_l(50, 50)
    other = masking_reconciliation(p=0.5, compact=True)
    module.load_state_dict(other.state_dict())
    K2 = other.calculate_l(50, 50)
    assert K1 != K2, "pick seeds whose counts differ"
    assert module.calculate_l(50, 50) == K2
    assert module(w=torch.randn(K2), n=50, D=50).shape == (50, 50)
    # Even a state written behind autograd's back (no version bump) never refuses a right w.
    module.rng_state.data.copy_(make_state(1, 2))
    K3 = tinybig_cuda.count_kept(2500, 0.5, make_state(1, 2))
    assert module(w=torch.randn(K3), n=50, D=50).shape == (50, 50)


def test_kept_count_follows_the_states_value_however_it_is_written():
    """The remembered count is keyed on the state's value: writes that skip the version counter
    (through .data or a NumPy view) and new state tensors at a freed address (version 0 again)
    must never give the old mask's count."""
    n, D, p = 50, 50, 0.5
    module = masking_reconciliation(p=p, compact=True)

    def expected():
        return tinybig_cuda.count_kept(n * D, p, module.rng_state)

    before = module.calculate_l(n, D)
    module.rng_state.data[0] += 1  # no version bump
    assert expected() != before, "pick a state whose count changes"
    assert module.calculate_l(n, D) == expected()
    w = torch.randn(1, expected())
    assert module.expand_parameters(w, n, D).shape == (1, n * D)
    before = module.calculate_l(n, D)
    module.rng_state.numpy()[1] += 7
    assert expected() != before
    assert module.calculate_l(n, D) == expected()
    for seed in range(10):  # new tensors, often at the address just freed
        module.rng_state = make_state(seed, 0)
        assert module.calculate_l(n, D) == expected(), seed


@pytest.mark.parametrize("device", DEVICES)
def test_conversion_from_full_parameters_and_back(device):
    """Full tinyBIG-style (channels, n*D) weights loaded into a compact module compute the same."""
    n, D, p, channels = 24, 40, 0.25, 3
    full, compact = _full_and_compact(p, device)
    full_head = Head(full, n, D, channels).to(device)
    compact_head = Head(compact, n, D, channels).to(device)
    K = compact.calculate_l(n, D)
    assert compact_head.w.shape == (channels, K)
    with torch.no_grad():
        compact_head.w.copy_(compact.compress_parameters(full_head.w, n, D))
    x = torch.randn(5, D, device=device)
    assert torch.equal(compact_head(x), full_head(x))
    back = compact.expand_parameters(compact_head.w.detach(), n, D)
    assert back.shape == (channels, n * D)
    mask = compact.generate_masking_matrix(n, D, device=device).reshape(-1)
    assert torch.equal(back[:, mask], full_head.w.detach()[:, mask])
    assert torch.equal(back[:, ~mask], torch.zeros_like(back[:, ~mask]))
    assert torch.equal(compact.compress_parameters(back, n, D), compact_head.w.detach())
    with pytest.raises(ValueError, match=error_pattern("w", str(n * D), str(K))):
        compact.compress_parameters(compact_head.w, n, D)
    with pytest.raises(ValueError, match=error_pattern("w", str(K), str(n * D))):
        compact.expand_parameters(full_head.w, n, D)


def _saved_bytes(module):
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_state_dict_is_about_p_times_the_full_one(p):
    n, D = 256, 256
    full, compact = _full_and_compact(p)
    full_bytes, compact_bytes = _saved_bytes(Head(full, n, D)), _saved_bytes(Head(compact, n, D))
    assert full_bytes > 4 * n * D
    assert abs(compact_bytes / full_bytes - p) < 0.02, (compact_bytes, full_bytes)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.2, 0.7])
def test_adam_step_matches_the_full_modules_kept_entries(device, p):
    """Adam (weight decay off) on the compact parameters moves the kept entries exactly as it
    moves them in the full parameters, where the dropped entries' zero gradients leave them be."""
    n, D, channels = 20, 33, 2
    torch.manual_seed(0)
    full, compact = _full_and_compact(p, device)
    full_head, compact_head = Head(full, n, D, channels).to(device), Head(compact, n, D, channels).to(device)
    with torch.no_grad():
        compact_head.w.copy_(compact.compress_parameters(full_head.w, n, D))
    optimizers = [torch.optim.Adam(head.parameters(), lr=0.05, weight_decay=0.0) for head in (full_head, compact_head)]
    for step in range(3):
        x = torch.randn(7, D, device=device)
        target = torch.randn(7, n, device=device)
        for head, optimizer in zip((full_head, compact_head), optimizers):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(head(x), target).backward()
            optimizer.step()
        assert torch.equal(compact.compress_parameters(full_head.w.detach(), n, D), compact_head.w.detach()), step
    state = optimizers[1].state[compact_head.w]
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == (channels, compact.calculate_l(n, D))
