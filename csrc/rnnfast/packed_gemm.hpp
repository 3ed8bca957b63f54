// Packed-panel product for the recurrent step: Y = C + X · M with M (K, N) packed ONCE per call.
//
// Why: inside the time loop the same W_rec multiplies a new (rows × H) block at every step.
// Eigen's GEMM repacks its right-hand side on every call, which costs as much as the product
// itself at the small row counts of a batch slice. Here M is packed once into column panels of
// NR columns (each k-row of a panel is NP aligned SIMD packets) and reused for all T steps.
//
// The micro-kernel is written with Eigen's packet primitives, so the same source compiles to
// AVX-512, AVX2/FMA, SSE2 or NEON code depending on the build flags (portable builds included),
// and to plain scalar code when Eigen vectorisation is off.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rnnfast {

using Index = std::ptrdiff_t;
constexpr Index kCacheLine = 64;  // bytes

// Register tile MR × NR: MR rows of X times NP packets of a panel row, MR·NP accumulators.
// Measured on AVX2/FMA (16 registers), (T,B,H) = (·,64,256) float32: 6×2 packets reaches
// 86–91 GFLOP/s on one core (the NumPy/OpenBLAS sgemm ceiling is ~87), 4×3 only 54–68.
#if defined(EIGEN_VECTORIZE_AVX512) || EIGEN_ARCH_ARM64
#define RNNFAST_TILE_MR 8  // 32 vector registers: 8×3 accumulators fit
#define RNNFAST_TILE_NP 3
#define RNNFAST_VECTOR_REGISTERS 32
#else
#define RNNFAST_TILE_MR 6  // 16 vector registers: 6×2 accumulators + 2 loads + 1 broadcast
#define RNNFAST_TILE_NP 2
#define RNNFAST_VECTOR_REGISTERS 16
#endif

constexpr std::size_t kHugePage = std::size_t(2) << 20;  // bytes

// The size aligned_memory(bytes) actually allocates.
inline std::size_t aligned_size(std::size_t bytes) {
  bytes = std::max<std::size_t>(bytes, 64);
  const std::size_t align = bytes >= kHugePage ? kHugePage : 64;
  return (bytes + align - 1) / align * align;
}

// Uninitialised memory of `bytes`, 64-byte aligned, released with std::free; from 2 MB up,
// aligned to 2 MB and marked for transparent huge pages, so that streaming a large array at
// every time step does not take a TLB miss every 4 KB (hardware prefetchers also stop at 4 KB
// pages) and first touch faults in 2 MB at a time.
inline void* aligned_memory(std::size_t bytes) {
  const std::size_t size = aligned_size(bytes);
  const std::size_t align = size >= kHugePage ? kHugePage : 64;
  void* p = std::aligned_alloc(align, size);
  if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (align == kHugePage) madvise(p, size, MADV_HUGEPAGE);  // a hint; failure is fine
#endif
  return p;
}

// Uninitialised storage for n elements (see aligned_memory).
template <typename S>
class Buffer {
 public:
  Buffer() = default;  // no storage
  explicit Buffer(std::size_t n) : data_(static_cast<S*>(aligned_memory(n * sizeof(S)))) {}
  S* data() { return data_.get(); }
  const S* data() const { return data_.get(); }

 private:
  struct Free {
    void operator()(S* p) const { std::free(p); }
  };
  std::unique_ptr<S, Free> data_;
};

template <typename S>
struct PanelShape {
  using Packet = typename Eigen::internal::packet_traits<S>::type;
  static constexpr int PS = Eigen::internal::unpacket_traits<Packet>::size;  // lanes per packet
  static constexpr int NP = RNNFAST_TILE_NP;                                // packets per panel row
  static constexpr int NR = NP * PS;                                        // panel width (columns)
  static constexpr int MR = RNNFAST_TILE_MR;                                // rows per tile
  // Packets per panel row of a "single-row" matrix (see PackedMatrix): the accumulators and
  // the loads of one row tile fill the vector registers (7 on AVX2: 7 + 7 + 1 broadcast), at
  // most 8 (enough to cover the FMA latency). On AVX-512 the 15 that would fit ran no faster
  // at one thread and split H among two threads in coarser panels (240 columns: H = 300 is
  // 240 + 60), measured on a 2-core EPYC at (T, B, I, H) = (200, 1, 88, 300): 0.86 ms
  // forward on two threads against 0.68 with 8.
  static constexpr int NPW = std::min(8, (RNNFAST_VECTOR_REGISTERS - 1) / 2);
  // The last ≤ PS/2 columns of a matrix are multiplied with a half packet, where a 512-bit
  // packet's half costs half its FMA cycles: Zen 4 runs one 512-bit FMA as two 256-bit ones.
  // Measured on a 2-core Zen 4 EPYC: see docs/kernels.md. (Elsewhere a half packet costs what
  // a full one does: same speed, nothing gained.)
  using HalfPacket = typename Eigen::internal::unpacket_traits<Packet>::half;
  static constexpr bool kHalfTail =
      PS * sizeof(S) == 64 && Eigen::internal::unpacket_traits<HalfPacket>::size * 2 == PS;
  // Rows of a tile with np full packets (and a half packet) per row: its accumulators, one
  // panel row and a broadcast fit the vector registers.
  static constexpr int max_rows(int np, bool half) {
    const int w = np + (half ? 1 : 0);
    return std::max(1, std::min(MR, (RNNFAST_VECTOR_REGISTERS - 1 - w) / w));
  }
};

#if defined(EIGEN_VECTORIZE_AVX512)
// The lower half of a 512-bit packet (no instruction): a broadcast shared by a tile's full
// packets and its half packet.
inline Eigen::internal::Packet8f lower_half(const Eigen::internal::Packet16f& p) {
  return _mm512_castps512_ps256(p);
}
inline Eigen::internal::Packet4d lower_half(const Eigen::internal::Packet8d& p) {
  return _mm512_castpd512_pd256(p);
}
#endif

