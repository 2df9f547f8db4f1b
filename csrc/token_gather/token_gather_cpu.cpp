// Masked-token gather / restore (the MAE encoder's and decoder's token shuffles), CPU.
//
// Every op here moves whole D-wide rows, so rows are copied with memcpy whatever the dtype;
// only the mask-token gradient (a sum over the masked rows) and the backward passes' repeated
// indices (rows summed into one) need arithmetic. Work is split over the batch (and rows) with
// at::parallel_for. The Python wrappers validate indices before calling in (unless
// validate=False); the range checks below are the last line of defence, so a bad index raises
// instead of touching memory, and repeated indices give the exact adjoint (no output row is
// ever left unwritten).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "token_gather/token_gather.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace aubench {
namespace {

// Rows to hand one thread at a time: about 64 KiB of copying per task.
int64_t row_grain(int64_t row_bytes) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, row_bytes));
}

// out[b, r] = src[b, index[b, r]] when index[b, r] < src_rows, else the fill row.
// index values must lie in [0, index_limit); fill may be null only when index_limit <= src_rows.
template <typename index_t>
void copy_rows(const at::Tensor& src, int64_t src_rows, const index_t* index, int64_t index_limit,
               const char* fill, at::Tensor& out, const char* index_name) {
  const int64_t batch = out.size(0), out_rows = out.size(1);
  const int64_t row_bytes = out.size(2) * out.element_size();
  const char* src_data = static_cast<const char*>(src.data_ptr());
  char* out_data = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, batch * out_rows, row_grain(row_bytes), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = static_cast<int64_t>(index[row]);
      TORCH_CHECK(i >= 0 && i < index_limit, index_name, " holds ", i, ", outside [0, ",
                  index_limit, ")");
      const int64_t b = row / out_rows;
      const char* from = i < src_rows ? src_data + (b * src_rows + i) * row_bytes : fill;
      if (row_bytes > 0) std::memcpy(out_data + row * row_bytes, from, row_bytes);
    }
  });
}

