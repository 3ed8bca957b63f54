// rnnfast kernels: the vanilla RNN forward recurrence and backpropagation through time (BPTT).
//
// Dimension legend (used in every shape comment below):
//   T  time steps        B  sequences in the batch
//   I  input size        H  hidden units
// All tensors are C-contiguous (row-major); the state of the batch at one step is a (B, H)
// block whose row b is sequence b.
//
// Model (Elman form; the paper's formula 2 uses x_t with h_t = σ(x_t)):
//   x_t = W_rec h_{t-1} + W_in u_t + b,   h_t = σ(x_t),   t = 1..T  (stored at index t-1)
// As row vectors, for a batch: X_t = H_{t-1} W_recᵀ + U_t W_inᵀ + 1 bᵀ.
//
// Backward, given the direct loss gradients dh_t = ∂⁺E/∂h_t:
//   δ_t  = dh_t + a_{t+1} W_rec        total ∂E/∂h_t      (a_{T+1} = 0)
//   a_t  = δ_t ⊙ σ'(x_t)               ∂E/∂x_t            (σ' from h_t, no x needed)
//   ∂E/∂h_0 = a_1 W_rec,  ∂E/∂W_rec = Σ_t a_tᵀ h_{t-1},  ∂E/∂W_in = Σ_t a_tᵀ u_t,
//   ∂E/∂b = Σ_t Σ_b a_t,  ∂E/∂u_t = a_t W_in.
// The Ω regularizer (paper eq. 9-10, authors' squared-norm form) for the pair (t → t-1) uses
//   v_t = a_t W_rec (the same one-step product BPTT computes), r = ‖v_t‖² / ‖δ_t‖²,
//   term (r − 1)², and, with a_t and δ_t held constant, ∂term/∂W_rec = 4(r−1)/‖δ_t‖² · a_tᵀ v_t.
//   Pairs with ‖δ_t‖² < bound are dropped; Ω is the mean over the remaining (t, b) pairs.
//
// Work split: W_rec and W_in are packed once per call (packed_gemm.hpp) and every per-step
// product runs against the packed panels: in the forward step, b + u_t W_inᵀ + h_{t-1} W_recᵀ;
// in the backward step, a_{t+1} W_rec and ∂E/∂u_{t+1} = a_{t+1} W_in (when W_rec streams from
// memory, the W_in products run as one blocked pass before/after the time loop instead). The
// weight gradients are single products over all T·B rows after the sweep (gemm_tn): one for
// Σ_t a_tᵀ [h_{t-1} | u_t] (∂E/∂W_rec and ∂E/∂W_in together), and Ω's. Ω's W_rec gradient
// uses Σ c a_tᵀ v_t = (Σ c a_tᵀ a_t) W_rec: a symmetric product (half the work of a general
// one) and no stored v_t; when 2H > T·B, the v_t of the sweep are stored and Σ c a_tᵀ v_t is
// one product (cheaper than the H³ term).
#pragma once

#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "rnnfast/packed_gemm.hpp"