// M (K, N) packed in panels: panel p holds columns [p·NR, p·NR + NR), row k of the panel at
// data[p·K·NR + k·w] with w = stride(p) = NR, except for the last panel, which is only as
// many packets wide as its columns need (H = 50, NR = 16: 3 panels of 16 and one of 8
// columns, so the tiles of the last panel do half the work of a full one); columns past N
// are zero. On a 512-bit build (PanelShape::kHalfTail) its last ≤ PS/2 columns are a half
// packet (the row padded to a whole packet, so that every load is aligned), and a last panel
// of only such columns joins the panel before it when `merge` (H = 50, NR = 48: one panel
// of 3 packets and a half, 56 columns, whose tiles share each broadcast of X among all of
// them; a half panel of its own took a third of the tiles' time at P for a seventh of their
// FMAs).
// A `single_row` matrix is for products with one row (a batch of one sequence per thread):
// its panels are NPW packets wide instead of NP (H = 50: one panel of 7 packets instead of 4
// panels), so one row tile keeps NPW accumulators busy instead of NP and the whole row of the
// result is one tile (measured at (T, B, I, H) = (100, 1, 8, 50): the forward step ~2× faster).
template <typename S>
class PackedMatrix {
 public:
  static constexpr int PS = PanelShape<S>::PS;
  using Packet = typename PanelShape<S>::Packet;

  // Allocates its storage.
  PackedMatrix(Index K, Index N, bool single_row = false) : PackedMatrix(K, N, single_row, nullptr) {}
  // Over caller-owned `storage` of at least elements(K, N, single_row) elements (scratch
  // allocated before a parallel region), or its own storage when `storage` is null.
  // `merge`: a last panel of only a half packet joins the panel before it (see above).
  PackedMatrix(Index K, Index N, bool single_row, S* storage, bool merge = true)
      : single_row_(single_row), np_(single_row ? PanelShape<S>::NPW : PanelShape<S>::NP),
        nr_(np_ * PS), K_(K), N_(N), panels_((N + nr_ - 1) / nr_),
        owned_(storage ? Buffer<S>() : Buffer<S>(elements(K, N, single_row))),
        data_(storage ? storage : owned_.data()) {
    if (panels_ == 0) return;
    const Index rem = N - (panels_ - 1) * nr_;  // columns of the last panel, 1..nr_
    const Index full = rem / PS, part = rem % PS;
    if (!PanelShape<S>::kHalfTail || part == 0 || part > PS / 2) {
      last_packets_ = int((rem + PS - 1) / PS);
    } else if (full == 0 && panels_ > 1 && merge) {
      --panels_;
      last_packets_ = np_;
      last_half_ = true;
    } else {
      last_packets_ = int(full);
      last_half_ = true;
    }
  }

  // Elements of the packed (K, N) matrix (full panels, padding included): an upper bound of
  // every layout above (a merged last panel, NR + PS wide, replaces two of NR).
  static std::size_t elements(Index K, Index N, bool single_row = false) {
    const Index nr = (single_row ? PanelShape<S>::NPW : PanelShape<S>::NP) * PS;
    return static_cast<std::size_t>((N + nr - 1) / nr * K * nr);
  }

  // Whether the packed matrix is so large that a product with few rows streams it from
  // memory: such products prefetch ahead (packed_gemm) and callers avoid streaming it once
  // per time step where they can. Above 4 MiB. Measured on the 2-core EPYC (512 KB L2):
  // from 0.5 to 2.5 MB the plain path is 7-15% faster (the hardware prefetchers keep up from
  // L3), at 4 MB both are alike, and at 16 MB (H = 2048 float32) the prefetch wins.
  bool streams() const { return Index(sizeof(S)) * K_ * panels_ * nr_ > (Index(4) << 20); }

  bool single_row() const { return single_row_; }
  Index rows() const { return K_; }
  Index cols() const { return N_; }
  Index panels() const { return panels_; }
  Index panel_width() const { return nr_; }  // columns of a full panel
  const S* panel(Index p) const { return data_ + p * K_ * nr_; }
  // Full packets per row of panel p (see half()).
  int packets(Index p) const { return p + 1 < panels_ ? np_ : last_packets_; }
  // Whether panel p ends with a half packet (the last one, under PanelShape::kHalfTail).
  bool half(Index p) const { return last_half_ && p + 1 == panels_; }
  // Columns of panel p (padding included), and elements between two of its k-rows.
  Index width(Index p) const { return packets(p) * PS + (half(p) ? PS / 2 : 0); }
  Index stride(Index p) const { return (packets(p) + (half(p) ? 1 : 0)) * PS; }
  // First column of panel p, and one past the last of its columns that exist (≤ N).
  Index col_begin(Index p) const { return std::min<Index>(p * nr_, N_); }
  Index col_end(Index p) const { return std::min<Index>(p * nr_ + width(p), N_); }

  // Packs rows [0, k_rows) of panels [p0, p1) of the matrix with element (k, j) =
  // src[k·rs + j·cs] (src[idx[k]·rs + j·cs] with a row index `idx`, cs = 1 only: the valid
  // rows of a batch with variable lengths). Different threads may pack disjoint panel ranges
  // concurrently.
  void pack(const S* src, Index rs, Index cs, Index p0, Index p1, Index k_rows = -1,
            const Index* idx = nullptr) {
    if (k_rows < 0) k_rows = K_;
    if (idx) {
      for (Index k = 0; k < k_rows; ++k)
        for (Index p = p0; p < p1; ++p) pack_row(src + idx[k] * rs, 1, p, k);
      return;
    }
    // Row-major source (cs = 1): row k is read once, left to right, into every panel (read
    // panel by panel, a large source was fetched from memory at a stride of its rows: the
    // weight-gradient products spent ~10% of their time here). Otherwise panel by panel,
    // which reads the NR source rows of a panel side by side.
    if (cs == 1) {
      for (Index k = 0; k < k_rows; ++k)
        for (Index p = p0; p < p1; ++p) pack_row(src + k * rs, 1, p, k);
    } else {
      for (Index p = p0; p < p1; ++p)
        for (Index k = 0; k < k_rows; ++k) pack_row(src + k * rs, cs, p, k);
    }
  }

