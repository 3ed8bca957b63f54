"""The paper's synthetic sweep (section 4.1, Figure 7).

:func:`run_synthetic`: SGD, SGD-C and SGD-CR under the three initialisations ``sigmoid``,
``basic_tanh`` and ``smart_tanh``, over sequence lengths and seeds, on the temporal-order
problem (or another task of :mod:`rnnfast.tasks`). One run trains one model at ONE fixed
sequence length until it is solved or its update budget is spent. The output is a table of
success rate, updates to success and wall time per run and per point, as CSV and JSON (the
command line adds the Figure-7 plot, :func:`rnnfast.plots.plot_figure7`). The generalisation
test is :mod:`rnnfast.experiments.generalization`.

Methods (:mod:`rnnfast.train.methods`): ``SGD`` = no clipping, no Ω; ``SGD-C`` = norm clipping at
the threshold (1.0); ``SGD-CR`` = clipping + Ω with constant weight α (4.0, the
paper's temporal-order value).  Every method keeps the authors' guard against
NaN/Inf/> 1e10 gradient norms (a shrink step on ``W_rec``).

Success (paper): fewer than 1 % errors on 10,000 fresh sequences.  To keep runs
cheap, a run validates every ``valid_every`` updates on ``valid_size`` (1,000)
fresh sequences; when that sample is below 1 %, the model is confirmed on
``eval_size`` (10,000) further fresh sequences (forward only) before the run
is declared solved; otherwise training goes on.

Each run is a pure function of its configuration (:func:`train_run`): the
seeds of the initial weights, the training stream, the validation stream and
the confirmation sequences all derive from ``(seed, task, init, length)``, so
the three methods of one point start from the same weights and see the same
minibatches (a paired comparison), and a run gives the same result on any
worker with the same thread count.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._aliases import renamed_argument
from ..fileio import atomic_write_json, atomic_write_text, csv_text
from ..train.methods import METHODS as _METHOD_TABLE, canonical_method
from .sweep import ResultStore, SweepProgress, config_hash, format_duration, run_sweep

__all__ = [
    "METHODS",
    "INITS",
    "SweepSettings",
    "DEFAULT",
    "FULL",
    "make_configs",
    "run_seeds",
    "train_run",
    "run_cost",
    "probe_update_time",
    "estimate_seconds",
    "expected_updates",
    "expected_seconds",
    "aggregate",
    "write_tables",
    "run_synthetic",
]

#: The paper's three methods: name -> (uses clipping, uses Ω).
METHODS: Tuple[str, ...] = tuple(_METHOD_TABLE)
#: The paper's three initialisations (Figure 7's panels, left to right).
INITS: Tuple[str, ...] = ("sigmoid", "basic_tanh", "smart_tanh")
#: Version of the run function's semantics; part of every configuration.
RUN_VERSION = 1


@dataclass(frozen=True)
class SweepSettings:
    """Settings of a synthetic sweep (one run per method x init x length x seed).

    Attributes
    ----------
    task : str
        Task name (:data:`rnnfast.tasks.TASKS`); each run uses one fixed length.
    lengths : tuple of int
        Sequence lengths (one point each).
    seeds : int
        Seeds per point (``0 .. seeds-1``).
    methods, inits : tuple of str
        Subsets of :data:`METHODS` and :data:`INITS`.
    hidden : int
        Hidden units (paper: 50).
    lr : float
        Learning rate (paper: 0.01, no momentum).
    clip : float
        Norm-clipping threshold of SGD-C and SGD-CR (paper: 1.0).
    alpha : float
        Ω weight of SGD-CR, constant (paper: 4.0 on temporal order).
    batch_size : int
        Minibatch (paper: 20).
    max_updates : int
        Update budget per run (paper: 5M).
    valid_every : int
        Updates between two validations on ``valid_size`` fresh sequences.
    valid_size : int
        Sequences of the periodic validation sample.
    eval_size : int
        Sequences of the confirmation of success (paper: 10,000).
    success_error : float
        Success: error rate below this (paper: 0.01).
    dtype : str
        "float32" (the authors' Theano floatX) or "float64".
    convention : str
        Task conventions ("authors" or "martens").
    """

    task: str = "temporal_order"
    lengths: Tuple[int, ...] = (10, 20, 40)
    seeds: int = 3
    methods: Tuple[str, ...] = tuple(METHODS)
    inits: Tuple[str, ...] = INITS
    hidden: int = 50
    lr: float = 0.01
    clip: float = 1.0
    alpha: float = 4.0
    batch_size: int = 20
    max_updates: int = 20_000
    valid_every: int = 250
    valid_size: int = 1000
    eval_size: int = 10_000
    success_error: float = 0.01
    dtype: str = "float32"
    convention: str = "authors"

    def __post_init__(self):
        try:
            object.__setattr__(self, "methods", tuple(canonical_method(m) for m in self.methods))
        except ValueError as e:
            raise ValueError(f"methods: {e}") from None
        for name in ("hidden", "batch_size", "max_updates", "valid_every", "valid_size",
                     "eval_size", "seeds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
        for name in ("lr", "clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: expected a positive number, got {v!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)
                and self.alpha >= 0):
            raise ValueError(f"alpha: expected a number >= 0, got {self.alpha!r}")
        if not 0 < self.success_error <= 1:
            raise ValueError(f"success_error: expected a number in (0, 1], got "
                             f"{self.success_error!r}")
        if not self.lengths or any(int(L) < 1 for L in self.lengths):
            raise ValueError(f"lengths: expected positive integers, got {self.lengths!r}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods: expected a non-empty subset of {tuple(METHODS)}, "
                             f"got {self.methods!r}")
        from ..nn.init import INIT_SCHEMES

        bad = [i for i in self.inits if i not in INIT_SCHEMES]
        if bad or not self.inits:
            raise ValueError(f"inits: expected a non-empty subset of {INIT_SCHEMES}, "
                             f"got {self.inits!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {self.dtype!r}")


#: The default sweep: 81 runs (lengths 10, 20, 40; 3 seeds; 20,000 updates per run).
#: Measured: 5 min 05 s with 2 workers on 2 cores (0.69 ms per update on average,
#: 883,750 updates); SGD-CR solves every tanh run at length 40, SGD none.
DEFAULT = SweepSettings()

#: The paper's Figure-7 settings.
FULL = SweepSettings(lengths=(50, 100, 150, 200), seeds=5, max_updates=5_000_000,
                     valid_every=1000, valid_size=1000)


def run_seeds(n: int) -> Tuple[int, ...]:
    """Seeds of a sweep with ``n`` seeds per point: ``0 .. n-1``."""
    return tuple(range(int(n)))


def make_configs(settings: SweepSettings) -> List[dict]:
    """One configuration dict per run, ordered init, method, length, seed.

    Each dict holds everything :func:`train_run` needs (JSON-serialisable) and
    is hashed by :func:`rnnfast.experiments.sweep.config_hash`.
    """
    if not isinstance(settings, SweepSettings):
        raise TypeError(f"settings: expected a SweepSettings, got {type(settings).__name__}")
    out = []
    for init in settings.inits:
        for method in settings.methods:
            clipping, omega = _METHOD_TABLE[method].clipping, _METHOD_TABLE[method].omega
            for L in settings.lengths:
                for seed in run_seeds(settings.seeds):
                    out.append({
                        "experiment": "synthetic",
                        "version": RUN_VERSION,
                        "task": settings.task,
                        "convention": settings.convention,
                        "method": method,
                        "init": init,
                        "length": int(L),
                        "seed": int(seed),
                        "hidden": int(settings.hidden),
                        "lr": float(settings.lr),
                        "momentum": 0.0,
                        "batch_size": int(settings.batch_size),
                        "clip": float(settings.clip) if clipping else None,
                        "alpha": float(settings.alpha) if omega else 0.0,
                        "max_updates": int(settings.max_updates),
                        "valid_every": int(settings.valid_every),
                        "valid_size": int(settings.valid_size),
                        "eval_size": int(settings.eval_size),
                        "success_error": float(settings.success_error),
                        "dtype": settings.dtype,
                    })
    return out


#: One configuration of the default sweep per (method, init, length): what a run must match
#: for :func:`expected_updates` to apply.
_DEFAULT_REFERENCE = {(c["method"], c["init"], c["length"]): c for c in make_configs(DEFAULT)}


def _seed_sequence(config: dict) -> np.random.SeedSequence:
    """Root seed of a run: (seed, length, task, init); NOT the method (paired runs)."""
    words = [int(config["seed"]), int(config["length"]),
             zlib.crc32(str(config["task"]).encode()), zlib.crc32(str(config["init"]).encode())]
    return np.random.SeedSequence(words)


def _build_task(config: dict):
    from .. import tasks as _tasks

    return _tasks.get_task(config["task"], min_length=int(config["length"]),
                           max_length=int(config["length"]),
                           convention=config.get("convention", "authors"))


def run_cost(config: dict) -> float:
    """Relative expected cost of a run: ``updates * (length + 25)``, with the updates of
    :func:`expected_updates` where these settings have been measured, else the budget (the
    sweep's time left and its order, expensive runs first, follow it).

    Measured per-update time of the core at 50 hidden units grows about
    linearly with the length plus a fixed overhead worth ~25 steps.
    """
    ups = expected_updates(config)
    return float(config["max_updates"] if ups is None else ups) * (float(config["length"]) + 25.0)


def train_run(config: dict) -> dict:
    """Train one model as ``config`` says and return its result (a pure function).

    Parameters
    ----------
    config : dict
        A configuration from :func:`make_configs`.

    Returns
    -------
    dict
        ``solved`` (bool), ``updates_to_success`` (int or None), ``updates``
        (done), ``stopped``, ``confirm_error`` (error rate on ``eval_size``
        sequences at the last confirmation, None if never confirmed),
        ``confirmations`` ([update, error] of every confirmation),
        ``validations`` ([update, error] of every periodic validation),
        ``best_valid_error``, ``seconds`` (wall time), ``ms_per_update``,
        ``max_norm`` (largest pre-clip gradient norm), ``clipped_fraction``,
        ``explosions``, ``nonfinite`` (updates replaced by the shrink step),
        ``final_rho`` (spectral radius of W_rec), ``omega_last`` (mean Ω over
        the last validation interval, NaN without Ω), ``rnnfast_version``.
    """
    import rnnfast
    from .. import tasks as _tasks
    from ..nn.init import spectral_radius
    from ..train import Every, Validation, build

    t0 = time.perf_counter()
    task = _build_task(config)
    L = int(config["length"])
    root = _seed_sequence(config)
    s_init, s_train, s_eval = root.spawn(3)
    success = float(config["success_error"])
    every = int(config["valid_every"])
    engine = build(config["method"], task=task, hidden=int(config["hidden"]),
                   init=config["init"], dtype=config["dtype"],
                   init_rng=np.random.default_rng(s_init), lr=float(config["lr"]),
                   momentum=float(config["momentum"]), clip=config["clip"] or 0,
                   alpha=float(config["alpha"]), nonfinite="shrink",
                   batch_size=int(config["batch_size"]), seed=s_train)
    model = engine.model
    eval_rng = np.random.default_rng(s_eval)
    stats = {"max_norm": 0.0, "clipped": 0, "explosions": 0, "nonfinite": 0, "n": 0,
             "omega_last": float("nan")}
    confirmations: List[list] = []

    def fold_history(engine):
        h = engine.history
        if len(h) == 0:
            return
        norms = h["norm"]
        finite = norms[np.isfinite(norms)]
        if finite.size:
            stats["max_norm"] = max(stats["max_norm"], float(finite.max()))
        stats["clipped"] += int(h["clipped"].sum())
        stats["explosions"] += int(h["explosion"].sum())
        stats["nonfinite"] += int(np.count_nonzero(h["action"] >= 2))
        stats["n"] += len(h)
        om = h["omega"]
        om = om[np.isfinite(om)]
        stats["omega_last"] = float(om.mean()) if om.size else float("nan")
        h.clear()  # bounded memory on multi-million-update runs

    def confirm(engine):
        # the small validation sample is below the criterion: confirm on eval_size more
        err = _tasks.evaluate(task, model.outputs, eval_rng,
                              n_sequences=int(config["eval_size"]), length=L,
                              dtype=np.dtype(config["dtype"]))
        confirmations.append([engine.update, err])
        return _tasks.is_solved(err, success)

    callbacks = [Validation(task, every=every, size=int(config["valid_size"]),
                            batch=min(int(config["valid_size"]), 1000), length=L,
                            success_error=success, confirm=confirm),
                 Every(every, fold_history, at_end=True, name="fold")]
    result = engine.fit(task, max_updates=int(config["max_updates"]), callbacks=callbacks)
    solved_at = engine.update if result.solved else None
    confirm_error = confirmations[-1][1] if confirmations else None
    omega_last = stats["omega_last"]
    seconds = time.perf_counter() - t0
    n = max(1, stats["n"])
    rho = spectral_radius(model.params["W_rec"])
    return {
        "solved": solved_at is not None,
        "updates_to_success": solved_at,
        "updates": int(engine.update),
        "stopped": "solved" if solved_at is not None else "max_updates",
        "confirm_error": confirm_error,
        "confirmations": confirmations,
        "validations": [[v["update"], v["error"]] for v in engine.validations],
        "best_valid_error": engine.best_error,
        "seconds": seconds,
        "ms_per_update": 1e3 * seconds / max(1, engine.update),
        "max_norm": stats["max_norm"],
        "clipped_fraction": stats["clipped"] / n,
        "explosions": stats["explosions"],
        "nonfinite": stats["nonfinite"],
        "final_rho": rho,
        "omega_last": omega_last,
        "rnnfast_version": getattr(rnnfast, "__version__", "?"),
    }


# --------------------------------------------------------------------------- #
# time estimate
# --------------------------------------------------------------------------- #
@renamed_argument("threads", "num_threads")
def probe_update_time(settings: SweepSettings, lengths: Optional[Sequence[int]] = None, *,
                      updates: int = 20, num_threads: int = 1) -> Dict[int, float]:
    """Measure seconds per SGD-CR update at each length (a short timing probe).

    Parameters
    ----------
    settings : SweepSettings
        Task, hidden size, batch size and dtype of the probe.
    lengths : sequence of int, optional
        Default ``settings.lengths``.
    updates : int
        Timed updates per length and round (after 10 warm-up updates; the median of three
        rounds).
    num_threads : int
        Core threads during the probe (as in one worker).

    Returns
    -------
    dict length -> seconds per update
    """
    import rnnfast
    from ..train import build

    old = rnnfast.get_num_threads()
    rnnfast.set_num_threads(int(num_threads))
    try:
        out = {}
        for L in (lengths or settings.lengths):
            cfg = {"task": settings.task, "length": int(L), "convention": settings.convention}
            task = _build_task(cfg)
            engine = build("SGD-CR", task=task, hidden=settings.hidden, init="basic_tanh",
                           dtype=settings.dtype, init_rng=0, clip=settings.clip,
                           alpha=settings.alpha, batch_size=settings.batch_size, seed=0)
            engine.fit(task, max_updates=10)  # warm-up: first-call allocations, caches
            reps = []
            for _ in range(3):  # the median of three: one slow stretch of the machine does
                t = time.perf_counter()  # not set the estimate
                engine.fit(task, max_updates=engine.update + int(updates))
                reps.append((time.perf_counter() - t) / int(updates))
            out[int(L)] = statistics.median(reps)
        return out
    finally:
        rnnfast.set_num_threads(old)


def _run_seconds(c: dict, t: float, updates: float) -> float:
    # the periodic validations are forward only: a third of a training update per sequence
    valid = c["valid_size"] / c["batch_size"] / 3.0 * t / c["valid_every"]
    return updates * (t + valid)


def estimate_seconds(configs: Sequence[dict], per_update: Dict[int, float], workers: int
                     ) -> float:
    """Worst-case wall time of ``configs``: every run spends its whole budget.

    Adds the periodic validations (forward only, counted as a third of a training update
    per sequence / batch size).  Divides by ``workers``.
    """
    total = sum(_run_seconds(c, per_update[int(c["length"])], c["max_updates"])
                for c in configs)
    return total / max(1, int(workers))


#: The default sweep as measured (README, 2-core AMD EPYC): (init, method, length) ->
#: (runs solved out of 3, median updates to success). The time estimate's expectation.
DEFAULT_OUTCOMES: Dict[Tuple[str, str, int], Tuple[int, Optional[float]]] = {
    ("sigmoid", "SGD", 10): (0, None), ("sigmoid", "SGD", 20): (0, None),
    ("sigmoid", "SGD", 40): (0, None),
    ("sigmoid", "SGD-C", 10): (0, None), ("sigmoid", "SGD-C", 20): (0, None),
    ("sigmoid", "SGD-C", 40): (0, None),
    ("sigmoid", "SGD-CR", 10): (2, 6_000), ("sigmoid", "SGD-CR", 20): (2, 12_750),
    ("sigmoid", "SGD-CR", 40): (0, None),
    ("basic_tanh", "SGD", 10): (3, 500), ("basic_tanh", "SGD", 20): (3, 2_000),
    ("basic_tanh", "SGD", 40): (0, None),
    ("basic_tanh", "SGD-C", 10): (3, 500), ("basic_tanh", "SGD-C", 20): (3, 1_500),
    ("basic_tanh", "SGD-C", 40): (0, None),
    ("basic_tanh", "SGD-CR", 10): (3, 250), ("basic_tanh", "SGD-CR", 20): (3, 1_000),
    ("basic_tanh", "SGD-CR", 40): (3, 5_250),
    ("smart_tanh", "SGD", 10): (3, 500), ("smart_tanh", "SGD", 20): (2, 3_750),
    ("smart_tanh", "SGD", 40): (0, None),
    ("smart_tanh", "SGD-C", 10): (3, 500), ("smart_tanh", "SGD-C", 20): (1, 1_000),
    ("smart_tanh", "SGD-C", 40): (1, 13_250),
    ("smart_tanh", "SGD-CR", 10): (3, 500), ("smart_tanh", "SGD-CR", 20): (3, 750),
    ("smart_tanh", "SGD-CR", 40): (3, 15_500),
}
# what a run's outcome depends on besides (init, method, length, seed)
_OUTCOME_KEYS = ("task", "convention", "hidden", "lr", "momentum", "batch_size", "max_updates",
                 "valid_every", "valid_size", "eval_size", "success_error", "dtype")


def expected_updates(config: dict) -> Optional[float]:
    """Expected updates of a run whose settings are the default sweep's: the measured
    share of solved runs at their median updates, the rest at the budget. None for any
    other settings (no measurement to go by)."""
    ref = _DEFAULT_REFERENCE.get((config.get("method"), config.get("init"),
                                  config.get("length")))
    if ref is None or any(config.get(k) != ref.get(k) for k in _OUTCOME_KEYS + ("clip", "alpha")):
        return None
    solved, median = DEFAULT_OUTCOMES[(config["init"], config["method"], int(config["length"]))]
    budget = float(config["max_updates"])
    return (solved * (median or 0.0) + (3 - solved) * budget) / 3.0


def expected_seconds(configs: Sequence[dict], per_update: Dict[int, float], workers: int
                     ) -> Optional[float]:
    """Expected wall time of ``configs`` on ``workers`` workers from the probed time per
    update and :func:`expected_updates` (plus a confirmation on ``eval_size`` sequences per
    solved run); None when a run has no expectation (then only the worst case is known)."""
    total = 0.0
    for c in configs:
        ups = expected_updates(c)
        if ups is None:
            return None
        t = per_update[int(c["length"])]
        total += _run_seconds(c, t, ups) + c["eval_size"] / c["batch_size"] / 3.0 * t
    return total / max(1, int(workers))


# --------------------------------------------------------------------------- #
# tables
# --------------------------------------------------------------------------- #
RUN_COLUMNS = ("key", "task", "init", "method", "length", "seed", "solved",
               "updates_to_success", "updates", "confirm_error", "best_valid_error",
               "seconds", "ms_per_update", "max_norm", "clipped_fraction", "explosions",
               "nonfinite", "final_rho", "omega_last")
POINT_COLUMNS = ("task", "init", "method", "length", "runs", "solved", "success_rate",
                 "updates_median", "updates_mean", "updates_min", "updates_max",
                 "seconds_mean", "seconds_total", "max_updates")


def _run_row(rec: dict) -> dict:
    c, r = rec["config"], rec["result"]
    row = {k: c.get(k) for k in ("task", "init", "method", "length", "seed")}
    row["key"] = rec["key"]
    for k in RUN_COLUMNS:
        if k not in row:
            row[k] = r.get(k)
    return row


def aggregate(records: Sequence[dict]) -> List[dict]:
    """Per-point summary (task, init, method, length) over seeds.

    Parameters
    ----------
    records : sequence of dict
        ``{"key", "config", "result"}`` records (from the store).

    Returns
    -------
    list of dict
        Columns :data:`POINT_COLUMNS`: ``success_rate`` in [0, 1], update
        statistics over the solved runs (None when none solved), mean and total
        wall time.  Ordered by task, init (paper's order), method, length.
    """
    groups: Dict[tuple, List[dict]] = {}
    for rec in records:
        c = rec["config"]
        groups.setdefault((c["task"], c["init"], c["method"], int(c["length"])), []).append(rec)
    init_rank = {k: i for i, k in enumerate(INITS)}
    meth_rank = {k: i for i, k in enumerate(METHODS)}
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], init_rank.get(k[1], 99), k[1],
                                             meth_rank.get(k[2], 99), k[2], k[3])):
        recs = groups[key]
        ups = sorted(r["result"]["updates_to_success"] for r in recs if r["result"]["solved"])
        secs = [float(r["result"]["seconds"]) for r in recs]
        rows.append({
            "task": key[0], "init": key[1], "method": key[2], "length": key[3],
            "runs": len(recs), "solved": len(ups), "success_rate": len(ups) / len(recs),
            "updates_median": statistics.median(ups) if ups else None,
            "updates_mean": statistics.fmean(ups) if ups else None,
            "updates_min": ups[0] if ups else None, "updates_max": ups[-1] if ups else None,
            "seconds_mean": statistics.fmean(secs), "seconds_total": sum(secs),
            "max_updates": max(int(r["config"]["max_updates"]) for r in recs),
        })
    return rows


def write_tables(out_dir, records: Sequence[dict], *, settings: Optional[dict] = None,
                 failures: Sequence[dict] = (), extra: Optional[dict] = None) -> Dict[str, str]:
    """Write ``runs.csv``, ``summary.csv`` and ``summary.json`` atomically.

    Returns
    -------
    dict name -> path
    """
    out_dir = os.fspath(out_dir)
    points = aggregate(records)
    runs = [_run_row(r) for r in records]
    paths = {
        "runs_csv": atomic_write_text(os.path.join(out_dir, "runs.csv"),
                                      csv_text(runs, RUN_COLUMNS)),
        "summary_csv": atomic_write_text(os.path.join(out_dir, "summary.csv"),
                                         csv_text(points, POINT_COLUMNS)),
    }
    doc = {"settings": settings, "points": points, "runs": runs,
           "failures": [{k: f[k] for k in ("key", "config", "attempts", "error")}
                        for f in failures]}
    if extra:
        doc.update(extra)
    paths["summary_json"] = atomic_write_json(os.path.join(out_dir, "summary.json"), doc)
    return paths


def format_table(points: Sequence[dict]) -> str:
    """A fixed-width text table of :func:`aggregate` rows (what the command prints)."""
    head = (f"{'init':<11} {'method':<7} {'length':>6} {'solved':>7} {'rate':>6} "
            f"{'median upd':>11} {'mean s/run':>10}")
    lines = [head, "-" * len(head)]
    for p in points:
        med = "-" if p["updates_median"] is None else f"{p['updates_median']:.0f}"
        lines.append(f"{p['init']:<11} {p['method']:<7} "
                     f"{p['length']:>6} {p['solved']:>3}/{p['runs']:<3} "
                     f"{100 * p['success_rate']:>5.0f}% {med:>11} {p['seconds_mean']:>10.1f}")
    return "\n".join(lines)


def estimate_line(expected: Optional[float], worst: float, workers: int, budget: int) -> str:
    """The printed time estimate: the expected time where these settings have been measured
    (and what it assumes), else the worst case."""
    if expected is None:
        return (f"estimate: at most {format_duration(worst)} on {workers} workers (every run "
                f"spending its {budget} updates; runs stop as soon as they are solved, and "
                "these settings have no measurement of how soon)")
    return (f"estimate: {format_duration(expected)} on {workers} workers (the timing probe "
            "times the updates each run is expected to make: the share of solved runs and their "
            "median updates measured for these settings, a quiet machine; at most "
            f"{format_duration(worst)} if no run stops early)")


class _SweepBar:
    """Progress of a sweep: a tqdm bar of finished runs with the time left (on a terminal),
    else one line per finished, retried or failed run."""

    def __init__(self, stream, estimate, bar):
        self.stream, self.estimate, self.bar = stream, estimate, None
        if bar is None:
            bar = hasattr(stream, "isatty") and stream.isatty()
        if bar:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=0, unit="run", file=stream, dynamic_ncols=True,
                                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} runs "
                                           "[{elapsed}, {postfix}]")

    def left(self, p: SweepProgress):
        if p.eta is not None:
            return p.eta
        if self.estimate is not None:
            return max(0.0, self.estimate - p.elapsed)
        return None

    def __call__(self, p: SweepProgress):
        if self.bar is not None:
            self.bar.total = p.total
            self.bar.n = p.done
            self.bar.set_postfix_str(f"{format_duration(self.left(p))} left, "
                                     f"{p.failed} failed", refresh=False)
            self.bar.refresh()
            if p.event in ("retry", "failed"):
                self.bar.write(self._line(p), file=self.stream)
            return
        if p.event in ("done", "retry", "failed", "start", "tick"):
            print(self._line(p), file=self.stream, flush=True)

    def _line(self, p):
        if p.event == "done":
            c, r = p.config, p.result
            what = (f"solved at {r['updates_to_success']} updates" if r["solved"]
                    else f"not solved in {r['updates']} updates (best valid error "
                         f"{100 * (r['best_valid_error'] or 1):.1f}%)")
            return (f"{p.line()} | {c['init']} {c['method']} L={c['length']} "
                    f"seed {c['seed']}: {what}, {r['seconds']:.1f}s")
        if p.event in ("retry", "failed"):
            c = p.config
            first = p.result["error"].splitlines()[0]
            return (f"{p.line()} | {p.event.upper()} {c['init']} {c['method']} L={c['length']} "
                    f"seed {c['seed']} (attempt {p.result['attempt']}): {first}")
        return p.line()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@renamed_argument("threads", "num_threads")
def run_synthetic(settings: SweepSettings, out_dir, *, executor=None, workers=None,
                  num_threads=1,
                  retries=2, progress=True, tick=60.0, estimate=True,
                  stream=None, bar=None) -> dict:
    """Run (or resume) a synthetic sweep and write its tables and figure.

    Parameters
    ----------
    settings : SweepSettings
    out_dir : str or os.PathLike
        Output folder: ``runs/<hash>.json`` (one per finished run),
        ``runs.csv``, ``summary.csv``, ``summary.json``, ``sweep.json`` (the settings
        and run keys); the command line adds ``figure7.png`` (:func:`rnnfast.plots.plot_figure7`).
    executor : concurrent.futures.Executor, optional
        Default: a local spawn process pool of ``workers`` processes.
    workers : int, optional
        Default: the number of CPU cores.
    num_threads : int or None
        Core threads per run (default 1).
    retries : int
        Resubmissions of a failing run.
    progress : bool
        Print progress lines.
    tick : float
        Seconds between progress lines while waiting.
    estimate : bool
        Print a time estimate from a timing probe before starting: the expected time
        (:func:`expected_seconds`) where the settings have been measured, else the worst case.
    stream : file, optional
        Where to print (default stdout).
    bar : bool or None
        A tqdm bar of the finished runs with the estimated time left instead of one line
        per run (None: when ``stream`` is a terminal and tqdm is installed).

    Returns
    -------
    dict
        ``points`` (aggregated rows), ``records``, ``failures``, ``paths``,
        ``seconds``, ``computed``, ``skipped``, ``interrupted``, ``estimate``.
    """
    stream = stream or sys.stdout
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    configs = make_configs(settings)
    store = ResultStore(out_dir)
    workers = int(workers) if workers is not None else (os.cpu_count() or 1)
    todo = [c for c in configs if config_hash(c) not in store]
    settings_doc = asdict(settings)
    atomic_write_json(os.path.join(out_dir, "sweep.json"),
                      {"settings": settings_doc, "keys": [config_hash(c) for c in configs]})
    est = None
    if progress:
        print(f"rnnfast reproduce synthetic: {len(configs)} runs "
              f"({len(settings.inits)} inits x {len(settings.methods)} methods x "
              f"{len(settings.lengths)} lengths x {settings.seeds} seeds) on {settings.task}, "
              f"{len(configs) - len(todo)} already finished in {out_dir}", file=stream,
              flush=True)
    if estimate and todo:
        per = probe_update_time(settings, sorted({c["length"] for c in todo}),
                                num_threads=num_threads or 1)
        worst = estimate_seconds(todo, per, workers)
        est = expected_seconds(todo, per, workers)
        if progress:
            rates = ", ".join(f"L={L}: {1e3 * t:.2f} ms" for L, t in sorted(per.items()))
            print(f"timing probe (per update, {num_threads or 1} thread): {rates}", file=stream)
            print(estimate_line(est, worst, workers, settings.max_updates), file=stream,
                  flush=True)
        est = worst if est is None else est

    # Tables while the sweep runs: records kept in memory (not re-read from disk per run)
    # and the tables rewritten at most every `tick` seconds, so the work stays proportional
    # to the runs finished; the final tables are written below.
    keys = {config_hash(c) for c in configs}
    done = {k: store.load(k) for k in keys if k in store}
    last_write = [0.0]

    def on_result(rec):
        done[rec["key"]] = rec
        now = time.perf_counter()
        if now - last_write[0] >= tick:
            write_tables(out_dir, list(done.values()), settings=settings_doc)
            last_write[0] = time.perf_counter()

    show = _SweepBar(stream, est, bar) if progress else None
    try:
        res = run_sweep(configs, train_run, store, executor=executor, workers=workers,
                        num_threads=num_threads, retries=retries, cost=run_cost,
                        progress=show, tick=tick, on_result=on_result)
    finally:
        if show is not None:
            show.close()
    points = aggregate(res.records)
    extra = {"wall_seconds_last_call": res.seconds, "computed_last_call": res.computed,
             "resumed_last_call": res.skipped, "interrupted": res.interrupted,
             "estimate_seconds": est, "workers": workers,
             "run_seconds_total": sum(float(r["result"]["seconds"]) for r in res.records)}
    paths = write_tables(out_dir, res.records, settings=settings_doc, failures=res.failures,
                         extra=extra)
    if progress and res.interrupted:
        print(f"interrupted: {len(res.records)} of {len(configs)} runs finished, kept in "
              f"{out_dir}; rerun the same command to resume", file=stream, flush=True)
    elif progress:
        print("", file=stream)
        print(format_table(points), file=stream)
        print(f"\n{res.computed} runs computed, {res.skipped} resumed, {len(res.failures)} "
              f"failed; wall time {format_duration(res.seconds)}"
              + ("" if est is None else f" (estimate {format_duration(est)})"), file=stream)
        for name, p in paths.items():
            print(f"  {name}: {p}", file=stream)
        stream.flush()
    return {"points": points, "records": res.records, "failures": res.failures, "paths": paths,
            "seconds": res.seconds, "computed": res.computed, "skipped": res.skipped,
            "interrupted": res.interrupted, "estimate": est}
