// Batched log-domain Sinkhorn on the CPU: forward and its exact adjoint (backward),
// parallel over the problems of the batch with at::parallel_for.
//
// The iterations, stopping rule and final plan are those of aubench/ops/reference.py (see its
// docstring). Each log-sum-exp LSE_j((g_j - C_ij) / eps) is evaluated in a stabilised,
// cheaper form (a known identity, the "absorption" trick of stabilised Sinkhorn):
//     LSE_j(x_j - C_ij/eps) = max_x - rowmin_i/eps + log sum_j u_j Kr_ij,
//     u_j = exp(x_j - max_x) in (0, 1],  Kr_ij = exp(-(C_ij - rowmin_i)/eps) in (0, 1],
// with Kr computed once per problem. That turns the K^2 exponentials of each update into K
// exponentials and K^2 multiply-adds. When the sum is so small that dropped (underflowed)
// terms could matter, that row falls back to the plain max-shifted log-sum-exp, so the result
// stays the exact log-domain value at any eps.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "sinkhorn/sinkhorn.h"

namespace aubench::sinkhorn {
namespace {

// cut: exponents below -cut are flushed to 0 (so products of two factors never go subnormal);
// min_sum: below it a row's sum may have lost relevant terms and is recomputed exactly.
template <typename T>
struct Stabilisation;
template <>
struct Stabilisation<float> {
  static constexpr float cut = 40.0f;
  static constexpr float min_sum = 3.0e-7f;  // ~exp(-15): dropped terms < 1e-9 relative
};
template <>
struct Stabilisation<double> {
  static constexpr double cut = 300.0;
  static constexpr double min_sum = 3.7e-44;  // ~exp(-100)
};

// One problem's constants and scratch buffers, reused across the problems of a chunk.
template <typename T>
class Problem {
 public:
  explicit Problem(int64_t k)
      : k_(k), in_a_(k), in_b_(k), alpha_(k), beta_(k), row_min_(k), col_min_(k),
        row_kernel_(k * k), col_kernel_(k * k), weights_(k), sums_(k) {}

  // Returns false when a or b has zero total mass (the plan is then all zero).
  bool setup(const T* cost, const T* a, const T* b, T eps) {
    cost_ = cost;
    eps_ = eps;
    T sum_a = 0, sum_b = 0;
    for (int64_t i = 0; i < k_; ++i) {
      sum_a += a[i];
      sum_b += b[i];
    }
    if (!(sum_a > 0) || !(sum_b > 0)) return false;
    sum_a_ = sum_a;
    sum_b_ = sum_b;
    const T log_a = std::log(sum_a), log_b = std::log(sum_b);
    for (int64_t i = 0; i < k_; ++i) {
      in_a_[i] = a[i] > 0;
      in_b_[i] = b[i] > 0;
      alpha_[i] = in_a_[i] ? std::log(a[i]) - log_a : T(0);
      beta_[i] = in_b_[i] ? std::log(b[i]) - log_b : T(0);
    }
    const T inf = std::numeric_limits<T>::infinity();
    std::fill(row_min_.begin(), row_min_.end(), inf);
    std::fill(col_min_.begin(), col_min_.end(), inf);
    for (int64_t i = 0; i < k_; ++i) {
      if (!in_a_[i]) continue;
      for (int64_t j = 0; j < k_; ++j) {
        if (!in_b_[j]) continue;
        const T c = cost[i * k_ + j];
        row_min_[i] = std::min(row_min_[i], c);
        col_min_[j] = std::min(col_min_[j], c);
      }
    }
    for (int64_t i = 0; i < k_; ++i) {
      for (int64_t j = 0; j < k_; ++j) {
        T row_value = 0, col_value = 0;
        if (in_a_[i] && in_b_[j]) {
          const T c = cost[i * k_ + j];
          row_value = flushed_exp(-(c - row_min_[i]) / eps);
          col_value = flushed_exp(-(c - col_min_[j]) / eps);
        }
        row_kernel_[i * k_ + j] = row_value;
        col_kernel_[i * k_ + j] = col_value;
      }
    }
    return true;
  }

