"""Tests of rnnfast.dynamics (one-neuron map, bifurcations, the wall) and rnnfast.plots."""

import argparse
import csv
import json
import math
import struct
import sys

import numpy as np
import pytest

from rnnfast.analysis import dynamics as dyn


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------- fixed points


def test_zero_weight_fixed_point_is_bias():
    for b in (-3.0, 0.0, 1.3):
        for act in ("sigmoid", "tanh", "linear"):
            fp = dyn.fixed_points(0.0, b, act)
            assert fp.x.tolist() == pytest.approx([b], abs=1e-14)
            assert fp.slope.tolist() == [0.0]
            assert fp.stable.tolist() == [True]


def test_linear_fixed_point_and_stability():
    for w, b in ((0.5, 1.0), (-0.8, 2.0), (1.5, -1.0), (-3.0, 0.4)):
        fp = dyn.fixed_points(w, b, "linear")
        assert fp.x == pytest.approx([b / (1.0 - w)], rel=1e-14)
        assert fp.slope == pytest.approx([w])
        assert fp.stable.tolist() == [abs(w) < 1.0]
    # w = 1: no isolated fixed point (none for b != 0, a continuum for b = 0)
    assert dyn.fixed_points(1.0, 0.5, "linear").x.size == 0
    assert dyn.fixed_points(1.0, 0.0, "linear").x.size == 0


def test_symmetric_bistable_case_w5_bm25():
    # g(x) = 5σ(x) - 2.5 - x is odd (σ(-x) = 1 - σ(x)), so 0 is a root and the others are ±a
    # with a = 2.5·tanh(a/2) (since 5σ(a) - 2.5 = 2.5 tanh(a/2)).
    fp = dyn.fixed_points(5.0, -2.5)
    assert fp.x.size == 3
    lo, mid, hi = fp.x
    assert mid == pytest.approx(0.0, abs=1e-12)
    assert lo == pytest.approx(-hi, rel=1e-12)
    assert hi == pytest.approx(2.5 * math.tanh(hi / 2.0), abs=1e-12)
    assert 1.7 < hi < 1.8  # x = 2.5 is NOT a fixed point: 5σ(2.5) - 2.5 = 2.12
    for x in fp.x:  # substitution
        assert 5.0 * sig(x) - 2.5 == pytest.approx(x, abs=1e-12)
    assert fp.stable.tolist() == [True, False, True]
    assert fp.slope[1] == pytest.approx(5.0 * 0.25)  # σ'(0) = 1/4
    assert fp.slope[2] == pytest.approx(5.0 * sig(hi) * (1.0 - sig(hi)))


def test_tanh_pitchfork_case():
    fp = dyn.fixed_points(2.0, 0.0, "tanh")
    assert fp.x.size == 3
    a = fp.x[2]
    assert a == pytest.approx(2.0 * math.tanh(a), abs=1e-12)
    assert fp.x[0] == pytest.approx(-a, abs=1e-12) and fp.x[1] == pytest.approx(0.0, abs=1e-12)
    assert fp.stable.tolist() == [True, False, True]
    # below w = 1 (the pitchfork) only 0 remains, and it is stable
    fp = dyn.fixed_points(0.9, 0.0, "tanh")
    assert fp.x == pytest.approx([0.0], abs=1e-12) and fp.stable.tolist() == [True]


def test_branches_vectorised_residual_and_count():
    rng = np.random.default_rng(0)
    w = rng.uniform(-10, 12, 4000)
    b = rng.uniform(-12, 6, 4000)
    for act, f in (("sigmoid", lambda x: 1 / (1 + np.exp(-x))), ("tanh", np.tanh)):
        br = dyn.fixed_point_branches(w, b, act)
        assert br.x.shape == (4000, 3) and br.count.shape == (4000,)
        resid = np.abs(w[:, None] * f(br.x) + b[:, None] - br.x)
        assert np.nanmax(resid) < 1e-12
        assert np.all(br.count >= 1)  # a bounded σ always has a fixed point
        assert np.all(br.count == np.sum(~np.isnan(br.x), axis=1))
        # each one agrees with the scalar API
        for i in range(0, 4000, 397):
            fp = dyn.fixed_points(w[i], b[i], act)
            np.testing.assert_allclose(np.sort(br.x[i][~np.isnan(br.x[i])]), fp.x, rtol=0,
                                       atol=1e-13)


