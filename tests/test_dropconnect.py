"""DropConnect for any model: masked_linear (the op: values, mask bits, gradients, what backward
keeps, opcheck, compile, export), MaskedLinear and the dropconnect parametrization."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

import tinybig_cuda
from tinybig_cuda import _C
from conftest import assert_bitwise_equal, error_pattern, make_state, random_values, requires_compile, requires_opcheck

OP = torch.ops.tinybig_cuda.masked_linear.default
BACKWARD_INPUT = torch.ops.tinybig_cuda.masked_linear_backward_input.default
BACKWARD_WEIGHT = torch.ops.tinybig_cuda.masked_linear_backward_weight.default

# (x's shape, w's shape): a weight of several 1 MiB blocks of rows (forward, grad_w) and of
# columns (grad_x) in every dtype, 1-D and 3-D inputs, and a batch of one.
CASES = [((4, 1000), (1200, 1000)), ((1, 500), (600, 500)), ((3, 2, 64), (96, 64)), ((64,), (33, 64)), ((5, 3), (2, 3))]
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10),
             torch.bfloat16: dict(rtol=2e-2, atol=1e-1), torch.float16: dict(rtol=2e-3, atol=2e-2)}


def reference(x, w, p, state, bias=None):
    return F.linear(x, tinybig_cuda.bernoulli_mask_apply(w, p, state), bias)


@pytest.mark.parametrize("x_shape, w_shape", CASES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_values_and_gradients_equal_linear_of_the_masked_weight(device, x_shape, w_shape, with_bias, dtype):
    x = random_values(x_shape, dtype, device, seed=1).requires_grad_()
    w = random_values(w_shape, dtype, device, seed=2).requires_grad_()
    bias = random_values(w_shape[:1], dtype, device, seed=3).requires_grad_() if with_bias else None
    state = make_state(12345, 2**40 + 3, device)
    inputs = [t for t in (x, w, bias) if t is not None]

    y = tinybig_cuda.masked_linear(x, w, 0.5, state, bias)
    expected = reference(x, w, 0.5, state, bias)
    assert y.shape == expected.shape and y.dtype == dtype and y.is_contiguous()
    torch.testing.assert_close(y, expected, **TOLERANCE[dtype])

    grad_y = random_values(y.shape, dtype, device, seed=4)
    grads = torch.autograd.grad(y, inputs, grad_y)
    expected_grads = torch.autograd.grad(expected, inputs, grad_y)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, **TOLERANCE[dtype])


@pytest.mark.parametrize("w_shape", [(1200, 1000), (96, 64)])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_the_mask_bits_are_bernoulli_mask_applys(device, w_shape, p):
    # Multiplying by the identity adds only zeros to each masked weight, so the product is exact.
    w = random_values(w_shape, torch.float32, device, seed=5)
    state = make_state(-1, 7, device)
    identity = torch.eye(w_shape[1], device=device)
    masked = tinybig_cuda.bernoulli_mask_apply(w, p, state)
    assert_bitwise_equal(tinybig_cuda.masked_linear(identity, w, p, state).t().contiguous(), masked)
    # grad_w = mask ⊙ (grad_y^T x): with grad_y = I and x = I (out_features rows), exactly the mask.
    grad_w = BACKWARD_WEIGHT(torch.eye(w_shape[0], device=device), torch.eye(*w_shape, device=device), p, state)
    assert_bitwise_equal(grad_w, tinybig_cuda.bernoulli_mask_apply(torch.eye(*w_shape, device=device), p, state))
    # grad_x = grad_y @ masked w: with grad_y the identity, the masked weight itself.
    assert_bitwise_equal(BACKWARD_INPUT(torch.eye(w_shape[0], device=device), w, p, state), masked)


@pytest.fixture(params=_C.supported_cpu_isas())
def cpu_isa(request):
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa("auto")


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5])  # up to 4 rows the CPU kernel fuses mask and product
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_small_batches_on_every_cpu_path_take_the_mask_bits(cpu_isa, batch, dtype):
    # One-hot rows of x read single weights out: y[b, r] is masked[r, column b], exactly. 1001
    # columns start the rows anywhere in a Philox block and end them in a partial step.
    w = random_values((37, 1001), dtype, seed=5)
    state = make_state(-1, 7)
    columns = torch.randint(0, 1001, (batch,), generator=torch.Generator().manual_seed(batch))
    x = F.one_hot(columns, 1001).to(dtype)
    masked = tinybig_cuda.bernoulli_mask_apply(w, 0.4, state)
    assert_bitwise_equal(tinybig_cuda.masked_linear(x, w, 0.4, state), masked[:, columns].t())


@pytest.mark.parametrize("batch", [1, 4])
def test_small_batches_ignore_dropped_nans_and_read_strided_inputs(cpu_isa, batch):
    state = make_state(3, 9)
    w = random_values((64, 301), torch.float32, seed=1)
    w[tinybig_cuda.bernoulli_mask_apply(torch.ones_like(w), 0.5, state) == 0] = float("nan")
    x = random_values((301, batch), torch.float32, seed=2).t()  # rows 301 elements apart, columns strided
    bias = random_values((64,), torch.float32, seed=3)
    y = tinybig_cuda.masked_linear(x, w, 0.5, state, bias)
    assert y.isfinite().all()
    torch.testing.assert_close(y, reference(x, w, 0.5, state, bias), **TOLERANCE[torch.float32])


def test_gradcheck_in_float64(device):
    x = random_values((3, 7), torch.float64, device, seed=6).requires_grad_()
    w = random_values((5, 7), torch.float64, device, seed=7).requires_grad_()
    bias = random_values((5,), torch.float64, device, seed=8).requires_grad_()
    state = make_state(3, 4, device)
    assert torch.autograd.gradcheck(lambda x, w, b: tinybig_cuda.masked_linear(x, w, 0.6, state, b), (x, w, bias))


def test_only_the_gradients_asked_for_are_computed(device):
    x = random_values((3, 7), torch.float32, device, seed=6).requires_grad_()
    w = random_values((5, 7), torch.float32, device, seed=7)  # a frozen weight
    state = make_state(3, 4, device)
    y = tinybig_cuda.masked_linear(x, w, 0.5, state, torch.zeros(5, device=device))
    (grad_x,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad_x, torch.ones(3, 5, device=device) @ tinybig_cuda.bernoulli_mask_apply(w, 0.5, state))


def test_gradgradcheck_in_float64(device):
    # backward(create_graph=True) takes a differentiable backward through bernoulli_mask_apply.
    x = random_values((2, 5), torch.float64, device, seed=6).requires_grad_()
    w = random_values((4, 5), torch.float64, device, seed=7).requires_grad_()
    bias = random_values((4,), torch.float64, device, seed=8).requires_grad_()
    state = make_state(3, 4, device)
    assert torch.autograd.gradgradcheck(lambda x, w, b: tinybig_cuda.masked_linear(x, w, 0.6, state, b), (x, w, bias))


def test_compiled_backward_calls_the_blocked_backward_ops():
    from functorch.compile import aot_function, make_boxed_func, nop

    graphs = []

    def keep_backward(graph, _):
        graphs.append(str(graph.code))
        return make_boxed_func(graph.forward)

    x = torch.randn(3, 8, requires_grad=True)
    w = torch.randn(6, 8, requires_grad=True)
    state = make_state(1, 2)
    compiled = aot_function(lambda x, w, state: tinybig_cuda.masked_linear(x, w, 0.5, state), fw_compiler=nop, bw_compiler=keep_backward)
    compiled(x, w, state).sum().backward()
    assert "masked_linear_backward_input" in graphs[0] and "masked_linear_backward_weight" in graphs[0]
    assert "bernoulli_mask_apply" not in graphs[0]


def saved_bytes(function):
    """Bytes of the tensors autograd saves for the backward of function(), split into those that
    are new (kept alive only by the graph) and those that share an input's storage."""
    new, inputs = [], []

    def pack(tensor):
        (new if tensor.untyped_storage().data_ptr() not in pack.input_storages else inputs).append(
            tensor.numel() * tensor.element_size())
        return tensor

    def run(*tensors):
        pack.input_storages = {t.untyped_storage().data_ptr() for t in tensors}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            function(*tensors)
        return sum(new), sum(inputs)
    return run


