"""Algorithm 1, element-wise clipping, auto threshold, non-finite policies."""

import math

import numpy as np
import pytest

from rnnfast.nn import clipping as C


def grads(seed=0, scale=1.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {
        "W_in": (scale * rng.normal(size=(5, 3))).astype(dtype),
        "W_rec": (scale * rng.normal(size=(5, 5))).astype(dtype),
        "b": (scale * rng.normal(size=5)).astype(dtype),
        "W_out": (scale * rng.normal(size=(2, 5))).astype(dtype),
        "b_out": (scale * rng.normal(size=2)).astype(dtype),
    }


def direct_norm(g):
    return math.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in g.values()))


def test_global_norm_matches_direct():
    g = grads()
    assert C.global_norm(g) == pytest.approx(direct_norm(g), rel=1e-14)
    assert C.global_norm(list(g.values())) == pytest.approx(direct_norm(g), rel=1e-14)


def test_float32_norm_does_not_overflow():
    g = {"a": np.full(10, 1e30, np.float32)}
    with np.errstate(over="ignore"):
        assert np.isinf(np.sum(g["a"] ** 2))  # float32 squares overflow...
    assert C.global_norm(g) == pytest.approx(1e30 * math.sqrt(10), rel=1e-6)  # ...float64 does not


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_clipping_rescales_to_threshold(dtype):
    g = grads(scale=3.0, dtype=dtype)
    orig = {k: v.copy() for k, v in g.items()}
    n = direct_norm(orig)
    r = C.clip_by_global_norm(g, 1.0)
    assert r.clipped and r.action == "clipped"
    assert r.norm == pytest.approx(n, rel=1e-6)
    assert r.scale == pytest.approx(1.0 / n, rel=1e-6)
    assert C.global_norm(g) == pytest.approx(1.0, rel=1e-5)
    for k in g:
        np.testing.assert_allclose(g[k], orig[k] / n, rtol=1e-5)
        assert g[k].dtype == dtype


def test_no_clipping_below_threshold_and_equality_rule():
    g = grads(scale=0.01)
    before = {k: v.copy() for k, v in g.items()}
    r = C.clip_by_global_norm(g, 10.0)
    assert not r.clipped and r.scale == 1.0
    for k in g:
        assert np.array_equal(g[k], before[k])
    n = C.global_norm(g)
    # paper: >= clips at equality; authors: strict > does not
    assert C.clip_by_global_norm({k: v.copy() for k, v in g.items()}, n).clipped
    assert not C.clip_by_global_norm({k: v.copy() for k, v in g.items()}, n, strict=True).clipped


def test_elementwise_clipping():
    g = {"a": np.array([-3.0, 0.5, 2.0]), "b": np.array([0.1])}
    r = C.clip_elementwise(g, 1.0)
    assert r.clipped and r.norm == pytest.approx(math.sqrt(9 + 0.25 + 4 + 0.01))
    np.testing.assert_array_equal(g["a"], [-1.0, 0.5, 1.0])
    np.testing.assert_array_equal(g["b"], [0.1])
    assert not C.clip_elementwise({"a": np.array([0.2])}, 1.0).clipped


def test_clipper_modes():
    g = grads(scale=3.0)
    r = C.GradientClipper(1.0)(g)
    assert r.clipped and C.global_norm(g) == pytest.approx(1.0)
    g = grads(scale=3.0)
    r = C.GradientClipper(0.5, mode="elementwise")(g)
    assert r.clipped and max(np.abs(v).max() for v in g.values()) <= 0.5
    g = grads(scale=3.0)
    before = {k: v.copy() for k, v in g.items()}
    r = C.GradientClipper(None)(g)
    assert not r.clipped and r.threshold is None
    assert all(np.array_equal(g[k], before[k]) for k in g)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_raise_names_the_offending_parameter(bad):
    g = grads()
    g["W_out"][1, 2] = bad
    with pytest.raises(C.NonFiniteGradientError, match="'W_out'") as e:
        C.GradientClipper(1.0, nonfinite="raise")(g)
    assert e.value.param == "W_out"
    assert isinstance(e.value, FloatingPointError)


