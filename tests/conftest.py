"""Shared parameter lists and helpers of the tinybig_cuda test suite.

Every comparison of op outputs is bitwise: tensors are compared through an integer view of the
same width, so -0.0 differs from +0.0 and NaN payloads must match.
"""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tinybig_cuda import _torch_compat as compat
from tinybig_cuda import reference
from tinybig_cuda._arguments import MASKABLE_DTYPES

CUDA_AVAILABLE = torch.cuda.is_available()

# Features an older torch lacks (tinybig_cuda/_torch_compat.py): their tests skip there, saying so.
HAS_DTENSOR = compat.TORCH_VERSION >= compat.DTENSOR[0]
requires_dtensor = pytest.mark.skipif(
    not HAS_DTENSOR, reason=f"DTensor support needs torch 2.5 or newer; this is torch {torch.__version__}"
)
requires_opcheck = pytest.mark.skipif(
    not hasattr(torch.library, "opcheck"), reason=f"torch.library.opcheck needs torch 2.4 or newer; this is torch {torch.__version__}"
)
requires_compile = pytest.mark.skipif(
    not compat.COMPILE_SUPPORTED, reason=f"torch.compile and torch.export of tinybig_cuda need torch 2.4 or newer; this is torch {torch.__version__}"
)

# 'cpu' always; 'cuda' only where a GPU is visible.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA device")),
]

# Every dtype the ops mask: the package's one table (docs/contract.md, 'Dtypes').
DTYPES = list(MASKABLE_DTYPES)
DTYPE_IDS = [str(dtype).replace("torch.", "") for dtype in DTYPES]

# Same-width integer dtype of each masked dtype: the view tensors are compared through. Bool masks
# and int64 counts are compared as they are.
_INTEGER_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
BITS_DTYPE = {dtype: _INTEGER_OF_SIZE[dtype.itemsize] for dtype in DTYPES}
BITS_DTYPE.update({torch.bool: torch.bool, torch.int64: torch.int64})

# dtypes the op must reject, with the names C++ (c10) and Python give them.
BAD_W_DTYPES = {
    torch.int32: ("Int", "int32"),
    torch.int64: ("Long", "int64"),
    torch.uint8: ("Byte", "uint8"),
    torch.bool: ("Bool", "bool"),
    torch.complex64: ("ComplexFloat", "complex64"),
    torch.complex128: ("ComplexDouble", "complex128"),
}

# Seeds and offsets spanning the whole 64-bit range, as the int64 values rng_state holds.
STATE_VALUES = [
    0,
    1,
    -1,  # 2**64 - 1
    2**31,
    2**32 - 1,
    2**32,
    2**63 - 1,
    -(2**63),  # 2**63
    0x0123456789ABCDEF,
    -0x0123456789ABCDEF,
]


def pytest_configure(config):
    # Raised by torch itself while torch.compile imports; nothing this suite can act on.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=DTYPE_IDS)
def dtype(request):
    return request.param


@pytest.fixture(scope="session")
def tinybig():
    """The installed tinyBIG, as `tinybig_cuda.import_tinybig()` gives it. Skips where it is not
    installed, unless TINYBIG_EXPECT_TINYBIG is set (by .ci/run, which installs it): then "1" fails
    the test instead, and "whole" (tinyBIG's own environment) also fails unless a plain
    `import tinybig`, data loaders and all, succeeds."""
    expected = os.environ.get("TINYBIG_EXPECT_TINYBIG")
    if expected == "whole":
        import tinybig  # no stand-in: an ImportError here fails the test

        return tinybig
    if importlib.util.find_spec("tinybig") is None:
        if expected == "1":
            pytest.fail("TINYBIG_EXPECT_TINYBIG=1 but tinyBIG is not installed")
        pytest.skip("tinyBIG is not installed (pip install --no-deps tinybig==0.2.1; see .ci/run)")
    import tinybig_cuda

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without its data loaders on a newer torch: the tests need none
        return tinybig_cuda.import_tinybig()


