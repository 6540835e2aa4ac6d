"""torch.compile(fullgraph=True): same bits as eager, and one compilation for every rng_state."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import tinybig_cuda

from conftest import DEVICES, assert_bitwise_equal, make_state, random_bits

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


KEEP_PROBABILITIES = [0.05 + 0.075 * k for k in range(12)]  # a keep-probability schedule


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
