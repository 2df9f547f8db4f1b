// Input checks shared by the CPU and CUDA temporal-shuffle kernels: the last line of defence
// for direct torch.ops.aubench.* calls (the Python wrapper checks first).
#pragma once

#include <ATen/ATen.h>

namespace aubench {

inline void check_perm(const at::Tensor& perm, int64_t batch, int64_t frames, const at::Device& device) {
  TORCH_CHECK(perm.dim() == 2 && perm.size(0) == batch && perm.size(1) == frames,
              "perm must have shape (", batch, ", ", frames, "), got ", perm.sizes());
  TORCH_CHECK(perm.scalar_type() == at::kLong || perm.scalar_type() == at::kInt,
              "perm must be int64 or int32, got ", perm.scalar_type());
  TORCH_CHECK(perm.device() == device, "perm is on ", perm.device(), " but the features are on ",
              device);
}

}  // namespace aubench
