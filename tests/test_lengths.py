"""Variable sequence lengths (``lengths=``) in forward, backward and final_state: every
output equals running each sequence alone at its own length; all lengths equal to T is
bit-identical to no lengths; wrong lengths are clear errors."""

import numpy as np
import pytest

import rnnfast
from rnnfast import core

ACTS = ("tanh", "sigmoid", "relu", "linear")
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def params(T, B, I, H, dtype, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    f = lambda *s: (rng.standard_normal(s) * scale).astype(dtype)  # noqa: E731
    return dict(u=f(T, B, I), W_in=f(H, I), W_rec=(f(H, H) * (2 / np.sqrt(H))).astype(dtype), b=f(H),
                h0=f(B, H), dh=f(T, B, H), dh_last=f(B, H))


def run_alone(p, lengths, activation, use_h0, use_dh, use_dh_last, omega, **kw):
    """Every output of a ragged batch, from one call per sequence at its own length."""
    T, B, I = p["u"].shape
    H = p["W_rec"].shape[0]
    out = dict(h=np.zeros((T, B, H)), dx=np.zeros((T, B, H)), u=np.zeros((T, B, I)),
               h0=np.zeros((B, H)), h_last=np.zeros((B, H)), dh_norm=np.zeros((T, B)),
               W_in=0.0, W_rec=0.0, b=0.0, omega_sum=0.0, omega_pairs=0, omega_grad=0.0)
    for j, n in enumerate(lengths):
        s = slice(j, j + 1)
        f = rnnfast.forward(p["u"][:n, s], p["W_in"], p["W_rec"], p["b"],
                            p["h0"][s] if use_h0 else None, activation=activation, **kw)
        g = rnnfast.backward(f, p["dh"][:n, s] if use_dh else None,
                             dh_last=p["dh_last"][s] if use_dh_last else None, omega=omega,
                             profile=True, **kw)
        out["h"][:n, j] = f.h[:, 0]
        out["h_last"][j] = f.h_last[0]
        out["dx"][:n, j] = g.dx[:, 0]
        out["u"][:n, j] = g.u[:, 0]
        out["h0"][j] = g.h0[0]
        out["dh_norm"][:n, j] = g.dh_norm[:, 0]
        for k in ("W_in", "W_rec", "b"):
            out[k] = out[k] + getattr(g, k).astype(np.float64)
        if omega:
            out["omega_sum"] += g.omega * g.omega_pairs
            out["omega_pairs"] += g.omega_pairs
            out["omega_grad"] = out["omega_grad"] + g.omega_grad.astype(np.float64) * g.omega_pairs
    if omega and out["omega_pairs"]:
        out["omega"] = out["omega_sum"] / out["omega_pairs"]
        out["omega_grad"] = out["omega_grad"] / out["omega_pairs"]
    return out


def check_against_alone(p, lengths, activation, dtype, use_h0=True, use_dh=True,
                        use_dh_last=True, omega=True, **kw):
    lengths = np.asarray(lengths)
    tol = TOL[dtype]
    f = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"] if use_h0 else None,
                        activation=activation, lengths=lengths, **kw)
    g = rnnfast.backward(f, p["dh"] if use_dh else None,
                         dh_last=p["dh_last"] if use_dh_last else None, omega=omega,
                         profile=True, **kw)
    ref = run_alone(p, lengths, activation, use_h0, use_dh, use_dh_last, omega, **kw)
    T, B, _ = p["u"].shape
    pad = np.arange(T)[:, None] >= lengths[None, :]  # (T, B) padded steps
    assert np.all(f.h[pad] == 0) and np.all(g.dx[pad] == 0) and np.all(g.u[pad] == 0)
    assert np.all(g.dh_norm[pad] == 0)
    np.testing.assert_allclose(f.h, ref["h"], **tol)
    np.testing.assert_allclose(f.h_last, ref["h_last"], **tol)
    for k in ("dx", "u", "h0", "dh_norm"):
        np.testing.assert_allclose(getattr(g, k), ref[k], **tol, err_msg=k)
    scale = {k: max(1.0, np.abs(ref[k]).max(initial=0.0)) for k in ("W_in", "W_rec", "b")}
    for k in ("W_in", "W_rec", "b"):
        np.testing.assert_allclose(getattr(g, k), ref[k], rtol=tol["rtol"],
                                   atol=tol["atol"] * 10 * scale[k], err_msg=k)
    assert g.dx.dtype == dtype and g.W_rec.dtype == dtype
    if omega:
        assert g.omega_pairs == ref["omega_pairs"]
        np.testing.assert_allclose(g.omega, ref["omega"], rtol=tol["rtol"] * 10)
        np.testing.assert_allclose(g.omega_grad, ref["omega_grad"], rtol=tol["rtol"] * 10,
                                   atol=tol["atol"] * 10 * max(1.0, np.abs(ref["omega_grad"]).max()))
    return f, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTS)
