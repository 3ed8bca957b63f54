"""RNNModel through the real core: gradients by finite differences, Ω value and
gradient, save/load, bad input."""

import os

import numpy as np
import pytest

import rnnfast
import rnnfast.fileio
from rnnfast.nn import losses as L
from rnnfast.fileio import CheckpointError
from rnnfast.nn.model import RNNModel

T, B, I, H, O = 5, 3, 2, 4, 3


def batch(loss, at, mask_mode="none", seed=0, T=T, B=B):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(T, B, I))
    rows = (B,) if at == "last" else (T, B)
    if loss == "softmax_ce":
        t = rng.integers(0, O, size=rows)
    elif loss == "linear_mse":
        t = rng.normal(size=rows + (O,))
    else:
        t = (rng.random(size=rows + (O,)) > 0.5).astype(float)
    mask = None
    if mask_mode == "bool":
        mask = rng.random((T, B)) > 0.3
        mask[-1] = True
    elif mask_mode == "float":
        mask = rng.random((T, B))
    return u, t, mask


def model(loss="softmax_ce", at="last", activation="tanh", h0="zeros", seed=1, dtype=np.float64,
          scale=0.6):
    m = RNNModel(I, H, O, init="basic_tanh", activation=activation, loss=loss, at=at, h0=h0,
                 rng=seed, dtype=dtype, init_kwargs={"scale": scale})
    rng = np.random.default_rng(seed + 100)
    m.params["b"][:] = 0.3 * rng.normal(size=H)
    m.params["b_out"][:] = 0.3 * rng.normal(size=O)
    if h0 == "learned":
        m.params["h0"][:] = 0.5 * rng.normal(size=H)
    return m


def fd_check(m, f, grads, eps=1e-6):
    for name, p in m.params.items():
        g = np.zeros_like(p)
        it = np.nditer(p, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            old = p[i]
            p[i] = old + eps
            fp = f()
            p[i] = old - eps
            fm = f()
            p[i] = old
            g[i] = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(grads[name], g, rtol=1e-6, atol=1e-9, err_msg=name)


CASES = ([(k, "last", "none") for k in L.LOSS_KINDS]
         + [(k, "all", mm) for k in L.LOSS_KINDS for mm in ("none", "bool", "float")])


@pytest.mark.parametrize("loss,at,mm", CASES)
def test_gradients_finite_differences(loss, at, mm):
    m = model(loss, at, h0="learned")
    u, t, mask = batch(loss, at, mm)
    r = m.loss_and_grad(u, t, mask)
    assert set(r.grads) == set(m.param_names)
    fd_check(m, lambda: m.evaluate(u, t, mask)[0], r.grads)


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "linear"])
def test_gradients_other_activations(activation):
    m = model("linear_mse", "all", activation=activation, scale=0.4)
    u, t, mask = batch("linear_mse", "all", "bool")
    r = m.loss_and_grad(u, t, mask)
    fd_check(m, lambda: m.evaluate(u, t, mask)[0], r.grads)


@pytest.mark.parametrize("normalize", ["sequence", "sum"])
def test_gradients_other_normalisations(normalize):
    m = RNNModel(I, H, O, init="basic_tanh", loss="sigmoid_bce", at="all", normalize=normalize,
                 rng=3, init_kwargs={"scale": 0.5})
    u, t, mask = batch("sigmoid_bce", "all", "bool")
    r = m.loss_and_grad(u, t, mask)
    fd_check(m, lambda: m.evaluate(u, t, mask)[0], r.grads)


def test_outputs_evaluate_and_loss_and_grad_agree():
    for at in ("last", "all"):
        m = model("softmax_ce", at)
        u, t, _ = batch("softmax_ce", at)
        r = m.loss_and_grad(u, t)
        loss, y = m.evaluate(u, t)
        assert loss == pytest.approx(r.loss, rel=1e-12)
        np.testing.assert_allclose(m.outputs(u), r.y, rtol=1e-12)
        np.testing.assert_allclose(y, r.y, rtol=1e-12)
        assert r.y.shape == ((B, O) if at == "last" else (T, B, O))
        np.testing.assert_allclose(r.h_last, m.forward(u).h[-1], rtol=1e-12)


def test_explicit_h0_carries_state():
    m = model("softmax_ce", "last")
    u, t, _ = batch("softmax_ce", "last", T=8)
    r1 = m.loss_and_grad(u[:3], t)
    np.testing.assert_allclose(m.outputs(u[3:], h0=r1.h_last), m.outputs(u), rtol=1e-12)


def test_float32_model():
    m64 = model("softmax_ce", "all")
    m32 = RNNModel(I, H, O, init="basic_tanh", loss="softmax_ce", at="all", dtype=np.float32,
                   params=m64.params)
    u, t, _ = batch("softmax_ce", "all")
    r64 = m64.loss_and_grad(u, t, omega=True)
    r32 = m32.loss_and_grad(u, t, omega=True)
    for k, g in r32.grads.items():
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r64.grads[k], rtol=1e-3, atol=1e-5)
    assert r32.loss == pytest.approx(r64.loss, rel=1e-5)
    assert r32.omega == pytest.approx(r64.omega, rel=1e-3)


