// Masked-token gather / restore, CUDA. Same semantics as token_gather_cpu.cpp.
//
// gather, restore and both backward passes share one kernel: out[b, r] = src[b, index[b, r]]
// when index < src_rows, else a fill row (the mask token, or zeros). Rows are copied as raw
// bytes in the widest aligned vector (16, 8, 4 or 2 bytes), so no dtype dispatch is needed.
// The backward passes (gather's, and restore's visible rows) are the adjoint scatter: an
// integer map of each output row's first source row (atomicMin on the index map only, never
// on the features), the copy kernel, then a pass that adds repeated sources in source order -
// a no-op exit per sample unless its indices repeat (possible only with validate=False). So
// no gradient row is left unwritten, and the result does not depend on thread timing.
// restore's backward also sums the masked rows into the mask-token gradient: each thread owns
// one channel of one sample and one chunk of positions, and the per-chunk partial sums are
// added at the end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda_launch.cuh"
#include "token_gather/token_gather.h"

#include <cstdint>

namespace aubench {
namespace {

template <typename vec_t, typename index_t>
__global__ void copy_rows_kernel(const vec_t* __restrict__ src, const index_t* __restrict__ index,
                                 const vec_t* __restrict__ fill, vec_t* __restrict__ out,
                                 int64_t rows, int64_t out_rows, int64_t src_rows,
                                 int64_t index_limit, int64_t width) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t i = static_cast<int64_t>(index[row]);
    CUDA_KERNEL_ASSERT(i >= 0 && i < index_limit);
    const vec_t* from = i < src_rows ? src + ((row / out_rows) * src_rows + i) * width : fill;
    vec_t* to = out + row * width;
    for (int64_t w = threadIdx.x; w < width; w += blockDim.x) to[w] = from[w];
  }
}

bool aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

template <typename vec_t, typename index_t>
void launch_copy_rows(const at::Tensor& src, const index_t* index, int64_t index_limit,
                      const void* fill, at::Tensor& out) {
  const int64_t width = out.size(2) * out.element_size() / sizeof(vec_t);
  const int64_t rows = out.size(0) * out.size(1);
  if (rows == 0 || width == 0) return;
  copy_rows_kernel<vec_t, index_t>
      <<<blocks_for_rows(rows), threads_for_width(width), 0,
         c10::cuda::getCurrentCUDAStream()>>>(
          static_cast<const vec_t*>(src.data_ptr()), index, static_cast<const vec_t*>(fill),
          static_cast<vec_t*>(out.data_ptr()), rows, out.size(1), src.size(1), index_limit,
          width);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out[b, r] = src[b, index[b, r]] (index < src rows) or fill; picks the widest aligned vector.
void copy_rows(const at::Tensor& src, const at::Tensor& index, int64_t index_limit,
               const at::Tensor& fill, at::Tensor& out) {
  const int64_t row_bytes = out.size(2) * out.element_size();
  const void* fill_ptr = fill.defined() ? fill.data_ptr() : src.data_ptr();
  auto fits = [&](int64_t bytes) {
    return row_bytes % bytes == 0 && aligned(src.data_ptr(), bytes) &&
           aligned(out.data_ptr(), bytes) && aligned(fill_ptr, bytes);
  };
  AT_DISPATCH_INDEX_TYPES(index.scalar_type(), "copy_rows_cuda", [&] {
    const index_t* ids = index.data_ptr<index_t>();
    if (fits(16)) {
      launch_copy_rows<uint4, index_t>(src, ids, index_limit, fill_ptr, out);
    } else if (fits(8)) {
      launch_copy_rows<uint2, index_t>(src, ids, index_limit, fill_ptr, out);
    } else if (fits(4)) {
      launch_copy_rows<uint32_t, index_t>(src, ids, index_limit, fill_ptr, out);
    } else {
      launch_copy_rows<uint16_t, index_t>(src, ids, index_limit, fill_ptr, out);
    }
  });
}

// first[b, index[b, s]] = min s (entries start at src_rows: no source); repeats[b] = 1 when
// a row of index repeats a value below out_rows. Values in [out_rows, index_limit) are
// skipped (restore's masked positions); values outside [0, index_limit) trip the assert.
template <typename index_t>
__global__ void first_source_kernel(const index_t* __restrict__ index,
                                    long long* __restrict__ first, int* __restrict__ repeats,
                                    int64_t total, int64_t src_rows, int64_t out_rows,
                                    int64_t index_limit) {
  for (int64_t n = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; n < total;
       n += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = static_cast<int64_t>(index[n]);
    CUDA_KERNEL_ASSERT(r >= 0 && r < index_limit);
    if (r < 0 || r >= out_rows) continue;
    const int64_t b = n / src_rows, s = n - b * src_rows;
    const long long previous = atomicMin(first + b * out_rows + r, static_cast<long long>(s));
    if (previous != src_rows) repeats[b] = 1;
  }
}

// Block b (only when repeats[b]): out[b, index[b, s]] += src[b, s] for every source s that is
// not its row's first one, in source order; each thread owns channels, so no two threads
// touch one element.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void add_repeated_rows_kernel(const scalar_t* __restrict__ src,
                                         const index_t* __restrict__ index,
                                         const int64_t* __restrict__ first,
                                         const int* __restrict__ repeats,
                                         scalar_t* __restrict__ out, int64_t batch,
                                         int64_t src_rows, int64_t out_rows, int64_t dim) {
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    if (repeats[b] == 0) continue;
    for (int64_t s = 0; s < src_rows; ++s) {
      const int64_t r = static_cast<int64_t>(index[b * src_rows + s]);
      if (r < 0 || r >= out_rows || first[b * out_rows + r] == s) continue;
      const scalar_t* row = src + (b * src_rows + s) * dim;
      scalar_t* target = out + (b * out_rows + r) * dim;
      for (int64_t d = threadIdx.x; d < dim; d += blockDim.x)
        target[d] = static_cast<scalar_t>(static_cast<acc_t>(target[d]) +
                                          static_cast<acc_t>(row[d]));
    }
  }
}

