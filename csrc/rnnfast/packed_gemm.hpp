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
#include <cstddef>
#include <vector>

namespace rnnfast {

using Index = std::ptrdiff_t;

// Register tile MR × NR: MR rows of X times NP packets of a panel row, MR·NP accumulators.
// Measured on AVX2/FMA (16 registers), (T,B,H) = (·,64,256) float32: 6×2 packets reaches
// 86–91 GFLOP/s on one core (the NumPy/OpenBLAS sgemm ceiling is ~87), 4×3 only 54–68.
#if defined(EIGEN_VECTORIZE_AVX512) || EIGEN_ARCH_ARM64
#define RNNFAST_TILE_MR 8  // 32 vector registers: 8×3 accumulators fit
#define RNNFAST_TILE_NP 3
#else
#define RNNFAST_TILE_MR 6  // 16 vector registers: 6×2 accumulators + 2 loads + 1 broadcast
#define RNNFAST_TILE_NP 2
#endif

template <typename S>
struct PanelShape {
  using Packet = typename Eigen::internal::packet_traits<S>::type;
  static constexpr int PS = Eigen::internal::unpacket_traits<Packet>::size;  // lanes per packet
  static constexpr int NP = RNNFAST_TILE_NP;                                // packets per panel row
  static constexpr int NR = NP * PS;                                        // panel width (columns)
  static constexpr int MR = RNNFAST_TILE_MR;                                // rows per tile
};

// M (K, N) packed in panels: panel p holds columns [p·NR, p·NR + NR), row k of the panel at
// data[(p·K + k)·NR]; columns past N are zero.
template <typename S>
class PackedMatrix {
 public:
  static constexpr int NR = PanelShape<S>::NR;

  PackedMatrix(Index K, Index N) : K_(K), N_(N), panels_((N + NR - 1) / NR),
                                   data_(static_cast<std::size_t>(panels_ * K * NR)) {}

  Index rows() const { return K_; }
  Index cols() const { return N_; }
  Index panels() const { return panels_; }
  const S* panel(Index p) const { return data_.data() + p * K_ * NR; }

  // Packs panels [p0, p1) of the matrix with element (k, j) = src[k·rs + j·cs].
  // Different threads may pack disjoint panel ranges concurrently.
  void pack(const S* src, Index rs, Index cs, Index p0, Index p1) {
    for (Index p = p0; p < p1; ++p) {
      S* dst = data_.data() + p * K_ * NR;
      const Index j0 = p * NR, jn = std::min<Index>(NR, N_ - j0);
      for (Index k = 0; k < K_; ++k) {
        const S* row = src + k * rs + j0 * cs;
        for (Index j = 0; j < jn; ++j) dst[k * NR + j] = row[j * cs];
        for (Index j = jn; j < NR; ++j) dst[k * NR + j] = S(0);
      }
    }
  }

 private:
  Index K_, N_, panels_;
  std::vector<S, Eigen::aligned_allocator<S>> data_;
};

namespace detail {

// One register tile: rows [0, MROWS) of X against one panel; Y = C + X·panel on columns
// [0, ncols) of the panel (ncols < NR only for the last, partial panel).
template <typename S, int MROWS>
inline void tile(Index K, const S* X, Index ldx, const S* panel, const S* C, Index ldc, S* Y,
                 Index ldy, Index ncols) {
  using Sh = PanelShape<S>;
  using Packet = typename Sh::Packet;
  using namespace Eigen::internal;
  constexpr int PS = Sh::PS, NP = Sh::NP, NR = Sh::NR;

  Packet acc[MROWS][NP];
  for (int i = 0; i < MROWS; ++i)
    for (int q = 0; q < NP; ++q) acc[i][q] = pset1<Packet>(S(0));

  for (Index k = 0; k < K; ++k) {
    const S* w = panel + k * NR;
    Packet w_[NP];
    for (int q = 0; q < NP; ++q) w_[q] = pload<Packet>(w + q * PS);
    for (int i = 0; i < MROWS; ++i) {
      const Packet xi = pset1<Packet>(X[i * ldx + k]);
      for (int q = 0; q < NP; ++q) acc[i][q] = pmadd(xi, w_[q], acc[i][q]);
    }
  }

  if (ncols == NR) {
    for (int i = 0; i < MROWS; ++i)
      for (int q = 0; q < NP; ++q) {
        Packet r = acc[i][q];
        if (C) r = padd(r, ploadu<Packet>(C + i * ldc + q * PS));
        pstoreu(Y + i * ldy + q * PS, r);
      }
  } else {
    alignas(64) S buf[NR];
    for (int i = 0; i < MROWS; ++i) {
      for (int q = 0; q < NP; ++q) pstore(buf + q * PS, acc[i][q]);
      for (Index j = 0; j < ncols; ++j) Y[i * ldy + j] = (C ? C[i * ldc + j] : S(0)) + buf[j];
    }
  }
}

template <typename S, int MROWS>
inline void tile_rows_upto(int m, Index K, const S* X, Index ldx, const S* panel, const S* C,
                           Index ldc, S* Y, Index ldy, Index ncols) {
  if constexpr (MROWS >= 1) {
    if (m == MROWS) return tile<S, MROWS>(K, X, ldx, panel, C, ldc, Y, ldy, ncols);
    if constexpr (MROWS > 1) tile_rows_upto<S, MROWS - 1>(m, K, X, ldx, panel, C, ldc, Y, ldy, ncols);
  }
}

}  // namespace detail

// Y[r, j] = C[r, j] + Σ_k X[r, k] · M[k, j] for r < rows and j in panels [p0, p1).
//   X (rows, K) row stride ldx;  C, Y (rows, N) row strides ldc, ldy;  C may equal Y or be null.
template <typename S>
void packed_gemm(Index rows, const S* X, Index ldx, const PackedMatrix<S>& M, Index p0, Index p1,
                 const S* C, Index ldc, S* Y, Index ldy) {
  constexpr int MR = PanelShape<S>::MR, NR = PanelShape<S>::NR;
  const Index K = M.rows(), N = M.cols();
  for (Index p = p0; p < p1; ++p) {
    const S* panel = M.panel(p);
    const Index j0 = p * NR, ncols = std::min<Index>(NR, N - j0);
    for (Index r = 0; r < rows; r += MR) {
      const int m = static_cast<int>(std::min<Index>(MR, rows - r));
      detail::tile_rows_upto<S, MR>(m, K, X + r * ldx, ldx, panel,
                                    C ? C + r * ldc + j0 : nullptr, ldc, Y + r * ldy + j0, ldy,
                                    ncols);
    }
  }
}

}  // namespace rnnfast
