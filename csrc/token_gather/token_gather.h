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

inline void check_gather_backward_inputs(const at::Tensor& grad, const at::Tensor& ids_keep,
                                         int64_t length) {
  check_features(grad, "grad");
  check_index(ids_keep, grad, "ids_keep");
  TORCH_CHECK(ids_keep.size(1) == grad.size(1), "ids_keep has ", ids_keep.size(1),
              " columns but grad has ", grad.size(1), " rows");
  TORCH_CHECK(length >= grad.size(1), "length ", length, " is below the kept count ",
              grad.size(1));
}

inline void check_restore_inputs(const at::Tensor& x_vis, const at::Tensor& ids_restore,
                                 const at::Tensor& mask_token) {
  check_features(x_vis, "x_vis");
  check_index(ids_restore, x_vis, "ids_restore");
  TORCH_CHECK(mask_token.dim() == 1 && mask_token.size(0) == x_vis.size(2),
              "mask_token must have shape (", x_vis.size(2), "), got ", mask_token.sizes());
  TORCH_CHECK(mask_token.scalar_type() == x_vis.scalar_type(), "mask_token is ",
              mask_token.scalar_type(), " but x_vis is ", x_vis.scalar_type());
  TORCH_CHECK(mask_token.device() == x_vis.device(), "mask_token is on ", mask_token.device(),
              " but x_vis is on ", x_vis.device());
  TORCH_CHECK(x_vis.size(1) <= ids_restore.size(1), "x_vis has ", x_vis.size(1),
              " tokens, more than the ", ids_restore.size(1), " positions of ids_restore");
}

inline void check_restore_backward_inputs(const at::Tensor& grad, const at::Tensor& ids_restore,
                                          int64_t num_keep) {
  check_features(grad, "grad");
  check_index(ids_restore, grad, "ids_restore");
  TORCH_CHECK(ids_restore.size(1) == grad.size(1), "ids_restore has ", ids_restore.size(1),
              " columns but grad has ", grad.size(1), " rows");
  TORCH_CHECK(num_keep >= 0 && num_keep <= grad.size(1), "num_keep ", num_keep,
              " is outside [0, ", grad.size(1), "]");
}

}  // namespace aubench
