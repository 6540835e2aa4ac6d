"""Builds tinybig_cuda._C: the CPU kernels always, the CUDA kernels when torch and a toolkit allow.

Environment switches (each one, when set, is printed):
  TINYBIG_CUDA_BUILD=1   build the CUDA kernels, failing loudly if they cannot be built
  TINYBIG_CUDA_BUILD=0   skip the CUDA kernels even where they could be built
  CUDA_HOME              the CUDA toolkit; when unset, /usr/local/cuda is used if it holds nvcc
  TORCH_CUDA_ARCH_LIST   the GPU architectures to compile for (default: the visible GPUs', or
                         8.0;9.0+PTX when none is visible)
  MAX_JOBS               parallel compile jobs (ninja)
  TINYBIG_OPENMP=0       build without OpenMP: the CPU kernels then run on one thread
  OMP_PREFIX             macOS: where libomp's include/omp.h is (otherwise Homebrew's libomp is tried)
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def log(message):
    print(f"[tinybig_cuda setup] {message}", file=sys.stderr, flush=True)


def locate_cuda_home():
    """Sets CUDA_HOME before torch's cpp_extension guesses it from a possibly wrapped nvcc."""
    if os.environ.get("CUDA_HOME"):
        log(f"CUDA_HOME={os.environ['CUDA_HOME']} (from the environment)")
        return
    default = Path("/usr/local/cuda")
    if (default / "bin" / "nvcc").exists():
        os.environ["CUDA_HOME"] = str(default)
        log(f"CUDA_HOME unset: using {default}, which holds bin/nvcc")
    elif shutil.which("nvcc"):
        log(f"CUDA_HOME unset: torch will guess it from nvcc at {shutil.which('nvcc')}")