// The adjoint of a row gather: out[b, r] = sum of src[b, s] over the s with index[b, s] == r,
// zero where there is none, for r < out_rows. Rows with index values in [out_rows,
// index_limit) (restore's masked positions) are summed into overflow_sum[b] (B, D, op-math
// type, zero-initialised) when it is given, else skipped; values outside [0, index_limit)
// raise. One pass over the sources per sample: each output row is copied from its first
// source and later ones are added on top in source order (the CUDA kernels add in the same
// order, so both give the same bits); rows with no source are zeroed, so none is ever left
// unwritten. index: int64, contiguous (B, src rows).
at::Tensor scatter_rows(const at::Tensor& src, const at::Tensor& index, int64_t out_rows,
                        int64_t index_limit, const char* index_name,
                        at::Tensor* overflow_sum = nullptr) {
  const int64_t batch = src.size(0), src_rows = src.size(1), dim = src.size(2);
  const int64_t* ids = index.data_ptr<int64_t>();
  at::Tensor out = at::empty({batch, out_rows, dim}, src.options());
  // first[b, r]: the first s with index[b, s] == r, or src_rows where none.
  std::vector<int64_t> first(batch * out_rows, src_rows);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = src_rows - 1; s >= 0; --s) {
      const int64_t r = ids[b * src_rows + s];
      TORCH_CHECK(r >= 0 && r < index_limit, index_name, " holds ", r, ", outside [0, ",
                  index_limit, ")");
      if (r < out_rows) first[b * out_rows + r] = s;
    }
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(),
                                  "scatter_rows_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* from = src.data_ptr<scalar_t>();
    scalar_t* to = out.data_ptr<scalar_t>();
    acc_t* overflow = overflow_sum ? overflow_sum->data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t* first_row = first.data() + b * out_rows;
        for (int64_t r = 0; r < out_rows; ++r)
          if (first_row[r] == src_rows)
            std::fill_n(to + (b * out_rows + r) * dim, dim, scalar_t(0));
        for (int64_t s = 0; s < src_rows; ++s) {
          const int64_t r = ids[b * src_rows + s];
          const scalar_t* row = from + (b * src_rows + s) * dim;
          if (r >= out_rows) {
            if (overflow)
              for (int64_t d = 0; d < dim; ++d)
                overflow[b * dim + d] += static_cast<acc_t>(row[d]);
            continue;
          }
          scalar_t* target = to + (b * out_rows + r) * dim;
          if (first_row[r] == s) {
            std::memcpy(target, row, dim * sizeof(scalar_t));
          } else {
            for (int64_t d = 0; d < dim; ++d)
              target[d] = static_cast<scalar_t>(static_cast<acc_t>(target[d]) +
                                                static_cast<acc_t>(row[d]));
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

at::Tensor gather_tokens_cpu(const at::Tensor& x, const at::Tensor& ids_keep) {
  check_features(x, "x");
  check_index(ids_keep, x, "ids_keep");
  const at::Tensor src = x.contiguous();
  const at::Tensor ids = ids_keep.contiguous();
  at::Tensor out = at::empty({x.size(0), ids.size(1), x.size(2)}, src.options());
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "gather_tokens_cpu", [&] {
    copy_rows<index_t>(src, src.size(1), ids.data_ptr<index_t>(), src.size(1), nullptr, out,
                       "ids_keep");
  });
  return out;
}

// The adjoint of gather_tokens: each kept row goes back to its position (summed where
// ids_keep repeats a position), the other rows are zero.
at::Tensor gather_tokens_backward_cpu(const at::Tensor& grad, const at::Tensor& ids_keep,
                                      int64_t length) {
  check_gather_backward_inputs(grad, ids_keep, length);
  return scatter_rows(grad.contiguous(), ids_keep.to(at::kLong).contiguous(), length, length,
                      "ids_keep");
}

at::Tensor restore_tokens_cpu(const at::Tensor& x_vis, const at::Tensor& ids_restore,
                              const at::Tensor& mask_token) {
  check_restore_inputs(x_vis, ids_restore, mask_token);
  const at::Tensor src = x_vis.contiguous();
  const at::Tensor fill = mask_token.contiguous();
  const at::Tensor ids = ids_restore.contiguous();
  at::Tensor out = at::empty({x_vis.size(0), ids.size(1), x_vis.size(2)}, src.options());
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "restore_tokens_cpu", [&] {
    copy_rows<index_t>(src, src.size(1), ids.data_ptr<index_t>(), ids.size(1),
                       static_cast<const char*>(fill.data_ptr()), out, "ids_restore");
  });
  return out;
}

// The adjoint of restore_tokens: visible rows go back to x_vis's order (summed where
// ids_restore repeats a token), the masked rows are summed into the mask token's gradient (per
// sample first, then over the batch).
std::tuple<at::Tensor, at::Tensor> restore_tokens_backward_cpu(const at::Tensor& grad,
                                                               const at::Tensor& ids_restore,
                                                               int64_t num_keep) {
  check_restore_backward_inputs(grad, ids_restore, num_keep);
  const int64_t batch = grad.size(0), dim = grad.size(2);
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor partial = at::zeros({batch, dim}, grad.options().dtype(acc_type));
  at::Tensor grad_x_vis = scatter_rows(grad.contiguous(), ids_restore.to(at::kLong).contiguous(),
                                       num_keep, grad.size(1), "ids_restore", &partial);
  return {grad_x_vis, partial.sum(0).to(grad.scalar_type())};
}

TORCH_LIBRARY_IMPL(aubench, CPU, m) {
  m.impl("gather_tokens", &gather_tokens_cpu);
  m.impl("gather_tokens_backward", &gather_tokens_backward_cpu);
  m.impl("restore_tokens", &restore_tokens_cpu);
  m.impl("restore_tokens_backward", &restore_tokens_backward_cpu);
}

}  // namespace aubench
