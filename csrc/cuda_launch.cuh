// Launch-size helpers shared by the CUDA row kernels (temporal shuffle, token gather/restore).
// c10's CUDA headers only: ATen/cuda/CUDAContext.h needs cuSPARSE's headers, which some CUDA
// toolkits do not ship.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <cstdint>

namespace aubench {

constexpr int kThreads = 256;

// Launch shape of the row kernels: one block per row (grid-stride over rows), its threads
// across the row, so the index is read once per row with no per-element division; enough
// blocks to fill every SM, no more.
inline int64_t blocks_for_rows(int64_t rows) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount,
                                        c10::cuda::current_device()));
  return std::max<int64_t>(1, std::min<int64_t>(rows, int64_t{sms} * 32));
}

inline int threads_for_width(int64_t width) {
  const int64_t warps = std::max<int64_t>(1, (width + 31) / 32);
  return static_cast<int>(std::min<int64_t>(kThreads, warps * 32));
}

}  // namespace aubench
