"""The kernels used as a careless or hostile caller would: huge thread counts, read-only and
aliased inputs, wrong broadcast views, garbage arguments, fork() after a threaded call,
Ctrl-C during a long call, calls that cannot fit in memory, many Python threads at once."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import rnnfast
from rnnfast import _core

from test_core import make, run


def _run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter: a crash or hang fails the test, not the test run."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # pragma: no cover - the failure being tested
        pytest.fail(f"the child did not finish within {timeout} s (hung): {e}")


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


# ------------------------------------------------------------------ thread counts
def test_huge_thread_counts_are_clamped_not_fatal():
    # Before: 10**6 threads crashed the OpenMP runtime (SIGSEGV) at H >= 256, 1000 aborted it.
    r = _run_python("""
        import numpy as np, rnnfast
        rng = np.random.default_rng(0)
        T, B, I, H = 4, 2, 3, 256
        u = rng.standard_normal((T, B, I)); W_in = rng.standard_normal((H, I))
        W_rec = rng.standard_normal((H, H)) / 16; b = np.zeros(H)
        cap = rnnfast.max_num_threads()
        ref = rnnfast.forward(u, W_in, W_rec, b, num_threads=cap)
        gref = rnnfast.backward(ref, np.ones((T, B, H)), num_threads=cap)
        for n in (1000, 10**6, 10**30):
            f = rnnfast.forward(u, W_in, W_rec, b, num_threads=n)
            g = rnnfast.backward(f, np.ones((T, B, H)), num_threads=n)
            assert f.num_threads == cap, (n, f.num_threads)
            assert np.array_equal(f.h, ref.h) and np.array_equal(g.W_rec, gref.W_rec)
        rnnfast.set_num_threads(10**6)
        assert rnnfast.get_num_threads() == cap
        print("ok")
    """)
    assert r.returncode == 0 and "ok" in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])


def test_private_core_clamps_thread_counts():
    p, dh = make((4, 2, 3, 256))
    h = np.empty((4, 2, 256))
    _core.forward(p["u"], p["W_in"], p["W_rec"], p["b"], None, h, None, 0, 2**31 - 1, 3)
    ref = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], num_threads=1)
    np.testing.assert_allclose(h, ref.h, rtol=1e-12)


def test_max_num_threads_rule():
    cap = rnnfast.max_num_threads()
    assert cap >= 1
    assert cap >= min(len(os.sched_getaffinity(0)), _core.max_threads())
    assert rnnfast.get_num_threads() <= cap


# ------------------------------------------------------------------ read-only inputs
def _read_only_variants(a, tmp_path, name):
    path = tmp_path / f"{name}.npy"
    np.save(path, a)
    mm = np.load(path, mmap_mode="r")
    fb = np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape)
    ro = a.copy()
    ro.setflags(write=False)
    return {"mmap": mm, "frombuffer": fb, "setflags": ro}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["mmap", "frombuffer", "setflags"])
def test_read_only_inputs_are_accepted_without_copy(tmp_path, dtype, kind):
    # Before: "array is not writeable", with no argument named.
    p, dh = make((5, 3, 4, 20), dtype)
    fwd0, g0 = run(p, dh, "tanh")
    q = {k: _read_only_variants(v, tmp_path, k)[kind] for k, v in p.items()}
    dh_ro = _read_only_variants(dh, tmp_path, "dh")[kind]
    assert not any(v.flags.writeable for v in q.values())
    fwd, g = run(q, dh_ro, "tanh")
    for k in ("u", "W_in", "W_rec", "b"):
        assert np.shares_memory(getattr(fwd, k), q[k]), f"{k} was copied"
    assert np.shares_memory(fwd.h0, q["h0"])
    assert _same(fwd.h, fwd0.h) and _same(fwd.x, fwd0.x)
    for k in ("W_in", "W_rec", "b", "h0", "u", "dx", "omega_grad", "dh_norm"):
        assert _same(getattr(g, k), getattr(g0, k)), k
    assert g.omega == g0.omega
    for out in (fwd.h, fwd.x, g.W_rec, g.u, g.dx):
        assert out.flags.writeable


def test_misaligned_inputs_are_copied_and_give_the_same_answer():
    p, dh = make((4, 2, 3, 9))
    raw = bytearray(p["W_rec"].nbytes + 1)
    W_rec = np.frombuffer(raw, dtype=np.float64, offset=1, count=81).reshape(9, 9)
    W_rec[...] = p["W_rec"]
    assert not W_rec.flags.aligned
    ref = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
    fwd = rnnfast.forward(p["u"], p["W_in"], W_rec, p["b"], p["h0"])
    assert _same(fwd.h, ref.h)
    h = np.empty((4, 2, 9))
    with pytest.raises(ValueError, match="W_rec: expected an array aligned"):
        _core.forward(p["u"], p["W_in"], W_rec, p["b"], None, h, None, 0, 1, 0)


def test_private_core_refuses_read_only_outputs():
    p, _ = make((3, 2, 4, 5))
    h = np.empty((3, 2, 5))
    h.setflags(write=False)
    with pytest.raises(ValueError, match="h: expected a writable array"):
        _core.forward(p["u"], p["W_in"], p["W_rec"], p["b"], None, h, None, 0, 1, 0)


# ------------------------------------------------------------------ inputs aliasing outputs
@pytest.mark.parametrize("shape,dtype", [((1, 3, 2, 7), np.float64), ((1, 1, 2, 40), np.float32),
                                         ((3, 2, 4, 800), np.float64),
                                         ((2, 5, 3, 730), np.float64)])
def test_h_last_of_a_workspace_call_as_h0_of_the_next(shape, dtype):
    # Before: h0 = f1.h_last lies in the workspace's h, which the next call writes while it
    # still reads h0 (T = 1; and at H = 800 float64 the input product over all steps first).
    p, dh = make(shape, dtype)
    ws = rnnfast.Workspace()
    f1 = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], keep_x=True, workspace=ws)
    h0 = f1.h_last
    expected = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], h0.copy(), keep_x=True)
    g_expected = rnnfast.backward(expected, dh)
    f2 = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], h0, keep_x=True, workspace=ws)
    assert np.shares_memory(f2.h, f1.h)  # the workspace reused its memory
    assert _same(f2.h, expected.h) and _same(f2.x, expected.x)
    g = rnnfast.backward(f2, dh, workspace=ws)
    for k in ("W_in", "W_rec", "b", "h0", "u", "dx"):
        assert _same(getattr(g, k), getattr(g_expected, k)), k


def test_gradient_of_a_workspace_call_as_dh_of_the_next():
    p, dh = make((4, 3, 2, 6))
    ws = rnnfast.Workspace()
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
    g1 = rnnfast.backward(fwd, dh, workspace=ws)
    dh2 = g1.dx  # the workspace's dx, which the next backward writes during its sweep
    expected = rnnfast.backward(fwd, dh2.copy(), dh_last=g1.h0.copy())
    g2 = rnnfast.backward(fwd, dh2, dh_last=g1.h0, workspace=ws)
    assert np.shares_memory(g2.dx, dh2)
    for k in ("W_in", "W_rec", "b", "h0", "u", "dx"):
        assert _same(getattr(g2, k), getattr(expected, k)), k


def test_model_loss_and_grad_with_a_carried_workspace_state():
    from rnnfast.nn.model import RNNModel
    rng = np.random.default_rng(3)
    for H, T in ((8, 1), (800, 3)):
        model = RNNModel(4, H, 5, init="basic_tanh", loss="softmax_ce", at="last",
                         rng=np.random.default_rng(1))
        u = rng.standard_normal((T, 2, 4))
        y = rng.integers(0, 5, 2)
        ws = rnnfast.Workspace()
        first = model.loss_and_grad(u, y, workspace=ws)
        h0 = first.h_last
        expected = model.loss_and_grad(u, y, h0=h0.copy())
        got = model.loss_and_grad(u, y, h0=h0, workspace=ws)
        assert got.loss == expected.loss
        for k in expected.grads:
            assert _same(got.grads[k], expected.grads[k]), (H, k)


def test_private_core_refuses_outputs_that_overlap():
    p, _ = make((3, 2, 4, 5))
    h = np.empty((3, 2, 5))
    with pytest.raises(ValueError, match="x: shares memory with another output"):
        _core.forward(p["u"], p["W_in"], p["W_rec"], p["b"], None, h, h, 0, 1, 0)


# ------------------------------------------------------------------ bad arguments
def test_wrong_shape_zero_stride_dh_is_refused_before_any_copy():
    # Before: np.ascontiguousarray copied the 32 GiB view before the shape was checked.
    p, _ = make((3, 2, 4, 5))
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"])
    dh = np.broadcast_to(np.float64(0), (1 << 12, 1 << 10, 1 << 10))  # 32 GiB if copied
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"dh: expected shape \(T, B, H\) of fwd = \(3, 2, 5\)"):
        rnnfast.backward(fwd, dh)
    with pytest.raises(ValueError, match=r"dh_last: expected shape \(B, H\)"):
        rnnfast.backward(fwd, dh_last=dh[0])
    assert time.perf_counter() - t < 1.0


def test_zero_stride_dh_of_the_right_shape_is_used():
    p, _ = make((3, 2, 4, 5))
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"])
    g = rnnfast.backward(fwd, np.broadcast_to(np.float64(0.5), (3, 2, 5)))
    assert _same(g.W_rec, rnnfast.backward(fwd, np.full((3, 2, 5), 0.5)).W_rec)


@pytest.mark.parametrize("garbage", [object(), "ws", {}, np.zeros(3)])
def test_garbage_workspace_is_a_type_error_naming_it(garbage):
    # Before: AttributeError from deep inside.
    p, dh = make((3, 2, 4, 5))
    with pytest.raises(TypeError, match="workspace: expected an rnnfast.Workspace"):
        rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], workspace=garbage)
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"])
    with pytest.raises(TypeError, match="workspace: expected an rnnfast.Workspace"):
        rnnfast.backward(fwd, dh, workspace=garbage)


@pytest.mark.parametrize("code", [-1, 4, 1000])
def test_private_core_refuses_out_of_range_codes(code):
    p, dh = make((3, 2, 4, 5))
    h = np.empty((3, 2, 5))
    with pytest.raises(ValueError, match="activation: expected a code in 0..3"):
        _core.forward(p["u"], p["W_in"], p["W_rec"], p["b"], None, h, None, code, 1, 0)
    with pytest.raises(ValueError, match="schedule: expected a code in 0..3"):
        _core.forward(p["u"], p["W_in"], p["W_rec"], p["b"], None, h, None, 0, 1, code)
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"])
    outs = [np.empty(s) for s in ((3, 2, 5), (5, 4), (5, 5), (5,), (2, 5))]
    with pytest.raises(ValueError, match="activation: expected a code in 0..3"):
        _core.backward(fwd.u, fwd.W_in, fwd.W_rec, None, fwd.h, dh, None, *outs, None, None,
                       1e-20, None, code, 1, 0)


# ------------------------------------------------------------------ memory guard
def test_a_call_that_cannot_fit_raises_memory_error_naming_the_size():
    H = 1024
    u = np.broadcast_to(np.float32(0), (1 << 16, 1 << 14, 1))  # 4 GiB if copied
    W_in, W_rec, b = np.zeros((H, 1), np.float32), np.zeros((H, H), np.float32), np.zeros(H, np.float32)
    t = time.perf_counter()
    with pytest.raises(MemoryError, match=r"forward: needs 4\.1e\+03 GiB \(\d+ bytes\)"):
        rnnfast.forward(u, W_in, W_rec, b)
    assert time.perf_counter() - t < 1.0  # refused before copying u


def test_backward_memory_guard():
    p, _ = make((2, 2, 3, 4))
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"])
    # a forward result of an impossible size (its h a zero-stride view): backward must refuse
    # before allocating (T, B, H) gradients
    big = np.broadcast_to(np.float64(0), (1 << 20, 1 << 14, 4))
    fwd.h = big
    fwd.u = np.broadcast_to(np.float64(0), (1 << 20, 1 << 14, 3))
    with pytest.raises(MemoryError, match=r"backward: needs .* GiB"):
        rnnfast.backward(fwd, dh_last=np.zeros((1 << 14, 4)))


def test_output_size_overflow_is_a_memory_error():
    # Before: the byte count wrapped around, giving a small block under a huge shape.
    with pytest.raises(MemoryError, match="overflows"):
        _core.empty([1 << 40, 1 << 40], np.dtype(np.float64))
    with pytest.raises(MemoryError, match="overflows"):
        _core.empty([1 << 31, 1 << 31, 8], np.dtype(np.float64))
    with pytest.raises(ValueError, match="shape: expected non-negative"):
        _core.empty([-1], np.dtype(np.float64))


# ------------------------------------------------------------------ fork
_FORK_CHILD = """
    import os, signal, sys, numpy as np, rnnfast
    rng = np.random.default_rng(0)
    T, B, I, H = 20, 4, 8, 300
    u = rng.standard_normal((T, B, I)); W_in = rng.standard_normal((H, I))
    W_rec = rng.standard_normal((H, H)) / np.sqrt(H); b = np.zeros(H)
    def call():
        return rnnfast.forward(u, W_in, W_rec, b, num_threads=2, _schedule="hidden").h
    ref = call()  # a team of two threads runs here first
    assert rnnfast.max_num_threads() >= 2
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork()")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two processors for a team")
def test_fork_after_a_threaded_call_does_not_hang():
    # Before: the child's first call waited forever inside libgomp for the parent's threads.
    r = _run_python(_FORK_CHILD + """
    pid = os.fork()
    if pid == 0:
        ok = np.allclose(call(), ref, rtol=1e-12) and rnnfast.max_num_threads() == 1
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert np.array_equal(call(), ref) and rnnfast.max_num_threads() >= 2  # the parent is unchanged
    print("ok")
    """, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork()")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two processors for a team")
