"""Property-based tests (Hypothesis): random shapes, dtypes, memory layouts (C, Fortran,
strided, negative strides, read-only, from a bytes buffer), thread counts and schedules,
activations, Ω and profile flags, h0 / dh / dh_last, and one Workspace reused across shapes
(with h0 taken from its previous result) — every forward and backward compared with the
NumPy reference of tests/reference.py.

Profiles: "short" by default (~20 s); RNNFAST_HYPOTHESIS=long runs 10,000 cases of each test
(docs/hardening.md records a run)."""

import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rnnfast  # noqa: E402
import reference as ref  # noqa: E402

settings.register_profile("short", max_examples=120, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("RNNFAST_HYPOTHESIS", "short")
settings.load_profile(PROFILE)

LAYOUTS = ("C", "F", "strided", "negative", "readonly", "frombuffer")
THREADS = (None, 1, 2, 3, 10**6)
SCHEDULES = ("auto", "serial", "batch", "hidden")
_WORKSPACE = rnnfast.Workspace()  # reused by every example that asks for one, across shapes
CASES = {"forward_backward": 0, "workspace_chain": 0}


def _layout(a: np.ndarray, how: str) -> np.ndarray:
    """The values of ``a`` in another memory layout (the kernels must not care)."""
    if how == "F":
        return np.asfortranarray(a)
    if how == "strided" and a.ndim:
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if how == "negative" and a.ndim:
        return np.ascontiguousarray(a[::-1])[::-1]
    if how == "readonly":
        a = a.copy()
        a.setflags(write=False)
        return a
    if how == "frombuffer":
        return np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape)
    return a


