"""Rerun the paper's experiments with one command each.

  synthetic       Figure 7: SGD, SGD-C and SGD-CR under the sigmoid, basic_tanh and
                  smart_tanh initialisations over sequence lengths and seeds on the
                  temporal-order problem. It prints a time estimate from a timing probe on
                  this machine first (the default measured 5 min 05 s on 2 cores of an AMD
                  EPYC); --full uses the paper's settings.
  generalization  one model trained on lengths 50-200, tested at 50 ... 5000 steps.
  music, ptb      one cell of Table 1 (polyphonic music NLL, PTB bits per character).
  table1          every cell of Table 1.

Each writes into an output folder (--out) that records its options: rerunning the command
resumes it, a rerun with other options is refused (--fresh starts over). Data for music,
ptb and table1: rnnfast data download.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import time
from typing import Callable, List, Tuple, Union

from ..errors import UserError
from ..experiments import natural as _nat
from ..fileio import atomic_write_json
from . import terminated
from .outdir import OPTIONS_FILE, add_fresh_argument, claim
from ..train.methods import canonical_method
from .argtypes import nonneg_float, nonneg_int, positive_float, positive_int

__all__ = ["EXPERIMENTS", "register_experiment", "register", "main"]

#: ``(name, register)`` of every experiment of ``rnnfast reproduce``, in help order.
#: ``register(subparsers)`` adds the sub-subcommand (argparse) and sets
#: ``func=`` with ``set_defaults``; it may also be given as the string
#: ``"package.module:function"`` (imported when the parser is built).
EXPERIMENTS: List[Tuple[str, Union[str, Callable]]] = []


def register_experiment(name: str, register_fn: Union[str, Callable]) -> None:
    """Add (or replace) an experiment of ``rnnfast reproduce``.

    Parameters
    ----------
    name : str
        Sub-subcommand name (e.g. ``"music"``).
    register_fn : callable(subparsers) or str
        Adds the sub-subcommand to an argparse subparsers object; or
        ``"package.module:function"`` naming such a function.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if not (callable(register_fn) or (isinstance(register_fn, str) and ":" in register_fn)):
        raise TypeError("register_fn: expected a callable or 'package.module:function'")
    for i, (n, _) in enumerate(EXPERIMENTS):
        if n == name:
            EXPERIMENTS[i] = (name, register_fn)
            return
    EXPERIMENTS.append((name, register_fn))


def _resolve(fn):
    if callable(fn):
        return fn
    mod, _, attr = fn.partition(":")
    return getattr(importlib.import_module(mod), attr)


