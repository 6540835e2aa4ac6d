// The masking_reconciliation module's eager calls, each one trip from Python into C++.
//
// At tinyBIG's sizes (6x12 to 10x256 elements) the fused op takes a few microseconds, and the
// Python around it (a reshape, a call through torch.ops with its schema matching, a torch.randint
// for every fresh mask) cost more than the op itself. Both functions call the op through the
// dispatcher, so autograd records it as usual.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace tinybig_cuda {

// A fresh [seed, offset] on `device`, from torch's default generator for it (so torch.manual_seed
// replays it). On the CPU, two 64-bit draws of the generator written into a new tensor; elsewhere
// a randint made on the device, so a CUDA state costs no host sync.
at::Tensor draw_rng_state(const c10::Device& device);

// Where masking_reconciliation's fixed rng_state lives relative to w: on w's device. Returns
// `state` itself when it is on `device`; otherwise a copy there, made outside inference mode, which
// the module keeps as its buffer for good; on the meta device (shape inference), a data-less
// state for that call only (the module keeps its own).
at::Tensor rng_state_on(const at::Tensor& state, const c10::Device& device);

// masking_reconciliation's call: bernoulli_mask_apply(w, p, rng_state) as an (n, D) matrix, w of
// n*D elements (checked by the caller) and any shape. Returns the matrix and the state it used:
// a fresh one (drawn on w's device) when rng_state is absent, else rng_state_on(rng_state, w's
// device) (the module keeps what comes back, unless it is a meta state).
std::tuple<at::Tensor, at::Tensor> masked_fabrication(const at::Tensor& w, int64_t n, int64_t D,
                                                      double p,
                                                      const std::optional<at::Tensor>& rng_state);

}  // namespace tinybig_cuda