def test_matches_each_sequence_alone(dtype, activation):
    p = params(9, 6, 3, 5, dtype)
    check_against_alone(p, [9, 7, 7, 4, 2, 1], activation, dtype)  # PackedSequence order
    check_against_alone(p, [3, 9, 1, 6, 9, 2], activation, dtype)  # any order


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_h0", [False, True])
@pytest.mark.parametrize("upstream", ["dh", "dh_last", "both"])
def test_options(dtype, use_h0, upstream):
    p = params(8, 5, 4, 6, dtype, seed=1)
    for omega in (False, True):
        check_against_alone(p, [5, 8, 2, 8, 1], "tanh", dtype, use_h0=use_h0,
                            use_dh=upstream != "dh_last", use_dh_last=upstream != "dh",
                            omega=omega)


@pytest.mark.parametrize("schedule", ["serial", "batch", "hidden"])
@pytest.mark.parametrize("shape", [(10, 7, 3, 20), (6, 2, 3, 9), (12, 9, 5, 40), (70, 9, 5, 50),
                                   (40, 5, 3, 200)])
def test_thread_splits(schedule, shape):
    """Two threads, each split (batch rows balanced by length, hidden columns), the single-row
    packing (B ≤ threads) and Ω's stored-v path (2H > T·B); the weight gradients over the valid
    rows gathered in several chunks of rows (70, 9, 5, 50) or packed ([h | u] too wide to be
    read in place: (40, 5, 3, 200))."""
    T, B, I, H = shape
    p = params(T, B, I, H, np.float64, seed=2)
    lengths = np.random.default_rng(3).integers(1, T + 1, size=B)
    check_against_alone(p, lengths, "tanh", np.float64, num_threads=2, _schedule=schedule)


