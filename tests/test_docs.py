"""Every ```python block of README.md and docs/*.md runs as written: pasted into a fresh interpreter
started outside the repository, with nothing defined beforehand.

A block that needs more says so in an HTML comment on the line before its fence, which readers of
the rendered page do not see:

    <!-- docs-test: cuda -->      needs a GPU: skipped, with that reason, where none is visible
    <!-- docs-test: torchrun -->  runs as `torchrun --nproc-per-node 2` would run it (gloo, CPU)
    <!-- docs-test: tinybig -->   needs tinyBIG: skipped where it is not installed, failed instead
                                  where TINYBIG_EXPECT_TINYBIG=1 (the `tinybig` fixture)
    <!-- docs-test: slow -->      left out of the quick loop (pytest -m "not slow")
    <!-- docs-test: compile -->   uses torch.compile or torch.export: skipped, saying why, where this
                                  torch has neither (conftest.py's requires_compile)
    <!-- docs-test: dtensor -->   uses DTensor: skipped, saying why, on a torch before 2.5

Tags combine with commas. Blocks that compile (torch.compile, torch.export) or start processes
are slow.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CUDA_AVAILABLE, requires_compile, requires_dtensor, run_fresh_python

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TAGS = {"cuda", "torchrun", "tinybig", "slow", "compile", "dtensor"}
MARKER = re.compile(r"^<!-- docs-test: ([^>]*?) -->$", re.MULTILINE)
BLOCK = re.compile(r"^(?:<!-- docs-test: ([^>]*?) -->\n)?```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks():
    for document in DOCUMENTS:
        text = document.read_text()
        for match in BLOCK.finditer(text):
            tags = {tag.strip() for tag in (match.group(1) or "").split(",") if tag.strip()}
            line = text.count("\n", 0, match.start(2)) + 1
            marks = [pytest.mark.slow] if {"slow", "torchrun"} & tags else []
            marks += [requires_compile] if "compile" in tags else []
            marks += [requires_dtensor] if "dtensor" in tags else []
            yield pytest.param(tags, match.group(2), id=f"{document.relative_to(ROOT)}:{line}", marks=marks)


BLOCKS = list(python_blocks())


def test_every_marker_is_known_and_stands_before_a_python_block():
    for document in DOCUMENTS:
        text = document.read_text()
        markers = MARKER.findall(text)
        tagged = [match.group(1) for match in BLOCK.finditer(text) if match.group(1) is not None]
        assert markers == tagged, f"{document.name}: a docs-test marker is not on the line before a ```python fence"
        for marker in markers:
            unknown = {tag.strip() for tag in marker.split(",")} - TAGS
            assert not unknown, f"{document.name}: unknown docs-test tag(s) {sorted(unknown)}; known: {sorted(TAGS)}"


def test_every_python_fence_is_collected():
    # A fence the pattern missed (indented, say) would go untested without a word.
    for document in DOCUMENTS:
        text = document.read_text()
        assert len(re.findall(r"^\s*```python", text, re.MULTILINE)) == len(BLOCK.findall(text)), document.name
    assert sum(1 for block in BLOCKS if block.id.startswith("README.md")) >= 3  # the op, the module, tinyBIG


@pytest.mark.parametrize("tags, code", BLOCKS)
def test_python_block_runs_as_written(tags, code, tmp_path, request):
    if "cuda" in tags and not CUDA_AVAILABLE:
        pytest.skip("the block needs a CUDA device")
    if "tinybig" in tags:
        request.getfixturevalue("tinybig")  # skips without tinyBIG, or fails where it is expected
    if "torchrun" not in tags:
        run_fresh_python(code, tmp_path)
        return
    script = tmp_path / "example.py"
    script.write_text(code)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"torchrun exit status {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}", pytrace=False)
