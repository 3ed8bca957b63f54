"""The forward and BPTT kernels: against a slow NumPy reference, finite differences and
PyTorch's autograd; threads, dtypes, segments, concurrency and bad input."""

import math
import platform
import threading

import numpy as np
import pytest

import rnnfast
import reference as ref

ACTS = rnnfast.ACTIVATIONS
SCHEDULES = ("serial", "batch", "hidden")
# (T, B, I, H): single step, single sequence, single unit, I ≠ H, a partial SIMD panel, and a
# size with several panels and row tiles.
# Ω's gradient takes the (Σ c aᵀa)·W_rec path when T·B ≥ 2H ((4, 1, 3, 1), (5, 3, 2, 7),
# (12, 10, 3, 40)) and the stored-v path otherwise. (4, 12, 5, 730) is large enough (W_rec
# packed > 4 MiB in float64) for the streaming path: the input product as one blocked pass,
# next-panel prefetch, and more T·B rows than one row block. (4, 50, 5, 190) has more rows
# than one row block of the weight-gradient product.
# B = 1 (and B = 2 on two threads of the batch split) takes the single-row packing: (5, 1, 3,
# 130) has several wide panels and a partial one, (3, 2, 4, 730) streams as well.
SHAPES = [(1, 1, 1, 1), (1, 3, 2, 5), (4, 1, 3, 1), (5, 3, 2, 7), (3, 9, 4, 30), (6, 5, 0, 53),
          (4, 11, 6, 70), (12, 10, 3, 40), (4, 50, 5, 190), (4, 12, 5, 730), (5, 1, 3, 130),
          (3, 2, 4, 730)]


def make(shape, dtype=np.float64, seed=0, with_h0=True, scale=0.7):
    T, B, I, H = shape
    rng = np.random.default_rng(seed)
    p = dict(
        u=rng.standard_normal((T, B, I)),
        W_in=rng.standard_normal((H, I)) * 0.5,
        W_rec=rng.standard_normal((H, H)) * scale / np.sqrt(H),
        b=rng.standard_normal(H) * 0.1,
        h0=rng.standard_normal((B, H)) * 0.5 if with_h0 else None,
    )
    dh = rng.standard_normal((T, B, H))
    cast = {k: (None if v is None else v.astype(dtype)) for k, v in p.items()}
    return cast, dh.astype(dtype)


def run(p, dh, activation, **kw):
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], activation=activation,
                          keep_x=True, **kw)
    return fwd, rnnfast.backward(fwd, dh, omega=True, profile=True, **kw)


def assert_close(a, b, rtol, atol=0.0, what=""):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(initial=0.0), 1.0)
    err = np.abs(a - b).max(initial=0.0)
    assert err <= rtol * scale + atol, f"{what}: max error {err:.3e} (scale {scale:.3e})"


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_matches_reference(activation, shape, with_h0, schedule):
    p, dh = make(shape, with_h0=with_h0)
    fwd, g = run(p, dh, activation, num_threads=2, _schedule=schedule)
    h, x = ref.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], activation)
    r = ref.backward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], activation, dh)
    assert_close(fwd.h, h, 1e-12, what="h")
    assert_close(fwd.x, x, 1e-12, what="x")
    for k in ("W_in", "W_rec", "b", "h0", "u", "dx", "omega_grad", "dh_norm"):
        assert getattr(g, k).shape == r[k].shape, k
        assert_close(getattr(g, k), r[k], 1e-10, what=k)
    assert abs(g.omega - r["omega"]) <= 1e-10 * max(1.0, abs(r["omega"]))
    assert g.omega_pairs == shape[0] * shape[1]


def _loss(p, dh, activation):
    """E = Σ_t Σ_b dh_t · h_t: its direct gradient at every step is exactly dh."""
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], activation=activation)
    return float((fwd.h * dh).sum())


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 2, 3, 4), (5, 3, 2, 6)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_finite_differences(activation, shape, with_h0):
    # Shift away from relu's kink so the central difference never straddles it.
    p, dh = make(shape, seed=3, with_h0=with_h0)
    if activation == "relu":
        p["b"] = p["b"] + 0.3
    _, g = run(p, dh, activation)
    eps = 1e-6
    for name in ("u", "W_in", "W_rec", "b") + (("h0",) if with_h0 else ()):
        arr = p[name]
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = _loss(p, dh, activation)
            arr[idx] = old - eps
            down = _loss(p, dh, activation)
            arr[idx] = old
            num[idx] = (up - down) / (2 * eps)
        assert_close(getattr(g, name), num, 1e-7, atol=1e-8, what=f"d{name}")


def test_h0_gradient_without_h0_is_for_zero_state():
    p, dh = make((4, 3, 2, 5), with_h0=False)
    _, g = run(p, dh, "tanh")
    p0 = dict(p, h0=np.zeros((3, 5)))
    _, g0 = run(p0, dh, "tanh")
    for k in ("W_in", "W_rec", "b", "h0", "u"):
        np.testing.assert_allclose(getattr(g, k), getattr(g0, k), rtol=1e-13, atol=1e-15)


def test_dh_last_is_the_cheap_form_of_a_last_step_gradient():
    p, dh = make((6, 4, 3, 9))
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
    full = np.zeros_like(dh)
    full[-1] = dh[-1]
    a = rnnfast.backward(fwd, full, omega=True)
    b = rnnfast.backward(fwd, dh_last=dh[-1], omega=True)
    c = rnnfast.backward(fwd, dh, dh_last=dh[0])  # both: added at the last step
    dh2 = dh.copy()
    dh2[-1] += dh[0]
    d = rnnfast.backward(fwd, dh2)
    for k in ("W_in", "W_rec", "b", "h0", "u", "dx", "omega_grad"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=1e-13, atol=1e-15)
    assert a.omega == pytest.approx(b.omega, rel=1e-13)
    for k in ("W_in", "W_rec", "b", "h0", "u"):
        np.testing.assert_allclose(getattr(c, k), getattr(d, k), rtol=1e-13, atol=1e-15)


def test_omega_hand_checkable_case():
    # One linear unit, h_t = w h_{t-1} + u_t, loss reading only the last of two steps:
    # both pairs have r = w², so Ω = (w² − 1)² and, with δ held fixed, dΩ/dw = 4w(w² − 1).
    w = 1.3
    fwd = rnnfast.forward(np.ones((2, 1, 1)), np.ones((1, 1)), np.array([[w]]), np.zeros(1),
                          activation="linear")
    g = rnnfast.backward(fwd, dh_last=np.array([[0.7]]), omega=True)
    assert g.omega == pytest.approx((w * w - 1) ** 2, rel=1e-14)
    assert g.omega_grad[0, 0] == pytest.approx(4 * w * (w * w - 1), rel=1e-14)
    assert g.omega_pairs == 2