# --------------------------------------------------------------------------- bifurcations


def test_bifurcation_values_w5_closed_form():
    b1, b2 = dyn.bifurcation_values(w=5.0)
    # fold where 5σ'(x) = 1: σ = (1 ± sqrt(1 - 4/5))/2; b = x - 5σ(x)
    r = math.sqrt(1.0 - 4.0 / 5.0)
    expect = sorted(math.log(s / (1 - s)) - 5.0 * s for s in ((1 + r) / 2, (1 - r) / 2))
    assert (b1, b2) == pytest.approx(expect, rel=1e-12)
    assert b1 == pytest.approx(-2.6556, abs=1e-4) and b2 == pytest.approx(-2.3444, abs=1e-4)


@pytest.mark.parametrize("act,w", [("sigmoid", 5.0), ("sigmoid", 8.0), ("tanh", 2.0)])
def test_fixed_point_count_changes_at_bifurcations_over_b(act, w):
    b1, b2 = dyn.bifurcation_values(w=w, activation=act)
    eps = 1e-6
    count = lambda b: dyn.fixed_points(w, b, act).x.size  # noqa: E731
    assert count(b1 - eps) == 1
    assert count(b1 + eps) == 3
    assert count(0.5 * (b1 + b2)) == 3
    assert count(b2 - eps) == 3
    assert count(b2 + eps) == 1
    # at the fold, a fixed point with F'(x*) = 1 (double root)
    for bv in (b1, b2):
        fp = dyn.fixed_points(w, bv, act)
        assert np.min(np.abs(fp.slope - 1.0)) < 1e-6
    # two stable fixed points coexist exactly inside (b1, b2)
    fp = dyn.fixed_points(w, 0.5 * (b1 + b2), act)
    assert fp.stable.tolist() == [True, False, True]


def test_bifurcation_values_over_w_consistent():
    w1, w2 = dyn.bifurcation_values(b=-2.5)
    assert 4.0 < w1 < 5.0 < w2  # w = 5 is bistable at b = -2.5
    count = lambda w: dyn.fixed_points(w, -2.5).x.size  # noqa: E731
    assert count(w1 - 1e-6) == 1 and count(w1 + 1e-6) == 3
    assert count(w2 - 1e-6) == 3 and count(w2 + 1e-6) == 1
    # the two directions agree: b = -2.5 is a fold value at w1 and at w2
    for wv in (w1, w2):
        assert np.min(np.abs(dyn.bifurcation_values(w=wv) + 2.5)) < 1e-9
    # cusps: sigmoid (w, b) = (4, -2); tanh (1, 0)
    assert dyn.bifurcation_values(w=3.9).size == 0
    assert dyn.bifurcation_values(b=-1.9).size == 0
    assert dyn.bifurcation_values(b=0.0, activation="tanh") == pytest.approx([1.0], abs=1e-9)
    assert dyn.bifurcation_values(w=4.0) == pytest.approx([-2.0], abs=1e-12)


def test_flip_bifurcation_negative_weight():
    b1, b2 = dyn.bifurcation_values(w=-6.0, kind="flip")
    inside = dyn.fixed_points(-6.0, 0.5 * (b1 + b2))
    outside = dyn.fixed_points(-6.0, b2 + 0.5)
    assert inside.x.size == 1 and inside.slope[0] < -1.0 and not inside.stable[0]
    assert outside.x.size == 1 and outside.stable[0]
    assert dyn.fixed_points(-6.0, b1).slope == pytest.approx([-1.0], abs=1e-9)
    # past the flip the orbit settles on a 2-cycle, not on the fixed point
    x_inf, conv = dyn.asymptotic_state(0.3, -6.0, 0.5 * (b1 + b2))
    assert not conv
    x2 = dyn.iterate(x_inf, -6.0, 0.5 * (b1 + b2), 2)
    assert x2[2] == pytest.approx(x2[0], abs=1e-9) and abs(x2[1] - x2[0]) > 0.1


