"""torch integration: torch.compile, torch.export, torch.utils.checkpoint, torch.func, no TorchScript."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend
from torch.utils.checkpoint import checkpoint

import tinybig_cuda
from tinybig_cuda import bernoulli_mask, bernoulli_mask_apply, masking_reconciliation, reference

# Inductor and export script parts of torch itself; the warnings are theirs, not this package's.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")


def fabricate(fabrication, w, n, D):
    return fabrication(w=w, n=n, D=D)


class MaskedHead(torch.nn.Module):
    """A two-channel tinyBIG-style head: F.linear(x, fab(w=w[c:c+1], n=n, D=D), b), summed."""

    def __init__(self, m=5, n=3, channels=2, fixed_mask=True):
        super().__init__()
        self.fabrication = masking_reconciliation(p=0.6, fixed_mask=fixed_mask)
        self.n, self.D, self.channels = n, m, channels
        self.w = torch.nn.Parameter(torch.rand(channels, self.fabrication.calculate_l(n, m)))
        self.b = torch.nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return sum(F.linear(x, self.fabrication(w=self.w[c:c + 1], n=self.n, D=self.D), self.b) for c in range(self.channels))


# ---- torch.compile ------------------------------------------------------------------------------

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


# ---- torch.export -------------------------------------------------------------------------------

def test_export_fixed_mask_head_save_load_and_run(tmp_path):
    torch.manual_seed(0)
    head = MaskedHead()
    x = torch.randn(4, 5)
    expected = head(x)

    program = torch.export.export(head, (x,))
    assert torch.equal(program.module()(x), expected)
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "tinybig_cuda.bernoulli_mask_apply.default" in ops  # kept as the fused op, not decomposed
    # The mask itself is never a constant of the program: only the 16-byte state is.
    assert set(program.state_dict) == {"w", "b", "fabrication.rng_state"}
    assert not program.constants

    path = tmp_path / "head.pt2"
    torch.export.save(program, path)
    assert torch.equal(torch.export.load(path).module()(x), expected)

    # A fresh process needs only `import tinybig_cuda` (which registers the op) to run it.
    torch.save({"x": x, "expected": expected.detach()}, tmp_path / "io.pt")
    script = (
        "import sys, torch, tinybig_cuda\n"
        f"program = torch.export.load({str(path)!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "sys.exit(0 if torch.equal(program.module()(io['x']), io['expected']) else 3)\n"
    )
    # cwd=tmp_path: `python -c` puts the working directory first on sys.path, and the source tree
    # there has no compiled extension.
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr


def test_exported_program_follows_a_new_state_in_its_state_dict():
    torch.manual_seed(0)
    head = MaskedHead()
    x = torch.randn(4, 5)
    program = torch.export.export(head, (x,))
    head.fabrication.rng_state.copy_(torch.tensor([123, 456]))
    program.state_dict["fabrication.rng_state"].copy_(torch.tensor([123, 456]))
    assert torch.equal(program.module()(x), head(x))


def test_export_fresh_mask_head():
    head = MaskedHead(fixed_mask=False)
    x = torch.randn(4, 5)
    program = torch.export.export(head, (x,))
    assert not torch.equal(program.module()(x), program.module()(x))


# ---- torch.utils.checkpoint ---------------------------------------------------------------------

@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("fixed_mask", [True, False])
def test_checkpoint_gives_the_same_outputs_and_gradients(fixed_mask, use_reentrant):
    # With a fresh mask the recomputed forward draws its state again; checkpoint restores torch's
    # RNG first (preserve_rng_state=True), so the recomputation masks with the same state.
    torch.manual_seed(0)
    fabrication = masking_reconciliation(p=0.5, fixed_mask=fixed_mask)
    w = torch.randn(1, 40, requires_grad=True)
    x = torch.randn(3, 8)

    def block(x, w):
        return torch.tanh(F.linear(x, fabrication(w=w, n=5, D=8)))

    torch.manual_seed(5)
    plain = block(x, w)
    plain.square().sum().backward()
    plain_grad, w.grad = w.grad, None

    torch.manual_seed(5)
    recomputed = checkpoint(block, x, w, use_reentrant=use_reentrant)
    recomputed.square().sum().backward()

    assert torch.equal(recomputed, plain)
    assert torch.equal(w.grad, plain_grad)


def test_checkpoint_without_preserved_rng_redraws_fresh_masks():
    # The documented hazard, as with dropout: preserve_rng_state=False lets the recomputation draw
    # another state, so the backward masks differently from the forward. Fixed masks are immune.
    fabrication = masking_reconciliation(p=0.5, fixed_mask=False)
    w = torch.randn(1, 400, requires_grad=True)
    out = checkpoint(lambda w: fabrication(w=w, n=20, D=20), w, use_reentrant=False, preserve_rng_state=False)
    out.sum().backward()
    assert not torch.equal(w.grad.view(20, 20) != 0, out != 0)


# ---- torch.func ---------------------------------------------------------------------------------

VMAP_FALLBACK_WARNING = "ignore:There is a performance drop because we have not yet implemented the batching rule"


@pytest.mark.filterwarnings(VMAP_FALLBACK_WARNING)
@pytest.mark.parametrize("in_dim", [0, 1, 2])
def test_vmap_with_one_state_masks_every_sample_alike(in_dim):
    # No batching rule: torch's fallback runs the op per sample, each a whole matrix starting at
    # element 0, so every sample gets the same mask (what a loop over samples would give).
    state = torch.tensor([5, 7])
    batch = torch.randn(3, 4, 6).movedim(0, in_dim)
    out = torch.func.vmap(lambda w: bernoulli_mask_apply(w, 0.5, state), in_dims=in_dim)(batch)
    samples = batch.movedim(in_dim, 0)
    expected = torch.stack([reference.bernoulli_mask_apply(sample, 0.5, state) for sample in samples])
    assert torch.equal(out, expected)
    assert torch.equal(out[0] != 0, out[1] != 0)


@pytest.mark.filterwarnings(VMAP_FALLBACK_WARNING)
def test_vmap_over_states_gives_each_sample_its_own_mask():
    states = torch.tensor([[1, 2], [3, 4], [-1, 2**40]])
    batch = torch.randn(3, 4, 6)
    out = torch.func.vmap(lambda w, state: bernoulli_mask_apply(w, 0.5, state, 9))(batch, states)
    for sample, state, result in zip(batch, states, out):
        assert torch.equal(result, reference.bernoulli_mask_apply(sample, 0.5, state, 9))
    masks = torch.func.vmap(lambda state: bernoulli_mask((4, 6), 0.5, state))(states)
    for state, mask in zip(states, masks):
        assert torch.equal(mask, reference.bernoulli_mask((4, 6), 0.5, state))


@pytest.mark.filterwarnings(VMAP_FALLBACK_WARNING)
def test_backward_through_vmap():
    state = torch.tensor([5, 7])
    batch = torch.randn(3, 4, 6, requires_grad=True)
    torch.func.vmap(lambda w: bernoulli_mask_apply(w, 0.5, state))(batch).sum().backward()
    mask = reference.bernoulli_mask((4, 6), 0.5, state).float()
    assert torch.equal(batch.grad, mask.expand(3, 4, 6))


def test_func_grad_is_not_supported():
    # torch.func's grad, vjp and jacrev reject C++ autograd Functions with a clear error (as they
    # reject torch.library.register_autograd's). Use torch.autograd instead.
    state = torch.tensor([5, 7])
    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.func.grad(lambda w: bernoulli_mask_apply(w, 0.5, state).sum())(torch.randn(4, 6))


def test_forward_mode_ad_raises_instead_of_dropping_the_tangent():
    # The C++ autograd Function has no jvp: forward-mode AD must fail loudly, never return a zero
    # tangent (which a Python-registered autograd kernel silently did).
    state = torch.tensor([5, 7])
    w, tangent = torch.randn(4, 6), torch.randn(4, 6)
    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.func.jvp(lambda x: bernoulli_mask_apply(x, 0.5, state), (w,), (tangent,))
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(w, tangent)
        with pytest.raises(RuntimeError, match="jvp is not implemented"):
            bernoulli_mask_apply(dual, 0.5, state)


# ---- no TorchScript -----------------------------------------------------------------------------

def test_package_does_not_use_torchscript():
    package = Path(tinybig_cuda.__file__).parent
    for source in package.rglob("*.py"):
        text = source.read_text()
        for marker in ("torch.jit", "@torch.jit", "torchscript"):
            assert marker not in text.lower(), f"{source.name} mentions {marker}"
