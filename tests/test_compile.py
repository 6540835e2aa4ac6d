"""torch.compile: the same bits as eager, one compilation for every rng_state and (with dynamic=True)
for every size and offset, and fresh masks drawn inside a compiled graph."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import tinybig_cuda
from tinybig_cuda import bernoulli_mask, bernoulli_mask_apply, masking_reconciliation, reference

from conftest import DEVICES, assert_bitwise_equal, make_state, random_bits, requires_compile

# Inductor runs torch.jit.script on parts of torch itself; the warnings are torch's, not this package's.
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning"), requires_compile]

STATES = [(0, 0), (-1, -1), (2**63 - 1, -(2**63)), (12345, 67890)]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_op_equals_eager_and_compiles_once(device):
    counter = CompileCounterWithBackend("inductor")

    def masked_and_grad_free(w, state):
        return tinybig_cuda.bernoulli_mask_apply(w, 0.5, state), tinybig_cuda.bernoulli_mask(w.shape, 0.5, state)

    compiled = torch.compile(masked_and_grad_free, backend=counter, fullgraph=True)
    w = random_bits((37, 129), torch.float32, device, seed=2)
    for seed, offset in STATES:
        state = make_state(seed, offset, device)
        out, mask = compiled(w, state)
        eager_out, eager_mask = masked_and_grad_free(w, state)
        assert_bitwise_equal(out, eager_out)
        assert torch.equal(mask, eager_mask)
        assert out.is_contiguous()
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times for {len(STATES)} states"


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_transposed_input_and_backward_equal_eager(device):
    counter = CompileCounterWithBackend("aot_eager")

    def step(w, state):
        out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
        return out * 3.0

    compiled = torch.compile(step, backend=counter, fullgraph=True)
    base = torch.randn(129, 37, dtype=torch.float64, device=device)
    for seed, offset in STATES:
        state = make_state(seed, offset, device)
        w_compiled = base.clone().t().requires_grad_()
        w_eager = base.clone().t().requires_grad_()
        out = compiled(w_compiled, state)
        expected = step(w_eager, state)
        assert out.stride() == expected.stride()
        assert_bitwise_equal(out, expected)
        out.sum().backward()
        expected.sum().backward()
        assert_bitwise_equal(w_compiled.grad, w_eager.grad)
    assert counter.frame_count == 1


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_fixed_mask_module_equals_eager_and_compiles_once(device):
    """A module's state changed in place (as load_state_dict does) is read, not baked in."""
    counter = CompileCounterWithBackend("inductor")
    module = tinybig_cuda.masking_reconciliation(p=0.5, fixed_mask=True, device=device)
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    w = random_bits((1, 12 * 10), torch.float16, device, seed=8)
    previous = None
    for seed, offset in STATES:
        with torch.no_grad():
            module.rng_state.copy_(make_state(seed, offset, device))
        out = compiled(w=w, n=12, D=10, device=device)
        assert_bitwise_equal(out, module(w=w, n=12, D=10, device=device))
        if previous is not None:
            assert not torch.equal(out, previous)
        previous = out
    assert counter.frame_count == 1


# ---------------------------------------------------------------- modules and fresh states


def fabricate(fabrication, w, n, D):
    return fabrication(w=w, n=n, D=D)


def test_compile_fullgraph_fixed_mask_equals_eager_forward_and_backward():
    torch.manual_seed(0)
    fabrication = masking_reconciliation(p=0.5, fixed_mask=True)
    w_eager = torch.randn(1, 6 * 8, requires_grad=True)
    w_compiled = w_eager.detach().clone().requires_grad_()
    compiled = torch.compile(fabricate, fullgraph=True)  # inductor

    eager_out = fabricate(fabrication, w_eager, 6, 8)
    compiled_out = compiled(fabrication, w_compiled, 6, 8)
    assert torch.equal(compiled_out, eager_out)
    upstream = torch.randn(6, 8)
    eager_out.backward(upstream)
    compiled_out.backward(upstream)
    assert torch.equal(w_compiled.grad, w_eager.grad)