  // lse_i = LSE_{j in supp b} ((g_j - C_ij) / eps) for i in supp a (0 elsewhere).
  // scale_i = exp(-(lse_i - shift_i)) where the fast form was used, 0 where it was not;
  // weights() then holds u_j, so the softmax weight is u_j * Kr_ij * scale_i.
  void row_lse(const T* g, T* lse, T* scale) {
    const T shift = shifted_weights(g, in_b_.data());
    for (int64_t i = 0; i < k_; ++i) {
      lse[i] = 0;
      scale[i] = 0;
      if (!in_a_[i]) continue;
      const T* kernel_row = row_kernel_.data() + i * k_;
      const T* u = weights_.data();
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < k_; ++j) sum += u[j] * kernel_row[j];
      if (sum >= Stabilisation<T>::min_sum) {
        lse[i] = shift - row_min_[i] / eps_ + std::log(sum);
        scale[i] = T(1) / sum;
      } else {
        lse[i] = exact_lse(g, i, /*over_rows=*/false);
      }
    }
  }

  // lse_j = LSE_{i in supp a} ((f_i - C_ij) / eps) for j in supp b (0 elsewhere); as row_lse.
  void col_lse(const T* f, T* lse, T* scale) {
    const T shift = shifted_weights(f, in_a_.data());
    T* sums = sums_.data();
    std::fill(sums, sums + k_, T(0));
    for (int64_t i = 0; i < k_; ++i) {
      const T v = weights_[i];
      if (v == 0) continue;
      const T* kernel_row = col_kernel_.data() + i * k_;
#pragma omp simd
      for (int64_t j = 0; j < k_; ++j) sums[j] += v * kernel_row[j];
    }
    for (int64_t j = 0; j < k_; ++j) {
      lse[j] = 0;
      scale[j] = 0;
      if (!in_b_[j]) continue;
      if (sums[j] >= Stabilisation<T>::min_sum) {
        lse[j] = shift - col_min_[j] / eps_ + std::log(sums[j]);
        scale[j] = T(1) / sums[j];
      } else {
        lse[j] = exact_lse(f, j, /*over_rows=*/true);
      }
    }
  }

  // weights[i][j] = exp((g_j - C_ij) / eps - lse_i) (row softmax) from a row_lse call that
  // left its u_j in weights(); zero outside the supports.
  void row_softmax(const T* g, const T* lse, const T* scale, T* out) const {
    for (int64_t i = 0; i < k_; ++i) {
      T* out_row = out + i * k_;
      if (!in_a_[i]) {
        std::fill(out_row, out_row + k_, T(0));
      } else if (scale[i] > 0) {
        const T* kernel_row = row_kernel_.data() + i * k_;
        const T s = scale[i];
#pragma omp simd
        for (int64_t j = 0; j < k_; ++j) out_row[j] = weights_[j] * kernel_row[j] * s;
      } else {
        for (int64_t j = 0; j < k_; ++j)
          out_row[j] = in_b_[j] ? std::exp((g[j] - cost_[i * k_ + j]) / eps_ - lse[i]) : T(0);
      }
    }
  }

  // out[i][j] = exp((f_i - C_ij) / eps - lse_j) (column softmax), after a col_lse call.
  void col_softmax(const T* f, const T* lse, const T* scale, T* out) const {
    for (int64_t i = 0; i < k_; ++i) {
      T* out_row = out + i * k_;
      const T* kernel_row = col_kernel_.data() + i * k_;
      const T v = weights_[i];
#pragma omp simd
      for (int64_t j = 0; j < k_; ++j) out_row[j] = v * kernel_row[j] * scale[j];
    }
    for (int64_t j = 0; j < k_; ++j) {
      if (!in_b_[j] || scale[j] > 0) continue;
      for (int64_t i = 0; i < k_; ++i)
        out[i * k_ + j] =
            in_a_[i] ? std::exp((f[i] - cost_[i * k_ + j]) / eps_ - lse[j]) : T(0);
    }
  }

