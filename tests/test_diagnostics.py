"""Tests of rnnfast.diagnostics (gradient-flow profile, temporal contributions, Ω ratios,
spectra) and of the gradient-flow figures in rnnfast.plots / ``rnnfast figures``."""

import json
import math
import struct

import numpy as np
import pytest

from rnnfast.analysis import diagnostics as D
from rnnfast.nn import losses
from rnnfast.nn.model import RNNModel

import reference


# --------------------------------------------------------------------------- helpers


def make_model(activation, loss, at, *, I=3, H=5, O=4, scale=0.6, seed=0, dtype=np.float64,
               W_rec=None):
    rng = np.random.default_rng(seed)
    params = {
        "W_in": rng.normal(0, 0.5, (H, I)),
        "W_rec": rng.normal(0, scale / math.sqrt(H), (H, H)) if W_rec is None else W_rec,
        "b": rng.normal(0, 0.1, H),
        "W_out": rng.normal(0, 0.5, (O, H)),
        "b_out": rng.normal(0, 0.1, O),
    }
    return RNNModel(I, H, O, activation=activation, loss=loss, at=at, dtype=dtype,
                    params=params)


def make_batch(model, T, B, *, seed=1, masked=False):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(T, B, model.n_in))
    lead = (B,) if model.at == "last" else (T, B)
    if model.loss == "softmax_ce":
        targets = rng.integers(0, model.n_out, size=lead)
    elif model.loss == "linear_mse":
        targets = rng.normal(size=lead + (model.n_out,))
    else:
        targets = (rng.random(lead + (model.n_out,)) < 0.5).astype(np.float64)
    mask = None
    if masked:
        mask = rng.random((T, B)) < 0.7
        mask[-1] = True
    return u, targets, mask


def sigma_prime_of_x(x, activation):
    if activation == "tanh":
        return 1.0 - np.tanh(x) ** 2
    if activation == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-x))
        return s * (1.0 - s)
    if activation == "relu":
        return (x > 0).astype(np.float64)
    return np.ones_like(x)


def explicit_bptt(model, u, targets, mask):
    """∂E/∂h_k by explicit Jacobian products, one example and one (t, k) pair at a time.

    δ_k = Σ_{t ≥ k} ∂⁺E/∂h_t · J_t J_{t-1} ... J_{k+1},  J_i = diag(σ'(x_i)) W_rec.
    Returns (delta (T, B, H), J (T, B, H, H), direct (T, B, H))."""
    p = {k: np.asarray(v, np.float64) for k, v in model.params.items()}
    h, x = reference.forward(u, p["W_in"], p["W_rec"], p["b"], None, model.activation)
    r = losses.loss_and_grad(h, p["W_out"], p["b_out"], targets, kind=model.loss, at=model.at,
                             mask=mask, normalize=model.normalize)
    T, B, H = h.shape
    direct = np.zeros((T, B, H))
    if r.dh is not None:
        direct[:] = r.dh
    else:
        direct[-1] = r.dh_last
    sp = sigma_prime_of_x(x, model.activation)
    J = sp[..., :, None] * p["W_rec"][None, None]  # J[t, b] = diag(σ'(x_t)) W_rec
    delta = np.zeros((T, B, H))
    for b in range(B):
        for k in range(T):
            M = np.eye(H)
            for t in range(k, T):
                if t > k:
                    M = J[t, b] @ M
                delta[k, b] += direct[t, b] @ M
    return delta, J, direct, sp


CASES = [
    ("tanh", "softmax_ce", "last", False),
    ("sigmoid", "linear_mse", "all", True),
    ("relu", "sigmoid_bce", "all", False),
    ("linear", "linear_mse", "last", False),
]


# --------------------------------------------------------------------------- profile