  // Packs rows [0, k_rows) of all panels of the matrix [X1 | X2]: columns [0, n1) from the
  // row-major X1 (row stride ld1), columns [n1, N) from the row-major X2 (row stride ld2);
  // with `idx`, row k of both is their row idx[k].
  void pack_pair(const S* X1, Index ld1, Index n1, const S* X2, Index ld2, Index k_rows,
                 const Index* idx = nullptr) {
    for (Index k = 0; k < k_rows; ++k) {
      const Index kr = idx ? idx[k] : k;
      pack_pair_row(X1 + kr * ld1, n1, X2 + kr * ld2, k);
    }
  }

  // Row k of all panels: the matrix row [r1 (n1 elements) | r2 (N − n1)].
  void pack_pair_row(const S* r1, Index n1, const S* r2, Index k) {
    for (Index p = 0; p < panels_; ++p) {
      const Index j0 = p * nr_, w = stride(p);
      if (j0 + width(p) <= n1) {
        pack_row(r1, 1, p, k);
      } else if (j0 >= n1) {
        pack_row(r2, 1, p, k, n1);
      } else {  // the panel where r2 begins: r1's whole packets, then element by element
        S* dst = data_ + p * K_ * nr_ + k * w;
        Index j = 0;
        for (; j0 + j + PS <= n1; j += PS)
          Eigen::internal::pstore(dst + j, Eigen::internal::ploadu<Packet>(r1 + j0 + j));
        for (; j < w; ++j) {
          const Index c = j0 + j;
          dst[j] = c < n1 ? r1[c] : c < N_ ? r2[c - n1] : S(0);
        }
      }
    }
  }

  // Row k of all panels from the row-major matrix row `row` (N elements).
  void pack_one_row(const S* row, Index k) {
    for (Index p = 0; p < panels_; ++p) pack_row(row, 1, p, k);
  }

 private:
  // Row k of panel p from `row`: element j of the matrix row (j ≥ c0) at row[(j − c0)·cs].
  void pack_row(const S* row, Index cs, Index p, Index k, Index c0 = 0) {
    const Index w = stride(p);
    S* dst = data_ + p * K_ * nr_ + k * w;
    const Index j0 = p * nr_, jn = std::min<Index>(width(p), N_ - j0);
    row += (j0 - c0) * cs;
    if (cs == 1 && jn == nr_ && w == nr_) {  // a full row of the panel: whole packets
      for (int q = 0; q < np_; ++q)
        Eigen::internal::pstore(dst + q * PS, Eigen::internal::ploadu<Packet>(row + q * PS));
      return;
    }
    // Whole packets of a contiguous row, then one loop to w for the rest. (A copy loop to
    // jn became GCC's `rep movs`, slow for the few columns of a last panel; element by
    // element, a last panel merged with a half packet, 64 columns, was most of the packing
    // of the weight-gradient product at P.)
    Index j = 0;
    if (cs == 1)
      for (; j + PS <= jn; j += PS)
        Eigen::internal::pstore(dst + j, Eigen::internal::ploadu<Packet>(row + j));
    for (; j < w; ++j) dst[j] = j < jn ? row[j * cs] : S(0);
  }

  bool single_row_;
  int np_;    // packets per full panel row
  Index nr_;  // columns per full panel
  Index K_, N_, panels_;
  int last_packets_ = 0;     // full packets per row of the last panel
  bool last_half_ = false;   // the last panel ends with a half packet
  Buffer<S> owned_;  // empty over caller-owned storage
  S* data_;
};