def decide_cuda_build(torch):
    """Returns (build CUDA?, why) from the environment, the installed torch and the toolkit."""
    request = os.environ.get("TINYBIG_CUDA_BUILD")
    if request == "0":
        return False, "TINYBIG_CUDA_BUILD=0 asks to skip it"
    from torch.utils.cpp_extension import CUDA_HOME

    missing = []
    if torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} is a CPU-only build")
    elif CUDA_HOME is None or not (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        missing.append(f"torch {torch.__version__} has CUDA {torch.version.cuda} but no toolkit (nvcc) was found")
    if request == "1" and missing:
        raise RuntimeError("TINYBIG_CUDA_BUILD=1 but the CUDA kernels cannot be built: " + "; ".join(missing))
    if missing:
        return False, "; ".join(missing)
    why = f"torch {torch.__version__} (CUDA {torch.version.cuda}) and nvcc in {CUDA_HOME}"
    return True, why + (" (TINYBIG_CUDA_BUILD=1)" if request == "1" else "")


OPENMP_PROBE = """
#include <omp.h>
int threads(void) {
  int count = 0;
#pragma omp parallel
  count = omp_get_num_threads();
  return count;
}
"""


def openmp_candidate_flags(torch):
    """The compile and link flags that would enable OpenMP with this platform's compiler."""
    if sys.platform != "darwin":
        return ["-fopenmp"], ["-fopenmp"]
    # Apple clang takes OpenMP only through its preprocessor and ships no libomp: link the libomp
    # that torch's wheel ships (and torch itself uses); omp.h comes from OMP_PREFIX or Homebrew.
    torch_lib = Path(torch.__file__).parent / "lib"
    compile_flags = ["-Xpreprocessor", "-fopenmp"]
    for prefix in (os.environ.get("OMP_PREFIX"), "/opt/homebrew/opt/libomp", "/usr/local/opt/libomp"):
        if prefix and (Path(prefix) / "include" / "omp.h").exists():
            compile_flags.append(f"-I{Path(prefix) / 'include'}")
            break
    return compile_flags, [f"-L{torch_lib}", "-lomp", f"-Wl,-rpath,{torch_lib}"]


def compiles_and_links(compile_flags, link_flags):
    """Whether the compiler setuptools will use builds a small OpenMP library with these flags."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "openmp_probe.cpp"
        source.write_text(OPENMP_PROBE)
        try:
            objects = compiler.compile([str(source)], output_dir=directory, extra_postargs=compile_flags)
            compiler.link_shared_object(objects, str(Path(directory) / "openmp_probe.so"), extra_postargs=link_flags)
        except Exception:  # any compile or link error means: not with these flags
            return False
    return True


def openmp_flags(torch):
    """(compile flags, link flags) for OpenMP, or none, with the reason printed.

    at::parallel_for splits work over threads only when the extension itself is compiled and linked
    with OpenMP (torch's headers use `#pragma omp parallel`); without it every op runs on one thread,
    with the same results."""
    if os.environ.get("TINYBIG_OPENMP") == "0":
        log("OpenMP off (TINYBIG_OPENMP=0): the CPU kernels run on one thread")
        return [], []
    if not torch.backends.openmp.is_available():
        log(f"torch {torch.__version__} was built without OpenMP: the CPU kernels run on one thread")
        return [], []
    compile_flags, link_flags = openmp_candidate_flags(torch)
    if compiles_and_links(compile_flags, link_flags):
        log(f"OpenMP on: {' '.join(compile_flags)} / {' '.join(link_flags)}")
        return compile_flags, link_flags
    hint = " (on macOS: `brew install libomp`, or set OMP_PREFIX)" if sys.platform == "darwin" else ""
    log(f"the compiler does not build OpenMP code with {' '.join(compile_flags)}: the CPU kernels run on one thread{hint}")
    return [], []


def make_extension():
    locate_cuda_home()
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda, why = decide_cuda_build(torch)
    openmp_compile_flags, openmp_link_flags = openmp_flags(torch)
    # The C++ standard is torch's choice. No instruction-set flags: the x86 and ARM vector paths are
    # compiled per function (target attributes) or are the architecture's baseline (NEON).
    cxx_flags = ["-O3", *openmp_compile_flags]
    sources = ["csrc/ops.cpp", "csrc/argument_checks.cpp", "csrc/autograd.cpp", "csrc/cpu/masked_copy.cpp", "csrc/cpu/mask_ops_cpu.cpp", "csrc/cpu/output_cache.cpp", "csrc/module_calls.cpp"]
    sources += ["csrc/compact_op.cpp", "csrc/cpu/compact_ranges.cpp", "csrc/cpu/compact_ops_cpu.cpp"]
    sources += ["csrc/fallback_ops.cpp"]
    options = dict(
        name="tinybig_cuda._C",
        include_dirs=[str(ROOT / "csrc")],
        extra_link_args=openmp_link_flags,
    )
    if not with_cuda:
        log(f"building the CPU kernels only: {why}")
        return CppExtension(sources=sources, extra_compile_args={"cxx": cxx_flags}, **options)

    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        log(f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} (from the environment)")
    elif torch.cuda.is_available():
        log("TORCH_CUDA_ARCH_LIST unset: compiling for the visible GPUs (torch's choice)")
    else:
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        log(f"TORCH_CUDA_ARCH_LIST unset and no GPU visible: compiling for {DEFAULT_CUDA_ARCH_LIST}")
    log(f"building the CPU and CUDA kernels: {why}")
    sources += ["csrc/cuda/mask_ops_cuda.cpp", "csrc/cuda/masked_copy.cu"]
    sources += ["csrc/cuda/compact_ops_cuda.cpp", "csrc/cuda/compact.cu"]
    nvcc_flags = ["-O3", "-Xptxas=-v"]  # -v prints registers and spills per kernel
    return CUDAExtension(
        sources=sources,
        define_macros=[("TINYBIG_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        **options,
    )


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


if __name__ == "__main__":
    log(f"MAX_JOBS={os.environ.get('MAX_JOBS', '(unset: ninja picks)')}")
    setup(
        packages=find_packages(include=["tinybig_cuda", "tinybig_cuda.*"]),
        ext_modules=[make_extension()],
        cmdclass={"build_ext": build_ext_class()},
    )