# ----------------------------------------------------------------------- Ω
def test_omega_hand_checked_single_unit():
    # H = 1, tanh: v = δ_k (1 - h_k²) w, so r_k = ((1 - h_k²) w)² for every k = 1..T
    w, T1 = 0.8, 4
    params = {"W_in": np.array([[1.0]]), "W_rec": np.array([[w]]), "b": np.array([0.1]),
              "W_out": np.array([[1.5]]), "b_out": np.array([0.0])}
    m = RNNModel(1, 1, 1, loss="linear_mse", at="last", params=params)
    u = np.array([0.5, -0.3, 0.2, 0.7]).reshape(T1, 1, 1)
    h, hs = 0.0, []
    for k in range(T1):
        h = np.tanh(w * h + u[k, 0, 0] + 0.1)
        hs.append(h)
    hs = np.array(hs)
    expected = np.mean((((1 - hs ** 2) * w) ** 2 - 1) ** 2)
    r = m.loss_and_grad(u, np.array([[0.3]]), omega=True)
    assert r.omega == pytest.approx(expected, rel=1e-12)
    assert r.omega_pairs == T1


def test_omega_zero_recurrence_is_one():
    # W_rec = 0: only the last step has ∂E/∂h ≠ 0 (the others fall under the bound),
    # and its one-step backprop v = a·W_rec is 0, so r = 0 and Ω = (0 - 1)² = 1.
    m = model("softmax_ce", "last")
    m.params["W_rec"][:] = 0
    u, t, _ = batch("softmax_ce", "last")
    r = m.loss_and_grad(u, t, omega=True)
    assert r.omega == 1.0
    assert r.omega_pairs == B


def surrogate(W, dx, delta, bound=1e-20):
    """Ω with a_k = ∂E/∂x_k and δ_k = ∂E/∂h_k held fixed: mean over valid pairs of
    (‖a_k W‖² / ‖δ_k‖² − 1)²."""
    a = dx.reshape(-1, dx.shape[-1])
    d = delta.reshape(-1, delta.shape[-1])
    n = np.sum(d * d, axis=1)
    valid = n >= bound
    v = a[valid] @ W
    r = np.sum(v * v, axis=1) / n[valid]
    return np.sum((r - 1) ** 2) / valid.sum(), int(valid.sum())


@pytest.mark.parametrize("loss,at,mm,activation", [
    ("softmax_ce", "last", "none", "tanh"),
    ("linear_mse", "all", "bool", "tanh"),
    ("sigmoid_bce", "all", "none", "sigmoid"),
])
def test_omega_gradient_finite_differences_of_surrogate(loss, at, mm, activation):
    m = model(loss, at, activation=activation, scale=1.0)
    u, t, mask = batch(loss, at, mm)
    r = m.loss_and_grad(u, t, mask, omega=True)
    # recover a = ∂E/∂x and δ = ∂E/∂h (total) from the core
    p = m.params
    fwd = rnnfast.forward(u, p["W_in"], p["W_rec"], p["b"], activation=activation)
    lr = L.loss_and_grad(fwd.h, p["W_out"], p["b_out"], t, kind=loss, at=at, mask=mask)
    g = rnnfast.backward(fwd, lr.dh, dh_last=lr.dh_last)
    direct = np.zeros_like(fwd.h) if lr.dh is None else lr.dh.copy()
    if lr.dh_last is not None:
        direct[-1] += lr.dh_last
    delta = direct.copy()
    delta[:-1] += g.dx[1:] @ p["W_rec"]
    W = p["W_rec"].copy()
    value, pairs = surrogate(W, g.dx, delta)
    assert r.omega == pytest.approx(value, rel=1e-10)
    assert r.omega_pairs == pairs
    fd = np.zeros_like(W)
    eps = 1e-6
    for i in range(H):
        for j in range(H):
            Wp, Wm = W.copy(), W.copy()
            Wp[i, j] += eps
            Wm[i, j] -= eps
            fd[i, j] = (surrogate(Wp, g.dx, delta)[0] - surrogate(Wm, g.dx, delta)[0]) / (2 * eps)
    np.testing.assert_allclose(r.omega_grad, fd, rtol=1e-6, atol=1e-10)


def test_omega_off_changes_nothing():
    m = model("softmax_ce", "all")
    u, t, mask = batch("softmax_ce", "all", "bool")
    a = m.loss_and_grad(u, t, mask, num_threads=1)
    b = m.loss_and_grad(u, t, mask, omega=True, num_threads=1)
    assert a.omega is None and a.omega_grad is None
    assert b.omega is not None and b.omega_grad.shape == (H, H)
    assert a.loss == b.loss
    for k in a.grads:
        assert np.array_equal(a.grads[k], b.grads[k]), k


