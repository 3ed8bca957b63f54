// Microbenchmarks of the C++ kernels: forward, backward, backward with Ω (∂Ω/∂W_rec returned
// on its own: BM_backward<S, true>; folded into ∂E/∂W_rec as the training engine calls it:
// BM_backward<S, true, true>), at the sizes (T, B, I, H) of kSizes below (P, S1–S5, the natural
// problems' PTB and music minibatches, their one-sequence updates PTB1 and MUS1, and LM, one
// layer of the PyTorch word language model's RNN, bench/torch_stack.py's LM2), and
// forward + backward of a ragged batch (variable lengths, BM_ragged), and the readout's three
// products (readout.hpp: BM_readout) at the read rows, hidden units and outputs of P, PTB and MUS,
// the readout's loss (BM_readout_loss: P and PTB softmax, MUS logistic, with gradient) and
// clipping's squared norm (norms.hpp: BM_squared_norm, the five gradients of P, PTB and MUS).
// Counters: GFLOP/s of the work each kernel does (forward 2·T·B·H·(H+I), backward twice that;
// Ω adds the symmetric product T·B·H²; a ragged batch counts its Σ len_b valid steps only).
// On 2 threads the backward of a batch split takes each thread's weight gradients in the
// sweep's region (BackwardWork::local).
//   cmake -S . -B build/bench -DRNNFAST_BUILD_BENCH=ON -DCMAKE_BUILD_TYPE=Release \
//         -DCMAKE_PREFIX_PATH=$(python -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])') \
//         -Dpybind11_DIR=$(python -m pybind11 --cmakedir) -DSKBUILD_PROJECT_NAME=rnnfast \
//         -DSKBUILD_PROJECT_VERSION=0.0 && cmake --build build/bench --target rnnfast_kernels_bench
//   ./build/bench/bench/rnnfast_kernels_bench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "rnnfast/norms.hpp"
#include "rnnfast/readout.hpp"
#include "rnnfast/rnn.hpp"

