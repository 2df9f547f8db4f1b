// Masked-token gather / restore (the MAE encoder's and decoder's token shuffles), CPU.
//
// Every op here moves whole D-wide rows, so rows are copied with memcpy whatever the dtype;
// only the mask-token gradient (a sum over the masked rows) needs arithmetic. Work is split
// over the batch (and rows) with at::parallel_for. The Python wrappers validate indices
// before calling in; the range checks below are the last line of defence for direct
// torch.ops.aubench.* calls, so a bad index raises instead of touching memory.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "token_gather/token_gather.h"

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

// The adjoint of gather_tokens: kept rows go back to their positions, the others are zero.
at::Tensor gather_tokens_backward_cpu(const at::Tensor& grad, const at::Tensor& ids_keep,
                                      int64_t length) {
  check_gather_backward_inputs(grad, ids_keep, length);
  const at::Tensor src = grad.contiguous();
  const at::Tensor ids = ids_keep.to(at::kLong).contiguous();
  const int64_t batch = grad.size(0), num_keep = grad.size(1);
  at::Tensor out = at::empty({batch, length, grad.size(2)}, src.options());
  // Inverse map: source row of every output position, num_keep (= the zero row) where none.
  std::vector<int64_t> source(batch * length, num_keep);
  const int64_t* keep = ids.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t k = 0; k < num_keep; ++k) {
      const int64_t l = keep[b * num_keep + k];
      TORCH_CHECK(l >= 0 && l < length, "ids_keep holds ", l, ", outside [0, ", length, ")");
      source[b * length + l] = k;
    }
  }
  const std::vector<char> zero_row(grad.size(2) * grad.element_size(), 0);
  copy_rows<int64_t>(src, num_keep, source.data(), num_keep + 1, zero_row.data(), out,
                     "ids_keep");
  return out;
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

// The adjoint of restore_tokens: visible rows go back to x_vis's order, the masked rows are
// summed into the mask token's gradient (per sample first, then over the batch).
std::tuple<at::Tensor, at::Tensor> restore_tokens_backward_cpu(const at::Tensor& grad,
                                                               const at::Tensor& ids_restore,
                                                               int64_t num_keep) {
  check_restore_backward_inputs(grad, ids_restore, num_keep);
  const at::Tensor src = grad.contiguous();
  const at::Tensor ids = ids_restore.contiguous();
  const int64_t batch = grad.size(0), length = grad.size(1), dim = grad.size(2);
  at::Tensor grad_x_vis = at::empty({batch, num_keep, dim}, src.options());
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor partial = at::zeros({batch, dim}, src.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "restore_tokens_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = src.data_ptr<scalar_t>();
    scalar_t* gx = grad_x_vis.data_ptr<scalar_t>();
    acc_t* acc = partial.data_ptr<acc_t>();
    AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "restore_tokens_backward_cpu", [&] {
      const index_t* index = ids.data_ptr<index_t>();
      at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          acc_t* sum = acc + b * dim;
          for (int64_t l = 0; l < length; ++l) {
            const int64_t i = static_cast<int64_t>(index[b * length + l]);
            TORCH_CHECK(i >= 0 && i < length, "ids_restore holds ", i, ", outside [0, ",
                        length, ")");
            const scalar_t* row = g + (b * length + l) * dim;
            if (i < num_keep) {
              std::memcpy(gx + (b * num_keep + i) * dim, row, dim * sizeof(scalar_t));
            } else {
              for (int64_t d = 0; d < dim; ++d) sum[d] += static_cast<acc_t>(row[d]);
            }
          }
        }
      });
    });
  });
  return {grad_x_vis, partial.sum(0).to(grad.scalar_type())};
}

TORCH_LIBRARY_IMPL(aubench, CPU, m) {
  m.impl("gather_tokens", &gather_tokens_cpu);
  m.impl("gather_tokens_backward", &gather_tokens_backward_cpu);
  m.impl("restore_tokens", &restore_tokens_cpu);
  m.impl("restore_tokens_backward", &restore_tokens_backward_cpu);
}

}  // namespace aubench
