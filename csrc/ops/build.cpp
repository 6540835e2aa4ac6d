#include "ops/build.h"

namespace tinybig_cuda {

bool built_with_cuda_kernels() {
#ifdef TINYBIG_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace tinybig_cuda