@pytest.mark.parametrize("activation", ACTS)
def test_omega_gradient_is_the_surrogate_derivative(activation):
    # The paper's approximation: Ω(W) = mean over valid pairs of (‖a_t W‖²/‖δ_t‖² − 1)² with
    # a_t = ∂E/∂x_t and δ_t = ∂E/∂h_t held fixed. Differentiate that surrogate numerically.
    p, dh = make((5, 3, 2, 4), seed=5)
    if activation == "relu":
        p["b"] = p["b"] + 0.3
    _, g = run(p, dh, activation)
    a = g.dx.reshape(-1, 4)
    d2 = (g.dh_norm ** 2).reshape(-1)

    def surrogate(W):
        r = ((a @ W) ** 2).sum(1) / d2
        return float(((r - 1) ** 2).mean())

    assert surrogate(p["W_rec"]) == pytest.approx(g.omega, rel=1e-12)
    W = p["W_rec"].copy()
    num = np.zeros_like(W)
    eps = 1e-6
    for idx in np.ndindex(W.shape):
        old = W[idx]
        W[idx] = old + eps
        up = surrogate(W)
        W[idx] = old - eps
        down = surrogate(W)
        W[idx] = old
        num[idx] = (up - down) / (2 * eps)
    assert_close(g.omega_grad, num, 1e-7, atol=1e-9, what="omega_grad")


def test_omega_drops_pairs_below_the_bound():
    p, dh = make((4, 3, 2, 5))
    dh[:, 1] = 0.0  # sequence 1 has no error at all: its pairs are dropped
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
    g = rnnfast.backward(fwd, dh, omega=True)
    r = ref.backward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], "tanh", dh)
    assert g.omega_pairs == 4 * 2
    assert g.omega == pytest.approx(r["omega"], rel=1e-12)
    none = rnnfast.backward(fwd, np.zeros_like(dh), omega=True)
    assert none.omega == 0.0 and none.omega_pairs == 0 and not none.omega_grad.any()


def test_omega_off_changes_nothing():
    p, dh = make((5, 4, 3, 6))
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
    a = rnnfast.backward(fwd, dh)
    b = rnnfast.backward(fwd, dh, omega=True, profile=True)
    for k in ("W_in", "W_rec", "b", "h0", "u", "dx"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.omega is None and a.omega_grad is None and a.dh_norm is None




@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 3, 2, 7), (7, 4, 6, 33)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_matches_torch_nn_rnn(nonlinearity, shape, with_h0):
    torch = pytest.importorskip("torch")
    T, B, I, H = shape
    p, dh = make(shape, with_h0=with_h0, seed=11)
    rnn = torch.nn.RNN(I, H, nonlinearity=nonlinearity, bias=True).double()
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(p["W_in"]))
        rnn.weight_hh_l0.copy_(torch.from_numpy(p["W_rec"]))
        rnn.bias_ih_l0.copy_(torch.from_numpy(p["b"]))
        rnn.bias_hh_l0.zero_()
    u = torch.from_numpy(p["u"]).requires_grad_(True)
    h0 = torch.from_numpy(p["h0"][None]).requires_grad_(True) if with_h0 else None
    out, _ = rnn(u, h0)
    (out * torch.from_numpy(dh)).sum().backward()
    fwd, g = run(p, dh, nonlinearity)
    assert_close(fwd.h, out.detach().numpy(), 1e-12, what="h")
    assert_close(g.W_in, rnn.weight_ih_l0.grad.numpy(), 1e-10, what="W_in")
    assert_close(g.W_rec, rnn.weight_hh_l0.grad.numpy(), 1e-10, what="W_rec")
    assert_close(g.b, rnn.bias_ih_l0.grad.numpy(), 1e-10, what="b")
    assert_close(g.u, u.grad.numpy(), 1e-10, what="u")
    if with_h0:
        assert_close(g.h0, h0.grad.numpy()[0], 1e-10, what="h0")


@pytest.mark.parametrize("activation", ["sigmoid", "linear"])
def test_matches_torch_autograd_for_other_activations(activation):
    torch = pytest.importorskip("torch")
    p, dh = make((6, 3, 4, 5), seed=2)
    t = {k: torch.from_numpy(v).requires_grad_(True) for k, v in p.items()}
    f = torch.sigmoid if activation == "sigmoid" else (lambda z: z)
    h, hs = t["h0"], []
    for step in range(6):
        h = f(h @ t["W_rec"].T + t["u"][step] @ t["W_in"].T + t["b"])
        hs.append(h)
    (torch.stack(hs) * torch.from_numpy(dh)).sum().backward()
    _, g = run(p, dh, activation)
    for k in ("u", "W_in", "W_rec", "b", "h0"):
        assert_close(getattr(g, k), t[k].grad.numpy(), 1e-10, what=k)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("B", [1, 20])