# --------------------------------------------------------------------------- #
# argument types
# --------------------------------------------------------------------------- #
def _int_list(s):
    try:
        vals = tuple(int(x) for x in s.replace(" ", "").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {s!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {s!r}")
    return vals


def _method_list(s):
    try:
        vals = tuple(canonical_method(x) for x in s.replace(" ", "").split(",") if x)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not vals:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of methods, got {s!r}")
    return vals


def _choice_list(choices):
    def parse(s):
        vals = tuple(x for x in s.replace(" ", "").split(",") if x)
        bad = [v for v in vals if v not in choices]
        if not vals or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(choices)}, got {s!r}")
        return vals
    return parse


# --------------------------------------------------------------------------- #
# synthetic
# --------------------------------------------------------------------------- #
_SYNTH_FIELDS = ("task", "lengths", "seeds", "methods", "inits", "hidden", "lr", "clip", "alpha",
                 "batch_size", "max_updates", "valid_every", "valid_size", "eval_size", "dtype",
                 "convention")


def add_synthetic_arguments(p):
    """Options of ``rnnfast reproduce synthetic``."""
    from ..experiments.synthetic import DEFAULT, FULL, INITS, METHODS
    from ..tasks import TASKS

    def d(name):
        full = getattr(FULL, name)
        dflt = getattr(DEFAULT, name)
        fmt = (lambda v: ",".join(map(str, v))) if isinstance(dflt, tuple) else str
        return (f" (default {fmt(dflt)}" + (f"; --full: {fmt(full)}" if full != dflt else "")
                + ")")

    g = p.add_argument_group("what to run")
    g.add_argument("--full", action="store_true",
                   help="the paper's Figure-7 settings: lengths 50,100,150,200, 5 seeds, up to "
                        "5M updates per run (days; an estimate from a timing probe is printed "
                        "first, --estimate-only prints only it)")
    g.add_argument("--task", choices=TASKS, default=None, help="task" + d("task"))
    g.add_argument("--lengths", type=_int_list, default=None,
                   help="comma-separated sequence lengths, one point each" + d("lengths"))
    g.add_argument("--seeds", type=positive_int, default=None,
                   help="seeds per point (0..N-1)" + d("seeds"))
    g.add_argument("--methods", type=_method_list, default=None,
                   help="comma-separated subset of " + ",".join(METHODS) + " (default all)")
    g.add_argument("--inits", type=_choice_list(INITS), default=None,
                   help="comma-separated subset of sigmoid,basic_tanh,smart_tanh (default all)")
    g.add_argument("--convention", choices=("authors", "martens"), default=None,
                   help="task conventions" + d("convention"))

    g = p.add_argument_group("training (paper's values by default)")
    g.add_argument("--hidden", type=positive_int, default=None, help="hidden units" + d("hidden"))
    g.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate, no momentum" + d("lr"))
    g.add_argument("--clip", type=positive_float, default=None,
                   help="norm-clipping threshold of SGD-C and SGD-CR" + d("clip"))
    g.add_argument("--alpha", type=nonneg_float, default=None,
                   help="constant Omega weight of SGD-CR" + d("alpha"))
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size" + d("batch_size"))
    g.add_argument("--max-updates", type=positive_int, default=None,
                   help="update budget per run" + d("max_updates"))
    g.add_argument("--valid-every", type=positive_int, default=None,
                   help="updates between validations on the small sample" + d("valid_every"))
    g.add_argument("--valid-size", type=positive_int, default=None,
                   help="sequences of the periodic validation sample" + d("valid_size"))
    g.add_argument("--eval-size", type=positive_int, default=None,
                   help="sequences that confirm a success (paper: 10,000)" + d("eval_size"))
    g.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="floating-point type" + d("dtype"))

    g = p.add_argument_group("execution")
    g.add_argument("--out", default=None,
                   help="output folder (default ./rnnfast-reproduce/synthetic-TASK[-full]); "
                        "rerun with the same folder to resume")
    g.add_argument("--workers", type=positive_int, default=None,
                   help="worker processes (default: the number of CPU cores); with "
                        "--scheduler local, those of the LocalCluster")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the runs on a Dask cluster: tcp://host:port of a `dask scheduler` "
                        "(default: $RNNFAST_SCHEDULER; unset: a local spawn process pool); "
                        "'local' or 'local:N' starts a LocalCluster of N single-threaded worker "
                        "processes here. Needs pip install 'rnnfast[dask]'")
    g.add_argument("--threads", type=positive_int, default=1,
                   help="OpenMP threads of the core per worker (default 1)")
    g.add_argument("--retries", type=nonneg_int, default=2,
                   help="resubmissions of a run that raised (default 2)")
    g.add_argument("--progress-every", type=positive_float, default=60.0,
                   help="seconds between progress lines while waiting (default 60)")
    g.add_argument("--no-plot", action="store_true", help="do not write figure7.png")
    g.add_argument("--estimate-only", action="store_true",
                   help="print the run count and time estimate, then exit")
    g.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_fresh_argument(g)


def synthetic_settings(args):
    """The :class:`~rnnfast.experiments.synthetic.SweepSettings` of parsed options."""
    from dataclasses import replace

    from ..experiments.synthetic import DEFAULT, FULL

    base = FULL if args.full else DEFAULT
    changes = {k: getattr(args, k) for k in _SYNTH_FIELDS if getattr(args, k, None) is not None}
    try:
        return replace(base, **changes)
    except ValueError as e:
        raise UserError(f"rnnfast reproduce synthetic: {e}") from None


#: how loudly: never stored in options.json
_SYNTH_TRANSIENT = ("estimate_only", "quiet", "progress_every", "no_plot")
#: where and how fast the runs go: a rerun may change them
_SYNTH_CHANGEABLE = ("workers", "scheduler", "threads", "retries")


def run_synthetic_command(args):
    """Entry point of ``rnnfast reproduce synthetic``."""
    from ..experiments.synthetic import DEFAULT

    settings = synthetic_settings(args)
    for k in _SYNTH_FIELDS:  # the folder records the settings themselves, not "default"
        setattr(args, k, getattr(settings, k))
    out = args.out or os.path.join("rnnfast-reproduce", f"synthetic-{args.task or DEFAULT.task}"
                                   + ("-full" if args.full else ""))
    claim(args, out, "rnnfast reproduce synthetic", transient=_SYNTH_TRANSIENT,
          changeable=_SYNTH_CHANGEABLE, write=not args.estimate_only)
    settings = synthetic_settings(args)
    executor = _connect_cluster(args)
    try:
        return _run_synthetic(args, settings, out, executor)
    finally:
        if executor is not None:
            executor.close()