def test_backward_keeps_no_weight_sized_tensor(device):
    x = random_values((16, 256), torch.float32, device).requires_grad_()
    w = random_values((512, 256), torch.float32, device).requires_grad_()
    state = make_state(1, 2, device)
    new, of_inputs = saved_bytes(lambda x, w, state: tinybig_cuda.masked_linear(x, w, 0.5, state))(x, w, state)
    assert new == 0
    assert of_inputs == x.numel() * 4 + w.numel() * 4 + 16  # x, the parameter itself, the state
    # The way it replaces keeps a masked copy of the weight.
    new, _ = saved_bytes(lambda x, w, state: reference(x, w, 0.5, state))(x, w, state)
    assert new >= w.numel() * 4


@requires_opcheck
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    x = random_values((4, 3, 24), torch.float32, device, seed=1).requires_grad_(requires_grad)
    w = random_values((40, 24), torch.float32, device, seed=2).requires_grad_(requires_grad)
    bias = random_values((40,), torch.float32, device, seed=3).requires_grad_(requires_grad)
    state = make_state(5, 6, device)
    torch.library.opcheck(OP, (x, w, 0.5, state, bias))
    torch.library.opcheck(OP, (x[0, 0], w, 0.25, state))
    grad_y = random_values((4, 3, 40), torch.float32, device, seed=4)
    torch.library.opcheck(BACKWARD_INPUT, (grad_y, w.detach(), 0.5, state))
    torch.library.opcheck(BACKWARD_WEIGHT, (grad_y, x.detach(), 0.5, state))