@pytest.mark.parametrize("H", [26, 50, 56, 58, 100, 136])
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-5), (np.float64, 1e-10)])
def test_last_panels_of_every_width(dtype, rtol, H, B, schedule):
    # The last column panel of a packed matrix is narrower than the others: as many packets
    # as its columns need, or half a packet on 512-bit builds (H mod 48 ≤ 8 in float32, mod
    # 24 ≤ 4 in float64; single-row panels of 128 / 64 columns at B = 1). These H give last
    # panels of 2, 4, 8 and 10 columns on every build.
    p, dh = make((5, B, 3, H), dtype=dtype, seed=H + B)
    fwd, g = run(p, dh, "tanh", num_threads=2, _schedule=schedule)
    p64 = {k: (None if v is None else v.astype(np.float64)) for k, v in p.items()}
    h, _ = ref.forward(p64["u"], p64["W_in"], p64["W_rec"], p64["b"], p64["h0"], "tanh")
    r = ref.backward(p64["u"], p64["W_in"], p64["W_rec"], p64["b"], p64["h0"], "tanh",
                     dh.astype(np.float64))
    assert_close(fwd.h, h, rtol, what="h")
    for k in ("W_in", "W_rec", "b", "h0", "u", "omega_grad"):
        assert_close(getattr(g, k), r[k], 10 * rtol, what=k)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("I,H", [(6, 50), (8, 48), (4, 100), (12, 40), (2, 26), (4, 24)])
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-5), (np.float64, 1e-10)])
def test_weight_gradients_over_many_rows(dtype, rtol, I, H, schedule):
    # Σ a_tᵀ [h_{t-1} | u_t] over T·B = 360 rows: more than one chunk of the weight-gradient
    # product, which reads a_t in place and merges a last half packet of [h | u] into the
    # panel before it (512-bit builds: H + I mod 48 ≤ 8 in float32, mod 24 ≤ 4 in float64;
    # (8, 48) and (4, 24) put h's last columns and u in that merged panel). Plain and with
    # Ω folded (omega_alpha).
    p, dh = make((40, 9, I, H), dtype=dtype, seed=H + I)
    fwd, g = run(p, dh, "tanh", num_threads=2, _schedule=schedule)
    p64 = {k: (None if v is None else v.astype(np.float64)) for k, v in p.items()}
    r = ref.backward(p64["u"], p64["W_in"], p64["W_rec"], p64["b"], p64["h0"], "tanh",
                     dh.astype(np.float64))
    for k in ("W_in", "W_rec", "b", "h0", "u", "omega_grad"):
        assert_close(getattr(g, k), r[k], 10 * rtol, what=k)
    g1 = rnnfast.backward(fwd, dh, omega=True, omega_alpha=0.5, num_threads=2,
                          _schedule=schedule)
    assert_close(g1.W_rec, r["W_rec"] + 0.5 * r["omega_grad"], 10 * rtol, what="W_rec")
    assert_close(g1.W_in, r["W_in"], 10 * rtol, what="W_in")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_threads_give_the_same_result(schedule):
    p, dh = make((9, 13, 5, 60), seed=4)
    f1, g1 = run(p, dh, "tanh", num_threads=1)
    f2, g2 = run(p, dh, "tanh", num_threads=2, _schedule=schedule)
    np.testing.assert_allclose(f2.h, f1.h, rtol=1e-14, atol=1e-15)
    for k in ("W_in", "W_rec", "b", "h0", "u", "omega_grad", "dh_norm"):
        np.testing.assert_allclose(getattr(g2, k), getattr(g1, k), rtol=1e-12, atol=1e-13)
    assert g2.omega == pytest.approx(g1.omega, rel=1e-12)


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("shape", [(20, 8, 5, 40), (20, 1, 5, 130)])  # the second: single-row
def test_float32_close_to_float64(activation, shape):
    p64, dh64 = make(shape, seed=6)
    p32 = {k: (None if v is None else v.astype(np.float32)) for k, v in p64.items()}
    f64, g64 = run(p64, dh64, activation)
    f32, g32 = run(p32, dh64.astype(np.float32), activation)
    assert f32.h.dtype == np.float32 and g32.W_rec.dtype == np.float32
    assert_close(f32.h, f64.h, 1e-5, what="h")
    for k in ("W_in", "W_rec", "b", "h0", "u", "omega_grad"):
        assert getattr(g32, k).dtype == np.float32
        assert_close(getattr(g32, k), getattr(g64, k), 1e-4, what=k)
    assert g32.omega == pytest.approx(g64.omega, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("I", [0, 7])
@pytest.mark.parametrize("B", [40, 2])
def test_float32_streaming_path_matches_float64(schedule, I, B):
    # H = 1030 float32: W_rec's packed panels (4.3 MB) take the streaming path; float32
    # results against float64 ones, which the reference test checks on the same path. B = 2
    # on two threads of the batch split: single-row packing.
    p64, dh64 = make((5, B, I, 1030), seed=8)
    p32 = {k: (None if v is None else v.astype(np.float32)) for k, v in p64.items()}
    f64, g64 = run(p64, dh64, "tanh", num_threads=2, _schedule=schedule)
    f32, g32 = run(p32, dh64.astype(np.float32), "tanh", num_threads=2, _schedule=schedule)
    assert_close(f32.h, f64.h, 1e-5, what="h")
    for k in ("W_in", "W_rec", "b", "h0", "u", "omega_grad"):
        assert_close(getattr(g32, k), getattr(g64, k), 1e-4, what=k)


def test_segments_carry_state():
    # Truncated BPTT: two segments, the first's last state as the second's h0, give the same
    # states as one pass over the whole sequence.
    p, _ = make((10, 3, 2, 6))
    whole = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
    first = rnnfast.forward(p["u"][:4], p["W_in"], p["W_rec"], p["b"], p["h0"])
    second = rnnfast.forward(p["u"][4:], p["W_in"], p["W_rec"], p["b"], first.h_last)
    np.testing.assert_allclose(np.concatenate([first.h, second.h]), whole.h, rtol=1e-14)


def test_final_state_does_not_store_all_steps():
    p, _ = make((50, 4, 3, 8))
    whole = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
    for chunk in (1, 32, 33, 10 ** 9):  # one step, several, partial last, everything
        last = rnnfast.final_state(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"],
                                   chunk_elements=chunk)
        np.testing.assert_allclose(last, whole.h_last, rtol=1e-14)


def test_non_contiguous_and_fortran_inputs_are_accepted():
    p, dh = make((5, 4, 3, 6))
    fwd_c, g_c = run(p, dh, "tanh")
    q = dict(p)
    q["W_rec"] = np.asfortranarray(p["W_rec"])
    q["W_in"] = np.asfortranarray(p["W_in"])
    big = np.zeros((5, 8, 3))
    big[:, ::2] = p["u"]
    q["u"] = big[:, ::2]  # strided view
    fwd, g = run(q, np.asfortranarray(dh), "tanh")
    np.testing.assert_array_equal(fwd.h, fwd_c.h)
    for k in ("W_in", "W_rec", "b", "h0", "u"):
        np.testing.assert_array_equal(getattr(g, k), getattr(g_c, k))


def test_c_contiguous_inputs_are_not_copied():
    p, dh = make((5, 4, 3, 6))
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
    for k in ("u", "W_in", "W_rec", "b"):
        assert np.shares_memory(getattr(fwd, k), p[k]), k


def test_two_python_threads_at_once():
    cases = [make((30, 8, 4, 40), seed=s) for s in range(4)]
    expected = [run(p, dh, "tanh", num_threads=1)[1].W_rec for p, dh in cases]
    results, errors = [None] * 4, []

    def work(i):
        try:
            for _ in range(5):
                results[i] = run(*cases[i], "tanh", num_threads=2)[1].W_rec
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r, e in zip(results, expected):
        np.testing.assert_allclose(r, e, rtol=1e-12)


def test_nan_and_inf_propagate_as_values():
    p, dh = make((4, 3, 2, 5))
    p["u"][1, 0, 0] = np.nan
    p["u"][2, 2, 1] = np.inf
    fwd, g = run(p, dh, "tanh")
    assert np.isnan(fwd.h[1:, 0]).all() and np.isfinite(fwd.h[:, 1]).all()
    assert np.isnan(g.W_rec).any()
    assert np.isfinite(g.u[:, 1]).all()


def test_default_threads_setting():
    before = rnnfast.get_num_threads()
    try:
        rnnfast.set_num_threads(1)
        assert rnnfast.get_num_threads() == 1
    finally:
        rnnfast.set_num_threads(None)
    assert rnnfast.get_num_threads() == before


def test_build_info():
    info = rnnfast.build_info()
    for k in ("compiler", "flags", "instruction_sets", "eigen_version", "openmp", "version",
              "float32_lanes", "default_threads"):
        assert k in info
    assert info["eigen_version"].startswith("3.")
    assert info["l2_cache_bytes"] > 0


@pytest.mark.skipif(rnnfast._core.thread_cap() < 2, reason="needs two threads")
def test_thread_plan_keeps_an_l2_resident_w_rec_on_batch_slices():
    from rnnfast import _core

    l2 = rnnfast.build_info()["l2_cache_bytes"]
    plan = _core.plan
    assert plan(2, 2, 3, 4, 4, 2) == (1, "serial")  # too small to split
    assert plan(125, 20, 6, 50, 4, 2) == (2, "batch")  # many rows per thread, small W_rec
    # 2-4 rows per thread: batch slices while W_rec (packed) fits one core's L2
    small = 128  # 128 × ≤ 144 padded columns × 4 bytes ≤ 74 KiB
    for B in (4, 6, 8):
        assert plan(100, B, 64, small, 4, 2) == (2, "batch")
    big = 1000  # ≥ 4 MB in float32 (< 1024: the large-H rule does not apply)
    assert 1000 * 1000 * 4 > l2 or pytest.skip("an L2 of 4 MB or more")
    # past L2: 3-4 rows per thread take the hidden split, 2 rows and 5 or more the batch one
    for B, split in ((4, "batch"), (6, "hidden"), (8, "hidden"), (10, "batch"), (16, "batch")):
        assert plan(100, B, 64, big, 4, 2) == (2, split), B
        assert plan(100, B, 64, big, 8, 2) == (2, split), B
    assert plan(100, 2, 64, 300, 4, 2) == (2, "hidden")  # one row per thread, H ≥ 256
    assert plan(50, 16, 256, 2048, 4, 2) == (2, "hidden")  # large H, few rows


# ---- bad input --------------------------------------------------------------------------------

def _args():
    p, dh = make((3, 2, 4, 5))
    return p, dh


@pytest.mark.parametrize("name,value,exc,match", [
    ("u", np.zeros((3, 2)), ValueError, r"u: expected shape \(T, B, I\)"),
    ("u", np.zeros((0, 2, 4)), ValueError, "at least one time step"),
    ("u", np.zeros((3, 0, 4)), ValueError, "at least one time step"),
    ("u", np.zeros((3, 2, 4), dtype=np.int64), TypeError, "u: expected a float32 or float64"),
    ("u", np.zeros((3, 2, 4), dtype=object), TypeError, "u: expected a float32 or float64"),
    ("W_in", np.zeros((5, 3)), ValueError, r"W_in: expected shape \(H, I\)"),
    ("W_in", np.zeros((5, 4), dtype=np.float32), TypeError, "W_in: dtype float32 differs"),
    ("W_rec", np.zeros((5, 4)), ValueError, "W_rec: expected a square"),
    ("W_rec", np.zeros(5), ValueError, r"W_rec: expected shape \(H, H\)"),
    ("b", np.zeros(4), ValueError, r"b: expected shape \(H,\)"),
    ("b", np.zeros((5, 1)), ValueError, r"b: expected shape \(H,\)"),
    ("h0", np.zeros((3, 5)), ValueError, r"h0: expected shape \(B, H\)"),
    ("h0", np.zeros((2, 5), dtype=np.float32), TypeError, "h0: dtype float32 differs"),
])
def test_bad_forward_arguments(name, value, exc, match):
    p, _ = _args()
    p[name] = value
    with pytest.raises(exc, match=match):
        rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])


