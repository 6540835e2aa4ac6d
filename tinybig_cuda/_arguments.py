"""The argument rules of every tinybig_cuda op on the Python side, and the table of the dtypes they
take (MASKABLE_DTYPES, the kernels' own, read from _C).

Two halves:
- What the typed entry points (and the modules) accept as Python values, before the dispatcher
  sees them: it would turn ``True`` into 1 or 1.0, and report an int past int64 as "Expected a
  value of type 'int' ... but instead found type 'int'". Wrong types raise TypeError, wrong values
  ValueError, each naming the argument.
- The checks of the fake kernels, which must refuse exactly what the compiled kernels refuse:
  each mirrors, in the same order, one check of csrc/ops/argument_checks.cpp or csrc/ops/compact.cpp,
  with the same limits (tests/test_errors.py runs every rule through both).
"""

import numbers
import operator

import torch

from . import _torch_compat as compat
from ._library import _C

INT64_MAX = 2**63 - 1
# The rules' constants come from the kernels' own (csrc/ops/argument_checks.h), so the two cannot
# differ. The most elements a compact op's matrix may have: 2**62 - 1, a float16 tensor's most.
MAX_COMPACT_ELEMENTS = _C.MAX_COMPACT_ELEMENTS
# The dtypes the ops mask, expand and compress (docs/contract.md, 'Dtypes'): the table that the
# fake kernels, the module and the tests read; tests/test_errors.py tries every dtype torch has on
# the kernels and the fake kernels.
_NAMES = _C.maskable_dtype_names()
MASKABLE_DTYPES = tuple(getattr(torch, name) for name in _NAMES)
# "float32, float64, float16 or bfloat16": how messages and docstrings name the table.
MASKABLE_DTYPE_NAMES = ", ".join(_NAMES[:-1]) + " or " + _NAMES[-1]

# ---------------------------------------------------------------- Python values


def keep_probability(op, p, check_range=True):
    """p as a float in [0, 1]; a bool or non-number is a TypeError, anything else outside [0, 1]
    (NaN included) a ValueError (unless check_range is False: the kernel checks it then)."""
    if type(p) is not float:
        if isinstance(p, torch.SymFloat):  # traced by torch.compile: the kernels check it
            return p
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"{op}: expected p, the keep probability, to be a float in [0, 1], but got {p!r} of type {type(p).__name__}")
        p = float(p)
    if check_range and not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: expected p, the keep probability, in [0, 1], but got {p!r}")
    return p


def integer(op, argument, value):
    """value as an int64: Python ints, NumPy integers and 0-d integer tensors; a bool or any other
    type is a TypeError, an int past int64 a ValueError. Signs and sizes are the kernels' to check."""
    if type(value) is not int:
        if isinstance(value, torch.SymInt):  # traced by torch.compile
            return value
        try:
            if isinstance(value, bool):
                raise TypeError
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{op}: expected {argument} to be an int, but got {value!r} of type {type(value).__name__}") from None
    if not -(2**63) <= value <= INT64_MAX:
        raise ValueError(f"{op}: expected {argument} to be an int64 (in [-2**63, 2**63 - 1]), but got {value}")
    return value


