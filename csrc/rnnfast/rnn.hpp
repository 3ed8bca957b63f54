// rnnfast kernels: the vanilla RNN forward recurrence and backpropagation through time (BPTT).
//
// Dimension legend (used in every shape comment below):
//   T  time steps        B  sequences in the batch
//   I  input size        H  hidden units
// All tensors are C-contiguous (row-major); the state of the batch at one step is a (B, H)
// block whose row b is sequence b.
//
// Model (Elman form; Pascanu, Mikolov & Bengio 2013, eq. 2, with h_t = σ(x_t) named):
//   x_t = W_rec h_{t-1} + W_in u_t + b,   h_t = σ(x_t),   t = 1..T  (stored at index t-1)
// As row vectors, for a batch: X_t = H_{t-1} W_recᵀ + U_t W_inᵀ + 1 bᵀ.
//
// Backward, given the direct loss gradients dh_t = ∂⁺E/∂h_t:
//   δ_t  = dh_t + a_{t+1} W_rec        total ∂E/∂h_t      (a_{T+1} = 0)
//   a_t  = δ_t ⊙ σ'(x_t)               ∂E/∂x_t            (σ' from h_t, no x needed)
//   ∂E/∂h_0 = a_1 W_rec,  ∂E/∂W_rec = Σ_t a_tᵀ h_{t-1},  ∂E/∂W_in = Σ_t a_tᵀ u_t,
//   ∂E/∂b = Σ_t Σ_b a_t,  ∂E/∂u_t = a_t W_in.
// The Ω regularizer (ibid. eq. 9-10, the authors' squared-norm form) for the pair (t → t-1) uses
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
//
// Arguments: every kernel takes views of caller-owned arrays grouped by role (Inputs, States,
// Upstream, Gradients; their shapes are those of Inputs::dims) and an Options.
// Threads: every scratch buffer of a call is allocated before its first parallel region, and
// nothing inside a region allocates or throws (an exception leaving a region, e.g. a failed
// allocation, would terminate the process).
// Interruption: a long call asks Options::interrupted between chunks of time steps (steps_per_poll)
// and, when told to, returns early with its outputs unfinished (the bindings raise
// KeyboardInterrupt); the arithmetic of a call that runs to the end does not depend on it.
#pragma once

#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "rnnfast/packed_gemm.hpp"

#if __has_include(<unistd.h>)
#include <unistd.h>
#endif
#if defined(__SSE2__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace rnnfast {

enum class Activation : int { Tanh = 0, Sigmoid = 1, Relu = 2, Linear = 3 };

// How the threads of one call share the work.
//   Serial: one thread.  Batch: each thread owns a slice of the B sequences for all T steps
//   (no barrier per step).  Hidden: each thread owns a block of hidden units (one barrier per
//   step) — for large H with too few sequences to split.
enum class Schedule : int { Auto = 0, Serial = 1, Batch = 2, Hidden = 3 };

// ---------------------------------------------------------------------------------------------
// Kernel arguments: views of C-contiguous arrays owned by the caller.

struct Dims {
  Index T, B, I, H;
};

// What the forward reads; the backward reads it again.
template <typename S>
struct Inputs {
  Dims dims;
  const S* u = nullptr;      // (T, B, I)
  const S* W_in = nullptr;   // (H, I)
  const S* W_rec = nullptr;  // (H, H)
  const S* b = nullptr;      // (H); the backward does not read it
  const S* h0 = nullptr;     // (B, H) initial state, or null for zeros
  // (B) steps of each sequence, non-increasing, 1 ≤ len_b ≤ T, or null (all T). Sequence b
  // runs steps t < len_b; its h, ∂E/∂x and ∂E/∂u at later steps are 0 and cost nothing.
  const Index* lengths = nullptr;
};

// The states: written by the forward (States<S>), read by the backward (States<const S>).
template <typename S>
struct States {
  S* h = nullptr;  // (T, B, H) h_1..h_T (0 past a sequence's length)
  S* x = nullptr;  // (T, B, H) pre-activations x_1..x_T, or null (not kept); backward ignores it
};

// The direct loss gradients the backward starts from; each may be null (none).
template <typename S>
struct Upstream {
  const S* dh = nullptr;       // (T, B, H) ∂⁺E/∂h_t (rows past a sequence's length ignored)
  const S* dh_last = nullptr;  // (B, H) added to ∂⁺E/∂h at each sequence's last step
};

// The backward's outputs, each written in full.
template <typename S>
struct Gradients {
  S* dx = nullptr;            // (T, B, H) ∂E/∂x_t (the sweep builds δ_t in it first)
  S* dW_in = nullptr;         // (H, I)
  S* dW_rec = nullptr;        // (H, H)
  S* db = nullptr;            // (H)
  S* dh0 = nullptr;           // (B, H) ∂E/∂h_0
  S* du = nullptr;            // (T, B, I) ∂E/∂u_t, or null: not computed (W_in not packed)
  S* omega_grad = nullptr;    // (H, H) ∂Ω/∂W_rec; required with Options::omega, else unused
  double* dh_norm = nullptr;  // (T, B) ‖δ_t‖ per step and sequence, or null (not wanted)
};

struct Options {
  Activation activation = Activation::Tanh;
  int threads = 1;                     // at most: make_plan keeps small problems on one
  Schedule schedule = Schedule::Auto;  // Auto: make_plan chooses
  bool omega = false;                  // backward: also Ω and ∂Ω/∂W_rec
  double omega_bound = 1e-20;          // backward: pairs with ‖δ_t‖² below it are left out of Ω
  // backward with Ω and no Gradients::omega_grad: α of dW_rec += α·∂Ω/∂W_rec (0: off). Fused
  // into ∂E/∂W_rec's product where possible (see BackwardWork::fused).
  double omega_alpha = 0.0;
  // Asked by thread 0 (the calling thread) between chunks of time steps; true stops the call,
  // its outputs unfinished. Null: never asked.
  bool (*interrupted)() = nullptr;
};

// Ω of a backward call, as a sum (the caller divides: Ω = omega_sum / omega_pairs).
struct BackwardOut {
  double omega_sum = 0.0;    // Σ over valid pairs of (r − 1)²
  double omega_pairs = 0.0;  // number of valid (t, b) pairs
  bool interrupted = false;  // stopped by Options::interrupted: the gradients are unfinished
};

// ---------------------------------------------------------------------------------------------
// Helpers: views, the thread plan, activations, row norms.

template <typename S>
using RowMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename S>
using MapMat = Eigen::Map<RowMat<S>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <typename S>
using CMapMat = Eigen::Map<const RowMat<S>, Eigen::Unaligned, Eigen::OuterStride<>>;

