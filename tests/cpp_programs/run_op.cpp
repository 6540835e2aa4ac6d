// A libtorch C++ program with no Python in it: loads tinybig_cuda's op library with dlopen and
// runs bernoulli_mask_apply through the dispatcher, forward and backward, printing both results'
// bits. tests/test_op_library.py compiles it against the installed torch and compares the output
// with the op run from Python.
//   run_op <op library> <seed> <offset> <p> <rows> <cols>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/tensor.h>
#include <torch/csrc/autograd/autograd.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: run_op <op library> <seed> <offset> <p> <rows> <cols>\n");
    return 2;
  }
  if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 1;
  }
  const auto op = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("tinybig_cuda::bernoulli_mask_apply", "")
                      .typed<at::Tensor(const at::Tensor&, double, const at::Tensor&, c10::SymInt,
                                        std::optional<c10::SymInt>)>();
  const std::vector<int64_t> seed_and_offset{std::atoll(argv[2]), std::atoll(argv[3])};
  const at::Tensor state = at::tensor(seed_and_offset, at::kLong);
  const int64_t rows = std::atoll(argv[5]), cols = std::atoll(argv[6]);
  // Distinct, exactly representable values, so every kept element is recognisable.
  const at::Tensor w = at::arange(1, rows * cols + 1, at::kFloat).view({rows, cols}).set_requires_grad(true);
  const at::Tensor out = op.call(w, std::atof(argv[4]), state, 0, std::nullopt);
  torch::autograd::backward({out}, {at::ones_like(out)});
  for (const at::Tensor& result : {out, w.grad()}) {
    const float* values = result.const_data_ptr<float>();
    for (int64_t i = 0; i < result.numel(); ++i) std::printf("%g ", values[i]);
    std::printf("\n");
  }
  return 0;
}
