// The plain SGD step (rnnfast.nn.optim.SGD without momentum) on the kernels' threads.
//
// Dimension legend: n elements of one parameter, read as a flat C-contiguous vector.
//   sgd_step:  p_i ← p_i − (lr · g_i)     p (n) updated in place, g (n)
//
// Why here: NumPy's form, lr·g into a scratch array and then p −= it, takes two passes that
// stream the gradient, the scratch and the parameter through memory on one thread (PTB's
// 300k parameters: ~0.28 ms of a one-stream update). One pass on the team instead.
// Rounding: lr·g is rounded before the subtraction, as NumPy rounds it, so the result is
// bit-identical to `p -= lr * g` (tested): the compiler must not fuse the two into one FMA,
// hence fp-contract off for this function.
#pragma once

#include <omp.h>

#include "rnnfast/packed_gemm.hpp"

namespace rnnfast {

// Elements per thread below which a step stays on one thread (a team costs more).
constexpr Index kSgdGrain = Index(1) << 16;

template <typename S>
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
void sgd_step(S* p, const S* g, Index n, S lr, int threads) {  // p (n), g (n)
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  threads = int(std::max<Index>(1, std::min<Index>(threads, n / kSgdGrain)));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (Index i = 0; i < n; ++i) {
    const S step = lr * g[i];
    p[i] -= step;
  }
}

}  // namespace rnnfast
