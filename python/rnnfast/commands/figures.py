"""``rnnfast figures``: write the paper's dynamical-systems and geometry figures as PNG files.

Writes, in ``--out DIR`` (default ``figures``): ``one_neuron.png`` (bifurcation diagram of
``x = w σ(x) + b`` over ``b`` at ``w = 5``, the map's graph, the basins), ``bifurcation_w.png``
(the diagram over ``w`` at ``b = -2.5``) and ``wall.png`` (the error surface of the paper's
Fig. 6 with plain and clipped SGD). With ``--history FILE`` (a ``history.json`` / ``.csv``
written by ``rnnfast train``, repeatable) it also plots each training history. Needs
matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["register", "build_parser", "main"]


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _add_arguments(p):
    p.add_argument("--out", "-o", default="figures", metavar="DIR",
                   help="folder for the PNG files (created if needed; default: figures)")
    p.add_argument("--history", action="append", default=[], metavar="FILE",
                   help="also plot this saved training history (history.json/.csv from "
                        "'rnnfast train', or JSON lines); repeatable")
    p.add_argument("--no-dynamics", action="store_true",
                   help="skip the one-neuron and wall figures (only plot --history files)")
    p.add_argument("--dpi", type=_positive_int, default=120, help="resolution (default 120)")


def _history_name(path, used):
    base = os.path.basename(os.path.dirname(os.path.abspath(path))) or "history"
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"history_{base}" if stem == "history" else f"history_{stem}"
    name = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name)
    out, k = name, 2
    while out in used:
        out, k = f"{name}_{k}", k + 1
    used.add(out)
    return out


def run(args):
    """Execute ``rnnfast figures`` for parsed ``args``; returns the exit status."""
    try:
        from .. import plots
    except ImportError as exc:  # matplotlib missing: the message says how to install it
        print(f"rnnfast figures: {exc}", file=sys.stderr)
        return 2
    if args.no_dynamics and not args.history:
        print("rnnfast figures: nothing to do (--no-dynamics without --history)",
              file=sys.stderr)
        return 2
    try:
        written = {}
        if not args.no_dynamics:
            written.update(plots.write_figures(args.out, dpi=args.dpi))
        used = set(written)
        for hpath in args.history:
            name = _history_name(hpath, used)
            dest = os.path.join(args.out, name + ".png")
            plots.plot_history(hpath, dest, title=os.path.relpath(hpath), dpi=args.dpi)
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
        "figures", help="write the bifurcation, basin and error-surface figures (PNG)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def build_parser():
    """A stand-alone parser for ``rnnfast figures`` (used by :func:`main`)."""
    p = argparse.ArgumentParser(prog="rnnfast figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return p


def main(argv=None):
    """Run ``rnnfast figures`` with ``argv`` (default: ``sys.argv[1:]``)."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
