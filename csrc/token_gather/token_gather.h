// Input checks shared by the CPU and CUDA token gather/restore kernels: the last line of
// defence for direct torch.ops.aubench.* calls (the Python wrappers check first).
#pragma once

#include <ATen/ATen.h>

namespace aubench {

inline void check_features(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 3, name, " must be 3-D (B, rows, D), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), name, " must be a floating tensor, got ",
              x.scalar_type());
}

inline void check_index(const at::Tensor& ids, const at::Tensor& x, const char* name) {
  TORCH_CHECK(ids.dim() == 2, name, " must be 2-D (B, rows), got ", ids.sizes());
  TORCH_CHECK(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, name,
              " must be int64 or int32, got ", ids.scalar_type());
  TORCH_CHECK(ids.size(0) == x.size(0), name, " has batch ", ids.size(0), " but features have ",
              x.size(0));
  TORCH_CHECK(ids.device() == x.device(), name, " is on ", ids.device(), " but features are on ",
              x.device());
}

}  // namespace aubench