  int64_t k() const { return k_; }
  T eps() const { return eps_; }
  bool in_a(int64_t i) const { return in_a_[i]; }
  bool in_b(int64_t j) const { return in_b_[j]; }
  T alpha(int64_t i) const { return alpha_[i]; }
  T beta(int64_t j) const { return beta_[j]; }
  T sum_a() const { return sum_a_; }
  T sum_b() const { return sum_b_; }

 private:
  static T flushed_exp(T x) { return x < -Stabilisation<T>::cut ? T(0) : std::exp(x); }

  // weights_[j] = exp(x_j - max x) over the support (x = potential / eps); returns max x.
  T shifted_weights(const T* potential, const char* support) {
    T shift = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < k_; ++j)
      if (support[j]) shift = std::max(shift, potential[j] / eps_);
    for (int64_t j = 0; j < k_; ++j)
      weights_[j] = support[j] ? flushed_exp(potential[j] / eps_ - shift) : T(0);
    return shift;
  }

  // Plain max-shifted log-sum-exp of one row (over j in supp b) or column (over i in supp a).
  T exact_lse(const T* potential, int64_t index, bool over_rows) const {
    const char* support = over_rows ? in_a_.data() : in_b_.data();
    auto term = [&](int64_t m) {
      const T c = over_rows ? cost_[m * k_ + index] : cost_[index * k_ + m];
      return (potential[m] - c) / eps_;
    };
    T top = -std::numeric_limits<T>::infinity();
    for (int64_t m = 0; m < k_; ++m)
      if (support[m]) top = std::max(top, term(m));
    T sum = 0;
    for (int64_t m = 0; m < k_; ++m)
      if (support[m]) sum += std::exp(term(m) - top);
    return top + std::log(sum);
  }

  int64_t k_;
  const T* cost_ = nullptr;
  T eps_ = 1, sum_a_ = 1, sum_b_ = 1;
  std::vector<char> in_a_, in_b_;
  std::vector<T> alpha_, beta_, row_min_, col_min_, row_kernel_, col_kernel_, weights_, sums_;
};

// Writes the final plan in its column-normalised form,
//     plan_ij = (b_j / sum b) * w_ij / sum_i w_ij,  w_ij = exp(x_ij - max_i x_ij),
//     x_ij = (f_i - C_ij) / eps,
// and returns its row error sum_i |sum_j plan_ij - a_i / sum a|. This is
// exp((f_i + g_j - C_ij) / eps) for the g the last update computed from f, but normalised
// explicitly rather than through potentials: once eps is below the rounding error of the
// potentials (about 6e-8 * max|C| in float32), f_i + g_j - C_ij, and even an LSE's
// max + log(sum), are noise that exp() blows up (total mass 7 at eps = 1e-10 in float32).
// Normalised this way the plan is finite and its columns sum to b / sum b whatever the
// iterations reached, and the error returned is measured on the plan itself.
// Same formula as the CUDA kernel and aubench/ops/reference.py.
template <typename T>
T column_normalised_plan(const Problem<T>& problem, const T* f, const T* cost, T* out, T* top,
                         T* scale) {
  const int64_t k = problem.k();
  const T eps = problem.eps();
  std::fill(top, top + k, -std::numeric_limits<T>::infinity());
  for (int64_t i = 0; i < k; ++i) {
    if (!problem.in_a(i)) continue;
    for (int64_t j = 0; j < k; ++j) top[j] = std::max(top[j], (f[i] - cost[i * k + j]) / eps);
  }
  std::fill(scale, scale + k, T(0));
  for (int64_t i = 0; i < k; ++i) {
    if (!problem.in_a(i)) continue;
    for (int64_t j = 0; j < k; ++j) {
      if (!problem.in_b(j)) continue;
      out[i * k + j] = std::exp((f[i] - cost[i * k + j]) / eps - top[j]);
      scale[j] += out[i * k + j];
    }
  }
  for (int64_t j = 0; j < k; ++j)
    scale[j] = problem.in_b(j) ? std::exp(problem.beta(j)) / scale[j] : T(0);
  T err = 0;
  for (int64_t i = 0; i < k; ++i) {
    if (!problem.in_a(i)) continue;
    T row_sum = 0;
    for (int64_t j = 0; j < k; ++j) {
      out[i * k + j] *= scale[j];
      row_sum += out[i * k + j];
    }
    err += std::abs(row_sum - std::exp(problem.alpha(i)));
  }
  return err;
}