# --------------------------------------------------------------- save / load
def test_atomic_text_and_json_writers(tmp_path):
    import json

    from rnnfast.fileio import atomic_write_json, atomic_write_text

    path = tmp_path / "sub" / "a.json"  # the folder is created
    doc = {"x": np.float32(1.5), "nan": float("nan"), "inf": np.inf, "v": np.arange(3)}
    assert atomic_write_json(path, doc) == str(path)
    text = path.read_text()
    assert text.endswith("\n")
    assert json.loads(text) == {"x": 1.5, "nan": None, "inf": "inf", "v": [0, 1, 2]}
    assert atomic_write_text(path, "über\n") == str(path)  # replaces, UTF-8
    assert path.read_bytes() == "über\n".encode("utf-8")
    assert os.listdir(path.parent) == ["a.json"]
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~rnnfast.fileio._UMASK


def test_save_load_round_trip(tmp_path):
    m = model("sigmoid_bce", "all", h0="learned", dtype=np.float32)
    path = tmp_path / "m.npz"
    m.save(path)
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind
    # the usual mode of a new file, not the temporary file's private 0600
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~rnnfast.fileio._UMASK
    m2 = RNNModel.load(path)
    assert m2.config() == m.config()
    for k in m.params:
        assert m2.params[k].dtype == np.float32
        assert np.array_equal(m2.params[k], m.params[k])
    c = m.copy()
    c.params["W_rec"][0, 0] += 1
    assert c.params["W_rec"][0, 0] != m.params["W_rec"][0, 0]


def test_load_corrupt_truncated_and_wrong_files(tmp_path):
    m = model()
    good = tmp_path / "good.npz"
    m.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file at all" * 10)
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    for name in ("trunc.npz", "junk.npz", "flipped.npz"):
        with pytest.raises(CheckpointError, match="corrupt or truncated|header|does not fit"):
            RNNModel.load(tmp_path / name)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="not an rnnfast .npz archive"):
        RNNModel.load(tmp_path / "single.npy")
    with pytest.raises(CheckpointError, match="no rnnfast header"):
        RNNModel.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        RNNModel.load(tmp_path / "missing.npz")
    assert np.array_equal(RNNModel.load(good).params["W_rec"], m.params["W_rec"])


def test_load_inconsistent_parameters(tmp_path):
    import json

    m = model()
    arrays = dict(m.params)
    arrays["W_rec"] = np.zeros((H + 1, H + 1))
    meta = {"format": "rnnfast.RNNModel", "version": 1, "config": m.config()}
    np.savez(tmp_path / "bad.npz", __meta__=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(CheckpointError, match="W_rec"):
        RNNModel.load(tmp_path / "bad.npz")


def test_save_failure_keeps_previous_file(tmp_path, monkeypatch):
    m = model()
    path = tmp_path / "m.npz"
    m.save(path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    m.params["W_rec"][:] = 0
    with pytest.raises(OSError, match="disk full"):
        m.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


# ----------------------------------------------------------------- bad input
def test_bad_inputs():
    m = model("softmax_ce", "last")
    u, t, _ = batch("softmax_ce", "last")
    with pytest.raises(ValueError, match=r"u must have shape \(T, B, 2\)"):
        m.loss_and_grad(u[..., :1], t)
    with pytest.raises(ValueError, match="targets"):
        m.loss_and_grad(u, t[:2])
    t_bad = t.copy()
    t_bad[0] = O
    with pytest.raises(ValueError, match="outside the valid range"):
        m.loss_and_grad(u, t_bad)
    ma = model("softmax_ce", "all")
    ua, ta, _ = batch("softmax_ce", "all")
    with pytest.raises(ValueError, match="mask must have shape"):
        ma.loss_and_grad(ua, ta, np.ones((T + 1, B), bool))
    with pytest.raises(ValueError, match="h0 must have shape"):
        m.loss_and_grad(u, t, h0=np.zeros((B, H + 1)))
    with pytest.raises(TypeError, match="u must be numeric"):
        m.loss_and_grad(u.astype(object), t)


def test_bad_constructor_options():
    with pytest.raises(ValueError, match="h0='random'"):
        RNNModel(2, 3, 4, h0="random")
    with pytest.raises(ValueError, match="activation 'gelu'"):
        RNNModel(2, 3, 4, activation="gelu")
    with pytest.raises(ValueError, match="loss kind"):
        RNNModel(2, 3, 4, loss="hinge")
    with pytest.raises(ValueError, match="init scheme"):
        RNNModel(2, 3, 4, init="glorot")
    with pytest.raises(TypeError, match="dtype"):
        RNNModel(2, 3, 4, dtype=np.float16)
    with pytest.raises(ValueError, match=r"'W_rec' must have shape \(3, 3\)"):
        RNNModel(2, 3, 4, params={"W_in": np.zeros((3, 2)), "W_rec": np.zeros((2, 2)),
                                  "b": np.zeros(3), "W_out": np.zeros((4, 3)), "b_out": np.zeros(4)})
    with pytest.raises(ValueError, match="missing"):
        RNNModel(2, 3, 4, params={"W_in": np.zeros((3, 2))})