@pytest.mark.parametrize("kw,exc,match", [
    (dict(activation="softplus"), ValueError, "activation: expected one of"),
    (dict(num_threads=0), ValueError, "num_threads: expected a positive int"),
    (dict(num_threads=-2), ValueError, "num_threads: expected a positive int"),
    (dict(num_threads=1.5), TypeError, "num_threads: expected a positive int"),
    (dict(num_threads=True), TypeError, "num_threads: expected a positive int"),
])
def test_bad_forward_options(kw, exc, match):
    p, _ = _args()
    with pytest.raises(exc, match=match):
        rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], **kw)


def test_bad_backward_arguments():
    p, dh = _args()
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
    with pytest.raises(TypeError, match="fwd: expected the ForwardResult"):
        rnnfast.backward(fwd.h, dh)
    with pytest.raises(ValueError, match="give dh"):
        rnnfast.backward(fwd)
    with pytest.raises(ValueError, match=r"dh: expected shape \(T, B, H\) of fwd"):
        rnnfast.backward(fwd, dh[:2])
    with pytest.raises(ValueError, match=r"dh: expected shape \(T, B, H\)"):
        rnnfast.backward(fwd, dh[0])
    with pytest.raises(TypeError, match="dh: dtype float32 differs"):
        rnnfast.backward(fwd, dh.astype(np.float32))
    with pytest.raises(ValueError, match=r"dh_last: expected shape \(B, H\) of fwd"):
        rnnfast.backward(fwd, dh_last=dh[0, :1])
    with pytest.raises(ValueError, match="num_threads"):
        rnnfast.backward(fwd, dh, num_threads=0)
    with pytest.raises(ValueError, match="omega_bound"):
        rnnfast.backward(fwd, dh, omega=True, omega_bound=float("nan"))


def test_private_core_rechecks_buffers():
    # The C++ entry points validate on their own: a wrong buffer raises, never reads out of
    # bounds.
    from rnnfast import _core
    p, _ = _args()
    h = np.empty((3, 2, 5))
    with pytest.raises(ValueError, match="h: expected shape"):
        _core.forward(p["u"], p["W_in"], p["W_rec"], p["b"], None, h[:2], None, 0, 1, 0)
    with pytest.raises(TypeError, match="W_in: expected a numpy array of float64"):
        _core.forward(p["u"], p["W_in"].astype(np.float32), p["W_rec"], p["b"], None, h, None,
                      0, 1, 0)
    with pytest.raises(ValueError, match="W_in: expected a C-contiguous"):
        _core.forward(p["u"], np.asfortranarray(p["W_in"]), p["W_rec"], p["b"], None, h, None,
                      0, 1, 0)


def test_results_do_not_depend_on_where_arrays_live():
    # Same values at different addresses (offset by 8 bytes) give bit-identical results: a
    # resumed training run relies on it.
    p, dh = make((6, 5, 3, 7))

    def shifted(a, k):
        raw = np.empty(a.size + 8, np.float64)
        out = raw[k:k + a.size].reshape(a.shape)
        out[...] = a
        return out

    results = []
    for k in range(4):
        q = {n: shifted(v, k) for n, v in p.items()}
        results.append(run(q, shifted(dh, k), "tanh"))
    for fwd, g in results[1:]:
        np.testing.assert_array_equal(fwd.h, results[0][0].h)
        for n in ("W_in", "W_rec", "b", "h0", "u", "dx", "omega_grad", "dh_norm"):
            np.testing.assert_array_equal(getattr(g, n), getattr(results[0][1], n))


