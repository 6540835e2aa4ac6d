"""torch integration beyond torch.compile (tests/test_compile.py): torch.export,
torch.utils.checkpoint, torch.func, and no TorchScript."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import tinybig_cuda
from tinybig_cuda import bernoulli_mask, bernoulli_mask_apply, masking_reconciliation, reference

from conftest import requires_compile

# Inductor and export script parts of torch itself; the warnings are theirs, not this package's.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")


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


# ---- torch.export -------------------------------------------------------------------------------

@requires_compile
def test_export_fixed_mask_head_save_load_and_run(tmp_path):
    torch.manual_seed(0)
    head = MaskedHead()
    x = torch.randn(4, 5)
    expected = head(x)

    program = torch.export.export(head, (x,), strict=False)
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


@requires_compile
def test_exported_program_follows_a_new_state_in_its_state_dict():
    torch.manual_seed(0)
    head = MaskedHead()
    x = torch.randn(4, 5)
    program = torch.export.export(head, (x,), strict=False)
    head.fabrication.rng_state.copy_(torch.tensor([123, 456]))
    program.state_dict["fabrication.rng_state"].copy_(torch.tensor([123, 456]))
    assert torch.equal(program.module()(x), head(x))


@requires_compile
def test_export_fresh_mask_head():
    head = MaskedHead(fixed_mask=False)
    x = torch.randn(4, 5)
    program = torch.export.export(head, (x,), strict=False)
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