@pytest.fixture
def restore_num_threads():
    """Restores torch's intra-op thread count after a test changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def make_state(seed, offset, device="cpu"):
    """rng_state = [seed, offset] as the op takes it: int64 [2] on `device`."""
    return torch.tensor([seed, offset], dtype=torch.int64, device=device)


def compact_state(device="cpu"):
    """The state the compact ops' tests use unless a test needs its own."""
    return make_state(0x0123456789ABCDEF, -(2**40) + 3, device)


def reference_kept_count(shape, p, state, element_offset=0):
    """How many entries of a matrix of `shape` the mask keeps, counted by the reference."""
    return reference.bernoulli_mask_count(torch.Size(shape).numel(), p, state.cpu(), element_offset)


def as_bits(tensor):
    """The tensor's bit pattern as a same-width integer tensor (bool stays bool)."""
    return tensor.view(BITS_DTYPE[tensor.dtype])


def assert_bitwise_equal(actual, expected):
    """Same shape, dtype, device, and bit for bit the same elements (-0.0 != +0.0, NaN payloads count)."""
    assert isinstance(actual, torch.Tensor), type(actual)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.device == expected.device, (actual.device, expected.device)
    actual_bits, expected_bits = as_bits(actual), as_bits(expected)
    if not torch.equal(actual_bits, expected_bits):
        differ = (actual_bits != expected_bits).nonzero()
        raise AssertionError(
            f"{differ.shape[0]} of {actual.numel()} elements differ bitwise; first at {differ[:5].tolist()}"
        )


def random_bits(shape, dtype, device="cpu", seed=0):
    """A tensor of `dtype` whose elements are uniformly random bit patterns: NaNs with payloads,
    infinities, -0.0, subnormals and negatives all occur, so only a bit copy reproduces it."""
    generator = torch.Generator().manual_seed(seed)
    bits_dtype = BITS_DTYPE[dtype]
    info = torch.iinfo(bits_dtype)
    bits = torch.randint(info.min, info.max, tuple(shape), dtype=bits_dtype, generator=generator)
    return bits.view(dtype).to(device)


def random_values(shape, dtype, device="cpu", seed=0):
    """Ordinary finite non-zero values (1 to 2 in magnitude, either sign), for autograd tests."""
    generator = torch.Generator().manual_seed(seed)
    magnitude = 1.0 + torch.rand(tuple(shape), dtype=torch.float64, generator=generator)
    sign = torch.randint(0, 2, tuple(shape), generator=generator) * 2 - 1
    return (magnitude * sign).to(dtype=dtype, device=device)


LAYOUTS = ["contiguous", "transposed", "sliced", "storage_offset", "row_slice", "expanded_row", "expanded_scalar", "far_apart"]


def make_input(shape, layout, dtype, device="cpu", seed=0):
    """A tensor of logical `shape` in memory `layout`, holding random bit patterns.

    contiguous:      row-major.
    transposed:      the transpose of a contiguous (shape[1], shape[0]) tensor (2-D only).
    sliced:          every other column of a wider tensor, rows cut at both ends (strided, offset).
    storage_offset:  contiguous but starting one element into its storage (misaligned pointer).
    row_slice:       the middle columns of a wider tensor: contiguous rows, strided between them.
    expanded_row:    one row expanded over the leading dimensions (stride 0 there; 1-D: as scalar).
    expanded_scalar: one element expanded to the whole shape (every stride 0: the gradient of .sum()).
    far_apart:       neighbours in a row on different cache lines: all dimensions reversed (2-D: the
                     transpose), or every 33rd element (1-D).
    """
    shape = tuple(shape)
    if layout == "contiguous":
        return random_bits(shape, dtype, device, seed)
    if layout == "transposed":
        assert len(shape) == 2, "transposed needs a 2-D shape"
        result = random_bits(shape[::-1], dtype, device, seed).t()
    elif layout == "sliced":
        if len(shape) == 1:
            result = random_bits((2 * shape[0] + 1,), dtype, device, seed)[1::2]
        else:
            wide = random_bits((shape[0] + 2,) + shape[1:-1] + (2 * shape[-1] + 1,), dtype, device, seed)
            result = wide[1:-1, ..., 1::2]
    elif layout == "storage_offset":
        result = random_bits((math.prod(shape) + 1,), dtype, device, seed)[1:].view(shape)
    elif layout == "row_slice":
        result = random_bits(shape[:-1] + (shape[-1] + 5,), dtype, device, seed)[..., 2 : 2 + shape[-1]]
    elif layout == "expanded_row":
        result = random_bits(shape[-1:] if len(shape) > 1 else (), dtype, device, seed).expand(shape)
    elif layout == "expanded_scalar":
        result = random_bits((), dtype, device, seed).expand(shape)
    elif layout == "far_apart":
        if len(shape) == 1:
            result = random_bits((33 * shape[0],), dtype, device, seed)[::33]
        else:
            result = random_bits(shape[::-1], dtype, device, seed).permute(*reversed(range(len(shape))))
    else:
        raise ValueError(layout)
    assert result.shape == shape
    if math.prod(shape) > 1 and layout in ("transposed", "sliced", "expanded_scalar", "far_apart"):
        assert not result.is_contiguous()
    return result