def _connect_cluster(args):
    """The Dask executor of ``--scheduler`` / ``$RNNFAST_SCHEDULER``, or None (local pool)."""
    from ..experiments.cluster import connect, loss_printer

    try:
        executor = connect(getattr(args, "scheduler", None), n_workers=args.workers,
                           on_lost=None if args.quiet else loss_printer())
    except (ImportError, ValueError, ConnectionError, RuntimeError) as e:
        raise UserError(f"rnnfast reproduce synthetic: {e}") from None
    if executor is not None and not args.quiet:
        print(f"running on {executor.describe()}", flush=True)
    return executor


def _run_synthetic(args, settings, out, executor):
    from ..experiments import synthetic as syn
    from ..experiments.sweep import config_hash

    if executor is not None:
        workers = executor.max_workers
    else:
        workers = args.workers or os.cpu_count() or 1
    if args.estimate_only:
        from ..experiments.sweep import ResultStore

        configs = syn.make_configs(settings)
        store = ResultStore(out)
        todo = [c for c in configs if config_hash(c) not in store]
        per = syn.probe_update_time(settings, sorted({c["length"] for c in todo}) or None,
                                    num_threads=args.threads)
        rates = ", ".join(f"L={L} {1e3 * t:.2f} ms" for L, t in sorted(per.items()))
        print(f"{len(configs)} runs, {len(configs) - len(todo)} finished in {out}; "
              f"per update: {rates}")
        print(syn.estimate_line(syn.expected_seconds(todo, per, workers),
                                syn.estimate_seconds(todo, per, workers), workers,
                                settings.max_updates))
        return 0
    res = syn.run_synthetic(settings, out, executor=executor, workers=workers,
                            num_threads=args.threads, retries=args.retries,
                            progress=not args.quiet, tick=args.progress_every)
    if res["interrupted"]:
        return 143 if terminated() else 130
    if not args.no_plot and res["points"]:
        try:
            from ..plots import plot_figure7

            path = plot_figure7(res["points"], os.path.join(out, "figure7.png"),
                                title=f"{settings.task}: success rate vs length "
                                      f"({settings.hidden} hidden, budget {settings.max_updates} "
                                      f"updates, {settings.seeds} seeds)")
            if not args.quiet:
                print(f"  figure: {path}", flush=True)
        except ImportError:
            if not args.quiet:
                print("note: matplotlib is not installed, figure7.png skipped "
                      "(pip install 'rnnfast[plot]')")
    if executor is not None and executor.losses and not args.quiet:
        print(f"{len(executor.losses)} time(s) a worker left the cluster with a run on it; "
              f"those runs were rescheduled (LOST lines above)")
    return 1 if res["failures"] else 0


def register_synthetic(subparsers):
    """Add ``synthetic`` to the subparsers of ``rnnfast reproduce``."""
    p = subparsers.add_parser(
        "synthetic",
        help="Figure 7: SGD, SGD-C, SGD-CR x inits x lengths x seeds on temporal order",
        description="Run the paper's synthetic sweep (Figure 7) and write runs/<hash>.json "
                    "(one per finished run), runs.csv, summary.csv, summary.json and "
                    "figure7.png in --out. It prints a time estimate from a timing probe "
                    "first; the default (81 runs) measured 5 min 05 s on 2 cores of an AMD "
                    "EPYC. Rerunning the same command resumes; Ctrl-C stops it at once and "
                    "keeps the finished runs.",
    )
    add_synthetic_arguments(p)
    p.set_defaults(func=run_synthetic_command)
    return p