def test_multiprocessing_fork_pool_after_a_threaded_call():
    r = _run_python(_FORK_CHILD + """
    import multiprocessing as mp
    def work(seed):
        return float(call().sum()), rnnfast.max_num_threads()
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map(work, range(4))
    assert all(abs(s - float(ref.sum())) < 1e-9 and n == 1 for s, n in got), got
    print("ok")
    """, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])


# ------------------------------------------------------------------ Ctrl-C
def _long_problem():
    # one kernel call of ~2-5 s on one core; ~100 MB of states
    T, B, I, H = 25_000, 1, 1, 1024
    rng = np.random.default_rng(0)
    return (rng.standard_normal((T, B, I)).astype(np.float32),
            rng.standard_normal((H, I)).astype(np.float32),
            (rng.standard_normal((H, H)) * 0.9 / np.sqrt(H)).astype(np.float32),
            np.zeros(H, np.float32))


def _interrupt_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals reach the main thread only")
@pytest.mark.parametrize("which", ["forward", "backward"])
def test_ctrl_c_stops_a_long_kernel_call_promptly(which):
    # Before: the signal was handled only when the whole call had returned.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        u, W_in, W_rec, b = _long_problem()
        dh_last = np.ones((1, W_rec.shape[0]), np.float32)

        def call(steps):
            if which == "forward":
                return rnnfast.forward(u[:steps], W_in, W_rec, b, num_threads=1)
            return rnnfast.backward(fwds[steps], dh_last=dh_last, num_threads=1)

        fwds = {}
        if which == "backward":
            fwds = {n: rnnfast.forward(u[:n], W_in, W_rec, b, num_threads=1)
                    for n in (len(u) // 10, len(u))}
        t0 = time.perf_counter()
        call(len(u) // 10)
        tenth = time.perf_counter() - t0  # a tenth of the call interrupted below
        timer = _interrupt_after(0.2)
        t0 = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            call(len(u))
        elapsed = time.perf_counter() - t0
        timer.join()
        assert elapsed < 0.2 + max(0.5, 2 * tenth), (elapsed, tenth)
        assert np.isfinite(rnnfast.forward(u[:3], W_in, W_rec, b).h).all()  # fine afterwards
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------ concurrency
def test_many_python_threads_give_the_serial_results():
    cases = []
    for i, shape in enumerate([(30, 8, 4, 40), (6, 3, 5, 300), (4, 1, 3, 130), (12, 10, 3, 40),
                               (3, 9, 4, 30), (5, 16, 2, 64)]):
        dtype = np.float32 if i % 2 else np.float64
        cases.append((make(shape, dtype, seed=i), ("tanh", "relu", "sigmoid")[i % 3]))
    expected = [run(p, dh, act, num_threads=1) for (p, dh), act in cases]
    errors = []
    n_threads = 8

    def work(k):
        try:
            ws = rnnfast.Workspace()
            for rep in range(6):
                i = (k + rep) % len(cases)
                (p, dh), act = cases[i]
                nt = 1 + (k + rep) % 2
                fwd, g = run(p, dh, act, num_threads=nt, workspace=ws if rep % 2 else None)
                f0, g0 = expected[i]
                # one thread is bit-exact; two may differ in rounding only
                tol = 0 if nt == 1 else (1e-5 if p["u"].dtype == np.float32 else 1e-12)
                for a, e in ((fwd.h, f0.h), (g.W_rec, g0.W_rec), (g.u, g0.u), (g.h0, g0.h0)):
                    np.testing.assert_allclose(a, e, rtol=tol, atol=tol)
        except Exception as e:  # reported below
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors[:3]
