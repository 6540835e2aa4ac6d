"""The ops as PyTorch custom ops: opcheck, gradcheck, gradgradcheck, and what backward keeps alive."""

import pytest
import torch

import tinybig_cuda

from conftest import DEVICES, DTYPES, DTYPE_IDS, compact_state, make_state, random_values, reference_kept_count, requires_opcheck

APPLY = torch.ops.tinybig_cuda.bernoulli_mask_apply.default
MASK = torch.ops.tinybig_cuda.bernoulli_mask.default
COUNT = torch.ops.tinybig_cuda.bernoulli_mask_count.default
EXPAND = torch.ops.tinybig_cuda.bernoulli_mask_expand.default
COMPRESS = torch.ops.tinybig_cuda.bernoulli_mask_compress.default
MAX_SAVED_BYTES = 64


def _input(layout, dtype, device, requires_grad):
    if layout == "contiguous":
        w = torch.randn(5, 7, dtype=torch.float64)
    else:  # transposed
        w = torch.randn(7, 5, dtype=torch.float64).t()
    w = w.to(dtype=dtype, device=device)
    assert w.is_contiguous() == (layout == "contiguous")
    return w.requires_grad_(requires_grad)


@requires_opcheck
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
def test_opcheck_bernoulli_mask_apply(device, dtype, layout, requires_grad):
    w = _input(layout, dtype, device, requires_grad)
    torch.library.opcheck(APPLY, (w, 0.5, make_state(-5, 2**40, device)))
    torch.library.opcheck(APPLY, (w, 0.3, make_state(1, 2, device), 3))
    torch.library.opcheck(APPLY, (w, 0.3, make_state(1, 2, device), 3, w.shape[-1] + 5))  # a window
    # The form torch.compile calls, with p as data.
    p_tensor = torch.tensor(0.3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.tinybig_cuda.bernoulli_mask_apply_p_tensor.default, (w, p_tensor, make_state(1, 2, device), 3, None))


