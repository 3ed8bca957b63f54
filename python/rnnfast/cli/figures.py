"""Write the paper's dynamical-systems, error-surface and gradient-flow figures (PNG).

Writes, in --out DIR (default figures): one_neuron.png (the fixed points of
x = w*sigmoid(x) + b over b at w = 5, the map's graph, the two basins), bifurcation_w.png
(the same over w at b = -2.5) and wall.png (the error surface of the paper's Figure 6 with a
plain and a clipped SGD step). With --history FILE (history.json or history.csv written by
rnnfast train; repeatable) it also plots each training history.

With --gradients it adds the gradient-flow diagnostics of freshly initialised models under
the paper's three initialisations on one minibatch of --task at --length steps:
gradient_flow.png (the norm of dE/dh_k over k and the Omega ratios),
temporal_contributions.png, spectrum.png (largest singular value and spectral radius of
W_rec against 1/gamma), and a spectral_RUN.png per --history. --model FILE (a model.npz from
rnnfast train; repeatable) writes diagnostics_RUN.png for that model. Every input is read
before any figure is written. Needs matplotlib: pip install "rnnfast[plot]".
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError
from .argtypes import positive_int as _positive_int

__all__ = ["register", "main"]


def _add_arguments(p):
    p.add_argument("--out", "-o", default="figures", metavar="DIR",
                   help="folder for the PNG files (created if needed; default: figures)")
    p.add_argument("--history", action="append", default=[], metavar="FILE",
                   help="also plot this saved training history (history.json/.csv from "
                        "'rnnfast train', or JSON lines); repeatable")
    p.add_argument("--no-dynamics", action="store_true",
                   help="skip the one-neuron and wall figures (only plot --history files)")
    p.add_argument("--dpi", type=_positive_int, default=120, help="resolution (default 120)")
    g = p.add_argument_group("gradient-flow diagnostics")
    g.add_argument("--gradients", action="store_true",
                   help="also write gradient_flow.png, temporal_contributions.png and "
                        "spectrum.png (fresh models under the paper's three inits) and a "
                        "spectral_<run>.png for each --history")
    g.add_argument("--model", action="append", default=[], metavar="FILE",
                   help="write diagnostics_<run>.png for this saved model (model.npz from "
                        "'rnnfast train'); repeatable")
    g.add_argument("--task", default="temporal_order",
                   help="task whose minibatch is diagnosed (default: temporal_order)")
    g.add_argument("--length", type=_positive_int, default=100,
                   help="sequence length T of that minibatch (default 100)")
    g.add_argument("--batch", type=_positive_int, default=20,
                   help="minibatch size B (default 20)")
    g.add_argument("--hidden", type=_positive_int, default=50,
                   help="hidden units of the fresh models (default 50, the paper's)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the minibatch and of the fresh models (default 0)")


def _history_name(path, used, prefix="history", default_stem="history"):
    base = os.path.basename(os.path.dirname(os.path.abspath(path))) or prefix
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"{prefix}_{base}" if stem == default_stem else f"{prefix}_{stem}"
    name = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name)
    out, k = name, 2
    while out in used:
        out, k = f"{name}_{k}", k + 1
    used.add(out)
    return out


def _model_diagnostics(path, args):
    """Diagnostics of a saved model on a fresh minibatch of ``args.task``."""
    import numpy as np

    from .. import tasks
    from ..analysis import diagnostics
    from ..nn.model import RNNModel

    model = RNNModel.load(path)
    task = tasks.get_task(args.task)
    if task.n_in != model.n_in or task.n_out != model.n_out:
        raise ValueError(f"{path}: the model has {model.n_in} inputs / {model.n_out} outputs, "
                         f"task {task.name!r} {task.n_in} / {task.n_out} (give --task)")
    batch = task.generate(np.random.default_rng(args.seed), args.batch, args.length,
                          dtype=model.dtype)
    return diagnostics.diagnose(model, batch.u, batch.targets, batch.mask)


def run(args):
    """Execute ``rnnfast figures`` for parsed ``args``; returns the exit status."""
    try:
        from .. import plots
    except ImportError as exc:  # matplotlib missing: the message says how to install it
        print(f"rnnfast figures: {exc}", file=sys.stderr)
        return 2
    gradients = getattr(args, "gradients", False)
    models = getattr(args, "model", [])
    if args.no_dynamics and not (args.history or gradients or models):
        print("rnnfast figures: nothing to do (--no-dynamics without --history, --gradients "
              "or --model)", file=sys.stderr)
        return 2
    try:  # read every input first: a bad one must not leave half the figures behind
        for hpath in args.history:
            plots.load_history(hpath)
        diags = {mpath: _model_diagnostics(mpath, args) for mpath in models}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"rnnfast figures: {exc}") from None
    try:
        written = {}
        if not args.no_dynamics:
            written.update(plots.write_figures(args.out, dpi=args.dpi))
        if gradients:
            written.update(plots.write_gradient_figures(
                args.out, task=args.task, length=args.length, batch=args.batch,
                hidden=args.hidden, seed=args.seed, dpi=args.dpi))
        used = set(written)
        for hpath in args.history:
            name = _history_name(hpath, used)
            dest = os.path.join(args.out, name + ".png")
            plots.plot_history(hpath, dest, title=os.path.relpath(hpath), dpi=args.dpi)
            written[name] = dest
            if gradients:
                sname = _history_name(hpath, used, prefix="spectral")
                dest = os.path.join(args.out, sname + ".png")
                try:
                    plots.plot_spectral_history(hpath, dest, dpi=args.dpi,
                                                title=f"W_rec spectrum, {os.path.relpath(hpath)}")
                    written[sname] = dest
                except ValueError as exc:  # a history without ρ: say so, keep going
                    print(f"rnnfast figures: {hpath}: no spectral plot ({exc})", file=sys.stderr)
        for mpath in models:
            name = _history_name(mpath, used, prefix="diagnostics", default_stem="model")
            dest = os.path.join(args.out, name + ".png")
            plots.plot_diagnostics(diags[mpath], dest, dpi=args.dpi,
                                   title=f"{os.path.relpath(mpath)} on {args.task}, "
                                         f"T = {args.length}, B = {args.batch}")
            written[name] = dest
    except ImportError as exc:
        print(f"rnnfast figures: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError) as exc:
        print(f"rnnfast figures: {exc}", file=sys.stderr)
        return 1
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def register(subparsers):
    """Add the ``figures`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "figures", help="write the bifurcation, basin, error-surface and gradient-flow figures",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv=None):
    """``rnnfast figures ARGV...`` (``python -m rnnfast.cli.figures``)."""
    from . import run_subcommand

    return run_subcommand("figures", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
