"""Train an RNN on one task with SGD, SGD-C or SGD-CR.

The defaults are the paper's temporal-order settings (its Figure 7): 50 hidden units,
learning rate 0.01 without momentum, minibatch 20, norm clipping at 1.0, Omega weight 4,
up to 5M updates, success at < 1% errors on 10,000 fresh sequences.

With --out DIR it writes options.json (every option, so that --resume needs no other),
checkpoint.npz (for --resume), history.json and history.csv (per update: loss, pre-clip
norm, clipped, Omega, spectral radius of W_rec, explosions; the validations) and model.npz
(the final model, rnnfast.nn.RNNModel.load). It ends with a summary table (--json: one JSON
line instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..core import OMEGA_BOUND
from ..errors import UserError
from .outdir import OPTIONS_FILE, add_fresh_argument, claim
from .argtypes import (nonneg_float as _nonneg_float, nonneg_int as _nonneg_int,
                       positive_float as _positive_float, positive_int as _positive_int)

__all__ = ["register", "main"]

#: how loudly: never stored
_TRANSIENT = ("progress", "quiet", "json")
#: how long and how fast the run goes: a resume may change them
_CHANGEABLE = ("max_updates", "time_limit", "threads", "checkpoint_every")


def _method_arg(s):
    from ..train.methods import canonical_method

    try:
        return canonical_method(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _clip_arg(s):
    """A clipper spec: a threshold, auto[:K] (adaptive), none/off."""
    if s in ("none", "off"):
        return "none"
    if s == "auto" or s.startswith("auto:"):
        if s != "auto":
            _positive_float(s[5:])
        return s
    _positive_float(s)
    return s


def add_arguments(p):
    """Add the train options to an argparse parser."""
    from ..nn.init import INIT_SCHEMES

    g = p.add_argument_group("task and model")
    g.add_argument("--task", default="temporal_order",
                   help="task name from rnnfast.tasks (default: temporal_order)")
    g.add_argument("--min-length", type=_positive_int, default=None,
                   help="shortest training sequence; each minibatch draws its length from "
                        "[min, max) (default: the task's, 50 in the authors' code)")
    g.add_argument("--max-length", type=_positive_int, default=None,
                   help="upper end (exclusive) of the length range (default: the task's, 200)")
    g.add_argument("--hidden", type=_positive_int, default=50, help="hidden units (paper: 50)")
    g.add_argument("--init", choices=INIT_SCHEMES, default="smart_tanh",
                   help="initialisation (paper's Fig. 7: sigmoid, basic_tanh, smart_tanh; "
                        "default smart_tanh as in the authors' code)")
    g.add_argument("--activation", choices=("tanh", "sigmoid", "relu", "linear"), default=None,
                   help="hidden activation (default: the one the init is meant for)")
    g.add_argument("--sparse-per", choices=("incoming", "outgoing"), default="incoming",
                   help="smart_tanh: 15 non-zeros per row (incoming, paper) or per column "
                        "(outgoing, authors' code) of W_rec")
    g.add_argument("--h0", choices=("zeros", "learned"), default="zeros",
                   help="initial hidden state: zeros (paper) or a learned vector")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="floating-point type (default float32, as the authors ran)")

    g = p.add_argument_group("method")
    g.add_argument("--method", type=_method_arg, default="SGD-CR",
                   help="SGD: no clipping, no Omega; SGD-C: clipping; SGD-CR: clipping + "
                        "Omega (default). --clip and --alpha override the method's values")
    g.add_argument("--clip", type=_clip_arg, default=None,
                   help="norm-clipping threshold (paper: 1.0), 'auto[:FACTOR]' for FACTOR (1) "
                        "times the running average norm after a 100-update warm-up, or 'none'")
    g.add_argument("--clip-mode", choices=("norm", "elementwise"), default="norm",
                   help="norm: Algorithm 1 (rescale all gradients); elementwise: clamp each entry")
    g.add_argument("--strict-clip", action="store_true",
                   help="clip when norm > threshold (authors' code) instead of >= (paper)")
    g.add_argument("--nonfinite", choices=("shrink", "skip", "raise"), default="shrink",
                   help="when the norm is NaN, Inf or > 1e10: shrink (authors: step = 0.02*W_rec "
                        "on W_rec, 0 elsewhere), skip the update, or raise an error")
    g.add_argument("--alpha", type=_nonneg_float, default=None,
                   help="weight of the regularizer Omega (paper: 4 for temporal order; 0 turns "
                        "Omega off)")
    g.add_argument("--alpha-schedule", default="constant",
                   help="constant, or inverse[:T0] for alpha*T0/(T0+t) (the 1/t decay)")
    g.add_argument("--omega-bound", type=_positive_float, default=OMEGA_BOUND,
                   help="leave pairs with |dE/dh|^2 below this out of Omega (authors: 1e-20)")

    g = p.add_argument_group("optimiser")
    g.add_argument("--lr", type=_positive_float, default=0.01, help="learning rate (paper: 0.01)")
    g.add_argument("--lr-schedule", default="constant",
                   help="constant, step:STEP[:GAMMA], inverse[:T0], or halve[:FACTOR] "
                        "(halve when the validation loss rises)")
    g.add_argument("--momentum", type=_nonneg_float, default=0.0,
                   help="momentum (paper: 0, plain minibatch SGD)")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum (needs --momentum)")
    g.add_argument("--batch-size", type=_positive_int, default=20, help="minibatch size (paper: 20)")

    g = p.add_argument_group("run")
    g.add_argument("--max-updates", type=_positive_int, default=5_000_000,
                   help="stop after this many updates in total (paper: 5M)")
    g.add_argument("--time-limit", type=_positive_float, default=None,
                   help="stop after this many minutes (the run can be resumed)")
    g.add_argument("--valid-every", type=_nonneg_int, default=1000,
                   help="validate every this many updates (0: never)")
    g.add_argument("--valid-size", type=_positive_int, default=10000,
                   help="fresh sequences per validation (paper: 10,000)")
    g.add_argument("--valid-batch", type=_positive_int, default=1000,
                   help="sequences evaluated at once during validation")
    g.add_argument("--success-error", type=_nonneg_float, default=0.01,
                   help="stop when the validation error rate is below this (paper: 0.01; "
                        "0: stop at zero errors)")
    g.add_argument("--rho-every", type=_nonneg_int, default=100,
                   help="record the spectral radius of W_rec every this many updates")
    g.add_argument("--explosion-factor", type=_positive_float, default=10.0,
                   help="flag updates whose pre-clip norm exceeds this multiple of the running "
                        "average norm")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="random seed")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for the C++ core (default: the library's)")
    g.add_argument("--out", default=None,
                   help="output directory: options.json, checkpoint.npz, history.json/.csv, "
                        "model.npz (default: no files)")
    g.add_argument("--checkpoint-every", type=_positive_int, default=10000,
                   help="checkpoint every this many updates (with --out)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the options it "
                        "recorded (--max-updates, --time-limit, --threads may change)")
    add_fresh_argument(g)
    g.add_argument("--overwrite", dest="fresh", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal and tqdm is installed)")
    g.add_argument("--quiet", action="store_true", help="do not print validation lines")
    g.add_argument("--json", action="store_true",
                   help="end with one JSON line of the result instead of the summary table")


def register(subparsers):
    """Add ``train`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "train",
        help="train an RNN on a task with SGD, SGD-C or SGD-CR",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def _get_task(args):
    from .. import tasks as _tasks

    kwargs = {}
    if args.min_length is not None:
        kwargs["min_length"] = args.min_length
    if args.max_length is not None:
        kwargs["max_length"] = args.max_length
    try:
        task = _tasks.get_task(args.task, **kwargs)
    except TypeError as e:
        raise UserError(f"rnnfast train: task {args.task!r} does not take these options: "
                        f"{e}") from None
    except (KeyError, ValueError) as e:
        raise UserError(f"rnnfast train: {e}") from None
    return task


def build(args):
    """(task, engine, callbacks) from parsed options, through :func:`rnnfast.train.build`."""
    from ..train import Checkpoint, Progress, Validation, build as build_engine

    task = _get_task(args)
    init_kwargs = {"sparse_per": args.sparse_per} if args.init == "smart_tanh" else {}
    clip = None if args.clip is None else (0 if args.clip == "none" else args.clip)
    try:
        engine = build_engine(
            args.method, task=task, hidden=args.hidden, init=args.init,
            activation=args.activation, h0=args.h0, dtype=args.dtype, init_kwargs=init_kwargs,
            lr=args.lr, lr_schedule=args.lr_schedule, momentum=args.momentum,
            nesterov=args.nesterov, clip=clip, clip_mode=args.clip_mode,
            strict_clip=args.strict_clip, nonfinite=args.nonfinite, alpha=args.alpha,
            alpha_schedule=args.alpha_schedule, omega_bound=args.omega_bound,
            rho_every=args.rho_every, explosion_factor=args.explosion_factor, seed=args.seed,
            num_threads=args.threads, batch_size=args.batch_size)
    except ValueError as e:
        raise UserError(f"rnnfast train: {e}") from None
    out = args.out
    log = None if args.quiet else (lambda line: print(line, flush=True))
    callbacks = [Progress(args.max_updates, enabled=args.progress)]
    if args.valid_every:
        callbacks.append(Validation(
            task, every=args.valid_every, size=args.valid_size, batch=args.valid_batch,
            success_error=args.success_error, log=log))
    if out:
        callbacks.append(Checkpoint(os.path.join(out, "checkpoint.npz"),
                                    every=args.checkpoint_every,
                                    history=os.path.join(out, "history")))
    return task, engine, callbacks


def run(args):
    """Entry point of ``rnnfast train`` (argparse ``func``)."""
    from ..fileio import json_safe

    if args.nesterov and args.momentum == 0:
        raise UserError("rnnfast train: --nesterov needs --momentum > 0")
    if args.resume and not args.out:
        raise UserError("rnnfast train: --resume needs --out DIR")
    if (args.out and not args.fresh and os.path.exists(os.path.join(args.out, "checkpoint.npz"))
            and not os.path.exists(os.path.join(args.out, OPTIONS_FILE))):
        raise UserError(f"rnnfast train: {args.out} holds a run of an older rnnfast (no "
                        f"{OPTIONS_FILE}); --fresh starts over, or choose another --out")
    resuming = bool(args.out) and claim(args, args.out, "rnnfast train", transient=_TRANSIENT,
                                        changeable=_CHANGEABLE, needs_resume=True)
    task, engine, callbacks = build(args)
    if resuming:
        engine.load_checkpoint(os.path.join(args.out, "checkpoint.npz"), callbacks=callbacks)
        if not args.quiet:
            print(f"resumed at update {engine.update}", flush=True)
    limit = None if args.time_limit is None else 60.0 * args.time_limit
    result = engine.fit(task, max_updates=args.max_updates, time_limit=limit,
                        callbacks=callbacks)
    if args.out:
        engine.model.save(os.path.join(args.out, "model.npz"))
    summary = {
        "task": args.task, "method": args.method, "init": args.init,
        "updates": result.updates, "solved": result.solved, "stopped": result.stopped,
        "best_error": result.best_error, "seconds": round(result.seconds, 3),
        "last_validation": result.last_validation,
    }
    if args.json:
        print(json.dumps(json_safe(summary)), flush=True)
    else:
        print(summary_table(summary, args), flush=True)
    return 0


def _percent(x):
    return "-" if x is None else f"{100 * x:.2f}%"


def summary_table(summary, args) -> str:
    """The readable end of ``rnnfast train``: what ran, how it stopped, where the files are."""
    from ..experiments.sweep import format_duration

    why = {"solved": f"solved (validation error below {_percent(args.success_error)})"
           if args.success_error > 0 else "solved (zero validation errors)",
           "max_updates": f"reached --max-updates {args.max_updates:,}",
           "time": "reached --time-limit (resume with --resume)"}
    last = summary["last_validation"] or {}
    rows = [("task", f"{summary['task']}, {args.hidden} hidden units, {args.init} init"),
            ("method", summary["method"]),
            ("stopped", why.get(summary["stopped"], summary["stopped"])),
            ("updates", f"{summary['updates']:,}"),
            ("time", format_duration(summary["seconds"])),
            ("best error", _percent(summary["best_error"])),
            ("last validation", "-" if not last else
             f"update {last.get('update', 0):,}: loss {last.get('loss', float('nan')):.4g}, "
             f"error {_percent(last.get('error'))}")]
    if args.out:
        rows.append(("files", f"{args.out}/ (model.npz, checkpoint.npz, history.json/.csv, "
                              "options.json)"))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def main(argv=None):
    """``rnnfast train ARGV...`` (``python -m rnnfast.cli.train``)."""
    from . import run_subcommand

    return run_subcommand("train", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