namespace detail {

// One operand of a tile product: X (rows, K) with X[i, k] at X[i·xr + k·xk] — (ldx, 1) for a
// row-major block, (1, MR) for a packed one — against one panel (K rows of NR columns).
// While the tile runs, it can also prefetch `pf_lines` cache lines from `pf` into L2 (one
// line every few k): the caller hands each tile a share of the NEXT panel, so a packed matrix
// too large for the caches streams from memory while the current panel is being computed,
// instead of stalling the first tile of every panel.
template <typename S>
struct Operand {
  Index K;
  const S* X;
  Index xr, xk;
  const S* panel;
  const S* pf = nullptr;
  Index pf_lines = 0;
};

// One register tile: Y = C + X1·panel1 + X2·panel2 for MROWS rows and panels of NP packets
// and, with HALF, a half packet per row (PanelShape::kHalfTail), on columns [0, ncols) of the
// panels (fewer than the panel's only for the last one). Two operands let the forward step
// add u_t W_inᵀ and h_{t-1} W_recᵀ in registers with a single store. C may be null (zero),
// equal Y, or have row stride 0 (one row broadcast, e.g. a bias).
// Kept out of line: inlined into larger loops, GCC was seen to spill the accumulators.
template <typename S, int MROWS, int NP, bool HALF>
EIGEN_DONT_INLINE void tile(const Operand<S>& o1, const Operand<S>& o2, const S* C, Index ldc,
                            S* Y, Index ldy, Index ncols) {
  using Sh = PanelShape<S>;
  using Packet = typename Sh::Packet;
  using Half = typename Sh::HalfPacket;
  using namespace Eigen::internal;
  constexpr int PS = Sh::PS, HS = PS / 2;
  constexpr int NF = NP > 0 ? NP : 1;                // extent of the full-packet arrays
  constexpr int STRIDE = (NP + (HALF ? 1 : 0)) * PS;  // elements between two k-rows
  constexpr int NCOLS = NP * PS + (HALF ? HS : 0);    // this panel's columns
  constexpr int NACC = MROWS * (NP + (HALF ? 1 : 0));

  // Prefetch the output rows (and C's, when it is another array) now, so that their cache
  // misses overlap the k loop instead of stalling the stores at its end.
  constexpr int LS = int(kCacheLine / sizeof(S));  // elements per cache line
  for (int i = 0; i < MROWS; ++i) {
    for (int j = 0; j < NCOLS; j += LS) __builtin_prefetch(Y + i * ldy + j, 1);
    __builtin_prefetch(Y + i * ldy + NCOLS - 1, 1);
    if (C && C != Y && ldc) {
      for (int j = 0; j < NCOLS; j += LS) __builtin_prefetch(C + i * ldc + j);
      __builtin_prefetch(C + i * ldc + NCOLS - 1);
    }
  }
  // A short tile has too few accumulators to cover the FMA latency (about 4 cycles × 2 FMAs
  // per cycle = 8 in flight): it keeps KU partial sums over consecutive k, added at the end
  // (B = 1 at H = 50: the forward step ~3× faster).
  // (Capped so that the accumulators, one panel row and the broadcast fit the registers: the
  // wide tiles of single-row matrices keep one sum.)
  constexpr int KU = std::max(
      1, std::min((8 + NACC - 1) / NACC,
                  (RNNFAST_VECTOR_REGISTERS - 1 - NP - (HALF ? 1 : 0)) / NACC));
  Packet acc[KU][MROWS][NF];
  Half hacc[KU][MROWS];
  for (int u = 0; u < KU; ++u)
    for (int i = 0; i < MROWS; ++i) {
      for (int q = 0; q < NF; ++q) acc[u][i][q] = pset1<Packet>(S(0));
      hacc[u][i] = pset1<Half>(S(0));
    }

  for (int seg = 0; seg < 2; ++seg) {
    const Operand<S>& o = seg ? o2 : o1;
    const Index xr = o.xr, xk = o.xk;
    // acc_u += X[:, k] · panel[k, :], fully unrolled over the tile so that the accumulators
    // live in registers. (A loop unrolled only in part indexes acc_u at run time, which puts
    // the accumulators in memory: with 8-fold unrolling, single-row tiles of 10-15 packets
    // ran 2x slower, e.g. the forward at (200, 1, 50, 500) on one thread 5.6 ms against 2.8.)
    static_assert(MROWS <= 16 && NP <= 16, "tile: the unroll pragmas below must cover the tile");
    auto step = [&](Index k, Packet(&acc_u)[MROWS][NF], Half(&hacc_u)[MROWS])
                    __attribute__((always_inline)) {
      const S* w = o.panel + k * STRIDE;
      Packet w_[NF];
#pragma GCC unroll 16
      for (int q = 0; q < NP; ++q) w_[q] = pload<Packet>(w + q * PS);
      Half wh{};
      if constexpr (HALF) wh = pload<Half>(w + NP * PS);
      const S* xk_ = o.X + k * xk;
#pragma GCC unroll 16
      for (int i = 0; i < MROWS; ++i) {
        if constexpr (NP > 0) {
          const Packet xi = pset1<Packet>(xk_[i * xr]);
#pragma GCC unroll 16
          for (int q = 0; q < NP; ++q) acc_u[i][q] = pmadd(xi, w_[q], acc_u[i][q]);
          if constexpr (HALF) hacc_u[i] = pmadd(lower_half(xi), wh, hacc_u[i]);
        } else {
          hacc_u[i] = pmadd(pset1<Half>(xk_[i * xr]), wh, hacc_u[i]);
        }
      }
    };
    const char* pf = reinterpret_cast<const char*>(o.pf);
    const char* const pf_end = pf + o.pf_lines * kCacheLine;
    const Index pf_every = o.pf_lines > 0 ? std::max<Index>(1, o.K / KU / o.pf_lines) : 0;
    Index pf_count = pf_every;
    // (Splitting k into prefetch-free runs instead of this test per k was measured slower.)
    Index k = 0;
    for (; k + KU <= o.K; k += KU) {
      if (pf < pf_end && --pf_count == 0) {
        __builtin_prefetch(pf, 0, 2);  // into L2
        pf += kCacheLine;
        pf_count = pf_every;
      }
#pragma GCC unroll 8
      for (int u = 0; u < KU; ++u) step(k + u, acc[u], hacc[u]);
    }
    for (; k < o.K; ++k) step(k, acc[0], hacc[0]);  // KU > 1: the last K mod KU
  }
  for (int u = 1; u < KU; ++u)
    for (int i = 0; i < MROWS; ++i) {
      for (int q = 0; q < NP; ++q) acc[0][i][q] = padd(acc[0][i][q], acc[u][i][q]);
      if constexpr (HALF) hacc[0][i] = padd(hacc[0][i], hacc[u][i]);
    }

  if (ncols == NCOLS) {
    for (int i = 0; i < MROWS; ++i) {
      for (int q = 0; q < NP; ++q) {
        Packet r = acc[0][i][q];
        if (C) r = padd(r, ploadu<Packet>(C + i * ldc + q * PS));
        pstoreu(Y + i * ldy + q * PS, r);
      }
      if constexpr (HALF) {
        Half r = hacc[0][i];
        if (C) r = padd(r, ploadu<Half>(C + i * ldc + NP * PS));
        pstoreu(Y + i * ldy + NP * PS, r);
      }
    }
  } else {
    alignas(64) S buf[STRIDE];
    for (int i = 0; i < MROWS; ++i) {
      for (int q = 0; q < NP; ++q) pstore(buf + q * PS, acc[0][i][q]);
      if constexpr (HALF) pstore(buf + NP * PS, hacc[0][i]);
      for (Index j = 0; j < ncols; ++j) Y[i * ldy + j] = (C ? C[i * ldc + j] : S(0)) + buf[j];
    }
  }
}

// The operand for rows [r, …) of o's rows (without its prefetch share).
template <typename S>
inline Operand<S> rows_from(const Operand<S>& o, Index r) {
  Operand<S> s = o;
  if (s.X) s.X += r * s.xr;
  s.pf_lines = 0;
  return s;
}

// tile<S, m, np, half> for a run-time m ≤ MROWS and np ≤ NP packets (np = 0 only with half).
// A tile whose accumulators would not fit the registers (PanelShape::max_rows) runs as two.
template <typename S, int MROWS, int NP = PanelShape<S>::NP>
inline void tile_rows(int m, int np, bool half, const Operand<S>& o1, const Operand<S>& o2,
                      const S* C, Index ldc, S* Y, Index ldy, Index ncols) {
  if constexpr (NP > 0) {
    if (np < NP) return tile_rows<S, MROWS, NP - 1>(m, np, half, o1, o2, C, ldc, Y, ldy, ncols);
  }
  if constexpr (MROWS >= 1) {
    if (m == MROWS) {
      if constexpr (PanelShape<S>::kHalfTail) {
        if (half) {
          if constexpr (MROWS <= PanelShape<S>::max_rows(NP, true)) {
            return tile<S, MROWS, NP, true>(o1, o2, C, ldc, Y, ldy, ncols);
          } else {
            constexpr int M1 = PanelShape<S>::max_rows(NP, true);
            tile_rows<S, M1, NP>(M1, np, true, o1, o2, C, ldc, Y, ldy, ncols);
            return tile_rows<S, MROWS - M1, NP>(MROWS - M1, np, true, rows_from(o1, M1),
                                                rows_from(o2, M1), C ? C + M1 * ldc : nullptr,
                                                ldc, Y + M1 * ldy, ldy, ncols);
          }
        }
      }
      if constexpr (NP > 0) return tile<S, MROWS, NP, false>(o1, o2, C, ldc, Y, ldy, ncols);
      return;  // (np = 0 without a half packet: no columns)
    }
    if constexpr (MROWS > 1)
      tile_rows<S, MROWS - 1, NP>(m, np, half, o1, o2, C, ldc, Y, ldy, ncols);
  }
}

}  // namespace detail

