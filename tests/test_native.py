"""Builds the torch-free C++ tests with CMake and runs them with ctest: the Philox known-answer
vectors, threshold edges, every CPU instruction-set path against the scalar one, and the CUDA
kernel's per-thread body run on the host for simulated launches."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(command, cwd):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_ctest_passes(tmp_path):
    if shutil.which("cmake") is None or shutil.which("ctest") is None:
        pytest.fail("cmake and ctest are needed to build and run the C++ tests")
    build = tmp_path / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", REPO, "-B", build, *generator], REPO)
    run(["cmake", "--build", build], REPO)
    output = run(["ctest", "--test-dir", build, "--output-on-failure"], REPO)
    assert "100% tests passed" in output
    for name in ("philox_contract", "cpu_isa_paths", "simulated_cuda_launch"):
        assert name in output, f"ctest did not run {name}"
