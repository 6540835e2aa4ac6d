"""What setup.py says when it cannot see torch: in an isolated build (pip's default), where torch
is installed but hidden from the build, and where torch is not installed at all.

Both are simulated as pip makes an isolated build: a sitecustomize.py on PYTHONPATH drops the
site-packages folders from sys.path and adds an overlay that holds only setuptools."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "setup.py"


def run_setup_without_torch(folder):
    """Runs setup.py with a Python that sees setuptools but not torch; returns its stderr."""
    overlay = folder / "overlay"
    overlay.mkdir(parents=True)
    for name in ("setuptools", "pkg_resources", "_distutils_hack"):
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        (overlay / name).symlink_to(Path(spec.origin).parent)
    site = folder / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.path = [p for p in sys.path if 'site-packages' not in p and 'dist-packages' not in p]\n"
        f"sys.path.append({str(overlay)!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run([sys.executable, str(SETUP), "--name"], cwd=folder, env=env, capture_output=True, text=True)
    assert result.returncode != 0, result.stdout
    return result.stderr


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="setup.py needs setuptools")
def test_isolated_build_says_it_is_isolated_not_that_torch_is_missing(tmp_path):
    message = run_setup_without_torch(tmp_path / "pip-build-env-1234")
    assert "isolated environment" in message, message
    assert "pip install --no-build-isolation ." in message
    assert "Install torch first" not in message and "not installed" not in message


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="setup.py needs setuptools")
def test_build_without_torch_says_torch_is_not_installed(tmp_path):
    message = run_setup_without_torch(tmp_path / "plain")
    assert f"torch is not installed for {sys.executable}" in message, message
    assert "pip install torch && pip install --no-build-isolation ." in message
    assert "isolated" not in message


def test_sources_are_found_when_setup_py_is_named_by_a_relative_path():
    # An older setuptools (65.5, a fresh Python 3.11 venv's) runs setup.py with a relative
    # __file__, and ninja compiles in another folder: a relative include folder then misses.
    code = (
        "setup = {'__file__': 'setup.py', '__name__': 'setup_under_test'}\n"  # not __main__: builds nothing
        "exec(compile(open('setup.py').read(), 'setup.py', 'exec'), setup)\n"
        "assert setup['ROOT'].is_absolute() and (setup['ROOT'] / 'csrc' / 'core' / 'cpu' / 'isa.h').exists(), setup['ROOT']\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=SETUP.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
