// Batched log-domain Sinkhorn on CUDA: forward and its exact adjoint (backward).
//
// One thread block per problem runs every iteration inside the kernel (one launch, no host
// synchronisation), with the per-problem convergence test as a block reduction. Rows and
// columns are spread over the threads. When the problem fits (K <= 64), the cost matrix,
// the potentials and (backward) the cost gradient live in shared memory, with rows padded
// to avoid bank conflicts; larger K read the cost from global memory and keep the vectors
// in a global workspace. The iterations and stopping rule are those of
// aubench/ops/reference.py; the CPU kernel (sinkhorn_cpu.cpp) computes the same values.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include "sinkhorn/sinkhorn.h"

namespace aubench::sinkhorn {
namespace {

constexpr int kSharedMaxK = 64;
constexpr int kMaxThreads = 256;
constexpr int kForwardVectors = 7;   // in_a, in_b, alpha, beta, f, g, row_lse
constexpr int kBackwardVectors = 12; // in_a, in_b, alpha, beta, f, g_prev, row_lse, col_lse,
                                     // bar_f, bar_g, bar_alpha, bar_beta

__device__ __forceinline__ float device_exp(float x) { return expf(x); }
__device__ __forceinline__ double device_exp(double x) { return exp(x); }
__device__ __forceinline__ float device_log(float x) { return logf(x); }
__device__ __forceinline__ double device_log(double x) { return log(x); }

template <typename T>
__device__ __forceinline__ T negative_infinity() {
  return -static_cast<T>(INFINITY);
}

// Sum over the block (blockDim.x a multiple of 32); every thread receives the total.
template <typename T>
__device__ T block_sum(T value, T* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1)
    value += __shfl_down_sync(0xffffffffu, value, offset);
  __syncthreads();  // scratch may still be read from a previous call
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = value;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) total += scratch[w];
  return total;
}

// LSE over m in the support of ((potential_m - C(row, col)) / eps) along a row (over columns
// j, fixed i = index) or a column (over rows i, fixed j = index). ld is the row stride.
template <typename T>
__device__ T row_logsumexp(const T* cost, int64_t ld, int k, int i, const T* g,
                           const T* in_b, T eps) {
  T top = negative_infinity<T>();
  for (int j = 0; j < k; ++j)
    if (in_b[j] != 0) top = fmax(top, (g[j] - cost[i * ld + j]) / eps);
  T sum = 0;
  for (int j = 0; j < k; ++j)
    if (in_b[j] != 0) sum += device_exp((g[j] - cost[i * ld + j]) / eps - top);
  return top + device_log(sum);
}

template <typename T>
__device__ T col_logsumexp(const T* cost, int64_t ld, int k, int j, const T* f,
                           const T* in_a, T eps) {
  T top = negative_infinity<T>();
  for (int i = 0; i < k; ++i)
    if (in_a[i] != 0) top = fmax(top, (f[i] - cost[i * ld + j]) / eps);
  T sum = 0;
  for (int i = 0; i < k; ++i)
    if (in_a[i] != 0) sum += device_exp((f[i] - cost[i * ld + j]) / eps - top);
  return top + device_log(sum);
}

// Loads the problem's marginals: support masks (1/0), log-normalised masses, totals.
// Returns false (for the whole block) when a or b has zero total mass.
template <typename T>
__device__ bool load_marginals(const T* a, const T* b, int k, T* in_a, T* in_b, T* alpha,
                               T* beta, T* scratch, T& sum_a, T& sum_b) {
  T part_a = 0, part_b = 0;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    part_a += a[i];
    part_b += b[i];
  }
  sum_a = block_sum(part_a, scratch);
  sum_b = block_sum(part_b, scratch);
  if (!(sum_a > 0) || !(sum_b > 0)) return false;
  const T log_a = device_log(sum_a), log_b = device_log(sum_b);
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    in_a[i] = a[i] > 0 ? T(1) : T(0);
    in_b[i] = b[i] > 0 ? T(1) : T(0);
    alpha[i] = a[i] > 0 ? device_log(a[i]) - log_a : T(0);
    beta[i] = b[i] > 0 ? device_log(b[i]) - log_b : T(0);
  }
  return true;
}