@requires_opcheck
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [[5, 7], [0, 3], [4099]])
def test_opcheck_bernoulli_mask(device, shape):
    torch.library.opcheck(MASK, (shape, 0.5, make_state(-1, -1, device)))
    torch.library.opcheck(MASK, (shape, 0.5, make_state(-1, -1, device), 7, shape[-1] + 2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_gradcheck_and_gradgradcheck_float64(device, layout, p):
    state = make_state(2**63 - 1, -(2**63), device)
    w = _input(layout, torch.float64, device, requires_grad=True)

    def function(w):
        return tinybig_cuda.bernoulli_mask_apply(w, p, state)

    assert torch.autograd.gradcheck(function, (w,))
    assert torch.autograd.gradgradcheck(function, (w,))
    # The op is not trivially the identity or zero here, so the checks above saw a real mask.
    if p == 0.5:
        mask = tinybig_cuda.bernoulli_mask(w.shape, p, state)
        assert 0 < int(mask.sum()) < mask.numel()


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_with_element_offset(device):
    state = make_state(3, 4, device)
    w = torch.randn(6, 5, dtype=torch.float64, device=device, requires_grad=True)

    def function(w):
        return tinybig_cuda.bernoulli_mask_apply(w, 0.5, state, element_offset=5)

    assert torch.autograd.gradcheck(function, (w,))
    assert torch.autograd.gradgradcheck(function, (w,))


def _saved_bytes(run):
    """Bytes of the distinct storages autograd saves for backward while `run()` builds its graph."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr(), tensor.device] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    return sum(storages.values()), out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_op_saves_under_64_bytes_for_backward(device, dtype):
    w = torch.randn(256, 256, dtype=dtype, device=device, requires_grad=True)
    state = make_state(7, 8, device)
    saved, out = _saved_bytes(lambda: tinybig_cuda.bernoulli_mask_apply(w, 0.5, state))
    assert saved < MAX_SAVED_BYTES, f"{saved} bytes saved for backward"
    out.sum().backward()
    assert torch.equal(w.grad, tinybig_cuda.bernoulli_mask(w.shape, 0.5, state).to(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fixed_mask", [True, False], ids=["fixed", "fresh"])
@pytest.mark.parametrize("w_shape", [(1, 256 * 128), (256, 128)], ids=["1xnD", "nxD"])
def test_module_saves_under_64_bytes_for_backward(device, fixed_mask, w_shape):
    module = tinybig_cuda.masking_reconciliation(p=0.5, fixed_mask=fixed_mask, device=device)
    w = torch.randn(w_shape, device=device, requires_grad=True)
    saved, out = _saved_bytes(lambda: module(w=w, n=256, D=128, device=device))
    assert saved < MAX_SAVED_BYTES, f"{saved} bytes saved for backward"
    out.sum().backward()
    assert torch.equal(w.grad.reshape(256, 128), module.generate_masking_matrix(256, 128, device=device).float())


def test_saved_bytes_measurement_can_fail():
    """The measurement itself sees saved tensors: w * mask saves the mask."""
    w = torch.randn(256, 256, requires_grad=True)
    mask = torch.rand(256, 256) < 0.5
    saved, _ = _saved_bytes(lambda: w * mask)
    assert saved >= 256 * 256


def test_changing_the_state_between_forward_and_backward_is_an_error_not_a_wrong_gradient():
    # The backward regenerates the mask from the saved state tensor; autograd's version counter
    # catches an in-place change of it (say, a reseeded fixed-mask buffer) before it is used.
    state = torch.tensor([11, -7], dtype=torch.int64)
    w = torch.randn(50, requires_grad=True)
    out = tinybig_cuda.bernoulli_mask_apply(w, 0.5, state)
    state.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()

# ---------------------------------------------------------------- the compact ops (count, expand, compress)


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_flow_into_exactly_the_kept_entries(device):
    state, p, shape = compact_state(device), 0.3, (23, 29)
    kept = reference_kept_count(shape, p, state)
    values = random_values((kept,), torch.float64, device).requires_grad_()
    grad_full = random_values(shape, torch.float64, device, seed=9)
    tinybig_cuda.bernoulli_mask_expand(values, p, state, shape).backward(grad_full)
    mask = tinybig_cuda.bernoulli_mask(shape, p, state)
    assert torch.equal(values.grad, grad_full[mask])

    full = random_values(shape, torch.float64, device).requires_grad_()
    grad_values = random_values((kept,), torch.float64, device, seed=4)
    tinybig_cuda.bernoulli_mask_compress(full, p, state, kept).backward(grad_values)
    assert torch.equal(full.grad[mask], grad_values)
    assert torch.equal(full.grad[~mask], torch.zeros_like(full.grad[~mask]))


@requires_opcheck
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["float32", "float64", "bfloat16"])
def test_opcheck_compact_ops(device, requires_grad, dtype):
    state, shape = compact_state(device), (9, 13)
    for p, element_offset in [(0.5, 0), (0.3, 7)]:
        kept = reference_kept_count(shape, p, state, element_offset)
        values = torch.randn(kept, device=device).to(dtype).requires_grad_(requires_grad)
        full = torch.randn(shape, device=device).to(dtype).requires_grad_(requires_grad)
        torch.library.opcheck(EXPAND, (values, p, state, list(shape), element_offset))
        torch.library.opcheck(COMPRESS, (full, p, state, kept, element_offset))
        torch.library.opcheck(COMPRESS, (full.t(), p, state, reference_kept_count(shape[::-1], p, state, element_offset), element_offset))
    torch.library.opcheck(COUNT, (117, 0.5, state, 3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_gradcheck_and_gradgradcheck_compact_ops_float64(device, p):
    state, shape = compact_state(device), (6, 7)
    kept = reference_kept_count(shape, p, state, 5)
    values = torch.randn(kept, dtype=torch.float64, device=device, requires_grad=True)
    full = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)

    def expand(values):
        return tinybig_cuda.bernoulli_mask_expand(values, p, state, shape, element_offset=5)

    def compress(full):
        return tinybig_cuda.bernoulli_mask_compress(full, p, state, kept, element_offset=5)

    for function, argument in [(expand, values), (compress, full)]:
        assert torch.autograd.gradcheck(function, (argument,))
        assert torch.autograd.gradgradcheck(function, (argument,))