template <typename T>
void forward_problems(const T* cost, int64_t cost_stride, const T* a, const T* b, T eps,
                      int64_t max_iter, T tol, T* plan, T* history, int64_t history_len,
                      int64_t* num_iter, T* marginal_error, int64_t k, int64_t begin,
                      int64_t end) {
  Problem<T> problem(k);
  std::vector<T> f(k), g(k), row_lse(k), row_scale(k), col_lse(k), col_scale(k), col_top(k);
  for (int64_t p = begin; p < end; ++p) {
    const T* c = cost + p * cost_stride;
    if (!problem.setup(c, a + p * k, b + p * k, eps)) {
      num_iter[p] = 0;  // plan stays all zero, and so does its error
      continue;
    }
    std::fill(g.begin(), g.end(), T(0));
    problem.row_lse(g.data(), row_lse.data(), row_scale.data());
    int64_t steps = 0;
    for (int64_t step = 1; step <= max_iter; ++step) {
      for (int64_t i = 0; i < k; ++i)
        f[i] = problem.in_a(i) ? eps * (problem.alpha(i) - row_lse[i]) : T(0);
      problem.col_lse(f.data(), col_lse.data(), col_scale.data());
      for (int64_t j = 0; j < k; ++j)
        g[j] = problem.in_b(j) ? eps * (problem.beta(j) - col_lse[j]) : T(0);
      if (history_len > 0)
        std::copy(g.begin(), g.end(), history + (p * history_len + step - 1) * k);
      steps = step;
      if (step == max_iter) break;
      problem.row_lse(g.data(), row_lse.data(), row_scale.data());
      if (tol > 0) {
        // Columns match b exactly after the g update; rows are off by this L1 error.
        T err = 0;
        for (int64_t i = 0; i < k; ++i)
          if (problem.in_a(i))
            err += std::abs(std::exp(f[i] / eps + row_lse[i]) - std::exp(problem.alpha(i)));
        if (err < tol) break;
      }
    }
    num_iter[p] = steps;
    marginal_error[p] = column_normalised_plan(problem, f.data(), c, plan + p * k * k,
                                               col_top.data(), col_scale.data());
  }
}