// Shared-memory layout: [cost K x ld][vectors]; global layout: vectors only (the cost is
// read in place, ld = K).
template <typename T>
__global__ void sinkhorn_forward_kernel(const T* __restrict__ cost, int64_t cost_stride,
                                        const T* __restrict__ a, const T* __restrict__ b,
                                        int k, T eps, int64_t max_iter, T tol,
                                        T* __restrict__ plan, T* __restrict__ history,
                                        int64_t history_len, int64_t* __restrict__ num_iter,
                                        T* __restrict__ marginal_error,
                                        T* __restrict__ workspace, bool use_shared) {
  extern __shared__ __align__(sizeof(double)) unsigned char shared_raw[];
  __shared__ T scratch[32];
  const int64_t p = blockIdx.x;
  const T* cost_p = cost + p * cost_stride;
  const int64_t ld = use_shared ? (k % 2 == 0 ? k + 1 : k) : k;
  T* vectors = use_shared ? reinterpret_cast<T*>(shared_raw) + k * ld
                          : workspace + p * kForwardVectors * k;
  T* in_a = vectors;
  T* in_b = in_a + k;
  T* alpha = in_b + k;
  T* beta = alpha + k;
  T* f = beta + k;
  T* g = f + k;
  T* lse = g + k;
  const T* C = cost_p;
  if (use_shared) {
    T* C_shared = reinterpret_cast<T*>(shared_raw);
    for (int idx = threadIdx.x; idx < k * k; idx += blockDim.x)
      C_shared[(idx / k) * ld + idx % k] = cost_p[idx];
    C = C_shared;
  }
  T sum_a, sum_b;
  if (!load_marginals(a + p * k, b + p * k, k, in_a, in_b, alpha, beta, scratch, sum_a,
                      sum_b)) {
    if (threadIdx.x == 0) num_iter[p] = 0;  // all-zero plan and error (already zero)
    return;
  }
  for (int j = threadIdx.x; j < k; j += blockDim.x) g[j] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < k; i += blockDim.x)
    lse[i] = in_a[i] != 0 ? row_logsumexp(C, ld, k, i, g, in_b, eps) : T(0);

  int64_t steps = 0;
  for (int64_t step = 1; step <= max_iter; ++step) {
    for (int i = threadIdx.x; i < k; i += blockDim.x)
      f[i] = in_a[i] != 0 ? eps * (alpha[i] - lse[i]) : T(0);
    __syncthreads();
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
      g[j] = in_b[j] != 0 ? eps * (beta[j] - col_logsumexp(C, ld, k, j, f, in_a, eps)) : T(0);
      if (history_len > 0) history[(p * history_len + step - 1) * k + j] = g[j];
    }
    __syncthreads();
    steps = step;
    if (step == max_iter) break;
    T err = 0;
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
      if (in_a[i] == 0) {
        lse[i] = 0;
        continue;
      }
      lse[i] = row_logsumexp(C, ld, k, i, g, in_b, eps);
      err += fabs(device_exp(f[i] / eps + lse[i]) - device_exp(alpha[i]));
    }
    if (tol > 0 && block_sum(err, scratch) < tol) break;  // uniform across the block
  }
  // The plan in its column-normalised form, (b_j / sum b) * w_ij / sum_i w_ij with
  // w_ij = exp(x_ij - max_i x_ij), x_ij = (f_i - C_ij) / eps: exp((f_i + g_j - C_ij) / eps)
  // normalised explicitly, so it stays finite with columns summing to b / sum b even when
  // eps is below the potentials' rounding error; its row error is measured on the plan
  // itself (see column_normalised_plan in sinkhorn_cpu.cpp, the same formula). g and lse
  // are no longer read (every thread is past the loop's last barrier): they now hold each
  // column's max and scale.
  T* top = g;
  T* scale = lse;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    T column_max = negative_infinity<T>();
    for (int i = 0; i < k; ++i)
      if (in_a[i] != 0) column_max = fmax(column_max, (f[i] - C[i * ld + j]) / eps);
    T sum = 0;
    for (int i = 0; i < k; ++i)
      if (in_a[i] != 0) sum += device_exp((f[i] - C[i * ld + j]) / eps - column_max);
    top[j] = column_max;
    scale[j] = in_b[j] != 0 ? device_exp(beta[j]) / sum : T(0);
  }
  __syncthreads();
  T* plan_p = plan + p * k * k;
  T err = 0;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    if (in_a[i] == 0) continue;
    T row_sum = 0;
    for (int j = 0; j < k; ++j) {
      if (in_b[j] == 0) continue;
      const T value = device_exp((f[i] - C[i * ld + j]) / eps - top[j]) * scale[j];
      plan_p[i * k + j] = value;
      row_sum += value;
    }
    err += fabs(row_sum - device_exp(alpha[i]));
  }
  err = block_sum(err, scratch);
  if (threadIdx.x == 0) {
    num_iter[p] = steps;
    marginal_error[p] = err;
  }
}

