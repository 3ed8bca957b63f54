"""Figures for the paper's dynamical-systems and geometric pictures, and for training histories.

matplotlib is an optional dependency (the ``plot`` extra); it is imported only inside these
functions and used through the object-oriented API with the Agg canvas, so nothing here needs
a display or changes the global pyplot backend. Every ``path=`` argument writes a PNG
atomically (a temporary file in the same folder, then ``os.replace``).

Main entry points:

* :func:`plot_bifurcation` — fixed points of ``x = w σ(x) + b`` along ``b`` or ``w`` (Fig. 3);
* :func:`plot_one_neuron_map`, :func:`plot_basins` — the map's graph and its basins;
* :func:`plot_error_surface` — the wall of Fig. 6 with plain and clipped SGD runs;
* :func:`plot_history` — loss, pre-clip gradient norm with clipping events, Ω and spectral
  radius of a saved training history;
* :func:`write_figures` — all of the above into a folder (used by ``rnnfast figures``).

Gradient-flow diagnostics (:mod:`rnnfast.analysis.diagnostics`; these need the C++ core):

* :func:`plot_gradient_flow` — ‖∂E/∂h_k‖ over k (log scale) with the bound (γλ₁)^{T−k};
* :func:`plot_omega_ratios` — the Ω ratios r_k over k against 1;
* :func:`plot_temporal_contributions` — ‖∂E_t/∂h_t · ∂h_t/∂h_k‖ for several t (eq. 4-5);
* :func:`plot_spectrum` — λ₁ and ρ of W_rec against 1/γ; :func:`plot_spectral_history` —
  the same over the updates of a saved training history;
* :func:`plot_diagnostics` — one model's four panels;
* :func:`write_gradient_figures` — freshly initialised models under the paper's three
  initialisations, compared, into a folder (``rnnfast figures --gradients``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np

from .analysis import dynamics
from .fileio import atomic_write
from .experiments.synthetic import INITS, METHODS

__all__ = [
    "plot_figure7",
    "plot_learning_curves",
    "plot_generalization",
    "plot_memory_probes",
    "save_figure",
    "plot_bifurcation",
    "plot_one_neuron_map",
    "plot_basins",
    "plot_error_surface",
    "history_arrays",
    "load_history",
    "plot_history",
    "write_figures",
    "plot_gradient_flow",
    "plot_omega_ratios",
    "plot_temporal_contributions",
    "plot_spectrum",
    "plot_spectral_history",
    "plot_diagnostics",
    "write_gradient_figures",
]

_MPL_MISSING = ("rnnfast.plots needs matplotlib, an optional dependency: install it with "
                "`pip install 'rnnfast[plot]'` or `pip install matplotlib`")

_STABLE_STYLE = dict(color="tab:blue", lw=2.0, ls="-")
_UNSTABLE_STYLE = dict(color="tab:red", lw=1.5, ls="--")


def _figure(figsize):
    """A new matplotlib Figure attached to an Agg canvas (no pyplot, no display)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(_MPL_MISSING) from exc
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _axes(ax, figsize):
    if ax is None:
        fig = _figure(figsize)
        return fig, fig.add_subplot()
    return ax.figure, ax


def save_figure(fig, path, *, dpi=120):
    """Write ``fig`` as a PNG at ``path`` atomically (:func:`rnnfast.fileio.atomic_write`:
    readers never see a partial file) and return the path."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    return os.fspath(path)


def _finish(fig, path, dpi):
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


# --------------------------------------------------------------------------- one neuron


def plot_bifurcation(diagram=None, path=None, *, ax=None, dpi=120):
    """Draw a bifurcation diagram: stable fixed points solid, unstable ones dashed.

    The interval where two attractors coexist is shaded and the bifurcation values are marked.

    Parameters
    ----------
    diagram : dynamics.BifurcationDiagram, optional
        Default: ``dynamics.bifurcation_diagram()`` (sigmoid, ``w = 5``, swept ``b``).
    path : str or os.PathLike, optional
        Write the figure there as a PNG.
    ax : matplotlib.axes.Axes, optional
        Draw into these axes instead of a new figure.
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    d = dynamics.bifurcation_diagram() if diagram is None else diagram
    fig, ax = _axes(ax, (6.0, 4.5))
    v = d.values
    for k in range(d.x.shape[1]):
        col = d.x[:, k]
        stable = np.where(d.stable[:, k], col, np.nan)
        unstable = np.where(~d.stable[:, k] & ~np.isnan(col), col, np.nan)
        ax.plot(v, stable, **_STABLE_STYLE, label="stable fixed point" if k == 0 else None)
        ax.plot(v, unstable, **_UNSTABLE_STYLE,
                label="unstable fixed point" if k == 0 else None)
    bif = d.bifurcations[(d.bifurcations >= v.min()) & (d.bifurcations <= v.max())]
    for i, val in enumerate(bif):
        ax.axvline(val, color="0.4", lw=0.8, ls=":")
        ax.annotate(f"{d.over}{i + 1} = {val:.4g}", (val, 0.0), xycoords=("data", "axes fraction"),
                    xytext=(-4 if i == 0 else 4, 8 + 14 * i), textcoords="offset points",
                    ha="right" if i == 0 else "left", fontsize=8, color="0.25")
        # The fold point itself: where the stable and the unstable branch meet (slope 1).
        if d.over == "b":
            fp = dynamics.fixed_points(d.fixed_value, val, d.activation)
        else:
            fp = dynamics.fixed_points(val, d.fixed_value, d.activation)
        if fp.x.size:
            k = int(np.argmin(np.abs(fp.slope - 1.0)))
            ax.plot([val], [fp.x[k]], "o", color="k", ms=4, zorder=3,
                    label="fold (F'(x*) = 1)" if i == 0 else None)
    if bif.size == 2:
        ax.axvspan(bif[0], bif[1], color="tab:orange", alpha=0.12, lw=0,
                   label="two attractors coexist")
    ax.set_xlabel(d.over)
    ax.set_ylabel("fixed point x* (asymptotic state $x_\\infty$)")
    sig = "σ" if d.activation != "linear" else "x"
    ax.set_title(f"x ← w {sig}(x) + b, {d.activation}, {d.fixed_name} = {d.fixed_value:g}")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _finish(fig, path, dpi)


