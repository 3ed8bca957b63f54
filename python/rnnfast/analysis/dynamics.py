"""The one-neuron pictures of sections 2.2-2.3 of Pascanu, Mikolov & Bengio (2013).

Pure NumPy (float64), no compiled code. Two objects are studied here:

* the input-less one-neuron map of the paper's formula 2,
  ``x_t = F(x_{t-1}) = w σ(x_{t-1}) + b``: its fixed points and their stability, the
  bifurcation diagram over ``b`` (the paper's Fig. 3 uses ``w = 5``) or over ``w``, the
  bifurcation values themselves, and the asymptotic state reached from an initial condition
  (basins of attraction);
* the "wall" of the paper's Fig. 6: the same neuron started at ``x_0 = 0.5`` and trained so that
  ``E = (σ(x_50) - 0.7)²``. The error surface over a whole ``(w, b)`` grid is computed at once
  (the time loop runs over the whole grid), together with its exact gradient (forward-mode
  differentiation through the 50 steps), and SGD trajectories with and without gradient norm
  clipping (the paper's Algorithm 1) can be run on it.

Notation follows the paper: ``x`` is the pre-activation (``h = σ(x)`` in the Elman form of the
core API). ``σ`` is selected by ``activation`` in ``{"sigmoid", "tanh", "linear"}``.

Stability convention: a fixed point ``x*`` is stable when ``|F'(x*)| = |w σ'(x*)| < 1``. At a
fold (saddle-node) bifurcation ``F'(x*) = 1``, at a flip (period-doubling) ``F'(x*) = -1``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..nn import activations as _act

__all__ = [
    "ACTIVATIONS",
    "activation_fn",
    "one_neuron_map",
    "iterate",
    "asymptotic_state",
    "FixedPoints",
    "fixed_points",
    "FixedPointBranches",
    "fixed_point_branches",
    "bifurcation_values",
    "BifurcationDiagram",
    "bifurcation_diagram",
    "basins",
    "WallResult",
    "wall_loss",
    "ErrorSurface",
    "error_surface",
    "Trajectory",
    "wall_sgd",
    "WallDemo",
    "wall_demo",
]

#: Activations understood by this module.
ACTIVATIONS = ("sigmoid", "tanh", "linear")

# max_x σ'(x) (γ)
_DERIV_MAX = _act.GAMMA

# Bisection on a bracket of width <= ~1e3 reaches float64 resolution well within this.
_BISECT_ITERS = 110


# --------------------------------------------------------------------------- helpers


def _check_activation(activation):
    _act.check(activation, ACTIVATIONS)
    return activation


def _as_float(name, value, *, finite=True):
    """Convert ``value`` to a float64 array, raising an error that names the argument."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be a real number or an array of real numbers, "
                        f"got {type(value).__name__}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a real number or an array of real numbers, "
                        f"got {type(value).__name__}") from exc
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got non-finite values")
    return arr


def _as_scalar(name, value, *, finite=True):
    arr = _as_float(name, value, finite=finite)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got an array of shape {arr.shape}")
    return float(arr)


