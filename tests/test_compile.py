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