@pytest.mark.parametrize("x_shape, w_shape", [((0, 8), (5, 8)), ((3, 8), (0, 8)), ((3, 0), (5, 0)), ((2, 0, 8), (5, 8))])
def test_empty_sizes(x_shape, w_shape):
    x = torch.randn(x_shape, requires_grad=True)
    w = torch.randn(w_shape, requires_grad=True)
    bias = torch.randn(w_shape[:1], requires_grad=True)
    state = make_state(1, 2)
    y = tinybig_cuda.masked_linear(x, w, 0.5, state, bias)
    torch.testing.assert_close(y, reference(x, w, 0.5, state, bias))
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape and bias.grad.shape == bias.shape
    if w_shape[0] == 0:
        assert not x.grad.any()
    if x.numel() == 0:
        assert not w.grad.any()


BAD_ARGUMENTS = [
    (dict(w=torch.zeros(4, 3, dtype=torch.int32)), TypeError, error_pattern("w", "float32", "(Int|int32)")),
    (dict(w=torch.zeros(12)), ValueError, error_pattern("w", r"\(out_features, in_features\)", r"\[12\]")),
    (dict(x=torch.zeros(2, 3, dtype=torch.float64)), TypeError, error_pattern("x", "dtype", "(Double|float64)")),
    (dict(x=torch.zeros(2, 5)), ValueError, error_pattern("x", r"\(\.\.\., 3\)", r"\[2, 5\]")),
    (dict(bias=torch.zeros(5)), ValueError, error_pattern("bias", r"\(4,\)", r"\[5\]")),
    (dict(p=1.5), ValueError, error_pattern("p", r"\[0, 1\]", "1.5")),
    (dict(rng_state=torch.zeros(3, dtype=torch.int64)), ValueError, error_pattern("rng_state", r"\[2\]", r"\[3\]")),
    (dict(rng_state=torch.zeros(2)), TypeError, error_pattern("rng_state", "int64", "(Float|float32)")),
]


