"""The paper's generalisation test (section 4.1): a model trained on temporal order with
lengths drawn in [50, 200) and tested on fresh sequences of 50 ... 5000 steps.

:func:`run_generalization` trains (or resumes, or loads) one model with SGD-CR and evaluates
it at every test length on ``eval_size`` fresh sequences, forward only (the kernels'
``final_state``: memory independent of T).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .._aliases import renamed_argument
from ..fileio import atomic_write_json, atomic_write_text, csv_text, json_safe
from ..train.callbacks import Callback
from .sweep import format_duration

__all__ = ["GeneralizationSettings", "GENERALIZATION_LENGTHS", "generalization_engine",
           "train_generalization", "history_summary", "evaluate_lengths", "format_generalization",
           "run_generalization", "BestSnapshot", "PRESETS", "preset", "run_protocol", "summarize",
           "memory_probes", "format_protocol"]


#: The paper's test lengths.
GENERALIZATION_LENGTHS: Tuple[int, ...] = (50, 100, 150, 200, 250, 500, 1000, 2000, 3000, 5000)


@dataclass(frozen=True)
class GeneralizationSettings:
    """Settings of the generalisation test (paper: 50 tanh units, basic_tanh, SGD-CR).

    Attributes
    ----------
    task : str
    min_length, max_length : int
        Training lengths, one drawn per minibatch in ``[min_length, max_length)``.
    hidden, lr, clip, alpha, batch_size, dtype, init :
        As for :class:`SweepSettings` (paper's values).
    sparse_per : {"incoming", "outgoing"}
        ``smart_tanh``: 15 non-zeros per row of W_rec (incoming, the paper's text) or per
        column (outgoing, the authors' code, which multiplies h·W).
    max_updates : int
        Budget (5M).
    valid_every, valid_size : int
        Validation on fresh sequences of random length in the training range.
    success_error : float
        Stop when the validation error rate (on ``valid_size`` sequences) is
        below this: 0.01, the paper's criterion, by default; 0 means zero
        errors (the authors' code's stopping rule, which a run may never meet:
        our seed 1 reached 0.08% at 146k updates, then lost it for 750k).
    eval_lengths : tuple of int
        Test lengths.
    eval_size : int
        Sequences per test length (paper: 10,000).
    seed : int
    checkpoint_every : int
    """

    task: str = "temporal_order"
    min_length: int = 50
    max_length: int = 200
    hidden: int = 50
    init: str = "basic_tanh"
    sparse_per: str = "incoming"
    lr: float = 0.01
    clip: float = 1.0
    alpha: float = 4.0
    batch_size: int = 20
    dtype: str = "float32"
    max_updates: int = 5_000_000
    valid_every: int = 2000
    valid_size: int = 10_000
    success_error: float = 0.01
    eval_lengths: Tuple[int, ...] = GENERALIZATION_LENGTHS
    eval_size: int = 10_000
    seed: int = 0
    checkpoint_every: int = 20_000


def generalization_engine(settings: GeneralizationSettings, *, num_threads=None):
    """The SGD-CR engine of ``settings`` (weights drawn from the seed's first child stream,
    minibatches from its second) and its task: ``(engine, task)``."""
    from .. import tasks as _tasks
    from ..train import build

    task = _tasks.get_task(settings.task, min_length=settings.min_length,
                           max_length=settings.max_length)
    s_init, s_train = np.random.SeedSequence(int(settings.seed)).spawn(2)
    init_kwargs = {"sparse_per": settings.sparse_per} if settings.init == "smart_tanh" else None
    engine = build("SGD-CR", task=task, hidden=settings.hidden, init=settings.init,
                   init_kwargs=init_kwargs, dtype=settings.dtype,
                   init_rng=np.random.default_rng(s_init), lr=settings.lr,
                   clip=settings.clip, alpha=settings.alpha, batch_size=settings.batch_size,
                   seed=s_train, num_threads=num_threads, rho_every=1000)
    return engine, task


@renamed_argument("threads", "num_threads")
def train_generalization(settings: GeneralizationSettings, out_dir, *, num_threads=None,
                         log: Optional[Callable[[str], None]] = None, time_limit=None):
    """Train (or resume) the generalisation model; returns ``(model, summary dict)``.

    Files in ``out_dir``: ``checkpoint.npz`` (atomic, every ``checkpoint_every``
    updates and when the call ends; resumed when present), ``best.npz`` (the
    model at its best validation so far, with ``best.json``), and at the end
    ``model.npz`` and ``train.json`` (summary).  A finished training
    (``train.json`` + ``model.npz`` present, same settings) is not redone.

    The returned model is the final one when the success criterion was met,
    otherwise the best-validation snapshot (``summary["evaluated"]`` says which).
    """
    import json

    from ..nn.model import RNNModel
    from ..train import Checkpoint, Progress, Validation

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, "model.npz")
    summary_path = os.path.join(out_dir, "train.json")
    best_path = os.path.join(out_dir, "best.npz")
    best_info_path = os.path.join(out_dir, "best.json")
    cfg = json_safe(asdict(settings))
    if os.path.exists(model_path) and os.path.exists(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
        if summary.get("settings") == cfg:
            use = best_path if summary.get("evaluated") == "best" else model_path
            return RNNModel.load(use), summary
    engine, task = generalization_engine(settings, num_threads=num_threads)
    model = engine.model
    success = settings.success_error  # 0: stop at zero errors
    best = BestSnapshot(best_path, best_info_path)
    checkpoint = Checkpoint(os.path.join(out_dir, "checkpoint.npz"),
                            every=settings.checkpoint_every, config=cfg)
    callbacks = [Validation(task, every=settings.valid_every, size=settings.valid_size,
                            batch=1000, success_error=success, log=log), best, checkpoint,
                 Progress(settings.max_updates)]  # a bar with ETA on a terminal
    if os.path.exists(checkpoint.path):
        checkpoint.restore(engine, callbacks)
        if log:
            log(f"resumed at update {engine.update}")
    t0 = time.perf_counter()
    result = engine.fit(task, max_updates=settings.max_updates, time_limit=time_limit,
                        callbacks=callbacks)
    model.save(model_path)
    summary = {"settings": cfg, "updates": engine.update, "solved": engine.solved,
               "stopped": result.stopped, "best_error": engine.best_error,
               "best_update": best.best["update"],
               "evaluated": "final" if engine.solved or best.best["update"] is None else "best",
               "seconds_this_call": time.perf_counter() - t0,
               **history_summary(engine.history, engine.validations),
               "last_validation": engine.validations[-1] if engine.validations else None}
    if result.stopped in ("solved", "max_updates"):
        atomic_write_json(summary_path, summary)
    if summary["evaluated"] == "best":
        return RNNModel.load(best_path), summary
    return model, summary


class BestSnapshot(Callback):
    """Callback: after each validation that lowers the error rate, save the model to
    ``path`` and ``{"update", "error"}`` to ``info_path``."""

    def __init__(self, path, info_path):
        self.path, self.info_path = path, info_path
        self.best = {"update": None, "error": None}

    def on_validation(self, engine, record):
        err = record["error"]
        if err is not None and (self.best["error"] is None or err < self.best["error"]):
            self.best = {"update": record["update"], "error": err}
            engine.model.save(self.path)
            atomic_write_json(self.info_path, self.best)

    def state_dict(self):
        return dict(self.best)

    def load_state_dict(self, state):
        self.best = {"update": state["update"], "error": state["error"]}


def history_summary(history, validations) -> dict:
    """Figures of a training history comparable to the authors' sample log.

    Parameters
    ----------
    history : rnnfast.trainer.History or mapping name -> (n,) array
        Per-update columns ``norm``, ``clipped``, ``omega``, ``rho``, ``seconds``.
    validations : list of dict
        Validation records (``update``, ``error``).

    Returns
    -------
    dict
        ``first_update_below_1pct``, ``first_update_zero_errors`` (None if
        never), ``seconds_total`` (sum of update times), ``max_norm`` (largest
        pre-clip norm), ``clipped_fraction``, ``final_rho`` (last recorded
        spectral radius), ``omega_last_1000`` (mean Ω over the last 1,000 updates).
    """
    def first(pred):
        return next((v["update"] for v in validations
                     if v.get("error") is not None and pred(v["error"])), None)

    norm = np.asarray(history["norm"], dtype=np.float64)
    rho = np.asarray(history["rho"], dtype=np.float64)
    om = np.asarray(history["omega"], dtype=np.float64)[-1000:]
    finite = norm[np.isfinite(norm)]
    rho = rho[np.isfinite(rho)]
    om = om[np.isfinite(om)]
    return {
        "first_update_below_1pct": first(lambda e: e < 0.01),
        "first_update_zero_errors": first(lambda e: e == 0),
        "seconds_total": float(np.asarray(history["seconds"], dtype=np.float64).sum()),
        "max_norm": float(finite.max()) if finite.size else None,
        "clipped_fraction": float(np.mean(np.asarray(history["clipped"]) > 0)) if norm.size
        else None,
        "final_rho": float(rho[-1]) if rho.size else None,
        "omega_last_1000": float(om.mean()) if om.size else None,
    }


@renamed_argument("threads", "num_threads")
def evaluate_lengths(model, task_name: str, lengths: Sequence[int], *, n_sequences: int = 10_000,
                     seed: int = 12345, num_threads=None, convention: str = "authors",
                     on_row: Optional[Callable[[dict], None]] = None) -> List[dict]:
    """Error rate of ``model`` on ``n_sequences`` fresh sequences at each length.

    Forward only, in chunks; for last-step tasks the core's ``final_state``
    keeps memory independent of T (only the chunk's inputs are stored).

    Returns
    -------
    list of dict
        ``length``, ``sequences``, ``errors``, ``error_rate``, ``solved``
        (< 1 %), ``seconds``.
    """
    from .. import tasks as _tasks

    rows = []
    for i, L in enumerate(lengths):
        task = _tasks.get_task(task_name, min_length=int(L), max_length=int(L),
                               convention=convention)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(L)]))
        t0 = time.perf_counter()
        err = _tasks.evaluate(task, lambda u: model.outputs(u, num_threads=num_threads), rng,
                              n_sequences=int(n_sequences), length=int(L), dtype=model.dtype)
        row = {"length": int(L), "sequences": int(n_sequences),
               "errors": int(round(err * n_sequences)), "error_rate": err,
               "solved": _tasks.is_solved(err), "seconds": time.perf_counter() - t0}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def format_generalization(rows: Sequence[dict]) -> str:
    """Fixed-width table of :func:`evaluate_lengths` rows."""
    head = f"{'length':>6} {'errors':>7} {'error rate':>10} {'< 1%':>5} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['length']:>6} {r['errors']:>7} {100 * r['error_rate']:>9.2f}% "
                     f"{'yes' if r['solved'] else 'no':>5} {r['seconds']:>8.1f}")
    return "\n".join(lines)


@renamed_argument("threads", "num_threads")
def run_generalization(settings: GeneralizationSettings, out_dir, *, model_path=None,
                       num_threads=None, stream=None, time_limit=None) -> dict:
    """Train (or load) the model and evaluate it at every test length.

    Writes ``generalization.json`` and ``generalization.csv`` in ``out_dir``
    (rewritten atomically after each length) and returns the JSON document.
    """
    from ..nn.model import RNNModel

    stream = stream or sys.stdout
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    def log(line):
        print(line, file=stream, flush=True)

    if model_path is not None:
        model = RNNModel.load(model_path)
        train = {"model_path": os.path.abspath(model_path)}
        log(f"evaluating the model in {model_path}")
    else:
        log(f"training: {settings.task}, lengths [{settings.min_length}, {settings.max_length}), "
            f"{settings.hidden} hidden, {settings.init}, SGD-CR (clip {settings.clip}, "
            f"alpha {settings.alpha}), lr {settings.lr}, up to {settings.max_updates} updates")
        model, train = train_generalization(settings, os.path.join(out_dir, "train"),
                                            num_threads=num_threads, log=log, time_limit=time_limit)
        log(f"training stopped ({train['stopped']}) after {train['updates']} updates, "
            f"{format_duration(train['seconds_total'])} of updates")
        if not train["solved"]:
            log(f"the model did not reach the success criterion; evaluating its best "
                f"validation snapshot (update {train['best_update']}, validation error "
                f"{100 * (train['best_error'] or 0):.2f}%)")
    doc = {"settings": json_safe(asdict(settings)), "train": train, "rows": []}

    def write(row=None):
        if row is not None:
            doc["rows"].append(row)
            log(f"  length {row['length']:>5}: {row['errors']} errors / {row['sequences']} "
                f"({100 * row['error_rate']:.2f}%), {row['seconds']:.1f}s")
        atomic_write_json(os.path.join(out_dir, "generalization.json"), doc)
        atomic_write_text(os.path.join(out_dir, "generalization.csv"),
                          csv_text(doc["rows"], ("length", "sequences", "errors",
                                                  "error_rate", "solved", "seconds")))

    evaluate_lengths(model, settings.task, settings.eval_lengths, n_sequences=settings.eval_size,
                     seed=settings.seed + 1_000_003, num_threads=num_threads, on_row=write)
    write()
    log("")
    log(format_generalization(doc["rows"]))
    return doc


# ------------------------------------------------------------------------------- protocol
#: Named configurations of the generalisation model.
PRESETS = {
    # the authors' code (pascanur/trainingRNNs, RNN.py defaults): smart_tanh with 15 non-zeros
    # per column of W_rec (their h·W convention), rescaled to ρ = 0.95; α = 2; stop at zero
    # validation errors, checked every 1000 updates here
    "authors": dict(init="smart_tanh", sparse_per="outgoing", alpha=2.0, success_error=0.0,
                    valid_every=1000),
    # rnnfast's earlier default: basic_tanh, α = 4, stop below 1% validation errors
    "basic": dict(init="basic_tanh", alpha=4.0, success_error=0.01),
}


def preset(name, **overrides) -> GeneralizationSettings:
    """The :class:`GeneralizationSettings` of a named configuration (:data:`PRESETS`), with
    ``overrides`` (None values ignored)."""
    if name not in PRESETS:
        raise ValueError(f"config: expected one of {tuple(PRESETS)}, got {name!r}")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return replace(GeneralizationSettings(), **values)


@renamed_argument("threads", "num_threads")
def run_protocol(settings: GeneralizationSettings, seeds: Sequence[int], out_dir, *,
                 num_threads=None, time_limit=None, stream=None, probes=True) -> dict:
    """Train and test one model per seed (``out_dir/seed-<k>``, each resumable), then write
    ``summary.json`` and ``summary.md``: per test length, how many finished models made zero
    errors, each model's error rates, and (``probes``) the memory analysis of each model
    (:mod:`rnnfast.analysis.memory`). A model whose training was cut by ``time_limit`` is
    left out of the table until a rerun finishes it.

    Returns
    -------
    dict
        The summary document.
    """
    stream = stream or sys.stdout
    out_dir = os.fspath(out_dir)
    deadline = None if time_limit is None else time.perf_counter() + float(time_limit)
    for seed in seeds:
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and left <= 0:
            print(f"time limit reached before seed {seed}; rerun to continue", file=stream)
            break
        print(f"=== seed {seed}", file=stream, flush=True)
        run_generalization(replace(settings, seed=int(seed)), os.path.join(out_dir, f"seed-{seed}"),
                           num_threads=num_threads, stream=stream, time_limit=left)
    doc = summarize(out_dir, settings, seeds, probes=probes, num_threads=num_threads)
    print("", file=stream)
    print(doc["markdown"], file=stream, flush=True)
    return doc


def summarize(out_dir, settings, seeds, *, probes=True, num_threads=None) -> dict:
    """Collect ``out_dir/seed-<k>/generalization.json`` of the finished models into
    ``summary.json`` and ``summary.md`` (see :func:`run_protocol`)."""
    from ..nn.model import RNNModel

    out_dir = os.fspath(out_dir)
    models = []
    for seed in seeds:
        path = os.path.join(out_dir, f"seed-{seed}", "generalization.json")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            g = json.load(f)
        train = g["train"]
        if train.get("stopped") not in ("solved", "max_updates"):
            continue  # cut by a time limit: not finished
        row = {"seed": int(seed), "solved": bool(train["solved"]), "updates": train["updates"],
               "evaluated": train["evaluated"], "final_rho": train.get("final_rho"),
               "omega_last_1000": train.get("omega_last_1000"),
               "errors": {str(r["length"]): r["error_rate"] for r in g["rows"]}}
        if probes:
            which = "best.npz" if train["evaluated"] == "best" else "model.npz"
            model = RNNModel.load(os.path.join(out_dir, f"seed-{seed}", "train", which))
            row["probes"] = memory_probes(model, seed, num_threads=num_threads)
        models.append(row)
    lengths = [int(L) for L in settings.eval_lengths]
    zero = {str(L): sum(1 for m in models if m["errors"].get(str(L)) == 0.0) for L in lengths}
    doc = {"settings": json_safe(asdict(settings)), "seeds": [int(s) for s in seeds],
           "finished": len(models), "zero_error_models": zero,
           "all_lengths_zero": sum(1 for m in models
                                   if all(m["errors"].get(str(L)) == 0.0 for L in lengths)),
           "models": models}
    doc["markdown"] = format_protocol(doc)
    atomic_write_json(os.path.join(out_dir, "summary.json"), doc)
    atomic_write_text(os.path.join(out_dir, "summary.md"), doc["markdown"] + "\n")
    return doc


#: Lags (steps after the second marker) of the summary's probes.
PROBE_LAGS = (50, 100, 250, 500, 1000, 2000, 4000)
#: The probes' marker positions: markers close together and far apart.
PROBE_GAPS = {"short gap": (15, 60), "long gap": (100, 500)}


def memory_probes(model, seed, *, num_threads=None) -> dict:
    """The linear probes of :func:`rnnfast.analysis.memory.marker_probe` at PROBE_LAGS for
    each of PROBE_GAPS: ``{gap name: {"p0", "p1", and the probe's fields as lists}}`` (the
    summary's and :func:`rnnfast.plots.plot_memory_probes`' format)."""
    from ..analysis import memory

    out = {}
    for gap_name, (p0, p1) in PROBE_GAPS.items():
        r = memory.marker_probe(model, p0=p0, p1=p1, lags=PROBE_LAGS, rng=seed,
                                num_threads=num_threads)
        out[gap_name] = {"p0": p0, "p1": p1,
                         **{k: np.asarray(v).tolist() for k, v in r._asdict().items()}}
    return out


def format_protocol(doc) -> str:
    """Markdown: models with zero errors per length, then each model's error rates (%)."""
    lengths = [int(L) for L in doc["settings"]["eval_lengths"]]
    n = doc["finished"]
    lines = ["| | " + " | ".join(str(L) for L in lengths) + " |",
             "|---|" + "---|" * len(lengths),
             f"| models with 0 errors (of {n}) | "
             + " | ".join(f"{doc['zero_error_models'][str(L)]}/{n}" for L in lengths) + " |"]
    for m in doc["models"]:
        tag = (f"seed {m['seed']} ({'solved' if m['solved'] else 'unsolved'} at "
               f"{m['updates']:,} updates)")
        lines.append(f"| {tag} | " + " | ".join(
            f"{100 * m['errors'][str(L)]:.2f}" if str(L) in m["errors"] else "-" for L in lengths)
            + " |")
    lines += ["", f"{doc['all_lengths_zero']}/{n} models have zero errors at every length."]
    return "\n".join(lines)