def test_streamed_weights_path():
    """H large enough that W_rec streams from memory: the input products over all (valid)
    rows run before/after the sweep."""
    p = params(4, 3, 5, 1100, np.float32, seed=4, scale=0.05)
    check_against_alone(p, [4, 1, 3], "tanh", np.float32, num_threads=2, omega=False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_edge_shapes(dtype):
    check_against_alone(params(1, 3, 2, 4, dtype), [1, 1, 1], "tanh", dtype)  # T = 1
    check_against_alone(params(6, 1, 2, 4, dtype), [4], "sigmoid", dtype)  # B = 1
    check_against_alone(params(6, 4, 0, 4, dtype), [2, 6, 1, 3], "tanh", dtype)  # I = 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_all_lengths_T_is_bit_identical(dtype, threads):
    p = params(7, 5, 3, 6, dtype, seed=5)
    args = (p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
    f0 = rnnfast.forward(*args, keep_x=True, num_threads=threads)
    f1 = rnnfast.forward(*args, keep_x=True, num_threads=threads, lengths=[7] * 5)
    assert np.array_equal(f0.h, f1.h) and np.array_equal(f0.x, f1.x)
    assert np.array_equal(f0.h_last, f1.h_last)
    kw = dict(dh_last=p["dh_last"], omega=True, profile=True, num_threads=threads)
    g0 = rnnfast.backward(f0, p["dh"], **kw)
    g1 = rnnfast.backward(f1, p["dh"], **kw)
    for k in ("W_in", "W_rec", "b", "h0", "u", "dx", "omega_grad", "dh_norm"):
        assert np.array_equal(getattr(g0, k), getattr(g1, k)), k
    assert g0.omega == g1.omega


def test_keep_x_and_workspace():
    p = params(6, 4, 2, 5, np.float64, seed=6)
    lengths = np.array([2, 6, 3, 6])
    ws = rnnfast.Workspace()
    f = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], keep_x=True, lengths=lengths,
                        workspace=ws)
    pad = np.arange(6)[:, None] >= lengths[None, :]
    assert np.all(f.x[pad] == 0)
    np.testing.assert_allclose(np.tanh(f.x), f.h, rtol=1e-14)
    assert np.array_equal(f.lengths, lengths)
    g = rnnfast.backward(f, p["dh"], workspace=ws, lengths=lengths)  # the same lengths: fine
    g2 = rnnfast.backward(rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"],
                                          lengths=lengths), p["dh"])
    for k in ("W_in", "W_rec", "b", "h0", "u", "dx"):
        np.testing.assert_allclose(getattr(g, k), getattr(g2, k), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_finite_differences(activation):
    """A scalar loss of a ragged batch (every step's states and the last states) against
    central differences, for W_rec, W_in, b, h0 and u."""
    T, B, I, H = 6, 4, 3, 5
    p = params(T, B, I, H, np.float64, seed=7)
    lengths = np.array([3, 6, 1, 4])
    c = np.random.default_rng(8).standard_normal((T, B, H))
    c2 = np.random.default_rng(9).standard_normal((B, H))

    def loss(q):
        f = rnnfast.forward(q["u"], q["W_in"], q["W_rec"], q["b"], q["h0"],
                            activation=activation, lengths=lengths)
        return float((c * f.h).sum() + (c2 * f.h_last).sum()), f

    _, f = loss(p)
    g = rnnfast.backward(f, c, dh_last=c2)
    grads = dict(W_rec=g.W_rec, W_in=g.W_in, b=g.b, h0=g.h0, u=g.u)
    eps = 1e-6
    rng = np.random.default_rng(10)
    for k, gk in grads.items():
        for _ in range(6):
            idx = tuple(rng.integers(0, n) for n in p[k].shape)
            q = {kk: v.copy() for kk, v in p.items()}
            q[k][idx] += eps
            lp, _ = loss(q)
            q[k][idx] -= 2 * eps
            lm, _ = loss(q)
            np.testing.assert_allclose(gk[idx], (lp - lm) / (2 * eps), rtol=1e-5, atol=1e-8,
                                       err_msg=f"{k}{idx}")


@pytest.mark.parametrize("chunk", [1 << 20, 8])
def test_final_state(chunk):
    p = params(9, 5, 3, 4, np.float64, seed=11)
    lengths = [9, 2, 5, 1, 7]
    f = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], lengths=lengths)
    h = rnnfast.final_state(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], lengths=lengths,
                            chunk_elements=chunk)
    np.testing.assert_allclose(h, f.h_last, rtol=1e-13, atol=1e-15)
    h = rnnfast.final_state(p["u"], p["W_in"], p["W_rec"], p["b"], lengths=lengths,
                            chunk_elements=chunk)
    f = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], lengths=lengths)
    np.testing.assert_allclose(h, f.h_last, rtol=1e-13, atol=1e-15)


def test_work_is_proportional_to_valid_steps():
    """Padded rows are never computed: their outputs stay exactly 0 even when computing them
    would give NaN (a NaN input at a padded step cannot reach any output)."""
    p = params(6, 4, 3, 5, np.float64, seed=12)
    lengths = np.array([6, 4, 2, 1])
    u = p["u"].copy()
    u[np.arange(6)[:, None] >= lengths[None, :]] = np.nan
    dh = p["dh"].copy()
    dh[np.arange(6)[:, None] >= lengths[None, :]] = np.nan
    f = rnnfast.forward(u, p["W_in"], p["W_rec"], p["b"], lengths=lengths)
    g = rnnfast.backward(f, dh, omega=True, profile=True)
    for a in (f.h, g.dx, g.u, g.W_rec, g.W_in, g.b, g.h0, g.omega_grad, g.dh_norm):
        assert np.all(np.isfinite(a))