def test_bifurcation_diagram_columns():
    d = dyn.bifurcation_diagram(np.linspace(-4, -1, 301), over="b", w=5.0)
    b1, b2 = d.bifurcations
    inside = (d.values > b1) & (d.values < b2)
    assert np.all(d.count[inside] == 3) and np.all(d.count[~inside] == 1)
    assert np.all(d.stable[inside][:, [0, 2]]) and not np.any(d.stable[inside][:, 1])
    d = dyn.bifurcation_diagram(over="w", b=-2.5)
    assert d.values[0] == 0.0 and d.values[-1] >= 10.0 and d.bifurcations.size == 2


# --------------------------------------------------------------------------- iteration


def test_linear_iteration_is_power():
    w = np.array([0.5, -0.9, 1.0, 1.1])
    x = dyn.iterate(0.3, w, 0.0, 40, activation="linear")
    t = np.arange(41)[:, None]
    np.testing.assert_allclose(x, 0.3 * w[None, :] ** t, rtol=1e-13, atol=0)


def test_iterate_matches_scalar_loop():
    x = dyn.iterate(0.5, 5.0, -2.6, 30)
    ref = [0.5]
    for _ in range(30):
        ref.append(5.0 * sig(ref[-1]) - 2.6)
    np.testing.assert_allclose(x, ref, rtol=1e-13, atol=1e-14)


def test_basins_split_at_the_unstable_fixed_point():
    x0 = np.linspace(-3, 3, 61)
    fp, label, x_inf = dyn.basins(x0, 5.0, -2.5)
    assert np.all(label[x0 < -1e-9] == 0) and np.all(label[x0 > 1e-9] == 2)
    np.testing.assert_allclose(x_inf[x0 > 0], fp.x[2], atol=1e-9)
    np.testing.assert_allclose(x_inf[x0 < 0], fp.x[0], atol=1e-9)


# --------------------------------------------------------------------------- the wall


def wall_direct(w, b, T=50, x0=0.5, target=0.7):
    x = x0
    for _ in range(T):
        x = w * sig(x) + b
    return (sig(x) - target) ** 2


def wall_bptt(w, b, T=50, x0=0.5, target=0.7):
    """Reverse-mode reference: a scalar loop over the stored states."""
    xs = [x0]
    for _ in range(T):
        xs.append(w * sig(xs[-1]) + b)
    s = sig(xs[-1])
    delta = 2.0 * (s - target) * s * (1.0 - s)  # dE/dx_T
    gw = gb = 0.0
    for t in range(T, 0, -1):
        sp = sig(xs[t - 1])
        gw += delta * sp
        gb += delta
        delta *= w * sp * (1.0 - sp)
    return gw, gb


