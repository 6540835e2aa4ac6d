"""Windows of a larger matrix (row_length): a shard of columns is masked as part of the whole.

Local element (r, c) of a window is global element element_offset + r * row_length + c. Every case
compares the window's output with the same slice of the whole matrix's output, bit for bit, and
the sharding arithmetic that places DTensor shards in such windows is in test_dtensor_windows.py.
"""

import pytest
import torch

from tinybig_cuda import bernoulli_mask, bernoulli_mask_apply

from conftest import DEVICES, DTYPES, DTYPE_IDS, assert_bitwise_equal, make_state

STATE = (0x0123456789ABCDEF, -3)
# (rows, cols, (row0, row1, col0, col1)) windows: single columns, tails, one row, interiors.
WINDOWS = [
    (7, 5, (0, 7, 0, 2)),
    (7, 5, (1, 6, 2, 5)),
    (7, 5, (3, 4, 1, 4)),
    (33, 1031, (0, 33, 1, 1030)),
    (64, 4100, (5, 64, 2048, 4100)),
    (9, 17, (0, 9, 16, 17)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rows, cols, window", WINDOWS)
def test_window_equals_the_slice_of_the_whole(rows, cols, window, dtype, device):
    r0, r1, c0, c1 = window
    state = make_state(*STATE, device)
    weight = torch.randn(rows, cols, device=device).to(dtype)
    whole = bernoulli_mask_apply(weight, 0.37, state)
    view = weight[r0:r1, c0:c1]
    expected = whole[r0:r1, c0:c1].contiguous()
    # A strided view, its contiguous copy and a transposed layout: each read path of the kernel.
    for w in (view, view.contiguous(), view.t().contiguous().t()):
        assert_bitwise_equal(bernoulli_mask_apply(w, 0.37, state, r0 * cols + c0, row_length=cols), expected)
    mask = bernoulli_mask((r1 - r0, c1 - c0), 0.37, state, r0 * cols + c0, row_length=cols)
    assert torch.equal(mask, bernoulli_mask((rows, cols), 0.37, state)[r0:r1, c0:c1])
    if c1 - c0 < cols and r1 - r0 > 1:  # without the row length, the rows would read the wrong words
        assert not torch.equal(bernoulli_mask_apply(view, 0.37, state, r0 * cols + c0), expected)


def test_window_gradient_is_the_windows_mask():
    state = make_state(*STATE)
    weight = torch.randn(6, 11, dtype=torch.float64)
    view = weight[:, 3:8].clone().requires_grad_()
    out = bernoulli_mask_apply(view, 0.5, state, 3, row_length=11)
    out.backward(torch.ones_like(out))
    assert torch.equal(view.grad != 0, bernoulli_mask((6, 11), 0.5, state)[:, 3:8])
    torch.autograd.gradcheck(lambda w: bernoulli_mask_apply(w, 0.5, state, 3, row_length=11), (view.detach().requires_grad_(),))


def test_row_length_of_contiguous_rows_is_the_flat_case():
    state = make_state(*STATE)
    w = torch.randn(5, 8)
    assert_bitwise_equal(bernoulli_mask_apply(w, 0.4, state, 9, row_length=8), bernoulli_mask_apply(w, 0.4, state, 9))


@pytest.mark.parametrize("key", ["MPS", "XPU", "PrivateUse1"])
def test_window_on_the_fallback_kernel_equals_the_cpu_kernel(key):
    # The fallback of devices without a kernel (run here on CPU tensors, through its dispatch key).
    state = make_state(*STATE)
    w = torch.randn(4, 6)
    for name, args in (("bernoulli_mask_apply", (w, 0.3, state, 2, 13)), ("bernoulli_mask", ([4, 6], 0.3, state, 2, 13))):
        op = getattr(torch.ops.tinybig_cuda, name).default
        expected = op._op_dk(torch._C.DispatchKey.CPU, *args)
        assert_bitwise_equal(op._op_dk(getattr(torch._C.DispatchKey, key), *args), expected)
    # Element (r, c) is global element 2 + 13 r + c.
    assert torch.equal(expected, bernoulli_mask(2 + 4 * 13, 0.3, state)[2:].view(4, 13)[:, :6])
