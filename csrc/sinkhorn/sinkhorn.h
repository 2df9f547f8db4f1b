// Shared by the CPU and CUDA Sinkhorn kernels: argument checks and output allocation.
// The Python wrapper (aubench/ops/sinkhorn.py) validates everything first with clear
// messages; these checks only keep direct torch.ops.aubench calls from reaching memory
// they should not touch.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <tuple>

namespace aubench::sinkhorn {

// cost (B, K, K) or (1, K, K) broadcast over the batch; a, b (B, K); float32 or float64.
inline void check_forward_inputs(const at::Tensor& cost, const at::Tensor& a,
                                 const at::Tensor& b, double eps, int64_t max_iter,
                                 double tol) {
  TORCH_CHECK(a.dim() == 2, "sinkhorn: a must be (B, K), got ", a.sizes());
  TORCH_CHECK(b.sizes() == a.sizes(), "sinkhorn: b must have the shape of a ", a.sizes(),
              ", got ", b.sizes());
  const int64_t batch = a.size(0), k = a.size(1);
  TORCH_CHECK(k >= 1, "sinkhorn: K must be at least 1");
  TORCH_CHECK(cost.dim() == 3 && (cost.size(0) == batch || cost.size(0) == 1) &&
                  cost.size(1) == k && cost.size(2) == k,
              "sinkhorn: cost must be (B, K, K) or (1, K, K) with (B, K) = (", batch, ", ", k,
              "), got ", cost.sizes());
  TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble,
              "sinkhorn: the kernels take float32 or float64, got ", a.scalar_type());
  TORCH_CHECK(cost.scalar_type() == a.scalar_type() && b.scalar_type() == a.scalar_type(),
              "sinkhorn: cost, a and b must share one dtype");
  TORCH_CHECK(cost.device() == a.device() && b.device() == a.device(),
              "sinkhorn: cost, a and b must be on one device");
  TORCH_CHECK(eps > 0, "sinkhorn: eps must be > 0, got ", eps);
  // The kernels run in a's dtype: eps must be a normal number there (the Python wrapper
  // also bounds it by the cost's scale, see aubench.ops.eps_range).
  const bool is_float = a.scalar_type() == at::kFloat;
  const double smallest = is_float ? std::numeric_limits<float>::min()
                                   : std::numeric_limits<double>::min();
  const double largest = is_float ? std::numeric_limits<float>::max()
                                  : std::numeric_limits<double>::max();
  TORCH_CHECK(eps >= smallest && eps <= largest, "sinkhorn: eps=", eps, " is not a normal ",
              a.scalar_type(), " number");
  TORCH_CHECK(max_iter >= 1, "sinkhorn: max_iter must be >= 1, got ", max_iter);
  TORCH_CHECK(tol >= 0, "sinkhorn: tol must be >= 0, got ", tol);
}

inline void check_backward_inputs(const at::Tensor& grad_plan, const at::Tensor& plan,
                                  const at::Tensor& cost, const at::Tensor& a,
                                  const at::Tensor& b, const at::Tensor& g_history,
                                  const at::Tensor& num_iter, double eps) {
  check_forward_inputs(cost, a, b, eps, 1, 0.0);
  const int64_t batch = a.size(0), k = a.size(1);
  TORCH_CHECK(grad_plan.sizes() == plan.sizes() && plan.dim() == 3 && plan.size(0) == batch &&
                  plan.size(1) == k && plan.size(2) == k,
              "sinkhorn_backward: grad_plan and plan must be (B, K, K)");
  TORCH_CHECK(grad_plan.scalar_type() == a.scalar_type() &&
                  plan.scalar_type() == a.scalar_type() &&
                  g_history.scalar_type() == a.scalar_type(),
              "sinkhorn_backward: grad_plan, plan and g_history must have a's dtype");
  TORCH_CHECK(g_history.dim() == 3 && g_history.size(0) == batch && g_history.size(2) == k,
              "sinkhorn_backward: g_history must be (B, iterations, K), got ",
              g_history.sizes());
  TORCH_CHECK(num_iter.dim() == 1 && num_iter.size(0) == batch &&
                  num_iter.scalar_type() == at::kLong,
              "sinkhorn_backward: num_iter must be int64 (B,)");
  TORCH_CHECK(grad_plan.device() == a.device() && plan.device() == a.device() &&
                  g_history.device() == a.device() && num_iter.device() == a.device(),
              "sinkhorn_backward: all tensors must be on one device");
}

// plan (B, K, K) zeros, g_history (B, max_iter or 0, K) zeros, num_iter int64 (B,) zeros,
// marginal_error (B,) zeros.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> allocate_forward_outputs(
    const at::Tensor& a, int64_t max_iter, bool keep_history) {
  const int64_t batch = a.size(0), k = a.size(1);
  return {at::zeros({batch, k, k}, a.options()),
          at::zeros({batch, keep_history ? max_iter : 0, k}, a.options()),
          at::zeros({batch}, a.options().dtype(at::kLong)), at::zeros({batch}, a.options())};
}

}  // namespace aubench::sinkhorn