def test_error_surface_matches_direct_loop():
    wv = np.linspace(2.0, 8.0, 13)
    bv = np.linspace(-5.0, 0.0, 11)
    s = dyn.error_surface(wv, bv)
    assert s.loss.shape == (11, 13) and s.grad_norm.shape == (11, 13)
    for i, j in ((0, 0), (3, 7), (10, 12), (5, 2), (7, 9)):
        assert s.loss[i, j] == pytest.approx(wall_direct(wv[j], bv[i]), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("w,b", [(2.0, -1.0), (4.7, -2.4), (6.0, -3.0), (3.0, 0.5),
                                 (-2.0, 1.0), (4.75, -2.45)])
def test_wall_gradient_matches_bptt_and_finite_differences(w, b):
    r = dyn.wall_loss(w, b)
    gw, gb = wall_bptt(w, b)
    assert float(r.grad_w) == pytest.approx(gw, rel=1e-9, abs=1e-14)
    assert float(r.grad_b) == pytest.approx(gb, rel=1e-9, abs=1e-14)
    h = 1e-6
    fw = (wall_direct(w + h, b) - wall_direct(w - h, b)) / (2 * h)
    fb = (wall_direct(w, b + h) - wall_direct(w, b - h)) / (2 * h)
    scale = max(1.0, abs(fw), abs(fb))
    assert float(r.grad_w) == pytest.approx(fw, abs=1e-6 * scale)
    assert float(r.grad_b) == pytest.approx(fb, abs=1e-6 * scale)


def test_wall_linear_case_closed_form():
    # identity σ, b = 0: x_T = x0 w^T, dE/dw = 2 (x_T - y) T x0 w^(T-1)
    w, T, x0, y = 1.05, 10, 0.5, 0.7
    r = dyn.wall_loss(w, 0.0, n_steps=T, x0=x0, target=y, activation="linear")
    xT = x0 * w ** T
    assert float(r.x_T) == pytest.approx(xT, rel=1e-14)
    assert float(r.loss) == pytest.approx((xT - y) ** 2, rel=1e-13)
    assert float(r.grad_w) == pytest.approx(2 * (xT - y) * T * x0 * w ** (T - 1), rel=1e-12)
    assert float(r.grad_b) == pytest.approx(2 * (xT - y) * sum(w ** k for k in range(T)),
                                            rel=1e-12)


def test_sgd_clipping_bounds_steps_and_plain_jumps():
    demo = dyn.wall_demo(grid=11)
    p, c = demo.plain, demo.clipped
    lr, thr = c.lr, c.threshold
    assert np.all(c.step_norm <= lr * thr * (1 + 1e-12))
    np.testing.assert_array_equal(c.clipped, c.grad_norm >= thr)
    assert c.clipped.any()
    np.testing.assert_allclose(c.step_norm[~c.clipped], lr * c.grad_norm[~c.clipped],
                               rtol=1e-12)
    assert not p.clipped.any()
    # (after the jump the gradient is ~1e-36: the step underflows against |θ| ~ 50)
    np.testing.assert_allclose(p.step_norm, lr * p.grad_norm, rtol=1e-12, atol=1e-12)
    # both runs meet the same wall point; the plain step is thrown far, the clipped one is not
    k = int(np.argmax(p.step_norm))
    assert p.grad_norm[k] > 100 * thr
    assert p.step_norm[k] > 100 * lr * thr
    np.testing.assert_array_equal(p.params[: k + 1], c.params[: k + 1])
    assert np.max(np.abs(c.params - c.params[0])) < 2.0
    assert c.loss[-1] < 0.2 * p.loss[-1]  # clipped goes on down the valley; plain is stuck


def test_sgd_batch_of_starts_matches_single_runs():
    starts = np.array([[4.75, -2.75], [6.0, -3.0], [3.0, -1.0]])
    both = dyn.wall_sgd(starts, lr=0.2, n_steps=15, threshold=1.0)
    assert both.params.shape == (16, 3, 2) and both.grad_norm.shape == (15, 3)
    for i, s in enumerate(starts):
        one = dyn.wall_sgd(s, lr=0.2, n_steps=15, threshold=1.0)
        np.testing.assert_array_equal(one.params, both.params[:, i])
        np.testing.assert_array_equal(one.clipped, both.clipped[:, i])


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="activation"):
        dyn.fixed_points(1.0, 0.0, "relu6")
    with pytest.raises(ValueError, match="w must be finite"):
        dyn.fixed_points(float("nan"), 0.0)
    with pytest.raises(ValueError, match="w must be a scalar"):
        dyn.fixed_points([1.0, 2.0], 0.0)
    with pytest.raises(TypeError, match="b must be"):
        dyn.fixed_points(1.0, "x")
    with pytest.raises(ValueError, match="exactly one of w= and b="):
        dyn.bifurcation_values(w=5.0, b=-2.0)
    with pytest.raises(ValueError, match="kind"):
        dyn.bifurcation_values(w=5.0, kind="hopf")
    with pytest.raises(ValueError, match="start"):
        dyn.wall_sgd([1.0, 2.0, 3.0], lr=0.1, n_steps=2)
    with pytest.raises(ValueError, match="lr"):
        dyn.wall_sgd([1.0, 2.0], lr=0.0, n_steps=2)
    with pytest.raises(ValueError, match="threshold"):
        dyn.wall_sgd([1.0, 2.0], lr=0.1, n_steps=2, threshold=-1.0)
    with pytest.raises(TypeError, match="n_steps"):
        dyn.iterate(0.0, 1.0, 0.0, 2.5)
    with pytest.raises(ValueError, match="w_values"):
        dyn.error_surface([[1.0]], [1.0])


# --------------------------------------------------------------------------- plots


def png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_write_figures_headless(tmp_path):
    pytest.importorskip("matplotlib")
    from rnnfast import plots

    written = plots.write_figures(tmp_path / "figs", dpi=60)
    assert set(written) == {"one_neuron", "bifurcation_w", "wall"}
    for path in written.values():
        w, h = png_size(path)
        assert w > 100 and h > 100
    assert not list((tmp_path / "figs").glob("*.tmp"))
    assert not list((tmp_path / "figs").glob(".*"))


