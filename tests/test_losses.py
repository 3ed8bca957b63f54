"""Readout + loss: values, finite-difference gradients, normalisation, bad input."""

import numpy as np
import pytest

from rnnfast.nn import losses as L

KINDS = ("softmax_ce", "linear_mse", "sigmoid_bce")


def make(kind, at, T=5, B=4, H=6, O=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    h = np.tanh(rng.normal(size=(T, B, H))).astype(dtype)
    W = rng.normal(size=(O, H)).astype(dtype)
    b = rng.normal(size=O).astype(dtype)
    rows = (B,) if at == "last" else (T, B)
    if kind == "softmax_ce":
        t = rng.integers(0, O, size=rows)
    elif kind == "linear_mse":
        t = rng.normal(size=rows + (O,))
    else:
        t = (rng.random(size=rows + (O,)) > 0.5).astype(np.float64)
    return h, W, b, t


def fd_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def direct_loss(h, W, b, t, kind, at, mask, normalize):
    """Straightforward per-row loop of the documented definition (reference)."""
    T, B, _ = h.shape
    rows = [(T - 1, j) for j in range(B)] if at == "last" else [(s, j) for s in range(T) for j in range(B)]
    total, count = 0.0, 0.0
    for s, j in rows:
        w = 1.0 if mask is None else float(mask[s, j])
        z = W @ h[s, j] + b
        tt = t[j] if at == "last" else t[s, j]
        if kind == "softmax_ce":
            c = int(tt) if w else 0
            e = -(z[c] - np.log(np.sum(np.exp(z))))
        elif kind == "linear_mse":
            e = np.sum((z - tt) ** 2)
        else:
            p = 1 / (1 + np.exp(-z))
            e = -np.sum(tt * np.log(p) + (1 - tt) * np.log(1 - p))
        total += w * e
        count += w
    if normalize == "sum":
        return total
    if normalize == "sequence" or at == "last":
        return total / B
    return total / count


MASKS = ("none", "bool", "float")


def mask_for(mode, T, B, seed=1):
    rng = np.random.default_rng(seed)
    if mode == "none":
        return None
    if mode == "bool":
        m = rng.random((T, B)) > 0.4
        m[0, 0] = True
        return m
    return rng.random((T, B)) * 2


CASES = [(k, "last", "none") for k in KINDS] + [(k, "all", m) for k in KINDS for m in MASKS]


@pytest.mark.parametrize("kind,at,mmode", CASES)
@pytest.mark.parametrize("normalize", L.NORMALIZATIONS)
def test_value_matches_definition(kind, at, mmode, normalize):
    h, W, b, t = make(kind, at)
    mask = mask_for(mmode, *h.shape[:2])
    r = L.loss_and_grad(h, W, b, t, kind=kind, at=at, mask=mask, normalize=normalize)
    ref = direct_loss(h, W, b, t, kind, at, mask, normalize)
    assert r.loss == pytest.approx(ref, rel=1e-12)
    assert isinstance(r.loss, float)


@pytest.mark.parametrize("kind,at,mmode", CASES)
@pytest.mark.parametrize("normalize", ("step", "sequence"))
def test_gradients_finite_differences(kind, at, mmode, normalize):
    h, W, b, t = make(kind, at, T=4, B=3, H=4, O=3)
    mask = mask_for(mmode, *h.shape[:2])
    r = L.loss_and_grad(h, W, b, t, kind=kind, at=at, mask=mask, normalize=normalize)

    def f():
        return L.loss_and_grad(h, W, b, t, kind=kind, at=at, mask=mask, normalize=normalize).loss

    np.testing.assert_allclose(r.W_out, fd_grad(f, W), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(r.b_out, fd_grad(f, b), rtol=1e-6, atol=1e-9)
    gh = fd_grad(f, h)
    if at == "last":
        assert r.dh is None and r.dh_last.shape == h.shape[1:]
        np.testing.assert_allclose(r.dh_last, gh[-1], rtol=1e-6, atol=1e-9)
        assert np.all(gh[:-1] == 0)
    else:
        assert r.dh_last is None and r.dh.shape == h.shape
        np.testing.assert_allclose(r.dh, gh, rtol=1e-6, atol=1e-9)


def test_authors_convention_default():
    # authors: cost = -(t * log y).mean(axis=0).sum() over the T*B readout rows
    h, W, b, t = make("softmax_ce", "all", T=7, B=5, O=4)
    z = h.reshape(-1, h.shape[2]) @ W.T + b
    y = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    onehot = np.eye(4)[t.reshape(-1)]
    authors = -(onehot * np.log(y)).mean(axis=0).sum()
    r = L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="all")
    assert r.loss == pytest.approx(authors, rel=1e-12)
    # lastLinear: ((t - y)**2).mean(axis=0).sum()
    h, W, b, t = make("linear_mse", "last", O=2)
    y = h[-1] @ W.T + b
    r = L.loss_and_grad(h, W, b, t, kind="linear_mse", at="last")
    assert r.loss == pytest.approx(((t - y) ** 2).mean(axis=0).sum(), rel=1e-12)


def test_normalisations_relate():
    h, W, b, t = make("sigmoid_bce", "all", T=6, B=4)
    mask = mask_for("bool", 6, 4)
    res = {n: L.loss_and_grad(h, W, b, t, kind="sigmoid_bce", at="all", mask=mask, normalize=n)
           for n in L.NORMALIZATIONS}
    assert res["sum"].loss == pytest.approx(res["step"].loss * mask.sum(), rel=1e-12)
    assert res["sum"].loss == pytest.approx(res["sequence"].loss * 4, rel=1e-12)
    assert res["step"].count == mask.sum()
    np.testing.assert_allclose(res["sum"].W_out, res["sequence"].W_out * 4, rtol=1e-12)


def test_masked_steps_do_not_count():
    h, W, b, t = make("softmax_ce", "all", T=5, B=3)
    mask = np.ones((5, 3), bool)
    mask[3:, 1] = False
    t2 = t.copy()
    t2[3:, 1] = -1  # padding may hold anything
    h2 = h.copy()
    h2[3:, 1] = 123.0
    r1 = L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="all", mask=mask)
    r2 = L.loss_and_grad(h2, W, b, t2, kind="softmax_ce", at="all", mask=mask)
    assert r1.loss == pytest.approx(r2.loss, rel=1e-14)
    np.testing.assert_allclose(r1.W_out, r2.W_out, rtol=1e-13, atol=1e-15)
    assert np.all(r2.dh[3:, 1] == 0)
    for kind in ("sigmoid_bce", "linear_mse"):  # padding targets are never read, NaN included
        h, W, b, t = make(kind, "all", T=5, B=3)
        t2 = t.copy()
        t2[3:, 1] = np.nan
        r1 = L.loss_and_grad(h, W, b, t, kind=kind, at="all", mask=mask)
        r2 = L.loss_and_grad(h2, W, b, t2, kind=kind, at="all", mask=mask)
        assert np.isfinite(r2.loss) and r1.loss == pytest.approx(r2.loss, rel=1e-14)
        np.testing.assert_allclose(r1.W_out, r2.W_out, rtol=1e-13, atol=1e-15)
        assert np.all(r2.dh[3:, 1] == 0)