def test_compiled_fixed_mask_reads_the_state_buffer_without_recompiling():
    # rng_state is a tensor argument: writing a new state into the buffer changes the mask of the
    # compiled function, with one graph for every seed.
    fabrication = masking_reconciliation(p=0.5, fixed_mask=True)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fabricate, backend=counter, fullgraph=True)
    w = torch.randn(1, 40)
    for seed in range(4):
        fabrication.rng_state.copy_(torch.tensor([seed, 1000 + seed]))
        out = compiled(fabrication, w, 5, 8)
        assert torch.equal(out, reference.bernoulli_mask_apply(w.view(5, 8), 0.5, fabrication.rng_state))
    assert counter.frame_count == 1


def test_compile_dynamic_shapes_give_the_reference_masks():
    state = torch.tensor([3, 4])
    compiled = torch.compile(lambda w, start: bernoulli_mask_apply(w[start:], 0.5, state, element_offset=start * w.shape[1]),
                             backend="aot_eager", dynamic=True, fullgraph=True)
    for rows, cols, start in [(8, 5, 2), (9, 7, 3), (12, 6, 5), (10, 11, 1)]:
        w = torch.randn(rows, cols)
        assert torch.equal(compiled(w, start), reference.bernoulli_mask_apply(w[start:], 0.5, state, start * cols))


def test_compile_dynamic_offsets_and_shapes_compile_once():
    state = torch.tensor([3, 4])
    shard_counter = CompileCounterWithBackend("aot_eager")
    shard = torch.compile(lambda w, start: bernoulli_mask_apply(w[start:], 0.5, state, element_offset=start * w.shape[1]),
                          backend=shard_counter, dynamic=True)
    mask_counter = CompileCounterWithBackend("aot_eager")
    mask = torch.compile(lambda w: bernoulli_mask(w.shape, 0.5, state) & (w > 0), backend=mask_counter, dynamic=True)
    for rows, cols, start in [(8, 5, 2), (9, 7, 3), (12, 6, 5), (10, 11, 1)]:
        shard(torch.randn(rows, cols), start)
        mask(torch.randn(rows, cols))
    assert (shard_counter.frame_count, mask_counter.frame_count) == (1, 1)


def test_compile_fullgraph_fresh_state_drawn_in_the_graph():
    # What a compiled graph does with a fresh state drawn inside it (torch.randint, which Dynamo
    # traces): a new mask per call, reproducible under torch.manual_seed, but drawn by the
    # compiler's RNG, so not the state that eager mode draws after the same manual_seed.
    def masked_with_fresh_state(w):
        state = torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64)
        return bernoulli_mask_apply(w, 0.5, state), state

    compiled = torch.compile(masked_with_fresh_state, fullgraph=True)
    w = torch.randn(7, 9)
    torch.manual_seed(4)
    first, first_state = compiled(w)
    second, second_state = compiled(w)
    torch.manual_seed(4)
    replay, replay_state = compiled(w)

    assert not torch.equal(first_state, second_state) and not torch.equal(first, second)
    assert torch.equal(replay_state, first_state) and torch.equal(replay, first)
    assert torch.equal(first, reference.bernoulli_mask_apply(w, 0.5, first_state))


def _fresh_mask_calls(call, w):
    """Two calls of a fixed_mask=False module; returns (outputs, states, w's gradient of the first)."""
    fabrication = masking_reconciliation(p=0.5, fixed_mask=False)
    first = call(fabrication, w, 6, 8)
    first_state = fabrication.rng_state.clone()
    second = call(fabrication, w, 6, 8)
    second_state = fabrication.rng_state.clone()
    first.sum().backward()
    return (first, second), (first_state, second_state), w.grad


def _check_fresh_calls(w, outputs, states, grad):
    assert not torch.equal(states[0], states[1])
    for out, state in zip(outputs, states):
        assert torch.equal(out, reference.bernoulli_mask_apply(w.detach().view(6, 8), 0.5, state))
    # The backward of the first call used the first call's state, not the latest one.
    assert torch.equal(grad.view(6, 8), reference.bernoulli_mask((6, 8), 0.5, states[0]).to(grad.dtype))


def test_compile_fresh_mask_module_with_graph_breaks():
    w = torch.randn(1, 48, requires_grad=True)
    counter = CompileCounterWithBackend("aot_eager")
    _check_fresh_calls(w, *_fresh_mask_calls(torch.compile(fabricate, backend=counter), w))


def test_compile_fullgraph_fresh_mask_module():
    w = torch.randn(1, 48, requires_grad=True)
    _check_fresh_calls(w, *_fresh_mask_calls(torch.compile(fabricate, backend="aot_eager", fullgraph=True), w))