@st.composite
def problems(draw):
    T = draw(st.integers(1, 6))
    B = draw(st.integers(1, 5))
    I = draw(st.integers(0, 5))
    H = draw(st.sampled_from([1, 2, 3, 5, 8, 15, 16, 17, 31, 33, 50, 70]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([0.3, 0.9, 1.5]))
    p = dict(u=rng.standard_normal((T, B, I)), W_in=rng.standard_normal((H, I)) * 0.5,
             W_rec=rng.standard_normal((H, H)) * scale / np.sqrt(H),
             b=rng.standard_normal(H) * 0.1,
             h0=rng.standard_normal((B, H)) * 0.5 if draw(st.booleans()) else None)
    p = {k: None if v is None else v.astype(dtype) for k, v in p.items()}
    upstream = draw(st.sampled_from(["dh", "dh_last", "both"]))
    dh = rng.standard_normal((T, B, H)).astype(dtype) if upstream != "dh_last" else None
    dh_last = rng.standard_normal((B, H)).astype(dtype) if upstream != "dh" else None
    layouts = {k: draw(st.sampled_from(LAYOUTS)) for k in ("u", "W_in", "W_rec", "b", "h0", "dh")}
    return p, dh, dh_last, layouts


def _tol(dtype):
    return 1e-9 if dtype == np.float64 else 2e-4


def _close(a, b, rtol, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(initial=0.0), 1.0)
    err = np.abs(a - b).max(initial=0.0)
    assert err <= rtol * scale, f"{what}: max error {err:.3e} (scale {scale:.3e})"


def _reference(p, dh, dh_last, activation):
    T, B, _ = p["u"].shape
    H = p["W_rec"].shape[0]
    f64 = {k: None if v is None else np.asarray(v, np.float64) for k, v in p.items()}
    total = np.zeros((T, B, H)) if dh is None else np.array(dh, np.float64)
    if dh_last is not None:
        total[-1] += dh_last
    h, x = ref.forward(f64["u"], f64["W_in"], f64["W_rec"], f64["b"], f64["h0"], activation)
    g = ref.backward(f64["u"], f64["W_in"], f64["W_rec"], f64["b"], f64["h0"], activation, total)
    return h, x, g


@given(problem=problems(), activation=st.sampled_from(rnnfast.ACTIVATIONS),
       threads=st.sampled_from(THREADS), schedule=st.sampled_from(SCHEDULES),
       omega=st.booleans(), profile=st.booleans(), input_grad=st.booleans(),
       keep_x=st.booleans(), use_workspace=st.booleans())
def test_forward_backward_match_the_reference(problem, activation, threads, schedule, omega,
                                              profile, input_grad, keep_x, use_workspace):
    CASES["forward_backward"] += 1
    p, dh, dh_last, layouts = problem
    dtype = p["u"].dtype
    h_ref, x_ref, g_ref = _reference(p, dh, dh_last, activation)
    q = {k: None if v is None else _layout(v, layouts[k]) for k, v in p.items()}
    dh_in = None if dh is None else _layout(dh, layouts["dh"])
    ws = _WORKSPACE if use_workspace else None
    fwd = rnnfast.forward(q["u"], q["W_in"], q["W_rec"], q["b"], q["h0"], activation=activation,
                          keep_x=keep_x, num_threads=threads, workspace=ws, _schedule=schedule)
    rtol = _tol(dtype)
    assert fwd.h.dtype == dtype and fwd.h.flags.c_contiguous and fwd.h.flags.writeable
    _close(fwd.h, h_ref, rtol, "h")
    if keep_x:
        _close(fwd.x, x_ref, rtol, "x")
    g = rnnfast.backward(fwd, dh_in, dh_last=dh_last, omega=omega, profile=profile,
                         input_grad=input_grad, num_threads=threads, workspace=ws,
                         _schedule=schedule)
    for k in ("W_in", "W_rec", "b", "h0", "dx"):
        _close(getattr(g, k), g_ref[k], rtol * 10, k)
        assert getattr(g, k).dtype == dtype and getattr(g, k).flags.writeable
    if input_grad:
        _close(g.u, g_ref["u"], rtol * 10, "u")
    else:
        assert g.u is None
    if profile:
        _close(g.dh_norm, g_ref["dh_norm"], rtol * 10, "dh_norm")
    if omega and dtype == np.float64:  # Ω divides by ‖δ‖²: in float32 only its presence
        _close(g.omega, g_ref["omega"], 1e-7, "omega")
        _close(g.omega_grad, g_ref["omega_grad"], 1e-7, "omega_grad")
    if omega:
        assert np.isfinite(g.omega) and g.omega_grad.shape == p["W_rec"].shape


@given(problem=problems(), activation=st.sampled_from(rnnfast.ACTIVATIONS),
       threads=st.sampled_from(THREADS), segments=st.integers(2, 4))
def test_workspace_chain_of_segments_matches_one_pass(problem, activation, threads, segments):
    # Truncated BPTT on one workspace: each segment starts from the previous one's h_last, an
    # array inside the workspace that the next call overwrites.
    CASES["workspace_chain"] += 1
    p, dh, dh_last, _ = problem
    dtype = p["u"].dtype
    u = np.concatenate([p["u"]] * segments)
    h_ref = _reference(dict(p, u=u), None, np.zeros((u.shape[1], p["W_rec"].shape[0])),
                       activation)[0]
    ws = rnnfast.Workspace()
    h0 = p["h0"]
    T = p["u"].shape[0]
    for s in range(segments):
        h0_value = None if h0 is None else np.array(h0)  # h0 lies in ws's h, overwritten next
        fwd = rnnfast.forward(p["u"], p["W_in"], p["W_rec"], p["b"], h0, activation=activation,
                              num_threads=threads, workspace=ws)
        _close(fwd.h, h_ref[s * T:(s + 1) * T], _tol(dtype) * 10, f"segment {s}")
        g = rnnfast.backward(fwd, dh, dh_last=dh_last, num_threads=threads, workspace=ws)
        g_ref = _reference(dict(p, h0=h0_value), dh, dh_last, activation)[2]
        _close(g.W_rec, g_ref["W_rec"], _tol(dtype) * 100, f"segment {s} W_rec")
        h0 = fwd.h_last


def test_case_counts_reported(request):
    # printed with -s; the long profile's counts go to docs/hardening.md
    print(f"\nhypothesis profile {PROFILE}: {CASES}")
