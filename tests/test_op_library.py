"""The op library without Python, and the checks that tie a build to its torch.

libtinybig_cuda_ops.so holds the schemas, kernels and autograd: a process that loads only it (with
torch.ops.load_library, inside an AOTInductor runner, or with dlopen from a C++ program) runs the
ops. The `_C` module holds only the Python-side controls."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

import tinybig_cuda
from tinybig_cuda import _C, _library
from tinybig_cuda import _torch_compat as compat

from conftest import requires_compile

REPO = Path(__file__).resolve().parents[1]
LIBRARY = tinybig_cuda.op_library_path


def run_python(code, **kwargs):
    """Runs `code` in a fresh interpreter (outside the repository, so the installed package is the
    one found) and returns its completed process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=os.path.dirname(LIBRARY), timeout=600, **kwargs)


def undefined_symbols(path):
    if shutil.which("nm") is None:
        pytest.fail("nm (binutils) is needed to list the op library's undefined symbols")
    output = subprocess.run(["nm", "-D", "--undefined-only", path], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1] for line in output.splitlines() if line.strip()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads ELF dynamic symbols")
def test_op_library_has_no_python_symbols():
    symbols = undefined_symbols(LIBRARY)
    assert symbols, "nm listed nothing: not the library it should be"
    python = [name for name in symbols if name.startswith(("Py", "_Py"))]
    assert python == []
    # ...and nothing that needs Python is loaded with it.
    needed = subprocess.run(["readelf", "-d", LIBRARY], capture_output=True, text=True).stdout
    assert "libpython" not in needed and "libtorch_python" not in needed
    # The pybind module, in contrast, is all Python.
    assert any(name.startswith("Py") for name in undefined_symbols(_C.__file__))


def test_process_that_loads_only_the_library_runs_the_ops_and_their_autograd():
    w = torch.randn(37, 29, dtype=torch.float64)
    state = torch.tensor([123, 456])
    expected = tinybig_cuda.bernoulli_mask_apply(w, 0.3, state)
    result = run_python(f"""
        import sys, torch
        torch.ops.load_library({str(LIBRARY)!r})
        w = torch.tensor({w.tolist()!r}, dtype=torch.float64, requires_grad=True)
        out = torch.ops.tinybig_cuda.bernoulli_mask_apply(w, 0.3, torch.tensor([123, 456]))
        out.backward(torch.ones_like(out))
        assert not any(name.startswith("tinybig_cuda") for name in sys.modules), "the package was imported"
        print(repr(out.tolist())); print(repr(w.grad.tolist()))
        """)
    assert result.returncode == 0, result.stderr
    out, grad = (eval(line) for line in result.stdout.splitlines())
    assert torch.equal(torch.tensor(out, dtype=torch.float64), expected)
    assert torch.equal(torch.tensor(grad, dtype=torch.float64), (expected != 0).double())


def tinybig_cuda_ops():
    return sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("tinybig_cuda::"))


def test_every_op_of_the_package_is_declared_by_the_library():
    # No op may be declared in Python: a process without the package would miss it.
    result = run_python(f"""
        import torch
        torch.ops.load_library({str(LIBRARY)!r})
        print(sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("tinybig_cuda::")))
        """)
    assert result.returncode == 0, result.stderr
    assert eval(result.stdout) == tinybig_cuda_ops()
    assert "tinybig_cuda::bernoulli_mask_apply_p_tensor" in tinybig_cuda_ops()


class MaskedLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(8, 16))
        self.register_buffer("rng_state", torch.tensor([5, 6]))

    def forward(self, x):
        return x @ tinybig_cuda.bernoulli_mask_apply(self.weight, 0.5, self.rng_state).T


@pytest.mark.slow  # compiles an AOTInductor package
@requires_compile
@pytest.mark.skipif(compat.TORCH_VERSION < (2, 6), reason=f"AOTInductor packages need torch 2.6 or newer; this is torch {torch.__version__}")
def test_aotinductor_package_runs_in_a_process_that_loaded_only_the_library(tmp_path):
    torch.manual_seed(0)
    model, x = MaskedLinear().eval(), torch.randn(4, 16)
    expected = model(x)
    program = torch.export.export(model, (x,), strict=False)
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "masked.pt2"))
    torch.save(x, tmp_path / "x.pt")
    result = run_python(f"""
        import sys, torch
        torch.ops.load_library({str(LIBRARY)!r})
        runner = torch._inductor.aoti_load_package({package!r})
        out = runner(torch.load({str(tmp_path / "x.pt")!r}))
        assert not any(name.startswith("tinybig_cuda") for name in sys.modules), "the package was imported"
        torch.save(out, {str(tmp_path / "out.pt")!r})
        """)
    assert result.returncode == 0, result.stderr
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


