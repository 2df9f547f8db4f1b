// Input checks shared by the CPU and CUDA temporal-shuffle kernels: the last line of defence
// for direct torch.ops.aubench.* calls (the Python wrapper checks first).
#pragma once

#include <ATen/ATen.h>

namespace aubench {

inline void check_perm(const at::Tensor& perm, int64_t batch, int64_t frames,
                       const at::Device& device) {
  TORCH_CHECK(perm.dim() == 2 && perm.size(0) == batch && perm.size(1) == frames,
              "perm must have shape (", batch, ", ", frames, "), got ", perm.sizes());
  TORCH_CHECK(perm.scalar_type() == at::kLong || perm.scalar_type() == at::kInt,
              "perm must be int64 or int32, got ", perm.scalar_type());
  TORCH_CHECK(perm.device() == device, "perm is on ", perm.device(), " but the features are on ",
              device);
}

// grad (2B, N, C) of the real and shuffled clips and the permutations (B, N) that made them.
inline void check_backward_inputs(const at::Tensor& grad, const at::Tensor& perm) {
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) % 2 == 0,
              "grad must have shape (2B, N, C), got ", grad.sizes());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "grad must be floating, got ",
              grad.scalar_type());
  check_perm(perm, grad.size(0) / 2, grad.size(1), grad.device());
}

}  // namespace aubench
