"""The compiled ops as the package's Python calls them: each overload of torch.ops.tinybig_cuda
that Python calls, bound once (csrc/ops/op_handles.h is the C++ side's).

The schemas are csrc/ops/schemas.cpp's. The typed entry points (ops.py, compact.py,
weight_drop.py) check Python values and call these; tests call torch.ops as a user would."""

import torch

from . import _library  # noqa: F401  (loads the op library that defines them)

_ops = torch.ops.tinybig_cuda

bernoulli_mask_apply = _ops.bernoulli_mask_apply.default
bernoulli_mask_apply_p_tensor = _ops.bernoulli_mask_apply_p_tensor.default
bernoulli_mask = _ops.bernoulli_mask.default
bernoulli_mask_count = _ops.bernoulli_mask_count.default
bernoulli_mask_expand = _ops.bernoulli_mask_expand.default
bernoulli_mask_compress = _ops.bernoulli_mask_compress.default
masked_linear = _ops.masked_linear.default
