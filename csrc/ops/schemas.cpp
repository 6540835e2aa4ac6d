// The schemas of the tinybig_cuda ops: their one declaration. The kernels are registered per
// device (ops/cpu/, ops/cuda/, ops/fallback_kernels.cpp), autograd in ops/autograd.cpp, and the fake
// kernels torch.compile traces with in tinybig_cuda/ops.py and compact.py.
#include <torch/library.h>

#include "ops/torch_compat.h"

namespace tinybig_cuda {

TORCH_LIBRARY(tinybig_cuda, m) {
  // rng_state is a tensor, not an int, so torch.compile does not specialise on the seed and a
  // CUDA graph replay reads whatever state was last written into it.
  // SymInt sizes, counts and offsets let torch.compile keep them symbolic instead of recompiling
  // for each value; the kernels take them as plain integers.
  // element_offset and row_length place the tensor in a larger matrix's mask (a shard): local
  // element (r, c), r counting rows of the last dimension, is global element
  // element_offset + r * row_length + c; row_length=None means rows follow one another.
  name_fake_kernel_module(m, "tinybig_cuda.ops");
  m.def("bernoulli_mask_apply(Tensor w, float p, Tensor rng_state, SymInt element_offset=0, SymInt? row_length=None) -> Tensor");
  m.def("bernoulli_mask(SymInt[] shape, float p, Tensor rng_state, SymInt element_offset=0, SymInt? row_length=None) -> Tensor");
  // bernoulli_mask_apply with p as data (a one-element float tensor on the CPU), which is what
  // tinybig_cuda.bernoulli_mask_apply calls under torch.compile: dynamo specialises a float
  // argument (a graph per value of p), but not a tensor's contents. The same kernels, so the same
  // bits; torch.export keeps the float op.
  m.def("bernoulli_mask_apply_p_tensor(Tensor w, Tensor p, Tensor rng_state, SymInt element_offset=0, SymInt? row_length=None) -> Tensor");
  // Compact parameters (only the kept entries stored): the mask's kept count, and the scatter and
  // gather between the kept values (in row-major order) and the full matrix, each the other's
  // adjoint. kept_count is an argument, not read from the mask, so compress's output shape is
  // known without running it; the kernels refuse a count that is not the mask's.
  name_fake_kernel_module(m, "tinybig_cuda.compact");
  m.def("bernoulli_mask_count(SymInt numel, float p, Tensor rng_state, SymInt element_offset=0) -> Tensor");
  m.def("bernoulli_mask_expand(Tensor values, float p, Tensor rng_state, SymInt[] shape, SymInt element_offset=0) -> Tensor");
  m.def("bernoulli_mask_compress(Tensor full, float p, Tensor rng_state, SymInt kept_count, SymInt element_offset=0) -> Tensor");
  // F.linear(x, bernoulli_mask_apply(w, p, rng_state), bias) without the whole masked weight, and
  // the two products of its backward (ops/masked_linear.cpp).
  name_fake_kernel_module(m, "tinybig_cuda.weight_drop");
  m.def("masked_linear(Tensor x, Tensor w, float p, Tensor rng_state, Tensor? bias=None) -> Tensor");
  m.def("masked_linear_backward_input(Tensor grad_output, Tensor w, float p, Tensor rng_state) -> Tensor");
  m.def("masked_linear_backward_weight(Tensor grad_output, Tensor x, float p, Tensor rng_state) -> Tensor");
}

}  // namespace tinybig_cuda