namespace {

using rnnfast::Index;

struct Size {
  Index T, B, I, H;
};
const Size kSizes[] = {{125, 20, 6, 50},    {100, 1, 8, 50},      {100, 32, 8, 100},
                       {200, 64, 64, 256},  {100, 32, 128, 1024}, {50, 16, 256, 2048},
                       {200, 8, 50, 500},   {200, 4, 88, 300},    {200, 1, 50, 500},
                       {200, 1, 88, 300},   {35, 20, 200, 200}};
const char* kNames[] = {"P", "S1", "S2", "S3", "S4", "S5", "PTB", "MUS", "PTB1", "MUS1", "LM"};
constexpr int kNumSizes = 11;

template <typename S>
struct Problem {
  Size z;
  std::vector<S> u, W_in, W_rec, b, h, dh, dx, dW_in, dW_rec, db, dh0, du, og;
  std::vector<Index> lengths;  // (B) non-increasing, or empty (all T)
  explicit Problem(Size s) : z(s) {
    std::mt19937 gen(0);
    std::normal_distribution<double> n(0.0, 1.0);
    auto fill = [&](std::vector<S>& v, size_t k, double scale) {
      v.resize(k);
      for (auto& x : v) x = S(scale * n(gen));
    };
    fill(u, z.T * z.B * z.I, 1.0);
    fill(W_in, z.H * z.I, 0.1);
    fill(W_rec, z.H * z.H, 1.0 / std::sqrt(double(z.H)));
    fill(b, z.H, 0.0);
    fill(dh, z.T * z.B * z.H, 1.0);
    h.resize(z.T * z.B * z.H);
    dx.resize(h.size());
    dW_in.resize(W_in.size());
    dW_rec.resize(W_rec.size());
    db.resize(b.size());
    dh0.resize(z.B * z.H);
    du.resize(u.size());
    og.resize(W_rec.size());
  }
  rnnfast::Inputs<S> inputs() const {
    return {{z.T, z.B, z.I, z.H}, u.data(), W_in.data(), W_rec.data(), b.data(), nullptr,
            lengths.empty() ? nullptr : lengths.data()};
  }
  // Lengths uniform in [1, T], sorted non-increasing (PackedSequence order).
  void make_ragged() {
    std::mt19937 gen(1);
    std::uniform_int_distribution<Index> len(1, z.T);
    lengths.resize(z.B);
    for (auto& l : lengths) l = len(gen);
    std::sort(lengths.begin(), lengths.end(), std::greater<Index>());
  }
  double valid_steps() const {
    if (lengths.empty()) return double(z.T) * z.B;
    double n = 0;
    for (Index l : lengths) n += double(l);
    return n;
  }
  void forward(int threads) {
    rnnfast::Options opt;
    opt.threads = threads;
    rnnfast::forward<S>(inputs(), {h.data(), nullptr}, opt);
  }
  // fused: α·∂Ω/∂W_rec added to dW_rec in the weight product (Options::omega_alpha), no
  // separate ∂Ω/∂W_rec.
  void backward(int threads, bool omega, bool fused = false) {
    rnnfast::Options opt;
    opt.threads = threads;
    opt.omega = omega;
    if (fused) opt.omega_alpha = 0.5;
    rnnfast::backward<S>(inputs(), {h.data(), nullptr}, {dh.data(), nullptr},
                         {dx.data(), dW_in.data(), dW_rec.data(), db.data(), dh0.data(),
                          du.data(), omega && !fused ? og.data() : nullptr, nullptr},
                         opt);
  }
  double flops() const { return 2.0 * z.T * z.B * z.H * (z.H + z.I); }
};

template <typename S>
void BM_forward(benchmark::State& st) {
  Problem<S> p(kSizes[st.range(0)]);
  const int threads = int(st.range(1));
  for (auto _ : st) p.forward(threads);
  st.counters["GFLOP/s"] = benchmark::Counter(p.flops() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  st.SetLabel(kNames[st.range(0)]);
}

// Fused: Ω folded into ∂E/∂W_rec (the engine's call); its extra work is the norms and the
// folded operand, not a second product, so it counts the plain FLOPs.
template <typename S, bool Omega, bool Fused = false>
void BM_backward(benchmark::State& st) {
  Problem<S> p(kSizes[st.range(0)]);
  const int threads = int(st.range(1));
  p.forward(threads);
  for (auto _ : st) p.backward(threads, Omega, Fused);
  const double extra = Omega && !Fused ? double(p.z.T) * p.z.B * p.z.H * p.z.H : 0.0;
  st.counters["GFLOP/s"] = benchmark::Counter((2.0 * p.flops() + extra) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  st.SetLabel(kNames[st.range(0)]);
}

// Forward + backward of a ragged batch: the cost should follow Σ len_b (GFLOP/s of the valid
// steps about those of the full batch).
template <typename S>
void BM_ragged(benchmark::State& st) {
  Problem<S> p(kSizes[st.range(0)]);
  p.make_ragged();
  const int threads = int(st.range(1));
  for (auto _ : st) {
    p.forward(threads);
    p.backward(threads, false);
  }
  const double f = 2.0 * p.valid_steps() * p.z.H * (p.z.H + p.z.I);
  st.counters["GFLOP/s"] = benchmark::Counter(3.0 * f * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  st.SetLabel(kNames[st.range(0)]);
}

// The readout's products: Z = X Wᵀ + b, then dX = dZ W and dW = dZᵀ X, for (N, K, O) =
// P's last step (20, 50, 4), PTB's (1600, 500, 50) and MUS's (800, 300, 88).
template <typename S>
void BM_readout(benchmark::State& st) {
  const Index shapes[3][3] = {{20, 50, 4}, {1600, 500, 50}, {800, 300, 88}};
  const Index N = shapes[st.range(0)][0], K = shapes[st.range(0)][1], O = shapes[st.range(0)][2];
  const int threads = int(st.range(1));
  std::mt19937 gen(0);
  std::normal_distribution<double> n(0.0, 1.0);
  auto filled = [&](Index k) {
    std::vector<S> v(static_cast<size_t>(k));
    for (auto& x : v) x = S(n(gen));
    return v;
  };
  std::vector<S> X = filled(N * K), W = filled(O * K), b = filled(O), dZ = filled(N * O);
  std::vector<S> Z(size_t(N * O)), dX(size_t(N * K)), dW(size_t(O * K));
  const int nt = rnnfast::readout_threads(N, K, O, threads);
  for (auto _ : st) {
    rnnfast::linear<S>(N, K, O, X.data(), W.data(), b.data(), Z.data(), nt);
    rnnfast::linear_grads<S>(N, K, O, dZ.data(), X.data(), W.data(), dX.data(), dW.data(), nt);
  }
  st.counters["GFLOP/s"] = benchmark::Counter(6.0 * double(N) * K * O * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  static const char* names[] = {"P", "PTB", "MUS"};
  st.SetLabel(names[st.range(0)]);
}

// The readout's loss: P (20, 4) and PTB (1600, 50) softmax over classes, MUS (800, 88)
// logistic over 0/1 targets; outputs, Σ loss and ∂/∂z. Counter: elements of z per second.
template <typename S>
void BM_readout_loss(benchmark::State& st) {
  const Index shapes[3][2] = {{20, 4}, {1600, 50}, {800, 88}};
  const Index N = shapes[st.range(0)][0], O = shapes[st.range(0)][1];
  const auto kind = st.range(0) == 2 ? rnnfast::Loss::SigmoidBCE : rnnfast::Loss::SoftmaxCE;
  const int threads = rnnfast::loss_threads(N, O, int(st.range(1)));
  std::mt19937 gen(0);
  std::normal_distribution<double> n(0.0, 3.0);
  std::vector<S> Z(size_t(N * O)), Y(size_t(N * O)), P(size_t(N * O)), dZ(size_t(N * O));
  std::vector<std::int64_t> classes(static_cast<size_t>(N));
  for (auto& x : Z) x = S(n(gen));
  for (size_t i = 0; i < Y.size(); ++i) Y[i] = S(i % 10 == 0);
  for (size_t i = 0; i < classes.size(); ++i) classes[i] = std::int64_t(i % size_t(O));
  const bool softmax = kind == rnnfast::Loss::SoftmaxCE;
  for (auto _ : st)
    benchmark::DoNotOptimize(rnnfast::readout_loss<S>(
        kind, N, O, Z.data(), softmax ? classes.data() : nullptr, softmax ? nullptr : Y.data(),
        nullptr, 1.0 / double(N), P.data(), dZ.data(), threads));
  st.counters["Gelem/s"] =
      benchmark::Counter(double(N * O) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  static const char* names[] = {"P", "PTB", "MUS"};
  st.SetLabel(names[st.range(0)]);
}

// Clipping's Σ g² over the five gradients (W_in, W_rec, b, W_out, b_out) of P, PTB and MUS.
template <typename S>
void BM_squared_norm(benchmark::State& st) {
  const Index dims[3][3] = {{6, 50, 4}, {50, 500, 50}, {88, 300, 88}};  // I, H, O
  const Index I = dims[st.range(0)][0], H = dims[st.range(0)][1], O = dims[st.range(0)][2];
  const Index sizes[5] = {H * I, H * H, H, O * H, O};
  std::vector<std::vector<S>> g;
  Index total = 0;
  for (Index k : sizes) {
    g.emplace_back(static_cast<size_t>(k), S(0.5));
    total += k;
  }
  for (auto _ : st) {
    double s = 0.0;
    for (const auto& v : g) s += rnnfast::squared_norm(v.data(), Index(v.size()));
    benchmark::DoNotOptimize(s);
  }
  st.counters["Gelem/s"] =
      benchmark::Counter(double(total) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  static const char* names[] = {"P", "PTB", "MUS"};
  st.SetLabel(names[st.range(0)]);
}

void readout_sizes(benchmark::internal::Benchmark* b) {
  for (int s = 0; s < 3; ++s)
    for (int t : {1, 2}) b->Args({s, t});
  b->Unit(benchmark::kMicrosecond)->UseRealTime();
}

void sizes(benchmark::internal::Benchmark* b) {
  for (int s = 0; s < kNumSizes; ++s)
    for (int t : {1, 2}) b->Args({s, t});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_forward<float>)->Apply(sizes);
BENCHMARK(BM_backward<float, false>)->Apply(sizes);
BENCHMARK(BM_backward<float, true>)->Apply(sizes);
BENCHMARK(BM_backward<float, true, true>)->Apply(sizes);
BENCHMARK(BM_forward<double>)->Apply(sizes);
BENCHMARK(BM_backward<double, false>)->Apply(sizes);
BENCHMARK(BM_backward<double, true>)->Apply(sizes);
BENCHMARK(BM_backward<double, true, true>)->Apply(sizes);
BENCHMARK(BM_ragged<float>)->Apply(sizes);
BENCHMARK(BM_readout<float>)->Apply(readout_sizes);
BENCHMARK(BM_readout<double>)->Apply(readout_sizes);
BENCHMARK(BM_readout_loss<float>)->Apply(readout_sizes);
BENCHMARK(BM_readout_loss<double>)->Apply(readout_sizes);
BENCHMARK(BM_squared_norm<float>)->DenseRange(0, 2)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
