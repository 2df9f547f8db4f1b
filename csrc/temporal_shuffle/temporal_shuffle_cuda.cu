// Temporal-shuffle classifier features, CUDA. Same semantics as temporal_shuffle_cpu.cpp:
// one thread per output element, arithmetic in the op-math type (float for half / bfloat16),
// and the backward written as the forward's adjoint so every gradient element is written once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace aubench {
namespace {

constexpr int kThreads = 256;

// Grid-stride launches: enough blocks to fill every SM, no more.
// (c10's CUDA headers only: ATen/cuda/CUDAContext.h would need the cuSPARSE/cuBLAS headers.)
int64_t blocks_for(int64_t work) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount,
                                        c10::cuda::current_device()));
  const int64_t most = int64_t{sms} * 32;
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, most));
}

void check_perm(const at::Tensor& perm, int64_t batch, int64_t frames, const at::Device& device) {
  TORCH_CHECK(perm.dim() == 2 && perm.size(0) == batch && perm.size(1) == frames,
              "perm must have shape (", batch, ", ", frames, "), got ", perm.sizes());
  TORCH_CHECK(perm.scalar_type() == at::kLong || perm.scalar_type() == at::kInt,
              "perm must be int64 or int32, got ", perm.scalar_type());
  TORCH_CHECK(perm.device() == device, "perm is on ", perm.device(), " but the features are on ",
              device);
}

template <typename index_t>
__device__ __forceinline__ int64_t frame_at(const index_t* perm, int64_t b, int64_t t,
                                            int64_t frames) {
  const int64_t f = static_cast<int64_t>(perm[b * frames + t]);
  CUDA_KERNEL_ASSERT(f >= 0 && f < frames);
  return f;
}

// out (2B, N, 2C): element (r, t, j); j < C the frame feature, j >= C its difference.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void shuffle_forward_kernel(const scalar_t* __restrict__ features,
                                       const index_t* __restrict__ perm,
                                       scalar_t* __restrict__ out, int64_t batch, int64_t frames,
                                       int64_t channels, int64_t total) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t j = e % (2 * channels);
    const int64_t t = (e / (2 * channels)) % frames;
    const int64_t r = e / (2 * channels * frames);
    const bool shuffled = r >= batch;
    const int64_t b = shuffled ? r - batch : r;
    const int64_t c = j < channels ? j : j - channels;
    const int64_t f = shuffled ? frame_at(perm, b, t, frames) : t;
    const scalar_t* clip = features + b * frames * channels;
    if (j < channels) {
      out[e] = clip[f * channels + c];
    } else {
      const int64_t before = t == 0 ? f : (shuffled ? frame_at(perm, b, t - 1, frames) : t - 1);
      out[e] = static_cast<scalar_t>(static_cast<acc_t>(clip[f * channels + c]) -
                                     static_cast<acc_t>(clip[before * channels + c]));
    }
  }
}

// grad_features (B, N, C): thread (b, t, c) writes frame perm[b, t], which the real clip holds
// at position perm[b, t] and the shuffled clip at position t.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void shuffle_backward_kernel(const scalar_t* __restrict__ grad,
                                        const index_t* __restrict__ perm,
                                        scalar_t* __restrict__ out, int64_t batch, int64_t frames,
                                        int64_t channels, int64_t total) {
  const int64_t row = 2 * channels;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = e % channels;
    const int64_t t = (e / channels) % frames;
    const int64_t b = e / (channels * frames);
    const int64_t f = frame_at(perm, b, t, frames);
    const scalar_t* real = grad + b * frames * row;
    const scalar_t* shuf = grad + (batch + b) * frames * row;
    acc_t from_real = static_cast<acc_t>(real[f * row + c]);
    if (f > 0) from_real += static_cast<acc_t>(real[f * row + channels + c]);
    if (f + 1 < frames) from_real -= static_cast<acc_t>(real[(f + 1) * row + channels + c]);
    acc_t from_shuf = static_cast<acc_t>(shuf[t * row + c]);
    if (t > 0) from_shuf += static_cast<acc_t>(shuf[t * row + channels + c]);
    if (t + 1 < frames) from_shuf -= static_cast<acc_t>(shuf[(t + 1) * row + channels + c]);
    out[(b * frames + f) * channels + c] = static_cast<scalar_t>(from_real + from_shuf);
  }
}

}  // namespace

at::Tensor temporal_shuffle_features_cuda(const at::Tensor& features, const at::Tensor& perm) {
  TORCH_CHECK(features.dim() == 3, "features must be 3-D (B, N, C), got ", features.sizes());
  TORCH_CHECK(at::isFloatingType(features.scalar_type()), "features must be floating, got ",
              features.scalar_type());
  const int64_t batch = features.size(0), frames = features.size(1), channels = features.size(2);
  check_perm(perm, batch, frames, features.device());
  const c10::cuda::CUDAGuard guard(features.device());
  const at::Tensor d = features.contiguous();
  const at::Tensor p = perm.contiguous();
  at::Tensor out = at::empty({2 * batch, frames, 2 * channels}, d.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(),
                                  "temporal_shuffle_features_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    AT_DISPATCH_INDEX_TYPES(p.scalar_type(), "temporal_shuffle_features_cuda", [&] {
      shuffle_forward_kernel<scalar_t, acc_t, index_t>
          <<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              d.data_ptr<scalar_t>(), p.data_ptr<index_t>(), out.data_ptr<scalar_t>(), batch,
              frames, channels, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor temporal_shuffle_features_backward_cuda(const at::Tensor& grad, const at::Tensor& perm) {
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) % 2 == 0 && grad.size(2) % 2 == 0,
              "grad must have shape (2B, N, 2C), got ", grad.sizes());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "grad must be floating, got ",
              grad.scalar_type());
  const int64_t batch = grad.size(0) / 2, frames = grad.size(1), channels = grad.size(2) / 2;
  check_perm(perm, batch, frames, grad.device());
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor p = perm.contiguous();
  at::Tensor out = at::empty({batch, frames, channels}, g.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "temporal_shuffle_features_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    AT_DISPATCH_INDEX_TYPES(p.scalar_type(), "temporal_shuffle_features_backward_cuda", [&] {
      shuffle_backward_kernel<scalar_t, acc_t, index_t>
          <<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              g.data_ptr<scalar_t>(), p.data_ptr<index_t>(), out.data_ptr<scalar_t>(), batch,
              frames, channels, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(aubench, CUDA, m) {
  m.impl("temporal_shuffle_features", &temporal_shuffle_features_cuda);
  m.impl("temporal_shuffle_features_backward", &temporal_shuffle_features_backward_cuda);
}

}  // namespace aubench
