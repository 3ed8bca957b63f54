// The readout (rnnfast.nn.losses) on the kernels' thread team: its products and its loss.
//
// Dimension legend: N read rows (T·B, or B when only the last step is read), K hidden units,
// O outputs.
//   linear:        Z (N, O) = X (N, K) · Wᵀ + 1 bᵀ          W (O, K), b (O) or none
//   linear_grads:  dX (N, K) = dZ (N, O) · W,   dW (O, K) = dZᵀ · X
//   readout_loss:  P (N, O) = the outputs of Z, Σ_n w_n loss_n, dZ (N, O) = w_n s ∂loss_n/∂Z_n
//
// Why not NumPy's BLAS: with the kernels' threads up, OpenBLAS's threads, spinning after each
// product, took a core from them, so training runs NumPy's BLAS on one thread, and the three
// products of the readout then ran on one core (3.5 ms of a 22.7 ms PTB update on 2 threads).
// Here they are the recurrence's packed products, shared out: Z and dX by rows, dW by
// column panels. Every output element is one thread's sum in a fixed order, so the results do
// not depend on the thread count.
#pragma once

#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
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

// ---------------------------------------------------------------------------------------------
// The loss of the read rows, in one pass over Z (NumPy took ~12 passes with float64 copies:
// 0.41 ms at the music shape on one thread, here 0.33, and on the team).
//   softmax_ce   P_n = softmax(Z_n),  loss_n = −log P_n,c   (c = classes[n])
//   sigmoid_bce  P_n = σ(Z_n),        loss_n = Σ_o softplus(Z_no) − Y_no Z_no
//   linear_mse   (P = Z, not written) loss_n = Σ_o (Z_no − Y_no)²
// and dZ_n = w_n · scale · ∂loss_n/∂Z_n. Losses are summed in float64 (softmax's normaliser
// and the softplus terms too); rows of weight 0 (a mask's padding) read no target, add no loss
// and get dZ = 0. Each row is one thread's and the row losses are added in row order, so the
// result does not depend on the thread count.
enum class Loss : int { SoftmaxCE = 0, SigmoidBCE = 1, LinearMSE = 2 };

// Threads for the loss: one below ~16k elements (a team costs more than it saves).
inline int loss_threads(Index N, Index O, int threads) {
  if (threads <= 1 || N * O < 16384) return 1;
  return int(std::max<Index>(1, std::min<Index>(threads, N)));
}

// Z (N, O); classes (N) for SoftmaxCE, else Y (N, O); both null: outputs only (loss 0, no dZ).
// w (N) row weights or null (all 1); P (N, O) written unless LinearMSE; dZ (N, O) or null.
// Returns Σ_n w_n loss_n.
template <typename S>
double readout_loss(Loss kind, Index N, Index O, const S* Z, const std::int64_t* classes,
                    const S* Y, const double* w, double scale, S* P, S* dZ, int threads) {
  using Row = Eigen::Array<S, Eigen::Dynamic, 1>;
  using CMap = Eigen::Map<const Row>;
  using Map = Eigen::Map<Row>;
  using RowD = Eigen::Array<double, Eigen::Dynamic, 1>;
  const bool targets = classes != nullptr || Y != nullptr;
  std::vector<double> rows(static_cast<size_t>(N));  // w_n loss_n, added in order at the end
  // per thread: z and e^−|z| of a row in float64 (Eigen vectorises exp and log on a plain
  // array, not inside one nested expression with the cast: 0.29 against 0.85 ms at (800, 88))
  std::vector<double> scratch(kind == Loss::SigmoidBCE ? size_t(2 * O * threads) : 0);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (Index n = 0; n < N; ++n) {
    const CMap z(Z + n * O, O);
    const double wn = w ? w[n] : 1.0;
    const bool counted = targets && wn != 0.0;
    double loss = 0.0;
    if (kind == Loss::SoftmaxCE) {
      Map p(P + n * O, O);
      const S m = O > 0 ? z.maxCoeff() : S(0);
      p = (z - m).exp();
      const double s = p.template cast<double>().sum();
      p /= S(s);
      if (counted) {
        const Index c = Index(classes[n]);
        loss = std::log(s) - (double(z[c]) - double(m));
        if (dZ) {
          const S f = S(wn * scale);
          Map dz(dZ + n * O, O);
          dz = p * f;
          dz[c] = (p[c] - S(1)) * f;
        }
      }
    } else if (kind == Loss::SigmoidBCE) {
      Map(P + n * O, O) = z.logistic();
      if (counted) {
        const CMap y(Y + n * O, O);
        Eigen::Map<RowD> zd(scratch.data() + 2 * O * omp_get_thread_num(), O);
        Eigen::Map<RowD> e(zd.data() + O, O);
        zd = z.template cast<double>();
        e = (-zd.abs()).exp();
        e = (1.0 + e).log();  // softplus(z) = max(z, 0) + log(1 + e^−|z|), stable for any z
        loss = (zd.max(0.0) + e - y.template cast<double>() * zd).sum();
        if (dZ) Map(dZ + n * O, O) = (CMap(P + n * O, O) - y) * S(wn * scale);
      }
    } else if (counted) {  // LinearMSE
      const CMap y(Y + n * O, O);
      loss = (z - y).template cast<double>().square().sum();
      if (dZ) Map(dZ + n * O, O) = (z - y) * S(2.0 * wn * scale);
    }
    if (dZ && !counted) Map(dZ + n * O, O).setZero();
    rows[size_t(n)] = wn * loss;
  }
  double total = 0.0;
  for (double r : rows) total += r;
  return total;
}

}  // namespace rnnfast