# --------------------------------------------------------------------------- #
# generalization
# --------------------------------------------------------------------------- #
def add_generalization_arguments(p):
    """Options of ``rnnfast reproduce generalization``."""
    from ..experiments.generalization import (GENERALIZATION_LENGTHS, PRESETS,
                                              GeneralizationSettings)

    D = GeneralizationSettings()

    def d(name):
        return f" (default: the config's; basic: {getattr(D, name)})"

    p.add_argument("--out", default=os.path.join("rnnfast-reproduce", "generalization"),
                   help="output folder (train/ holds the resumable checkpoint; with --seeds, "
                        "one seed-K folder per model and summary.md)")
    p.add_argument("--model", default=None,
                   help="evaluate this saved model (.npz) instead of training one")
    p.add_argument("--config", choices=tuple(PRESETS), default="basic",
                   help="authors: the authors' code (smart_tanh with 15 non-zeros per column, "
                        "alpha 2, stop at zero validation errors); basic: basic_tanh, alpha 4, "
                        "stop below 1%% (default)")
    p.add_argument("--seeds", type=positive_int, default=None, metavar="N",
                   help="train and test N models (seeds 0..N-1) and write the summary table, "
                        "with the memory probes of each model")
    g = p.add_argument_group("model and training (override the config)")
    g.add_argument("--init", choices=("sigmoid", "basic_tanh", "smart_tanh"), default=None,
                   help="initialisation" + d("init"))
    g.add_argument("--sparse-per", choices=("incoming", "outgoing"), default=None,
                   help="smart_tanh's 15 non-zeros per row (incoming) or column (outgoing)")
    g.add_argument("--alpha", type=nonneg_float, default=None, help="Ω weight" + d("alpha"))
    g.add_argument("--lr", type=positive_float, default=None, help="learning rate" + d("lr"))
    g.add_argument("--clip", type=positive_float, default=None,
                   help="clipping threshold" + d("clip"))
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch" + d("batch_size"))
    g.add_argument("--min-length", type=positive_int, default=None,
                   help="shortest training length" + d("min_length"))
    g.add_argument("--max-length", type=positive_int, default=None,
                   help="training lengths are drawn in [min, max)" + d("max_length"))
    g.add_argument("--hidden", type=positive_int, default=None, help="hidden units" + d("hidden"))
    g.add_argument("--max-updates", type=positive_int, default=None,
                   help="update budget" + d("max_updates"))
    g.add_argument("--valid-every", type=positive_int, default=None,
                   help="updates between validations" + d("valid_every"))
    g.add_argument("--valid-size", type=positive_int, default=None,
                   help="validation sequences" + d("valid_size"))
    g.add_argument("--success-error", type=nonneg_float, default=None,
                   help="stop when the validation error rate is below this; 0 stops at zero "
                        "errors, as the authors' code" + d("success_error"))
    g.add_argument("--eval-lengths", type=_int_list, default=None,
                   help="test lengths (default " + ",".join(map(str, GENERALIZATION_LENGTHS))
                        + ")")
    g.add_argument("--eval-size", type=positive_int, default=None,
                   help="test sequences per length" + d("eval_size"))
    g.add_argument("--seed", type=nonneg_int, default=None,
                   help="random seed of a single model (default 0)")
    g.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="floating-point type" + d("dtype"))
    p.add_argument("--threads", type=positive_int, default=None,
                   help="core threads (default: the library's)")
    p.add_argument("--time-limit", type=positive_float, default=None,
                   help="stop training after this many minutes (rerun to resume)")
    add_fresh_argument(p)


_GEN_FIELDS = ("init", "sparse_per", "alpha", "lr", "clip", "batch_size", "min_length",
               "max_length", "hidden", "max_updates", "valid_every", "valid_size",
               "success_error", "eval_size", "seed", "dtype")


def _generalization_settings(args):
    from ..experiments.generalization import preset

    overrides = {k: getattr(args, k) for k in _GEN_FIELDS}
    if args.eval_lengths is not None:
        overrides["eval_lengths"] = tuple(args.eval_lengths)
    try:
        settings = preset(args.config, **overrides)
    except ValueError as e:
        raise UserError(f"rnnfast reproduce generalization: {e}") from None
    if settings.max_length < settings.min_length:
        raise UserError("rnnfast reproduce generalization: --max-length must be >= --min-length")
    return settings


def run_generalization_command(args):
    """Entry point of ``rnnfast reproduce generalization``."""
    from ..experiments.generalization import run_generalization, run_protocol

    settings = _generalization_settings(args)
    for k in _GEN_FIELDS + ("eval_lengths",):  # the folder records the values themselves
        setattr(args, k, getattr(settings, k))
    if args.model is not None and not os.path.isfile(args.model):
        raise UserError(f"rnnfast reproduce generalization: --model {args.model}: no such file")
    claim(args, args.out, "rnnfast reproduce generalization", changeable=("threads", "time_limit"))
    settings = _generalization_settings(args)
    limit = None if args.time_limit is None else 60.0 * args.time_limit
    if args.seeds is not None:
        if args.model is not None:
            raise UserError("rnnfast reproduce generalization: --model and --seeds exclude "
                            "each other")
        doc = run_protocol(settings, range(args.seeds), args.out, num_threads=args.threads,
                           time_limit=limit)
        _generalization_figures(doc, args.out)
        return 0 if doc["all_lengths_zero"] == doc["finished"] == args.seeds else 1
    doc = run_generalization(settings, args.out, model_path=args.model, num_threads=args.threads,
                             time_limit=limit)
    return 0 if all(r["solved"] for r in doc["rows"]) else 1