@pytest.mark.parametrize("activation,loss,at,masked", CASES)
def test_profile_matches_explicit_jacobian_products(activation, loss, at, masked):
    model = make_model(activation, loss, at, scale=1.3)
    u, targets, mask = make_batch(model, 7, 3, masked=masked)
    flow = D.gradient_flow(model, u, targets, mask, keep_vectors=True)
    delta, J, direct, sp = explicit_bptt(model, u, targets, mask)
    norm = np.linalg.norm
    np.testing.assert_allclose(flow.dh, delta, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(flow.dh_norm, norm(delta, axis=2), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(flow.dx_norm, norm(delta * sp, axis=2), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(flow.direct_norm, norm(direct, axis=2), rtol=1e-12, atol=1e-15)
    # Ω ratios: r_k = ‖δ_{k+1} J_{k+1}‖ / ‖δ_{k+1}‖ (array index k holds δ_{k+1}, J_{k+1})
    v = np.einsum("tbi,tbij->tbj", delta, J)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = norm(v, axis=2) / norm(delta, axis=2)
    ok = norm(delta, axis=2) > 0
    assert np.array_equal(np.isfinite(flow.ratio), ok)
    np.testing.assert_allclose(flow.ratio[ok], want[ok], rtol=1e-10)
    # x-space: ‖a_{k+1} W_rec diag σ'(x_k)‖ / ‖a_{k+1}‖, k ≥ 1
    a = delta * sp
    vx = (a[1:] @ model.params["W_rec"]) * sp[:-1]
    okx = norm(a[1:], axis=2) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        want_x = norm(vx, axis=2) / norm(a[1:], axis=2)
    assert np.all(np.isnan(flow.ratio_x[0]))
    np.testing.assert_allclose(flow.ratio_x[1:][okx], want_x[okx], rtol=1e-10)
    # Ω from the core = mean of (r² − 1)² over the valid pairs, as documented
    valid = flow.omega_valid
    assert flow.omega_pairs == int(valid.sum())
    if flow.omega_pairs:
        assert flow.omega == pytest.approx(np.mean((flow.ratio[valid] ** 2 - 1.0) ** 2),
                                           rel=1e-10)
    lg = model.loss_and_grad(u, targets, mask, omega=True)
    assert flow.loss == pytest.approx(lg.loss, rel=1e-12)
    assert flow.omega == pytest.approx(lg.omega, rel=1e-12)


def test_profile_against_finite_differences():
    """∂E/∂h_k by central differences: E depends on h_k only through the steps after k."""
    model = make_model("tanh", "linear_mse", "last", H=4, scale=1.1)
    u, targets, _ = make_batch(model, 9, 2)
    flow = D.gradient_flow(model, u, targets, keep_vectors=True)
    h = model.forward(u).h
    eps = 1e-6
    for k in (0, 3, 7):
        fd = np.zeros((2, 4))
        for b in range(2):
            for i in range(4):
                hp, hm = h[k].copy(), h[k].copy()
                hp[b, i] += eps
                hm[b, i] -= eps
                ep = model.evaluate(u[k + 1:], targets, h0=hp)[0]
                em = model.evaluate(u[k + 1:], targets, h0=hm)[0]
                fd[b, i] = (ep - em) / (2 * eps)
        np.testing.assert_allclose(flow.dh[k], fd, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("c", [0.8, -0.7, 1.15])
def test_linear_network_profile_is_c_power_k(c):
    H, T = 6, 40
    model = make_model("linear", "linear_mse", "last", H=H, W_rec=c * np.eye(H))
    u, targets, _ = make_batch(model, T, 3)
    flow = D.gradient_flow(model, u, targets)
    powers = np.abs(c) ** np.arange(T - 1, -1, -1)  # |c|^{T-k}, array index j = k - 1
    np.testing.assert_allclose(flow.dh_norm, flow.dh_norm[-1] * powers[:, None], rtol=1e-12)
    np.testing.assert_allclose(flow.relative(), np.broadcast_to(powers[:, None], (T, 3)),
                               rtol=1e-12)
    np.testing.assert_allclose(flow.ratio, abs(c), rtol=1e-12)
    np.testing.assert_allclose(flow.ratio_x[1:], abs(c), rtol=1e-12)
    grows = flow.profile("geomean")
    assert (np.all(np.diff(grows) > 0) if abs(c) < 1 else np.all(np.diff(grows) < 0))
    rep = flow.spectrum
    assert rep.sigma_max == pytest.approx(abs(c)) and rep.rho == pytest.approx(abs(c))
    assert rep.vanishing_guaranteed == (abs(c) < 1) and rep.explosion_possible == (abs(c) > 1)
    # a temporal contribution injected at t: |c|^{t-k} for k ≤ t, 0 after
    tc = D.temporal_contributions(model, u, steps=[9, -1], probe="random", rng=3)
    for i, t in enumerate(tc.steps):
        want = np.zeros(T)
        want[: t + 1] = np.abs(c) ** (t - np.arange(t + 1))
        np.testing.assert_allclose(tc.norms[i], np.broadcast_to(want[:, None], (T, 3)),
                                   rtol=1e-12)
    np.testing.assert_allclose(tc.probe_norms, 1.0, rtol=1e-14)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_profile_respects_singular_value_bound(activation):
    """‖∂E/∂h_k‖ ≤ ‖∂E/∂h_T‖ (γλ₁)^{T-k} when the cost is read at the last step only."""
    model = make_model(activation, "softmax_ce", "last", H=8, scale=3.0, seed=4)
    u, targets, _ = make_batch(model, 25, 6)
    flow = D.gradient_flow(model, u, targets)
    rate = flow.spectrum.gamma * flow.spectrum.sigma_max
    T = flow.dh_norm.shape[0]
    bound = rate ** (T - flow.steps)
    assert np.all(flow.relative() <= bound[:, None] * (1 + 1e-12))
    # and every one-step ratio is below γλ₁
    assert np.nanmax(flow.ratio) <= rate * (1 + 1e-12)


def test_float32_model():
    model = make_model("tanh", "softmax_ce", "all", dtype=np.float32)
    u, targets, _ = make_batch(model, 10, 4)
    flow = D.gradient_flow(model, u, targets)
    ref = D.gradient_flow(make_model("tanh", "softmax_ce", "all"), u, targets)
    assert flow.dh_norm.dtype == np.float64
    np.testing.assert_allclose(flow.dh_norm, ref.dh_norm, rtol=2e-4)
    np.testing.assert_allclose(flow.ratio, ref.ratio, rtol=2e-4)


# --------------------------------------------------------------------------- contributions


def test_temporal_contributions_sum_to_the_total_gradient():
    model = make_model("tanh", "softmax_ce", "all", scale=1.2)
    T, B = 8, 3
    u, targets, mask = make_batch(model, T, B, masked=True)
    flow = D.gradient_flow(model, u, targets, mask, keep_vectors=True)
    tc = D.temporal_contributions(model, u, targets, steps=range(T), mask=mask,
                                  keep_vectors=True)
    assert tc.probe == "loss" and tc.steps.tolist() == list(range(T))
    # Σ_t ∂E_t/∂h_t · ∂h_t/∂h_k = ∂E/∂h_k
    np.testing.assert_allclose(tc.dh.sum(axis=0), flow.dh, rtol=1e-11, atol=1e-15)
    # eq. 4-5: Σ_t ∂E_t/∂θ = ∂E/∂θ
    grads = model.loss_and_grad(u, targets, mask).grads
    for name in ("W_rec", "W_in", "b"):
        np.testing.assert_allclose(tc.grads[name].sum(axis=0), grads[name], rtol=1e-11,
                                   atol=1e-15)
    # the norms are those of the vectors; zero after the injection step; the probe at t
    np.testing.assert_allclose(tc.norms, np.linalg.norm(tc.dh, axis=3), rtol=1e-12,
                               atol=1e-300)
    for i, t in enumerate(tc.steps):
        assert np.all(tc.norms[i, t + 1:] == 0)
        np.testing.assert_allclose(tc.norms[i, t], flow.direct_norm[t], rtol=1e-12)
        np.testing.assert_allclose(tc.probe_norms[i], flow.direct_norm[t], rtol=1e-12)
    # chunked (one replica per chunk, any order, repeats) gives the same numbers
    steps = [5, 0, -1, 5]
    full = D.temporal_contributions(model, u, targets, steps=steps, mask=mask)
    tiny = D.temporal_contributions(model, u, targets, steps=steps, mask=mask, max_elements=1)
    assert full.steps.tolist() == [5, 0, 7, 5]
    np.testing.assert_allclose(tiny.norms, full.norms, rtol=1e-12)
    np.testing.assert_allclose(tiny.x_norms, full.x_norms, rtol=1e-12)
    np.testing.assert_allclose(full.norms[0], tc.norms[5], rtol=1e-12)
    np.testing.assert_allclose(full.grads["W_rec"][3], tc.grads["W_rec"][5], rtol=1e-12)


def test_last_step_contribution_is_the_whole_profile():
    model = make_model("sigmoid", "softmax_ce", "last", scale=2.0)
    u, targets, _ = make_batch(model, 12, 4)
    flow = D.gradient_flow(model, u, targets)
    tc = D.temporal_contributions(model, u, targets, steps=-1)
    np.testing.assert_allclose(tc.norms[0], flow.dh_norm, rtol=1e-12)
    np.testing.assert_allclose(tc.x_norms[0], flow.dx_norm, rtol=1e-12)
    with pytest.raises(ValueError, match="at='last'"):
        D.temporal_contributions(model, u, targets, steps=[3, -1])
    # a given probe equal to the loss gradient reproduces the "loss" probe
    given = D.temporal_contributions(model, u, steps=[-1], probe=_dh_last(model, u, targets))
    np.testing.assert_allclose(given.norms, tc.norms, rtol=1e-12)
    assert given.probe == "given"


def _dh_last(model, u, targets):
    p = model.params
    h = model.forward(u).h
    r = losses.loss_and_grad(h, p["W_out"], p["b_out"], targets, kind=model.loss, at="last")
    return r.dh_last[None]


def test_diagnose_and_init_comparison():
    model = make_model("tanh", "softmax_ce", "last")
    u, targets, _ = make_batch(model, 16, 3)
    d = D.diagnose(model, u, targets)
    assert d.contributions.probe == "random"
    assert d.contributions.steps.tolist() == [3, 7, 11, 15]
    assert d.spectrum == d.flow.spectrum
    assert D.default_steps(3, 4).tolist() == [0, 1, 2]
    # the paper's inits on temporal order: sigmoid vanishes fastest, smart_tanh slowest
    cmp = D.init_comparison("temporal_order", length=30, batch=5, hidden=20, seed=2)
    first = {k: np.nanmedian(v.flow.relative()[0]) for k, v in cmp.items()}
    assert first["sigmoid"] < first["basic_tanh"] < first["smart_tanh"] < 1.0
    assert cmp["sigmoid"].spectrum.vanishing_guaranteed
    assert cmp["smart_tanh"].spectrum.rho == pytest.approx(0.95)


def test_bad_input():
    model = make_model("tanh", "softmax_ce", "last")
    u, targets, _ = make_batch(model, 6, 2)
    with pytest.raises(TypeError, match="model"):
        D.gradient_flow(object(), u, targets)
    with pytest.raises(ValueError, match="u: expected shape"):
        D.gradient_flow(model, u[..., :2], targets)
    with pytest.raises(ValueError, match="omega_bound"):
        D.gradient_flow(model, u, targets, omega_bound=-1.0)
    with pytest.raises(ValueError, match="steps"):
        D.temporal_contributions(model, u, targets, steps=[6])
    with pytest.raises(ValueError, match="steps"):
        D.temporal_contributions(model, u, targets, steps=[])
    with pytest.raises(TypeError, match="steps"):
        D.temporal_contributions(model, u, targets, steps=[1.5])
    with pytest.raises(ValueError, match="targets"):
        D.temporal_contributions(model, u, steps=[-1])
    with pytest.raises(ValueError, match="probe"):
        D.temporal_contributions(model, u, steps=[-1], probe="ones")
    with pytest.raises(ValueError, match="probe"):
        D.temporal_contributions(model, u, steps=[-1], probe=np.zeros((2, 2, 5)))
    with pytest.raises(ValueError, match="max_elements"):
        D.temporal_contributions(model, u, steps=[-1], probe="random", max_elements=0)
    with pytest.raises(ValueError, match="activation"):
        D.gamma("softplus")
    with pytest.raises(ValueError, match="W_rec"):
        D.spectral_report(np.ones((2, 3)))
    with pytest.raises(ValueError, match="stat"):
        D.gradient_flow(model, u, targets).profile("max")


# --------------------------------------------------------------------------- spectra


def test_spectral_report_conditions():
    nil = np.array([[0.0, 3.0], [0.0, 0.0]])  # ρ = 0, λ₁ = 3
    r = D.spectral_report(nil, "tanh")
    assert r.sigma_max == pytest.approx(3.0) and r.rho == pytest.approx(0.0, abs=1e-12)
    assert (r.gamma, r.bound) == (1.0, 1.0)
    assert not r.vanishing_guaranteed and r.explosion_possible
    s = D.spectral_report(nil, "sigmoid")
    assert s.bound == 4.0 and s.vanishing_guaranteed and not s.explosion_possible
    assert s.per_step_bound == pytest.approx(0.75)
    lin = D.spectral_report(nil, "linear")  # the linear case looks at ρ
    assert lin.vanishing_guaranteed and not lin.explosion_possible
    d = D.spectral_report(np.diag([2.0, -0.5]), "relu")
    assert d.sigma_max == pytest.approx(2.0) and d.rho == pytest.approx(2.0)
    nan = D.spectral_report(np.array([[np.inf, 0.0], [0.0, 1.0]]), "tanh")
    assert math.isnan(nan.sigma_max) and not nan.vanishing_guaranteed
    sig, rho = D.spectral_trajectory([np.eye(3) * c for c in (0.5, 1.0, 2.0)], "tanh")
    np.testing.assert_allclose(sig, [0.5, 1.0, 2.0])
    np.testing.assert_allclose(rho, [0.5, 1.0, 2.0])


# --------------------------------------------------------------------------- figures


def png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_gradient_plots_headless(tmp_path):
    pytest.importorskip("matplotlib")
    from rnnfast import plots

    written = plots.write_gradient_figures(tmp_path / "g", length=20, batch=4, hidden=8,
                                           dpi=50)
    assert set(written) == {"gradient_flow", "temporal_contributions", "spectrum"}
    model = make_model("tanh", "softmax_ce", "all")
    u, targets, _ = make_batch(model, 10, 3)
    d = D.diagnose(model, u, targets)
    assert d.contributions.probe == "loss"
    paths = list(written.values())
    # the options not used by write_gradient_figures, drawn into the axes of one figure
    fig = plots._figure((9.0, 3.0))
    a1, a2, a3 = fig.subplots(1, 3)
    plots.plot_gradient_flow({"a": d, "b": d.flow}, ax=a1, relative=False)
    plots.plot_omega_ratios(d.flow, ax=a2, space="x")
    plots.plot_temporal_contributions(d, ax=a3, relative=False)
    paths.append(plots.save_figure(fig, tmp_path / "variants.png", dpi=50))
    hist = {"columns": {"update": list(range(1, 7)), "rho": [None, 0.9, None, 1.2, None, 1.3],
                        "explosion": [0, 0, 1, 0, 0, 1]},
            "summary": {"model": {"activation": "sigmoid"}}}
    (tmp_path / "history.json").write_text(json.dumps(hist))
    plots.plot_spectral_history(tmp_path / "history.json", tmp_path / "sh.png")
    plots.plot_spectral_history({"update": [1, 2], "sigma_max": [1.0, 2.0]},
                                tmp_path / "sh2.png", activation="tanh")
    paths += [tmp_path / "sh.png", tmp_path / "sh2.png"]
    for p in paths:
        w, h = png_size(p)
        assert w > 100 and h > 100
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="rho"):
        plots.plot_spectral_history({"update": [1], "loss": [1.0]})
    with pytest.raises(TypeError, match="GradientFlow"):
        plots.plot_gradient_flow([1, 2])
    with pytest.raises(ValueError, match="space"):
        plots.plot_omega_ratios(d, space="z")


def test_figures_command_gradients(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from rnnfast import plots
    from rnnfast.cli import figures

    calls = []

    def fake_gradient_figures(outdir, **kw):  # the real one is covered above; keep this fast
        calls.append(kw)
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "spectrum.png").write_bytes(b"x")
        return {"spectrum": str(tmp_path / "out" / "spectrum.png")}

    monkeypatch.setattr(plots, "write_gradient_figures", fake_gradient_figures)

    model = RNNModel(6, 8, 4, init="basic_tanh", rng=0)
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "model.npz")
    hist = tmp_path / "run" / "history.json"
    hist.write_text(json.dumps({"columns": {"update": [1, 2, 3], "loss": [1.0, 0.8, 0.7],
                                            "norm": [1.0, 9.0, 1.0], "rho": [0.9, None, 1.1],
                                            "explosion": [0, 1, 0]},
                                "summary": {"model": {"activation": "tanh"}}}))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--no-dynamics", "--gradients", "--length", "15", "--batch",
            "3", "--hidden", "6", "--dpi", "50", "--history", str(hist), "--model",
            str(tmp_path / "run" / "model.npz")]
    assert figures.main(argv) == 0
    assert calls == [{"task": "temporal_order", "length": 15, "batch": 3, "hidden": 6,
                      "seed": 0, "dpi": 50}]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["diagnostics_run.png", "history_run.png", "spectral_run.png",
                     "spectrum.png"]
    for n in ("diagnostics_run.png", "history_run.png", "spectral_run.png"):
        w, h = png_size(out / n)
        assert w > 100 and h > 100
    assert "diagnostics_run:" in capsys.readouterr().out
    # a model that does not fit the task is a user's mistake: one line, status 2
    RNNModel(3, 4, 2, rng=0).save(tmp_path / "small.npz")
    assert figures.main(["--out", str(out), "--no-dynamics", "--model",
                         str(tmp_path / "small.npz")]) == 2
    assert "inputs" in capsys.readouterr().err
