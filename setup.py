"""Builds tinybig_cuda's two compiled parts:

  tinybig_cuda/libtinybig_cuda_ops.so   the op library: schemas, kernels (CPU always, CUDA when torch
                                        and a toolkit allow), autograd. No Python symbols: it loads
                                        with torch.ops.load_library alone, in an AOTInductor runner
                                        or a libtorch C++ program.
  tinybig_cuda._C                       the pybind11 module of Python-side controls, which resolves
                                        the op library's symbols from the loaded library.

It also writes tinybig_cuda/_build_info.py: the torch it was built against (checked on import) and
the build summary (printed by `python -m tinybig_cuda`, since pip hides this script's output).

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
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent  # absolute: older setuptools give setup.py a relative __file__, and ninja compiles elsewhere
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"
OP_LIBRARY = "tinybig_cuda._ops"  # built as tinybig_cuda/libtinybig_cuda_ops.so
OP_LIBRARY_FILE = "libtinybig_cuda_ops.so"
SUMMARY = []  # what this build decided and why, one line each
CXX_STANDARD = "c++20"  # CMakeLists.txt builds the C++ tests with the same


def log(message):
    SUMMARY.append(message)
    print(f"[tinybig_cuda setup] {message}", file=sys.stderr, flush=True)


def import_build_torch():
    """The torch to compile against: the one installed where the package will run."""
    try:
        import torch
    except ImportError:
        if isolated_build():
            sys.exit(
                "tinybig_cuda: this build runs in an isolated environment (pip's default), which does not see "
                "the torch installed where the package will run. The extension must be compiled against that "
                "torch, so torch is not a build requirement (an isolated build would compile against another "
                "torch, whose ops then fail to load). Build without isolation:\n"
                "    pip install --no-build-isolation ."
            )
        sys.exit(
            f"tinybig_cuda: torch is not installed for {sys.executable}, which runs this build. The extension "
            "is compiled against the installed torch: install torch first, then build without isolation:\n"
            "    pip install torch && pip install --no-build-isolation ."
        )
    return torch


def isolated_build():
    """Whether a build frontend runs this script in a throwaway environment: pip puts its own
    sitecustomize in a pip-build-env-* folder on PYTHONPATH; pypa/build makes a build-env-* venv."""
    places = [*os.environ.get("PYTHONPATH", "").split(os.pathsep), sys.prefix]
    return any("build-env-" in Path(place).as_posix() for place in places if place)


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
    else:
        toolkit = nvcc_version(Path(CUDA_HOME) / "bin" / "nvcc")
        # torch's extension builder refuses a toolkit of another major version than its own.
        if toolkit is None or toolkit.split(".")[0] != torch.version.cuda.split(".")[0]:
            missing.append(
                f"torch {torch.__version__} was built with CUDA {torch.version.cuda}, and torch builds "
                f"extensions only with a toolkit of that major version, but the one in {CUDA_HOME} is "
                f"{toolkit or 'of unknown version'}"
            )
    if request == "1" and missing:
        raise RuntimeError("TINYBIG_CUDA_BUILD=1 but the CUDA kernels cannot be built: " + "; ".join(missing))
    if missing:
        return False, "; ".join(missing)
    why = f"torch {torch.__version__} (CUDA {torch.version.cuda}) and nvcc in {CUDA_HOME}"
    return True, why + (" (TINYBIG_CUDA_BUILD=1)" if request == "1" else "")


def nvcc_version(nvcc):
    """The toolkit's "major.minor" from `nvcc --version` ("... release 12.1, V12.1.105"), or None."""
    try:
        output = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    found = re.search(r"release (\d+\.\d+)", output)
    return found.group(1) if found else None


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