// The adjoint of a row gather (see scatter_rows in token_gather_cpu.cpp): out[b, r] = sum of
// src[b, s] over the s with index[b, s] == r (zero where none), r < out_rows.
at::Tensor scatter_rows(const at::Tensor& src, const at::Tensor& index, int64_t out_rows,
                        int64_t index_limit) {
  const int64_t batch = src.size(0), src_rows = src.size(1), dim = src.size(2);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor first = at::full({batch, out_rows}, src_rows, index.options().dtype(at::kLong));
  at::Tensor repeats = at::zeros({batch}, index.options().dtype(at::kInt));
  const int64_t total = batch * src_rows;
  if (total > 0) {
    AT_DISPATCH_INDEX_TYPES(index.scalar_type(), "first_source_cuda", [&] {
      first_source_kernel<index_t>
          <<<blocks_for_rows((total + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
              index.data_ptr<index_t>(), reinterpret_cast<long long*>(first.data_ptr<int64_t>()),
              repeats.data_ptr<int>(), total, src_rows, out_rows, index_limit);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const at::Tensor zero_row = at::zeros({dim}, src.options());
  at::Tensor out = at::empty({batch, out_rows, dim}, src.options());
  copy_rows(src, first, src_rows + 1, zero_row, out);
  if (total > 0 && out_rows > 0 && dim > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(),
                                    "add_repeated_rows_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      AT_DISPATCH_INDEX_TYPES(index.scalar_type(), "add_repeated_rows_cuda", [&] {
        add_repeated_rows_kernel<scalar_t, acc_t, index_t>
            <<<blocks_for_rows(batch), threads_for_width(dim), 0, stream>>>(
                src.data_ptr<scalar_t>(), index.data_ptr<index_t>(), first.data_ptr<int64_t>(),
                repeats.data_ptr<int>(), out.data_ptr<scalar_t>(), batch, src_rows, out_rows,
                dim);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return out;
}

// Thread (b, d, chunk): sums the masked rows of one channel into partial[b, chunk, d].
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void mask_token_sum_kernel(const scalar_t* __restrict__ grad,
                                      const index_t* __restrict__ index,
                                      acc_t* __restrict__ partial, int64_t batch, int64_t length,
                                      int64_t num_keep, int64_t dim, int64_t chunk) {
  const int64_t d = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t part = blockIdx.y;
  if (d >= dim) return;
  const int64_t first = part * chunk, last = min(length, first + chunk);
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    acc_t sum = 0;
    for (int64_t l = first; l < last; ++l) {
      const int64_t i = static_cast<int64_t>(index[b * length + l]);
      CUDA_KERNEL_ASSERT(i >= 0 && i < length);
      if (i >= num_keep) sum += static_cast<acc_t>(grad[(b * length + l) * dim + d]);
    }
    partial[(b * gridDim.y + part) * dim + d] = sum;
  }
}

}  // namespace

at::Tensor gather_tokens_cuda(const at::Tensor& x, const at::Tensor& ids_keep) {
  check_features(x, "x");
  check_index(ids_keep, x, "ids_keep");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor src = x.contiguous();
  const at::Tensor ids = ids_keep.contiguous();
  at::Tensor out = at::empty({x.size(0), ids.size(1), x.size(2)}, src.options());
  copy_rows(src, ids, src.size(1), at::Tensor(), out);
  return out;
}

at::Tensor gather_tokens_backward_cuda(const at::Tensor& grad, const at::Tensor& ids_keep,
                                       int64_t length) {
  check_gather_backward_inputs(grad, ids_keep, length);
  const c10::cuda::CUDAGuard guard(grad.device());
  return scatter_rows(grad.contiguous(), ids_keep.contiguous(), length, length);
}

at::Tensor restore_tokens_cuda(const at::Tensor& x_vis, const at::Tensor& ids_restore,
                               const at::Tensor& mask_token) {
  check_restore_inputs(x_vis, ids_restore, mask_token);
  const c10::cuda::CUDAGuard guard(x_vis.device());
  const at::Tensor src = x_vis.contiguous();
  const at::Tensor ids = ids_restore.contiguous();
  at::Tensor out = at::empty({x_vis.size(0), ids.size(1), x_vis.size(2)}, src.options());
  copy_rows(src, ids, ids.size(1), mask_token.contiguous(), out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> restore_tokens_backward_cuda(const at::Tensor& grad,
                                                                const at::Tensor& ids_restore,
                                                                int64_t num_keep) {
  check_restore_backward_inputs(grad, ids_restore, num_keep);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor src = grad.contiguous();
  const at::Tensor ids = ids_restore.contiguous();
  const int64_t batch = grad.size(0), length = grad.size(1), dim = grad.size(2);
  at::Tensor grad_x_vis = scatter_rows(src, ids, num_keep, length);
  // Positions per thread: enough chunks that short batches still fill the GPU.
  const int64_t chunk = std::max<int64_t>(32, (length + 65534) / 65535);
  const int64_t parts = std::max<int64_t>(1, (length + chunk - 1) / chunk);
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor partial = at::zeros({batch, parts, dim}, src.options().dtype(acc_type));
  if (batch > 0 && length > 0 && dim > 0) {
    const dim3 blocks((dim + kThreads - 1) / kThreads, parts, std::min<int64_t>(batch, 65535));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                    "restore_tokens_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "restore_tokens_backward_cuda", [&] {
        mask_token_sum_kernel<scalar_t, acc_t, index_t>
            <<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                src.data_ptr<scalar_t>(), ids.data_ptr<index_t>(), partial.data_ptr<acc_t>(),
                batch, length, num_keep, dim, chunk);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {grad_x_vis, partial.sum({0, 1}).to(grad.scalar_type())};
}

TORCH_LIBRARY_IMPL(aubench, CUDA, m) {
  m.impl("gather_tokens", &gather_tokens_cuda);
  m.impl("gather_tokens_backward", &gather_tokens_backward_cuda);
  m.impl("restore_tokens", &restore_tokens_cuda);
  m.impl("restore_tokens_backward", &restore_tokens_backward_cuda);
}

}  // namespace aubench