// Y[r, j] = C[r, j] + Σ_k X[r, k] · M[k, j] (+ Σ_k X2[r, k] · M2[k, j]) for r < rows and j in
// panels [p0, p1).
//   X (rows, K) row stride ldx;  X2 (rows, K2) row stride ldx2, or null;  M2 has M's columns.
//   C, Y (rows, N) row strides ldc, ldy; C may equal Y, be null (zero), or have ldc = 0 (the
//   same row added to every row). A single-row M (and M2) takes its rows one at a time.
template <typename S>
void packed_gemm(Index rows, const S* X, Index ldx, const PackedMatrix<S>& M, Index p0, Index p1,
                 const S* C, Index ldc, S* Y, Index ldy, const S* X2 = nullptr, Index ldx2 = 0,
                 const PackedMatrix<S>* M2 = nullptr) {
  const bool single_row = M.single_row();
  const Index MR = single_row ? 1 : PanelShape<S>::MR;
  // Rows in tiles of near-equal height (20 rows: 5+5+5+5, not 6+6+6+2): a short tile has
  // too few independent accumulators to hide the FMA latency. Tiles of at most `mr` rows:
  // `ntiles`, the last `taller` of them base + 1 rows high, the others base.
  struct Tiling {
    Index ntiles, base, taller;
  };
  auto tiling = [rows](Index mr) {
    const Index n = (rows + mr - 1) / mr;
    return n ? Tiling{n, rows / n, rows % n} : Tiling{0, 0, 0};
  };
  const Tiling full = tiling(MR);
  // Packed matrices that stream from memory: each tile prefetches a share of the lines
  // of the next panel (measured at H = 2048, B = 16: the forward from ~50% to ~70% of the
  // ceiling).
  auto lines = [&](const PackedMatrix<S>* P) -> Index {
    if (!P || !P->streams()) return 0;
    return (P->rows() * P->panel_width() * Index(sizeof(S)) + kCacheLine - 1) / kCacheLine;
  };
  const Index lines1 = lines(&M), lines2 = X2 ? lines(M2) : 0;
  for (Index p = p0; p < p1; ++p) {
    const Index j0 = M.col_begin(p), ncols = M.col_end(p) - j0;
    const Index pn = p + 1 < p1 ? p + 1 : p0;  // the next panel (the last one: the first,
                                              // which the next call, i.e. step, needs first)
    const int np = M.packets(p);
    const bool half = M.half(p);
    // (A panel with a half packet may take fewer rows per tile: PanelShape::max_rows.)
    const Index mr = half ? std::min<Index>(MR, PanelShape<S>::max_rows(np, true)) : MR;
    const auto [ntiles, base, taller] = mr == MR ? full : tiling(mr);
    for (Index t = 0, r = 0; t < ntiles; ++t) {
      const int m = int(base + (t >= ntiles - taller));
      // This tile's share of the next panel's lines, for each operand (no divisions when
      // nothing streams: at B = 1 they were a third of the cost of a step's call).
      Index a0 = 0, a1 = 0, c0 = 0, c1 = 0;
      if (lines1 | lines2) {
        a0 = lines1 * t / ntiles, a1 = lines1 * (t + 1) / ntiles;
        c0 = lines2 * t / ntiles, c1 = lines2 * (t + 1) / ntiles;
      }
      constexpr Index LS = kCacheLine / Index(sizeof(S));  // elements per line
      const detail::Operand<S> o1{M.rows(), X + r * ldx, ldx, 1, M.panel(p),
                                  M.panel(pn) + a0 * LS, a1 - a0};
      const detail::Operand<S> o2{X2 ? M2->rows() : 0, X2 ? X2 + r * ldx2 : nullptr, ldx2, 1,
                                  X2 ? M2->panel(p) : nullptr,
                                  X2 ? M2->panel(pn) + c0 * LS : nullptr, c1 - c0};
      const S* Ct = C ? C + r * ldc + j0 : nullptr;
      if (single_row)  // one row against panels up to NPW packets wide
        detail::tile_rows<S, 1, PanelShape<S>::NPW>(1, np, half, o1, o2, Ct, ldc,
                                                    Y + r * ldy + j0, ldy, ncols);
      else
        detail::tile_rows<S, PanelShape<S>::MR>(m, np, half, o1, o2, Ct, ldc, Y + r * ldy + j0,
                                                ldy, ncols);
      r += m;
    }
  }
}