// Reverse-mode pass through exactly the iterations the forward ran (see reference.py):
//   plan_ij = exp((f_i + g_j - C_ij)/eps),  g^t = eps*(beta - LSE_i((f^t - C)/eps)),
//   f^t = eps*(alpha - LSE_j((g^{t-1} - C)/eps)).  f^t is recomputed from the stored g^{t-1}.
template <typename T>
void backward_problems(const T* grad_plan, const T* plan, const T* cost, int64_t cost_stride,
                       const T* a, const T* b, const T* history, int64_t history_len,
                       const int64_t* num_iter, T eps, T* grad_cost, T* grad_a, T* grad_b,
                       int64_t k, int64_t begin, int64_t end) {
  Problem<T> problem(k);
  std::vector<T> f(k), g_prev(k), bar_f(k), bar_g(k), bar_alpha(k), bar_beta(k);
  std::vector<T> row_lse(k), row_scale(k), col_lse(k), col_scale(k);
  std::vector<T> row_weights(k * k), col_weights(k * k);
  for (int64_t p = begin; p < end; ++p) {
    const int64_t steps = num_iter[p];
    if (steps == 0 || !problem.setup(cost + p * cost_stride, a + p * k, b + p * k, eps))
      continue;  // all-zero plan: zero gradients (outputs start at zero)
    const T* grad_p = grad_plan + p * k * k;
    const T* plan_p = plan + p * k * k;
    T* bar_cost = grad_cost + p * k * k;
    std::fill(bar_f.begin(), bar_f.end(), T(0));
    std::fill(bar_g.begin(), bar_g.end(), T(0));
    std::fill(bar_alpha.begin(), bar_alpha.end(), T(0));
    std::fill(bar_beta.begin(), bar_beta.end(), T(0));
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        const T w = grad_p[i * k + j] * plan_p[i * k + j] / eps;
        bar_f[i] += w;
        bar_g[j] += w;
        bar_cost[i * k + j] = -w;
      }
    }
    for (int64_t step = steps; step >= 1; --step) {
      if (step >= 2) {
        const T* stored = history + (p * history_len + step - 2) * k;
        std::copy(stored, stored + k, g_prev.begin());
      } else {
        std::fill(g_prev.begin(), g_prev.end(), T(0));
      }
      problem.row_lse(g_prev.data(), row_lse.data(), row_scale.data());
      problem.row_softmax(g_prev.data(), row_lse.data(), row_scale.data(), row_weights.data());
      for (int64_t i = 0; i < k; ++i)
        f[i] = problem.in_a(i) ? eps * (problem.alpha(i) - row_lse[i]) : T(0);
      // Through g^t: d g_j = eps d beta_j - sum_i Q_ij (d f_i - d C_ij).
      problem.col_lse(f.data(), col_lse.data(), col_scale.data());
      problem.col_softmax(f.data(), col_lse.data(), col_scale.data(), col_weights.data());
      for (int64_t j = 0; j < k; ++j) bar_beta[j] += eps * bar_g[j];
      for (int64_t i = 0; i < k; ++i) {
        const T* q = col_weights.data() + i * k;
        T* bar_cost_row = bar_cost + i * k;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < k; ++j) {
          const T term = q[j] * bar_g[j];
          bar_cost_row[j] += term;
          acc += term;
        }
        bar_f[i] -= acc;
      }
      // Through f^t: d f_i = eps d alpha_i - sum_j R_ij (d g^{t-1}_j - d C_ij).
      std::fill(bar_g.begin(), bar_g.end(), T(0));
      for (int64_t i = 0; i < k; ++i) {
        bar_alpha[i] += eps * bar_f[i];
        const T* r = row_weights.data() + i * k;
        T* bar_cost_row = bar_cost + i * k;
        const T bf = bar_f[i];
#pragma omp simd
        for (int64_t j = 0; j < k; ++j) {
          const T term = r[j] * bf;
          bar_cost_row[j] += term;
          bar_g[j] -= term;
        }
      }
      std::fill(bar_f.begin(), bar_f.end(), T(0));
    }
    // alpha_i = log a_i - log sum(a) on the support (constant 0 elsewhere); same for beta.
    T total_alpha = 0, total_beta = 0;
    for (int64_t i = 0; i < k; ++i) {
      total_alpha += bar_alpha[i];
      total_beta += bar_beta[i];
    }
    for (int64_t i = 0; i < k; ++i) {
      grad_a[p * k + i] = (problem.in_a(i) ? bar_alpha[i] / a[p * k + i] : T(0)) -
                          total_alpha / problem.sum_a();
      grad_b[p * k + i] = (problem.in_b(i) ? bar_beta[i] / b[p * k + i] : T(0)) -
                          total_beta / problem.sum_b();
    }
  }
}