def test_bad_lengths():
    p = params(5, 3, 2, 4, np.float64)
    args = (p["u"], p["W_in"], p["W_rec"], p["b"])
    with pytest.raises(ValueError, match="lengths"):
        rnnfast.forward(*args, lengths=[5, 5])  # shape
    with pytest.raises(ValueError, match="lengths"):
        rnnfast.forward(*args, lengths=[[5, 5, 5]])
    with pytest.raises(TypeError, match="lengths"):
        rnnfast.forward(*args, lengths=[5.0, 5.0, 5.0])  # dtype
    with pytest.raises(TypeError, match="lengths"):
        rnnfast.forward(*args, lengths=np.array([True, True, True]))
    with pytest.raises(ValueError, match="lengths"):
        rnnfast.forward(*args, lengths=[5, 0, 3])  # empty sequence
    with pytest.raises(ValueError, match="lengths"):
        rnnfast.forward(*args, lengths=[6, 1, 3])  # > T
    with pytest.raises(ValueError, match="lengths"):
        rnnfast.final_state(*args, lengths=[6, 1, 3])
    f = rnnfast.forward(*args, lengths=[5, 2, 3])
    with pytest.raises(ValueError, match="lengths"):
        rnnfast.backward(f, p["dh"], lengths=[5, 3, 3])  # not fwd's
    with pytest.raises(ValueError, match="lengths"):
        rnnfast.backward(rnnfast.forward(*args), p["dh"], lengths=[5, 5, 5])
    # the kernels' own checks (unsorted, range) behind the public API
    h = core._empty((5, 3, 4), np.dtype(np.float64))
    with pytest.raises(ValueError, match="non-increasing"):
        core._core.forward(p["u"], p["W_in"], p["W_rec"], p["b"], None, h, None, 0, 1, 0,
                           np.array([2, 5, 3]))
    with pytest.raises(ValueError, match="lengths"):
        core._core.forward(p["u"], p["W_in"], p["W_rec"], p["b"], None, h, None, 0, 1, 0,
                           np.array([5, 3, 0]))
    with pytest.raises(TypeError, match="lengths"):
        core._core.forward(p["u"], p["W_in"], p["W_rec"], p["b"], None, h, None, 0, 1, 0,
                           np.array([5, 3, 1], np.int32))


@pytest.mark.parametrize("threads", [1, 2])
def test_without_input_grad(threads):
    p = params(7, 5, 3, 6, np.float32, seed=13)
    lengths = [2, 7, 3, 1, 7]
    f = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], lengths=lengths,
                        num_threads=threads)
    g0 = rnnfast.backward(f, p["dh"], omega=True, num_threads=threads)
    g1 = rnnfast.backward(f, p["dh"], omega=True, input_grad=False, num_threads=threads)
    assert g1.u is None
    for k in ("W_in", "W_rec", "b", "h0", "dx", "omega_grad"):
        assert np.array_equal(getattr(g0, k), getattr(g1, k)), k


@pytest.mark.parametrize("lengths", [None, [5, 5, 3, 1], [2, 5, 1, 4]])
def test_rebuilt_forward_result_gives_the_same_backward(lengths):
    rng = np.random.default_rng(3)
    T, B, I, H = 5, 4, 3, 6
    u = rng.standard_normal((T, B, I))
    W_in, W_rec = rng.standard_normal((H, I)) * 0.5, rng.standard_normal((H, H)) * 0.4
    b, h0 = rng.standard_normal(H), rng.standard_normal((B, H))
    dh = rng.standard_normal((T, B, H))
    fwd = rnnfast.forward(u, W_in, W_rec, b, h0, activation="tanh", lengths=lengths)
    again = rnnfast.ForwardResult.rebuild(fwd.h, u, W_in, W_rec, b, h0, activation="tanh",
                                          lengths=lengths)
    g1 = rnnfast.backward(fwd, dh, omega=True)
    g2 = rnnfast.backward(again, dh, omega=True)
    for name in ("W_in", "W_rec", "b", "h0", "u", "dx"):
        assert np.array_equal(getattr(g1, name), getattr(g2, name)), name
    assert g1.omega == g2.omega
    with pytest.raises(ValueError, match="lengths"):
        rnnfast.ForwardResult.rebuild(fwd.h, u, W_in, W_rec, b, h0, lengths=[0, 1, 1, 1])