@pytest.mark.parametrize("dtype,ulps", [(np.float64, 4), (np.float32, 8)])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_activation_accuracy(dtype, ulps, activation):
    # One step with W_in = I, W_rec = 0, b = 0 gives h = σ(u): compare with NumPy, relative to
    # each value (tiny inputs included), and the special values.
    x = np.concatenate([np.geomspace(1e-30, 30.0, 2001), [0.0, 0.3, 0.6249, 0.625, 0.6251, 700.0]])
    x = np.concatenate([x, -x]).astype(dtype)
    n = x.size
    h = rnnfast.forward(x.reshape(1, 1, n), np.eye(n, dtype=dtype), np.zeros((n, n), dtype),
                        np.zeros(n, dtype), activation=activation).h.ravel()
    xd = x.astype(np.float64)
    want = np.tanh(xd) if activation == "tanh" else 1.0 / (1.0 + np.exp(-xd))
    tol = ulps * np.finfo(dtype).eps * np.maximum(np.abs(want), np.finfo(dtype).tiny)
    assert (np.abs(h - want) <= tol).all(), np.abs((h - want) / want).max()
    special = np.array([np.inf, -np.inf, np.nan], dtype)
    # through b: in u·W_in an infinite input would meet zeros and give NaN
    hs = rnnfast.forward(np.zeros((1, 1, 1), dtype), np.zeros((3, 1), dtype),
                         np.zeros((3, 3), dtype), special, activation=activation).h.ravel()
    expect = [1.0, -1.0] if activation == "tanh" else [1.0, 0.0]
    np.testing.assert_array_equal(hs[:2], expect)
    assert np.isnan(hs[2])


def test_workspace_reuses_memory_and_gives_the_same_results():
    ws = rnnfast.Workspace()
    results = []
    for T in (6, 4, 6):  # shrink then grow back: no reallocation for the second 6
        p, dh = make((T, 3, 2, 5), seed=T)
        fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], workspace=ws)
        g = rnnfast.backward(fwd, dh, omega=True, workspace=ws)
        fwd_ref, g_ref = run(p, dh, "tanh")
        np.testing.assert_array_equal(fwd.h, fwd_ref.h)
        for k in ("W_in", "W_rec", "b", "h0", "u", "dx", "omega_grad"):
            np.testing.assert_array_equal(getattr(g, k), getattr(g_ref, k))
        results.append((fwd.h.__array_interface__["data"][0], ws.nbytes))
    assert results[2] == results[0]  # same memory, nothing new held


@pytest.mark.parametrize("with_workspace", [False, True])
def test_outputs_are_aligned_writable_and_shaped(with_workspace):
    # Outputs start on 64-byte boundaries (results must not depend on where they lie).
    T, B, I, H = 5, 3, 4, 7
    p, dh = make((T, B, I, H), dtype=np.float32)
    ws = rnnfast.Workspace() if with_workspace else None
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], workspace=ws)
    g = rnnfast.backward(fwd, dh, omega=True, workspace=ws)
    shapes = {"W_in": (H, I), "W_rec": (H, H), "b": (H,), "h0": (B, H), "u": (T, B, I),
              "dx": (T, B, H), "omega_grad": (H, H)}
    for name, a in [("h", fwd.h)] + [(k, getattr(g, k)) for k in shapes]:
        assert a.__array_interface__["data"][0] % 64 == 0, name
        assert a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable, name
        assert a.shape == shapes.get(name, (T, B, H)), name


def test_freed_outputs_are_reused_but_never_while_alive():
    # Without a workspace, the memory of dropped output arrays is kept for the next call of
    # the same size; arrays still referenced (here f1.h, and a view of g1.dx) are never reused.
    p1, dh1 = make((7, 4, 3, 9), seed=11)
    p2, dh2 = make((7, 4, 3, 9), seed=12)
    f1, g1 = run(p1, dh1, "tanh")
    h1, dx_view = f1.h.copy(), g1.dx[2:]
    dx1 = g1.dx.copy()
    del g1
    for _ in range(3):
        f2, g2 = run(p2, dh2, "tanh")
        del f2, g2
    np.testing.assert_array_equal(f1.h, h1)
    np.testing.assert_array_equal(dx_view, dx1[2:])
    # Reused memory gives the same results as fresh memory.
    f3, g3 = run(p1, dh1, "tanh")
    np.testing.assert_array_equal(f3.h, h1)
    np.testing.assert_array_equal(g3.dx, dx1)
    # A dropped array's block comes back for the next array of its size (blocks kept from
    # earlier tests in this process handed back first, so that the only kept block of
    # this size is a's).
    rnnfast.release_memory()
    a = rnnfast.core._empty((1000,), np.dtype(np.float64))
    addr = a.__array_interface__["data"][0]
    del a
    b = rnnfast.core._empty((1000,), np.dtype(np.float64))
    assert b.__array_interface__["data"][0] == addr
    # release_memory hands the kept blocks back to the operating system.
    del b
    assert rnnfast.release_memory() >= 8000
    assert rnnfast.release_memory() == 0


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("shape", [(12, 10, 3, 40), (9, 13, 5, 60), (5, 3, 2, 7)])
def test_omega_with_dh_last_only_matches_dh_of_zeros(schedule, shape):
    # A loss read at the last step only (dh_last, no dh): Ω's ‖v_{t+1}‖² is taken from ‖δ_t‖²
    # instead of a second pass; the same numbers as the general path (dh of zeros), which
    # the reference tests check. On two threads the batch split also takes its weight
    # gradients per thread (BackwardWork::local).
    p, _ = make(shape, seed=9)
    T, B, _, H = shape
    dh_last = np.random.default_rng(10).standard_normal((B, H))
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], num_threads=2,
                          _schedule=schedule)
    kw = dict(omega=True, profile=True, num_threads=2, _schedule=schedule)
    g1 = rnnfast.backward(fwd, dh_last=dh_last, **kw)
    g0 = rnnfast.backward(fwd, np.zeros((T, B, H)), dh_last=dh_last, **kw)
    for k in ("W_in", "W_rec", "b", "h0", "u", "omega_grad", "dh_norm"):
        assert_close(getattr(g1, k), getattr(g0, k), 1e-13, 1e-15, what=k)
    assert g1.omega == pytest.approx(g0.omega, rel=1e-13)
    assert g1.omega_pairs == g0.omega_pairs


@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("shape", [(12, 10, 3, 40), (30, 7, 0, 9), (3, 5, 4, 6), (70, 8, 5, 50),
                                   (20, 6, 3, 200)])