def test_outputs_are_probabilities_and_readout_agrees():
    h, W, b, t = make("softmax_ce", "all")
    r = L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="all")
    assert r.y.shape == (5, 4, 3)
    np.testing.assert_allclose(r.y.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(L.readout(h, W, b, "softmax_ce"), r.y, rtol=1e-12)
    np.testing.assert_allclose(L.readout(h[-1], W, b, "sigmoid_bce"),
                               1 / (1 + np.exp(-(h[-1] @ W.T + b))), rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("at", ["last", "all"])
def test_without_gradients_the_loss_and_outputs_are_the_same(kind, at):
    h, W, b, t = make(kind, at, T=7, B=30, H=40, O=9)  # a product big enough for two threads
    mask = (np.arange(7)[:, None] < np.arange(30) % 7 + 1) if at == "all" else None
    r = L.loss_and_grad(h, W, b, t, kind=kind, at=at, mask=mask, num_threads=2)
    e = L.loss_and_grad(h, W, b, t, kind=kind, at=at, mask=mask, grad=False)
    assert e.loss == r.loss and np.array_equal(e.y, r.y) and e.count == r.count
    assert e.W_out is e.b_out is e.dh is e.dh_last is None
    r1 = L.loss_and_grad(h, W, b, t, kind=kind, at=at, mask=mask, num_threads=1)
    for name in ("W_out", "b_out", "dh", "dh_last"):  # the same on every thread count
        a1, a2 = getattr(r1, name), getattr(r, name)
        assert (a1 is None and a2 is None) or np.array_equal(a1, a2)


def test_readout_of_mixed_dtypes_is_in_the_wider_one():
    h, W, b, _ = make("linear_mse", "all")
    y = L.readout(h.astype(np.float32), W, b, "linear_mse")
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, h.astype(np.float32).astype(float) @ W.T + b, rtol=1e-12)
    y = L.readout(h, W, list(b), "linear_mse")  # array-likes too
    np.testing.assert_allclose(y, h @ W.T + b, rtol=1e-12)


def test_float64_targets_of_a_float32_model_are_read_in_float32():
    # targets in another float dtype than the model's are converted, as before the loss
    # kernel (which checks one dtype per call)
    for kind in ("sigmoid_bce", "linear_mse"):
        h, W, b, t = make(kind, "all", dtype=np.float32)
        assert t.dtype == np.float64
        r = L.loss_and_grad(h, W, b, t, kind=kind, at="all")
        r32 = L.loss_and_grad(h, W, b, t.astype(np.float32), kind=kind, at="all")
        assert r.loss == r32.loss and r.W_out.dtype == np.float32
        np.testing.assert_array_equal(r.W_out, r32.W_out)
        ref = direct_loss(h.astype(float), W.astype(float), b.astype(float), t, kind, "all",
                          None, "step")
        assert r.loss == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("at", ("last", "all"))
def test_strided_views_as_arguments_give_the_contiguous_result(kind, at):
    # reversed and transposed views (targets, W_out, h) read as their contiguous copies
    h, W, b, t = make(kind, at)
    ref = L.loss_and_grad(h, W, b, t, kind=kind, at=at)
    tv = np.ascontiguousarray(t[::-1])[::-1]  # same values, negative strides
    if at == "all":
        tv = np.ascontiguousarray(np.swapaxes(tv, 0, 1)).swapaxes(0, 1)  # a transposed view
    Wv = np.ascontiguousarray(W.T).T
    hv = np.ascontiguousarray(h[:, ::-1])[:, ::-1]
    assert not tv.flags.c_contiguous and not Wv.flags.c_contiguous
    r = L.loss_and_grad(hv, Wv, b, tv, kind=kind, at=at)
    assert r.loss == ref.loss
    np.testing.assert_array_equal(r.W_out, ref.W_out)
    np.testing.assert_array_equal(r.b_out, ref.b_out)
    np.testing.assert_array_equal(r.dh if at == "all" else r.dh_last,
                                  ref.dh if at == "all" else ref.dh_last)


def test_float32_gradients_float32_loss_float64():
    h, W, b, t = make("softmax_ce", "all", dtype=np.float32)
    r = L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="all")
    assert r.W_out.dtype == np.float32 and r.dh.dtype == np.float32 and r.b_out.dtype == np.float32
    r64 = L.loss_and_grad(h.astype(np.float64), W.astype(np.float64), b.astype(np.float64), t,
                          kind="softmax_ce", at="all")
    assert r.loss == pytest.approx(r64.loss, rel=1e-6)


