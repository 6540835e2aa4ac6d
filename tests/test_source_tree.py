"""The source tree's two rules (docs/building.md, 'Source layout'): csrc/core/, the torch-free layer,
includes no torch, ATen or c10 header, so its CPU kernels and CUDA per-thread bodies build and run
in the C++ tests without torch; and csrc/sources.txt, the one source list setup.py and
CMakeLists.txt read, puts every source file in exactly one compiled part."""

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.MULTILINE)


def core_includes_of_torch(root):
    """(file, header) for every include of a torch, ATen or c10 header in root/csrc/core, or of a
    header of this package outside core/ (which may include torch)."""
    found = []
    for path in sorted((root / "csrc" / "core").rglob("*")):
        if path.suffix not in (".h", ".cpp", ".cu"):
            continue
        for header in INCLUDE.findall(path.read_text()):
            first = header.split("/")[0]
            if first in ("torch", "ATen", "c10", "caffe2") or (
                (root / "csrc" / header).exists() and first != "core"
            ):
                found.append((str(path.relative_to(root)), header))
    return found


def test_the_torch_free_layer_includes_no_torch_header():
    assert (CSRC / "core").is_dir()
    assert core_includes_of_torch(REPO) == []


def test_the_check_finds_a_torch_header_in_the_torch_free_layer(tmp_path):
    header = tmp_path / "csrc" / "core" / "cpu" / "kernel.h"
    header.parent.mkdir(parents=True)
    (tmp_path / "csrc" / "ops").mkdir()
    (tmp_path / "csrc" / "ops" / "masking.h").write_text("")
    header.write_text('#include <cstdint>\n#include "core/philox_mask.h"\n#  include <ATen/core/Tensor.h>\n#include "ops/masking.h"\n')
    assert core_includes_of_torch(tmp_path) == [
        ("csrc/core/cpu/kernel.h", "ATen/core/Tensor.h"),
        ("csrc/core/cpu/kernel.h", "ops/masking.h"),
    ]


def source_parts():
    """setup.py's source_parts(), which is what it compiles (setup.py builds nothing when it is not
    run as __main__)."""
    code = (
        "setup = {'__file__': 'setup.py', '__name__': 'setup_under_test'}\n"
        "exec(compile(open('setup.py').read(), 'setup.py', 'exec'), setup)\n"
        "import json; print(json.dumps(setup['source_parts']()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_source_file_is_in_exactly_one_part():
    parts = source_parts()
    assert set(parts) == {"core", "core_cuda", "ops", "ops_cuda", "python"}
    listed = [source for sources in parts.values() for source in sources]
    on_disk = sorted(str(path.relative_to(REPO)) for path in CSRC.rglob("*") if path.suffix in (".cpp", ".cu"))
    assert sorted(listed) == on_disk
    assert all(source.startswith("csrc/core/") for source in parts["core"] + parts["core_cuda"])
    assert all(source.endswith(".cu") for source in parts["core_cuda"])