// Enough problems per task that scheduling overhead stays small for tiny K.
int64_t grain_size(int64_t k) { return std::max<int64_t>(1, 2048 / (k * k + 1)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cpu(
    const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, double eps,
    int64_t max_iter, double tol, bool keep_history) {
  check_forward_inputs(cost, a, b, eps, max_iter, tol);
  TORCH_CHECK(a.device().is_cpu(), "sinkhorn_cpu: tensors must be on the CPU");
  auto [plan, history, num_iter, marginal_error] =
      allocate_forward_outputs(a, max_iter, keep_history);
  const int64_t batch = a.size(0), k = a.size(1);
  if (batch == 0) return {plan, history, num_iter, marginal_error};
  const at::Tensor cost_c = cost.contiguous(), a_c = a.contiguous(), b_c = b.contiguous();
  const int64_t cost_stride = cost.size(0) == 1 ? 0 : k * k;
  const int64_t history_len = history.size(1);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sinkhorn_cpu", [&] {
    const scalar_t* cost_ptr = cost_c.data_ptr<scalar_t>();
    const scalar_t* a_ptr = a_c.data_ptr<scalar_t>();
    const scalar_t* b_ptr = b_c.data_ptr<scalar_t>();
    scalar_t* plan_ptr = plan.data_ptr<scalar_t>();
    scalar_t* history_ptr = history.data_ptr<scalar_t>();
    int64_t* num_iter_ptr = num_iter.data_ptr<int64_t>();
    scalar_t* error_ptr = marginal_error.data_ptr<scalar_t>();
    at::parallel_for(0, batch, grain_size(k), [&](int64_t begin, int64_t end) {
      forward_problems<scalar_t>(cost_ptr, cost_stride, a_ptr, b_ptr, scalar_t(eps), max_iter,
                                 scalar_t(tol), plan_ptr, history_ptr, history_len,
                                 num_iter_ptr, error_ptr, k, begin, end);
    });
  });
  return {plan, history, num_iter, marginal_error};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_backward_cpu(
    const at::Tensor& grad_plan, const at::Tensor& plan, const at::Tensor& cost,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& g_history,
    const at::Tensor& num_iter, double eps) {
  check_backward_inputs(grad_plan, plan, cost, a, b, g_history, num_iter, eps);
  TORCH_CHECK(a.device().is_cpu(), "sinkhorn_backward_cpu: tensors must be on the CPU");
  const int64_t batch = a.size(0), k = a.size(1);
  at::Tensor grad_cost = at::zeros({batch, k, k}, a.options());
  at::Tensor grad_a = at::zeros_like(a, at::MemoryFormat::Contiguous);
  at::Tensor grad_b = at::zeros_like(b, at::MemoryFormat::Contiguous);
  if (batch == 0) return {grad_cost, grad_a, grad_b};
  TORCH_CHECK(num_iter.min().item<int64_t>() >= 0 &&
                  num_iter.max().item<int64_t>() <= g_history.size(1),
              "sinkhorn_backward: num_iter exceeds the stored g_history (was the forward run "
              "with keep_history=True?)");
  const at::Tensor grad_c = grad_plan.contiguous(), plan_c = plan.contiguous();
  const at::Tensor cost_c = cost.contiguous(), a_c = a.contiguous(), b_c = b.contiguous();
  const at::Tensor history_c = g_history.contiguous(), num_iter_c = num_iter.contiguous();
  const int64_t cost_stride = cost.size(0) == 1 ? 0 : k * k;
  const int64_t history_len = g_history.size(1);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sinkhorn_backward_cpu", [&] {
    const scalar_t* grad_ptr = grad_c.data_ptr<scalar_t>();
    const scalar_t* plan_ptr = plan_c.data_ptr<scalar_t>();
    const scalar_t* cost_ptr = cost_c.data_ptr<scalar_t>();
    const scalar_t* a_ptr = a_c.data_ptr<scalar_t>();
    const scalar_t* b_ptr = b_c.data_ptr<scalar_t>();
    const scalar_t* history_ptr = history_c.data_ptr<scalar_t>();
    const int64_t* num_iter_ptr = num_iter_c.data_ptr<int64_t>();
    scalar_t* grad_cost_ptr = grad_cost.data_ptr<scalar_t>();
    scalar_t* grad_a_ptr = grad_a.data_ptr<scalar_t>();
    scalar_t* grad_b_ptr = grad_b.data_ptr<scalar_t>();
    at::parallel_for(0, batch, grain_size(k), [&](int64_t begin, int64_t end) {
      backward_problems<scalar_t>(grad_ptr, plan_ptr, cost_ptr, cost_stride, a_ptr, b_ptr,
                                  history_ptr, history_len, num_iter_ptr, scalar_t(eps),
                                  grad_cost_ptr, grad_a_ptr, grad_b_ptr, k, begin, end);
    });
  });
  return {grad_cost, grad_a, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(aubench, CPU, m) {
  m.impl("sinkhorn", &sinkhorn_cpu);
  m.impl("sinkhorn_backward", &sinkhorn_backward_cpu);
}

}  // namespace aubench::sinkhorn