def test_raise_on_absurd_norm_names_largest():
    g = grads()
    g["b"][0] = 1e11
    with pytest.raises(C.NonFiniteGradientError, match="'b'"):
        C.GradientClipper(1.0, nonfinite="raise")(g)
    # absurd=None: only NaN/Inf count; a huge finite norm is just clipped
    r = C.GradientClipper(1.0, nonfinite="raise", absurd=None)(g)
    assert r.clipped


@pytest.mark.parametrize("bad", [np.nan, np.inf, 2e10])
def test_skip_zeroes_and_reports(bad):
    g = grads()
    g["W_rec"][0, 0] = bad
    r = C.GradientClipper(1.0, nonfinite="skip")(g)
    assert r.action == "skipped" and not r.clipped
    assert all(np.all(v == 0) for v in g.values())


@pytest.mark.parametrize("bad", [np.nan, np.inf, 2e10])
def test_shrink_is_authors_rule(bad):
    g = grads(dtype=np.float32)
    g["W_in"][0, 0] = bad
    params = {k: np.random.default_rng(1).normal(size=v.shape).astype(np.float32) for k, v in g.items()}
    r = C.GradientClipper(1.0, nonfinite="shrink")(g, params)
    assert r.action == "shrunk"
    np.testing.assert_allclose(g["W_rec"], np.float32(0.02) * params["W_rec"], rtol=1e-7)
    for k in ("W_in", "b", "W_out", "b_out"):
        assert np.all(g[k] == 0)
    with pytest.raises(C.NonFiniteGradientError, match="W_rec"):
        g["W_in"][0, 0] = np.nan
        C.GradientClipper(1.0, nonfinite="shrink")(g)


def test_auto_threshold_follows_running_average():
    auto = C.AutoThreshold(factor=2.0, warmup=5, decay=0.9)
    clip = C.GradientClipper(auto)
    rng = np.random.default_rng(0)
    norms = []
    for i in range(5):  # warm-up: nothing is clipped, the mean builds up
        g = grads(i, scale=rng.uniform(0.5, 3.0))
        norms.append(C.global_norm(g))
        r = clip(g)
        assert not r.clipped and r.threshold is None
    assert auto.threshold == pytest.approx(2.0 * np.mean(norms), rel=1e-12)
    avg = np.mean(norms)
    for i in range(5, 40):
        g = grads(i, scale=rng.uniform(0.5, 3.0))
        n = C.global_norm(g)
        thr = 2.0 * avg
        r = clip(g)
        assert r.threshold == pytest.approx(thr, rel=1e-12)
        assert r.clipped == (n >= thr)
        avg = 0.9 * avg + 0.1 * min(n, 10 * avg)
        assert auto.threshold == pytest.approx(2.0 * avg, rel=1e-12)


def test_auto_threshold_ignores_spikes_and_nonfinite():
    auto = C.AutoThreshold(factor=1.0, warmup=3, decay=0.5)
    for n in (1.0, 1.0, 1.0):
        auto.update(n)
    auto.update(1e6)  # an explosion enters as 10x the average
    assert auto.threshold == pytest.approx(0.5 + 0.5 * 10.0)
    auto.update(float("nan"))
    assert auto.threshold == pytest.approx(5.5)
    frozen = C.AutoThreshold(factor=1.0, warmup=2, decay=None)
    for n in (2.0, 4.0, 100.0, 0.1):
        frozen.update(n)
    assert frozen.threshold == 3.0
    s = frozen.state_dict()
    other = C.AutoThreshold(factor=1.0, warmup=2, decay=None)
    other.load_state_dict(s)
    assert other.threshold == 3.0


def test_bad_clipper_options():
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        C.GradientClipper(1.0, nonfinite="ignore")
    with pytest.raises(ValueError, match="mode='value'"):
        C.GradientClipper(1.0, mode="value")
    with pytest.raises(ValueError, match="threshold"):
        C.GradientClipper(-1.0)
    with pytest.raises(ValueError, match="threshold"):
        C.GradientClipper("sometimes")
    with pytest.raises(ValueError, match="threshold"):
        C.clip_by_global_norm(grads(), 0.0)
