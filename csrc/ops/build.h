// Facts of the op library's build, for the Python module and C++ callers.
#pragma once

namespace tinybig_cuda {

// Whether this op library was compiled with its CUDA kernels (TINYBIG_WITH_CUDA).
bool built_with_cuda_kernels();

}  // namespace tinybig_cuda