// Denormal numbers (|v| < ~1.2e-38 in float32, ~2.2e-308 in float64) read and written as 0 by
// this thread while the object lives (x86: MXCSR's DAZ and FTZ bits; the caller's bits are put
// back after). Why: a vanishing error (the paper's sigmoid networks at N(0, 0.01²)) passes
// through denormals on its way to 0, and on Intel cores every operation on one takes a
// microcode assist: BPTT of a (40, 20, 6, 50) sigmoid network took 11× the time of the same
// network with larger weights. Every region of the forward and backward sets it, on every
// thread (each has its own MXCSR). Elsewhere (no such bits, or ARM's full-speed denormals): no-op.
class FlushDenormals {
 public:
#if defined(__SSE2__) || defined(_M_X64)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kDaz | kFtz); }
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kDaz = 1u << 6, kFtz = 1u << 15;
  unsigned saved_;
#endif
 public:
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;
};

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

// Bytes of one core's L2 cache, as the C library reports it; 512 KiB where it does not.
inline std::size_t l2_cache_bytes() {
  static const std::size_t bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (v > 0) return std::size_t(v);
#endif
    return std::size_t(512) << 10;
  }();
  return bytes;
}

// Chooses threads and split for a problem of elements of `elem_bytes` bytes. Tiny problems
// stay on one thread: a fork/join and the cross-core traffic cost more than the work.
inline Plan make_plan(const Dims& d, const Options& opt, std::size_t elem_bytes = 4) {
  const auto [T, B, I, H] = d;
  const Schedule forced = opt.schedule;
  const double flops = 2.0 * double(T) * double(B) * double(H) * double(H + I);
  int n = std::max(1, opt.threads);
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
  // W_rec (packed) fits one core's L2: every thread keeps all of it resident, and slices of
  // ≥ 2 rows run without the hidden split's barrier per step. Measured on a 2-core Zen 4 EPYC
  // (1 MiB L2), fwd + BPTT with Ω, time hidden ÷ batch: 2 rows per thread 1.15–1.44 (float32,
  // H = 128–400), 1.24 (float64, H = 256); 3 rows 0.97–1.02. Where W_rec does not fit, the
  // hidden split keeps each thread's block of W_rec resident, which wins at 3-4 rows per
  // thread, whose batch slices make short register tiles (bench/ab.py, interleaved builds,
  // T = 200, I = 50, H = 500, time of the other split ÷ this one's: 3 rows 1.08; 2 rows 1.23,
  // and H = 700 1.12, where a block of a step is little work for a barrier; 4 rows, the PTB
  // update, 1.04-1.10 in the VM's fast two-thread mode, 0.98-0.99 in its slow one).
  const double w_rec_bytes =
      double(elem_bytes == sizeof(double) ? PackedMatrix<double>::elements(H, H) * sizeof(double)
                                          : PackedMatrix<float>::elements(H, H) * sizeof(float));
  if (rows_per_thread >= 2 && w_rec_bytes <= double(l2_cache_bytes()))
    return {n, Schedule::Batch};
  if ((rows_per_thread == 3 || rows_per_thread == 4) && H >= 256) return {n, Schedule::Hidden};
  if (rows_per_thread >= 2) return {n, Schedule::Batch};
  if (H >= 256) return {n, Schedule::Hidden};
  if (B >= n) return {n, Schedule::Batch};
  return {1, Schedule::Serial};
}

// Time steps between two questions to Options::interrupted: about 1e8 flops of work (a few
// ms on one core), so that asking (which takes the Python lock) costs nothing measurable.
inline Index steps_per_poll(const Dims& d) {
  const double step = 2.0 * double(d.B) * double(d.H) * double(d.H + d.I) + 1.0;
  return Index(std::max(1.0, std::min(double(std::max<Index>(d.T, 1)), 1e8 / step)));
}