@pytest.mark.parametrize("mode", ["eager", "fake"])
@pytest.mark.parametrize("bad, error, pattern", BAD_ARGUMENTS)
def test_bad_arguments_are_named_in_the_kernel_and_the_fake_kernel(mode, bad, error, pattern):
    arguments = dict(x=torch.zeros(2, 3), w=torch.zeros(4, 3), p=0.5, rng_state=make_state(1, 2), bias=torch.zeros(4))
    arguments.update(bad)
    if mode == "fake":
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode() as fake_mode:
            arguments = {k: fake_mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in arguments.items()}
            with pytest.raises(error, match=pattern):
                OP(arguments["x"], arguments["w"], arguments["p"], arguments["rng_state"], arguments["bias"])
    else:
        with pytest.raises(error, match=pattern):
            tinybig_cuda.masked_linear(**arguments)


@requires_compile
def test_compile_fullgraph_forward_and_backward_equal_eager():
    torch._dynamo.reset()
    x = random_values((6, 40), torch.float32, seed=1).requires_grad_()
    w = random_values((30, 40), torch.float32, seed=2).requires_grad_()
    bias = random_values((30,), torch.float32, seed=3).requires_grad_()
    state = make_state(9, 10)

    def step(x, w, bias, state):
        return torch.tanh(tinybig_cuda.masked_linear(x, w, 0.5, state, bias)).sum()

    for backend in ("aot_eager", "inductor"):
        compiled = torch.compile(step, backend=backend, fullgraph=True)
        loss = compiled(x, w, bias, state)
        grads = torch.autograd.grad(loss, (x, w, bias))
        expected_loss = step(x, w, bias, state)
        expected_grads = torch.autograd.grad(expected_loss, (x, w, bias))
        torch.testing.assert_close(loss, expected_loss)
        for grad, expected in zip(grads, expected_grads):
            torch.testing.assert_close(grad, expected)


@requires_compile
def test_export_keeps_the_op_and_runs():
    module = tinybig_cuda.MaskedLinear(12, 8)
    x = torch.randn(3, 12)
    exported = torch.export.export(module, (x,), strict=False)
    assert "tinybig_cuda.masked_linear" in str(exported.graph)
    torch.testing.assert_close(exported.module()(x), module(x))


# ---------------------------------------------------------------- MaskedLinear


def test_masked_linear_module_is_a_linear_with_its_state_in_the_state_dict():
    torch.manual_seed(0)
    module = tinybig_cuda.MaskedLinear(20, 10, p=0.3)
    assert isinstance(module, torch.nn.Linear)
    assert set(module.state_dict()) == {"weight", "bias", "rng_state"}
    x = torch.randn(4, 20)
    torch.testing.assert_close(module(x), reference(x, module.weight, 0.3, module.rng_state, module.bias))
    assert torch.equal(module(x), module(x))  # a fixed mask
    # Reloaded into another module: the same function.
    other = tinybig_cuda.MaskedLinear(20, 10, p=0.3)
    assert not torch.equal(other.rng_state, module.rng_state)
    other.load_state_dict(module.state_dict())
    assert torch.equal(other(x), module(x))
    # One seed, one module.
    torch.manual_seed(0)
    assert torch.equal(tinybig_cuda.MaskedLinear(20, 10, p=0.3).rng_state, module.rng_state)
    assert "p=0.3, fixed_mask=True" in repr(module)


def test_masked_linear_module_fresh_masks():
    module = tinybig_cuda.MaskedLinear(30, 20, bias=False, p=0.5, fixed_mask=False)
    assert "rng_state" not in module.state_dict()
    x = torch.randn(3, 30)
    first = module(x)
    state = module.rng_state.clone()
    first.sum().backward()
    # The backward used that call's state, whatever later calls draw.
    expected_w = torch.autograd.grad(reference(x, module.weight, 0.5, state).sum(), module.weight)[0]
    torch.testing.assert_close(module.weight.grad, expected_w)
    assert not torch.equal(module(x), first)