def _generalization_figures(doc, out):
    try:
        from ..plots import plot_generalization, plot_memory_probes
    except ImportError:
        print("note: matplotlib is not installed, the figures are skipped "
              "(pip install 'rnnfast[plot]')")
        return
    if doc["models"]:
        for plot, name in ((plot_generalization, "generalization.png"),
                           (plot_memory_probes, "memory_probes.png")):
            plot(doc, os.path.join(out, name))
            print(f"  figure: {os.path.join(out, name)}")


def register_generalization(subparsers):
    """Add ``generalization`` to the subparsers of ``rnnfast reproduce``."""
    p = subparsers.add_parser(
        "generalization",
        help="train on lengths 50-200, test on 10,000 sequences at 50 ... 5000 steps",
        description="The paper's generalisation test: a model (50 tanh units, SGD-CR) trained "
                    "on random lengths in [50, 200), evaluated at each test length (forward "
                    "only). Writes generalization.json/.csv in --out; with --seeds N, N models, "
                    "summary.md/.json (models with zero errors per length), the memory probes "
                    "of each model, and generalization.png / memory_probes.png.",
    )
    add_generalization_arguments(p)
    p.set_defaults(func=run_generalization_command)
    return p


# --------------------------------------------------------------------------- #
# music and ptb (Table 1)
# --------------------------------------------------------------------------- #


def _threshold_arg(s):
    """A fixed clipping threshold (Table 1 has no adaptive one); none/off: no clipping."""
    if s.lower() in ("none", "off"):
        return 0.0
    return positive_float(s)


