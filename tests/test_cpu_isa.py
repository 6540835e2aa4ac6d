"""Every CPU instruction-set path, forced in turn, gives the reference's bits."""

import pytest
import torch

import tinybig_cuda
from tinybig_cuda import _C, reference

from conftest import DTYPE_IDS, DTYPES, LAYOUTS, assert_bitwise_equal, make_input

SUPPORTED = _C.supported_cpu_isas()


@pytest.fixture
def forced_isa(request):
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa("auto")


def test_default_is_the_fastest_supported_path():
    assert SUPPORTED[0] == "scalar"
    assert _C.cpu_isa() == SUPPORTED[-1]


def test_unknown_or_unsupported_isa_is_rejected():
    with pytest.raises(ValueError, match="expected name to be one of 'auto', 'scalar', 'avx2', 'avx512', 'neon', but got 'sse9'"):
        _C.set_cpu_isa("sse9")
    assert _C.cpu_isa() == SUPPORTED[-1]


@pytest.mark.parametrize("forced_isa", SUPPORTED, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("numel", [1, 3, 65, 4099])
@pytest.mark.parametrize("element_offset", [0, 3, 2**40 + 1])
def test_path_matches_reference(forced_isa, dtype, numel, element_offset):
    assert _C.cpu_isa() == forced_isa
    generator = torch.Generator().manual_seed(numel)
    w = torch.randn(numel + 1, generator=generator).to(dtype)[1:]  # misaligned start
    state = torch.tensor([-(2**63) + numel, 2**62 + 7])
    for p in (0.0, 0.3, 1.0):
        actual = tinybig_cuda.bernoulli_mask_apply(w, p, state, element_offset)
        expected = reference.bernoulli_mask_apply(w, p, state, element_offset)
        assert torch.equal(actual.view(torch.uint8), expected.view(torch.uint8)), (forced_isa, p)


@pytest.mark.parametrize("forced_isa", SUPPORTED, indirect=True)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(3, 5), (19, 700), (2, 3, 300)], ids=str)
def test_path_matches_reference_for_every_layout(forced_isa, layout, shape):
    """Strided inputs are read through a stack buffer or masked in place after a copy: every path
    must give the same bits there too (offsets that start mid-block and mid-chunk included)."""
    if layout == "transposed" and len(shape) != 2:
        pytest.skip("transposed needs a 2-D shape")
    w = make_input(shape, layout, torch.float32, seed=sum(shape))
    state = torch.tensor([77, -(2**40)])
    for element_offset in (0, 3, 509):
        expected = reference.bernoulli_mask_apply(w.contiguous(), 0.4, state, element_offset)
        assert_bitwise_equal(tinybig_cuda.bernoulli_mask_apply(w, 0.4, state, element_offset), expected)


@pytest.mark.parametrize("forced_isa", SUPPORTED, indirect=True)
def test_path_mask_matches_reference(forced_isa):
    state = torch.tensor([12345, -1])
    assert torch.equal(tinybig_cuda.bernoulli_mask((37, 129), 0.7, state), reference.bernoulli_mask((37, 129), 0.7, state))
