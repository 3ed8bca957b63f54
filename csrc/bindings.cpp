// Python bindings: the private module rnnfast._core. The public, validated API is in
// python/rnnfast/core.py; these entry points re-check every buffer (dtype, C order, alignment,
// shape, codes) so that a wrong call raises instead of reading out of bounds, copy an input
// that shares memory with an output, clamp the thread count, then release the GIL. A long
// call checks for Ctrl-C between chunks of time steps.
#include <pthread.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "build_config.hpp"
#include "rnnfast/norms.hpp"
#include "rnnfast/readout.hpp"
#include "rnnfast/rnn.hpp"
#include "rnnfast/sgd.hpp"

namespace py = pybind11;
using rnnfast::Activation;
using rnnfast::Dims;
using rnnfast::Index;
using rnnfast::Schedule;

namespace {

// The data pointer of `a` after checking dtype S, C order, alignment and shape; null for None
// when `optional`. Inputs may be read-only (np.load(mmap_mode="r"), np.frombuffer); outputs
// (`writable`) may not.
template <typename S>
S* buffer(const py::object& obj, const char* name, std::vector<Index> shape, bool optional = false,
          bool writable = false) {
  if (obj.is_none()) {
    if (optional) return nullptr;
    throw py::value_error(std::string(name) + " is required");
  }
  if (!py::isinstance<py::array_t<S>>(obj))
    throw py::type_error(std::string(name) + ": expected a numpy array of " +
                         py::str(py::dtype::of<S>()).cast<std::string>());
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  if (writable && !a.writeable())
    throw py::value_error(std::string(name) + ": expected a writable array (an output)");
  if (reinterpret_cast<std::uintptr_t>(a.data()) % alignof(S) != 0)
    throw py::value_error(std::string(name) + ": expected an array aligned to its element size");
  bool ok = a.ndim() == py::ssize_t(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
  if (!ok) {
    std::string want = "(";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
    throw py::value_error(std::string(name) + ": expected shape " + want + ")");
  }
  // Read-only inputs are only read: the kernels take them as const S*.
  return const_cast<S*>(static_cast<const S*>(a.data()));
}

// The memory of one call's outputs. An input that overlaps an output is copied first: the
// kernels write outputs while they still read inputs (h0 = h_last of an earlier call on the
// same Workspace lies in this call's h), which would silently change the result.
class OutputRanges {
 public:
  template <typename S>
  void add(S* p, Index n, const char* name) {
    if (!p || n <= 0) return;
    const auto r = range(p, n);
    for (int k = 0; k < count_; ++k)
      if (r.first < ranges_[k].second && ranges_[k].first < r.second)
        throw py::value_error(std::string(name) + ": shares memory with another output");
    ranges_[count_++] = r;  // a call has at most kMax outputs
  }
  // `p` itself, or a copy of its n elements when they overlap an output.
  template <typename S>
  const S* detach(const S* p, Index n) {
    if (!p || n <= 0) return p;
    const auto r = range(p, n);
    bool overlaps = false;
    for (int k = 0; k < count_; ++k)
      overlaps = overlaps || (r.first < ranges_[k].second && ranges_[k].first < r.second);
    if (!overlaps) return p;
    void* copy = rnnfast::aligned_memory(std::size_t(n) * sizeof(S));
    copies_.emplace_back(copy);
    std::memcpy(copy, p, std::size_t(n) * sizeof(S));
    return static_cast<const S*>(copy);
  }

 private:
  template <typename S>
  static std::pair<std::uintptr_t, std::uintptr_t> range(const S* p, Index n) {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    return {a, a + std::uintptr_t(n) * sizeof(S)};
  }
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  static constexpr int kMax = 8;  // backward's outputs
  std::array<std::pair<std::uintptr_t, std::uintptr_t>, kMax> ranges_;  // [begin, end) bytes
  int count_ = 0;
  std::vector<std::unique_ptr<void, Free>> copies_;  // allocates only when an input is copied
};

// Thread counts. A team larger than the machine only adds overhead, and very large ones
// crash the OpenMP runtime (10**6 threads) or make it abort (1000): a call gets at most
// max(processors, OpenMP's default team) threads, and at most OMP_THREAD_LIMIT.
// After fork(), a child of a process that ran a team of several threads would wait forever
// for the parent's threads inside libgomp (measured here, GCC's libgomp: the child's first
// parallel region of two threads hangs; a region of one thread runs): such a child runs
// every call on one thread.
std::atomic<bool> team_started{false};     // a region of several threads has run here
std::atomic<bool> forked_after_team{false};  // this process is a fork() child of one that had

extern "C" void child_after_fork() {
  if (team_started.load()) forked_after_team.store(true);
}

int thread_cap() {
  if (forked_after_team.load()) return 1;
  static const int cap = std::max(
      1, std::min(omp_get_thread_limit(), std::max(omp_get_num_procs(), omp_get_max_threads())));
  return cap;
}

// The team size of one call: num_threads clamped to [1, thread_cap()].
int clamp_threads(int num_threads) { return std::max(1, std::min(num_threads, thread_cap())); }

// Options::interrupted of calls from Python: Ctrl-C (any signal whose handler raises) stops a
// long call. Runs on the calling thread (thread 0 of the team), which released the GIL; the
// exception stays set for the binding to raise after the kernel returns.
bool python_interrupted() {
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

rnnfast::Options options(const Dims& d, int activation, int num_threads, int schedule) {
  if (activation < 0 || activation > int(Activation::Linear))
    throw py::value_error("activation: expected a code in 0..3, got " + std::to_string(activation));
  if (schedule < 0 || schedule > int(Schedule::Hidden))
    throw py::value_error("schedule: expected a code in 0..3, got " + std::to_string(schedule));
  rnnfast::Options opt;
  opt.activation = Activation(activation);
  opt.threads = clamp_threads(num_threads);
  opt.schedule = Schedule(schedule);
  opt.interrupted = &python_interrupted;
  if (rnnfast::make_plan(d, opt).threads > 1) team_started.store(true);
  return opt;
}

// Freed output arrays, kept for the next call. Fresh memory is page-faulted in from the
// operating system at first touch (~0.2 ms per MB here; a float32 minibatch of (T, B, I, H) =
// (125, 20, 6, 50) writes ~1.1 MB of outputs in a ~1 ms forward+BPTT); a loop that drops the
// previous call's arrays gets the same memory back.
// Bounded: at most kMaxHeld bytes are kept and blocks above kMaxBlock are never kept.
// Never destroyed (arrays may be freed during interpreter shutdown, after static destructors).
class OutputPool {
 public:
  static OutputPool& instance() {
    static OutputPool* pool = new OutputPool;
    return *pool;
  }
  void* take(std::size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(size);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    held_ -= size;
    return p;
  }
  std::size_t release() {  // frees every kept block; returns the bytes released
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& kv : free_) std::free(kv.second);
    free_.clear();
    const std::size_t bytes = held_;
    held_ = 0;
    return bytes;
  }
  void give(void* p, std::size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (size <= kMaxBlock && held_ + size <= kMaxHeld) {
        free_.emplace(size, p);
        held_ += size;
        return;
      }
    }
    std::free(p);
  }

 private:
  static constexpr std::size_t kMaxHeld = std::size_t(256) << 20;
  static constexpr std::size_t kMaxBlock = std::size_t(64) << 20;
  std::mutex mu_;
  std::multimap<std::size_t, void*> free_;  // size → block
  std::size_t held_ = 0;
};

struct PooledBlock {
  void* data;
  std::size_t size;
};

// An uninitialised C-contiguous array whose data start on a 64-byte boundary (the kernels'
// outputs; see core._empty for why), owned by the array, its memory from OutputPool when a
// block of that size is free.
py::array empty_aligned(const std::vector<py::ssize_t>& shape, const py::dtype& dtype) {
  std::size_t bytes = std::size_t(dtype.itemsize());
  bool overflow = false;
  for (py::ssize_t n : shape) {
    if (n < 0) throw py::value_error("shape: expected non-negative dimensions");
    overflow = overflow || __builtin_mul_overflow(bytes, std::size_t(n), &bytes);
  }
  if (overflow || bytes > (std::size_t(1) << 62)) {
    PyErr_SetString(PyExc_MemoryError, "empty: the array's size overflows 2**62 bytes");
    throw py::error_already_set();
  }
  const std::size_t size = rnnfast::aligned_size(bytes);
  void* p = OutputPool::instance().take(size);
  if (!p) p = rnnfast::aligned_memory(bytes);
  auto* block = new PooledBlock{p, size};
  py::capsule owner(block, [](void* b) {
    auto* blk = static_cast<PooledBlock*>(b);
    OutputPool::instance().give(blk->data, blk->size);
    delete blk;
  });
  return py::array(dtype, shape, p, owner);
}

// The lengths of a ragged batch (int64 (B,), each in [1, T], non-increasing: the kernels run
// step t on rows [0, n_t)), copied into `out`; null for None.
const Index* lengths_of(const py::object& obj, const Dims& d, std::vector<Index>& out) {
  if (obj.is_none()) return nullptr;
  const std::int64_t* p = buffer<std::int64_t>(obj, "lengths", {d.B});
  out.assign(p, p + d.B);
  for (Index b = 0; b < d.B; ++b) {
    if (out[size_t(b)] < 1 || out[size_t(b)] > d.T)
      throw py::value_error("lengths: expected values in [1, T] = [1, " + std::to_string(d.T) +
                            "], got " + std::to_string(out[size_t(b)]));
    if (b > 0 && out[size_t(b)] > out[size_t(b - 1)])
      throw py::value_error("lengths: the kernels expect non-increasing lengths");
  }
  return out.data();
}

// u (T, B, I) and W_rec (H, H) give the dimensions every other array is checked against.
Dims dims_of(const py::array& u, const py::object& W_rec) {
  if (u.ndim() != 3) throw py::value_error("u: expected shape (T, B, I)");
  if (!py::isinstance<py::array>(W_rec) || py::reinterpret_borrow<py::array>(W_rec).ndim() != 2)
    throw py::value_error("W_rec: expected shape (H, H)");
  return {u.shape(0), u.shape(1), u.shape(2), py::reinterpret_borrow<py::array>(W_rec).shape(0)};
}

template <typename S>
void forward(const py::array& u, const py::object& W_in, const py::object& W_rec,
             const py::object& b, const py::object& h0, const py::object& h, const py::object& x,
             const py::object& lengths, int activation, int num_threads, int schedule) {
  const Dims d = dims_of(u, W_rec);
  const auto [T, B, I, H] = d;
  rnnfast::Inputs<S> in{d,
                        buffer<S>(u, "u", {T, B, I}),
                        buffer<S>(W_in, "W_in", {H, I}),
                        buffer<S>(W_rec, "W_rec", {H, H}),
                        buffer<S>(b, "b", {H}),
                        buffer<S>(h0, "h0", {B, H}, true)};
  std::vector<Index> lens;
  in.lengths = lengths_of(lengths, d, lens);
  const rnnfast::States<S> out{buffer<S>(h, "h", {T, B, H}, false, true),
                               buffer<S>(x, "x", {T, B, H}, true, true)};
  const rnnfast::Options opt = options(d, activation, num_threads, schedule);
  OutputRanges outs;
  outs.add(out.h, T * B * H, "h");
  outs.add(out.x, T * B * H, "x");
  in.u = outs.detach(in.u, T * B * I);
  in.W_in = outs.detach(in.W_in, H * I);
  in.W_rec = outs.detach(in.W_rec, H * H);
  in.b = outs.detach(in.b, H);
  in.h0 = outs.detach(in.h0, B * H);
  bool done;
  {
    py::gil_scoped_release nogil;
    done = rnnfast::forward<S>(in, out, opt);
  }
  if (!done) throw py::error_already_set();  // the exception python_interrupted left set
}

// Ω is on when omega_grad is given, or omega_alpha ≠ 0 (then dW_rec += α·∂Ω/∂W_rec and
// omega_grad must be None).
template <typename S>
std::pair<double, double> backward(const py::array& u, const py::object& W_in,
                                   const py::object& W_rec, const py::object& h0,
                                   const py::object& h, const py::object& dh,
                                   const py::object& dh_last, const py::object& dx,
                                   const py::object& dW_in, const py::object& dW_rec,
                                   const py::object& db, const py::object& dh0,
                                   const py::object& du, const py::object& omega_grad,
                                   double omega_bound, const py::object& dh_norm,
                                   const py::object& lengths, int activation, int num_threads,
                                   int schedule, double omega_alpha) {
  const Dims d = dims_of(u, W_rec);
  const auto [T, B, I, H] = d;
  rnnfast::Inputs<S> in{d,
                        buffer<S>(u, "u", {T, B, I}),
                        buffer<S>(W_in, "W_in", {H, I}),
                        buffer<S>(W_rec, "W_rec", {H, H}),
                        nullptr,  // b: not needed by the backward
                        buffer<S>(h0, "h0", {B, H}, true)};
  std::vector<Index> lens;
  in.lengths = lengths_of(lengths, d, lens);
  rnnfast::States<const S> st{buffer<S>(h, "h", {T, B, H}), nullptr};
  rnnfast::Upstream<S> up{buffer<S>(dh, "dh", {T, B, H}, true),
                          buffer<S>(dh_last, "dh_last", {B, H}, true)};
  const rnnfast::Gradients<S> g{buffer<S>(dx, "dx", {T, B, H}, false, true),
                                buffer<S>(dW_in, "dW_in", {H, I}, false, true),
                                buffer<S>(dW_rec, "dW_rec", {H, H}, false, true),
                                buffer<S>(db, "db", {H}, false, true),
                                buffer<S>(dh0, "dh0", {B, H}, false, true),
                                buffer<S>(du, "du", {T, B, I}, true, true),
                                buffer<S>(omega_grad, "omega_grad", {H, H}, true, true),
                                buffer<double>(dh_norm, "dh_norm", {T, B}, true, true)};
  rnnfast::Options opt = options(d, activation, num_threads, schedule);
  if (omega_alpha != 0.0 && g.omega_grad)
    throw py::value_error("omega_alpha: give it without omega_grad (α·∂Ω/∂W_rec goes into dW_rec)");
  opt.omega = g.omega_grad != nullptr || omega_alpha != 0.0;
  opt.omega_bound = omega_bound;
  opt.omega_alpha = omega_alpha;
  OutputRanges outs;
  outs.add(g.dx, T * B * H, "dx");
  outs.add(g.dW_in, H * I, "dW_in");
  outs.add(g.dW_rec, H * H, "dW_rec");
  outs.add(g.db, H, "db");
  outs.add(g.dh0, B * H, "dh0");
  outs.add(g.du, T * B * I, "du");
  outs.add(g.omega_grad, H * H, "omega_grad");
  outs.add(g.dh_norm, T * B, "dh_norm");
  in.u = outs.detach(in.u, T * B * I);
  in.W_in = outs.detach(in.W_in, H * I);
  in.W_rec = outs.detach(in.W_rec, H * H);
  in.h0 = outs.detach(in.h0, B * H);
  st.h = outs.detach(st.h, T * B * H);
  up.dh = outs.detach(up.dh, T * B * H);
  up.dh_last = outs.detach(up.dh_last, B * H);
  rnnfast::BackwardOut r;
  {
    py::gil_scoped_release nogil;
    r = rnnfast::backward<S>(in, st, up, g, opt);
  }
  if (r.interrupted) throw py::error_already_set();  // the exception python_interrupted left set
  return {r.omega_sum, r.omega_pairs};
}

// The readout's products (readout.hpp), outputs allocated here:
//   linear:       Z (N, O) = X (N, K) · Wᵀ + 1 bᵀ       W (O, K), b (O) or None
//   linear_grads: (dX (N, K), dW (O, K)) = (dZ (N, O) · W, dZᵀ · X)
// (N, K) from X, O from W (dZ and X for the gradients); buffer() checks the rest.
std::pair<Index, Index> matrix_dims(const py::object& obj, const char* name, const char* shape) {
  if (!py::isinstance<py::array>(obj) || py::reinterpret_borrow<py::array>(obj).ndim() != 2)
    throw py::value_error(std::string(name) + ": expected shape " + shape);
  const auto a = py::reinterpret_borrow<py::array>(obj);
  return {a.shape(0), a.shape(1)};
}

template <typename S>
py::array linear(const py::array& X, const py::object& W, const py::object& b, int num_threads) {
  const auto [N, K] = matrix_dims(X, "X", "(N, K)");
  const Index O = matrix_dims(W, "W", "(O, K)").first;
  const S* x = buffer<S>(X, "X", {N, K});
  const S* w = buffer<S>(W, "W", {O, K});
  const S* bo = buffer<S>(b, "b", {O}, true);
  py::array Z = empty_aligned({N, O}, py::dtype::of<S>());
  S* z = static_cast<S*>(Z.mutable_data());
  const int nt = rnnfast::readout_threads(N, K, O, clamp_threads(num_threads));
  if (nt > 1) team_started.store(true);
  {
    py::gil_scoped_release nogil;
    rnnfast::linear<S>(N, K, O, x, w, bo, z, nt);
  }
  return Z;
}

template <typename S>
py::tuple linear_grads(const py::array& dZ, const py::object& X, const py::object& W,
                       int num_threads) {
  const auto [N, O] = matrix_dims(dZ, "dZ", "(N, O)");
  const Index K = matrix_dims(X, "X", "(N, K)").second;
  const S* dz = buffer<S>(dZ, "dZ", {N, O});
  const S* x = buffer<S>(X, "X", {N, K});
  const S* w = buffer<S>(W, "W", {O, K});
  py::array dX = empty_aligned({N, K}, py::dtype::of<S>());
  py::array dW = empty_aligned({O, K}, py::dtype::of<S>());
  S* dx = static_cast<S*>(dX.mutable_data());
  S* dw = static_cast<S*>(dW.mutable_data());
  const int nt = rnnfast::readout_threads(N, K, O, clamp_threads(num_threads));
  if (nt > 1) team_started.store(true);
  {
    py::gil_scoped_release nogil;
    rnnfast::linear_grads<S>(N, K, O, dz, x, w, dx, dw, nt);
  }
  return py::make_tuple(dX, dW);
}

// The readout's loss (readout.hpp): (Σ_n w_n loss_n, P (N, O) or None for linear_mse, dZ (N, O)
// or None without `grad`). kind: 0 softmax_ce (targets: int64 classes (N)), 1 sigmoid_bce,
// 2 linear_mse (targets: Y (N, O)); targets None: outputs only. w: float64 (N) or None.
template <typename S>
py::tuple readout_loss(int kind, const py::array& Z, const py::object& targets,
                       const py::object& w, double scale, bool grad, int num_threads) {
  if (kind < 0 || kind > int(rnnfast::Loss::LinearMSE))
    throw py::value_error("kind: expected a code in 0..2, got " + std::to_string(kind));
  const auto loss = rnnfast::Loss(kind);
  const auto [N, O] = matrix_dims(Z, "Z", "(N, O)");
  const S* z = buffer<S>(Z, "Z", {N, O});
  const double* wp = buffer<double>(w, "w", {N}, true);
  const std::int64_t* classes = nullptr;
  const S* y = nullptr;
  if (loss == rnnfast::Loss::SoftmaxCE) {
    classes = buffer<std::int64_t>(targets, "targets", {N}, true);
    // a class indexes its row: check every counted one before any is read
    for (Index n = 0; classes && n < N; ++n) {
      if ((wp && wp[n] == 0.0) || (classes[n] >= 0 && classes[n] < O)) continue;
      throw py::value_error("targets hold class " + std::to_string(classes[n]) +
                            ", outside the valid range [0, " + std::to_string(O) + ")");
    }
  } else {
    y = buffer<S>(targets, "targets", {N, O}, true);
  }
  const bool has_targets = classes || y;
  if (grad && !has_targets) throw py::value_error("grad: the gradient needs targets");
  if (loss == rnnfast::Loss::LinearMSE && !has_targets)
    throw py::value_error("targets: linear_mse's outputs are Z itself; nothing to compute");
  py::object P = py::none(), dZ = py::none();
  S* p = nullptr;
  S* dz = nullptr;
  if (loss != rnnfast::Loss::LinearMSE) {
    P = empty_aligned({N, O}, py::dtype::of<S>());
    p = static_cast<S*>(py::reinterpret_borrow<py::array>(P).mutable_data());
  }
  if (grad) {
    dZ = empty_aligned({N, O}, py::dtype::of<S>());
    dz = static_cast<S*>(py::reinterpret_borrow<py::array>(dZ).mutable_data());
  }
  const int nt = rnnfast::loss_threads(N, O, clamp_threads(num_threads));
  if (nt > 1) team_started.store(true);
  double total;
  {
    py::gil_scoped_release nogil;
    total = rnnfast::readout_loss<S>(loss, N, O, z, classes, y, wp, scale, p, dz, nt);
  }
  return py::make_tuple(total, P, dZ);
}

// Whether a is C-contiguous with its data aligned to its element size: an array the flat
// loops of norms.hpp and sgd.hpp read as one vector.
bool flat(const py::array& a) {
  return (a.flags() & py::array::c_style) &&
         reinterpret_cast<std::uintptr_t>(a.data()) % a.itemsize() == 0;
}

// Σ x² of each array of a sequence (norms.hpp), each a C-contiguous float32 or float64 array
// (TypeError otherwise: the caller has a general path).
std::vector<double> squared_norms(const py::sequence& arrays) {
  std::vector<double> out;
  out.reserve(arrays.size());
  for (const py::handle& h : arrays) {
    const bool f32 = py::isinstance<py::array_t<float>>(h);
    if (!f32 && !py::isinstance<py::array_t<double>>(h))
      throw py::type_error("squared_norms: expected float32 or float64 arrays");
    const auto a = py::reinterpret_borrow<py::array>(h);
    if (!flat(a))
      throw py::type_error("squared_norms: expected C-contiguous, aligned arrays");
    const Index n = a.size();
    out.push_back(f32 ? rnnfast::squared_norm(static_cast<const float*>(a.data()), n)
                      : rnnfast::squared_norm(static_cast<const double*>(a.data()), n));
  }
  return out;
}

// p ← p − lr·g for each pair of a sequence of parameters and one of gradients (sgd.hpp):
// C-contiguous, aligned, writable float32 or float64 arrays, each gradient of its parameter's
// shape and dtype (TypeError otherwise: the caller has a general path). Checks every pair
// before it changes any.
void sgd_step(const py::sequence& params, const py::sequence& grads, double lr, int threads) {
  if (params.size() != grads.size())
    throw py::value_error("sgd_step: expected as many gradients as parameters");
  std::vector<py::array> ps, gs;
  for (size_t k = 0; k < params.size(); ++k) {
    const py::handle hp = params[k], hg = grads[k];
    const bool f32 = py::isinstance<py::array_t<float>>(hp);
    if (!f32 && !py::isinstance<py::array_t<double>>(hp))
      throw py::type_error("sgd_step: expected float32 or float64 parameters");
    const auto p = py::reinterpret_borrow<py::array>(hp);
    const auto g = py::reinterpret_borrow<py::array>(hg);
    if (!py::isinstance<py::array>(hg) || !g.dtype().is(p.dtype()) || g.ndim() != p.ndim() ||
        !std::equal(p.shape(), p.shape() + p.ndim(), g.shape()))
      throw py::type_error("sgd_step: expected gradients of their parameters' shapes and dtypes");
    if (!flat(p) || !flat(g))
      throw py::type_error("sgd_step: expected C-contiguous, aligned arrays");
    if (!p.writeable()) throw py::type_error("sgd_step: expected writable parameters");
    ps.push_back(p);
    gs.push_back(g);
  }
  const int nt = clamp_threads(threads);
  py::gil_scoped_release release;
  for (size_t k = 0; k < ps.size(); ++k) {
    const Index n = ps[k].size();
    if (ps[k].itemsize() == 4)
      rnnfast::sgd_step(static_cast<float*>(ps[k].mutable_data()),
                        static_cast<const float*>(gs[k].data()), n, float(lr), nt);
    else
      rnnfast::sgd_step(static_cast<double*>(ps[k].mutable_data()),
                        static_cast<const double*>(gs[k].data()), n, lr, nt);
  }
}

void dispatch_check(const py::array& u) {
  if (!py::isinstance<py::array_t<float>>(u) && !py::isinstance<py::array_t<double>>(u))
    throw py::type_error("u: expected float32 or float64");
}

py::dict build_info() {
  py::dict d;
  d["compiler"] = RNNFAST_CXX_COMPILER;
  d["flags"] = RNNFAST_CXX_FLAGS;
  d["native"] = std::string(RNNFAST_NATIVE_BUILD) == "ON";
  std::vector<std::string> isa;
#ifdef __SSE2__
  isa.push_back("sse2");
#endif
#ifdef __AVX__
  isa.push_back("avx");
#endif
#ifdef __AVX2__
  isa.push_back("avx2");
#endif
#ifdef __FMA__
  isa.push_back("fma");
#endif
#ifdef __AVX512F__
  isa.push_back("avx512f");
#endif
#ifdef __ARM_NEON
  isa.push_back("neon");
#endif
  d["instruction_sets"] = isa;
  d["eigen_simd"] = Eigen::SimdInstructionSetsInUse();
  d["eigen_version"] = std::to_string(EIGEN_WORLD_VERSION) + "." +
                       std::to_string(EIGEN_MAJOR_VERSION) + "." +
                       std::to_string(EIGEN_MINOR_VERSION);
  d["openmp"] = std::to_string(_OPENMP);
  d["openmp_version"] = RNNFAST_OPENMP_VERSION;
  d["float32_lanes"] = rnnfast::PanelShape<float>::PS;
  d["float64_lanes"] = rnnfast::PanelShape<double>::PS;
  d["tile_float32"] = std::to_string(rnnfast::PanelShape<float>::MR) + "x" +
                      std::to_string(rnnfast::PanelShape<float>::NR);
  d["tile_float64"] = std::to_string(rnnfast::PanelShape<double>::MR) + "x" +
                      std::to_string(rnnfast::PanelShape<double>::NR);
  d["l2_cache_bytes"] = rnnfast::l2_cache_bytes();  // one core's, as the thread plan sees it
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "rnnfast C++ kernels (private; use the rnnfast package)";
  m.def(
      "forward",
      [](const py::array& u, py::object W_in, py::object W_rec, py::object b, py::object h0,
         py::object h, py::object x, int activation, int num_threads, int schedule,
         py::object lengths) {
        dispatch_check(u);
        if (py::isinstance<py::array_t<float>>(u))
          forward<float>(u, W_in, W_rec, b, h0, h, x, lengths, activation, num_threads, schedule);
        else
          forward<double>(u, W_in, W_rec, b, h0, h, x, lengths, activation, num_threads, schedule);
      },
      py::arg("u").noconvert(), py::arg("W_in"), py::arg("W_rec"), py::arg("b"), py::arg("h0"),
      py::arg("h"), py::arg("x"), py::arg("activation"), py::arg("num_threads"),
      py::arg("schedule"), py::arg("lengths") = py::none());
  m.def(
      "backward",
      [](const py::array& u, py::object W_in, py::object W_rec, py::object h0, py::object h,
         py::object dh, py::object dh_last, py::object dx, py::object dW_in, py::object dW_rec,
         py::object db, py::object dh0, py::object du, py::object omega_grad, double omega_bound,
         py::object dh_norm, int activation, int num_threads, int schedule,
         py::object lengths, double omega_alpha) {
        dispatch_check(u);
        if (py::isinstance<py::array_t<float>>(u))
          return backward<float>(u, W_in, W_rec, h0, h, dh, dh_last, dx, dW_in, dW_rec, db, dh0,
                                 du, omega_grad, omega_bound, dh_norm, lengths, activation,
                                 num_threads, schedule, omega_alpha);
        return backward<double>(u, W_in, W_rec, h0, h, dh, dh_last, dx, dW_in, dW_rec, db, dh0,
                                du, omega_grad, omega_bound, dh_norm, lengths, activation,
                                num_threads, schedule, omega_alpha);
      },
      py::arg("u").noconvert(), py::arg("W_in"), py::arg("W_rec"), py::arg("h0"), py::arg("h"),
      py::arg("dh"), py::arg("dh_last"), py::arg("dx"), py::arg("dW_in"), py::arg("dW_rec"),
      py::arg("db"), py::arg("dh0"), py::arg("du"), py::arg("omega_grad"),
      py::arg("omega_bound"), py::arg("dh_norm"), py::arg("activation"),
      py::arg("num_threads"), py::arg("schedule"), py::arg("lengths") = py::none(),
      py::arg("omega_alpha") = 0.0);
  m.def(
      "linear",
      [](const py::array& X, py::object W, py::object b, int num_threads) {
        if (py::isinstance<py::array_t<float>>(X)) return linear<float>(X, W, b, num_threads);
        if (py::isinstance<py::array_t<double>>(X)) return linear<double>(X, W, b, num_threads);
        throw py::type_error("X: expected float32 or float64");
      },
      py::arg("X").noconvert(), py::arg("W"), py::arg("b"), py::arg("num_threads"),
      "Z (N, O) = X (N, K) · Wᵀ + b, W (O, K), b (O) or None");
  m.def(
      "linear_grads",
      [](const py::array& dZ, py::object X, py::object W, int num_threads) {
        if (py::isinstance<py::array_t<float>>(dZ))
          return linear_grads<float>(dZ, X, W, num_threads);
        if (py::isinstance<py::array_t<double>>(dZ))
          return linear_grads<double>(dZ, X, W, num_threads);
        throw py::type_error("dZ: expected float32 or float64");
      },
      py::arg("dZ").noconvert(), py::arg("X"), py::arg("W"), py::arg("num_threads"),
      "(dX (N, K), dW (O, K)) = (dZ · W, dZᵀ · X) for dZ (N, O), X (N, K), W (O, K)");
  m.def(
      "readout_loss",
      [](int kind, const py::array& Z, py::object targets, py::object w, double scale, bool grad,
         int num_threads) {
        if (py::isinstance<py::array_t<float>>(Z))
          return readout_loss<float>(kind, Z, targets, w, scale, grad, num_threads);
        if (py::isinstance<py::array_t<double>>(Z))
          return readout_loss<double>(kind, Z, targets, w, scale, grad, num_threads);
        throw py::type_error("Z: expected float32 or float64");
      },
      py::arg("kind"), py::arg("Z").noconvert(), py::arg("targets"), py::arg("w"),
      py::arg("scale"), py::arg("grad"), py::arg("num_threads"),
      "(Σ w_n loss_n, P (N, O) or None, dZ (N, O) or None): the readout's loss of scores Z");
  m.def("squared_norms", &squared_norms, py::arg("arrays"),
        "[Σ x² of each array] in float64, for C-contiguous float32/float64 arrays");
  m.def("sgd_step", &sgd_step, py::arg("params"), py::arg("grads"), py::arg("lr"),
        py::arg("num_threads"),
        "p -= lr * g in place for each (parameter, gradient) pair, rounded as NumPy rounds it");
  m.def("empty", &empty_aligned, py::arg("shape"), py::arg("dtype"),
        "Uninitialised C-contiguous array whose data start on a 64-byte boundary");
  m.def(
      "empty_many",
      [](const std::vector<std::vector<py::ssize_t>>& shapes, const py::dtype& dtype) {
        py::list out;
        for (const auto& shape : shapes) out.append(empty_aligned(shape, dtype));
        return out;
      },
      py::arg("shapes"), py::arg("dtype"),
      "empty() for several shapes in one call (a backward call's six outputs)");
  m.def("release_memory", []() { return OutputPool::instance().release(); },
        "Free the memory kept from dropped output arrays; returns the bytes released");
  m.def("max_threads", []() { return omp_get_max_threads(); },
        "OpenMP's default team size (OMP_NUM_THREADS or the number of cores)");
  m.def("thread_cap", &thread_cap,
        "The most threads a call gets: max(processors, OpenMP's default team), at most "
        "OMP_THREAD_LIMIT; 1 in a fork() child of a process that ran several threads");
  m.def("forked_after_team", []() { return forked_after_team.load(); },
        "Whether this process is a fork() child of one that ran a team of several threads");
  pthread_atfork(nullptr, nullptr, &child_after_fork);
  m.def("build_info", &build_info);
  m.def(
      "plan",
      [](Index T, Index B, Index I, Index H, int itemsize, int num_threads) {
        rnnfast::Options opt;
        opt.threads = clamp_threads(num_threads);
        const rnnfast::Plan p = rnnfast::make_plan({T, B, I, H}, opt, std::size_t(itemsize));
        static const char* names[] = {"auto", "serial", "batch", "hidden"};
        return py::make_tuple(p.threads, names[int(p.schedule)]);
      },
      py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("itemsize"),
      py::arg("num_threads"),
      "(threads, split) a call of this shape would run with: 'serial', 'batch' or 'hidden'");
}