namespace rnnfast {

enum class Activation : int { Tanh = 0, Sigmoid = 1, Relu = 2, Linear = 3 };

// How the threads of one call share the work.
//   Serial: one thread.  Batch: each thread owns a slice of the B sequences for all T steps
//   (no barrier per step).  Hidden: each thread owns a block of hidden units (one barrier per
//   step) — for large H with too few sequences to split.
enum class Schedule : int { Auto = 0, Serial = 1, Batch = 2, Hidden = 3 };

template <typename S>
using RowMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename S>
using MapMat = Eigen::Map<RowMat<S>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <typename S>
using CMapMat = Eigen::Map<const RowMat<S>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <typename S>
using CMapRow = Eigen::Map<const Eigen::Matrix<S, 1, Eigen::Dynamic>>;

// (rows, cols) row-major view with row stride ld.
template <typename S>
inline MapMat<S> view(S* p, Index rows, Index cols, Index ld) {
  return MapMat<S>(p, rows, cols, Eigen::OuterStride<>(ld));
}
template <typename S>
inline CMapMat<S> cview(const S* p, Index rows, Index cols, Index ld) {
  return CMapMat<S>(p, rows, cols, Eigen::OuterStride<>(ld));
}

struct Plan {
  int threads;
  Schedule schedule;
};

// Chooses threads and split for a problem. Tiny problems stay on one thread: a fork/join and
// the cross-core traffic cost more than the work.
inline Plan make_plan(Index T, Index B, Index I, Index H, int requested, Schedule forced) {
  const double flops = 2.0 * double(T) * double(B) * double(H) * double(H + I);
  int n = std::max(1, requested);
  if (forced == Schedule::Serial || n == 1) return {1, Schedule::Serial};
  if (forced == Schedule::Batch) return {int(std::min<Index>(n, B)), Schedule::Batch};
  if (forced == Schedule::Hidden) {
    const Index panels = (H + PanelShape<float>::NR - 1) / PanelShape<float>::NR;
    return {int(std::min<Index>(n, std::max<Index>(1, panels))), Schedule::Hidden};
  }
  if (flops < 4e6) return {1, Schedule::Serial};
  const Index rows_per_thread = B / n;
  // Large W_rec with few rows per thread: streaming a block of W_rec per thread beats every
  // thread streaming all of it each step.
  if (H >= 1024 && rows_per_thread < 32) return {n, Schedule::Hidden};
  if (rows_per_thread >= 4) return {n, Schedule::Batch};
  if (H >= 256) return {n, Schedule::Hidden};
  if (B >= n) return {n, Schedule::Batch};
  return {1, Schedule::Serial};
}

// Whether every thread's per-step products have a single row (a batch of one sequence per
// thread): the weights are then packed as single-row matrices (PackedMatrix).
inline bool one_row_per_thread(const Plan& plan, Index B) {
  return plan.schedule != Schedule::Hidden && B <= plan.threads;
}

// Contiguous share [begin, end) of n items for thread `tid` of `nt`.
inline void share(Index n, int tid, int nt, Index& begin, Index& end) {
  const Index q = n / nt, r = n % nt;
  begin = tid * q + std::min<Index>(tid, r);
  end = begin + q + (tid < r ? 1 : 0);
}

// tanh of a float64 packet (Eigen 3.4 vectorises tanh for float only). Cephes' rational
// approximation x + x³P(x²)/Q(x²) below |x| = 0.625, 1 − 2/(e^{2|x|} + 1) above: full double
// precision, NaN propagates, ±inf give ±1.
template <typename Packet>
inline Packet ptanh_f64(const Packet& x) {
  using namespace Eigen::internal;
  const Packet ax = pabs(x), z = pmul(x, x), one = pset1<Packet>(1.0);
  Packet p = pset1<Packet>(-9.64399179425052238628E-1);
  p = pmadd(p, z, pset1<Packet>(-9.92877231001918586564E1));
  p = pmadd(p, z, pset1<Packet>(-1.61468768441708447952E3));
  Packet q = padd(z, pset1<Packet>(1.12811678491632931402E2));
  q = pmadd(q, z, pset1<Packet>(2.23548839060100448583E3));
  q = pmadd(q, z, pset1<Packet>(4.84406305325125486048E3));
  const Packet small = pmadd(pmul(x, z), pdiv(p, q), x);
  Packet big = psub(one, pdiv(pset1<Packet>(2.0), padd(pexp(padd(ax, ax)), one)));
  big = pselect(pcmp_lt(x, pzero(x)), pnegate(big), big);
  return pselect(pcmp_lt(ax, pset1<Packet>(0.625)), small, big);
}

// h = f(x) on a (rows, cols) block, one SIMD packet at a time from the start of each row; the
// row tail goes through the same packet code on a padded copy. Every element is computed the
// same way wherever the arrays lie in memory (no alignment peeling).
template <typename S, typename PacketOp, typename ScalarOp>
inline void map_rows(const S* x, Index ldx, S* h, Index ldh, Index rows, Index cols,
                     PacketOp packet_op, ScalarOp scalar_op) {
  using Packet = typename PanelShape<S>::Packet;
  constexpr int PS = PanelShape<S>::PS;
  using namespace Eigen::internal;
  for (Index r = 0; r < rows; ++r) {
    const S* xr = x + r * ldx;
    S* hr = h + r * ldh;
    if constexpr (PS == 1) {
      for (Index j = 0; j < cols; ++j) hr[j] = scalar_op(xr[j]);
    } else {
      Index j = 0;
      for (; j + PS <= cols; j += PS) pstoreu(hr + j, packet_op(ploadu<Packet>(xr + j)));
      if (j < cols) {  // element copies over a compile-time bound, not a library call
        const Index n = cols - j;
        alignas(64) S buf[PS] = {};
        for (int e = 0; e < PS; ++e)
          if (e < n) buf[e] = xr[j + e];
        pstore(buf, packet_op(pload<Packet>(buf)));
        for (int e = 0; e < PS; ++e)
          if (e < n) hr[j + e] = buf[e];
      }
    }
  }
}

// h = σ(x) on a (rows, cols) block; x and h may be the same memory.
template <typename S>
inline void activate(Activation act, const S* x, Index ldx, S* h, Index ldh, Index rows,
                     Index cols) {
  if (ldx == cols && ldh == cols) {  // contiguous rows: one long row, no per-row tails
    cols *= rows;
    rows = 1;
  }
  using Packet = typename PanelShape<S>::Packet;
  using namespace Eigen::internal;
  switch (act) {
    case Activation::Tanh:
      map_rows(x, ldx, h, ldh, rows, cols, [](const Packet& v) {
        if constexpr (std::is_same<S, float>::value) return ptanh(v); else return ptanh_f64(v);
      }, [](S v) { return std::tanh(v); });
      break;
    case Activation::Sigmoid:  // 1 / (1 + e^{−x}): 0 for x → −∞, 1 for x → +∞, NaN stays NaN
      map_rows(x, ldx, h, ldh, rows, cols, [](const Packet& v) {
        const Packet one = pset1<Packet>(S(1));
        return pdiv(one, padd(one, pexp(pnegate(v))));
      }, [](S v) { return S(1) / (S(1) + std::exp(-v)); });
      break;
    case Activation::Relu:
      view(h, rows, cols, ldh) =
          cview(x, rows, cols, ldx).array().template max<Eigen::PropagateNaN>(S(0)).matrix();
      break;
    case Activation::Linear:
      if (x != h) view(h, rows, cols, ldh) = cview(x, rows, cols, ldx);
      break;
  }
}

// a = δ ⊙ σ'(x), with σ' computed from h = σ(x); δ and a may be the same memory.
template <typename S>
inline void times_derivative(Activation act, const S* delta, Index ldd, const S* h, Index ldh,
                             S* a, Index lda, Index rows, Index cols) {
  if (ldd == cols && ldh == cols && lda == cols) {  // contiguous rows: one long row
    cols *= rows;
    rows = 1;
  }
  auto D = cview(delta, rows, cols, ldd).array();
  auto Hm = cview(h, rows, cols, ldh).array();
  auto A = view(a, rows, cols, lda).array();
  switch (act) {
    case Activation::Tanh: A = D * (S(1) - Hm.square()); break;
    case Activation::Sigmoid: A = D * Hm * (S(1) - Hm); break;
    case Activation::Relu: A = (Hm > S(0)).select(D, S(0)); break;
    case Activation::Linear:
      if (a != delta) A = D;
      break;
  }
}

// out[r] += Σ_j (p[r, j] − q[r, j])² for each row (q null: zeros). Summed in SIMD packets of
// S; a float32 row whose sum overflows (elements beyond ~1e19) is summed again in double, so
// norms never overflow.
template <typename S>
inline void row_sqnorms(const S* p, const S* q, Index ld, Index rows, Index cols, double* out) {
  using Packet = typename PanelShape<S>::Packet;
  constexpr int PS = PanelShape<S>::PS;
  using namespace Eigen::internal;
  auto elem = [&](const S* pr, const S* qr, Index j) {
    return double(pr[j]) - (qr ? double(qr[j]) : 0.0);
  };
  for (Index r = 0; r < rows; ++r) {
    const S* pr = p + r * ld;
    const S* qr = q ? q + r * ld : nullptr;
    Packet acc = pset1<Packet>(S(0));
    Index j = 0;
    for (; j + PS <= cols; j += PS) {
      Packet v = ploadu<Packet>(pr + j);
      if (qr) v = psub(v, ploadu<Packet>(qr + j));
      acc = pmadd(v, v, acc);
    }
    double sum = double(predux(acc));
    for (; j < cols; ++j) sum += elem(pr, qr, j) * elem(pr, qr, j);
    if (std::is_same<S, float>::value && std::isinf(sum)) {
      sum = 0.0;
      for (Index k = 0; k < cols; ++k) sum += elem(pr, qr, k) * elem(pr, qr, k);
    }
    out[r] += sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Forward.
//   u     (T, B, I)  inputs                      W_in (H, I)   W_rec (H, H)   b (H)
//   h0    (B, H)     initial state, or null for zeros
//   h     (T, B, H)  out: h_1..h_T
//   x     (T, B, H)  out: pre-activations x_1..x_T, or null when not wanted
template <typename S>
void forward(const S* u, const S* W_in, const S* W_rec, const S* b, const S* h0, S* h, S* x,
             Index T, Index B, Index I, Index H, Activation act, int num_threads,
             Schedule forced = Schedule::Auto) {
  const Plan plan = make_plan(T, B, I, H, num_threads, forced);
  const bool single_row = one_row_per_thread(plan, B);
  PackedMatrix<S> Wrt(H, H, single_row);  // W_recᵀ (k = from-unit, j = to-unit)
  PackedMatrix<S> Wit(I, H, single_row);  // W_inᵀ
  S* z = x ? x : h;           // pre-activations are built in place (in h when x is not kept)
  const Index BH = B * H;
  // When W_rec streams from memory at every step (PackedMatrix::streams), u_t W_inᵀ runs as
  // one blocked product over all steps first, so only W_rec is streamed per step.
  const bool split_input = Wrt.streams();

#pragma omp parallel num_threads(plan.threads)
  {
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    Index p0, p1;
    share(Wrt.panels(), tid, nt, p0, p1);
    Wrt.pack(W_rec, /*rs=*/1, /*cs=*/H, p0, p1);  // element (k, j) of W_recᵀ is W_rec[j, k]
    Wit.pack(W_in, /*rs=*/1, /*cs=*/I, p0, p1);   // same panels: both have H columns
#pragma omp barrier

    // Batch split: rows [b0, b1) of every step, no barrier. Hidden split: the columns of
    // panels [p0, p1) of every step, one barrier per step.
    const bool by_rows = plan.schedule != Schedule::Hidden;
    Index b0 = 0, b1 = B, c0 = 0, c1 = H;
    if (by_rows) {
      share(B, tid, nt, b0, b1);
      p0 = 0;
      p1 = Wrt.panels();
    } else {
      c0 = std::min<Index>(p0 * Wrt.panel_width(), H);
      c1 = std::min<Index>(p1 * Wrt.panel_width(), H);
    }
    const Index nb = b1 - b0, nc = c1 - c0;
    if (split_input) {  // z = b + u W_inᵀ for all T·B rows first, rows shared by the threads
      Index r0, r1;
      share(T * B, tid, nt, r0, r1);
      packed_gemm_rows<S>(r1 - r0, u + r0 * I, I, Wit, b, 0, z + r0 * H, H);
#pragma omp barrier
    }
    for (Index t = 0; t < T; ++t) {
      S* zt = z + t * BH + b0 * H;
      const S* hprev = t > 0 ? h + (t - 1) * BH + b0 * H : (h0 ? h0 + b0 * H : nullptr);
      if (nb > 0 && nc > 0) {
        if (split_input) {  // z += h_{t-1} W_recᵀ
          if (hprev) packed_gemm<S>(nb, hprev, H, Wrt, p0, p1, zt, H, zt, H);
        } else {  // z = b + u_t W_inᵀ + h_{t-1} W_recᵀ in one pass (b broadcast: row stride 0)
          packed_gemm<S>(nb, u + (t * B + b0) * I, I, Wit, p0, p1, b, 0, zt, H, hprev, H,
                         hprev ? &Wrt : nullptr);
        }
        activate(act, zt + c0, H, h + t * BH + b0 * H + c0, H, nb, nc);
      }
      if (!by_rows) {
#pragma omp barrier
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward (BPTT), optionally with the Ω regularizer and the per-step norms of δ_t.
struct BackwardOut {
  double omega_sum = 0.0;   // Σ over valid pairs of (r − 1)²
  double omega_pairs = 0.0; // number of valid (t, b) pairs
};

// Contiguous shares of the rows of a lower-triangular (n × n) result with about equal area.
inline void share_lower(Index n, int tid, int nt, Index& begin, Index& end) {
  auto edge = [&](int k) {
    return k >= nt ? n : Index(std::llround(double(n) * std::sqrt(double(k) / double(nt))));
  };
  begin = edge(tid);
  end = edge(tid + 1);
}

//   u       (T, B, I)   W_in (H, I)   W_rec (H, H)   h0 (B, H) or null (zeros)
//   h       (T, B, H)   hidden states from forward
//   dh      (T, B, H)   direct loss gradients ∂⁺E/∂h_t, or null (none)
//   dh_last (B, H)      extra direct gradient at the last step, or null
//   outputs: dx (T, B, H) = ∂E/∂x_t;  dW_in (H, I);  dW_rec (H, H);  db (H);  dh0 (B, H);
//            du (T, B, I)
//   omega_grad (H, H) or null: ∂Ω/∂W_rec — computing it turns Ω on
//   dh_norm (T, B) or null: out, ‖δ_t‖ per sequence (double)
template <typename S>
BackwardOut backward(const S* u, const S* W_in, const S* W_rec, const S* h0, const S* h,
                     const S* dh, const S* dh_last, S* dx, S* dW_in, S* dW_rec, S* db, S* dh0,
                     S* du, S* omega_grad, double omega_bound, double* dh_norm, Index T,
                     Index B, Index I, Index H, Activation act, int num_threads,
                     Schedule forced = Schedule::Auto) {
  const Plan plan = make_plan(T, B, I, H, num_threads, forced);
  const int NT = plan.threads;
  const bool omega = omega_grad != nullptr;
  const bool norms = omega || dh_norm != nullptr;
  const Index BH = B * H, TB = T * B;
  const bool single_row = one_row_per_thread(plan, B);
  PackedMatrix<S> Wr(H, H, single_row);  // W_rec:  v = a · W_rec
  PackedMatrix<S> Wi(H, I, single_row);  // W_in:   ∂E/∂u = a · W_in
  // As in the forward: with W_rec streamed from memory every step, ∂E/∂u is one blocked
  // product after the sweep rather than a second streamed matrix per step.
  const bool split_input = Wr.streams();

  // Workspace, all O(H² + T·B): per-thread partial row norms (threads of the hidden split
  // each see a block of columns), Ω's pair coefficients and its symmetric product
  // G = Σ c a_tᵀ a_t.
  std::vector<double> dn2(norms ? size_t(NT * TB) : 0, 0.0);  // ‖δ_t‖² partials
  std::vector<double> vn2(omega ? size_t(NT * TB) : 0, 0.0);  // ‖v_t‖² partials
  std::vector<double> coef(omega ? size_t(TB) : 0, 0.0);      // 4(r−1)/‖δ‖² / pairs, or 0
  // Ω's W_rec gradient Σ c a_tᵀ v_t: as (Σ c a_tᵀ a_t) W_rec — T·B·H² + 2H³ flops, no stored
  // v — or, when H is large against T·B, from the stored v_t = a_t W_rec of the sweep —
  // 2·T·B·H² flops and one more (T, B, H) array. At (T, B, H) = (50, 16, 2048) the second
  // takes ~0.4× the time.
  const bool omega_v = omega && 2 * H > TB;
  Buffer<S> G(omega && !omega_v ? size_t(H * H) : 0);  // fully written: lower product + mirror
  Buffer<S> vbuf(omega_v ? size_t(TB * H) : 0);  // v_t = a_t W_rec, (T, B, H)
  BackwardOut out;

#pragma omp parallel num_threads(NT)
  {
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    Index p0, p1, q0, q1;  // panels of W_rec and of W_in this thread packs (and, if split, owns)
    share(Wr.panels(), tid, nt, p0, p1);
    share(Wi.panels(), tid, nt, q0, q1);
    Wr.pack(W_rec, /*rs=*/H, /*cs=*/1, p0, p1);
    Wi.pack(W_in, /*rs=*/I, /*cs=*/1, q0, q1);
#pragma omp barrier

    const bool by_rows = plan.schedule != Schedule::Hidden;
    Index b0 = 0, b1 = B, c0 = 0, c1 = H;
    if (by_rows) {
      share(B, tid, nt, b0, b1);
      p0 = q0 = 0;
      p1 = Wr.panels();
      q1 = Wi.panels();
    } else {
      c0 = std::min<Index>(p0 * Wr.panel_width(), H);
      c1 = std::min<Index>(p1 * Wr.panel_width(), H);
    }
    const Index nb = b1 - b0, nc = c1 - c0;
    double* my_dn2 = norms ? dn2.data() + tid * TB : nullptr;
    double* my_vn2 = omega ? vn2.data() + tid * TB : nullptr;

    // Step t (0-based; h[t] is h_{t+1}): δ_t = dh[t] + a[t+1] W_rec, then a[t] = δ_t ⊙ σ'.
    // The last iteration (t = −1) gives ∂E/∂h_0 = a[0] W_rec.
    for (Index t = T - 1; t >= -1; --t) {
      S* d = t >= 0 ? dx + t * BH + b0 * H : dh0 + b0 * H;  // δ_t is built in place, then a_t
      const S* dht = (t >= 0 && dh) ? dh + t * BH + b0 * H : nullptr;
      if (nb > 0) {
        if (t + 1 < T) {
          const S* a_next = dx + (t + 1) * BH + b0 * H;
          if (!split_input)
            packed_gemm<S>(nb, a_next, H, Wi, q0, q1, nullptr, I, du + (t + 1) * B * I + b0 * I,
                           I);
          if (omega_v) {  // v = a[t+1] W_rec stored, then δ = dh + v
            S* vt = vbuf.data() + (t + 1) * BH + b0 * H;
            packed_gemm<S>(nb, a_next, H, Wr, p0, p1, nullptr, H, vt, H);
            if (nc > 0) {
              row_sqnorms<S>(vt + c0, nullptr, H, nb, nc, my_vn2 + (t + 1) * B + b0);
              if (dht)
                view(d + c0, nb, nc, H) = cview(vt + c0, nb, nc, H) + cview(dht + c0, nb, nc, H);
              else
                view(d + c0, nb, nc, H) = cview(vt + c0, nb, nc, H);
            }
          } else {
            packed_gemm<S>(nb, a_next, H, Wr, p0, p1, dht, H, d, H);  // δ = dh + a[t+1] W_rec
            if (omega && nc > 0)  // Ω's ‖v‖² = ‖δ − dh‖², read back from δ (no stored v)
              row_sqnorms(d + c0, dht ? dht + c0 : nullptr, H, nb, nc,
                          my_vn2 + (t + 1) * B + b0);
          }
        } else if (nc > 0) {  // t == T-1: no later step
          if (dht)
            view(d + c0, nb, nc, H) = cview(dht + c0, nb, nc, H);
          else
            view(d + c0, nb, nc, H).setZero();
        }
        if (nc > 0 && t == T - 1 && dh_last)
          view(d + c0, nb, nc, H) += cview(dh_last + b0 * H + c0, nb, nc, H);
        if (nc > 0 && t >= 0) {
          if (norms) row_sqnorms<S>(d + c0, nullptr, H, nb, nc, my_dn2 + t * B + b0);
          times_derivative(act, d + c0, H, h + t * BH + b0 * H + c0, H, d + c0, H, nb, nc);
        }
      }
      if (!by_rows) {
#pragma omp barrier
      }
    }
    if (split_input) {  // ∂E/∂u = a W_in for all T·B rows, rows shared by the threads
#pragma omp barrier
      Index r0, r1;
      share(TB, tid, nt, r0, r1);
      packed_gemm_rows<S>(r1 - r0, dx + r0 * H, H, Wi, nullptr, I, du + r0 * I, I);
    }
  }

  // Reduce the per-thread norm partials; Ω's value and per-pair coefficients (T·B work).
  if (norms) {
    for (int k = 1; k < NT; ++k)
      for (Index i = 0; i < TB; ++i) dn2[i] += dn2[k * TB + i];
    if (dh_norm)
      for (Index i = 0; i < TB; ++i) dh_norm[i] = std::sqrt(dn2[i]);
  }
  if (omega) {
    for (int k = 1; k < NT; ++k)
      for (Index i = 0; i < TB; ++i) vn2[i] += vn2[k * TB + i];
    for (Index i = 0; i < TB; ++i) {
      if (dn2[i] >= omega_bound) {  // false for NaN: such pairs are dropped, not propagated
        const double r = vn2[i] / dn2[i];
        out.omega_sum += (r - 1.0) * (r - 1.0);
        out.omega_pairs += 1.0;
        coef[i] = 4.0 * (r - 1.0) / dn2[i];
      }
    }
    if (out.omega_pairs > 0)
      for (Index i = 0; i < TB; ++i) coef[i] /= out.omega_pairs;
  }

  // Products over all T·B rows, each thread owning rows of the outputs (no reductions).
#pragma omp parallel num_threads(NT)
  {
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    Index i0, i1;
    share(H, tid, nt, i0, i1);
    // ∂E/∂W_rec = Σ_{t≥2} a_tᵀ h_{t-1} + a_1ᵀ h_0;  ∂E/∂W_in = Σ_t a_tᵀ u_t;  ∂E/∂b = Σ a_t
    // (One product for both from the second step on: a_t is packed once for h_{t-1} and u_t.)
    gemm_tn<S>(TB - B, H, dx + BH, H, h, H, nullptr, dW_rec, H, i0, i1, false, false,
               {u + B * I, I, I, dW_in, I});
    if (h0)
      gemm_tn<S>(B, H, dx, H, h0, H, nullptr, dW_rec, H, i0, i1, false, true, {u, I, I, dW_in, I});
    else
      gemm_tn<S>(B, I, dx, H, u, I, nullptr, dW_in, I, i0, i1, false, true);
    if (i1 > i0)
      Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>>(db + i0, i1 - i0) =
          cview(dx, TB, H, H).middleCols(i0, i1 - i0).colwise().sum();
    if (omega_v) {  // ∂Ω/∂W_rec = Σ c a_tᵀ v_t
      gemm_tn<S>(TB, H, dx, H, vbuf.data(), H, coef.data(), omega_grad, H, i0, i1);
    } else if (omega) {
      // G = Σ c a_tᵀ a_t (lower triangle, rows shared by area), then ∂Ω/∂W_rec = G W_rec.
      Index l0, l1;
      share_lower(H, tid, nt, l0, l1);
      gemm_tn<S>(TB, H, dx, H, dx, H, coef.data(), G.data(), H, l0, l1, /*lower=*/true);
#pragma omp barrier
      for (Index i = i0; i < i1; ++i)  // mirror: writes only above the diagonal, reads below
        for (Index j = i + 1; j < H; ++j) G.data()[i * H + j] = G.data()[j * H + i];
#pragma omp barrier
      packed_gemm<S>(i1 - i0, G.data() + i0 * H, H, Wr, 0, Wr.panels(), nullptr, H,
                     omega_grad + i0 * H, H);
    }
  }
  return out;
}

}  // namespace rnnfast
