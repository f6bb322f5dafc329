// Launch helpers shared by the CUDA build's kernels: block counts and error checks that throw with the CUDA
// error's text (the bindings turn them into Python exceptions).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace fields {
namespace cuda {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

}  // namespace cuda
}  // namespace fields