def _method_arg(s):
    try:
        return canonical_method(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _dataset_arg(s):
    try:
        return _nat.canonical_dataset(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_DATA_HELP = ("data folder holding music/ and ptb_char/ (default: $RNNFAST_DATA, else "
              "~/.local/share/rnnfast; rnnfast data download fills it)")


def _data_dir(args):
    from ..data.download import default_data_dir

    return args.data if args.data is not None else str(default_data_dir())


def _check_data(data, problems, command):
    """A missing data file is the user's to fetch: say where it was looked for and how."""
    from ..data import music_path, ptb_paths

    for kind, what in problems:
        if kind == "music":
            paths = ([data] if os.path.isfile(data) else
                     [music_path(data, what), music_path(data, what, "mat")])
        else:
            paths = list(ptb_paths(data).values())
        ok = any(os.path.isfile(p) for p in paths) if kind == "music" else all(
            os.path.isfile(p) for p in paths)
        if not ok:
            missing = (f"{paths[0]} (or .mat)" if kind == "music" and len(paths) > 1
                       else paths[0] if kind == "music"
                       else next(p for p in paths if not os.path.isfile(p)))
            name = "music" if kind == "music" else "ptb"
            raise UserError(f"{command}: --data {data}: {missing} not found; "
                            f"rnnfast data download {name} --to {data} fetches it")


def _lr_rule(s):
    """argparse type of --lr-schedule (rnnfast.experiments.natural.check_lr_schedule)."""
    try:
        _nat.check_lr_schedule(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return s


def _add_common(p, problem):
    p.add_argument("--data", default=None, metavar="DIR",
                   help=_DATA_HELP + ("; or the music folder or data set file"
                                      if problem == "music" else "; or the ptb_char folder"))
    p.add_argument("--method", type=_method_arg, default="SGD-CR",
                   help="SGD, SGD-C or SGD-CR (default SGD-CR)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (checkpoint, history, results); default "
                        "results/<dataset>-<method>")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.npz when it exists (same settings required)")
    p.add_argument("--budget", type=positive_float, metavar="MINUTES", default=None,
                   help="stop training after this many minutes (then evaluate); resume later "
                        "with --resume")
    g = p.add_argument_group("model and training (defaults: the paper's settings)")
    g.add_argument("--hidden", type=positive_int, default=None, help="hidden units")
    g.add_argument("--init-scale", type=positive_float, default=None, metavar="STD",
                   help="standard deviation of the initial weights (default: music 0.01, "
                        "PTB 0.3)")
    g.add_argument("--lr", type=positive_float, default=None, help="initial learning rate")
    g.add_argument("--lr-schedule", type=_lr_rule, default=None, metavar="RULE",
                   help="'halve' the lr when the epoch error rises (music default), keep it "
                        "'constant', or 'anneal' (PTB default; Mikolov's RNNLM rule: halve every "
                        "epoch once validation improves by less than 0.3%%, stop when that "
                        "happens again); 'halve:FACTOR' and 'anneal:FACTOR[:MIN_IMPROVEMENT]' "
                        "multiply by another factor (e.g. anneal:0.7)")
    g.add_argument("--monitor", choices=("valid", "train"), default=None,
                   help="epoch error that the lr halving watches: the training cost of the "
                        "epoch (default) or the validation metric")
    g.add_argument("--clip", type=_threshold_arg, default=None, metavar="THRESHOLD",
                   help="norm-clipping threshold for SGD-C / SGD-CR ('none' disables)")
    g.add_argument("--alpha", type=nonneg_float, default=None,
                   help="Ω weight α0 of α_e = α0/(2e) for SGD-CR (default 1)")
    g.add_argument("--normalize", choices=("step", "sequence", "sum"), default=None,
                   help="cost normalisation (music: step = averaged; PTB: sequence = summed over "
                        "the steps, averaged over the batch)")
    g.add_argument("--seq-len", type=positive_int, default=None, help="segment length (200)")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help="segments (music) or parallel streams (PTB) per update")
    g.add_argument("--max-epochs", type=positive_int, default=None,
                   help="stop after this many epochs; raised with --resume, a run that stopped "
                        "at its cap goes on")
    g.add_argument("--patience", type=nonneg_int, default=None,
                   help="stop after this many validations without improvement (0: never)")
    g.add_argument("--valid-every", type=nonneg_int, default=None,
                   help="also validate every N updates (0: only at the end of each epoch)")
    g.add_argument("--eval-batch", type=positive_int, default=None,
                   help="music: pieces per evaluation batch; PTB: parallel evaluation streams")
    g.add_argument("--dtype", choices=("float32", "float64"), default=None)
    g.add_argument("--seed", type=int, default=None)
    r = p.add_argument_group("running")
    r.add_argument("--threads", type=positive_int, default=None,
                   help="threads of the C++ kernels (keep it fixed across a resume for "
                        "bit-identical results)")
    r.add_argument("--train-eval-limit", type=positive_int, default=None, metavar="N",
                   help="final table: score the training split on its first N steps / "
                        "characters only (default: all)")
    r.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="UPDATES",
                   help="checkpoint every this many updates (default: every minute or so)")
    r.add_argument("--log-every", type=nonneg_int, default=0, metavar="UPDATES",
                   help="print a training line every N updates (0: only validations)")
    bar = r.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show the progress bar (default: on a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    r.add_argument("--quiet", action="store_true", help="no log lines")
    add_fresh_argument(r)


_OVERRIDES = ("hidden", "init_scale", "lr", "lr_schedule", "monitor", "alpha", "normalize",
              "seq_len", "batch_size", "max_epochs", "patience", "valid_every", "eval_batch",
              "dtype", "seed")


def _overrides(args):
    o = {k: getattr(args, k) for k in _OVERRIDES}
    if args.clip is not None:
        o["clip"] = None if args.clip == 0.0 else args.clip
    return o


def config_from_args(args):
    """NaturalConfig from parsed ``music``/``ptb`` arguments."""
    o = _overrides(args)
    clip_given = "clip" in o
    clip = o.pop("clip", None)
    if args.problem == "music":
        cfg = _nat.music_config(args.dataset, args.method, **o)
    else:
        cfg = _nat.ptb_config(args.method, args.ahead, **o)
    if clip_given:
        cfg.clip = clip
        cfg.validate()
    return cfg


_NATURAL_CHANGEABLE = ("budget", "threads", "data", "log_every", "checkpoint_every",
                       "train_eval_limit", "max_epochs")


def _natural_config(args):
    try:
        return config_from_args(args)
    except ValueError as e:
        raise UserError(f"rnnfast reproduce {args.problem}: {e}") from None


def _predates_init_scale(out):
    """True for a run folder written before ``--init-scale`` existed (its options lack it or
    hold null): such a run keeps ``init_scale`` unset when resumed."""
    try:
        with open(os.path.join(out, OPTIONS_FILE), encoding="utf-8") as f:
            return json.load(f)["options"].get("init_scale") is None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # no folder yet (or unreadable: claim() has said so)


def run_from_args(args):
    """Run (or resume) the experiment described by parsed arguments; print the table.

    Returns
    -------
    int
        Exit status.
    """
    command = f"rnnfast reproduce {args.problem}"
    cfg = _natural_config(args)
    for k in _OVERRIDES:  # the folder records the values themselves, not "default"
        if hasattr(cfg, k):
            setattr(args, k, getattr(cfg, k))
    args.clip = 0.0 if cfg.clip is None else cfg.clip
    args.data = _data_dir(args)
    slug = (cfg.dataset if cfg.problem == "music" else f"PTB-ahead{cfg.ahead}")
    out = args.out or os.path.join("results", f"{slug}-{cfg.method}")
    opts = dict(transient=("quiet", "progress"), changeable=_NATURAL_CHANGEABLE,
                needs_resume=True)
    claim(args, out, command, write=False, **opts)  # remembered options first
    old_init = (not args.fresh and "init_scale" not in getattr(args, "given", set())
                and _predates_init_scale(out))
    if old_init:
        args.init_scale = None
    cfg = _natural_config(args)
    if old_init:  # its weights came from the scheme's own std; today's PTB default is not its
        cfg = dataclasses.replace(cfg, init_scale=None)
    _check_data(args.data, [("music", cfg.dataset) if cfg.problem == "music" else ("ptb", "")],
                command)
    ckpt = os.path.join(out, "checkpoint.npz")
    if os.path.exists(ckpt) and not os.path.exists(os.path.join(out, OPTIONS_FILE)) \
            and not args.fresh and not args.resume:
        raise UserError(f"{command}: {ckpt} exists; --resume continues it, --fresh starts over")
    log = None if args.quiet else (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    problem = _nat.load_problem(cfg, args.data)
    resuming = claim(args, out, command, **opts)
    if log:
        init = "" if cfg.init_scale is None else f" (init std {cfg.init_scale})"
        log(f"{cfg.table_row}, {cfg.method}: H={cfg.hidden} {cfg.activation}{init}, lr {cfg.lr} "
            f"({cfg.lr_schedule}), clip {cfg.clip if cfg.uses_clipping else 'off'}, "
            f"alpha0 {cfg.alpha if cfg.uses_omega else 'off'}, batch {cfg.batch_size}x{cfg.seq_len}, "
            f"{cfg.normalize} cost, {cfg.dtype}; data loaded in {time.perf_counter() - t0:.1f}s; "
            f"{problem.n_train_batches()} updates per epoch; out {out}")
    run = _nat.NaturalRun(cfg, problem, out=out, num_threads=args.threads, progress=args.progress,
                          log=log, log_every=args.log_every,
                          checkpoint_every=args.checkpoint_every,
                          train_eval_limit=args.train_eval_limit)
    if (resuming or args.resume) and os.path.exists(ckpt):
        run.load_checkpoint(ckpt)
        if log:
            log(f"resumed at epoch {run.epoch}, batch {run.engine.batch_in_epoch}, update {run.updates}")
    atomic_write_json(os.path.join(out, "config.json"), cfg.to_dict())
    outcome = run.run(budget=None if args.budget is None else args.budget * 60.0)
    print(_nat.format_table(outcome.results))
    return 0


def _register_natural(subparsers, problem):
    if problem == "music":
        p = subparsers.add_parser(
            "music", help="polyphonic music (Table 1: NLL per time step)",
            description="Train a 300-unit sigmoid RNN (400 for MuseData) on a polyphonic music "
                        "data set with SGD / SGD-C / SGD-CR and report train/valid/test NLL per "
                        "time step next to the paper's Table 1.")
        p.add_argument("--dataset", type=_dataset_arg, required=True,
                       help="Nottingham, Piano-midi.de, MuseData or JSB")
    else:
        p = subparsers.add_parser(
            "ptb", help="Penn Treebank characters (Table 1: bits per character)",
            description="Train a 500-unit sigmoid RNN without biases on PTB characters with "
                        "truncated BPTT (state carried across 200-step segments) and report "
                        "train/valid/test bits per character next to the paper's Table 1.")
        p.add_argument("--ahead", type=positive_int, default=1,
                       help="predict the character this many steps ahead (paper: 1 and 5)")
    _add_common(p, problem)
    p.set_defaults(func=run_from_args, problem=problem)
    return p


def register_music(subparsers):
    """Add ``music`` to the subparsers of ``rnnfast reproduce`` (argparse)."""
    return _register_natural(subparsers, "music")


def register_ptb(subparsers):
    """Add ``ptb`` to the subparsers of ``rnnfast reproduce`` (argparse)."""
    return _register_natural(subparsers, "ptb")


def register_table1(subparsers):
    """Add ``table1`` to the subparsers of ``rnnfast reproduce``."""
    p = subparsers.add_parser(
        "table1", help="every cell of Table 1 (music NLL, PTB bits per character), resumable",
        description="Train every cell of the paper's Table 1 (Piano-midi.de, Nottingham, "
                    "MuseData; PTB characters 1 and 5 steps ahead; SGD, SGD-C, SGD-CR) with "
                    "the paper's settings, until early stopping or --budget minutes each: the "
                    "music cells --workers at a time, then the PTB cells one at a time on "
                    "--workers threads. Writes OUT/<cell>/ (as `rnnfast reproduce "
                    "music|ptb`), table1.md/.json next to the paper's numbers, and "
                    "learning_curves.png. Rerun the same command to resume.")
    p.add_argument("--data", default=None, metavar="DIR", help=_DATA_HELP)
    p.add_argument("--out", default=os.path.join("rnnfast-reproduce", "table1"),
                   help="output folder (default rnnfast-reproduce/table1)")
    p.add_argument("--cells", default=None,
                   help="comma-separated cells to run (default all): "
                        + ",".join(c[0] for c in _nat.TABLE1_CELLS))
    p.add_argument("--budget", type=positive_float, default=60.0, metavar="MINUTES",
                   help="training minutes per cell, over all calls (default 60)")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="cores to use: music cells this many at a time, PTB cells on this "
                        "many threads (default 2)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="kernel threads per cell, --workers cells at a time (default: music "
                        "cells one thread each, PTB cells --workers threads each, one at a "
                        "time: a PTB network runs 2x faster on two threads, two music "
                        "networks at once beat one on two)")
    p.add_argument("--time-limit", type=positive_float, default=None, metavar="MINUTES",
                   help="stop this call after this many minutes (cells cut short resume on "
                        "the next call)")
    p.add_argument("--max-epochs", type=positive_int, default=None,
                   help="epoch cap of the cells run (default the paper's settings: 200 music, "
                        "30 PTB); a cell that stopped at its cap goes on to a higher one; "
                        "table1.md marks a cell run with another cap")
    add_fresh_argument(p)
    p.set_defaults(func=run_table1_command)
    return p


#: what a later call may change: the budget adds time to every cell over all calls
_TABLE1_CHANGEABLE = ("budget", "workers", "threads", "time_limit", "data", "max_epochs")


def run_table1_command(args):
    """Entry point of ``rnnfast reproduce table1``."""
    cells = None
    if args.cells:
        cells = [c.strip() for c in args.cells.split(",") if c.strip()]
        known = {c[0] for c in _nat.TABLE1_CELLS}
        bad = [c for c in cells if c not in known]
        if bad:
            raise UserError(f"rnnfast reproduce table1: unknown cells {bad}; expected some of "
                            f"{sorted(known)}")
    args.data = _data_dir(args)
    claim(args, args.out, "rnnfast reproduce table1", write=False, transient=("cells",),
          changeable=_TABLE1_CHANGEABLE)
    _check_data(args.data, sorted({(c[1], c[2] if c[1] == "music" else "")
                                   for c in _nat.TABLE1_CELLS if cells is None or c[0] in cells}),
                "rnnfast reproduce table1")
    claim(args, args.out, "rnnfast reproduce table1", transient=("cells",),
          changeable=_TABLE1_CHANGEABLE)
    limit = None if args.time_limit is None else 60.0 * args.time_limit
    overrides = {} if args.max_epochs is None else {"max_epochs": args.max_epochs}
    results = _nat.run_table1(args.data, args.out, cells=cells, budget_minutes=args.budget,
                              workers=args.workers, num_threads=args.threads, time_limit=limit,
                              overrides=overrides)
    print(_nat.format_table1(results))
    try:
        from ..plots import plot_learning_curves
    except ImportError:
        print("note: matplotlib is not installed, learning_curves.png skipped")
        return 0
    if results:
        path = os.path.join(args.out, "learning_curves.png")
        plot_learning_curves(args.out, [c[0] for c in _nat.TABLE1_CELLS], path)
        print(f"  figure: {path}")
    return 0


register_experiment("synthetic", register_synthetic)
register_experiment("generalization", register_generalization)
register_experiment("music", register_music)
register_experiment("ptb", register_ptb)
register_experiment("table1", register_table1)


# --------------------------------------------------------------------------- #
# the command
# --------------------------------------------------------------------------- #
def _add_experiments(p):
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for _name, fn in EXPERIMENTS:
        _resolve(fn)(sub)
    return sub


def register(subparsers):
    """Add ``reproduce`` (with its experiments) to the ``rnnfast`` subparsers."""
    p = subparsers.add_parser(
        "reproduce",
        help="rerun the paper's experiments (synthetic sweep, generalisation, ...)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_experiments(p)
    return p


def main(argv=None):
    """``rnnfast reproduce ARGV...`` (``python -m rnnfast.cli.reproduce``)."""
    from . import run_subcommand

    return run_subcommand("reproduce", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