// After `done` steps of a sweep: whether to stop. Thread 0 asks Options::interrupted every
// `every` steps and every thread of the team gets its answer through `flag` (shared by the
// team), so all threads leave the time loop at the same step.
inline bool poll_stop(const Options& opt, Index every, Index done, int tid, int nt, int& flag) {
  if (!opt.interrupted || done % every != 0) return false;
  if (nt > 1) {
#pragma omp barrier
  }
  if (tid == 0) flag = opt.interrupted() ? 1 : 0;
  if (nt > 1) {
#pragma omp barrier
  }
  return flag != 0;
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

// Contiguous shares of the rows of a lower-triangular (n × n) result with about equal area.
inline void share_lower(Index n, int tid, int nt, Index& begin, Index& end) {
  auto edge = [&](int k) {
    return k >= nt ? n : Index(std::llround(double(n) * std::sqrt(double(k) / double(nt))));
  };
  begin = edge(tid);
  end = edge(tid + 1);
}

// Rows of the batch active at each step. With variable lengths (Inputs::lengths, sorted
// non-increasing) step t runs rows [0, n[t]), n[t] = #{b : len_b > t}: the padding of a
// PackedSequence-ordered batch is never computed. Without lengths (or all equal to T) every
// step runs all B rows and `ragged` is false: the arithmetic is exactly that of no lengths.
struct Steps {
  Steps(const Dims& d, const Index* lengths) : n(size_t(d.T + 1), d.B), off(size_t(d.T + 2), 0) {
    n[size_t(d.T)] = 0;  // no step after the last
    ragged = false;
    if (lengths)
      for (Index b = 0; b < d.B; ++b) ragged = ragged || lengths[b] < d.T;
    if (ragged) {
      len = lengths;
      for (Index t = 0; t < d.T; ++t) n[size_t(t)] = 0;
      for (Index b = 0; b < d.B; ++b)
        for (Index t = 0; t < lengths[b]; ++t) ++n[size_t(t)];
    }
    for (Index t = 0; t <= d.T; ++t) off[size_t(t + 1)] = off[size_t(t)] + n[size_t(t)];
  }
  Index at(Index t) const { return n[size_t(t)]; }
  Index valid() const { return off[n.size() - 1]; }  // Σ_t n[t] = Σ_b len_b
  std::vector<Index> n;    // (T + 1) rows active at step t; n[T] = 0
  std::vector<Index> off;  // (T + 2) off[t] = Σ_{s<t} n[s]: valid rows before step t
  bool ragged;
  const Index* len = nullptr;  // (B) the lengths when ragged
};

// Rows [begin, end) of the B sequences for thread `tid` of `nt`, with about equal Σ len_b
// (the work of a ragged batch) when `len` is given, else equal counts.
inline void share_rows(Index B, const Index* len, int tid, int nt, Index& begin, Index& end) {
  if (!len) return share(B, tid, nt, begin, end);
  Index total = 0;
  for (Index b = 0; b < B; ++b) total += len[b];
  auto edge = [&](int k) {  // first row whose preceding work reaches k/nt of the total
    if (k <= 0) return Index(0);
    if (k >= nt) return B;
    const double goal = double(total) * double(k) / double(nt);
    Index b = 0, acc = 0;
    while (b < B && double(acc) + 0.5 * double(len[b]) < goal) acc += len[b++];
    return b;
  };
  begin = edge(tid);
  end = edge(tid + 1);
}

// Zeroes rows [n[t], B) of every step of a (T, B, W) array (the padding of a ragged batch);
// the steps are shared by the threads.
template <typename S>
inline void zero_padding(S* a, Index W, const Steps& st, Index T, Index B, int tid, int nt) {
  if (!a || !st.ragged) return;
  Index t0, t1;
  share(T, tid, nt, t0, t1);
  for (Index t = t0; t < t1; ++t) std::fill(a + (t * B + st.at(t)) * W, a + (t + 1) * B * W, S(0));
}

// One thread's share of every time step of the forward or the backward sweep.
//   Batch split (and Serial): rows [b0, b1) of the batch, all H columns, all panels; no
//   barrier per step, since a sequence depends on no other.
//   Hidden split: all B rows, the columns [c0, c1) of panels [p0, p1) of the packed W_rec
//   (this thread's packing share); one barrier per step, since every column of step t needs
//   every column of step t ± 1.
struct StepShare {
  bool by_rows;
  Index b0, b1, c0, c1, p0, p1;
  Index rows() const { return b1 - b0; }
  Index cols() const { return c1 - c0; }
};

inline StepShare step_share(const Plan& plan, Index B, Index H, Index panels, Index panel_width,
                            int tid, int nt, const Steps& st) {
  StepShare s{plan.schedule != Schedule::Hidden, 0, B, 0, H, 0, panels};
  if (s.by_rows) {
    share_rows(B, st.len, tid, nt, s.b0, s.b1);
  } else {
    share(panels, tid, nt, s.p0, s.p1);
    // (the last panel may be wider than the others: PackedMatrix's merged half packet)
    auto col = [&](Index p) { return p >= panels ? H : std::min<Index>(p * panel_width, H); };
    s.c0 = col(s.p0);
    s.c1 = col(s.p1);
  }
  return s;
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

// One pass over the rows of δ (d) for Ω, instead of up to three: v = δ − dh (q; null: zeros)
// stored in v when v is not null, vn2[r] += ‖v_r‖² when vn2 is not null, dn2[r] += ‖δ_r‖² when
// dn2 is not null. The same packet operations in the same order as row_sqnorms and the
// element-wise subtraction, so the results are bit-identical to the separate passes.
template <typename S>
inline void delta_pass(const S* d, const S* q, S* v, Index ld, Index rows, Index cols,
                       double* vn2, double* dn2) {
  using Packet = typename PanelShape<S>::Packet;
  constexpr int PS = PanelShape<S>::PS;
  using namespace Eigen::internal;
  for (Index r = 0; r < rows; ++r) {
    const S* dr = d + r * ld;
    const S* qr = q ? q + r * ld : nullptr;
    S* vr = v ? v + r * ld : nullptr;
    Packet acc_v = pset1<Packet>(S(0)), acc_d = pset1<Packet>(S(0));
    Index j = 0;
    for (; j + PS <= cols; j += PS) {
      const Packet x = ploadu<Packet>(dr + j);
      const Packet y = qr ? psub(x, ploadu<Packet>(qr + j)) : x;
      if (vr) pstoreu(vr + j, y);
      acc_v = pmadd(y, y, acc_v);
      acc_d = pmadd(x, x, acc_d);
    }
    double sum_v = double(predux(acc_v)), sum_d = double(predux(acc_d));
    for (; j < cols; ++j) {
      if (vr) vr[j] = qr ? S(dr[j] - qr[j]) : dr[j];
      const double e = double(dr[j]) - (qr ? double(qr[j]) : 0.0);  // as row_sqnorms' tail
      sum_v += e * e;
      sum_d += double(dr[j]) * double(dr[j]);
    }
    if (vn2) {
      if (std::is_same<S, float>::value && std::isinf(sum_v)) {
        sum_v = 0.0;
        row_sqnorms<S>(dr, qr, ld, 1, cols, &sum_v);
      }
      vn2[r] += sum_v;
    }
    if (dn2) {
      if (std::is_same<S, float>::value && std::isinf(sum_d)) {
        sum_d = 0.0;
        row_sqnorms<S>(dr, nullptr, ld, 1, cols, &sum_d);
      }
      dn2[r] += sum_d;
    }
  }
}

// Y = C + X·M over the rows of all T steps (X, C, Y: (T·B, ·) row-major), this thread's share
// of them. Ragged: only the valid rows [0, n[t]) of each step (never the padding), else one
// packed_gemm_rows over a contiguous share.
template <typename S>
void all_steps_gemm(const Steps& st, Index B, const S* X, Index ldx, const PackedMatrix<S>& M,
                    const S* C, Index ldc, S* Y, Index ldy, int tid, int nt) {
  Index r0, r1;
  if (!st.ragged) {
    share(st.valid(), tid, nt, r0, r1);
    packed_gemm_rows<S>(r1 - r0, X + r0 * ldx, ldx, M, C ? C + r0 * ldc : nullptr, ldc,
                        Y + r0 * ldy, ldy);
    return;
  }
  share(st.valid(), tid, nt, r0, r1);
  const Index T = Index(st.n.size()) - 1;
  for (Index t = 0; t < T; ++t) {
    const Index lo = std::max(r0, st.off[size_t(t)]);
    const Index hi = std::min(r1, st.off[size_t(t)] + st.at(t));
    if (hi <= lo) continue;
    const Index row = t * B + (lo - st.off[size_t(t)]);
    packed_gemm_rows<S>(hi - lo, X + row * ldx, ldx, M, C ? C + row * ldc : nullptr, ldc,
                        Y + row * ldy, ldy);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward: out.h (and out.x when not null) from `in`.

// The time loop of one thread: z_t = b + u_t W_inᵀ + h_{t-1} W_recᵀ on its share, then
// h_t = σ(z_t). z is built in place: in x when kept, else in h. Returns false when stopped by
// Options::interrupted (`stop`: shared by the team).
template <typename S>
bool forward_steps(const Inputs<S>& in, const States<S>& out, const Options& opt,
                   const PackedMatrix<S>& Wrt, const PackedMatrix<S>& Wit, bool split_input,
                   const StepShare& sh, const Steps& steps, int tid, int nt, int& stop) {
  const auto [T, B, I, H] = in.dims;
  const Activation act = opt.activation;
  const Index every = steps_per_poll(in.dims);
  const Index BH = B * H, nc = sh.cols();
  S* z = out.x ? out.x : out.h;
  if (split_input) {  // z = b + u W_inᵀ for all (valid) T·B rows first, rows shared by the threads
    all_steps_gemm<S>(steps, B, in.u, I, Wit, in.b, 0, z, H, tid, nt);
#pragma omp barrier
  }
  for (Index t = 0; t < T; ++t) {
    // This thread's rows active at step t: [b0, b0 + nb) (rows ≥ n[t] are padding).
    const Index nb = std::max<Index>(0, std::min(sh.b1, steps.at(t)) - sh.b0);
    S* zt = z + t * BH + sh.b0 * H;
    const S* hprev = t > 0 ? out.h + (t - 1) * BH + sh.b0 * H
                           : (in.h0 ? in.h0 + sh.b0 * H : nullptr);
    if (nb > 0 && nc > 0) {
      if (split_input) {  // z += h_{t-1} W_recᵀ
        if (hprev) packed_gemm<S>(nb, hprev, H, Wrt, sh.p0, sh.p1, zt, H, zt, H);
      } else {  // z = b + u_t W_inᵀ + h_{t-1} W_recᵀ in one pass (b broadcast: row stride 0)
        packed_gemm<S>(nb, in.u + (t * B + sh.b0) * I, I, Wit, sh.p0, sh.p1, in.b, 0, zt, H,
                       hprev, H, hprev ? &Wrt : nullptr);
      }
      activate(act, zt + sh.c0, H, out.h + t * BH + sh.b0 * H + sh.c0, H, nb, nc);
    }
    if (!sh.by_rows) {
#pragma omp barrier
    }
    if (t + 1 < T && poll_stop(opt, every, t + 1, tid, nt, stop)) return false;
  }
  return true;
}

// Returns false when stopped by Options::interrupted (out unfinished).
template <typename S>
bool forward(const Inputs<S>& in, const States<S>& out, const Options& opt) {
  const auto [T, B, I, H] = in.dims;
  const Plan plan = make_plan(in.dims, opt, sizeof(S));
  const bool single_row = one_row_per_thread(plan, B);
  PackedMatrix<S> Wrt(H, H, single_row);  // W_recᵀ (k = from-unit, j = to-unit)
  PackedMatrix<S> Wit(I, H, single_row);  // W_inᵀ
  // When W_rec streams from memory at every step (PackedMatrix::streams), u_t W_inᵀ runs as
  // one blocked product over all steps first, so only W_rec is streamed per step.
  const bool split_input = Wrt.streams();
  const Steps steps(in.dims, in.lengths);

  int stop = 0;  // shared by the team: Options::interrupted said stop

  // Split: panels of the packed weights while packing, then the steps by StepShare (batch
  // rows, or hidden columns when there are too few rows). Nothing inside allocates or throws.
#pragma omp parallel num_threads(plan.threads)
  {
    const FlushDenormals flush;
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    Index p0, p1;  // both have H columns: the same panels of each
    share(Wrt.panels(), tid, nt, p0, p1);
    Wrt.pack(in.W_rec, /*rs=*/1, /*cs=*/H, p0, p1);  // element (k, j) of W_recᵀ is W_rec[j, k]
    Wit.pack(in.W_in, /*rs=*/1, /*cs=*/I, p0, p1);
    zero_padding(out.h, H, steps, T, B, tid, nt);
    zero_padding(out.x, H, steps, T, B, tid, nt);
#pragma omp barrier
    const StepShare sh = step_share(plan, B, H, Wrt.panels(), Wrt.panel_width(), tid, nt, steps);
    forward_steps(in, out, opt, Wrt, Wit, split_input, sh, steps, tid, nt, stop);
  }
  return stop == 0;
}

// ---------------------------------------------------------------------------------------------
// Backward (BPTT), optionally with the Ω regularizer and the per-step norms of δ_t.

// Every scratch buffer of one backward call, allocated before its parallel regions.
template <typename S>
struct BackwardWork {
  static bool local_plan(const Plan& plan, bool split_input, bool omega_v) {
    return plan.schedule == Schedule::Batch && plan.threads > 1 && !split_input && !omega_v;
  }
  BackwardWork(const Dims& d, const Index* lengths, const Plan& plan, bool omega, bool norms,
               bool add_omega = false)
      : NT(plan.threads), TB(d.T * d.B), steps(d, lengths),
        Wr(d.H, d.H, one_row_per_thread(plan, d.B)),
        Wi(d.H, d.I, one_row_per_thread(plan, d.B)),
        // As in the forward: with W_rec streamed from memory every step, ∂E/∂u is one blocked
        // product after the sweep rather than a second streamed matrix per step.
        split_input(Wr.streams()),
        // Ω's W_rec gradient Σ c a_tᵀ v_t: as (Σ c a_tᵀ a_t) W_rec — T·B·H² + 2H³ flops, no
        // stored v — or, when H is large against T·B, from the stored v_t = a_t W_rec of the
        // sweep — 2·T·B·H² flops and one more (T, B, H) array. At (T, B, H) =
        // (50, 16, 2048) the second takes ~0.4× the time.
        omega_v(omega && 2 * d.H > TB),
        // α·∂Ω/∂W_rec wanted in dW_rec alone: Σ_t a_tᵀ h_{t-1} + α Σ_t c_t a_tᵀ v_t is ONE
        // product Σ_t a_tᵀ (h_{t-1} + α c_t v_t), with v_t stored by the sweep: no Ω product.
        fused(omega && add_omega),
        dn2(norms ? size_t(NT * TB) : 0, 0.0),
        vn2(omega ? size_t(NT * TB) : 0, 0.0),
        coef(omega ? size_t(TB) : 0, 0.0),
        G(omega && !omega_v && !fused ? size_t(d.H * d.H) : 0),
        v(omega_v || fused ? size_t(TB * d.H) : 0),
        cf(fused ? size_t(TB) : 0),
        local(local_plan(plan, split_input, omega_v)),
        part_size(d.H * d.H + d.H * d.I + d.H + (omega ? d.H * d.H : 0)),
        part(local ? size_t((NT - 1) * part_size) : 0),
        own(local ? size_t(2 * NT * TB) : 0),
        omega_part(local ? size_t(2 * NT) : 0, 0.0) {
    // gemm_tn scratch: at most H output rows and H + I columns ([h | u] in weight_grads).
    gemm.reserve(size_t(NT));
    for (int k = 0; k < NT; ++k) gemm.emplace_back(d.H, d.H + d.I);
    if (steps.ragged) {  // the valid rows, for the weight products to skip the padding
      rows_all.reserve(size_t(steps.valid()));
      for (Index t = 0; t < d.T; ++t)
        for (Index j = 0; j < steps.at(t); ++j) rows_all.push_back(t * d.B + j);
      // Pairs (a_t, h_{t-1}) from the second step on: row (t − 1)·B + j of [dx + B·H | h | u + B·I].
      rows_rec.assign(rows_all.begin() + d.B, rows_all.end());
      for (Index& r : rows_rec) r -= d.B;
    }
  }
  int NT;                         // threads planned; per-thread arrays have NT slots
  Index TB;
  Steps steps;                    // rows active at each step
  std::vector<Index> rows_all;    // ragged: the valid rows t·B + j (j < n[t]) of (T·B, ·)
  std::vector<Index> rows_rec;    // ragged: rows_all from the second step, minus B
  PackedMatrix<S> Wr;             // W_rec:  v = a · W_rec
  PackedMatrix<S> Wi;             // W_in:   ∂E/∂u = a · W_in
  bool split_input, omega_v;
  bool fused;                     // Ω's gradient folded into dW_rec's product (v stored)
  std::vector<double> dn2;        // (NT, T, B) ‖δ_t‖² partials (a hidden split sees columns)
  std::vector<double> vn2;        // (NT, T, B) ‖v_t‖² partials
  std::vector<double> coef;       // (T, B) Ω's pair coefficients 4(r−1)/‖δ‖² / pairs, or 0
  Buffer<S> G;                    // (H, H) Σ c a_tᵀ a_t; fully written: lower product + mirror
  Buffer<S> v;                    // (T, B, H) v_t = a_t W_rec, when omega_v or fused
  Buffer<S> cf;                   // (T, B) fused: α c_t, the multiple of v_t added to h_{t-1}
  std::vector<GemmTnWork<S>> gemm;  // one per thread
  // A batch split on several threads (`local`): each thread takes the weight gradients (and
  // Ω's) of its own rows right after its sweep, into its own partial sums — no second
  // parallel region, no reading another core's rows — and the partials are added once.
  bool local;
  Index part_size;                // elements of one thread's partial [dW_rec | dW_in | db | G]
  Buffer<S> part;                 // (NT − 1, part_size): threads 1.. (thread 0 writes g, G)
  std::vector<Index> own;         // (NT, 2, T·B): each thread's rows, all steps / pairs
  std::vector<double> omega_part;  // (NT, 2): each thread's Ω sum and pair count
};

// Stage 1, the error sweep through time (BPTT), for one thread's share. Step t (0-based; h[t]
// is h_{t+1}): δ_t = dh[t] + a[t+1] W_rec, then a[t] = δ_t ⊙ σ', built in place in dx; the
// last iteration (t = −1) gives ∂E/∂h_0 = a[0] W_rec. On the way: ∂E/∂u_{t+1} = a[t+1] W_in
// (unless split_input), ‖δ_t‖² partials and, with Ω, ‖v_t‖² partials. [q0, q1): the panels
// of W_in (columns of ∂E/∂u) this thread computes. Returns false when stopped by
// Options::interrupted (`stop`: shared by the team).
template <typename S>
bool error_sweep(const Inputs<S>& in, const States<const S>& st, const Upstream<S>& up,
                 const Gradients<S>& g, const Options& opt, BackwardWork<S>& w,
                 const StepShare& sh, Index q0, Index q1, int tid, int nt, int& stop) {
  const auto [T, B, I, H] = in.dims;
  const Activation act = opt.activation;
  const bool omega = opt.omega;
  const Index every = steps_per_poll(in.dims);
  const Index BH = B * H, TB = w.TB;
  const Index b0 = sh.b0, c0 = sh.c0, nc = sh.cols(), p0 = sh.p0, p1 = sh.p1;
  const Steps& steps = w.steps;
  double* my_dn2 = w.dn2.empty() ? nullptr : w.dn2.data() + tid * TB;
  double* my_vn2 = omega ? w.vn2.data() + tid * TB : nullptr;
  for (Index t = T - 1; t >= -1; --t) {
    S* d = t >= 0 ? g.dx + t * BH + b0 * H : g.dh0 + b0 * H;  // δ_t is built in place, then a_t
    const S* dht = (t >= 0 && up.dh) ? up.dh + t * BH + b0 * H : nullptr;
    // This thread's rows active at step t, [b0, e): those of [b0, m) go on to step t + 1, those
    // of [m, e) end at t (dh_last is theirs). At t = −1 (∂E/∂h_0) every row goes on to step 0.
    const Index e = t >= 0 ? std::max(b0, std::min(sh.b1, steps.at(t))) : sh.b1;
    const Index m = std::max(b0, std::min(e, steps.at(t + 1)));
    const Index nb = e - b0, ng = m - b0, ne = e - m;
    // Without a direct gradient at t (a loss read at the last step only), the rows going on
    // have δ_t = v_{t+1}: Ω's ‖v‖² is the ‖δ‖² computed below, copied (one pass less).
    const bool v_is_delta = omega && !dht && t >= 0 && !w.omega_v;
    Index dn2_done = 0;  // rows of this step whose ‖δ_t‖² is already in my_dn2
    if (ng > 0) {
      const S* a_next = g.dx + (t + 1) * BH + b0 * H;
      if (g.du && !w.split_input)
        packed_gemm<S>(ng, a_next, H, w.Wi, q0, q1, nullptr, I,
                       g.du + (t + 1) * B * I + b0 * I, I);
      if (w.omega_v) {  // v = a[t+1] W_rec stored, then δ = dh + v
        S* vt = w.v.data() + (t + 1) * BH + b0 * H;
        packed_gemm<S>(ng, a_next, H, w.Wr, p0, p1, nullptr, H, vt, H);
        if (nc > 0) {
          row_sqnorms<S>(vt + c0, nullptr, H, ng, nc, my_vn2 + (t + 1) * B + b0);
          if (dht)
            view(d + c0, ng, nc, H) = cview(vt + c0, ng, nc, H) + cview(dht + c0, ng, nc, H);
          else
            view(d + c0, ng, nc, H) = cview(vt + c0, ng, nc, H);
        }
      } else {
        packed_gemm<S>(ng, a_next, H, w.Wr, p0, p1, dht, H, d, H);  // δ = dh + a[t+1] W_rec
        // With Ω, one pass over these rows: ‖δ‖², Ω's ‖v‖² = ‖δ − dh‖² and, fused, v = δ − dh
        // kept for the weight product (three passes cost Ω ~25% of the sweep at H = 50).
        if (omega && nc > 0) {
          delta_pass<S>(d + c0, dht ? dht + c0 : nullptr,
                        w.fused ? w.v.data() + (t + 1) * BH + b0 * H + c0 : nullptr, H, ng, nc,
                        v_is_delta ? nullptr : my_vn2 + (t + 1) * B + b0,
                        t >= 0 ? my_dn2 + t * B + b0 : nullptr);
          dn2_done = t >= 0 ? ng : 0;
        }
      }
    }
    if (ne > 0 && nc > 0) {  // the last step of these rows: no later step
      S* dl = d + ng * H + c0;
      if (dht)
        view(dl, ne, nc, H) = cview(dht + ng * H + c0, ne, nc, H);
      else
        view(dl, ne, nc, H).setZero();
      if (up.dh_last) view(dl, ne, nc, H) += cview(up.dh_last + m * H + c0, ne, nc, H);
    }
    if (nb > 0 && nc > 0 && t >= 0) {
      if (my_dn2)  // the rows delta_pass did not cover
        row_sqnorms<S>(d + dn2_done * H + c0, nullptr, H, nb - dn2_done, nc,
                       my_dn2 + t * B + b0 + dn2_done);
      if (v_is_delta)
        for (Index r = 0; r < ng; ++r) my_vn2[(t + 1) * B + b0 + r] += my_dn2[t * B + b0 + r];
      times_derivative(act, d + c0, H, st.h + t * BH + b0 * H + c0, H, d + c0, H, nb, nc);
    }
    if (!sh.by_rows) {
#pragma omp barrier
    }
    if (t >= 0 && poll_stop(opt, every, T - t, tid, nt, stop)) return false;
  }
  return true;
}

// ‖δ_t‖²: the per-thread partials summed into slot 0; dh_norm (T, B) = ‖δ_t‖ when not null.
inline void reduce_norms(std::vector<double>& dn2, int NT, Index TB, double* dh_norm) {
  for (int k = 1; k < NT; ++k)
    for (Index i = 0; i < TB; ++i) dn2[i] += dn2[k * TB + i];
  if (dh_norm)
    for (Index i = 0; i < TB; ++i) dh_norm[i] = std::sqrt(dn2[i]);
}

// Stage 2, the Ω terms (T·B work, one thread): r = ‖v_t‖² / ‖δ_t‖² per pair, Ω's sum, and
// each pair's coefficient c = 4(r − 1)/‖δ_t‖² / pairs in ∂Ω/∂W_rec = Σ c a_tᵀ v_t.
// dn2: the reduced ‖δ_t‖² (T, B); vn2: the per-thread ‖v_t‖² partials (NT, T, B).
// Padded pairs (b ≥ n[t]) are not pairs.
inline BackwardOut omega_terms(const std::vector<double>& dn2, std::vector<double>& vn2,
                               std::vector<double>& coef, int NT, Index TB, double bound,
                               const Steps& steps) {
  BackwardOut out;
  for (int k = 1; k < NT; ++k)
    for (Index i = 0; i < TB; ++i) vn2[i] += vn2[k * TB + i];
  const Index B = steps.n[0];
  for (Index i = 0; i < TB; ++i) {
    if (steps.ragged && i % B >= steps.at(i / B)) continue;
    if (dn2[i] >= bound) {  // false for NaN: such pairs are dropped, not propagated
      const double r = vn2[i] / dn2[i];
      out.omega_sum += (r - 1.0) * (r - 1.0);
      out.omega_pairs += 1.0;
      coef[i] = 4.0 * (r - 1.0) / dn2[i];
    }
  }
  if (out.omega_pairs > 0)
    for (Index i = 0; i < TB; ++i) coef[i] /= out.omega_pairs;
  return out;
}

// Stage 3, the weight gradients, rows [i0, i1) of each (H-row) output for one thread:
//   ∂E/∂W_rec = Σ_{t≥2} a_tᵀ h_{t-1} + a_1ᵀ h_0;  ∂E/∂W_in = Σ_t a_tᵀ u_t;  ∂E/∂b = Σ a_t.
// From the second step on, one product for both: a_t is packed once for h_{t-1} and u_t.
// Ragged: the products run over the valid rows only (w.rows_rec); ∂E/∂b sums the zeros of
// the padding too (H per row, no product).
template <typename S>
void weight_grads(const Inputs<S>& in, const States<const S>& st, const Gradients<S>& g,
                  const BackwardWork<S>& w, GemmTnWork<S>& ws, Index i0, Index i1) {
  const auto [T, B, I, H] = in.dims;
  const Index BH = B * H, TB = T * B;
  const bool ragged = w.steps.ragged;
  // With w.fused the right operand is h_{t-1} + α c_t v_t (row t·B + j of w.v and w.cf),
  // built while it is packed.
  const AddRows<S> add0 = w.fused ? AddRows<S>{w.v.data(), H, w.cf.data()} : AddRows<S>{};
  const AddRows<S> add1 = w.fused ? AddRows<S>{w.v.data() + BH, H, w.cf.data() + B} : add0;
  gemm_tn<S>(ws, ragged ? Index(w.rows_rec.size()) : TB - B, H, g.dx + BH, H, st.h, H, nullptr,
             g.dW_rec, H, i0, i1, false, false, {in.u + B * I, I, I, g.dW_in, I},
             ragged ? w.rows_rec.data() : nullptr, add1);
  if (in.h0 || w.fused)  // (h_0 = 0 fused: the rows are α c_1 v_1)
    gemm_tn<S>(ws, B, H, g.dx, H, in.h0, H, nullptr, g.dW_rec, H, i0, i1, false, true,
               {in.u, I, I, g.dW_in, I}, nullptr, add0);
  else
    gemm_tn<S>(ws, B, I, g.dx, H, in.u, I, nullptr, g.dW_in, I, i0, i1, false, true);
  if (i1 > i0)
    Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>>(g.db + i0, i1 - i0) =
        cview(g.dx, TB, H, H).middleCols(i0, i1 - i0).colwise().sum();
}

// Stage 3 for Ω: ∂Ω/∂W_rec = Σ c a_tᵀ v_t, rows [i0, i1) for one thread. With stored v_t one
// product; else G = Σ c a_tᵀ a_t (lower triangle, rows shared by area, then mirrored) and
// G W_rec. Every thread of the region must call it (barriers inside).
template <typename S>
void omega_weight_grad(const Dims& d, const Gradients<S>& g, BackwardWork<S>& w, Index i0,
                       Index i1, int tid, int nt) {
  const Index H = d.H;
  GemmTnWork<S>& ws = w.gemm[size_t(tid)];
  // Ragged: the valid rows only (the stored v of padded rows is never written).
  const Index* idx = w.steps.ragged ? w.rows_all.data() : nullptr;
  const Index R = w.steps.ragged ? Index(w.rows_all.size()) : w.TB;
  if (w.omega_v) {
    gemm_tn<S>(ws, R, H, g.dx, H, w.v.data(), H, w.coef.data(), g.omega_grad, H, i0, i1, false,
               false, {}, idx);
    return;
  }
  Index l0, l1;
  share_lower(H, tid, nt, l0, l1);
  gemm_tn<S>(ws, R, H, g.dx, H, g.dx, H, w.coef.data(), w.G.data(), H, l0, l1, /*lower=*/true,
             false, {}, idx);
#pragma omp barrier
  S* G = w.G.data();
  for (Index i = i0; i < i1; ++i)  // mirror: writes only above the diagonal, reads below
    for (Index j = i + 1; j < H; ++j) G[i * H + j] = G[j * H + i];
#pragma omp barrier
  packed_gemm<S>(i1 - i0, G + i0 * H, H, w.Wr, 0, w.Wr.panels(), nullptr, H,
                 g.omega_grad + i0 * H, H);
}

// Stages 2 and 3 for one thread of a batch split (BackwardWork::local), right after its sweep:
// the weight gradients of its own rows (sequences [b0, b1), every valid step) into its
// partial sums, Ω's pair terms of those rows and their Σ c a_tᵀ a_t, one barrier, then the
// partials added up by rows of the outputs (thread 0's partials are g's arrays and G), G
// mirrored and multiplied by W_rec. The sums run in another order than the row-split
// products: equal to float rounding. Every thread of the region must call it (barriers).
template <typename S>
void local_weight_grads(const Inputs<S>& in, const States<const S>& st, const Gradients<S>& g,
                        const Options& opt, BackwardWork<S>& w, const StepShare& sh, int tid,
                        int nt) {
  const auto [T, B, I, H] = in.dims;
  const Index BH = B * H, TB = w.TB, HH = H * H, HI = H * I;
  const Steps& steps = w.steps;
  const bool omega = opt.omega;
  const Index b0 = sh.b0, b1 = sh.b1;
  S* base = tid == 0 ? nullptr : w.part.data() + (tid - 1) * w.part_size;
  S* dWr = tid == 0 ? g.dW_rec : base;
  S* dWi = tid == 0 ? g.dW_in : base + HH;
  S* db = tid == 0 ? g.db : base + HH + HI;
  S* G = tid == 0 ? w.G.data() : base + HH + HI + H;
  // This thread's rows: all valid steps (t·B + j) and the pairs from the second step on.
  Index* rows = w.own.data() + size_t(2 * tid) * size_t(TB);
  Index* pairs = rows + TB;
  Index nr = 0, np = 0;
  for (Index t = 0; t < T; ++t)
    for (Index j = b0, e = std::min(b1, steps.at(t)); j < e; ++j) {
      rows[nr++] = t * B + j;
      if (t > 0) pairs[np++] = (t - 1) * B + j;
    }
  GemmTnWork<S>& ws = w.gemm[size_t(tid)];
  if (omega) {  // Ω's terms of this thread's pairs (its rows' norms are whole in its slot)
    const double* d2 = w.dn2.data() + tid * TB;
    const double* v2 = w.vn2.data() + tid * TB;
    double osum = 0.0, opairs = 0.0;
    for (Index k = 0; k < nr; ++k) {
      const Index i = rows[k];
      if (d2[i] >= opt.omega_bound) {  // false for NaN: such pairs are dropped
        const double r = v2[i] / d2[i];
        osum += (r - 1.0) * (r - 1.0);
        opairs += 1.0;
        w.coef[size_t(i)] = 4.0 * (r - 1.0) / d2[i];
      } else {
        w.coef[size_t(i)] = 0.0;
      }
    }
    w.omega_part[size_t(2 * tid)] = osum;
    w.omega_part[size_t(2 * tid + 1)] = opairs;
  }
  // α·∂Ω/∂W_rec folded in: the right operand's rows are h_{t-1} + α c v (w.cf of this
  // thread's rows), built while gemm_tn packs them.
  AddRows<S> add0, add1;
  if (w.fused) {
#pragma omp barrier
    double pairs_all = 0.0;  // the coefficients' divisor: every thread's pairs
    for (int k = 0; k < nt; ++k) pairs_all += w.omega_part[size_t(2 * k + 1)];
    const double scale = pairs_all > 0 ? opt.omega_alpha / pairs_all : 0.0;
    for (Index k = 0; k < nr; ++k) w.cf.data()[rows[k]] = S(scale * w.coef[size_t(rows[k])]);
    add0 = {w.v.data() + b0 * H, H, w.cf.data() + b0};
    add1 = {w.v.data() + BH, H, w.cf.data() + B};
  }
  gemm_tn<S>(ws, np, H, g.dx + BH, H, st.h, H, nullptr, dWr, H, 0, H, false, false,
             {in.u + B * I, I, I, dWi, I}, pairs, add1);
  const Index nb = b1 - b0;  // every row runs step 0: contiguous rows of dx, h0, u
  if (in.h0 || w.fused)  // (h_0 = 0 fused: the rows are α c_1 v_1)
    gemm_tn<S>(ws, nb, H, g.dx + b0 * H, H, in.h0 ? in.h0 + b0 * H : nullptr, H, nullptr, dWr,
               H, 0, H, false, true, {in.u + b0 * I, I, I, dWi, I}, nullptr, add0);
  else
    gemm_tn<S>(ws, nb, I, g.dx + b0 * H, H, in.u + b0 * I, I, nullptr, dWi, I, 0, H, false,
               true);
  {
    auto sum = Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>>(db, H);
    sum.setZero();
    for (Index t = 0; t < T; ++t) {
      const Index e = std::min(b1, steps.at(t));
      if (e > b0) sum += cview(g.dx + t * BH + b0 * H, e - b0, H, H).colwise().sum();
    }
  }
  if (omega && !w.fused)
    gemm_tn<S>(ws, nr, H, g.dx, H, g.dx, H, w.coef.data(), G, H, 0, H, /*lower=*/true, false,
               {}, rows);
#pragma omp barrier
  Index i0, i1;
  share(H, tid, nt, i0, i1);
  for (int k = 1; k < nt; ++k) {
    const S* pk = w.part.data() + (k - 1) * w.part_size;
    view(g.dW_rec + i0 * H, i1 - i0, H, H) += cview(pk + i0 * H, i1 - i0, H, H);
    if (I > 0) view(g.dW_in + i0 * I, i1 - i0, I, I) += cview(pk + HH + i0 * I, i1 - i0, I, I);
    for (Index i = i0; i < i1; ++i) g.db[i] += pk[HH + HI + i];
  }
  if (!omega || w.fused) return;
  double pairs_all = 0.0;
  for (int k = 0; k < nt; ++k) pairs_all += w.omega_part[size_t(2 * k + 1)];
  const S scale = S(pairs_all > 0 ? 1.0 / pairs_all : 0.0);
  S* Gm = w.G.data();
  for (Index i = i0; i < i1; ++i) {  // the lower triangle (with the diagonal), summed and scaled
    for (int k = 1; k < nt; ++k) {
      const S* Gk = w.part.data() + (k - 1) * w.part_size + HH + HI + H;
      for (Index j = 0; j <= i; ++j) Gm[i * H + j] += Gk[i * H + j];
    }
    for (Index j = 0; j <= i; ++j) Gm[i * H + j] *= scale;
  }
#pragma omp barrier
  for (Index i = i0; i < i1; ++i)  // mirror: writes only above the diagonal, reads below
    for (Index j = i + 1; j < H; ++j) Gm[i * H + j] = Gm[j * H + i];
#pragma omp barrier
  packed_gemm<S>(i1 - i0, Gm + i0 * H, H, w.Wr, 0, w.Wr.panels(), nullptr, H,
                 g.omega_grad + i0 * H, H);
}

// Fills every array of g; returns Ω's sum and pair count (zeros without Options::omega), or
// `interrupted` with g unfinished when stopped by Options::interrupted.
// Throws std::invalid_argument, before any work, for Options::omega without g.omega_grad.
template <typename S>
BackwardOut backward(const Inputs<S>& in, const States<const S>& st, const Upstream<S>& up,
                     const Gradients<S>& g_in, const Options& opt) {
  if (opt.omega && !g_in.omega_grad && opt.omega_alpha == 0.0)
    throw std::invalid_argument(
        "rnnfast::backward: Options::omega needs Gradients::omega_grad or Options::omega_alpha");
  const auto [T, B, I, H] = in.dims;
  const Plan plan = make_plan(in.dims, opt, sizeof(S));
  const bool omega = opt.omega, norms = omega || g_in.dh_norm != nullptr;
  // dW_rec += α·∂Ω/∂W_rec wanted without ∂Ω/∂W_rec itself: folded into ∂E/∂W_rec's product
  // (w.fused), in the row-split products and in the per-thread ones alike.
  const bool add_omega = omega && !g_in.omega_grad;
  BackwardWork<S> w(in.dims, in.lengths, plan, omega, norms, add_omega);
  const Gradients<S>& g = g_in;
  const S alpha = S(opt.omega_alpha);
  PackedMatrix<S>& Wr = w.Wr;
  PackedMatrix<S>& Wi = w.Wi;
  int stop = 0;  // shared by the team: Options::interrupted said stop

  // Split: panels of the packed weights while packing, then the steps by StepShare (batch
  // rows, or hidden columns when there are too few rows), then, with split_input, the T·B rows
  // of ∂E/∂u. Nothing inside allocates or throws.
#pragma omp parallel num_threads(plan.threads)
  {
    const FlushDenormals flush;
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    Index q0, q1;  // panels of W_in this thread packs and, in a hidden split, computes
    share(Wi.panels(), tid, nt, q0, q1);
    {
      Index p0, p1;
      share(Wr.panels(), tid, nt, p0, p1);
      Wr.pack(in.W_rec, /*rs=*/H, /*cs=*/1, p0, p1);
    }
    if (g.du) Wi.pack(in.W_in, /*rs=*/I, /*cs=*/1, q0, q1);  // a training update needs no ∂E/∂u
    zero_padding(g.dx, H, w.steps, T, B, tid, nt);  // the sweep writes the valid rows only
    zero_padding(g.du, I, w.steps, T, B, tid, nt);
#pragma omp barrier
    const StepShare sh = step_share(plan, B, H, Wr.panels(), Wr.panel_width(), tid, nt, w.steps);
    if (sh.by_rows) {
      q0 = 0;
      q1 = Wi.panels();
    }
    const bool swept = error_sweep(in, st, up, g, opt, w, sh, q0, q1, tid, nt, stop);
    if (swept && w.local) {
      // A long call asks once more before the weight products (a stage as long as the sweep).
      const bool ask = opt.interrupted && T > steps_per_poll(in.dims);
      if (!(ask && poll_stop(opt, 1, 0, tid, nt, stop)))
        local_weight_grads(in, st, g, opt, w, sh, tid, nt);
    }
    if (swept && g.du && w.split_input) {  // ∂E/∂u = a W_in for all T·B rows, rows shared by the threads
#pragma omp barrier
      all_steps_gemm<S>(w.steps, B, g.dx, H, Wi, nullptr, I, g.du, I, tid, nt);
    }
  }

  BackwardOut out;
  if (w.local && !stop) {  // the weight gradients are done
    if (norms) reduce_norms(w.dn2, w.NT, w.TB, g.dh_norm);
    for (int k = 0; k < w.NT; ++k) {
      out.omega_sum += w.omega_part[size_t(2 * k)];
      out.omega_pairs += w.omega_part[size_t(2 * k + 1)];
    }
    return out;
  }
  // A long call asks once more before the weight products (a stage as long as the sweep).
  if (stop || (opt.interrupted && T > steps_per_poll(in.dims) && opt.interrupted())) {
    out.interrupted = true;
    return out;
  }
  if (norms) reduce_norms(w.dn2, w.NT, w.TB, g.dh_norm);
  if (omega) out = omega_terms(w.dn2, w.vn2, w.coef, w.NT, w.TB, opt.omega_bound, w.steps);
  if (w.fused)
    for (Index r = 0; r < w.TB; ++r) w.cf.data()[r] = alpha * S(w.coef[size_t(r)]);

  // Split: rows of the (H-row) outputs, so no thread adds into another's rows (no reduction);
  // the products run over all T·B rows. Nothing inside allocates (scratch in w.gemm) or throws.
#pragma omp parallel num_threads(plan.threads)
  {
    const FlushDenormals flush;
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    Index i0, i1;
    share(H, tid, nt, i0, i1);
    weight_grads(in, st, g, w, w.gemm[size_t(tid)], i0, i1);
    if (omega && !w.fused) omega_weight_grad(in.dims, g, w, i0, i1, tid, nt);
  }
  return out;
}

}  // namespace rnnfast
