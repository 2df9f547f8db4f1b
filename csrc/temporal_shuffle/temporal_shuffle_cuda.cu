// Temporal-shuffle clips, CUDA. Same semantics as temporal_shuffle_cpu.cpp: one block per
// frame row, and the backward written as the forward's adjoint, row by row of the gradient,
// in the op-math type (float for half / bfloat16), so every gradient element is written once
// (whatever perm holds) and the sums are added in the same order as on the CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda_launch.cuh"
#include "temporal_shuffle/temporal_shuffle.h"

namespace aubench {
namespace {

template <typename index_t>
__device__ __forceinline__ int64_t frame_at(const index_t* perm, int64_t b, int64_t t,
                                            int64_t frames) {
  const int64_t f = static_cast<int64_t>(perm[b * frames + t]);
  CUDA_KERNEL_ASSERT(f >= 0 && f < frames);
  return f;
}

// out (2B, N, C): block row (r, t) copies clip r's frame t (frame perm[b, t] of clip b in a
// shuffled copy r = B + b).
template <typename scalar_t, typename index_t>
__global__ void shuffle_forward_kernel(const scalar_t* __restrict__ features,
                                       const index_t* __restrict__ perm,
                                       scalar_t* __restrict__ out, int64_t batch, int64_t frames,
                                       int64_t channels) {
  const int64_t rows = 2 * batch * frames;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t r = row / frames, t = row - r * frames;
    const bool shuffled = r >= batch;
    const int64_t b = shuffled ? r - batch : r;
    const int64_t f = shuffled ? frame_at(perm, b, t, frames) : t;
    const scalar_t* now = features + (b * frames + f) * channels;
    scalar_t* target = out + row * channels;
    for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) target[c] = now[c];
  }
}

// grad_features (B, N, C): block row (b, f) writes frame f, which the real clip holds at
// position f and the shuffled clip at the positions t with perm[b, t] == f: exactly one for a
// permutation; the block finds it with one pass over perm's row (shared-memory atomics), and
// for any other perm (validate=False) adds every such position, in position order, or none.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void shuffle_backward_kernel(const scalar_t* __restrict__ grad,
                                        const index_t* __restrict__ perm,
                                        scalar_t* __restrict__ out, int64_t batch, int64_t frames,
                                        int64_t channels) {
  __shared__ unsigned long long first_position;
  __shared__ int positions;
  const int64_t rows = batch * frames;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t b = row / frames, f = row - b * frames;
    if (threadIdx.x == 0) {
      first_position = static_cast<unsigned long long>(frames);
      positions = 0;
    }
    __syncthreads();
    for (int64_t t = threadIdx.x; t < frames; t += blockDim.x) {
      if (frame_at(perm, b, t, frames) == f) {
        atomicMin(&first_position, static_cast<unsigned long long>(t));
        atomicAdd(&positions, 1);
      }
    }
    __syncthreads();
    const int64_t first = static_cast<int64_t>(first_position);
    const int count = positions;
    const scalar_t* real = grad + (b * frames + f) * channels;
    const scalar_t* shuffled = grad + (batch + b) * frames * channels;
    scalar_t* target = out + (b * frames + f) * channels;
    for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
      acc_t value = static_cast<acc_t>(real[c]);
      if (count > 0) value += static_cast<acc_t>(shuffled[first * channels + c]);
      for (int64_t t = first + 1; count > 1 && t < frames; ++t)
        if (frame_at(perm, b, t, frames) == f)
          value += static_cast<acc_t>(shuffled[t * channels + c]);
      target[c] = static_cast<scalar_t>(value);
    }
    __syncthreads();  // everyone has read first_position before the next row resets it
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
  at::Tensor out = at::empty({2 * batch, frames, channels}, d.options());
  if (out.numel() == 0) return out;
  const int64_t rows = 2 * batch * frames;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(),
                                  "temporal_shuffle_features_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(p.scalar_type(), "temporal_shuffle_features_cuda", [&] {
      shuffle_forward_kernel<scalar_t, index_t>
          <<<blocks_for_rows(rows), threads_for_width(channels), 0,
             c10::cuda::getCurrentCUDAStream()>>>(
              d.data_ptr<scalar_t>(), p.data_ptr<index_t>(), out.data_ptr<scalar_t>(), batch,
              frames, channels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor temporal_shuffle_features_backward_cuda(const at::Tensor& grad, const at::Tensor& perm) {
  check_backward_inputs(grad, perm);
  const int64_t batch = grad.size(0) / 2, frames = grad.size(1), channels = grad.size(2);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor p = perm.contiguous();
  at::Tensor out = at::empty({batch, frames, channels}, g.options());
  if (out.numel() == 0) return out;
  const int64_t rows = batch * frames;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "temporal_shuffle_features_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    AT_DISPATCH_INDEX_TYPES(p.scalar_type(), "temporal_shuffle_features_backward_cuda", [&] {
      shuffle_backward_kernel<scalar_t, acc_t, index_t>
          <<<blocks_for_rows(rows), threads_for_width(channels), 0,
             c10::cuda::getCurrentCUDAStream()>>>(
              g.data_ptr<scalar_t>(), p.data_ptr<index_t>(), out.data_ptr<scalar_t>(), batch,
              frames, channels);
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