@requires_compile
def test_masked_linear_module_compiles_fullgraph():
    torch._dynamo.reset()
    for fixed_mask in (True, False):
        module = tinybig_cuda.MaskedLinear(16, 8, fixed_mask=fixed_mask)
        compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
        x = torch.randn(5, 16)
        y = compiled(x)
        torch.testing.assert_close(y, reference(x, module.weight, 0.5, module.rng_state, module.bias))
        y.sum().backward()
        assert module.weight.grad is not None


def test_masked_linear_module_deferred_init_draws_its_state_at_reset_parameters():
    with torch.device("meta"):
        module = tinybig_cuda.MaskedLinear(6, 4)
    assert module.rng_state.device.type == "meta"
    module.to_empty(device="cpu")
    torch.manual_seed(3)
    module.reset_parameters()
    torch.manual_seed(3)
    assert torch.equal(module.rng_state, tinybig_cuda.MaskedLinear(6, 4).rng_state)


def test_masked_linear_module_names_a_bad_p():
    with pytest.raises(ValueError, match=error_pattern("p", r"\[0, 1\]", "2")):
        tinybig_cuda.MaskedLinear(3, 2, p=2)


# ---------------------------------------------------------------- dropconnect


def test_dropconnect_on_an_lstm_draws_a_mask_per_forward_and_is_removed_like_weight_norm():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(8, 16)
    original = lstm.weight_hh_l0.detach().clone()
    assert tinybig_cuda.dropconnect(lstm, "weight_hh_l0", p=0.7) is lstm
    assert parametrize.is_parametrized(lstm, "weight_hh_l0")
    assert "parametrizations.weight_hh_l0.original" in dict(lstm.named_parameters())
    x = torch.randn(5, 2, 8)
    output, _ = lstm(x)
    state = lstm.parametrizations.weight_hh_l0[0].rng_state.clone()
    # That forward ran with the masked recurrent weight.
    plain = torch.nn.LSTM(8, 16)
    plain.load_state_dict({k.replace("parametrizations.weight_hh_l0.original", "weight_hh_l0"): v
                           for k, v in lstm.state_dict().items()})
    with torch.no_grad():
        plain.weight_hh_l0.copy_(tinybig_cuda.bernoulli_mask_apply(original, 0.7, state))
    torch.testing.assert_close(output, plain(x)[0])
    output.sum().backward()
    assert lstm.parametrizations.weight_hh_l0.original.grad is not None
    assert not torch.equal(lstm(x)[0], output)  # a fresh mask
    parametrize.remove_parametrizations(lstm, "weight_hh_l0", leave_parametrized=False)
    assert not parametrize.is_parametrized(lstm)
    assert torch.equal(lstm.weight_hh_l0.detach(), original)


@pytest.mark.parametrize("make", [lambda: torch.nn.Conv2d(3, 4, 3), lambda: torch.nn.Embedding(10, 6)], ids=["conv2d", "embedding"])
def test_dropconnect_fixed_mask_on_conv_and_embedding(make):
    module = tinybig_cuda.dropconnect(make(), p=0.5, fixed_mask=True)
    parametrization = module.parametrizations.weight[0]
    assert "parametrizations.weight.0.rng_state" in module.state_dict()
    original = module.parametrizations.weight.original
    expected = tinybig_cuda.bernoulli_mask_apply(original, 0.5, parametrization.rng_state)
    assert_bitwise_equal(module.weight, expected)
    assert_bitwise_equal(module.weight, expected)  # the same mask at every access
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    assert_bitwise_equal(module.weight.detach(), expected.detach())


def test_dropconnect_names_bad_arguments():
    with pytest.raises(ValueError, match=error_pattern("name", "parameter", "weight_xx")):
        tinybig_cuda.dropconnect(torch.nn.Linear(2, 2), "weight_xx")
    with pytest.raises(ValueError, match=error_pattern("p", r"\[0, 1\]", "-0.5")):
        tinybig_cuda.dropconnect(torch.nn.Linear(2, 2), p=-0.5)