def test_batch_split_weight_gradients_per_thread(shape, with_h0):
    # Two threads of a batch split take the weight gradients (and Ω's Σ c aᵀa) of their own
    # rows and add them up once (BackwardWork::local; Ω's (Σ c aᵀa)·W_rec path, T·B ≥ 2H):
    # the same as one thread, to rounding. Their own rows are gathered a chunk at a time
    # ((70, 8, 5, 50): several chunks) unless [h | u] is too wide ((20, 6, 3, 200)).
    p, dh = make(shape, seed=11, with_h0=with_h0)
    f1, g1 = run(p, dh, "tanh", num_threads=1)
    f2, g2 = run(p, dh, "tanh", num_threads=2, _schedule="batch")
    for k in ("W_in", "W_rec", "b", "h0", "u", "omega_grad", "dh_norm"):
        np.testing.assert_allclose(getattr(g2, k), getattr(g1, k), rtol=1e-12, atol=1e-13,
                                   err_msg=k)
    assert g2.omega == pytest.approx(g1.omega, rel=1e-12)
    assert g2.omega_pairs == g1.omega_pairs


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("shape", [(12, 10, 3, 40), (5, 3, 2, 7), (30, 7, 0, 9)])
@pytest.mark.parametrize("upstream", ["dh", "dh_last"])
def test_omega_alpha_folds_omega_into_W_rec(schedule, shape, upstream):
    # omega_alpha: dW_rec + α·∂Ω/∂W_rec from one product Σ a_tᵀ (h_{t-1} + α c_t v_t) (or, for
    # the per-thread products of a batch split, a scratch ∂Ω/∂W_rec added at the end); Ω's
    # two paths ((Σ c aᵀa)·W_rec, stored v), with and without h0, ragged or not.
    T, B, _, H = shape
    for with_h0, lengths in ((True, None), (False, None), (True, np.arange(B) % T + 1)):
        p, dh = make(shape, seed=12, with_h0=with_h0)
        fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"], num_threads=2,
                              _schedule=schedule, lengths=lengths)
        up = {"dh": dh} if upstream == "dh" else {"dh_last": dh[-1]}
        kw = dict(omega=True, profile=True, num_threads=2, _schedule=schedule, **up)
        g0 = rnnfast.backward(fwd, **kw)
        g1 = rnnfast.backward(fwd, omega_alpha=2.5, **kw)
        assert g1.omega_grad is None
        assert g1.omega == g0.omega and g1.omega_pairs == g0.omega_pairs
        assert_close(g1.W_rec, g0.W_rec + 2.5 * g0.omega_grad, 1e-13, 1e-15, what="W_rec")
        for k in ("W_in", "b", "h0", "u", "dh_norm"):
            assert_close(getattr(g1, k), getattr(g0, k), 1e-13, 1e-15, what=k)


def test_omega_alpha_checks():
    p, dh = make((4, 2, 3, 5))
    fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
    with pytest.raises(ValueError, match="omega_alpha"):
        rnnfast.backward(fwd, dh, omega=True, omega_alpha=float("nan"))
    g = rnnfast.backward(fwd, dh, omega_alpha=3.0)  # without omega: no Ω at all
    assert g.omega is None and g.omega_grad is None
    g0 = rnnfast.backward(fwd, dh)
    assert np.array_equal(g.W_rec, g0.W_rec)


# ----------------------------------------------------------------- the readout's products
# (N, K, O): one row, fewer rows than a tile, a partial panel of K and of O, O past a panel
# (50, 88: the PTB and music readouts), K past several panels, and enough flops for a team.
LINEAR_SHAPES = [(1, 1, 1), (3, 5, 2), (37, 13, 7), (20, 50, 4), (160, 70, 50), (200, 130, 88),
                 (1600, 500, 50), (90, 1025, 3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,K,O", LINEAR_SHAPES)
def test_linear_and_its_gradients_match_numpy_on_every_thread_count(N, K, O, dtype):
    rng = np.random.default_rng([N, K, O])
    x, W = rng.standard_normal((N, K)), rng.standard_normal((O, K))
    b, dz = rng.standard_normal(O), rng.standard_normal((N, O))
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(K)) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-13 * K)
    c = [a.astype(dtype) for a in (x, W, b, dz)]
    want_z = c[0].astype(float) @ c[1].astype(float).T + c[2]
    want_dx = c[3].astype(float) @ c[1].astype(float)
    want_dW = c[3].astype(float).T @ c[0].astype(float)
    z1 = rnnfast.core.linear(c[0], c[1], c[2], num_threads=1)
    dx1, dW1 = rnnfast.core.linear_grads(c[3], c[0], c[1], num_threads=1)
    assert z1.dtype == dx1.dtype == dW1.dtype == dtype
    assert z1.shape == (N, O) and dx1.shape == (N, K) and dW1.shape == (O, K)
    np.testing.assert_allclose(z1, want_z, **tol)
    np.testing.assert_allclose(dx1, want_dx, **tol)
    np.testing.assert_allclose(dW1, want_dW, **tol)
    np.testing.assert_allclose(rnnfast.core.linear(c[0], c[1]), want_z - c[2], **tol)  # no b
    for n in (2, 3):  # each element one thread's sum in a fixed order: bit-identical
        np.testing.assert_array_equal(rnnfast.core.linear(c[0], c[1], c[2], num_threads=n), z1)
        dxn, dWn = rnnfast.core.linear_grads(c[3], c[0], c[1], num_threads=n)
        np.testing.assert_array_equal(dxn, dx1)
        np.testing.assert_array_equal(dWn, dW1)


def test_linear_takes_any_strides_and_empty_dimensions():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 40))[:, ::2]  # (9, 20), not contiguous
    W = np.asfortranarray(rng.standard_normal((6, 20)))
    np.testing.assert_allclose(rnnfast.core.linear(x, W), x @ W.T, rtol=1e-12)
    dz = rng.standard_normal((6, 9)).T  # (9, 6)
    dx, dW = rnnfast.core.linear_grads(dz, x, W)
    np.testing.assert_allclose(dx, dz @ W, rtol=1e-12)
    np.testing.assert_allclose(dW, dz.T @ x, rtol=1e-12)
    assert rnnfast.core.linear(np.zeros((0, 20)), W).shape == (0, 6)
    dx, dW = rnnfast.core.linear_grads(np.zeros((0, 6)), np.zeros((0, 20)), W)
    assert dx.shape == (0, 20) and np.array_equal(dW, np.zeros((6, 20)))
    for N, K, O in ((300, 0, 50), (300, 40, 0)):  # no features, no outputs, two threads
        x, W, dz = rng.random((N, K)), rng.random((O, K)), rng.random((N, O))
        b = rng.random(O)
        np.testing.assert_allclose(rnnfast.core.linear(x, W, b, num_threads=2), x @ W.T + b)
        dx, dW = rnnfast.core.linear_grads(dz, x, W, num_threads=2)
        np.testing.assert_allclose(dx, dz @ W)
        np.testing.assert_allclose(dW, dz.T @ x)