class Snapshot:
    """Deep copies of the given tensors, to assert later that nothing modified them."""

    def __init__(self, *tensors):
        self.tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
        self.copies = [(t.detach().clone(), t.shape, t.stride(), t.storage_offset(), t.dtype, t.device) for t in self.tensors]
        self.versions = [t._version for t in self.tensors]

    def assert_unchanged(self):
        for tensor, version, (copy, shape, stride, storage_offset, dtype, device) in zip(
            self.tensors, self.versions, self.copies
        ):
            assert tensor.shape == shape and tensor.stride() == stride
            assert tensor.storage_offset() == storage_offset
            assert tensor.dtype == dtype and tensor.device == device
            assert tensor._version == version, "an input was written in place"
            if tensor.dtype in BITS_DTYPE:
                assert_bitwise_equal(tensor.detach(), copy)
            else:
                assert torch.equal(tensor.detach(), copy)


def contract_table(heading):
    """The rows of the first table under `heading` in docs/contract.md, as lists of cell texts
    (header and backquotes dropped): the contract's known answers, read where they are written."""
    lines = (Path(__file__).resolve().parents[1] / "docs" / "contract.md").read_text().splitlines()
    start = lines.index(heading) + 1
    rows = []
    for line in lines[start:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"no table under {heading!r} in docs/contract.md"
    return rows[2:]  # after the header and its |---| line


def error_pattern(argument, expected, got):
    """A regex for pytest.raises(match=...) that needs the message to name `argument`, and to
    contain the `expected` and `got` regexes, in any order."""
    return rf"(?s)^(?=.*\b{argument}\b)(?=.*expected)(?=.*{expected})(?=.*got)(?=.*{got})"


def run_fresh_python(code, cwd, timeout=300, args=()):
    """Runs `code` in a fresh interpreter whose working directory is `cwd` (outside the repository:
    the source tree, which has no compiled extension, must not shadow the installed package), as a
    user who pastes it would. Fails the calling test with the interpreter's output if it fails."""
    result = subprocess.run([sys.executable, *args, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"exit status {result.returncode}\n--- code ---\n{code}\n--- stdout ---\n{result.stdout}\n"
                    f"--- stderr ---\n{result.stderr[-6000:]}", pytrace=False)
    return result.stdout


# ---------------------------------------------------------------- gloo rank checks

RANKS_TIMEOUT_S = 240  # a launch takes ~10 s here; the bound is for a hung rank on a busy machine


def run_bounded(arguments, cwd):
    """Runs a script that spawns its own gloo ranks: its own deadline (--timeout) stops them, this
    one stops it. Returns its standard output."""
    run = subprocess.run([sys.executable, *map(str, arguments)], cwd=cwd, capture_output=True, text=True,
                         timeout=RANKS_TIMEOUT_S + 30)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return run.stdout


def run_rank_checks(script, directory):
    """The results (a dict) of one launch of a tests/*_checks.py script, which writes them as JSON."""
    results = directory / "results.json"
    run_bounded([Path(__file__).resolve().parent / script, results, "--timeout", RANKS_TIMEOUT_S], cwd=directory)
    return json.loads(results.read_text())