// Reverse-mode pass through the iterations the forward ran; f^t is recomputed from the
// stored g^{t-1}. Shared layout: [cost K x ld][cost gradient K x ld][vectors]; global
// layout: the cost is read in place and its gradient accumulated in grad_cost (ld = K).
template <typename T>
__global__ void sinkhorn_backward_kernel(
    const T* __restrict__ grad_plan, const T* __restrict__ plan, const T* __restrict__ cost,
    int64_t cost_stride, const T* __restrict__ a, const T* __restrict__ b,
    const T* __restrict__ history, int64_t history_len, const int64_t* __restrict__ num_iter,
    int k, T eps, T* __restrict__ grad_cost, T* __restrict__ grad_a, T* __restrict__ grad_b,
    T* __restrict__ workspace, bool use_shared) {
  extern __shared__ __align__(sizeof(double)) unsigned char shared_raw[];
  __shared__ T scratch[32];
  const int64_t p = blockIdx.x;
  const int64_t steps = min(num_iter[p], history_len);  // the host checks this cannot clip
  if (steps <= 0) return;  // all-zero plan: zero gradients (outputs start at zero)
  const T* cost_p = cost + p * cost_stride;
  const int64_t ld = use_shared ? (k % 2 == 0 ? k + 1 : k) : k;
  T* vectors = use_shared ? reinterpret_cast<T*>(shared_raw) + 2 * k * ld
                          : workspace + p * kBackwardVectors * k;
  T* in_a = vectors;
  T* in_b = in_a + k;
  T* alpha = in_b + k;
  T* beta = alpha + k;
  T* f = beta + k;
  T* g_prev = f + k;
  T* row_lse = g_prev + k;
  T* col_lse = row_lse + k;
  T* bar_f = col_lse + k;
  T* bar_g = bar_f + k;
  T* bar_alpha = bar_g + k;
  T* bar_beta = bar_alpha + k;
  const T* C = cost_p;
  T* bar_C = grad_cost + p * k * k;
  if (use_shared) {
    T* C_shared = reinterpret_cast<T*>(shared_raw);
    for (int idx = threadIdx.x; idx < k * k; idx += blockDim.x)
      C_shared[(idx / k) * ld + idx % k] = cost_p[idx];
    C = C_shared;
    bar_C = C_shared + k * ld;
  }
  T sum_a, sum_b;
  if (!load_marginals(a + p * k, b + p * k, k, in_a, in_b, alpha, beta, scratch, sum_a,
                      sum_b))
    return;
  // Seed from the plan: d plan_ij = plan_ij / eps * (d f_i + d g_j - d C_ij).
  const T* grad_p = grad_plan + p * k * k;
  const T* plan_p = plan + p * k * k;
  for (int idx = threadIdx.x; idx < k * k; idx += blockDim.x)
    bar_C[(idx / k) * ld + idx % k] = -grad_p[idx] * plan_p[idx] / eps;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    T row = 0, col = 0;
    for (int m = 0; m < k; ++m) {
      row += grad_p[i * k + m] * plan_p[i * k + m];
      col += grad_p[m * k + i] * plan_p[m * k + i];
    }
    bar_f[i] = row / eps;
    bar_g[i] = col / eps;
    bar_alpha[i] = 0;
    bar_beta[i] = 0;
  }
  for (int64_t step = steps; step >= 1; --step) {
    for (int j = threadIdx.x; j < k; j += blockDim.x)
      g_prev[j] = step >= 2 ? history[(p * history_len + step - 2) * k + j] : T(0);
    __syncthreads();
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
      row_lse[i] = in_a[i] != 0 ? row_logsumexp(C, ld, k, i, g_prev, in_b, eps) : T(0);
      f[i] = in_a[i] != 0 ? eps * (alpha[i] - row_lse[i]) : T(0);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < k; j += blockDim.x)
      col_lse[j] = in_b[j] != 0 ? col_logsumexp(C, ld, k, j, f, in_a, eps) : T(0);
    __syncthreads();
    // Through g^t = eps*(beta - LSE_i((f - C)/eps)): Q_ij = column softmax weights.
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
      bar_beta[i] += eps * bar_g[i];
      if (in_a[i] == 0) continue;
      T acc = 0;
      for (int j = 0; j < k; ++j) {
        if (in_b[j] == 0) continue;
        const T term = device_exp((f[i] - C[i * ld + j]) / eps - col_lse[j]) * bar_g[j];
        bar_C[i * ld + j] += term;
        acc += term;
      }
      bar_f[i] -= acc;
    }
    __syncthreads();
    // Through f^t = eps*(alpha - LSE_j((g^{t-1} - C)/eps)): R_ij = row softmax weights.
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
      T acc = 0;
      if (in_b[j] != 0) {
        for (int i = 0; i < k; ++i) {
          if (in_a[i] == 0) continue;
          const T term = device_exp((g_prev[j] - C[i * ld + j]) / eps - row_lse[i]) * bar_f[i];
          bar_C[i * ld + j] += term;
          acc += term;
        }
      }
      bar_g[j] = -acc;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
      bar_alpha[i] += eps * bar_f[i];
      bar_f[i] = 0;
    }
  }
  // alpha_i = log a_i - log sum(a) on the support (constant elsewhere); same for beta.
  T part_alpha = 0, part_beta = 0;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    part_alpha += bar_alpha[i];
    part_beta += bar_beta[i];
  }
  const T total_alpha = block_sum(part_alpha, scratch);
  const T total_beta = block_sum(part_beta, scratch);
  const T* a_p = a + p * k;
  const T* b_p = b + p * k;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    grad_a[p * k + i] = (in_a[i] != 0 ? bar_alpha[i] / a_p[i] : T(0)) - total_alpha / sum_a;
    grad_b[p * k + i] = (in_b[i] != 0 ? bar_beta[i] / b_p[i] : T(0)) - total_beta / sum_b;
  }
  if (use_shared) {
    T* out = grad_cost + p * k * k;
    for (int idx = threadIdx.x; idx < k * k; idx += blockDim.x)
      out[idx] = bar_C[(idx / k) * ld + idx % k];
  }
}