def _as_int(name, value, *, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def activation_fn(x, activation="sigmoid"):
    """σ(x) and σ'(x), float64, without overflow (:func:`rnnfast.nn.activations.value_and_derivative`
    restricted to this module's activations)."""
    _check_activation(activation)
    return _act.value_and_derivative(x, activation)


def _deriv_inverse(c, activation):
    """Return ``a >= 0`` with ``σ'(±a) = c`` for ``0 < c <= max σ'`` (NaN elsewhere).

    Both sigmoidal derivatives are even and unimodal, so ``σ'(x) = c`` has the two solutions
    ``±a``. sigmoid: σ' = σ(1-σ) -> σ = (1 ± r)/2 with r = sqrt(1 - 4c), x = 2 atanh(r);
    tanh: 1 - tanh² = c -> x = atanh(sqrt(1 - c)).
    """
    c = np.asarray(c, dtype=np.float64)
    cmax = _DERIV_MAX[activation]
    ok = (c > 0) & (c <= cmax)
    cc = np.where(ok, c, cmax)
    if activation == "sigmoid":
        a = 2.0 * np.arctanh(np.sqrt(np.clip(1.0 - 4.0 * cc, 0.0, 1.0)))
    elif activation == "tanh":
        a = np.arctanh(np.sqrt(np.clip(1.0 - cc, 0.0, 1.0)))
    else:  # linear: σ' = 1 everywhere, no isolated solution
        a = np.full_like(cc, np.nan)
    return np.where(ok, a, np.nan)


# --------------------------------------------------------------------------- the map


def one_neuron_map(x, w, b, activation="sigmoid"):
    """One step of the input-less one-neuron map ``F(x) = w σ(x) + b`` (paper's formula 2).

    Parameters
    ----------
    x, w, b : array_like, broadcastable shapes (...)
        State, recurrent weight and bias.
    activation : {"sigmoid", "tanh", "linear"}

    Returns
    -------
    ndarray, shape broadcast(x, w, b)
    """
    f, _ = activation_fn(_as_float("x", x, finite=False), activation)
    return _as_float("w", w) * f + _as_float("b", b)


def iterate(x0, w, b, n_steps, activation="sigmoid"):
    """Iterate the one-neuron map and return the whole trajectory.

    Vectorised over any broadcastable ``x0``, ``w``, ``b``: the Python loop runs over the
    ``n_steps`` time steps only, each step processing all initial conditions and parameters.

    Parameters
    ----------
    x0, w, b : array_like, broadcastable shapes (...)
        Initial states, recurrent weights, biases.
    n_steps : int
        Number of steps ``t = 1..n_steps``.
    activation : {"sigmoid", "tanh", "linear"}

    Returns
    -------
    ndarray, shape (n_steps + 1, ...)
        ``x_0, x_1, ..., x_{n_steps}``. With ``activation="linear"`` and ``b = 0`` this is
        ``x_0 w^t``.
    """
    _check_activation(activation)
    n_steps = _as_int("n_steps", n_steps, minimum=0)
    x0 = _as_float("x0", x0)
    w = _as_float("w", w)
    b = _as_float("b", b)
    shape = np.broadcast_shapes(x0.shape, w.shape, b.shape)
    out = np.empty((n_steps + 1,) + shape)
    out[0] = x0
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(n_steps):
            f, _ = activation_fn(out[t], activation)
            out[t + 1] = w * f + b
    return out


def asymptotic_state(x0, w, b, activation="sigmoid", *, max_steps=5000, tol=1e-12):
    """Iterate the map from ``x0`` until it settles and return the state reached, ``x_∞``.

    Vectorised over broadcastable ``x0``, ``w``, ``b`` (one time loop for all). The loop stops
    early once every trajectory moves by less than ``tol·(1 + |x|)`` in one step. Trajectories
    that end on a cycle (possible for ``w < 0``, past a flip bifurcation) or have not converged
    return their last state; see ``converged``.

    Parameters
    ----------
    x0, w, b : array_like, broadcastable shapes (...)
    activation : {"sigmoid", "tanh", "linear"}
    max_steps : int
        Upper bound on the number of iterations.
    tol : float
        Relative convergence tolerance.

    Returns
    -------
    x_inf : ndarray, shape broadcast(x0, w, b)
        Final state.
    converged : ndarray of bool, same shape
        Whether the last step moved by less than the tolerance (a fixed point was reached).
    """
    _check_activation(activation)
    max_steps = _as_int("max_steps", max_steps, minimum=1)
    tol = _as_scalar("tol", tol)
    x0 = _as_float("x0", x0)
    w = _as_float("w", w)
    b = _as_float("b", b)
    shape = np.broadcast_shapes(x0.shape, w.shape, b.shape)
    x = np.broadcast_to(x0, shape).astype(np.float64)
    w = np.broadcast_to(w, shape)
    b = np.broadcast_to(b, shape)
    moved = np.full(shape, np.inf)
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(max_steps):
            f, _ = activation_fn(x, activation)
            x_new = w * f + b
            moved = np.abs(x_new - x)
            x = x_new
            if np.all(moved <= tol * (1.0 + np.abs(x))):
                break
    return x, moved <= tol * (1.0 + np.abs(x))


# --------------------------------------------------------------------------- fixed points


class FixedPoints(NamedTuple):
    """Fixed points of ``F(x) = w σ(x) + b`` for one ``(w, b)``, in ascending order.

    Attributes
    ----------
    x : ndarray, shape (K,)
        The fixed points ``x*`` (``F(x*) = x*``), ``K`` in 0..3.
    slope : ndarray, shape (K,)
        ``F'(x*) = w σ'(x*)``.
    stable : ndarray of bool, shape (K,)
        ``|F'(x*)| < 1``.
    """

    x: np.ndarray
    slope: np.ndarray
    stable: np.ndarray


class FixedPointBranches(NamedTuple):
    """Fixed points for arrays of parameters, one column per monotone piece of ``F(x) - x``.

    ``g(x) = F(x) - x`` has at most two critical points for a sigmoidal ``σ`` (where
    ``w σ'(x) = 1``), which cut the line into three pieces on which ``g`` is monotone, so each
    piece holds at most one fixed point. Column 0 is the lowest piece, column 2 the highest;
    when ``g`` is monotone everywhere its single root is in column 0. Missing roots are NaN.

    Attributes
    ----------
    x : ndarray, shape (..., 3)
    slope : ndarray, shape (..., 3)
        ``w σ'(x*)`` (NaN where no root).
    stable : ndarray of bool, shape (..., 3)
        ``|slope| < 1`` (False where no root).
    count : ndarray of int, shape (...)
        Number of distinct fixed points.
    """

    x: np.ndarray
    slope: np.ndarray
    stable: np.ndarray
    count: np.ndarray


def _g(x, w, b, activation):
    f, _ = activation_fn(x, activation)
    return w * f + b - x


def _safeguarded_newton(left, right, g_left, active, w, b, activation):
    """Vectorised root of the monotone ``g(x) = w σ(x) + b - x`` on each ``[left, right]``.

    Newton steps from inside the bracket, with bisection whenever a Newton step would leave the
    bracket or fails to halve the step before last (the classic safeguarded scheme), so every
    entry converges even where ``g'`` vanishes at an end (a critical point). Only the entries
    still iterating are computed at each pass. Entries that are not ``active`` (no sign change)
    are returned as the midpoint of their bracket; the caller masks them.

    Parameters
    ----------
    left, right, g_left, active : ndarray, shape (...)
        Brackets, ``g(left)``, and which entries to solve.
    w, b : ndarray, broadcastable to (...)
    """
    shape = left.shape
    lft = left.reshape(-1).copy()
    rgt = right.reshape(-1).copy()
    sl = np.sign(g_left).reshape(-1)
    wf = np.broadcast_to(w, shape).reshape(-1)
    bf = np.broadcast_to(b, shape).reshape(-1)
    out = 0.5 * (lft + rgt)
    idx = np.flatnonzero(active.reshape(-1))  # entries still iterating
    x = out[idx]
    lo, hi, s, ww, bb = lft[idx], rgt[idx], sl[idx], wf[idx], bf[idx]
    dx_old = hi - lo
    tiny = 4.0 * np.finfo(np.float64).eps
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(_BISECT_ITERS):
            if idx.size == 0:
                break
            f, df = activation_fn(x, activation)
            gx = ww * f + bb - x
            dg = ww * df - 1.0
            same = np.sign(gx) == s
            lo = np.where(same, x, lo)
            hi = np.where(same, hi, x)
            newton = x - gx / dg
            # Newton only if it stays in the bracket and at least halves the step before last.
            ok = (newton >= lo) & (newton <= hi) & (np.abs(2.0 * gx) <= np.abs(dx_old * dg))
            x_new = np.where(ok, newton, 0.5 * (lo + hi))
            step = np.abs(x_new - x)
            zero = gx == 0.0
            done = zero | (step <= tiny * (1.0 + np.abs(x))) | (hi - lo <= tiny * (
                1.0 + np.abs(lo)))
            out[idx] = np.where(zero, x, x_new)
            keep = ~done
            idx, x, lo, hi, s, ww, bb = (idx[keep], x_new[keep], lo[keep], hi[keep], s[keep],
                                         ww[keep], bb[keep])
            dx_old = step[keep]
    return out.reshape(shape)


def fixed_point_branches(w, b, activation="sigmoid"):
    """Fixed points of ``x = w σ(x) + b`` for broadcastable arrays of ``w`` and ``b``.

    Roots are bracketed exactly (no grid search): for ``σ`` bounded, every fixed point lies in
    ``b + w·[inf σ, sup σ]``; the critical points of ``g(x) = w σ(x) + b - x`` (solutions of
    ``w σ'(x) = 1``, known in closed form) split that bracket into at most three monotone
    pieces, each holding at most one root, found by vectorised bracketed iteration to float64
    resolution (safeguarded Newton). A critical point where ``|g|`` is at rounding level is a
    tangent (double) root, the fold itself; roots that coincide are reported once.

    For ``activation="linear"`` the fixed point is ``b / (1 - w)``; when ``w == 1`` there is
    none (``b != 0``) or a continuum (``b == 0``), both reported as no isolated fixed point.

    Parameters
    ----------
    w, b : array_like, broadcastable shapes (...)
    activation : {"sigmoid", "tanh", "linear"}

    Returns
    -------
    FixedPointBranches
    """
    _check_activation(activation)
    w = _as_float("w", w)
    b = _as_float("b", b)
    shape = np.broadcast_shapes(w.shape, b.shape)
    w = np.broadcast_to(w, shape)
    b = np.broadcast_to(b, shape)
    x = np.full(shape + (3,), np.nan)

    if activation == "linear":
        ok = w != 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            x[..., 0] = np.where(ok, b / np.where(ok, 1.0 - w, 1.0), np.nan)
    else:
        if activation == "sigmoid":  # σ in (0, 1)
            lo = b + np.minimum(w, 0.0) - 1.0
            hi = b + np.maximum(w, 0.0) + 1.0
        else:  # tanh in (-1, 1)
            lo = b - np.abs(w) - 1.0
            hi = b + np.abs(w) + 1.0
        with np.errstate(divide="ignore"):
            a = _deriv_inverse(np.where(w > 0, 1.0 / np.where(w > 0, w, 1.0), 0.0), activation)
        has_crit = np.isfinite(a)
        c1 = np.where(has_crit, np.clip(-a, lo, hi), hi)
        c2 = np.where(has_crit, np.clip(a, lo, hi), hi)
        left = np.stack([lo, c1, c2], axis=-1)  # (..., 3)
        right = np.stack([c1, c2, hi], axis=-1)
        wk = w[..., None]
        bk = b[..., None]
        gl = _g(left, wk, bk, activation)
        gr = _g(right, wk, bk, activation)
        found = (right > left) & (np.sign(gl) * np.sign(gr) <= 0)
        # Exact zeros at a piece's end: report that end (also covers zero-width pieces).
        exact_l = gl == 0
        exact_r = (gr == 0) & ~exact_l
        found |= exact_l | exact_r
        root = _safeguarded_newton(left, right, gl, found, wk, bk, activation)
        root = np.where(exact_l, left, np.where(exact_r, right, root))
        x = np.where(found, root, np.nan)
        # Tangent (double) roots at a fold: g touches zero at a critical point, and rounding
        # may hide the sign change. Accept a critical point whose |g| is at rounding level.
        for c, cols in ((c1, (1, 0)), (c2, (1, 2))):
            gc = _g(c, w, b, activation)
            tol = 16.0 * np.finfo(np.float64).eps * (1.0 + np.abs(w) + np.abs(b) + np.abs(c))
            tangent = has_crit & (np.abs(gc) <= tol)
            for col in cols:
                near = np.any(np.abs(x - c[..., None]) <= 1e-6 * (1.0 + np.abs(c[..., None])),
                              axis=-1)
                put = tangent & ~near & np.isnan(x[..., col])
                x[..., col] = np.where(put, c, x[..., col])
        # A double root at a fold is found by two adjacent pieces: keep the first.
        for k in (1, 2):
            prev = x[..., :k]
            dup = np.any(np.abs(x[..., k:k + 1] - prev) <= 1e-9 * (1.0 + np.abs(prev)), axis=-1)
            x[..., k] = np.where(dup, np.nan, x[..., k])

    _, df = activation_fn(np.where(np.isnan(x), 0.0, x), activation)
    slope = np.where(np.isnan(x), np.nan, w[..., None] * df)
    stable = np.abs(np.where(np.isnan(slope), np.inf, slope)) < 1.0
    count = np.sum(~np.isnan(x), axis=-1)
    return FixedPointBranches(x=x, slope=slope, stable=stable, count=count)


def fixed_points(w, b, activation="sigmoid"):
    """Fixed points of the one-neuron map ``x = w σ(x) + b`` and their stability.

    Parameters
    ----------
    w, b : float
        Recurrent weight and bias.
    activation : {"sigmoid", "tanh", "linear"}

    Returns
    -------
    FixedPoints
        Ascending ``x``, ``slope = w σ'(x)`` and ``stable = |slope| < 1``.

    Examples
    --------
    >>> fp = fixed_points(5.0, -2.5)      # the symmetric bistable case
    >>> len(fp.x), fp.stable.tolist()
    (3, [True, False, True])
    """
    w = _as_scalar("w", w)
    b = _as_scalar("b", b)
    br = fixed_point_branches(w, b, activation)
    keep = ~np.isnan(br.x)
    order = np.argsort(br.x[keep])
    return FixedPoints(x=br.x[keep][order], slope=br.slope[keep][order],
                       stable=br.stable[keep][order])


# --------------------------------------------------------------------------- bifurcations


def _ratio(x, activation):
    """``σ(x) / σ'(x)`` in closed form (finite for all x where it is used)."""
    if activation == "sigmoid":
        return 1.0 + np.exp(x)  # σ/σ' = 1/(1-σ) = 1 + e^x
    return 0.5 * np.sinh(2.0 * x)  # tanh/(1-tanh²) = sinh cosh


def _bisect_scalar(fn, a, b):
    """Root of a monotone scalar function on ``[a, b]`` (``fn(a)``, ``fn(b)`` of opposite sign)."""
    fa = fn(a)
    for _ in range(_BISECT_ITERS):
        m = 0.5 * (a + b)
        fm = fn(m)
        if fm == 0.0:
            return m
        if (fm > 0) == (fa > 0):
            a, fa = m, fm
        else:
            b = m
    return 0.5 * (a + b)


def _solve_monotone(fn, x_start, direction, target):
    """Solve ``fn(x) = target`` for ``x`` on the half-line from ``x_start`` in ``direction``.

    ``fn`` must be monotone there; the bracket is grown geometrically. Returns NaN when no
    root is found within ``|x - x_start| <= 2**10``.
    """
    h0 = fn(x_start) - target
    if h0 == 0.0:
        return x_start
    step = 1.0
    a = x_start
    while step <= 2.0 ** 10:
        bnd = x_start + direction * step
        with np.errstate(over="ignore"):
            hb = fn(bnd) - target
        if not math.isfinite(hb):
            hb = math.copysign(math.inf, hb) if not math.isnan(hb) else math.nan
        if math.isnan(hb):
            return math.nan
        if (hb > 0) != (h0 > 0) or hb == 0.0:
            return _bisect_scalar(lambda x: fn(x) - target, a, bnd)
        a = bnd
        step *= 2.0
    return math.nan


def bifurcation_values(*, w=None, b=None, activation="sigmoid", kind="fold"):
    """Bifurcation values of the one-neuron map ``x -> w σ(x) + b`` along ``b`` or along ``w``.

    A fold (saddle-node) happens where a fixed point has ``F'(x*) = w σ'(x*) = 1``: two fixed
    points (one stable, one unstable) merge and vanish. Solving ``x = w σ(x) + b`` and
    ``w σ'(x) = 1`` together gives the curve, parametrised by ``x``,
    ``w = 1/σ'(x)``, ``b = x - σ(x)/σ'(x)`` (sigmoid: ``b = x - 1 - e^x``, cusp at
    ``(w, b) = (4, -2)``; tanh: ``b = x - sinh(2x)/2``, cusp at ``(1, 0)``). A flip
    (period-doubling, ``w < 0``) happens where ``w σ'(x*) = -1``.

    Give exactly one of ``w`` (returns the values of ``b``, the paper's Fig. 3 setting) or
    ``b`` (returns the values of ``w``).

    Parameters
    ----------
    w, b : float, optional
        The parameter held fixed.
    activation : {"sigmoid", "tanh"}
    kind : {"fold", "flip"}

    Returns
    -------
    ndarray, shape (K,)
        Sorted bifurcation values of the other parameter (``K`` in 0..2). For the sigmoid with
        ``w = 5``: ``b1 ≈ -2.6556``, ``b2 ≈ -2.3444``; two stable fixed points coexist for
        ``b1 < b < b2``.
    """
    _check_activation(activation)
    if activation == "linear":
        raise ValueError("activation must be 'sigmoid' or 'tanh' for bifurcation_values "
                         "(the linear map has no isolated bifurcation values)")
    if kind not in ("fold", "flip"):
        raise ValueError(f"kind must be 'fold' or 'flip', got {kind!r}")
    if (w is None) == (b is None):
        raise ValueError("give exactly one of w= and b= (the parameter held fixed)")
    kappa = 1.0 if kind == "fold" else -1.0
    if w is not None:
        w = _as_scalar("w", w)
        if kappa * w <= 0:
            return np.empty(0)
        a = float(_deriv_inverse(kappa / w, activation))
        if not math.isfinite(a):
            return np.empty(0)
        xs = np.array([-a, a]) if a > 0 else np.array([0.0])
        f, _ = activation_fn(xs, activation)
        return np.unique(xs - w * f)
    b = _as_scalar("b", b)

    def b_of_x(x):
        return float(x - kappa * _ratio(np.float64(x), activation))

    def w_of_x(x):
        _, df = activation_fn(np.float64(x), activation)
        return float(kappa / df)

    # b(x) is monotone on x <= 0 and on x >= 0 (its derivative vanishes only at x = 0).
    roots = []
    for direction in (-1.0, 1.0):
        x = _solve_monotone(b_of_x, 0.0, direction, b)
        if math.isfinite(x):
            roots.append(w_of_x(x))
    out = np.unique(np.array(roots, dtype=np.float64))
    if out.size == 2 and abs(out[1] - out[0]) <= 1e-12 * (1.0 + abs(out[0])):
        out = out[:1]
    return out


class BifurcationDiagram(NamedTuple):
    """Fixed points along one parameter with the other held fixed.

    Attributes
    ----------
    over : {"b", "w"}
        The swept parameter (x-axis of the diagram).
    values : ndarray, shape (N,)
        The swept parameter's values.
    fixed_name : {"w", "b"}
    fixed_value : float
        The parameter held fixed.
    x, slope, stable, count :
        As in :class:`FixedPointBranches`, shapes (N, 3), (N, 3), (N, 3), (N,).
    bifurcations : ndarray, shape (K,)
        Fold bifurcation values of the swept parameter (inside or outside ``values``).
    activation : str
    """

    over: str
    values: np.ndarray
    fixed_name: str
    fixed_value: float
    x: np.ndarray
    slope: np.ndarray
    stable: np.ndarray
    count: np.ndarray
    bifurcations: np.ndarray
    activation: str


def bifurcation_diagram(values=None, *, over="b", w=5.0, b=-2.5, activation="sigmoid",
                        n=801):
    """Bifurcation diagram of the one-neuron map (the paper's Fig. 3, after Doya 1993).

    Parameters
    ----------
    values : array_like, shape (N,), optional
        Values of the swept parameter. Default: ``n`` points around the bifurcation values
        (for ``over="b"``, ``w = 5``: ``b`` in ``[-5, 0]``-ish), or ``w`` in ``[0, 10]``.
    over : {"b", "w"}
        The swept parameter; the other one is held at the ``w=`` / ``b=`` value.
    w : float
        Recurrent weight, used when ``over="b"`` (paper: 5.0).
    b : float
        Bias, used when ``over="w"``.
    activation : {"sigmoid", "tanh"}
    n : int
        Number of default points.

    Returns
    -------
    BifurcationDiagram
    """
    _check_activation(activation)
    if over not in ("b", "w"):
        raise ValueError(f"over must be 'b' or 'w', got {over!r}")
    n = _as_int("n", n, minimum=2)
    if over == "b":
        fixed_name, fixed_value = "w", _as_scalar("w", w)
        bif = (bifurcation_values(w=fixed_value, activation=activation)
               if activation != "linear" else np.empty(0))
    else:
        fixed_name, fixed_value = "b", _as_scalar("b", b)
        bif = (bifurcation_values(b=fixed_value, activation=activation)
               if activation != "linear" else np.empty(0))
    if values is None:
        if over == "b":
            centre = float(np.mean(bif)) if bif.size else -0.5 * fixed_value * (
                activation == "sigmoid")
            half = max(2.5, 3.0 * float(np.ptp(bif)) if bif.size else 0.0)
            values = np.linspace(centre - half, centre + half, n)
        else:
            top = max(10.0, 1.5 * float(bif.max())) if bif.size else 10.0
            values = np.linspace(0.0, top, n)
    values = _as_float("values", values)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    if over == "b":
        br = fixed_point_branches(fixed_value, values, activation)
    else:
        br = fixed_point_branches(values, fixed_value, activation)
    return BifurcationDiagram(over=over, values=values, fixed_name=fixed_name,
                              fixed_value=fixed_value, x=br.x, slope=br.slope,
                              stable=br.stable, count=br.count, bifurcations=bif,
                              activation=activation)


def basins(x0, w, b, activation="sigmoid", *, max_steps=5000):
    """Basins of attraction: which stable fixed point each initial condition converges to.

    Parameters
    ----------
    x0 : array_like, shape (...)
        Initial states.
    w, b : float
    activation : {"sigmoid", "tanh", "linear"}
    max_steps : int

    Returns
    -------
    fixed : FixedPoints
        The fixed points of ``(w, b)``.
    label : ndarray of int, shape (...)
        Index into ``fixed.x`` of the fixed point reached, or -1 when the trajectory did not
        settle on a fixed point (a cycle, divergence, or too few steps).
    x_inf : ndarray, shape (...)
        The asymptotic states.
    """
    fp = fixed_points(w, b, activation)
    x_inf, conv = asymptotic_state(x0, w, b, activation, max_steps=max_steps)
    label = np.full(x_inf.shape, -1, dtype=np.int64)
    if fp.x.size:
        dist = np.abs(x_inf[..., None] - fp.x)
        near = np.argmin(dist, axis=-1)
        close = np.take_along_axis(dist, near[..., None], axis=-1)[..., 0]
        ok = conv & (close <= 1e-6 * (1.0 + np.abs(x_inf)))
        label = np.where(ok, near, -1)
    return fp, label, x_inf


# --------------------------------------------------------------------------- the wall


class WallResult(NamedTuple):
    """Loss of the one-unit "wall" model and its exact gradient.

    Attributes
    ----------
    loss : ndarray, shape (...)
        ``E = (σ(x_T) - target)²``.
    grad_w, grad_b : ndarray, shape (...)
        ``∂E/∂w`` and ``∂E/∂b`` (NaN where ``compute_grad=False``).
    x_T : ndarray, shape (...)
        Final pre-activation ``x_T``.
    """

    loss: np.ndarray
    grad_w: np.ndarray
    grad_b: np.ndarray
    x_T: np.ndarray


def wall_loss(w, b, *, n_steps=50, x0=0.5, target=0.7, activation="sigmoid",
              compute_grad=True):
    """Loss and exact gradient of the paper's Fig. 6 model, for any array of ``(w, b)`` at once.

    The model is ``x_t = w σ(x_{t-1}) + b`` for ``t = 1..n_steps`` from ``x_0 = x0``, with
    ``E = (σ(x_T) - target)²``. The gradient is propagated forward alongside the state
    (forward-mode differentiation with two tangents):
    ``∂x_t/∂w = σ(x_{t-1}) + w σ'(x_{t-1}) ∂x_{t-1}/∂w`` and
    ``∂x_t/∂b = 1 + w σ'(x_{t-1}) ∂x_{t-1}/∂b``, both zero at ``t = 0``. It is exact up to
    rounding; near a wall ``∂x_T/∂θ`` holds the product ``Π w σ'(x_t)`` and becomes huge.

    Parameters
    ----------
    w, b : array_like, broadcastable shapes (...)
        Grid or batch of parameters; the time loop runs once over all of them.
    n_steps : int
        ``T`` (paper: 50).
    x0 : float
        Initial pre-activation (paper: 0.5).
    target : float
        Target for ``σ(x_T)`` (paper: 0.7).
    activation : {"sigmoid", "tanh", "linear"}
    compute_grad : bool
        Skip the tangents when False (grad fields are NaN).

    Returns
    -------
    WallResult
        Non-finite values (only possible for huge ``|w|``) are returned as they come.
    """
    _check_activation(activation)
    n_steps = _as_int("n_steps", n_steps, minimum=1)
    x0 = _as_scalar("x0", x0)
    target = _as_scalar("target", target)
    w = _as_float("w", w, finite=False)
    b = _as_float("b", b, finite=False)
    shape = np.broadcast_shapes(w.shape, b.shape)
    x = np.full(shape, x0)
    dw = np.zeros(shape)
    db = np.zeros(shape)
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(n_steps):
            f, df = activation_fn(x, activation)
            if compute_grad:
                gain = w * df  # ∂x_t/∂x_{t-1}
                dw = f + gain * dw
                db = 1.0 + gain * db
            x = w * f + b
        f, df = activation_fn(x, activation)
        r = f - target
        loss = r * r
        if compute_grad:
            dx = 2.0 * r * df
            gw, gb = dx * dw, dx * db
        else:
            gw = gb = np.full(shape, np.nan)
    return WallResult(loss=loss, grad_w=gw, grad_b=gb, x_T=x)


class ErrorSurface(NamedTuple):
    """The wall model's error over a ``(w, b)`` grid.

    Attributes
    ----------
    w : ndarray, shape (Nw,)
    b : ndarray, shape (Nb,)
    loss : ndarray, shape (Nb, Nw)
        ``loss[i, j] = E(w[j], b[i])`` (rows follow ``b``: ready for ``contour(w, b, loss)``).
    grad_norm : ndarray, shape (Nb, Nw)
        ``‖∇E‖`` at each grid point.
    """

    w: np.ndarray
    b: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray


def error_surface(w_values, b_values, **model):
    """Evaluate the wall model's loss (and gradient norm) on a whole grid in one pass.

    Parameters
    ----------
    w_values : array_like, shape (Nw,)
    b_values : array_like, shape (Nb,)
    **model
        ``n_steps``, ``x0``, ``target``, ``activation`` as in :func:`wall_loss`.

    Returns
    -------
    ErrorSurface
    """
    wv = _as_float("w_values", w_values)
    bv = _as_float("b_values", b_values)
    if wv.ndim != 1 or wv.size == 0:
        raise ValueError(f"w_values must be a non-empty 1-D array, got shape {wv.shape}")
    if bv.ndim != 1 or bv.size == 0:
        raise ValueError(f"b_values must be a non-empty 1-D array, got shape {bv.shape}")
    res = wall_loss(wv[None, :], bv[:, None], **model)
    return ErrorSurface(w=wv, b=bv, loss=res.loss, grad_norm=np.hypot(res.grad_w, res.grad_b))


class Trajectory(NamedTuple):
    """An SGD run on the wall model.

    Attributes
    ----------
    params : ndarray, shape (n + 1, ..., 2)
        ``(w, b)`` before each step and after the last one.
    loss : ndarray, shape (n + 1, ...)
        Loss at ``params``.
    grad_norm : ndarray, shape (n, ...)
        Pre-clip gradient norm ``‖∇E‖`` at each step.
    clipped : ndarray of bool, shape (n, ...)
        Whether the step was rescaled (``‖g‖ >= threshold``; always False without clipping).
    step_norm : ndarray, shape (n, ...)
        ``‖θ_{k+1} - θ_k‖`` (``lr · min(‖g‖, threshold)`` with clipping).
    lr : float
    threshold : float or None
    """

    params: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    clipped: np.ndarray
    step_norm: np.ndarray
    lr: float
    threshold: float | None


def wall_sgd(start, *, lr, n_steps, threshold=None, **model):
    """Plain or norm-clipped gradient descent on the wall model.

    Clipping follows the paper's Algorithm 1: when ``‖g‖ >= threshold`` the gradient is
    rescaled to ``threshold · g / ‖g‖``, so every clipped step has length ``lr · threshold``.
    Several runs can go at once: ``start`` may hold a batch of starting points. A step whose
    gradient is not finite leaves the parameters where they are and is marked by a NaN
    ``grad_norm``.

    Parameters
    ----------
    start : array_like, shape (..., 2)
        Starting ``(w, b)`` (one point or a batch).
    lr : float
        Learning rate (> 0).
    n_steps : int
        Number of updates.
    threshold : float, optional
        Clipping threshold (> 0); None for plain SGD.
    **model
        ``n_steps`` of the model is spelled ``T`` here to avoid a clash; also ``x0``,
        ``target``, ``activation`` as in :func:`wall_loss`.

    Returns
    -------
    Trajectory
    """
    start = _as_float("start", start)
    if start.ndim == 0 or start.shape[-1] != 2:
        raise ValueError(f"start must have shape (..., 2) holding (w, b), got {start.shape}")
    lr = _as_scalar("lr", lr)
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    n = _as_int("n_steps", n_steps, minimum=0)
    if threshold is not None:
        threshold = _as_scalar("threshold", threshold)
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0 or None, got {threshold}")
    if "n_steps" in model:
        raise TypeError("wall_sgd: pass the model's sequence length as T=, not n_steps=")
    model = dict(model)
    if "T" in model:
        model["n_steps"] = model.pop("T")
    batch = start.shape[:-1]
    params = np.empty((n + 1,) + batch + (2,))
    loss = np.empty((n + 1,) + batch)
    gnorm = np.empty((n,) + batch)
    clipped = np.zeros((n,) + batch, dtype=bool)
    params[0] = start
    # One optimisation step per iteration: SGD is sequential; each step runs the model's
    # time loop over the whole batch of runs.
    for k in range(n + 1):
        res = wall_loss(params[k, ..., 0], params[k, ..., 1], **model)
        loss[k] = res.loss
        if k == n:
            break
        g = np.stack([res.grad_w, res.grad_b], axis=-1)
        norm = np.hypot(res.grad_w, res.grad_b)
        finite = np.isfinite(norm)
        gnorm[k] = np.where(finite, norm, np.nan)
        g = np.where(finite[..., None], g, 0.0)
        if threshold is not None:
            clip = finite & (norm >= threshold)
            clipped[k] = clip
            scale = np.where(clip, threshold / np.where(clip, norm, 1.0), 1.0)
            g = g * scale[..., None]
        params[k + 1] = params[k] - lr * g
    step = np.linalg.norm(np.diff(params, axis=0), axis=-1)
    return Trajectory(params=params, loss=loss, grad_norm=gnorm, clipped=clipped,
                      step_norm=step, lr=lr, threshold=threshold)


class WallDemo(NamedTuple):
    """The paper's Fig. 6 in numbers: the error surface and two SGD runs from one start.

    Attributes
    ----------
    surface : ErrorSurface
    plain : Trajectory
        Plain SGD.
    clipped : Trajectory
        SGD with norm clipping.
    """

    surface: ErrorSurface
    plain: Trajectory
    clipped: Trajectory


def wall_demo(*, start=(4.75, -2.75), lr=0.1, n_steps=60, threshold=1.0,
              w_range=(2.5, 7.5), b_range=(-4.5, -0.5), grid=301, **model):
    """Compute the error surface and a plain and a clipped SGD run from the same start.

    With the defaults both runs climb from the high-error side (``x_50`` in the low attractor,
    ``E ≈ 0.49``) towards the valley that runs along the wall. At step 13 both land on the wall
    (``‖∇E‖ ≈ 570``): the plain step throws the parameters about 57 units away onto the
    ``E ≈ 0.09`` plateau where the gradient vanishes and training stalls, while the clipped
    step moves by ``lr · threshold = 0.1`` and the run goes on down the valley beside the wall.

    Parameters
    ----------
    start : tuple of float
        Starting ``(w, b)``.
    lr, n_steps, threshold : float, int, float
        SGD settings (same learning rate for both runs).
    w_range, b_range : tuple of float
        Extent of the surface grid.
    grid : int
        Grid points per axis.
    **model
        ``T``, ``x0``, ``target``, ``activation`` (see :func:`wall_sgd`).

    Returns
    -------
    WallDemo
    """
    grid = _as_int("grid", grid, minimum=2)
    surf_model = dict(model)
    if "T" in surf_model:
        surf_model["n_steps"] = surf_model.pop("T")
    surface = error_surface(np.linspace(*w_range, grid), np.linspace(*b_range, grid),
                            **surf_model)
    plain = wall_sgd(start, lr=lr, n_steps=n_steps, threshold=None, **model)
    clipped = wall_sgd(start, lr=lr, n_steps=n_steps, threshold=threshold, **model)
    return WallDemo(surface=surface, plain=plain, clipped=clipped)