// packed_gemm over many rows (all panels), in blocks of rows that stay in L2 while every
// panel of M passes through: M is read rows/block times, not once per row tile.
template <typename S>
void packed_gemm_rows(Index rows, const S* X, Index ldx, const PackedMatrix<S>& M, const S* C,
                      Index ldc, S* Y, Index ldy) {
  constexpr Index MR = PanelShape<S>::MR;
  const Index K = std::max<Index>(1, M.rows());
  const Index block = std::max<Index>(4 * MR, (256 * 1024 / Index(sizeof(S)) / K) / MR * MR);
  for (Index r = 0; r < rows; r += block)
    packed_gemm<S>(std::min(block, rows - r), X + r * ldx, ldx, M, 0, M.panels(),
                   C ? C + r * ldc : nullptr, ldc, Y + r * ldy, ldy);
}

// More columns for gemm_tn's right-hand side: Bm2 (R, n) with row stride ldb2, whose products
// go to Y2 (rows of A, n) with row stride ldy2.
template <typename S>
struct MoreColumns {
  const S* Bm2 = nullptr;
  Index ldb2 = 0, n = 0;
  S* Y2 = nullptr;
  Index ldy2 = 0;
};

// Rows added to gemm_tn's right-hand side while it is packed: row r of Bm becomes
// Bm[r] + c[r]·V[r] (V (R, N) row stride ldv, c (R)), Bm[r] itself where c[r] = 0, and with Bm
// null, zeros + c[r]·V[r]. (Ω folded into ∂E/∂W_rec's product: h_{t-1} + α c_t v_t, built
// row by row in L1 instead of in a (T·B, H) pass of its own before the packing.)
template <typename S>
struct AddRows {
  const S* V = nullptr;
  Index ldv = 0;
  const S* c = nullptr;
};

// Blocking of gemm_tn: KC rows of A and Bm at a time (1 KB of each), and MCT slivers of A
// (MCT·MR output rows) per pass, so that the packed block of A (KC·MCT·MR elements, 192 KB)
// stays in L2 while each panel of Bp (KC·NR elements, 16 KB) is swept from L1. Measured at
// (R, M, N) = (3200, 1024, 1024): 58 GFLOP/s without the MCT blocking, 74-79 with it.
template <typename S>
struct GemmTnShape {
  static constexpr int MR = PanelShape<S>::MR, NR = PanelShape<S>::NR, PS = PanelShape<S>::PS;
  static constexpr int AP = (MR + PS - 1) / PS;  // packets that cover MR elements of a row of A
  static constexpr Index KC = 1024 / Index(sizeof(S));
  static constexpr Index MCT = 32;
  static constexpr Index ABLOCK = KC * MR + AP * PS;  // one packed sliver of A, with room to overrun
  static constexpr Index DIRECT_PANELS = 4;  // at most this many panels of [Bm | Bm2]: A read in place
};

// Scratch of gemm_tn calls with at most `rows` output rows (i1 − i0) and at most `cols`
// columns on the right (N + more.n): a caller that runs gemm_tn inside a parallel region
// allocates one per thread before the region, since an allocation that fails inside the
// region would end the process.
template <typename S>
struct GemmTnWork {
  using Sh = GemmTnShape<S>;
  GemmTnWork(Index max_rows, Index max_cols)
      : rows(max_rows), cols(max_cols), bp(PackedMatrix<S>::elements(Sh::KC, max_cols)),
        st(size_t(max_rows * (Sh::NR + Sh::PS))),
        ap(size_t(std::min((max_rows + Sh::MR - 1) / Sh::MR, Sh::MCT) * Sh::ABLOCK)),
        row(size_t(max_cols)),
        // (no storage otherwise: Buffer(0) would allocate, and gemm_tn checks for none)
        ag(max_cols <= Sh::DIRECT_PANELS * Sh::NR ? Buffer<S>(size_t(Sh::KC * max_rows))
                                                  : Buffer<S>()) {}
  Index rows, cols;
  Buffer<S> bp;  // the packed chunk of [Bm | Bm2]
  Buffer<S> st;  // (rows, NR + PS): the panel shared by Bm and Bm2
  Buffer<S> ap;  // packed slivers of A
  Buffer<S> row;  // (cols): one row of Bm with AddRows applied
  Buffer<S> ag;  // (KC, rows): a chunk of A's rows picked by a row index, gathered (few columns only)
};