def shape(op, value):
    """value as a list of int64 sizes: a sequence of ints (torch.Size, tuple, list), or one int for
    a 1-D shape, as torch.empty takes them."""
    if isinstance(value, (numbers.Integral, torch.SymInt)) or (isinstance(value, torch.Tensor) and value.dim() == 0):
        return [integer(op, "shape", value)]
    if isinstance(value, (torch.Tensor, str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{op}: expected shape to be a sequence of ints, but got {type(value).__name__}")
    return [integer(op, "shape", size) for size in value]


def non_negative(op, argument, value):
    """`integer`, and a ValueError naming it unless >= 0: a size, a count or a limit."""
    value = integer(op, argument, value)
    if value < 0:
        raise ValueError(f"{op}: expected {argument} to be a non-negative integer, but got {value!r}")
    return value


def matrix_shape(op, n, D):
    """n and D, the shape of a fabricated matrix, as non-negative int64s."""
    return non_negative(op, "n", n), non_negative(op, "D", D)


def requested_device(value):
    """The torch.device a `device` argument names (tinyBIG passes strings), parsed once per value."""
    if compat.is_compiling():
        # Not through the cache: torch.compile would guard on its contents, and the next eager
        # call, filling it, would recompile the graph.
        return torch.device(value)
    requested = _REQUESTED_DEVICES.get(value)
    if requested is None:
        requested = _REQUESTED_DEVICES.setdefault(value, torch.device(value))
    return requested


_REQUESTED_DEVICES = {}


def is_on(actual: torch.device, requested: torch.device) -> bool:
    """Whether data on `actual` is on `requested` ("cuda" without an index: on any GPU)."""
    if actual == requested:  # the common case, and much cheaper than reading .type and .index
        return True
    if actual.type != requested.type:
        return False
    return requested.index is None or (actual.index is None and requested.index == 0)


def check_device(op, w, device):
    """A ValueError unless `device` is None or names w's device (tinyBIG passes the one it built on)."""
    if device is not None and not is_on(w.device, requested_device(device)):
        raise ValueError(f"{op}: expected device to be w's device {w.device}, but got {device!r}")


def rng_state(op, value):
    """A TypeError unless value is a tensor (the dispatcher's own is "Unable to cast [1, 2] to
    Tensor"); its dtype, shape and device are the kernels' to check."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: expected rng_state to be an int64 tensor [seed, offset], but got {type(value).__name__}")


# The tensor types that take the direct paths (the ops without a look for DTensor, the module's
# one trip into C++): a subclass (DTensor, FakeTensor, a user's) takes the checked one.
PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def is_dtensor(tensor):
    # By name: importing torch.distributed.tensor to compare classes costs about a second.
    return type(tensor).__name__ == "DTensor"


def limit_text(limit):
    """How messages write INT64_MAX or MAX_COMPACT_ELEMENTS: "2**63 - 1", "2**62 - 1"."""
    return f"2**{limit.bit_length()} - 1"


# ---------------------------------------------------------------- the fake kernels' checks


def check_maskable_dtype(op, argument, tensor):
    """The kernels' TypeError unless `tensor`'s dtype is in MASKABLE_DTYPES: for the fake kernels,
    and for the module, which names w where the op it calls would name it differently."""
    if tensor.dtype not in MASKABLE_DTYPES:
        raise TypeError(f"{op}: expected {argument} to be {MASKABLE_DTYPE_NAMES}, but got dtype {tensor.dtype}")


def fake_check_probability(op, p):
    torch._check_value(0.0 <= p <= 1.0, lambda: f"{op}: expected p, the keep probability, in [0, 1], but got {p!r}")


def fake_check_rng_state(op, rng_state, device, cpu_allowed=False):
    """csrc/ops/argument_checks.cpp's check_rng_state."""
    torch._check_type(
        rng_state.dtype == torch.int64,
        lambda: f"{op}: expected rng_state to be an int64 tensor [seed, offset], but got dtype {rng_state.dtype}",
    )
    torch._check_value(
        rng_state.dim() == 1 and rng_state.shape[0] == 2,
        lambda: f"{op}: expected rng_state to have shape [2] ([seed, offset]), but got shape {list(rng_state.shape)}",
    )
    cpu_too = cpu_allowed and device.type != "cpu"
    torch._check_value(
        rng_state.device == device or (cpu_allowed and rng_state.device.type == "cpu"),
        lambda: f"{op}: expected rng_state on {device} (the device of the data it masks){' or on the CPU' if cpu_too else ''}, "
        f"but got it on {rng_state.device}",
    )


def fake_check_element_offset(op, element_offset, numel):
    torch._check_value(element_offset >= 0, lambda: f"{op}: expected element_offset >= 0, but got {element_offset}")
    torch._check_value(
        element_offset <= INT64_MAX - numel,
        lambda: f"{op}: expected element_offset + numel <= 2**63 - 1, but got element_offset {element_offset} with {numel} elements",
    )


def fake_check_window(op, element_offset, row_length, shape, numel):
    """element_offset and row_length of a tensor of `shape` (csrc/ops/masking.cpp's checked_window)."""
    extent = numel
    if row_length is not None:  # checked for an empty tensor too
        width = shape[-1] if len(shape) > 0 else 1
        torch._check_value(
            row_length >= width,
            lambda: f"{op}: expected row_length >= {width} (the width of a row, the last dimension: rows of a window cannot overlap), but got {row_length}",
        )
    if row_length is not None and numel > 0:
        rows = numel // width
        torch._check_value(
            rows - 1 <= (INT64_MAX - width) // row_length,
            lambda: f"{op}: expected a window within 2**63 - 1 elements, but got {rows} rows of row_length {row_length}",
        )
        extent = (rows - 1) * row_length + width
    fake_check_element_offset(op, element_offset, extent)


def fake_check_shape(op, sizes, max_elements=INT64_MAX):
    """The number of elements of `sizes`: each >= 0, at most max_elements in all."""
    for size in sizes:
        torch._check_value(size >= 0, lambda: f"{op}: expected a shape of non-negative sizes, but got {list(sizes)}")
    numel = 1
    for size in sizes:
        numel = numel * size
    torch._check_value(
        numel <= max_elements, lambda: f"{op}: expected a shape of at most {limit_text(max_elements)} elements, but got {list(sizes)}"
    )
    return numel


# The compact ops' checks: csrc/ops/compact.cpp's check_*_arguments, each in its order.


def fake_check_count_arguments(op, numel, p, rng_state, element_offset):
    torch._check_value(numel >= 0, lambda: f"{op}: expected numel >= 0, but got {numel}")
    torch._check_value(
        numel <= MAX_COMPACT_ELEMENTS,
        lambda: f"{op}: expected numel <= {limit_text(MAX_COMPACT_ELEMENTS)} (the most elements a float16 matrix can have), but got {numel}",
    )
    fake_check_probability(op, p)
    fake_check_rng_state(op, rng_state, rng_state.device)
    fake_check_element_offset(op, element_offset, numel)


def fake_check_expand_arguments(op, values, p, rng_state, shape, element_offset):
    check_maskable_dtype(op, "values", values)
    torch._check_value(
        values.dim() == 1,
        lambda: f"{op}: expected values to be 1-D (the kept entries in row-major order), but got shape {list(values.shape)}",
    )
    numel = fake_check_shape(op, shape, MAX_COMPACT_ELEMENTS)
    torch._check_value(
        values.numel() <= numel,
        lambda: f"{op}: expected values to have at most {numel} elements (a mask keeps at most every entry of shape {list(shape)}), but got {values.numel()}",
    )
    fake_check_probability(op, p)
    fake_check_rng_state(op, rng_state, values.device, cpu_allowed=True)
    fake_check_element_offset(op, element_offset, numel)


def fake_check_compress_arguments(op, full, p, rng_state, kept_count, element_offset):
    check_maskable_dtype(op, "full", full)
    torch._check_value(kept_count >= 0, lambda: f"{op}: expected kept_count >= 0, but got {kept_count}")
    torch._check_value(
        kept_count <= full.numel(),
        lambda: f"{op}: expected kept_count <= {full.numel()} (a mask keeps at most every entry of full), but got {kept_count}",
    )
    fake_check_probability(op, p)
    fake_check_rng_state(op, rng_state, full.device, cpu_allowed=True)
    fake_check_element_offset(op, element_offset, full.numel())