def test_loss_accumulates_in_float64():
    # one row with loss 1e8 and 4095 rows with loss 1: exact in float64, not in float32
    T, B, H = 64, 64, 1
    h = np.zeros((T, B, H), np.float32)
    W = np.zeros((1, H), np.float32)
    b = np.zeros(1, np.float32)
    t = np.ones((T, B, 1), np.float32)
    t[0, 0, 0] = 1e4
    r = L.loss_and_grad(h, W, b, t, kind="linear_mse", at="all", normalize="sum")
    assert r.loss == 1e8 + T * B - 1
    f32 = np.sum(np.square(t, dtype=np.float32), dtype=np.float32)
    assert float(f32) != r.loss  # the test can tell the difference


def test_stable_for_extreme_scores():
    h, W, b, t = make("sigmoid_bce", "all")
    W *= 1e4
    r = L.loss_and_grad(h, W, b, t, kind="sigmoid_bce", at="all")
    assert np.isfinite(r.loss) and np.all(np.isfinite(r.W_out))
    h, W, b, t = make("softmax_ce", "last")
    W *= 1e4
    r = L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="last")
    assert np.isfinite(r.loss) and np.all(np.isfinite(r.dh_last))


# ------------------------------------------------------------------ bad input
def test_bad_targets_shape():
    h, W, b, t = make("softmax_ce", "last")
    with pytest.raises(ValueError, match=r"targets .*shape \(4,\)"):
        L.loss_and_grad(h, W, b, t[:3], kind="softmax_ce", at="last")
    with pytest.raises(ValueError, match="targets"):
        L.loss_and_grad(h, W, b, np.zeros((5, 4), np.int64), kind="softmax_ce", at="last")
    h, W, b, t = make("linear_mse", "all")
    with pytest.raises(ValueError, match=r"targets .*shape \(5, 4, 3\)"):
        L.loss_and_grad(h, W, b, t[..., :2], kind="linear_mse", at="all")