def test_linear_rejects_bad_input_with_a_clear_message():
    x, W = np.ones((4, 3)), np.ones((2, 3))
    with pytest.raises(TypeError, match="W: dtype float32 differs from x's float64"):
        rnnfast.core.linear(x, W.astype(np.float32))
    with pytest.raises(TypeError, match="x: dtype float32 differs from dz's float64"):
        rnnfast.core.linear_grads(np.ones((4, 2)), x.astype(np.float32), W)
    with pytest.raises(TypeError, match="x: expected a float32 or float64 array"):
        rnnfast.core.linear(x.astype(int), W)
    with pytest.raises(ValueError, match=r"W: expected shape \(O, K\) = \(2, 3\), got \(2, 4\)"):
        rnnfast.core.linear(x, np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"b: expected shape \(O,\)"):
        rnnfast.core.linear(x, W, np.ones(3))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, K\)"):
        rnnfast.core.linear(np.ones(3), W)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, K\) = \(5, 3\)"):
        rnnfast.core.linear_grads(np.ones((5, 2)), x, W)
    with pytest.raises(ValueError, match=r"W: expected shape \(O, K\) = \(2, 3\)"):
        rnnfast.core.linear_grads(np.ones((4, 2)), x, np.ones((3, 3)))
    with pytest.raises(ValueError, match="num_threads"):
        rnnfast.core.linear(x, W, num_threads=0)


# ----------------------------------------------------------------- the readout's loss
def _loss_reference(kind, z, t, w, scale):
    """float64 per-row definitions (rnnfast.nn.losses' docstring): Σ w·loss, outputs, dz."""
    z = z.astype(float)
    N, O = z.shape
    w = np.ones(N) if w is None else w
    if kind == "softmax_ce":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        y = e / e.sum(axis=1, keepdims=True)
        c = np.where(w > 0, t, 0)
        loss = -np.log(y[np.arange(N), c])
        d = y.copy()
        d[np.arange(N), c] -= 1
    elif kind == "sigmoid_bce":
        y = 1 / (1 + np.exp(-z))
        tt = np.where(w[:, None] > 0, t, 0).astype(float)
        loss = (np.logaddexp(0, z) - tt * z).sum(axis=1)
        d = y - tt
    else:
        y = z
        diff = z - np.where(w[:, None] > 0, t, 0).astype(float)
        loss, d = (diff ** 2).sum(axis=1), 2 * diff
    return float((w * loss).sum()), y, d * (w * scale)[:, None]


# (N, O): one row, a partial vector of outputs, PTB's and music's readouts (a team each)
LOSS_SHAPES = [(1, 1), (5, 3), (37, 17), (20, 4), (1600, 50), (800, 88)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["softmax_ce", "sigmoid_bce", "linear_mse"])
@pytest.mark.parametrize("N,O", LOSS_SHAPES)
def test_readout_loss_matches_its_definition_on_every_thread_count(N, O, kind, dtype):
    rng = np.random.default_rng([N, O, len(kind)])
    z = (3 * rng.standard_normal((N, O))).astype(dtype)
    if kind == "softmax_ce":
        t = rng.integers(0, O, N)
    elif kind == "sigmoid_bce":
        t = (rng.random((N, O)) < 0.2).astype(dtype)
    else:
        t = rng.standard_normal((N, O)).astype(dtype)
    w = rng.random(N) * 2
    w[::3] = 0  # padding: its targets are never read
    padded = t.copy()
    padded[::3] = -1 if kind == "softmax_ce" else np.nan
    tol = dict(rtol=2e-6, atol=2e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for weights, tt in ((None, t), (w, padded)):
        want_total, want_y, want_dz = _loss_reference(kind, z, tt, weights, 0.25)
        total, y, dz = rnnfast.core.readout_loss(kind, z, tt, weights, scale=0.25, num_threads=1)
        assert isinstance(total, float)
        assert total == pytest.approx(want_total, rel=1e-6 if dtype == np.float32 else 1e-12)
        assert y.dtype == dz.dtype == dtype and y.shape == dz.shape == (N, O)
        np.testing.assert_allclose(y, want_y, **tol)
        np.testing.assert_allclose(dz, want_dz, **tol)
        for n in (2, 3):  # each row one thread's, row losses added in order: bit-identical
            tn, yn, dzn = rnnfast.core.readout_loss(kind, z, tt, weights, scale=0.25, num_threads=n)
            assert tn == total
            np.testing.assert_array_equal(yn, y)
            np.testing.assert_array_equal(dzn, dz)
        t2, y2, dz2 = rnnfast.core.readout_loss(kind, z, tt, weights, grad=False)
        assert t2 == total and dz2 is None
        np.testing.assert_array_equal(y2, y)


def test_readout_loss_outputs_only_and_extreme_scores():
    z = np.array([[1e4, -1e4, 0.0], [-80.0, 90.0, 3.0]], np.float32)
    y = rnnfast.core.readout_loss("softmax_ce", z, grad=False)[1]
    np.testing.assert_allclose(y, [[1, 0, 0], [0, 1, 0]], atol=1e-30)
    y = rnnfast.core.readout_loss("sigmoid_bce", z, grad=False)[1]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    np.testing.assert_allclose(y, [[1, 0, 0.5], [sig(-80.0), 1, sig(3.0)]], rtol=1e-6)
    assert rnnfast.core.readout_loss("linear_mse", z, grad=False) == (0.0, z, None)
    for kind, t in (("softmax_ce", np.array([1, 0])),
                    ("sigmoid_bce", np.eye(2, 3, dtype=np.float32))):
        total, _, dz = rnnfast.core.readout_loss(kind, z, t)
        assert np.isfinite(total) and np.all(np.isfinite(dz))
    # the loss of a saturated wrong answer is the score gap, not inf: 2e4 nats for row 0
    total = rnnfast.core.readout_loss("softmax_ce", z[:1], np.array([1]), grad=False)[0]
    assert total == pytest.approx(2e4)
    assert rnnfast.core.readout_loss("softmax_ce", np.zeros((0, 4)), np.zeros(0, int))[0] == 0.0


def test_readout_loss_rejects_bad_input_with_a_clear_message():
    z = np.zeros((4, 3))
    with pytest.raises(ValueError, match="kind: expected one of"):
        rnnfast.core.readout_loss("hinge", z, np.zeros(4, int))
    with pytest.raises(ValueError, match=r"targets hold class 3, outside the valid range \[0, 3\)"):
        rnnfast.core.readout_loss("softmax_ce", z, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"targets hold class -1"):
        rnnfast.core.readout_loss("softmax_ce", z, np.array([0, -1, 2, 2]), np.ones(4))
    with pytest.raises(TypeError, match="targets: expected integer classes"):
        rnnfast.core.readout_loss("softmax_ce", z, np.zeros(4))
    with pytest.raises(ValueError, match=r"targets: expected shape \(N,\) = \(4,\)"):
        rnnfast.core.readout_loss("softmax_ce", z, np.zeros(3, int))
    with pytest.raises(TypeError, match="targets: dtype float32 differs from z's float64"):
        rnnfast.core.readout_loss("sigmoid_bce", z, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"targets: expected shape \(N, O\) = \(4, 3\)"):
        rnnfast.core.readout_loss("linear_mse", z, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"weights: expected shape \(N,\)"):
        rnnfast.core.readout_loss("linear_mse", z, z, np.ones(5))
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="weights: expected finite, non-negative"):
            rnnfast.core.readout_loss("linear_mse", z, z, np.array([1, bad, 1, 1]))
    with pytest.raises(ValueError, match="grad=True needs targets"):
        rnnfast.core.readout_loss("sigmoid_bce", z)
    with pytest.raises(ValueError, match=r"z: expected shape \(N, O\)"):
        rnnfast.core.readout_loss("sigmoid_bce", np.zeros(3), grad=False)
    with pytest.raises(ValueError, match="num_threads"):
        rnnfast.core.readout_loss("sigmoid_bce", z, z, num_threads=0)


