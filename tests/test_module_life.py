"""A module's life, as hypothesis draws it: a construction (on the CPU, on the meta device then
FSDP2's to_empty and reset_parameters, or under FakeTensorMode), then a random sequence of calls
(with grad, no_grad, inference_mode, a meta w, compiled), reset_parameters, state_dict saved and
loaded, .to(), copy.deepcopy and pickling. After every step the state is a plain int64 [2] tensor
on the CPU (docs/contract.md, 'Module state': nothing here moves it to another device), a fixed
state has the value the steps say it has, and every real call's output is the contract's mask of
that state, bit for bit (tinybig_cuda.reference is an independent Philox).

Compiled calls cost about a second each, so the main test draws none; test_module_life_compiled
draws a few short lives with them.
"""

import copy
import io
import pickle

import numpy as np
import pytest
import torch
import torch._dynamo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinybig_cuda import masking_reconciliation, reference

from conftest import assert_bitwise_equal, random_values, requires_compile

SIZES = st.sampled_from([(1, 1), (3, 4), (5, 7), (0, 3), (16, 9)])
CALLS = ["grad", "no_grad", "inference_mode", "meta", "checked"]
OTHER_STEPS = ["reset_parameters", "state_dict", "to_float64", "to_cpu", "deepcopy", "pickle"]
LIFE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Life:
    """The module and what its state must be (None for a fresh-mask module: each call's own)."""

    def __init__(self, construction, p, fixed_mask):
        self.p, self.fixed_mask = p, fixed_mask
        if construction == "meta":  # FSDP2's deferred init
            with torch.device("meta"):
                self.module = masking_reconciliation(p=p, fixed_mask=fixed_mask)
            assert self.module.rng_state.is_meta
            self.module.to_empty(device="cpu")
            self.module.reset_parameters()
        else:
            self.module = masking_reconciliation(p=p, fixed_mask=fixed_mask)
        self.state = self.module.rng_state.tolist() if fixed_mask else None

    def check(self):
        state = self.module.rng_state
        assert type(state) is torch.Tensor and state.dtype == torch.int64 and state.shape == (2,)
        assert state.device.type == "cpu" and not state.is_inference() and not state.requires_grad
        if self.fixed_mask:
            assert state.tolist() == self.state

    def call(self, kind, size, seed):
        n, D = size
        module = self.module
        w = random_values((1, n * D), torch.float32, seed=seed)
        if kind == "meta":
            before = module.rng_state.clone()
            out = module(n, D, w.to("meta"))
            assert out.shape == (n, D) and out.is_meta
            assert torch.equal(module.rng_state, before)
            return
        if kind == "grad":
            w.requires_grad_()
            out = module(w=w, n=n, D=D, device="cpu")
        elif kind == "compiled":
            torch._dynamo.reset()
            out = torch.compile(module, backend="aot_eager", fullgraph=True)(w=w, n=n, D=D)
        elif kind == "checked":  # NumPy sizes take the checked Python path
            out = module(np.int64(n), np.int64(D), w)
        else:
            with torch.no_grad() if kind == "no_grad" else torch.inference_mode():
                out = module(n, D, w)
        # A fresh-mask call keeps its state: the output shows whether it kept the one it used.
        state = module.rng_state if self.state is None else torch.tensor(self.state)
        expected = reference.bernoulli_mask_apply(w.detach().view(n, D), self.p, state)
        assert_bitwise_equal(out.detach(), expected)
        if kind == "grad":
            out.sum().backward()
            assert_bitwise_equal(w.grad, (expected != 0).float().view(1, -1))

    def step(self, kind):
        module = self.module
        if kind == "reset_parameters":
            module.reset_parameters()
            if self.fixed_mask:
                self.state = module.rng_state.tolist()
        elif kind == "state_dict":
            buffer = io.BytesIO()
            torch.save(module.state_dict(), buffer)
            buffer.seek(0)
            self.module = masking_reconciliation(p=self.p, fixed_mask=self.fixed_mask)
            self.module.load_state_dict(torch.load(buffer))
        elif kind == "to_float64":
            module.to(torch.float64)
        elif kind == "to_cpu":
            module.to("cpu")
        elif kind == "deepcopy":
            self.module = copy.deepcopy(module)
            assert self.module.rng_state.data_ptr() != module.rng_state.data_ptr()
        elif kind == "pickle":
            self.module = pickle.loads(pickle.dumps(module))


def steps(calls):
    call = st.tuples(st.sampled_from(calls), SIZES, st.integers(0, 2**16))
    return st.lists(st.one_of(call, st.sampled_from(OTHER_STEPS)), max_size=12)


def live(construction, p, fixed_mask, sequence):
    life = Life(construction, p, fixed_mask)
    life.check()
    for step in sequence:
        if isinstance(step, tuple):
            life.call(*step)
        else:
            life.step(step)
        life.check()


@LIFE
@given(
    construction=st.sampled_from(["cpu", "meta"]),
    p=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    fixed_mask=st.booleans(),
    sequence=steps(CALLS),
)
def test_module_life(construction, p, fixed_mask, sequence):
    live(construction, p, fixed_mask, sequence)


@requires_compile
@settings(LIFE, max_examples=4)
@given(fixed_mask=st.booleans(), sequence=steps(CALLS + ["compiled"]).filter(lambda s: sum(x[0] == "compiled" for x in s if isinstance(x, tuple)) <= 2))
def test_module_life_compiled(fixed_mask, sequence):
    live("cpu", 0.5, fixed_mask, [("compiled", (3, 4), 1)] + sequence)
    torch._dynamo.reset()


@LIFE
@given(fixed_mask=st.booleans(), sequence=st.lists(st.sampled_from(["grad", "no_grad", "inference_mode", "meta", "reset_parameters", "to_float64"]), max_size=8))
def test_module_life_under_fake_tensor_mode(fixed_mask, sequence):
    """Under FakeTensorMode the state has no value to check, but it is still a fake int64 [2] CPU
    tensor after every step."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        module = masking_reconciliation(p=0.5, fixed_mask=fixed_mask)
        for step in sequence:
            if step == "reset_parameters":
                module.reset_parameters()
            elif step == "to_float64":
                module.to(torch.float64)
            else:
                w = torch.empty(1, 12, device="meta" if step == "meta" else "cpu", requires_grad=step == "grad")
                with torch.no_grad() if step == "no_grad" else torch.inference_mode(step == "inference_mode"):
                    out = module(3, 4, w)
                assert out.shape == (3, 4)
            state = module.rng_state
            assert isinstance(state, FakeTensor) and state.dtype == torch.int64 and state.shape == (2,)
            assert state.device.type == "cpu" and not state.is_inference()
