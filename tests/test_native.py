"""Builds the torch-free C++ tests with CMake and runs them with ctest: the Philox known-answer
vectors, threshold edges, every CPU instruction-set path against the scalar one, and the CUDA
kernel's per-thread body run on the host for simulated launches. Then the same tests cross-built
for aarch64 and run under QEMU, which checks the NEON path on an x86 machine."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds the C++ tests with CMake (and for aarch64)

REPO = Path(__file__).resolve().parents[1]


def run(command, cwd):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_and_run_ctest(build, *configure_options):
    if shutil.which("cmake") is None or shutil.which("ctest") is None:
        pytest.fail("cmake and ctest are needed to build and run the C++ tests")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", REPO, "-B", build, *generator, *configure_options], REPO)
    run(["cmake", "--build", build], REPO)
    output = run(["ctest", "--test-dir", build, "--output-on-failure", "--verbose"], REPO)
    assert "100% tests passed" in output
    for name in ("philox_contract", "cpu_isa_paths", "simulated_cuda_launch", "masked_matvec",
                 "masked_matvec_simulated_cuda_launch"):
        assert name in output, f"ctest did not run {name}"
    return output


def test_ctest_passes(tmp_path):
    build_and_run_ctest(tmp_path / "build")


AARCH64_TOOLS = ("aarch64-linux-gnu-g++", "qemu-aarch64")


def test_aarch64_ctest_under_qemu_checks_neon(tmp_path):
    """.ci/run installs the tools and sets TINYBIG_EXPECT_AARCH64_CTEST=1, so there this cannot skip."""
    missing = [tool for tool in AARCH64_TOOLS if shutil.which(tool) is None]
    if missing:
        if os.environ.get("TINYBIG_EXPECT_AARCH64_CTEST") == "1":
            pytest.fail(f"TINYBIG_EXPECT_AARCH64_CTEST=1 but {', '.join(missing)} not found")
        pytest.skip(f"{', '.join(missing)} not found (Debian: apt-get install g++-aarch64-linux-gnu qemu-user)")
    output = build_and_run_ctest(tmp_path / "build", "--toolchain", REPO / "cmake" / "aarch64-linux-gnu.cmake")
    assert "neon: checked against scalar" in output