KEEP_PROBABILITIES = [0.05 + 0.075 * k for k in range(12)]  # a keep-probability schedule
# Where TorchDynamo specialises every float argument (torch 2.4 does, 2.6 and later do not), each
# value of p compiles a graph of its own.
requires_symbolic_floats = pytest.mark.skipif(
    getattr(torch._dynamo.config, "specialize_float", True),
    reason=f"torch {torch.__version__} compiles a graph per float value (torch._dynamo.config.specialize_float)",
)


@requires_symbolic_floats
@pytest.mark.parametrize("device", DEVICES)
def test_changing_module_p_compiles_at_most_twice(device):
    """p stays a Python float in the API; torch.compile traces it as a symbolic float after its
    first change, and the op gets it as data (a tensor), so no value of p gets a graph of its own."""
    counter = CompileCounterWithBackend("inductor")
    module = tinybig_cuda.masking_reconciliation(p=0.5, fixed_mask=True, device=device)
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    base = random_bits((1, 12 * 10), torch.float32, device, seed=9)
    for p in KEEP_PROBABILITIES:
        module.p = p
        assert type(module.p) is float
        w_compiled = base.clone().requires_grad_()
        w_eager = base.clone().requires_grad_()
        out = compiled(w=w_compiled, n=12, D=10, device=device)
        expected = module(w=w_eager, n=12, D=10, device=device)
        assert_bitwise_equal(out, expected)
        out.sum().backward()
        expected.sum().backward()
        assert_bitwise_equal(w_compiled.grad, w_eager.grad)
    assert counter.frame_count <= 2, f"compiled {counter.frame_count} times for {len(KEEP_PROBABILITIES)} values of p"


@requires_symbolic_floats
@pytest.mark.parametrize("device", DEVICES)
def test_changing_functional_p_compiles_at_most_twice(device):
    counter = CompileCounterWithBackend("aot_eager")

    def masked(w, p, state):
        return tinybig_cuda.bernoulli_mask_apply(w, p, state) * 2.0

    compiled = torch.compile(masked, backend=counter, fullgraph=True)
    w = random_bits((37, 129), torch.float64, device, seed=10)
    state = make_state(5, 6, device)
    for p in KEEP_PROBABILITIES:
        assert_bitwise_equal(compiled(w, p, state), masked(w, p, state))
    assert counter.frame_count <= 2


def test_p_as_data_is_checked_by_the_kernel():
    # Out of [0, 1] p is refused when it runs, with the op's own message (it cannot be a guard).
    state = make_state(1, 2)
    with pytest.raises(ValueError, match="expected p, the keep probability, in \\[0, 1\\], but got 1.5"):
        torch.ops.tinybig_cuda.bernoulli_mask_apply_p_tensor(torch.ones(3), torch.tensor(1.5, dtype=torch.float64), state)
    with pytest.raises(ValueError, match="expected p as one float on the CPU"):
        torch.ops.tinybig_cuda.bernoulli_mask_apply_p_tensor(torch.ones(3), torch.tensor([0.5, 0.5]), state)


def test_bad_p_under_fullgraph_raises_the_named_error():
    # p goes into the graph as data and the kernel refuses it when the graph runs: the op's own
    # ValueError, not dynamo's Unsupported for an exception raised while tracing.
    torch._dynamo.reset()
    compiled = torch.compile(lambda w, state: tinybig_cuda.bernoulli_mask_apply(w, 1.5, state), backend="aot_eager", fullgraph=True)
    with pytest.raises(ValueError, match="bernoulli_mask_apply: expected p, the keep probability, in \\[0, 1\\], but got 1.5"):
        compiled(torch.ones(3), make_state(1, 2))

# ---------------------------------------------------------------- compact parameters


def test_compiled_compact_module_matches_eager():
    torch.manual_seed(0)
    module = masking_reconciliation(p=0.4, compact=True)
    n, D = 33, 17
    w = torch.randn(1, module.calculate_l(n, D), requires_grad=True)

    def step(w):
        return (module(w=w, n=n, D=D) ** 2).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_loss = step(w)
    (eager_grad,) = torch.autograd.grad(eager_loss, w)
    compiled_loss = compiled(w)
    (compiled_grad,) = torch.autograd.grad(compiled_loss, w)
    assert torch.equal(compiled_loss, eager_loss) and torch.equal(compiled_grad, eager_grad)
