// Squared L2 norms for gradient clipping (rnnfast.nn.clipping, Algorithm 1).
//
// Dimension legend: n elements of one array, read as a flat C-contiguous vector.
//   squared_norm:  Σ_i x_i²  accumulated in float64
//
// Why here: NumPy has no float64-accumulating dot of a float32 array without a float64 copy
// (x.astype(float64) @ ...: 2 MB allocated and faulted in for PTB's W_rec, 172 µs for PTB's
// five gradients against ~25 µs here). A float32 square is exact in float64, so the sum is
// as good as NumPy's float64 one; the order is fixed (16 lanes, then the tail, then the
// lanes in order), so the result is a function of x alone.
#pragma once

#include "rnnfast/packed_gemm.hpp"

namespace rnnfast {

template <typename S>
double squared_norm(const S* x, Index n) {  // x (n)
  constexpr int L = 16;  // independent sums: the compiler vectorises them without reordering
  double lane[L] = {};
  Index i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) {
      const double v = double(x[i + j]);
      lane[j] += v * v;
    }
  double s = 0.0;
  for (; i < n; ++i) {
    const double v = double(x[i]);
    s += v * v;
  }
  for (int j = 0; j < L; ++j) s += lane[j];
  return s;
}

}  // namespace rnnfast