// Weight-gradient product over many rows: for output rows i in [i0, i1),
//   Y[i, j] = Σ_r s_r · A[r, i] · Bm[r, j]      (Y = Aᵀ diag(s) Bm),   r < R, j < N
//   A (R, Ma) row stride lda;  Bm (R, N) row stride ldb;  s (R) or null (ones);  Y row stride ldy.
// With `lower`, only the tiles that touch the lower triangle (j < i + MR) are computed, for a
// symmetric result (A = Bm). With `accumulate`, Y += instead of Y =. The R rows are taken in
// chunks of KC; each chunk of A and Bm is packed once (scaled by s while packing) so the tile
// streams contiguous memory from L1/L2.
// With `more`, the product is Aᵀ diag(s) [Bm | Bm2] into [Y | Y2] (not with `lower`): A is
// packed once for both, and the columns share panels (∂E/∂W_rec and ∂E/∂W_in at H = 50,
// I = 6: 0.7× the time of two products).
// With `idx` (R entries), the r-th row of the sum is row idx[r] of A, Bm, Bm2 and s (the
// valid rows of a batch with variable lengths: padded rows cost nothing).
// With `add`, Bm's rows get AddRows's multiples of V's (row idx[r] of V and c with `idx`).
// Allocates nothing: the scratch is `ws`, sized for i1 − i0 ≤ ws.rows and N + more.n ≤ ws.cols.
template <typename S>
void gemm_tn(GemmTnWork<S>& ws, Index R, Index N, const S* A, Index lda, const S* Bm, Index ldb,
             const double* s, S* Y, Index ldy, Index i0, Index i1, bool lower = false,
             bool accumulate = false, const MoreColumns<S>& more = {},
             const Index* idx = nullptr, const AddRows<S>& add = {}) {
  using Packet = typename PanelShape<S>::Packet;
  using namespace Eigen::internal;
  using Sh = GemmTnShape<S>;
  constexpr int MR = Sh::MR, NR = Sh::NR, PS = Sh::PS, AP = Sh::AP;
  constexpr Index KC = Sh::KC, MCT = Sh::MCT, ABLOCK = Sh::ABLOCK;
  const Index mi = i1 - i0;
  if (mi <= 0) return;
  if (R == 0) {
    if (!accumulate)
      for (Index i = i0; i < i1; ++i) {
        std::fill(Y + i * ldy, Y + i * ldy + N, S(0));
        std::fill(more.Y2 + i * more.ldy2, more.Y2 + i * more.ldy2 + more.n, S(0));
      }
    return;
  }
  const Index ipanels = (mi + MR - 1) / MR;
  const Index NT = N + more.n;  // columns of [Bm | Bm2]
  assert(mi <= ws.rows && NT <= ws.cols);
  // Rows of A taken without scaling or a row index, against few panels of [Bm | Bm2] (at
  // most 4·NR columns): a packed sliver of A would be read only a few times, so A is read
  // where it lies (packing it was ~20% of the backward at (T, B, H) = (100, 1, 50), and
  // at P (125, 20, 6, 50) reading it in place made the backward ~2% faster; with many panels,
  // packing still wins: S3 1% slower without it).
  // With a row index and no scaling (a batch split's own sequences on each thread, a ragged
  // batch's valid rows), each chunk of A's picked rows is first copied into contiguous scratch
  // and read in place from there: the same sums in the same order as packing it in slivers,
  // without the slivers' separate half panel (P's SGD-CR backward on two threads: 0.92× the
  // time).
  const bool few_panels = (NT + NR - 1) / NR <= Sh::DIRECT_PANELS;
  const bool gather_a = idx && !s && few_panels && ws.ag.data() != nullptr;
  const bool direct_a = !s && (!idx || gather_a) && few_panels;
  // Read in place, A's rows form tiles of any height, so the last half packet of [Bm | Bm2]
  // joins the panel before it (tiles of at most PanelShape::max_rows rows); packed in slivers
  // of MR rows, it stays a panel of its own (a merged one would need tiles shorter than a
  // sliver). At P the half panel's tiles took 7% of the backward for 1/7 of the FMAs.
  PackedMatrix<S> Bp(KC, NT, false, ws.bp.data(), /*merge=*/direct_a);
  // The panel holding columns of both Bm and Bm2 writes to St (mi, SW) first, copied out to Y
  // and Y2 at the end; the panels after it write to Y2.
  Index pboth = -1;
  for (Index p = 0; p < Bp.panels() && more.n > 0; ++p)
    if (Bp.col_begin(p) < N && N < Bp.col_end(p)) pboth = p;
  constexpr Index SW = NR + PS;  // row stride of St
  S* const St = ws.st.data();
  auto both_cols = [&](Index i, auto&& f) {  // (columns of St, of Y, of Y2) of row i
    const Index j0 = Bp.col_begin(pboth), ny = N - j0, n2 = Bp.col_end(pboth) - N;
    f(St + (i - i0) * SW, Y + i * ldy + j0, ny, more.Y2 + i * more.ldy2, n2);
  };
  if (pboth >= 0 && accumulate)
    for (Index i = i0; i < i1; ++i)
      both_cols(i, [](S* st, const S* y, Index ny, const S* y2, Index n2) {
        std::copy(y, y + ny, st);
        std::copy(y2, y2 + n2, st + ny);
      });
  // Where the tile of rows [ib, …) of panel p writes, and its row stride.
  auto target = [&](Index p, Index ib, Index& ld) -> S* {
    const Index j0 = Bp.col_begin(p);
    if (p == pboth) {
      ld = SW;
      return St + (ib - i0) * SW;
    }
    if (j0 >= N) {
      ld = more.ldy2;
      return more.Y2 + ib * more.ldy2 + (j0 - N);
    }
    ld = ldy;
    return Y + ib * ldy + j0;
  };
  const detail::Operand<S> none{0, nullptr, 0, 0, nullptr};
  // Packed slivers of A (uninitialised: every element read is packed first).
  S* const Ap = ws.ap.data();
  for (Index r0 = 0; r0 < R; r0 += KC) {
    const Index kc = std::min<Index>(KC, R - r0);
    if (add.V) {
      using RowMap = Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>>;
      using CRowMap = Eigen::Map<const Eigen::Matrix<S, 1, Eigen::Dynamic>>;
      RowMap row(ws.row.data(), N);
      for (Index k = 0; k < kc; ++k) {
        const Index r = idx ? idx[r0 + k] : r0 + k;
        const S c = add.c[r];
        const S* b = Bm ? Bm + r * ldb : nullptr;
        if (c == S(0)) {
          if (b)
            row = CRowMap(b, N);
          else
            row.setZero();
        } else if (b) {
          row = CRowMap(b, N) + c * CRowMap(add.V + r * add.ldv, N);
        } else {
          row = c * CRowMap(add.V + r * add.ldv, N);
        }
        if (more.n > 0)
          Bp.pack_pair_row(row.data(), N, more.Bm2 + r * more.ldb2, k);
        else
          Bp.pack_one_row(row.data(), k);
      }
    } else if (idx) {
      if (more.n > 0)
        Bp.pack_pair(Bm, ldb, N, more.Bm2, more.ldb2, kc, idx + r0);
      else
        Bp.pack(Bm, ldb, 1, 0, Bp.panels(), kc, idx + r0);
    } else if (more.n > 0) {
      Bp.pack_pair(Bm + r0 * ldb, ldb, N, more.Bm2 + r0 * more.ldb2, more.ldb2, kc);
    } else {
      Bp.pack(Bm + r0 * ldb, ldb, 1, 0, Bp.panels(), kc);
    }
    if (direct_a) {
      // A's rows of this chunk, from scratch row k (columns [i0, i1), row stride mi) when
      // gathered, else from A's row r0 + k.
      S* const ag = ws.ag.data();
      if (gather_a) {
        using Row = Eigen::Matrix<S, 1, Eigen::Dynamic>;
        for (Index k = 0; k < kc; ++k)  // (inline packets: a memmove call per row cost ~4%)
          Eigen::Map<Row>(ag + k * mi, mi) =
              Eigen::Map<const Row>(A + idx[r0 + k] * lda + i0, mi);
      }
      // Rows in tiles of near-equal height (as packed_gemm's), each panel of Bp once from L1.
      for (Index p = 0; p < Bp.panels(); ++p) {
        const Index ncols = Bp.col_end(p) - Bp.col_begin(p);
        const Index mr = Bp.half(p) ? PanelShape<S>::max_rows(Bp.packets(p), true) : MR;
        const Index nt = (mi + mr - 1) / mr, base = mi / nt, taller = mi % nt;
        for (Index t = 0, ib = i0; t < nt; ++t) {
          const int m = static_cast<int>(base + (t >= nt - taller));
          if (!(lower && Bp.col_begin(p) >= ib + m)) {
            Index ld;
            S* const y = target(p, ib, ld);
            const detail::Operand<S> o1 =
                gather_a ? detail::Operand<S>{kc, ag + (ib - i0), 1, mi, Bp.panel(p)}
                         : detail::Operand<S>{kc, A + r0 * lda + ib, 1, lda, Bp.panel(p)};
            detail::tile_rows<S, MR>(m, Bp.packets(p), Bp.half(p), o1, none,
                                     (r0 || accumulate) ? y : nullptr, ld, y, ld, ncols);
          }
          ib += m;
        }
      }
      continue;
    }
    for (Index ic0 = 0; ic0 < ipanels; ic0 += MCT) {
      const Index ic1 = std::min(ipanels, ic0 + MCT);
      // Ap[ip][k][i] = s_r · A[r0 + k, i0 + ip·MR + i], row by row of A (sequential reads).
      // Whole packets are stored, overrunning into the next k (written after) or the padding.
      for (Index k = 0; k < kc; ++k) {
        const Index r = idx ? idx[r0 + k] : r0 + k;
        const S* src = A + r * lda;
        const Packet sk = pset1<Packet>(s ? S(s[r]) : S(1));
        for (Index ip = ic0; ip < ic1; ++ip) {
          S* dst = Ap + (ip - ic0) * ABLOCK + k * MR;
          const Index ib = i0 + ip * MR;
          if (ib + AP * PS <= i1) {
            for (int q = 0; q < AP; ++q)
              pstoreu(dst + q * PS, pmul(sk, ploadu<Packet>(src + ib + q * PS)));
          } else {  // the last sliver: no reads past column i1
            const Index in = std::min<Index>(MR, i1 - ib);
            const S skv = s ? S(s[r]) : S(1);
            for (Index i = 0; i < in; ++i) dst[i] = skv * src[ib + i];
            for (Index i = in; i < MR; ++i) dst[i] = S(0);
          }
        }
      }
      // Panel of Bp outer (it stays in L1), the packed slivers of A streamed from L2.
      for (Index p = 0; p < Bp.panels(); ++p) {
        const Index ncols = Bp.col_end(p) - Bp.col_begin(p);
        for (Index ip = ic0; ip < ic1; ++ip) {
          const Index ib = i0 + ip * MR;
          const int m = static_cast<int>(std::min<Index>(MR, i1 - ib));
          if (lower && Bp.col_begin(p) >= ib + m) continue;  // tile entirely above the diagonal
          Index ld;
          S* const y = target(p, ib, ld);
          const detail::Operand<S> o1{kc, Ap + (ip - ic0) * ABLOCK, 1, MR, Bp.panel(p)};
          detail::tile_rows<S, MR>(m, Bp.packets(p), Bp.half(p), o1, none,
                                   (r0 || accumulate) ? y : nullptr, ld, y, ld, ncols);
        }
      }
    }
  }
  if (pboth >= 0)
    for (Index i = i0; i < i1; ++i)
      both_cols(i, [](const S* st, S* y, Index ny, S* y2, Index n2) {
        std::copy(st, st + ny, y);
        std::copy(st + ny, st + ny + n2, y2);
      });
}

}  // namespace rnnfast
