"""Gradient-flow diagnostics: the analytical picture of Pascanu, Mikolov & Bengio (2013, §2.1).

How the error signal travels back through time in a vanilla RNN, measured on a model
(:class:`rnnfast.nn.model.RNNModel`) and a minibatch. Conventions (those of :mod:`rnnfast.core`)::

    x_t = W_rec h_{t-1} + W_in u_t + b,   h_t = σ(x_t),   t = 1..T,   h_0 the initial state

Arrays are indexed from 0: array index ``j`` along time holds the paper's step ``t = j + 1``
(``fwd.h[j]`` is h_{j+1}). E is the model's minibatch loss exactly as
:meth:`RNNModel.loss_and_grad` computes it (its normalisation included), ``E = Σ_t E_t`` where
E_t is the part of the cost read at step t (only t = T for a task read at the last step).
Every norm is the Euclidean norm of one example's row (shape ``(T, B)`` results), accumulated
in float64 as a sum of squares: a norm below about 1e-162 (whose square underflows even as a
subnormal double) reads as 0, and the ratios there as NaN.

What is computed
----------------
:func:`gradient_flow`
    ``dh_norm[j] = ‖∂E/∂h_{j+1}‖`` — the total back-propagated error at every step, the
    "gradient-flow profile". It comes from ONE call of the C++ backward sweep with
    ``profile=True`` (no Python loop over steps), with Ω fused into the same sweep.
    Also the Ω ratios, see below.
:func:`temporal_contributions`
    For chosen steps t: ``‖∂E_t/∂h_t · ∂h_t/∂h_k‖`` for every k ≤ t — the paper's temporal
    components (eq. 4-5), how much of the error injected at step t survives k steps back. The
    chosen steps are replicated along the batch axis and run through ONE backward sweep with
    the error injected only at step t in replica t (the contributions are linear in the
    injected error, so this equals one backward call per t).
:func:`spectral_report`
    The largest singular value λ₁ and the spectral radius ρ of W_rec, against the bound 1/γ.
:func:`diagnose`
    All three on one model and batch; :func:`init_comparison` runs it on freshly initialised
    models under several of the paper's initialisations.

The Ω ratios (eq. 9-10)
-----------------------
With δ_{k+1} = ∂E/∂h_{k+1} (the total BPTT error) and a_{k+1} = δ_{k+1} ⊙ σ'(x_{k+1}) =
∂E/∂x_{k+1} (the core's ``g.dx``), the one-step back-propagated error is
``v_k = δ_{k+1} · ∂h_{k+1}/∂h_k = a_{k+1} W_rec`` (row-vector convention; for k = 0 this is
``g.h0``). :func:`gradient_flow` computes all of them with ONE matrix product
``g.dx.reshape(T·B, H) @ W_rec`` and returns, for k = 0..T-1 (array index k)::

    ratio[k]   = ‖v_k‖ / ‖δ_{k+1}‖                               (h-space; authors' code)
    ratio_x[k] = ‖v_k ⊙ σ'(x_k)‖ / ‖a_{k+1}‖,   k ≥ 1             (x-space; paper's eq. 9)

where ``v_k ⊙ σ'(x_k) = ∂E/∂x_{k+1} · ∂x_{k+1}/∂x_k``; ``ratio_x[0]`` is NaN (h_0 has no
pre-activation), and a ratio is NaN where its denominator is exactly 0. ``omega_valid``
marks the pairs the authors' Ω counts, ‖δ_{k+1}‖² ≥ ``omega_bound``; Ω is the mean over them
of ``(ratio² − 1)²``. :func:`gradient_flow` returns the core's fused value as ``omega`` (it
equals that mean, which the tests check). A ratio below 1 means the error shrinks from
one step to the previous one (vanishing), above 1 that it grows.

The singular-value conditions (§2.1)
------------------------------------
With ``‖diag σ'(x)‖ ≤ γ`` (γ = 1 for tanh, 1/4 for the logistic sigmoid, 1 for ReLU),
``‖∂h_{k+1}/∂h_k‖ ≤ γ λ₁``, hence ``‖∂h_t/∂h_k‖ ≤ (γ λ₁)^{t-k}``:

* λ₁ < 1/γ is SUFFICIENT for the long-term components to vanish (exponentially fast);
* λ₁ > 1/γ is NECESSARY for them to explode (but does not make them explode).

For a linear network (σ' = 1), ∂h_t/∂h_k = W_rec^{t-k} (in the column convention):
spectral radius ρ < 1 is sufficient for vanishing and ρ > 1 necessary for explosion.
Since ρ ≤ λ₁, λ₁ < 1/γ implies ρ < 1/γ.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional

import numpy as np

from .. import core as _rnnfast

from ..nn import activations as _act
from ..nn import init as _init
from ..nn import losses as _losses

__all__ = [
    "GAMMA",
    "gamma",
    "SpectralReport",
    "spectral_report",
    "spectral_trajectory",
    "GradientFlow",
    "gradient_flow",
    "TemporalContributions",
    "temporal_contributions",
    "Diagnostics",
    "default_steps",
    "diagnose",
    "init_comparison",
]

#: Upper bound γ of |σ'| for each activation.
GAMMA = _act.GAMMA
gamma = _act.gamma


class SpectralReport(NamedTuple):
    """Spectrum of W_rec against the bound of the paper's §2.1.

    Attributes
    ----------
    sigma_max : float
        λ₁, the largest singular value of W_rec (NaN for a non-finite matrix).
    rho : float
        Spectral radius ρ (largest |eigenvalue|).
    gamma : float
        Bound on |σ'| for ``activation``.
    bound : float
        1/γ.
    activation : str
    vanishing_guaranteed : bool
        The sufficient condition for vanishing holds: λ₁ < 1/γ (non-linear) or ρ < 1
        (linear).
    explosion_possible : bool
        The necessary condition for explosion holds: λ₁ > 1/γ (non-linear) or ρ > 1
        (linear).
    """

    sigma_max: float
    rho: float
    gamma: float
    bound: float
    activation: str
    vanishing_guaranteed: bool
    explosion_possible: bool

    @property
    def per_step_bound(self) -> float:
        """γ·λ₁: the bound on ‖∂h_{k+1}/∂h_k‖ (ρ for a linear network, the asymptotic rate)."""
        return self.rho if self.activation == "linear" else self.gamma * self.sigma_max


def _square(name, W):
    W = np.asarray(W)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise ValueError(f"{name}: expected a square (H, H) matrix, got shape {W.shape}")
    if not (np.issubdtype(W.dtype, np.floating) or np.issubdtype(W.dtype, np.integer)):
        raise TypeError(f"{name}: expected a real matrix, got dtype {W.dtype}")
    return W.astype(np.float64, copy=False)


def spectral_report(W_rec, activation: str = "tanh") -> SpectralReport:
    """λ₁ and ρ of W_rec and the paper's conditions for vanishing / exploding gradients.

    With ``‖diag σ'‖ ≤ γ`` (γ = 1 tanh, 1/4 sigmoid, 1 ReLU), λ₁ < 1/γ is sufficient for the
    long-term components of the gradient to vanish and λ₁ > 1/γ is necessary for them to
    explode. For ``activation="linear"`` the conditions are on ρ: ρ < 1 sufficient to vanish,
    ρ > 1 necessary to explode.

    Parameters
    ----------
    W_rec : array (H, H)
    activation : {"tanh", "sigmoid", "relu", "linear"}

    Returns
    -------
    SpectralReport
    """
    g = gamma(activation)
    W = _square("W_rec", W_rec)
    if np.all(np.isfinite(W)):
        sigma = float(np.linalg.norm(W, 2))
        rho = float(_init.spectral_radius(W))
    else:
        sigma = rho = math.nan
    bound = 1.0 / g
    if activation == "linear":
        vanish, explode = rho < 1.0, rho > 1.0
    else:
        vanish, explode = sigma < bound, sigma > bound
    return SpectralReport(sigma, rho, g, bound, activation, bool(vanish), bool(explode))


def spectral_trajectory(W_recs, activation: str = "tanh"):
    """λ₁ and ρ for a sequence of W_rec matrices (e.g. snapshots taken during training).

    Parameters
    ----------
    W_recs : iterable of arrays (H, H), or one array (N, H, H)
    activation : str
        Only checked (the bound is ``1 / gamma(activation)``).

    Returns
    -------
    (sigma_max, rho) : (ndarray (N,), ndarray (N,)) float64
    """
    gamma(activation)
    sig, rho = [], []
    for i, W in enumerate(W_recs):
        rep = spectral_report(_square(f"W_recs[{i}]", W), activation)
        sig.append(rep.sigma_max)
        rho.append(rep.rho)
    return np.asarray(sig, dtype=np.float64), np.asarray(rho, dtype=np.float64)


# ----------------------------------------------------------------------------- helpers


def _check_model(model):
    from ..nn.model import RNNModel

    if not isinstance(model, RNNModel):
        raise TypeError(f"model: expected an rnnfast.nn.model.RNNModel, got {type(model).__name__}")


def _inputs(model, u):
    u = np.asarray(u)
    if u.ndim != 3 or u.shape[2] != model.n_in or u.shape[0] < 1 or u.shape[1] < 1:
        raise ValueError(f"u: expected shape (T, B, {model.n_in}) with T, B ≥ 1, got {u.shape}")
    if not (np.issubdtype(u.dtype, np.number) or u.dtype == bool):
        raise TypeError(f"u: expected a numeric array, got dtype {u.dtype}")
    return np.ascontiguousarray(u, dtype=model.dtype)


def _row_norm(a):
    """Euclidean norm over the last axis in float64: (..., H) -> (...)."""
    a = np.asarray(a, dtype=np.float64)
    return np.sqrt(np.einsum("...h,...h->...", a, a))


def _direct_loss(model, fwd, targets, mask):
    """The model's readout and loss on ``fwd.h``: a LossResult whose ``dh`` (T, B, H) or
    ``dh_last`` (B, H) is the direct loss gradient ∂⁺E/∂h_t."""
    p = model.params
    r = _losses.loss_and_grad(fwd.h, p["W_out"], p["b_out"], targets, kind=model.loss,
                              at=model.at, mask=mask, normalize=model.normalize)
    return r


def _bound(omega_bound):
    b = float(omega_bound)
    if not b >= 0.0:
        raise ValueError(f"omega_bound: expected a non-negative number, got {omega_bound!r}")
    return b


# ----------------------------------------------------------------------------- profile


class GradientFlow(NamedTuple):
    """The gradient-flow profile of one minibatch (see :func:`gradient_flow`).

    Time index j (0-based) of the (T, B) arrays is the paper's step j + 1, except for the
    Ω ratios, whose index k is the pair (h_k → h_{k+1}), k = 0..T-1.

    Attributes
    ----------
    loss : float
        E, the model's minibatch loss.
    dh_norm : ndarray (T, B) float64
        ‖∂E/∂h_{j+1}‖, the total BPTT error at every step (from the C++ profile).
    dx_norm : ndarray (T, B) float64
        ‖∂E/∂x_{j+1}‖ (the paper's x-space error).
    direct_norm : ndarray (T, B) float64
        ‖∂⁺E/∂h_{j+1}‖, the error injected by the cost read at that step (zero where none).
    ratio : ndarray (T, B) float64
        r_k = ‖∂E/∂h_{k+1} · ∂h_{k+1}/∂h_k‖ / ‖∂E/∂h_{k+1}‖; NaN where ∂E/∂h_{k+1} = 0.
    ratio_x : ndarray (T, B) float64
        The paper's x-space ratio ‖∂E/∂x_{k+1} · ∂x_{k+1}/∂x_k‖ / ‖∂E/∂x_{k+1}‖; NaN at
        k = 0 and where ∂E/∂x_{k+1} = 0.
    omega_valid : ndarray (T, B) bool
        The pairs Ω counts: ‖∂E/∂h_{k+1}‖² ≥ ``omega_bound``.
    omega : float
        Ω in the authors' form, the mean of (ratio² − 1)² over the ``omega_valid`` pairs
        (computed by the core in its fused sweep).
    omega_pairs : int
        Number of valid (step, example) pairs.
    spectrum : SpectralReport
        Of the model's W_rec.
    dh : ndarray (T, B, H) or None
        The vectors ∂E/∂h_{j+1} themselves, with ``keep_vectors=True``.
    """

    loss: float
    dh_norm: np.ndarray
    dx_norm: np.ndarray
    direct_norm: np.ndarray
    ratio: np.ndarray
    ratio_x: np.ndarray
    omega_valid: np.ndarray
    omega: float
    omega_pairs: int
    spectrum: SpectralReport
    dh: Optional[np.ndarray] = None

    @property
    def steps(self) -> np.ndarray:
        """The paper's step numbers 1..T of the ``dh_norm`` rows, (T,)."""
        return np.arange(1, self.dh_norm.shape[0] + 1)

    def profile(self, stat: str = "median") -> np.ndarray:
        """One curve over the steps: ``stat`` ("median", "mean" or "geomean") over the
        examples of ``dh_norm``, (T,). Zeros are left out of the geometric mean."""
        return _reduce(self.dh_norm, stat)

    def relative(self) -> np.ndarray:
        """dh_norm divided by each example's value at the last step, (T, B): how the error
        seen at h_T is scaled on its way back (exactly ‖∂E/∂h_T · ∂h_T/∂h_k‖/‖∂E/∂h_T‖ when
        the cost is read at the last step only). NaN where the last value is 0."""
        last = self.dh_norm[-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(last > 0, self.dh_norm / np.where(last > 0, last, 1.0), np.nan)


def _reduce(a, stat):
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if stat == "median":
            ok = np.isfinite(a)
            out = np.full(a.shape[0], np.nan)
            rows = ok.any(axis=1)
            if rows.any():
                out[rows] = np.nanmedian(np.where(ok, a, np.nan)[rows], axis=1)
            return out
        if stat == "mean":
            ok = np.isfinite(a)
            cnt = ok.sum(axis=1)
            s = np.where(ok, a, 0.0).sum(axis=1)
            return np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
        if stat == "geomean":
            ok = np.isfinite(a) & (a > 0)
            cnt = ok.sum(axis=1)
            s = np.where(ok, np.log(np.where(ok, a, 1.0)), 0.0).sum(axis=1)
            return np.where(cnt > 0, np.exp(s / np.maximum(cnt, 1)), np.nan)
    raise ValueError(f"stat: expected 'median', 'mean' or 'geomean', got {stat!r}")


def gradient_flow(model, u, targets, mask=None, *, h0=None, omega_bound: float = _rnnfast.OMEGA_BOUND,
                  keep_vectors: bool = False, num_threads: int | None = None) -> GradientFlow:
    """The norm of ∂E/∂h_k at every step k, the Ω ratios and Ω, for one minibatch.

    One forward pass, the readout/loss, and ONE call of the C++ backward sweep with
    ``profile=True`` (‖∂E/∂h_k‖ for every k and example) and ``omega=True`` (Ω fused); the
    ratios need one more matrix product ``g.dx @ W_rec`` over all T·B rows (see the module
    docstring for the exact formulas).

    Parameters
    ----------
    model : RNNModel
    u : array (T, B, I)
        Inputs.
    targets : array
        As for :meth:`RNNModel.loss_and_grad`: (B,) / (T, B) classes, or (B, O) / (T, B, O).
    mask : array (T, B), optional
        Steps whose cost counts (``at="all"`` only).
    h0 : array (B, H), optional
        Explicit initial state (overrides the model's policy).
    omega_bound : float
        Pairs with ‖∂E/∂h_{k+1}‖² below it are left out of Ω (authors: 1e-20); their
        ratios are still returned (NaN only where the error is exactly 0).
    keep_vectors : bool
        Also return the vectors ∂E/∂h_k, (T, B, H) (rebuilt from the core's ∂E/∂x with the
        same matrix product: δ_k = ∂⁺E/∂h_k + a_{k+1} W_rec).
    num_threads : int, optional

    Returns
    -------
    GradientFlow
    """
    _check_model(model)
    bound = _bound(omega_bound)
    u = _inputs(model, u)
    T, B, _ = u.shape
    H = model.n_hidden
    fwd = model.forward(u, h0, num_threads=num_threads)
    r = _direct_loss(model, fwd, targets, mask)
    g = _rnnfast.backward(fwd, r.dh, dh_last=r.dh_last, omega=True, omega_bound=bound,
                          profile=True, num_threads=num_threads)
    W = model.params["W_rec"]
    v = (g.dx.reshape(T * B, H) @ W).reshape(T, B, H)  # v[k] = δ_{k+1}·∂h_{k+1}/∂h_k
    dh_norm = np.asarray(g.dh_norm, dtype=np.float64)
    dx_norm = _row_norm(g.dx)
    if r.dh is not None:
        direct_norm = _row_norm(r.dh)
    else:
        direct_norm = np.zeros((T, B))
        direct_norm[-1] = _row_norm(r.dh_last)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(dh_norm > 0, _row_norm(v) / dh_norm, np.nan)
        ratio_x = np.full((T, B), np.nan)
        if T > 1:
            vx = v[1:] * _act.derivative_from_output(fwd.h[:-1], model.activation)
            ratio_x[1:] = np.where(dx_norm[1:] > 0, _row_norm(vx) / dx_norm[1:], np.nan)
    omega_valid = dh_norm ** 2 >= bound
    vectors = None
    if keep_vectors:
        vectors = np.zeros((T, B, H), dtype=np.float64)
        vectors[:-1] = v[1:]
        if r.dh is not None:
            vectors += r.dh
        else:
            vectors[-1] += r.dh_last
    return GradientFlow(float(r.loss), dh_norm, dx_norm, direct_norm, ratio, ratio_x,
                        omega_valid, float(g.omega), int(g.omega_pairs),
                        spectral_report(W, model.activation), vectors)


# ----------------------------------------------------------------------------- contributions


class TemporalContributions(NamedTuple):
    """Temporal components ∂E_t/∂h_t · ∂h_t/∂h_k for chosen t (see
    :func:`temporal_contributions`). Index j along time is the paper's step j + 1.

    Attributes
    ----------
    steps : ndarray (n,) int64
        The chosen injection steps t (0-based array indices).
    norms : ndarray (n, T, B) float64
        ‖p_t · ∂h_t/∂h_{j+1}‖ (h-space) for j ≤ t, 0 for j > t, where p_t is the error
        injected at step t (∂E_t/∂h_t for ``probe="loss"``).
    x_norms : ndarray (n, T, B) float64
        ‖p_t · ∂h_t/∂x_{j+1}‖ (x-space, the paper's ∂E_t/∂x_k).
    probe_norms : ndarray (n, B) float64
        ‖p_t‖ (1 for random unit probes).
    probe : str
        "loss", "random" or "given".
    grads : dict name -> ndarray
        Per-step parameter gradients ∂E_t/∂θ = Σ_{k≤t} ∂E_t/∂x_k · ∂⁺x_k/∂θ (eq. 4-5), summed
        over the batch: ``W_rec`` (n, H, H), ``W_in`` (n, H, I), ``b`` (n, H).
    dh : ndarray (n, T, B, H) or None
        The vectors p_t · ∂h_t/∂h_{j+1}, with ``keep_vectors=True``.
    """

    steps: np.ndarray
    norms: np.ndarray
    x_norms: np.ndarray
    probe_norms: np.ndarray
    probe: str
    grads: dict
    dh: Optional[np.ndarray] = None

    def relative(self) -> np.ndarray:
        """norms divided by the probe norm, (n, T, B): ‖p̂_t ∂h_t/∂h_k‖ for unit p̂_t (NaN
        where the probe is zero)."""
        pn = self.probe_norms[:, None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(pn > 0, self.norms / np.where(pn > 0, pn, 1.0), np.nan)


def _steps(steps, T):
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        steps = [steps]
    try:
        arr = np.asarray(list(steps))
    except TypeError:
        raise TypeError(f"steps: expected an int or a sequence of ints, got {steps!r}") from None
    if arr.size == 0:
        raise ValueError("steps: expected at least one step")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1:
        raise TypeError(f"steps: expected integer array indices in [-T, T), got {steps!r}")
    if np.any(arr < -T) or np.any(arr >= T):
        raise ValueError(f"steps: indices must lie in [-{T}, {T}) for T = {T}, got {arr.tolist()}")
    return np.where(arr < 0, arr + T, arr).astype(np.int64)


def temporal_contributions(model, u, targets=None, *, steps, mask=None, probe="loss",
                           rng=None, h0=None, keep_vectors: bool = False,
                           max_elements: int = 1 << 24,
                           num_threads: int | None = None) -> TemporalContributions:
    """Norms of the temporal components ∂E_t/∂h_t · ∂h_t/∂h_k (paper's eq. 4-5) for chosen t.

    For each chosen t the error p_t is injected at step t only and back-propagated by the
    C++ sweep with ``profile=True``; the norm at step k ≤ t is ‖p_t · ∂h_t/∂h_k‖. All chosen
    t run in one backward call: the minibatch is replicated once per t along the batch axis
    (time truncated to the last chosen t + 1), in chunks of at most ``max_elements`` state
    values. Summed over every t, the components give the total ∂E/∂h_k and ∂E/∂θ.

    Parameters
    ----------
    model : RNNModel
    u : array (T, B, I)
    targets : array, optional
        Needed for ``probe="loss"``.
    steps : int or sequence of int
        Injection steps t as 0-based array indices (negative counts from the end: -1 is the
        last step T).
    mask : array (T, B), optional
        For ``probe="loss"`` with ``at="all"``.
    probe : {"loss", "random"} or array (n, B, H)
        What is injected at step t: "loss" — ∂E_t/∂h_t, the model's own error (a model that
        reads its cost only at the last step has E_t = 0 for t < T, which is refused);
        "random" — an independent random unit vector per (t, example), so the norms are
        those of the Jacobian products ∂h_t/∂h_k seen along a random direction; an array —
        the given vectors.
    rng : numpy.random.Generator or int, optional
        For ``probe="random"`` (default seed 0).
    h0 : array (B, H), optional
    keep_vectors : bool
        Also return the (n, T, B, H) vectors.
    max_elements : int
        Memory bound of one chunk of the replicated batch (T'·n_chunk·B·H values).
    num_threads : int, optional

    Returns
    -------
    TemporalContributions
    """
    _check_model(model)
    u = _inputs(model, u)
    T, B, I = u.shape
    H = model.n_hidden
    st = _steps(steps, T)
    n = st.shape[0]
    p = model.params
    h0v = model.initial_state(B, h0)

    # The injected errors p_t, (n, B, H).
    if isinstance(probe, str) and probe == "loss":
        if targets is None:
            raise ValueError('targets: required with probe="loss"')
        fwd = model.forward(u, h0, num_threads=num_threads)
        r = _direct_loss(model, fwd, targets, mask)
        if r.dh is None:  # cost read at the last step only
            bad = st[st != T - 1]
            if bad.size:
                raise ValueError(
                    f"steps: the model reads its cost at the last step only (at='last'), so "
                    f"E_t = 0 for t < T; got steps {bad.tolist()} (use probe='random' to see "
                    "the Jacobian products ∂h_t/∂h_k there)")
            inj = np.broadcast_to(r.dh_last, (n, B, H))
        else:
            inj = r.dh[st]
        kind = "loss"
    elif isinstance(probe, str) and probe == "random":
        gen = _init.as_generator(0 if rng is None else rng)
        inj = gen.standard_normal((n, B, H))
        inj /= _row_norm(inj)[..., None]
        kind = "random"
    elif isinstance(probe, str):
        raise ValueError(f"probe: expected 'loss', 'random' or an array (n, B, H), got {probe!r}")
    else:
        inj = np.asarray(probe)
        if inj.shape != (n, B, H):
            raise ValueError(f"probe: expected shape (n, B, H) = {(n, B, H)}, got {inj.shape}")
        if not np.issubdtype(inj.dtype, np.floating):
            raise TypeError(f"probe: expected a float array, got dtype {inj.dtype}")
        kind = "given"
    inj = np.ascontiguousarray(inj, dtype=model.dtype)
    max_elements = int(max_elements)
    if max_elements < 1:
        raise ValueError(f"max_elements: expected a positive int, got {max_elements}")

    norms = np.zeros((n, T, B))
    x_norms = np.zeros((n, T, B))
    grads = {"W_rec": np.zeros((n, H, H)), "W_in": np.zeros((n, H, I)), "b": np.zeros((n, H))}
    vectors = np.zeros((n, T, B, H)) if keep_vectors else None
    W = p["W_rec"]

    # Chunks of replicas, ordered by step so that each chunk's time window is short.
    order = np.argsort(st, kind="stable")
    i = 0
    while i < n:
        # grow the chunk while the replicated (T_c, c·B, H) arrays stay within max_elements
        c = 1
        while i + c < n and (int(st[order[i + c]]) + 1) * (c + 1) * B * H <= max_elements:
            c += 1
        idx = order[i:i + c]
        Tc = int(st[idx].max()) + 1
        uc = np.tile(u[:Tc], (1, c, 1))                     # (Tc, c·B, I), replica-major
        h0c = None if h0v is None else np.tile(h0v, (c, 1))  # (c·B, H)
        fwd = _rnnfast.forward(uc, p["W_in"], W, p["b"], h0c, activation=model.activation,
                               num_threads=num_threads)
        dh = np.zeros((Tc, c, B, H), dtype=model.dtype)
        dh[st[idx], np.arange(c)] = inj[idx]
        g = _rnnfast.backward(fwd, dh.reshape(Tc, c * B, H), profile=True,
                              num_threads=num_threads)
        norms[idx, :Tc] = np.asarray(g.dh_norm).reshape(Tc, c, B).transpose(1, 0, 2)
        dx = g.dx.reshape(Tc, c, B, H)
        x_norms[idx, :Tc] = _row_norm(dx).transpose(1, 0, 2)
        # per-replica Σ_k a_kᵀ h_{k-1} and Σ_k a_kᵀ u_k as batched GEMMs over (T_c·B) rows
        a = np.ascontiguousarray(dx.transpose(1, 0, 2, 3), dtype=np.float64).reshape(c, -1, H)
        hprev = np.concatenate([fwd.h0[None], fwd.h[:-1]]).reshape(Tc, c, B, H)
        hprev = np.ascontiguousarray(hprev.transpose(1, 0, 2, 3), dtype=np.float64)
        ur = np.ascontiguousarray(uc.reshape(Tc, c, B, I).transpose(1, 0, 2, 3),
                                  dtype=np.float64)
        grads["W_rec"][idx] = a.transpose(0, 2, 1) @ hprev.reshape(c, -1, H)
        grads["W_in"][idx] = a.transpose(0, 2, 1) @ ur.reshape(c, -1, I)
        grads["b"][idx] = a.sum(axis=1)
        if keep_vectors:
            vec = dh.astype(np.float64)
            if Tc > 1:
                vec[:-1] += (g.dx[1:].reshape(-1, H) @ W).reshape(Tc - 1, c, B, H)
            vectors[idx, :Tc] = vec.transpose(1, 0, 2, 3)
        i += c
    return TemporalContributions(st, norms, x_norms, _row_norm(inj), kind, grads, vectors)


# ----------------------------------------------------------------------------- all


class Diagnostics(NamedTuple):
    """What :func:`diagnose` returns: ``flow`` (GradientFlow), ``contributions``
    (TemporalContributions) and ``spectrum`` (SpectralReport)."""

    flow: GradientFlow
    contributions: TemporalContributions
    spectrum: SpectralReport


def default_steps(T: int, count: int = 4) -> np.ndarray:
    """``count`` injection steps spread over a sequence of T steps, ending at the last one:
    0-based indices of the paper's steps ⌈T·i/count⌉, i = 1..count (duplicates removed)."""
    T = int(T)
    if T < 1:
        raise ValueError(f"T: expected a positive int, got {T}")
    s = np.ceil(T * np.arange(1, int(count) + 1) / int(count)).astype(np.int64) - 1
    return np.unique(np.clip(s, 0, T - 1))


def diagnose(model, u, targets, mask=None, *, steps=None, probe="auto", rng=None, h0=None,
             omega_bound: float = _rnnfast.OMEGA_BOUND, num_threads: int | None = None) -> Diagnostics:
    """Gradient flow, temporal contributions and spectrum of one model on one minibatch.

    Parameters
    ----------
    model : RNNModel
    u : array (T, B, I)
    targets : array
    mask : array (T, B), optional
    steps : sequence of int, optional
        Injection steps (0-based); default :func:`default_steps` (T/4, T/2, 3T/4, T).
    probe : {"auto", "loss", "random"}
        "auto": "loss" when the model reads its cost at every step, else "random" (a model
        read at the last step has no error to inject at earlier steps).
    rng, h0, omega_bound, num_threads
        As for :func:`gradient_flow` and :func:`temporal_contributions`.

    Returns
    -------
    Diagnostics
    """
    _check_model(model)
    flow = gradient_flow(model, u, targets, mask, h0=h0, omega_bound=omega_bound,
                         num_threads=num_threads)
    T = flow.dh_norm.shape[0]
    st = default_steps(T) if steps is None else steps
    if isinstance(probe, str) and probe == "auto":
        probe = "loss" if model.at == "all" else "random"
    tc = temporal_contributions(model, u, targets, steps=st, mask=mask, probe=probe, rng=rng,
                                h0=h0, num_threads=num_threads)
    return Diagnostics(flow, tc, flow.spectrum)


def init_comparison(task="temporal_order", *, inits=("basic_tanh", "smart_tanh", "sigmoid"),
                    length: int = 100, batch: int = 20, hidden: int = 50, seed: int = 0,
                    steps=None, dtype=np.float64, num_threads: int | None = None) -> dict:
    """Diagnose freshly initialised models under several of the paper's initialisations.

    Every model sees the same minibatch of ``task`` (one fixed length), so the profiles differ
    only by the initialisation: e.g. on temporal order, ``sigmoid`` (W ~ N(0, 0.01²), γ = 1/4)
    vanishes within a few steps, ``basic_tanh`` (N(0, 0.1²)) over tens of steps and
    ``smart_tanh`` (ρ = 0.95) slowly.

    Parameters
    ----------
    task : str or Task
        A registry name (:func:`rnnfast.tasks.get_task`) or a task object.
    inits : sequence of str
        Initialisation schemes (:mod:`rnnfast.nn.init`).
    length, batch, hidden : int
        T, B and H.
    seed : int
        Seeds the batch and every model's initialisation.
    steps : sequence of int, optional
        Injection steps for the temporal contributions (default :func:`default_steps`).
    dtype : float32 or float64
    num_threads : int, optional

    Returns
    -------
    dict init name -> Diagnostics
    """
    from .. import tasks as _tasks
    from ..nn.model import RNNModel

    t = _tasks.get_task(task) if isinstance(task, str) else task
    length, batch, hidden = int(length), int(batch), int(hidden)
    if length < 1 or batch < 1 or hidden < 1:
        raise ValueError(f"length, batch, hidden: expected positive ints, got "
                         f"{length}, {batch}, {hidden}")
    if isinstance(inits, str):
        inits = (inits,)
    bt = t.generate(np.random.default_rng(seed), batch, length, dtype=dtype)
    out = {}
    for name in inits:
        model = RNNModel(t.n_in, hidden, t.n_out, init=name, loss=t.loss, at=t.at,
                         dtype=dtype, rng=seed)
        out[name] = diagnose(model, bt.u, bt.targets, bt.mask, steps=steps,
                             num_threads=num_threads)
    return out