def test_plot_history_formats(tmp_path):
    pytest.importorskip("matplotlib")
    from rnnfast import plots

    n = 50
    rng = np.random.default_rng(1)
    norms = np.exp(rng.normal(size=n))
    as_lists = {"update": list(range(1, n + 1)), "loss": list(np.linspace(2, 1, n)),
                "grad_norm": norms.tolist(), "clipped": (norms >= 1).tolist(),
                "omega": [None if i % 7 else 0.1 for i in range(n)], "rho": [1.0] * n}
    as_records = [{"update": i, "loss": 1.0 / (i + 1), "norm": float(norms[i])}
                  for i in range(n)]
    as_records[3].pop("norm")
    as_records[5]["loss"] = None
    out = []
    for k, hist in enumerate((as_lists, as_records)):
        path = tmp_path / f"h{k}.png"
        plots.plot_history(hist, path)
        out.append(path)
    arrays = plots.history_arrays(as_records)
    assert np.isnan(arrays["norm"][3]) and np.isnan(arrays["loss"][5])
    # the trainer's saved JSON (columns + validation, NaN as null) and its CSV
    trainer = {"columns": {"update": [1, 2, 3], "loss": [1.0, 0.9, 0.8],
                           "norm": [0.5, 3.0, 0.7], "clipped": [0, 1, 0],
                           "action": ["ok", "clipped", "ok"], "rho": [None, 1.1, None],
                           "explosion": [0, 1, 0]},
               "validation": [{"update": 3, "loss": 0.85, "error": 0.4, "rho": 1.1}],
               "summary": {"updates": 3}}
    (tmp_path / "history.json").write_text(json.dumps(trainer))
    with open(tmp_path / "history.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["update", "loss", "norm", "clipped", "action", "rho"])
        wr.writerows([[1, 1.0, 0.5, 0, "ok", "nan"], [2, 0.9, 3.0, 1, "clipped", 1.1]])
    for src in ("history.json", "history.csv"):
        path = tmp_path / (src + ".png")
        plots.plot_history(tmp_path / src, path)
        out.append(path)
    for path in out:
        w, h = png_size(path)
        assert w > 100 and h > 100
    loaded = plots.load_history(tmp_path / "history.csv")
    assert loaded["clipped"].tolist() == [0.0, 1.0] and np.isnan(loaded["rho"][0])
    with pytest.raises(ValueError, match="none of the keys"):
        plots.plot_history({"update": [1, 2], "lr": [0.1, 0.1]})
    with pytest.raises(TypeError, match="history"):
        plots.plot_history([1, 2, 3])


def test_missing_matplotlib_message(monkeypatch):
    from rnnfast import plots

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install 'rnnfast\[plot\]'"):
        plots.plot_bifurcation()


def test_figures_command(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from rnnfast import plots
    from rnnfast.cli import figures

    calls = []

    def fake_write_figures(outdir, *, dpi):  # the real one is covered above; keep this fast
        calls.append((outdir, dpi))
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "wall.png").write_bytes(b"x")
        return {"wall": str(tmp_path / "out" / "wall.png")}

    monkeypatch.setattr(plots, "write_figures", fake_write_figures)
    hist = tmp_path / "run" / "history.json"
    hist.parent.mkdir()
    hist.write_text(json.dumps({"columns": {"update": [1, 2], "loss": [1.0, 0.5],
                                            "norm": [1.0, 2.0]}}))
    out = tmp_path / "out"
    assert figures.main(["--out", str(out), "--history", str(hist), "--dpi", "50"]) == 0
    assert calls == [(str(out), 50)]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["history_run.png", "wall.png"]
    png_size(out / "history_run.png")
    assert "wall:" in capsys.readouterr().out
    assert figures.main(["--out", str(out), "--history", str(tmp_path / "nope.json"),
                         "--no-dynamics"]) == 2  # a user's mistake
    parser = argparse.ArgumentParser()
    figures.register(parser.add_subparsers())
    args = parser.parse_args(["figures", "--out", "x"])
    assert args.func is figures.run and args.out == "x"
