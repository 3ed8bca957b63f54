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
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from . import dynamics

__all__ = [
    "save_figure",
    "plot_bifurcation",
    "plot_one_neuron_map",
    "plot_basins",
    "plot_error_surface",
    "history_arrays",
    "load_history",
    "plot_history",
    "write_figures",
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
    """Write ``fig`` as a PNG at ``path`` atomically and return the path.

    The image is rendered into a temporary file in the destination folder (created if
    needed) and moved into place with ``os.replace``, so readers never see a partial file.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or os.PathLike
        Destination file (``.png``).
    dpi : int

    Returns
    -------
    str
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(os.path.basename(path))[0]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}-", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


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


def _xy(h, key):
    """x (``update`` when it matches, else the index) and y of one series, finite y only."""
    y = h[key]
    upd = h.get("update")
    x = upd if upd is not None and upd.shape[0] == y.shape[0] else np.arange(
        y.shape[0], dtype=np.float64)
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
            upd = h.get("update")
            x = upd if upd is not None and upd.shape[0] == y.shape[0] else np.arange(
                y.shape[0], dtype=np.float64)
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
