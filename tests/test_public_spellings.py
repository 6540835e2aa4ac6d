"""Every public name the documentation spells works after nothing but ``import tinybig_cuda``, in a
fresh interpreter started outside the repository, as a reader who copies it would use it.

The package imports its DTensor support (tinybig_cuda.distributed, which imports
torch.distributed.tensor: about a second) only when it is first needed; these tests reach it each
documented way first, in a process where nothing else has imported it."""

import re
from pathlib import Path

import pytest

from conftest import HAS_DTENSOR, requires_dtensor, run_fresh_python

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# tinybig_cuda.a.b, not torch.ops.tinybig_cuda.a (an op, not a Python attribute) or a file path.
SPELLING = re.compile(r"(?<![\w./])tinybig_cuda((?:\.[A-Za-z_]\w*)+)")


def documented_spellings():
    found = set()
    for document in DOCUMENTS:
        for match in SPELLING.finditer(document.read_text()):
            found.add("tinybig_cuda" + match.group(1))
    return sorted(found)


def test_the_documents_spell_public_names():
    # The scan must see the names the README is about, or the next test checks nothing.
    spellings = documented_spellings()
    for name in ("tinybig_cuda.bernoulli_mask_apply", "tinybig_cuda.masking_reconciliation",
                 "tinybig_cuda.distributed.broadcast_rng_states"):
        assert name in spellings


def _needs_dtensor(spelling):
    return spelling.startswith("tinybig_cuda.distributed")


@pytest.mark.slow  # a fresh interpreter per name
@pytest.mark.parametrize(
    "spelling", [pytest.param(s, marks=[requires_dtensor] if _needs_dtensor(s) else []) for s in documented_spellings()]
)
def test_documented_spelling_resolves_after_import_tinybig(spelling, tmp_path):
    attributes = spelling.split(".")[1:]
    code = ("import tinybig_cuda\n"
            "value = tinybig_cuda\n"
            f"for attribute in {attributes!r}:\n"
            "    value = getattr(value, attribute)\n")
    run_fresh_python(code, tmp_path)


# A process group of one, as torchrun would make it, so that the collectives run in one process.
ONE_PROCESS_GROUP = """
import torch
import torch.distributed as dist
dist.init_process_group("gloo", init_method="file://{store}", rank=0, world_size=1)
"""


@pytest.mark.skipif(HAS_DTENSOR, reason="this torch has DTensor")
def test_dtensor_support_on_an_older_torch_names_the_torch_that_has_it(tmp_path):
    code = """
import torch, tinybig_cuda
try:
    tinybig_cuda.distributed
except RuntimeError as error:
    assert "needs torch 2.5 or newer" in str(error) and torch.__version__ in str(error), error
else:
    raise AssertionError("no error")
"""
    run_fresh_python(code, tmp_path)


@requires_dtensor
def test_broadcast_rng_states_after_import_tinybig(tmp_path):
    code = "import tinybig_cuda\n" + ONE_PROCESS_GROUP.format(store=tmp_path / "store") + """
model = torch.nn.ModuleList([tinybig_cuda.masking_reconciliation(p=0.5) for _ in range(2)])
assert tinybig_cuda.distributed.broadcast_rng_states(model) == 2
dist.destroy_process_group()
"""
    run_fresh_python(code, tmp_path)


@requires_dtensor
@pytest.mark.parametrize("entry", ["bernoulli_mask_apply", "masking_reconciliation", "bernoulli_mask"])
def test_first_dtensor_reaching_an_entry_point_after_import_tinybig(entry, tmp_path):
    """DTensor imported after tinybig_cuda, so that its rules are registered at the first DTensor
    an entry point sees, not at import."""
    calls = {
        "bernoulli_mask_apply": "out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)",
        "masking_reconciliation": "out = tinybig_cuda.masking_reconciliation(p=0.5)(w=w, n=4, D=6)",
        "bernoulli_mask": "out = tinybig_cuda.bernoulli_mask((4, 6), 0.5, state, device_mesh=mesh, placements=[Shard(1)])",
    }
    code = "import tinybig_cuda\n" + ONE_PROCESS_GROUP.format(store=tmp_path / "store") + f"""
from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh
mesh = init_device_mesh("cpu", (1,))
state = torch.tensor([1, 2])
w = distribute_tensor(torch.randn(4, 6), mesh, [Shard(1)])
{calls[entry]}
assert type(out).__name__ == "DTensor" and out.placements == (Shard(1),), out
dist.destroy_process_group()
"""
    run_fresh_python(code, tmp_path)