# ----------------------------------------------------------------- the SGD step
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_sgd_step_rounds_as_numpy(dtype, num_threads):
    # p -= lr·g with lr·g rounded first, as NumPy: bit-identical (a fused multiply-add would
    # differ in the last bit of many elements). 300,001 elements run on several threads.
    rng = np.random.default_rng(5)
    shapes = [(0,), (1,), (17,), (50, 50), (300_001,), (3, 4, 5)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [(rng.standard_normal(s) * 1e3).astype(dtype) for s in shapes]
    lr = 0.0123456789
    want = [p.copy() for p in params]
    for p, g in zip(want, grads):
        p -= dtype(lr) * g
    rnnfast.core.sgd_step(params, grads, lr, num_threads=num_threads)
    for p, w in zip(params, want):
        np.testing.assert_array_equal(p, w)


def test_sgd_step_other_arrays_and_errors():
    rng = np.random.default_rng(6)
    base = rng.standard_normal((40, 30)).astype(np.float32)
    p_view = base[:, ::3]  # not contiguous: updated in place by NumPy
    g_view = rng.standard_normal(p_view.shape).astype(np.float32)
    p32 = rng.standard_normal(7).astype(np.float32)
    g64 = rng.standard_normal(7)  # another dtype than its parameter
    want_view, want32 = p_view.copy(), p32.copy()
    want_view -= np.float32(0.5) * g_view
    want32 -= np.float32(0.5) * g64
    rnnfast.core.sgd_step((p for p in [p_view, p32]), [g_view, g64], 0.5)
    np.testing.assert_array_equal(p_view, want_view)
    np.testing.assert_array_equal(base[:, ::3], want_view)
    np.testing.assert_array_equal(p32, want32)
    with pytest.raises(ValueError, match="2 parameters but 1 gradients"):
        rnnfast.core.sgd_step([p32, p32], [g64], 0.1)
    with pytest.raises(ValueError, match=r"gradient of shape \(6,\)"):
        rnnfast.core.sgd_step([p32], [g64[:6]], 0.1)
    frozen = np.ones(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        rnnfast.core.sgd_step([frozen], [np.ones(3)], 0.1)
    with pytest.raises(ValueError, match="num_threads"):
        rnnfast.core.sgd_step([p32], [p32.copy()], 0.1, num_threads=0)
    with pytest.raises(TypeError, match="must be NumPy arrays, got list"):
        rnnfast.core.sgd_step([[1.0, 2.0]], [np.ones(2)], 0.1)


# ----------------------------------------------------------------- clipping's norms
def test_squared_norms_accumulate_in_float64_for_any_array():
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(n).astype(dt) for n in (0, 1, 15, 16, 17, 250_000)
              for dt in (np.float32, np.float64)]
    arrays += [rng.standard_normal((40, 30))[:, ::3].astype(np.float32),  # not contiguous
               np.arange(-5, 7).reshape(3, 4), [[1.5, 2.0]], np.float32(3.0),
               np.ones(10, np.float16)]
    got = rnnfast.core.squared_norms(arrays)
    assert len(got) == len(arrays) and all(type(v) is float for v in got)
    for a, v in zip(arrays, got):
        x = np.asarray(a, dtype=np.float64).ravel()
        assert v == pytest.approx(math.fsum(x * x), rel=1e-13, abs=0)  # fsum: exactly rounded
    big = np.full(10, 1e30, np.float32)  # each square overflows float32, not float64
    assert rnnfast.core.squared_norms([big])[0] == pytest.approx(1e61, rel=1e-6)
    assert np.isnan(rnnfast.core.squared_norms([np.array([1.0, np.nan], np.float32)])[0])
    assert rnnfast.core.squared_norms((a for a in arrays[:3])) == got[:3]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="the flush is MXCSR's DAZ/FTZ bits, x86 only")
@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_flush_denormals_and_restore_the_callers_mode(threads):
    # A sigmoid network at N(0, 0.01²), the paper's sigmoid init: the error shrinks ~50× a step
    # back in time, so over 40 steps it would pass through float32's denormals (thousands of
    # them in dx without the flush; each costs a microcode assist on Intel cores).
    rng = np.random.default_rng(3)
    T, B, I, H = 40, 20, 6, 50
    u = rng.standard_normal((T, B, I)).astype(np.float32)
    W_in = (rng.standard_normal((H, I)) * 0.01).astype(np.float32)
    W_rec = (rng.standard_normal((H, H)) * 0.01).astype(np.float32)
    b = np.zeros(H, np.float32)
    fwd = rnnfast.forward(u, W_in, W_rec, b, activation="sigmoid", num_threads=threads)
    g = rnnfast.backward(fwd, dh_last=rng.standard_normal((B, H)).astype(np.float32),
                         omega=True, num_threads=threads)
    tiny = np.finfo(np.float32).tiny
    a = np.abs(g.dx)
    assert (a[0] == 0).all() and (a[-1] > 0).all()  # it vanished on the way back
    assert not ((a > 0) & (a < tiny)).any()  # as 0, not through denormals
    # The caller's floating-point mode is back: NumPy still makes and keeps denormals.
    x = np.array([tiny], np.float32) / np.float32(4)
    assert 0 < x[0] < tiny
