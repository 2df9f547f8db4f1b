// Temporal-shuffle clips (Knowledge-Spreader's perturbation-aware pseudo-labelling), CPU.
//
// From per-frame clip features D (B, N, C) and one permutation per clip (B, N), one pass writes
// the real clips (rows 0..B-1, D as it is) and their shuffled copies (rows B..2B-1), where
// frame t of shuffled clip b is D[b, perm[b, t]]. The backward pass is its exact adjoint,
// written row by row of the gradient: frame f of clip b receives the real clip's gradient at
// position f plus the shuffled clip's at the position holding f; when perm is a permutation
// that is exactly one position, and a perm with repeats (validate=False) still gets the exact
// adjoint, every gradient row written once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "temporal_shuffle/temporal_shuffle.h"

#include <algorithm>
#include <vector>

namespace aubench {
namespace {

template <typename index_t>
int64_t frame_at(const index_t* perm_row, int64_t t, int64_t frames) {
  const int64_t f = static_cast<int64_t>(perm_row[t]);
  TORCH_CHECK(f >= 0 && f < frames, "perm holds ", f, ", outside [0, ", frames, ")");
  return f;
}

}  // namespace

at::Tensor temporal_shuffle_features_cpu(const at::Tensor& features, const at::Tensor& perm) {
  TORCH_CHECK(features.dim() == 3, "features must be 3-D (B, N, C), got ", features.sizes());
  TORCH_CHECK(at::isFloatingType(features.scalar_type()), "features must be floating, got ",
              features.scalar_type());
  const int64_t batch = features.size(0), frames = features.size(1), channels = features.size(2);
  check_perm(perm, batch, frames, features.device());
  const at::Tensor d = features.contiguous();
  const at::Tensor p = perm.contiguous();
  at::Tensor out = at::empty({2 * batch, frames, channels}, d.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(),
                                  "temporal_shuffle_features_cpu", [&] {
    const scalar_t* src = d.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    AT_DISPATCH_INDEX_TYPES(p.scalar_type(), "temporal_shuffle_features_cpu", [&] {
      const index_t* order = p.data_ptr<index_t>();
      // One task per output clip: rows r < B are real clips, r >= B shuffled copies.
      at::parallel_for(0, 2 * batch, 1, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const bool shuffled = r >= batch;
          const int64_t b = shuffled ? r - batch : r;
          const index_t* perm_row = order + b * frames;
          const scalar_t* clip = src + b * frames * channels;
          for (int64_t t = 0; t < frames; ++t) {
            const int64_t f = shuffled ? frame_at(perm_row, t, frames) : t;
            std::copy_n(clip + f * channels, channels, dst + (r * frames + t) * channels);
          }
        }
      });
    });
  });
  return out;
}

at::Tensor temporal_shuffle_features_backward_cpu(const at::Tensor& grad, const at::Tensor& perm) {
  check_backward_inputs(grad, perm);
  const int64_t batch = grad.size(0) / 2, frames = grad.size(1), channels = grad.size(2);
  const at::Tensor g = grad.contiguous();
  const at::Tensor p = perm.contiguous();
  at::Tensor out = at::empty({batch, frames, channels}, g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "temporal_shuffle_features_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = g.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    AT_DISPATCH_INDEX_TYPES(p.scalar_type(), "temporal_shuffle_features_backward_cpu", [&] {
      const index_t* order = p.data_ptr<index_t>();
      at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        // first[f]: the first position t with perm[t] == f, next_same[t]: the next position
        // holding perm[t] (-1: none). A permutation gives every frame exactly one position;
        // any other perm still gets the exact adjoint (a frame summed over all its positions,
        // zero shuffled part where it has none), added in position order as on CUDA.
        std::vector<int64_t> first(frames), next_same(frames);
        std::vector<acc_t> acc(channels);
        for (int64_t b = begin; b < end; ++b) {
          const scalar_t* real = src + b * frames * channels;
          const scalar_t* shuf = src + (batch + b) * frames * channels;
          const index_t* perm_row = order + b * frames;
          std::fill(first.begin(), first.end(), -1);
          for (int64_t t = frames - 1; t >= 0; --t) {
            const int64_t f = frame_at(perm_row, t, frames);
            next_same[t] = first[f];
            first[f] = t;
          }
          // Frame f of the real clip sits at position f, frame perm[t] of the shuffled clip
          // at position t.
          for (int64_t f = 0; f < frames; ++f) {
            const scalar_t* real_f = real + f * channels;
            for (int64_t c = 0; c < channels; ++c) acc[c] = static_cast<acc_t>(real_f[c]);
            for (int64_t u = first[f]; u >= 0; u = next_same[u]) {
              const scalar_t* shuf_u = shuf + u * channels;
              for (int64_t c = 0; c < channels; ++c) acc[c] += static_cast<acc_t>(shuf_u[c]);
            }
            scalar_t* target = dst + (b * frames + f) * channels;
            for (int64_t c = 0; c < channels; ++c) target[c] = static_cast<scalar_t>(acc[c]);
          }
        }
      });
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(aubench, CPU, m) {
  m.impl("temporal_shuffle_features", &temporal_shuffle_features_cpu);
  m.impl("temporal_shuffle_features_backward", &temporal_shuffle_features_backward_cpu);
}

}  // namespace aubench