@pytest.mark.slow  # compiles a C++ program
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compiles with g++ and loads with dlopen")
def test_cpp_program_without_python_loads_the_library_and_runs_the_op(tmp_path):
    from torch.utils import cpp_extension

    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.fail("a C++ compiler is needed to build the libtorch test program")
    torch_lib = cpp_extension.library_paths()[0]
    binary = tmp_path / "run_op"
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    compile_command = [compiler, "-std=c++20", "-O1", abi, str(REPO / "tests" / "cpp_programs" / "run_op.cpp"),
                       *[f"-I{path}" for path in cpp_extension.include_paths()], f"-L{torch_lib}",
                       f"-Wl,-rpath,{torch_lib}", "-ltorch_cpu", "-lc10", "-ldl", "-o", str(binary)]
    subprocess.run(compile_command, check=True, timeout=600)
    # No Python anywhere in the program: neither libpython nor torch's Python bindings are loaded.
    libraries = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    assert "libpython" not in libraries and "libtorch_python" not in libraries

    result = subprocess.run([str(binary), str(LIBRARY), "77", "88", "0.4", "9", "11"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out, grad = ([float(v) for v in line.split()] for line in result.stdout.splitlines())
    w = (torch.arange(99, dtype=torch.float32) + 1).view(9, 11)
    expected = tinybig_cuda.bernoulli_mask_apply(w, 0.4, torch.tensor([77, 88]))
    assert torch.equal(torch.tensor(out).view(9, 11), expected)
    assert torch.equal(torch.tensor(grad).view(9, 11), (expected != 0).float())


def test_import_refuses_a_build_for_another_torch():
    result = run_python("""
        import sys, types
        built = types.ModuleType("tinybig_cuda._build_info")
        built.TORCH_VERSION = "2.0.0+cu118"  # what a user upgraded from
        built.OP_LIBRARY = "libtinybig_cuda_ops.so"
        sys.modules["tinybig_cuda._build_info"] = built
        import tinybig_cuda
        """)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError: tinybig_cuda was built against torch 2.0.0+cu118")
    assert f"but torch {torch.__version__} is installed" in message
    assert _library.REBUILD in message


def test_build_info_records_this_torch_and_the_cuda_decision():
    info = _library.build_info
    assert info.TORCH_VERSION == torch.__version__
    assert info.CUDA_KERNELS == _C.has_cuda_kernels()
    assert info.CUDA_REASON and any("CPU kernel paths" in line for line in info.SUMMARY)
    # ...and pip knows the torch too: the package requires exactly it.
    public_version = torch.__version__.split("+")[0]
    assert f"torch=={public_version}" in importlib.metadata.requires("tinybig_cuda")


def test_python_m_tinybig_cuda_prints_the_build_summary():
    result = subprocess.run([sys.executable, "-m", "tinybig_cuda"], capture_output=True, text=True,
                            cwd=os.path.dirname(LIBRARY), timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"built against torch {torch.__version__}" in result.stdout
    assert str(LIBRARY) in result.stdout
    assert ("CUDA kernels: yes" if _C.has_cuda_kernels() else "CUDA kernels: no") in result.stdout


def test_import_warns_when_torch_has_a_gpu_the_build_has_no_kernels_for():
    result = run_python("""
        import warnings, torch
        torch.cuda.is_available = lambda: True  # as on a machine with a GPU
        torch.version.cuda = torch.version.cuda or "12.8"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import tinybig_cuda
        print(tinybig_cuda._C.has_cuda_kernels())
        print([str(w.message) for w in caught if "built without its CUDA kernels" in str(w.message)])
        """)
    assert result.returncode == 0, result.stderr
    has_kernels, warned = result.stdout.splitlines()
    assert (warned != "[]") == (has_kernels == "False")


def test_setup_py_without_torch_stops_at_once_and_says_why():
    # No torch at all (tests/test_setup_messages.py also simulates an isolated build).
    result = subprocess.run(
        [sys.executable, "-c",
         "import runpy, sys; sys.modules['torch'] = None; sys.argv = ['setup.py', 'egg_info'];"
         "runpy.run_path('setup.py', run_name='__main__')"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode != 0
    assert "pip install --no-build-isolation ." in result.stderr
    assert f"torch is not installed for {sys.executable}" in result.stderr


def test_import_from_the_source_tree_says_why_it_cannot_work():
    # Python run from the repository root finds the source folder, which has no compiled parts
    # (but may have the _build_info.py that setup.py wrote there).
    result = subprocess.run([sys.executable, "-c", "import tinybig_cuda"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"ImportError: tinybig_cuda is not built in {REPO / 'tinybig_cuda'}")
    assert "run from another directory" in message