def compiles_and_links(compile_flags, link_flags, source=OPENMP_PROBE):
    """Whether the compiler setuptools will use builds a small library (by default, an OpenMP one)
    with these flags."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "probe.cpp"
        path.write_text(source)
        try:
            objects = compiler.compile([str(path)], output_dir=directory, extra_postargs=compile_flags)
            compiler.link_shared_object(objects, str(Path(directory) / "probe.so"), extra_postargs=link_flags)
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


def source_parts():
    """{part: its source files, sorted} from csrc/sources.txt, the source list CMakeLists.txt reads
    too: each line names a part and globs under csrc/."""
    parts = {}
    for line in (ROOT / "csrc" / "sources.txt").read_text().splitlines():
        words = line.split("#")[0].split()
        if words:
            found = {path for pattern in words[1:] for path in (ROOT / "csrc").glob(pattern)}
            parts[words[0]] = sorted(str(path.relative_to(ROOT)) for path in found)
    return parts


def warning_flags():
    """Warnings are errors, as in CMakeLists.txt. GCC 12 misreports the AVX-512 intrinsics' internal
    _mm512_undefined as maybe uninitialized (GCC bug 105593); clang has no such warning and, with
    -Werror, refuses the option, so it is added only where the compiler takes it."""
    flags = ["-Wall", "-Wextra", "-Werror"]
    if compiles_and_links([*flags, "-Wno-maybe-uninitialized"], [], source="int zero(void) { return 0; }\n"):
        flags.append("-Wno-maybe-uninitialized")
    return flags


def system_header_flags(with_cuda):
    """torch's include folders (and the CUDA toolkit's, for the CUDA kernel tables) as system
    folders: the warnings above are this package's, and torch's own headers do not pass -Wextra
    (unused parameters, in torch 2.13 for one). The compilers take a folder named by both -I (as
    torch's extension builder names it) and -isystem as a system folder."""
    from torch.utils.cpp_extension import CUDA_HOME, include_paths

    folders = include_paths()  # torch's, without the CUDA toolkit's: that argument differs by release
    if with_cuda:
        folders.append(str(Path(CUDA_HOME) / "include"))
    return [flag for folder in folders for flag in ("-isystem", folder)]


def compiled_cpu_paths():
    """The CPU kernel paths this architecture's build contains (core/cpu/isa.h); each runs where the CPU
    supports it."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return ["scalar", "avx2", "avx512"]
    if machine in ("aarch64", "arm64"):
        return ["scalar", "neon"]
    return ["scalar"]


def make_extensions(torch):
    """[the op library, the Python module], and the build facts."""
    locate_cuda_home()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda, why = decide_cuda_build(torch)
    openmp_compile_flags, openmp_link_flags = openmp_flags(torch)
    log(f"CPU kernel paths: {', '.join(compiled_cpu_paths())} ({platform.machine()})")
    # One C++ standard for every part, whatever torch builds with: C++20 (newer torch needs it;
    # torch adds its own -std only when none is given). No instruction-set flags: the x86 and ARM
    # vector paths are compiled per function (target attributes) or are the architecture's
    # baseline (NEON).
    cxx_flags = ["-O3", f"-std={CXX_STANDARD}", *warning_flags(), *system_header_flags(with_cuda), *openmp_compile_flags]
    include_dirs = [str(ROOT / "csrc")]
    parts = source_parts()
    # The torch-free layer (core/) and its torch registrations (ops/), in one library.
    ops_sources = parts["core"] + parts["ops"]
    # py_limited_api: torch then links neither libtorch_python nor anything else of Python's. The
    # run path finds torch's libraries (libc10_cuda, ...) beside the installed package, so a C++
    # program that loads the library needs nothing on its own library path.
    torch_libraries = "@loader_path/../torch/lib" if sys.platform == "darwin" else "$ORIGIN/../torch/lib"
    ops_link_flags = [*openmp_link_flags, f"-Wl,-rpath,{torch_libraries}"]
    ops_options = dict(name=OP_LIBRARY, include_dirs=include_dirs, extra_link_args=ops_link_flags, py_limited_api=True)
    facts = dict(torch_version=torch.__version__, cuda_kernels=with_cuda, cuda_reason=why, cuda_arch_list=None)
    if not with_cuda:
        log(f"building the CPU kernels only: {why}")
        ops = CppExtension(sources=ops_sources, extra_compile_args={"cxx": cxx_flags}, **ops_options)
    else:
        if os.environ.get("TORCH_CUDA_ARCH_LIST"):
            log(f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} (from the environment)")
        elif torch.cuda.is_available():
            log("TORCH_CUDA_ARCH_LIST unset: compiling for the visible GPUs (torch's choice)")
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
            log(f"TORCH_CUDA_ARCH_LIST unset and no GPU visible: compiling for {DEFAULT_CUDA_ARCH_LIST}")
        facts["cuda_arch_list"] = os.environ.get("TORCH_CUDA_ARCH_LIST", "the visible GPUs'")
        log(f"building the CPU and CUDA kernels: {why}")
        ops_sources += parts["core_cuda"] + parts["ops_cuda"]
        # -v prints registers and spills per kernel. nvcc's own warnings and its host compiler's
        # are errors too (the .cu files include no torch header: core/ is torch-free), except the
        # host pass's "unknown pragma" for `#pragma unroll`, which is the device compiler's, and
        # the notice that an architecture of TORCH_CUDA_ARCH_LIST is deprecated, which is about
        # the user's choice, not the code.
        nvcc_flags = ["-O3", f"-std={CXX_STANDARD}", "-Xptxas=-v", "--Werror=all-warnings", "-Wno-deprecated-gpu-targets",
                      "-Xcompiler=-Wall,-Wextra,-Werror,-Wno-unknown-pragmas"]
        ops = CUDAExtension(
            sources=ops_sources,
            define_macros=[("TINYBIG_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            **ops_options,
        )
    module = CppExtension(
        name="tinybig_cuda._C",
        sources=parts["python"],
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
    )
    return [ops, module], facts


def write_build_info(facts):
    """tinybig_cuda/_build_info.py: read on import (the torch check) and by `python -m tinybig_cuda`."""
    lines = [
        '"""Written by setup.py when the extension was built: what it was built against and why."""',
        "",
        f"TORCH_VERSION = {facts['torch_version']!r}",
        f"CUDA_KERNELS = {facts['cuda_kernels']!r}",
        f"CUDA_REASON = {facts['cuda_reason']!r}",
        f"CUDA_ARCH_LIST = {facts['cuda_arch_list']!r}",
        f"OP_LIBRARY = {OP_LIBRARY_FILE!r}",
        f"SUMMARY = {SUMMARY!r}",
        "",
    ]
    (ROOT / "tinybig_cuda" / "_build_info.py").write_text("\n".join(lines))


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class Build(BuildExtension):
        def get_ext_filename(self, ext_name):
            # The op library is no Python module: a plain name, for torch.ops.load_library and C++.
            # Asked for by full name and by last component; answered as setuptools would.
            parts = ext_name.split(".")
            if parts[-1] == OP_LIBRARY.split(".")[-1]:
                return os.path.join(*parts[:-1], OP_LIBRARY_FILE)
            return super().get_ext_filename(ext_name)

    return Build.with_options(use_ninja=True)


if __name__ == "__main__":
    build_torch = import_build_torch()
    log(f"MAX_JOBS={os.environ.get('MAX_JOBS', '(unset: ninja picks)')}")
    extensions, build_facts = make_extensions(build_torch)
    write_build_info(build_facts)
    log(f"compiling {sum(len(extension.sources) for extension in extensions)} source files: a few minutes on a "
        "small machine (more with the CUDA kernels); pip shows the compiler's progress with -v")
    setup(
        packages=find_packages(include=["tinybig_cuda", "tinybig_cuda.*"]),
        ext_modules=extensions,
        # The compiled parts load only into this torch: pip then knows, and says so when another
        # torch would replace it. The public version (2.13.0 of 2.13.0+cpu): pip's constraints
        # (torch<=2.14.1) do not match a local label, and the import check compares it anyway.
        install_requires=[f"torch=={build_torch.__version__.split('+')[0]}", "numpy"],
        cmdclass={"build_ext": build_ext_class()},
    )