int threads_for(int64_t k) {
  const int64_t warps = (k + 31) / 32;
  return static_cast<int>(std::min<int64_t>(warps * 32, kMaxThreads));
}

// Shared memory when K <= 64 and the device allows the size (raising the 48 KiB default
// when needed); otherwise the global-memory path.
template <typename Kernel>
bool prepare_shared(Kernel kernel, int64_t k, size_t bytes) {
  if (k > kSharedMaxK) return false;
  if (bytes <= 48 * 1024) return true;
  int device = 0, optin_bytes = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin_bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (bytes > static_cast<size_t>(optin_bytes)) return false;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  return true;
}

int64_t padded_ld(int64_t k) { return k % 2 == 0 ? k + 1 : k; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cuda(
    const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, double eps,
    int64_t max_iter, double tol, bool keep_history) {
  check_forward_inputs(cost, a, b, eps, max_iter, tol);
  TORCH_CHECK(a.is_cuda(), "sinkhorn_cuda: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(a.device());
  auto [plan, history, num_iter, marginal_error] =
      allocate_forward_outputs(a, max_iter, keep_history);
  const int64_t batch = a.size(0), k = a.size(1);
  if (batch == 0) return {plan, history, num_iter, marginal_error};
  const at::Tensor cost_c = cost.contiguous(), a_c = a.contiguous(), b_c = b.contiguous();
  const int64_t cost_stride = cost.size(0) == 1 ? 0 : k * k;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sinkhorn_cuda", [&] {
    auto kernel = sinkhorn_forward_kernel<scalar_t>;
    const size_t bytes = (k * padded_ld(k) + kForwardVectors * k) * sizeof(scalar_t);
    const bool use_shared = prepare_shared(kernel, k, bytes);
    at::Tensor workspace =
        use_shared ? at::empty({0}, a.options()) : at::empty({batch, kForwardVectors * k}, a.options());
    kernel<<<static_cast<unsigned int>(batch), threads_for(k), use_shared ? bytes : 0, stream>>>(
        cost_c.data_ptr<scalar_t>(), cost_stride, a_c.data_ptr<scalar_t>(),
        b_c.data_ptr<scalar_t>(), static_cast<int>(k), static_cast<scalar_t>(eps), max_iter,
        static_cast<scalar_t>(tol), plan.data_ptr<scalar_t>(), history.data_ptr<scalar_t>(),
        history.size(1), num_iter.data_ptr<int64_t>(), marginal_error.data_ptr<scalar_t>(),
        workspace.data_ptr<scalar_t>(), use_shared);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {plan, history, num_iter, marginal_error};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_backward_cuda(
    const at::Tensor& grad_plan, const at::Tensor& plan, const at::Tensor& cost,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& g_history,
    const at::Tensor& num_iter, double eps) {
  check_backward_inputs(grad_plan, plan, cost, a, b, g_history, num_iter, eps);
  TORCH_CHECK(a.is_cuda(), "sinkhorn_backward_cuda: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t batch = a.size(0), k = a.size(1);
  at::Tensor grad_cost = at::zeros({batch, k, k}, a.options());
  at::Tensor grad_a = at::zeros({batch, k}, a.options());
  at::Tensor grad_b = at::zeros({batch, k}, a.options());
  if (batch == 0) return {grad_cost, grad_a, grad_b};
  TORCH_CHECK(g_history.size(1) > 0,
              "sinkhorn_backward: g_history is empty (was the forward run with "
              "keep_history=True?)");
  const at::Tensor grad_c = grad_plan.contiguous(), plan_c = plan.contiguous();
  const at::Tensor cost_c = cost.contiguous(), a_c = a.contiguous(), b_c = b.contiguous();
  const at::Tensor history_c = g_history.contiguous(), num_iter_c = num_iter.contiguous();
  const int64_t cost_stride = cost.size(0) == 1 ? 0 : k * k;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sinkhorn_backward_cuda", [&] {
    auto kernel = sinkhorn_backward_kernel<scalar_t>;
    const size_t bytes = (2 * k * padded_ld(k) + kBackwardVectors * k) * sizeof(scalar_t);
    const bool use_shared = prepare_shared(kernel, k, bytes);
    at::Tensor workspace = use_shared ? at::empty({0}, a.options())
                                      : at::empty({batch, kBackwardVectors * k}, a.options());
    kernel<<<static_cast<unsigned int>(batch), threads_for(k), use_shared ? bytes : 0, stream>>>(
        grad_c.data_ptr<scalar_t>(), plan_c.data_ptr<scalar_t>(), cost_c.data_ptr<scalar_t>(),
        cost_stride, a_c.data_ptr<scalar_t>(), b_c.data_ptr<scalar_t>(),
        history_c.data_ptr<scalar_t>(), g_history.size(1), num_iter_c.data_ptr<int64_t>(),
        static_cast<int>(k), static_cast<scalar_t>(eps), grad_cost.data_ptr<scalar_t>(),
        grad_a.data_ptr<scalar_t>(), grad_b.data_ptr<scalar_t>(),
        workspace.data_ptr<scalar_t>(), use_shared);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_cost, grad_a, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(aubench, CUDA, m) {
  m.impl("sinkhorn", &sinkhorn_cuda);
  m.impl("sinkhorn_backward", &sinkhorn_backward_cuda);
}

}  // namespace aubench::sinkhorn
