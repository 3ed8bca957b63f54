// The readout's products (rnnfast.nn.losses) on the kernels' thread team.
//
// Dimension legend: N read rows (T·B, or B when only the last step is read), K hidden units,
// O outputs.
//   linear:        Z (N, O) = X (N, K) · Wᵀ + 1 bᵀ          W (O, K), b (O) or none
//   linear_grads:  dX (N, K) = dZ (N, O) · W,   dW (O, K) = dZᵀ · X
//
// Why not NumPy's BLAS: with the kernels' threads up, OpenBLAS's threads, spinning after each
// product, took a core from them, so training runs NumPy's BLAS on one thread, and the three
// products of the readout then ran on one core (3.5 ms of a 22.7 ms PTB update on 2 threads).
// Here they are the recurrence's packed products, shared out: Z and dX by rows, dW by
// column panels. Every output element is one thread's sum in a fixed order, so the results do
// not depend on the thread count.
#pragma once

#include <omp.h>

#include <algorithm>
#include <vector>

#include "rnnfast/packed_gemm.hpp"
#include "rnnfast/rnn.hpp"

namespace rnnfast {

// Threads for a readout product: one for small ones (as make_plan: a team costs more than
// it saves below a few MFLOP), else at most one per MR rows.
inline int readout_threads(Index N, Index K, Index O, int threads) {
  const double flops = 2.0 * double(N) * double(K) * double(O);
  if (threads <= 1 || flops < 4e6) return 1;
  return int(std::max<Index>(1, std::min<Index>(threads, N / PanelShape<float>::MR)));
}

// Z = X Wᵀ + 1 bᵀ.   X (N, K), W (O, K), b (O) or null, Z (N, O).
template <typename S>
void linear(Index N, Index K, Index O, const S* X, const S* W, const S* b, S* Z, int threads) {
  PackedMatrix<S> Wt(K, O);  // Wᵀ (K, O): element (k, j) = W[j·K + k]
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    Index p0, p1, r0, r1;
    share(Wt.panels(), tid, nt, p0, p1);
    Wt.pack(W, 1, K, p0, p1);
#pragma omp barrier
    share(N, tid, nt, r0, r1);
    if (r1 > r0) packed_gemm_rows<S>(r1 - r0, X + r0 * K, K, Wt, b, 0, Z + r0 * O, O);
  }
}

// dX = dZ W and dW = dZᵀ X.   dZ (N, O), X (N, K), W (O, K), dX (N, K), dW (O, K).
template <typename S>
void linear_grads(Index N, Index K, Index O, const S* dZ, const S* X, const S* W, S* dX, S* dW,
                  int threads) {
  constexpr Index NR = PanelShape<S>::NR;
  PackedMatrix<S> Wp(O, K);  // W as it is: element (o, j) = W[o·K + j]
  const Index kpanels = (K + NR - 1) / NR;
  std::vector<GemmTnWork<S>> ws;  // per thread, room for any share of dW's columns
  ws.reserve(size_t(threads));
  for (int t = 0; t < threads; ++t) ws.emplace_back(O, K);
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    Index p0, p1, r0, r1, q0, q1;
    share(Wp.panels(), tid, nt, p0, p1);
    Wp.pack(W, K, 1, p0, p1);
    // dW's columns [k0, k1): this thread packs only its columns of X
    share(kpanels, tid, nt, q0, q1);
    const Index k0 = q0 * NR, k1 = std::min(K, q1 * NR);
    if (k1 > k0)
      gemm_tn<S>(ws[size_t(tid)], N, k1 - k0, dZ, O, X + k0, K, nullptr, dW + k0, K, 0, O);
#pragma omp barrier
    share(N, tid, nt, r0, r1);
    if (r1 > r0) packed_gemm_rows<S>(r1 - r0, dZ + r0 * O, O, Wp, nullptr, 0, dX + r0 * K, K);
  }
}

}  // namespace rnnfast