def plot_one_neuron_map(w=5.0, b_values=None, path=None, *, activation="sigmoid", ax=None,
                        dpi=120):
    """Draw ``F(x) = w σ(x) + b`` against the diagonal for a few biases, fixed points marked.

    Parameters
    ----------
    w : float
    b_values : array_like, shape (K,), optional
        Biases to draw; default: just below, inside and just above the bistable interval.
    path : str or os.PathLike, optional
    activation : {"sigmoid", "tanh"}
    ax : matplotlib.axes.Axes, optional
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    if b_values is None:
        bif = dynamics.bifurcation_values(w=w, activation=activation)
        if bif.size == 2:
            width = bif[1] - bif[0]
            b_values = [bif[0] - 0.5 * width, 0.5 * (bif[0] + bif[1]), bif[1] + 0.5 * width]
        else:
            b_values = [-1.0, 0.0, 1.0]
    b_values = np.atleast_1d(np.asarray(b_values, dtype=np.float64))
    fig, ax = _axes(ax, (5.0, 4.5))
    lo = min(float(b_values.min()) + min(w, 0.0), -abs(w)) - 1.0
    hi = max(float(b_values.max()) + max(w, 0.0), abs(w)) + 1.0
    xs = np.linspace(lo, hi, 600)
    ax.plot(xs, xs, color="0.3", lw=1, label="x (diagonal)")
    colors = ["tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"]
    for i, bv in enumerate(b_values):
        c = colors[i % len(colors)]
        ax.plot(xs, dynamics.one_neuron_map(xs, w, bv, activation), color=c, lw=1.5,
                label=f"b = {bv:.4g}")
        fp = dynamics.fixed_points(w, bv, activation)
        ax.scatter(fp.x[fp.stable], fp.x[fp.stable], color=c, s=30, zorder=3)
        ax.scatter(fp.x[~fp.stable], fp.x[~fp.stable], facecolors="white", edgecolors=c,
                   s=30, zorder=3)
    ax.set_xlabel("$x_{t-1}$")
    ax.set_ylabel("$x_t$")
    ax.set_title(f"map F(x) = w σ(x) + b, w = {w:g} (filled: stable)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _finish(fig, path, dpi)


def plot_basins(w=5.0, b=-2.5, path=None, *, activation="sigmoid", x0=None, ax=None,
                dpi=120):
    """Draw the asymptotic state ``x_∞`` reached from each initial state ``x_0``.

    Parameters
    ----------
    w, b : float
    path : str or os.PathLike, optional
    activation : {"sigmoid", "tanh", "linear"}
    x0 : array_like, shape (N,), optional
        Initial states; default 801 points spanning the fixed points with a margin.
    ax : matplotlib.axes.Axes, optional
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    fp = dynamics.fixed_points(w, b, activation)
    if x0 is None:
        span = max(2.0, float(np.ptp(fp.x)) if fp.x.size else 0.0)
        centre = float(np.mean(fp.x)) if fp.x.size else 0.0
        x0 = np.linspace(centre - span, centre + span, 801)
    x0 = np.asarray(x0, dtype=np.float64)
    _, label, x_inf = dynamics.basins(x0, w, b, activation)
    fig, ax = _axes(ax, (5.0, 4.5))
    ax.plot(x0, x_inf, color="tab:blue", lw=2, label="$x_\\infty$ from $x_0$")
    for x, st in zip(fp.x, fp.stable):
        if st:
            ax.axhline(x, color="tab:blue", lw=0.8, ls=":")
        else:
            ax.axvline(x, color="tab:red", lw=1.2, ls="--",
                       label=f"basin boundary (unstable x* = {x:.3g})")
    ax.set_xlabel("initial state $x_0$")
    ax.set_ylabel("asymptotic state $x_\\infty$")
    ax.set_title(f"basins of attraction, w = {w:g}, b = {b:g}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------- the wall


def _draw_trajectory(ax, traj, color, label, view):
    p = traj.params
    ax.plot(p[:, 0], p[:, 1], ".-", color=color, lw=1.2, ms=4, label=label, zorder=3)
    ax.plot(p[0, 0], p[0, 1], "o", color=color, ms=7, mec="k", zorder=4)
    (w0, w1), (b0, b1) = view
    inside = (p[:, 0] >= w0) & (p[:, 0] <= w1) & (p[:, 1] >= b0) & (p[:, 1] <= b1)
    for k in np.flatnonzero(inside[:-1] & ~inside[1:]):
        tgt = p[k + 1]
        ax.annotate(f"step {k}: jumps {traj.step_norm[k]:.3g}\nto (w, b) = ({tgt[0]:.3g}, "
                    f"{tgt[1]:.3g})", xy=(p[k, 0], p[k, 1]), xytext=(12, 28),
                    textcoords="offset points", fontsize=8, color=color,
                    bbox=dict(boxstyle="round", fc="white", ec=color, alpha=0.85),
                    arrowprops=dict(arrowstyle="->", color=color))
        break


def plot_error_surface(demo=None, path=None, *, dpi=120):
    """Draw the wall (paper's Fig. 6): log-scale contours of E over (w, b) with SGD runs.

    Left: ``log10 E`` over the grid, the plain SGD run (red) and the clipped one (white); a
    plain step that leaves the view is annotated with its length and destination. Right: the
    pre-clip gradient norm at each step of both runs (log scale), the clipping threshold and
    the clipped steps.

    Parameters
    ----------
    demo : dynamics.WallDemo, optional
        Default: ``dynamics.wall_demo()``.
    path : str or os.PathLike, optional
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    demo = dynamics.wall_demo() if demo is None else demo
    s = demo.surface
    fig = _figure((12.0, 5.0))
    ax, ax2 = fig.subplots(1, 2, width_ratios=[1.25, 1.0])
    tiny = np.finfo(np.float64).tiny
    logE = np.log10(np.maximum(s.loss, tiny))
    lo = max(math.floor(float(np.nanmin(logE))), -8)
    hi = math.ceil(float(np.nanmax(logE)) * 4.0) / 4.0
    levels = np.arange(lo, hi + 1e-9, 0.25)
    cs = ax.contourf(s.w, s.b, np.clip(logE, lo, None), levels=levels, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="log10 E", ticks=np.arange(lo, hi + 1e-9, 1.0))
    view = ((float(s.w[0]), float(s.w[-1])), (float(s.b[0]), float(s.b[-1])))
    thr = demo.clipped.threshold
    _draw_trajectory(ax, demo.plain, "tab:red", "SGD", view)
    _draw_trajectory(ax, demo.clipped, "white", f"SGD + clipping (threshold {thr:g})", view)
    ax.set_xlim(*view[0])
    ax.set_ylim(*view[1])
    # Zoom on the clipped run, whose steps are at most lr·threshold long.
    pc = demo.clipped.params
    ok = np.all(np.isfinite(pc), axis=1)
    if ok.any():
        (w0, b0), (w1, b1) = pc[ok].min(axis=0), pc[ok].max(axis=0)
        pad = 0.15 * max(w1 - w0, b1 - b0, 4.0 * demo.clipped.lr * (thr or 1.0))
        zoom = ((w0 - pad, w1 + pad), (b0 - pad, b1 + pad))
        ins = ax.inset_axes([0.6, 0.04, 0.38, 0.38])
        sel_w = (s.w >= zoom[0][0]) & (s.w <= zoom[0][1])
        sel_b = (s.b >= zoom[1][0]) & (s.b <= zoom[1][1])
        if sel_w.sum() >= 2 and sel_b.sum() >= 2:
            ins.contourf(s.w[sel_w], s.b[sel_b], np.clip(logE[np.ix_(sel_b, sel_w)], lo, None),
                         levels=levels, cmap="viridis")
        ins.plot(demo.plain.params[:, 0], demo.plain.params[:, 1], ".-", color="tab:red",
                 lw=1, ms=3)
        ins.plot(pc[:, 0], pc[:, 1], ".-", color="white", lw=1, ms=3)
        ins.set_xlim(*zoom[0])
        ins.set_ylim(*zoom[1])
        ins.tick_params(labelsize=6)
        ins.set_title("zoom", fontsize=7, pad=2)
        ax.indicate_inset_zoom(ins, edgecolor="0.2")
    ax.set_xlabel("w (recurrent weight)")
    ax.set_ylabel("b (bias)")
    ax.set_title("E = (σ(x$_{50}$) − 0.7)², x$_t$ = w σ(x$_{t-1}$) + b, x$_0$ = 0.5")
    ax.legend(loc="lower left", fontsize=8, facecolor="0.85")

    # Floor the log axis a little below the clipped run's smallest norm: on the plateau the
    # plain run reaches after its jump, the gradient is ~1e-35 and would squash the plot.
    gc = demo.clipped.grad_norm[np.isfinite(demo.clipped.grad_norm)
                                & (demo.clipped.grad_norm > 0)]
    floor = 10.0 ** (math.floor(math.log10(float(gc.min()))) - 2) if gc.size else 1e-8
    for traj, color, name in ((demo.plain, "tab:red", "SGD"),
                              (demo.clipped, "tab:blue", "SGD + clipping")):
        k = np.arange(traj.grad_norm.shape[0])
        g = traj.grad_norm
        below = np.isfinite(g) & (g < floor)
        ax2.semilogy(k, np.maximum(g, floor), ".-", color=color, lw=1, label=name)
        if below.any():
            first = int(np.flatnonzero(below)[0])
            ax2.annotate(f"{name}: ‖∇E‖ < {floor:.0e} from step {first}\n"
                         f"(min {np.nanmin(g):.1e}: stuck on a plateau)",
                         xy=(first, floor), xytext=(first + 2, floor * 30), fontsize=8,
                         color=color, arrowprops=dict(arrowstyle="->", color=color))
    if thr is not None:
        ax2.axhline(thr, color="0.3", lw=0.8, ls="--", label=f"threshold {thr:g}")
        kc = np.flatnonzero(demo.clipped.clipped)
        ax2.plot(kc, demo.clipped.grad_norm[kc], "x", color="k", ms=8, label="clipped step")
    ax2.set_xlabel("SGD step")
    ax2.set_ylabel("pre-clip ‖∇E‖")
    ax2.set_title(f"gradient norm per step (lr = {demo.plain.lr:g})")
    ax2.legend(loc="best", fontsize=8)
    ax2.set_ylim(bottom=floor / 2)
    ax2.grid(alpha=0.3, which="both")
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------- histories


def _to_float(v):
    if v is None:
        return math.nan
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        v = v.strip()
        if v.lower() in ("true", "false"):
            return 1.0 if v.lower() == "true" else 0.0
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _columns(obj):
    """Dict of lists or list of dicts -> dict of float arrays (see :func:`history_arrays`)."""
    if isinstance(obj, Mapping):
        out = {}
        for k, vals in obj.items():
            if vals is None or isinstance(vals, (str, bytes, Mapping)) or np.isscalar(vals):
                continue
            try:
                seq = list(vals)
            except TypeError:
                continue
            out[str(k)] = np.array([_to_float(v) for v in seq], dtype=np.float64)
        return out
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        keys = []
        for rec in obj:
            if not isinstance(rec, Mapping):
                raise TypeError("history must be a dict of lists or a list of dicts, got a list "
                                f"holding {type(rec).__name__}")
            keys.extend(k for k in rec if k not in keys)
        return {str(k): np.array([_to_float(rec.get(k)) for rec in obj], dtype=np.float64)
                for k in keys}
    raise TypeError(f"history must be a dict of lists or a list of dicts, got "
                    f"{type(obj).__name__}")


def _split(history):
    """Return (per-update part, validation part or None) of a history object."""
    if isinstance(history, Mapping):
        for key in ("columns", "history"):
            if isinstance(history.get(key), (Mapping, list, tuple)):
                valid = history.get("validation", history.get("validations"))
                return history[key], (valid if isinstance(valid, (list, tuple, Mapping))
                                       else None)
    return history, None


def history_arrays(history):
    """Normalise the per-update part of a training history to a dict of float arrays.

    Parameters
    ----------
    history : dict of lists, list of dicts, or a dict wrapping one of them
        One record per logged update. Wrappers understood: the trainer's saved JSON
        ``{"columns": {...}, "validation": [...], ...}`` and ``{"history": ...}``. Missing
        entries and values that are not numbers become NaN; booleans become 0/1.

    Returns
    -------
    dict of str -> ndarray, shape (N_key,)
    """
    return _columns(_split(history)[0])


def _read_history_file(path):
    path = os.fspath(path)
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    if path.lower().endswith(".csv"):
        return list(csv.DictReader(io.StringIO(text)))
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ValueError(f"path {path!r} is neither JSON nor JSON lines: {exc}") from None


def load_history(path):
    """Read a saved training history as :func:`history_arrays` would.

    Formats: ``.json`` (the trainer's ``{"columns": ..., "validation": ...}``, a dict of lists,
    a list of dicts, or ``{"history": ...}``), JSON lines (one dict per line) and ``.csv``
    (one row per update, a header line of names).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict of str -> ndarray
    """
    return history_arrays(_read_history_file(path))


_LOSS_KEYS = ("loss", "train_loss", "valid_loss", "test_loss")
_NORM_KEYS = ("grad_norm", "norm", "pre_clip_norm")
_EVENT_KEYS = ("explosion", "exploded")


def _update_axis(h, n):
    """The x of a series of n records: ``update`` when it has n entries, else the index."""
    upd = h.get("update")
    return upd if upd is not None and upd.shape[0] == n else np.arange(n, dtype=np.float64)


def _xy(h, key):
    """x (:func:`_update_axis`) and y of one series, finite y only."""
    y = h[key]
    x = _update_axis(h, y.shape[0])
    ok = np.isfinite(y) & np.isfinite(x)
    return x[ok], y[ok]


def _has(h, key):
    return h is not None and key in h and bool(np.any(np.isfinite(h[key])))


def plot_history(history, path=None, *, title=None, dpi=120):
    """Plot a training history: loss, pre-clip gradient norm, Ω, spectral radius, errors.

    Panels are drawn only for the quantities present; missing keys and missing values (None,
    NaN, non-numbers) are tolerated, and series logged only now and then (``rho``) are drawn
    through their logged points. Recognised per-update keys: ``update`` (x-axis, else the record
    index); ``loss``, ``train_loss``, ``valid_loss``, ``test_loss``; ``grad_norm`` or ``norm``
    (pre-clip, log scale) with ``clipped`` (truthy: the step was clipped, marked ×),
    ``explosion`` (marked ▲) and ``threshold`` (dashed); ``omega``; ``rho`` (spectral radius
    of W_rec, with the line 1). A trainer history's ``validation`` records add their ``loss``
    to the loss panel and an ``error`` panel.

    Parameters
    ----------
    history : dict of lists, list of dicts, the trainer's saved dict, or a path to a saved
        ``.json`` / ``.jsonl`` / ``.csv`` history
    path : str or os.PathLike, optional
    title : str, optional
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If the history holds none of the plotted quantities.
    """
    if isinstance(history, (str, os.PathLike)):
        history = _read_history_file(history)
    per_update, valid = _split(history)
    h = _columns(per_update)
    v = _columns(valid) if valid is not None else None

    panels = []
    if any(_has(h, k) for k in _LOSS_KEYS) or _has(v, "loss"):
        panels.append("loss")
    norm_key = next((k for k in _NORM_KEYS if _has(h, k)), None)
    if norm_key:
        panels.append("norm")
    if _has(h, "omega"):
        panels.append("omega")
    if _has(h, "rho") or _has(v, "rho"):
        panels.append("rho")
    if _has(h, "error") or _has(v, "error"):
        panels.append("error")
    if not panels:
        raise ValueError("history has none of the keys to plot: loss, grad_norm/norm, omega, "
                         f"rho, error (got keys {sorted(h)})")
    fig = _figure((8.0, 2.3 * len(panels) + 0.6))
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True))
    for ax, panel in zip(axes, panels):
        if panel == "loss":
            ys = []
            for k in _LOSS_KEYS:
                if _has(h, k):
                    x, y = _xy(h, k)
                    ax.plot(x, y, lw=1, label=k)
                    ys.append(y)
            if _has(v, "loss"):
                x, y = _xy(v, "loss")
                ax.plot(x, y, "o-", ms=3, lw=1, color="tab:orange", label="validation loss")
                ys.append(y)
            if all(np.all(y > 0) for y in ys):
                ax.set_yscale("log")
            ax.set_ylabel("loss")
            ax.legend(loc="best", fontsize=8)
        elif panel == "norm":
            y = h[norm_key]
            x = _update_axis(h, y.shape[0])
            yp = np.where(y > 0, y, np.nan)
            ax.semilogy(x, yp, lw=0.8, color="tab:blue", label=f"{norm_key} (pre-clip)")
            if "clipped" in h and h["clipped"].shape[0] == y.shape[0]:
                c = np.nan_to_num(h["clipped"]) > 0
                if c.any():
                    ax.plot(x[c], yp[c], "x", color="tab:red", ms=5,
                            label=f"clipped ({int(c.sum())})")
            for k in _EVENT_KEYS:
                if k in h and h[k].shape[0] == y.shape[0]:
                    e = np.nan_to_num(h[k]) > 0
                    if e.any():
                        ax.plot(x[e], yp[e], "^", color="tab:orange", ms=7, mfc="none",
                                label=f"explosion ({int(e.sum())})")
            if _has(h, "threshold"):
                t = h["threshold"]
                if t.shape[0] == y.shape[0]:
                    ax.plot(x, t, "--", color="0.3", lw=0.8, label="threshold")
                else:
                    ax.axhline(float(np.nanmax(t)), ls="--", color="0.3", lw=0.8,
                               label="threshold")
            ax.set_ylabel("pre-clip ‖g‖")
            ax.legend(loc="best", fontsize=8)
        elif panel == "omega":
            x, y = _xy(h, "omega")
            ax.plot(x, y, lw=1, color="tab:green")
            ax.set_ylabel("Ω")
        elif panel == "rho":
            src = h if _has(h, "rho") else v
            x, y = _xy(src, "rho")
            ax.plot(x, y, ".-" if x.size < 200 else "-", ms=3, lw=1, color="tab:purple")
            ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
            ax.set_ylabel("ρ(W_rec)")
        else:
            for src, name in ((h, "error"), (v, "validation error")):
                if _has(src, "error"):
                    x, y = _xy(src, "error")
                    ax.plot(x, y, "o-", ms=3, lw=1, label=name)
            ax.set_ylabel("error rate")
            ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    axes[-1].set_xlabel("update")
    if title:
        fig.suptitle(title)
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------- gradient flow

_CYCLE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
          "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def _as_flow_map(obj, what):
    """label -> object, from one object or a mapping; Diagnostics give their ``what`` part."""
    from .analysis import diagnostics as _diag

    items = dict(obj) if isinstance(obj, Mapping) else {None: obj}
    if not items:
        raise ValueError(f"{what}: nothing to plot (empty mapping)")
    out = {}
    for k, v in items.items():
        if isinstance(v, _diag.Diagnostics):
            v = {"flow": v.flow, "contributions": v.contributions, "spectrum": v.spectrum}[what]
        elif what == "spectrum" and isinstance(v, _diag.GradientFlow):
            v = v.spectrum
        want = {"flow": _diag.GradientFlow, "contributions": _diag.TemporalContributions,
                "spectrum": _diag.SpectralReport}[what]
        if not isinstance(v, want):
            raise TypeError(f"expected a {want.__name__} (or Diagnostics, or a mapping of "
                            f"them), got {type(v).__name__}")
        out[k] = v
    return out


def _band(a):
    """Median and quartiles over axis 1 of (N, B), positive finite values only (log axes)."""
    a = np.where(np.isfinite(a) & (a > 0), a, np.nan)
    ok = ~np.all(np.isnan(a), axis=1)
    med = np.full(a.shape[0], np.nan)
    q1 = med.copy()
    q3 = med.copy()
    if ok.any():
        med[ok] = np.nanmedian(a[ok], axis=1)
        q1[ok], q3[ok] = np.nanpercentile(a[ok], [25, 75], axis=1)
    return med, q1, q3


def _log_limits(ax, arrays, floor_decades=None):
    vals = np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.array([])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size:
        lo, hi = float(vals.min()), float(vals.max())
        if floor_decades is not None:
            lo = max(lo, hi * 10.0 ** -floor_decades)
        ax.set_ylim(lo / 3.0, hi * 3.0)


def plot_gradient_flow(flows, path=None, *, relative=True, bound=True, ax=None, title=None,
                       dpi=120):
    """Draw the gradient-flow profile ‖∂E/∂h_k‖ over the steps k (log scale).

    One curve per flow: the median over the minibatch, with the 25-75 % band. With
    ``relative=True`` each example is divided by its value at the last step T, so models
    with different loss scales compare (for a cost read at the last step this is
    ‖∂E/∂h_T · ∂h_T/∂h_k‖ / ‖∂E/∂h_T‖). With ``bound=True`` (relative only) the paper's bound
    (γλ₁)^{T−k} is drawn dashed in the same colour (ρ^{T−k} for a linear network).

    Parameters
    ----------
    flows : diagnostics.GradientFlow or Diagnostics, or a mapping label -> one of them
    path : str or os.PathLike, optional
    relative : bool
    bound : bool
    ax : matplotlib.axes.Axes, optional
    title : str, optional
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    flows = _as_flow_map(flows, "flow")
    fig, ax = _axes(ax, (6.5, 4.5))
    drawn = []
    for i, (label, f) in enumerate(flows.items()):
        c = _CYCLE[i % len(_CYCLE)]
        y = f.relative() if relative else f.dh_norm
        med, q1, q3 = _band(y)
        k = f.steps
        name = label if label is not None else "median over the batch"
        if np.isfinite(med[0]):
            name += f" ({med[0]:.1e} at k = 1)"
        elif np.isfinite(med).any():
            name += f" (norm underflows to 0 for k ≤ {int(np.flatnonzero(np.isfinite(med))[0])})"
        ax.semilogy(k, med, color=c, lw=1.8, label=name)
        ax.fill_between(k, q1, q3, color=c, alpha=0.18, lw=0)
        drawn += [med, q1, q3]
        rate = f.spectrum.per_step_bound
        if relative and bound and np.isfinite(rate) and rate > 0:
            T = k[-1]
            with np.errstate(over="ignore", under="ignore"):
                yb = np.exp((T - k) * math.log(rate))
            sym = "ρ" if f.spectrum.activation == "linear" else "γλ₁"
            ax.semilogy(k, yb, color=c, lw=1.0, ls="--",
                        label=f"bound ({sym})$^{{T-k}}$, {sym} = {rate:.3g}")
    _log_limits(ax, drawn)
    ax.set_xlabel("step k")
    ax.set_ylabel("‖∂E/∂h$_k$‖ / ‖∂E/∂h$_T$‖" if relative else "‖∂E/∂h$_k$‖")
    ax.set_title(title or "gradient flow back through time")
    ax.legend(loc="best", fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _finish(fig, path, dpi)


def plot_omega_ratios(flows, path=None, *, space="h", ax=None, title=None, dpi=120):
    """Draw the Ω ratios r_k = ‖∂E/∂h_{k+1} · ∂h_{k+1}/∂h_k‖ / ‖∂E/∂h_{k+1}‖ over k.

    Median over the minibatch with the 25-75 % band, the line r = 1 that Ω pulls towards,
    and the per-step bound γλ₁ (dotted, same colour) that no ratio exceeds.

    Parameters
    ----------
    flows : diagnostics.GradientFlow or Diagnostics, or a mapping label -> one of them
    path : str or os.PathLike, optional
    space : {"h", "x"}
        The h-space ratio (authors' code, ``ratio``) or the paper's x-space one (``ratio_x``).
    ax : matplotlib.axes.Axes, optional
    title : str, optional
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    if space not in ("h", "x"):
        raise ValueError(f"space: expected 'h' or 'x', got {space!r}")
    flows = _as_flow_map(flows, "flow")
    fig, ax = _axes(ax, (6.5, 4.5))
    drawn = []
    for i, (label, f) in enumerate(flows.items()):
        c = _CYCLE[i % len(_CYCLE)]
        r = f.ratio if space == "h" else f.ratio_x
        med, q1, q3 = _band(r)
        k = np.arange(r.shape[0])
        ax.semilogy(k, med, color=c, lw=1.5,
                    label=(f"{label}: Ω = {f.omega:.3g}" if label is not None
                           else f"median, Ω = {f.omega:.3g}"))
        ax.fill_between(k, q1, q3, color=c, alpha=0.18, lw=0)
        rate = f.spectrum.per_step_bound
        if np.isfinite(rate) and rate > 0 and f.spectrum.activation != "linear":
            ax.axhline(rate, color=c, lw=0.9, ls=":")
        drawn += [med, q1, q3]
    ax.axhline(1.0, color="0.2", lw=1.0, ls="--", label="r = 1 (Ω's target)")
    _log_limits(ax, drawn + [np.array([1.0])])
    ax.set_xlabel("step k (pair h$_k$ → h$_{k+1}$)")
    ax.set_ylabel("r$_k$" + (" (x-space)" if space == "x" else ""))
    ax.set_title(title or "Ω ratios: error kept from one step to the previous (dotted: γλ₁)")
    ax.legend(loc="best", fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _finish(fig, path, dpi)


def plot_temporal_contributions(contributions, path=None, *, relative=True, ax=None,
                                title=None, dpi=120):
    """Draw ‖∂E_t/∂h_t · ∂h_t/∂h_k‖ over k ≤ t for each chosen step t (log scale).

    Parameters
    ----------
    contributions : diagnostics.TemporalContributions or Diagnostics
    path : str or os.PathLike, optional
    relative : bool
        Divide by the injected error's norm ‖∂E_t/∂h_t‖ (so every curve starts at 1).
    ax : matplotlib.axes.Axes, optional
    title : str, optional
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    tc = _as_flow_map(contributions, "contributions")
    if len(tc) != 1:
        raise ValueError("contributions: expected one TemporalContributions (plot several "
                         "into separate axes)")
    tc = next(iter(tc.values()))
    fig, ax = _axes(ax, (6.5, 4.5))
    y = tc.relative() if relative else tc.norms
    drawn = []
    for i, t in enumerate(tc.steps):
        c = _CYCLE[i % len(_CYCLE)]
        med, q1, q3 = _band(y[i, : t + 1])
        k = np.arange(1, t + 2)
        ax.semilogy(k, med, color=c, lw=1.5, label=f"t = {t + 1}")
        ax.fill_between(k, q1, q3, color=c, alpha=0.15, lw=0)
        ax.plot([t + 1], [med[-1]], "o", color=c, ms=4)
        drawn += [med]
    _log_limits(ax, drawn)
    ax.set_xlim(0, y.shape[1] + 1)
    ax.set_xlabel("step k")
    who = {"loss": "∂E$_t$/∂h$_t$", "random": "p$_t$ (random unit)", "given": "p$_t$"}[tc.probe]
    ax.set_ylabel(f"‖{who} · ∂h$_t$/∂h$_k$‖" + (" / ‖·$_t$‖" if relative and tc.probe != "random"
                                                  else ""))
    ax.set_title(title or "temporal contributions (eq. 4-5)")
    ax.legend(loc="best", fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _finish(fig, path, dpi)


def plot_spectrum(reports, path=None, *, ax=None, title=None, dpi=120):
    """Draw λ₁ (largest singular value) and ρ (spectral radius) of W_rec against 1/γ.

    One group of two bars per model; the bound 1/γ of its activation is drawn across its
    group (λ₁ below it: vanishing guaranteed; above it: explosion possible), and ρ = 1 as a
    dashed line.

    Parameters
    ----------
    reports : diagnostics.SpectralReport, GradientFlow or Diagnostics, or a mapping
        label -> one of them
    path : str or os.PathLike, optional
    ax : matplotlib.axes.Axes, optional
    title : str, optional
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    reps = _as_flow_map(reports, "spectrum")
    fig, ax = _axes(ax, (1.6 + 1.5 * len(reps), 4.5))
    vals = []
    for i, (label, r) in enumerate(reps.items()):
        s = max(r.sigma_max, 1e-12) if np.isfinite(r.sigma_max) else np.nan
        p = max(r.rho, 1e-12) if np.isfinite(r.rho) else np.nan
        ax.bar(i - 0.18, s, 0.34, color="tab:blue", label="λ₁ (largest singular value)"
               if i == 0 else None)
        ax.bar(i + 0.18, p, 0.34, color="tab:orange", label="ρ (spectral radius)"
               if i == 0 else None)
        ax.hlines(r.bound, i - 0.45, i + 0.45, color="tab:red", lw=2.0,
                  label="1/γ (tanh 1, sigmoid 4)" if i == 0 else None)
        sym = "ρ" if r.activation == "linear" else "λ₁"
        lim = "1" if r.activation == "linear" else "1/γ"
        verdict = (f"{sym} < {lim}:\nvanishing\nguaranteed" if r.vanishing_guaranteed else
                   f"{sym} > {lim}:\nexplosion\npossible" if r.explosion_possible else
                   "at the bound")
        ax.annotate(verdict, (i, max(v for v in (s, p, r.bound) if np.isfinite(v))),
                    xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7)
        vals += [s, p, r.bound]
    ax.axhline(1.0, color="0.3", lw=0.8, ls="--", label="ρ = 1")
    ax.set_yscale("log")
    fin = [v for v in vals if np.isfinite(v)]
    if fin:
        ax.set_ylim(min(fin) / 2.0, max(fin) * 4.0)
    names = [str(k) if k is not None else "W_rec" for k in reps]
    ax.set_xticks(range(len(reps)), [f"{n}\n({r.activation})" for n, r in zip(names,
                                                                              reps.values())])
    ax.set_ylabel("value")
    ax.set_title(title or "W_rec spectrum vs the bound 1/γ")
    ax.legend(loc="lower left", fontsize=7)
    ax.grid(alpha=0.3, which="both", axis="y")
    return _finish(fig, path, dpi)


def _history_activation(history):
    """The hidden activation recorded in a trainer history's summary, or None."""
    if isinstance(history, Mapping):
        summ = history.get("summary")
        if isinstance(summ, Mapping) and isinstance(summ.get("model"), Mapping):
            act = summ["model"].get("activation")
            if isinstance(act, str):
                return act
    return None


def plot_spectral_history(history, path=None, *, activation=None, ax=None, title=None,
                          dpi=120):
    """Draw ρ(W_rec) (and λ₁ when logged) over the updates of a training run, against 1/γ.

    Recognised keys: ``rho`` (per update, NaN where not logged, and in the validation
    records), ``sigma_max`` (or ``sigma``) if logged; updates flagged ``explosion`` are
    marked along the bottom.

    Parameters
    ----------
    history : dict, list or the trainer's saved dict, or a path to a saved history
    path : str or os.PathLike, optional
    activation : str, optional
        For the bound 1/γ; default: the one in the trainer's saved ``summary.model`` (no
        bound drawn when unknown).
    ax : matplotlib.axes.Axes, optional
    title : str, optional
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If the history logs neither ρ nor λ₁.
    """
    from .analysis import diagnostics as _diag

    if isinstance(history, (str, os.PathLike)):
        history = _read_history_file(history)
    if activation is None:
        activation = _history_activation(history)
    per_update, valid = _split(history)
    h = _columns(per_update)
    v = _columns(valid) if valid is not None else None
    sig_key = next((k for k in ("sigma_max", "sigma") if _has(h, k)), None)
    if not (_has(h, "rho") or _has(v, "rho") or sig_key):
        raise ValueError("history logs neither 'rho' nor 'sigma_max' (got keys "
                         f"{sorted(h)})")
    fig, ax = _axes(ax, (7.5, 4.0))
    ys = [np.array([1.0])]
    note = "" if sig_key else " ≤ λ₁ (λ₁ not logged)"
    if _has(h, "rho"):
        x, y = _xy(h, "rho")
        ax.plot(x, y, ".-" if x.size < 200 else "-", ms=3, lw=1, color="tab:orange",
                label="ρ(W_rec)" + note)
        ys.append(y)
    elif _has(v, "rho"):
        x, y = _xy(v, "rho")
        ax.plot(x, y, "o-", ms=3, lw=1, color="tab:orange",
                label="ρ(W_rec) (validation)" + note)
        ys.append(y)
    if sig_key:
        x, y = _xy(h, sig_key)
        ax.plot(x, y, ".-" if x.size < 200 else "-", ms=3, lw=1, color="tab:blue",
                label="λ₁(W_rec)")
        ys.append(y)
    ax.axhline(1.0, color="0.3", lw=0.8, ls="--", label="1")
    if activation is not None:
        g = _diag.gamma(activation)
        if g != 1.0:
            ax.axhline(1.0 / g, color="tab:red", lw=1.5, label=f"1/γ = {1 / g:g} ({activation})")
            ys.append(np.array([1.0 / g]))
        else:
            ax.get_lines()[-1].set_label(f"1 = 1/γ ({activation})")
    for k in _EVENT_KEYS:
        if k in h:
            e = np.nan_to_num(h[k]) > 0
            if e.any():
                xe = _update_axis(h, e.shape[0])[e]
                ax.vlines(xe, 0.0, 0.06, transform=ax.get_xaxis_transform(), color="tab:red",
                          lw=1.0, label=f"explosion ({int(e.sum())})")
            break
    fin = np.concatenate(ys)
    fin = fin[np.isfinite(fin)]
    ax.set_ylim(0.0, float(fin.max()) * 1.15)
    ax.set_xlabel("update")
    ax.set_ylabel("value")
    ax.set_title(title or "spectrum of W_rec during training")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _finish(fig, path, dpi)


def plot_diagnostics(diag, path=None, *, title=None, dpi=120):
    """One model's gradient diagnostics in four panels: profile, Ω ratios, temporal
    contributions and spectrum.

    Parameters
    ----------
    diag : diagnostics.Diagnostics
    path : str or os.PathLike, optional
    title : str, optional
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .analysis import diagnostics as _diag

    if not isinstance(diag, _diag.Diagnostics):
        raise TypeError(f"diag: expected a diagnostics.Diagnostics, got {type(diag).__name__}")
    fig = _figure((13.0, 9.0))
    (a1, a2), (a3, a4) = fig.subplots(2, 2)
    plot_gradient_flow(diag.flow, ax=a1)
    plot_omega_ratios(diag.flow, ax=a2)
    plot_temporal_contributions(diag.contributions, ax=a3)
    plot_spectrum(diag.spectrum, ax=a4)
    if title:
        fig.suptitle(title)
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------- all figures


def write_figures(outdir, *, history=None, dpi=120):
    """Write the dynamics and geometry figures (and optionally a history plot) as PNGs.

    Files written in ``outdir`` (created if needed):

    * ``one_neuron.png`` — bifurcation diagram over ``b`` at ``w = 5`` (Fig. 3), the map's
      graph for three biases, and the basins at ``b = -2.5``;
    * ``bifurcation_w.png`` — bifurcation diagram over ``w`` at ``b = -2.5``;
    * ``wall.png`` — the error surface of Fig. 6 with plain and clipped SGD, and the
      per-step gradient norms;
    * ``history.png`` — only when ``history`` is given.

    Parameters
    ----------
    outdir : str or os.PathLike
    history : dict, list or path, optional
        A training history for :func:`plot_history`.
    dpi : int

    Returns
    -------
    dict of str -> str
        Figure name -> path written.
    """
    outdir = os.fspath(outdir)
    os.makedirs(outdir, exist_ok=True)
    written = {}

    fig = _figure((16.0, 4.8))
    a1, a2, a3 = fig.subplots(1, 3, width_ratios=[1.3, 1.0, 1.0])
    plot_bifurcation(dynamics.bifurcation_diagram(over="b", w=5.0), ax=a1)
    plot_one_neuron_map(5.0, ax=a2)
    plot_basins(5.0, -2.5, ax=a3)
    written["one_neuron"] = save_figure(fig, os.path.join(outdir, "one_neuron.png"), dpi=dpi)

    written["bifurcation_w"] = os.path.join(outdir, "bifurcation_w.png")
    plot_bifurcation(dynamics.bifurcation_diagram(over="w", b=-2.5),
                     path=written["bifurcation_w"], dpi=dpi)

    written["wall"] = os.path.join(outdir, "wall.png")
    plot_error_surface(dynamics.wall_demo(), path=written["wall"], dpi=dpi)

    if history is not None:
        written["history"] = os.path.join(outdir, "history.png")
        plot_history(history, path=written["history"], dpi=dpi)
    return written


def write_gradient_figures(outdir, *, task="temporal_order", inits=("basic_tanh", "smart_tanh",
                                                                    "sigmoid"),
                           length=100, batch=20, hidden=50, seed=0, dpi=120):
    """Write the gradient-flow figures of freshly initialised models as PNGs.

    The models (one per initialisation, ``hidden`` units, all on the same minibatch of
    ``task`` at ``length`` steps) are diagnosed by :func:`rnnfast.analysis.diagnostics.init_comparison`.
    Files written in ``outdir`` (created if needed):

    * ``gradient_flow.png`` — the relative profiles ‖∂E/∂h_k‖/‖∂E/∂h_T‖ with their bounds
      (γλ₁)^{T−k}, and the Ω ratios per step;
    * ``temporal_contributions.png`` — one panel per initialisation, ‖p_t ∂h_t/∂h_k‖ for
      t = T/4, T/2, 3T/4, T (random unit p_t for a task read at the last step);
    * ``spectrum.png`` — λ₁ and ρ of each W_rec against 1/γ.

    Parameters
    ----------
    outdir : str or os.PathLike
    task : str or Task
    inits : sequence of str
    length, batch, hidden, seed : int
    dpi : int

    Returns
    -------
    dict of str -> str
        Figure name -> path written.
    """
    from .analysis import diagnostics as _diag

    outdir = os.fspath(outdir)
    os.makedirs(outdir, exist_ok=True)
    diags = _diag.init_comparison(task, inits=inits, length=length, batch=batch,
                                  hidden=hidden, seed=seed)
    tname = task if isinstance(task, str) else getattr(task, "name", type(task).__name__)
    setting = f"{tname}, T = {length}, B = {batch}, H = {hidden}, fresh init"
    written = {}

    fig = _figure((13.0, 4.8))
    a1, a2 = fig.subplots(1, 2)
    plot_gradient_flow(diags, ax=a1, title=f"gradient flow ({setting})")
    plot_omega_ratios(diags, ax=a2)
    written["gradient_flow"] = save_figure(fig, os.path.join(outdir, "gradient_flow.png"),
                                           dpi=dpi)

    fig = _figure((5.2 * len(diags), 4.6))
    axes = np.atleast_1d(fig.subplots(1, len(diags)))
    for ax, (name, d) in zip(axes, diags.items()):
        plot_temporal_contributions(d, ax=ax, title=f"{name}: temporal contributions")
    fig.suptitle(f"temporal contributions, {setting}")
    written["temporal_contributions"] = save_figure(
        fig, os.path.join(outdir, "temporal_contributions.png"), dpi=dpi)

    written["spectrum"] = os.path.join(outdir, "spectrum.png")
    plot_spectrum(diags, path=written["spectrum"], dpi=dpi,
                  title=f"W_rec at initialisation (H = {hidden})")
    return written


_METHOD_STYLE = {"SGD": dict(color="tab:red", marker="o", ls="--"),
                 "SGD-C": dict(color="tab:blue", marker="s", ls="-."),
                 "SGD-CR": dict(color="tab:green", marker="^", ls="-")}


def plot_figure7(points: Sequence[dict], path, *, title: Optional[str] = None, dpi: int = 120):
    """Figure-7-style plot: success rate vs length, one panel per init, one line per method.

    A second row shows the median number of updates to success of the solved
    runs (log scale).  Needs matplotlib (the ``plot`` extra).

    Parameters
    ----------
    points : sequence of dict
        Rows of :func:`aggregate`.
    path : str or os.PathLike
        PNG written atomically.

    Returns
    -------
    str
        The path.

    Raises
    ------
    ImportError
        matplotlib is not installed.
    """
    inits = [i for i in INITS if any(p["init"] == i for p in points)]
    inits += sorted({p["init"] for p in points} - set(inits))
    methods = [m for m in METHODS if any(p["method"] == m for p in points)]
    if not inits:
        raise ValueError("points: nothing to plot")
    n = len(inits)
    fig = _figure((4.2 * n, 6.4))
    axes = fig.subplots(2, n, squeeze=False, sharex=True)
    lengths = sorted({p["length"] for p in points})
    # dodge: shift each method a little along x so that equal curves stay visible
    span = (lengths[-1] - lengths[0]) or max(1, lengths[0])
    shift = {m: (i - (len(methods) - 1) / 2) * 0.012 * span for i, m in enumerate(methods)}
    for j, init in enumerate(inits):
        top, bottom = axes[0][j], axes[1][j]
        any_solved = False
        for m in methods:
            pts = sorted((p for p in points if p["init"] == init and p["method"] == m),
                         key=lambda p: p["length"])
            if not pts:
                continue
            style = _METHOD_STYLE.get(m, {})
            x = [p["length"] + shift[m] for p in pts]
            top.plot(x, [100 * p["success_rate"] for p in pts], label=m,
                     lw=2, ms=6, **style)
            solved = [p for p in pts if p["updates_median"] is not None]
            any_solved = any_solved or bool(solved)
            if solved:
                bottom.plot([p["length"] + shift[m] for p in solved],
                            [p["updates_median"] for p in solved],
                            label=m, lw=1.5, ms=5, **style)
        if not any_solved:
            bottom.text(0.5, 0.5, "no run solved", ha="center", va="center",
                        transform=bottom.transAxes, color="0.4")
        top.set_title(init)
        top.set_ylim(-5, 105)
        top.grid(alpha=0.3)
        bottom.set_yscale("log")
        bottom.grid(alpha=0.3, which="both")
        bottom.set_xlabel("sequence length")
        bottom.set_xticks(lengths)
        if j == 0:
            top.set_ylabel("success rate (%)")
            bottom.set_ylabel("median updates to success")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if title:
        fig.suptitle(title)
    try:  # matplotlib >= 3.7: a legend row below the panels
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    except (TypeError, ValueError):
        axes[0][0].legend(handles, labels, loc="center left")
    save_figure(fig, path, dpi=dpi)
    return os.fspath(path)


# --------------------------------------------------------------------------- #
# the sweep, end to end
# --------------------------------------------------------------------------- #


# --------------------------------------------------------------------------- generalisation
def plot_generalization(summary, path=None, *, dpi=120):
    """Error rate against test length, one line per model, from the summary of
    :func:`rnnfast.experiments.generalization.run_protocol`."""
    fig = _figure((6.4, 3.8))
    ax = fig.add_subplot()
    lengths = [int(L) for L in summary["settings"]["eval_lengths"]]
    for m in summary["models"]:
        err = [100 * m["errors"][str(L)] for L in lengths]
        ax.plot(lengths, err, marker="o", ms=3, lw=1.2,
                label=f"seed {m['seed']}" + ("" if m["solved"] else " (unsolved)"))
    lo, hi = summary["settings"]["min_length"], summary["settings"]["max_length"]
    ax.axvspan(lo, hi, color="0.9", zorder=0, label="training lengths")
    ax.axhline(75, color="0.5", ls=":", lw=1, label="chance (75%)")
    ax.set_xscale("log")
    ax.set_xlabel("test sequence length")
    ax.set_ylabel("errors (%)")
    ax.set_ylim(-2, 80)
    s = summary["settings"]
    ax.set_title(f"temporal order, {s['init']}, α = {s['alpha']:g}: "
                 f"{summary['all_lengths_zero']}/{summary['finished']} models with 0 errors "
                 "at every length", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return _finish(fig, path, dpi)


def plot_memory_probes(summary, path=None, *, dpi=120):
    """Linear-probe accuracy of each bit against the steps after the second marker, for the
    short and the long gap between the markers, one line per model."""
    gaps = ("short gap", "long gap")
    fig = _figure((8.0, 5.2))
    axes = fig.subplots(2, 2, sharex=True, sharey=True, squeeze=False)
    for j, gap in enumerate(gaps):
        for k, m in enumerate(summary["models"]):
            pr = m.get("probes", {}).get(gap)
            if pr is None:
                continue
            # colours repeat after 10 models: the line style tells those apart
            style = dict(color=f"C{k % 10}", ls=("-", "--", ":")[(k // 10) % 3])
            for i, key in enumerate(("probe_first", "probe_second")):
                axes[i][j].plot(pr["lags"], pr[key], marker="o", ms=3, lw=1.1,
                                label=f"seed {m['seed']}", **style)
        first = next((m["probes"][gap] for m in summary["models"] if "probes" in m), None)
        if first is not None:
            axes[0][j].set_title(f"markers at steps {first['p0']} and {first['p1']}", fontsize=9)
        for i, bit in enumerate(("first", "second")):
            ax = axes[i][j]
            ax.set_xscale("log")
            ax.axhline(0.5, color="0.5", ls=":", lw=1)
            ax.set_ylim(0.4, 1.02)
            if j == 0:
                ax.set_ylabel(f"{bit} bit: probe accuracy")
            if i == 1:
                ax.set_xlabel("steps after the second marker")
    axes[0][0].legend(fontsize=7)
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------- Table 1
def plot_learning_curves(out_dir, slugs, path=None, *, dpi=120):
    """Train and validation metric per epoch of every Table-1 cell found in
    ``out_dir/<slug>/epochs.json``, one panel per data set, one colour per method."""
    import json

    runs = {}
    for slug in slugs:
        f = os.path.join(os.fspath(out_dir), slug, "epochs.json")
        if os.path.exists(f):
            with open(f, encoding="utf-8") as fh:
                runs[slug] = [r for r in json.load(fh) if r.get("end_of_epoch")]
    sets = []
    for slug in runs:
        name = slug.rsplit("-SGD", 1)[0]
        if name not in sets:
            sets.append(name)
    fig = _figure((4.0 * max(1, len(sets)), 3.4))
    axes = fig.subplots(1, max(1, len(sets)), squeeze=False)[0]
    colors = {"SGD": "tab:red", "SGD-C": "tab:blue", "SGD-CR": "tab:green"}
    for ax, name in zip(axes, sets):
        for slug, recs in runs.items():
            if slug.rsplit("-SGD", 1)[0] != name or not recs:
                continue
            method = "SGD" + slug.rsplit("-SGD", 1)[1]
            ep = [r["epoch"] for r in recs]
            ax.plot(ep, [r["valid"] for r in recs], color=colors.get(method), lw=1.5,
                    label=f"{method} valid")
            tr = [(r["epoch"], r["train_cost"]) for r in recs if r["train_cost"] is not None]
            if tr:
                ax.plot(*zip(*tr), color=colors.get(method), lw=1, ls="--",
                        label=f"{method} train")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6)
    axes[0].set_ylabel("NLL per step (music) / bits per char (PTB)")
    return _finish(fig, path, dpi)