def test_classes_out_of_range():
    h, W, b, t = make("softmax_ce", "all")
    t[2, 1] = 3
    with pytest.raises(ValueError, match=r"class 3.*\[0, 3\)"):
        L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="all")
    t[2, 1] = -1
    with pytest.raises(ValueError, match="class -1"):
        L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="all")


def test_wrong_target_dtype():
    h, W, b, t = make("softmax_ce", "last")
    with pytest.raises(TypeError, match="integer class indices"):
        L.loss_and_grad(h, W, b, t.astype(float), kind="softmax_ce", at="last")
    h, W, b, t = make("linear_mse", "last")
    with pytest.raises(TypeError, match="floating point"):
        L.loss_and_grad(h, W, b, t.astype(np.int64), kind="linear_mse", at="last")


def test_bce_targets_outside_unit_interval():
    h, W, b, t = make("sigmoid_bce", "all")
    t[0, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        L.loss_and_grad(h, W, b, t, kind="sigmoid_bce", at="all")


def test_bad_mask():
    h, W, b, t = make("softmax_ce", "all")
    with pytest.raises(ValueError, match=r"mask must have shape \(T, B\) = \(5, 4\)"):
        L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="all", mask=np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="non-negative"):
        L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="all", mask=-np.ones((5, 4)))
    with pytest.raises(ValueError, match="selects no step"):
        L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="all", mask=np.zeros((5, 4), bool))
    h, W, b, t = make("softmax_ce", "last")
    with pytest.raises(ValueError, match='only supported with at="all"'):
        L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="last", mask=np.ones((5, 4), bool))


def test_unknown_options():
    h, W, b, t = make("softmax_ce", "last")
    with pytest.raises(ValueError, match="loss kind 'hinge'"):
        L.loss_and_grad(h, W, b, t, kind="hinge", at="last")
    with pytest.raises(ValueError, match="at='first'"):
        L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="first")
    with pytest.raises(ValueError, match="normalize='mean'"):
        L.loss_and_grad(h, W, b, t, kind="softmax_ce", at="last", normalize="mean")


def test_shape_and_dtype_mismatch():
    h, W, b, t = make("softmax_ce", "last")
    with pytest.raises(ValueError, match="hidden units"):
        L.loss_and_grad(h[..., :5], W, b, t, kind="softmax_ce", at="last")
    with pytest.raises(ValueError, match="b_out"):
        L.loss_and_grad(h, W, b[:2], t, kind="softmax_ce", at="last")
    with pytest.raises(TypeError, match="dtype of h"):
        L.loss_and_grad(h.astype(np.float32), W, b, t, kind="softmax_ce", at="last")
