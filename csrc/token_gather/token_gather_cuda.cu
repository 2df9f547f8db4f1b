// Masked-token gather / restore, CUDA. Same semantics as token_gather_cpu.cpp.
//
// gather, restore and gather's backward are one kernel: out[b, r] = src[b, index[b, r]] when
// index < src_rows, else a fill row (the mask token, or zeros). Rows are copied as raw bytes in
// the widest aligned vector (16, 8, 4 or 2 bytes), so no dtype dispatch is needed. restore's
// backward also sums the masked rows into the mask-token gradient: each thread owns one channel
// of one sample and one chunk of positions, and the per-chunk partial sums are added at the end.
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

// Thread (b, d, chunk): copies visible rows of one channel back to x_vis and sums the masked
// ones into partial[b, chunk, d].
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void restore_backward_kernel(const scalar_t* __restrict__ grad,
                                        const index_t* __restrict__ index,
                                        scalar_t* __restrict__ grad_x_vis,
                                        acc_t* __restrict__ partial, int64_t batch,
                                        int64_t length,
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
      const scalar_t g = grad[(b * length + l) * dim + d];
      if (i < num_keep) {
        grad_x_vis[(b * num_keep + i) * dim + d] = g;
      } else {
        sum += static_cast<acc_t>(g);
      }
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
  const at::Tensor src = grad.contiguous();
  const int64_t batch = grad.size(0), num_keep = grad.size(1);
  // Inverse map: source row of every output position, num_keep (= the zero row) where none.
  // ids_keep was validated on the host; scatter_ itself also refuses out-of-range indices.
  at::Tensor source = at::full({batch, length}, num_keep, ids_keep.options().dtype(at::kLong));
  source.scatter_(1, ids_keep.to(at::kLong),
                  at::arange(num_keep, source.options()).expand({batch, num_keep}));
  const at::Tensor zero_row = at::zeros({grad.size(2)}, src.options());
  at::Tensor out = at::empty({batch, length, grad.size(2)}, src.options());
  copy_rows(src, source, num_keep + 1, zero_row, out);
  return out;
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
  at::Tensor grad_x_vis = at::empty({batch, num_keep, dim}, src.options());
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
        restore_backward_kernel<scalar_t, acc_t, index_t>
            <<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                src.data_ptr<scalar_t>(), ids.data_ptr<index_t>(),
                grad_x_vis.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), batch, length,
                num_keep,
                dim, chunk);
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
