"""Sweep machinery: configuration hashing, an atomic result store, and a runner
that executes runs on any :class:`concurrent.futures.Executor`.

A *run* is a pure function of its *configuration*: a JSON-serialisable dict
(task, method, init, length, seed, hyperparameters).  Its identity is
:func:`config_hash`, a SHA-256 of the canonical JSON of the dict, so the same
configuration always maps to the same result file, on any machine.

:class:`ResultStore` keeps one JSON file per finished run, ``runs/<hash>.json``,
written atomically (temporary file + ``os.replace``), so an interrupted sweep
never leaves a half-written result and a rerun skips what has finished.

:func:`run_sweep` submits every unfinished run to an executor — by default a
local :class:`~concurrent.futures.ProcessPoolExecutor` with the *spawn* start
method (libgomp, the OpenMP runtime of the C++ core, is not fork-safe) — and
stores each result in the driver process as soon as it arrives.  Nothing in it
is specific to processes: a Dask ``Client.get_executor()`` (or any other
``Executor`` whose futures are ``concurrent.futures.Future`` objects) works the
same way, because the run function only needs to be importable on the worker
and results travel back as plain dicts.  A run that raises is retried (at most
``retries`` more times) and then reported as failed; when the local pool breaks
because a worker process died, the pool is rebuilt and the runs that were in it
are resubmitted (each such event counts as a failed attempt for them).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing
import os
import signal
import threading
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional

from .._aliases import renamed_argument
from ..fileio import atomic_write_json, json_safe

__all__ = [
    "canonical_json",
    "config_hash",
    "json_safe",
    "ResultStore",
    "SweepProgress",
    "SweepResult",
    "local_executor",
    "run_in_worker",
    "run_sweep",
    "format_duration",
]

#: Length of the hexadecimal configuration key (64 bits of SHA-256).
HASH_CHARS = 16


# --------------------------------------------------------------------------- #
# configuration identity
# --------------------------------------------------------------------------- #
def canonical_json(config: Mapping) -> str:
    """The canonical JSON text of a configuration (sorted keys, no spaces).

    Parameters
    ----------
    config : mapping
        JSON-serialisable configuration (str keys; numbers, strings, bools,
        None, lists and nested mappings).

    Raises
    ------
    TypeError
        ``config`` is not a mapping or holds a value JSON cannot represent.
    ValueError
        ``config`` holds a NaN or infinite float (no stable JSON form).
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a mapping, got {type(config).__name__}")
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False,
                          ensure_ascii=True)
    except ValueError as exc:
        raise ValueError(f"config: NaN or infinite values have no stable key: {exc}") from exc
    except TypeError as exc:
        raise TypeError(f"config: not JSON-serialisable: {exc}") from exc


def config_hash(config: Mapping) -> str:
    """Stable key of a configuration: the first 16 hex digits of the SHA-256 of
    its canonical JSON.

    Key order does not matter; ``1`` and ``1.0`` are different values (give
    floats as floats).  The key is the same across processes, machines and
    Python versions.
    """
    return hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()[:HASH_CHARS]


# --------------------------------------------------------------------------- #
# result store
# --------------------------------------------------------------------------- #
class ResultStore:
    """One JSON file per finished run in ``<root>/runs/<hash>.json``.

    Each file holds ``{"key": hash, "config": {...}, "result": {...}}``.  Files
    are written atomically; a file that cannot be read (e.g. truncated by a
    crash of an older, non-atomic writer) or whose stored configuration does
    not hash to its name is treated as missing (the run is redone) and listed
    in :attr:`bad`.

    Parameters
    ----------
    root : str or os.PathLike
        Output folder of the sweep (created on the first write).
    """

    def __init__(self, root):
        self.root = os.fspath(root)
        self.dir = os.path.join(self.root, "runs")
        self.bad: List[str] = []

    def path(self, key: str) -> str:
        """Path of the result file of ``key``."""
        return os.path.join(self.dir, f"{key}.json")

    def load(self, key: str) -> Optional[dict]:
        """The stored record ``{"key", "config", "result"}`` of ``key``, or None."""
        p = self.path(key)
        try:
            with open(p, encoding="utf-8") as f:
                rec = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self._mark_bad(p)
            return None
        if (not isinstance(rec, dict) or rec.get("key") != key or "result" not in rec
                or not isinstance(rec.get("config"), dict)
                or config_hash(rec["config"]) != key):
            self._mark_bad(p)
            return None
        return rec

    def _mark_bad(self, path: str) -> None:
        if path not in self.bad:
            self.bad.append(path)

    def __contains__(self, key: str) -> bool:
        return self.load(key) is not None

    def save(self, config: Mapping, result: Mapping) -> str:
        """Store the result of ``config`` atomically; returns its key."""
        key = config_hash(config)
        atomic_write_json(self.path(key), {"key": key, "config": dict(config),
                                           "result": dict(result)})
        return key

    def keys(self) -> List[str]:
        """Keys of every result file present (not validated)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith("."))


# --------------------------------------------------------------------------- #
# executors
# --------------------------------------------------------------------------- #
_watching_parent = False


def watch_parent(interval: float = 0.5) -> None:
    """In a worker process: exit when the process that started it dies, however it dies
    (SIGKILL included), so that no run goes on computing for nobody. A daemon thread polls
    ``os.getppid()`` every ``interval`` seconds. Does nothing in a main process (no
    multiprocessing parent) and when already watching."""
    global _watching_parent
    if _watching_parent or multiprocessing.parent_process() is None:
        return
    _watching_parent = True
    parent = multiprocessing.parent_process().pid

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(interval)

    threading.Thread(target=watch, name="rnnfast-watch-parent", daemon=True).start()


#: Seconds between two looks at pending signals while the sweep waits for its runs.
_SIGNAL_POLL = 0.25


def _worker_init(num_threads: Optional[int]) -> None:
    """Initializer of local pool workers: pin the OpenMP thread count early, leave Ctrl-C to
    the driver (it cancels the sweep and ends the workers), die with the driver."""
    if num_threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(int(num_threads))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch_parent()


def _end_local_pool(executor: cf.ProcessPoolExecutor) -> None:
    """Stop a local pool now: its queued runs cancelled, its running runs killed."""
    procs = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(timeout=2.0)
        if p.is_alive():
            p.kill()


@renamed_argument("threads", "num_threads")
def local_executor(workers: Optional[int] = None, num_threads: Optional[int] = 1
                   ) -> cf.ProcessPoolExecutor:
    """A local process pool suited to rnnfast runs.

    Parameters
    ----------
    workers : int, optional
        Worker processes (default: the number of CPU cores).
    num_threads : int or None
        OpenMP threads per worker (default 1); sets ``OMP_NUM_THREADS`` in each
        worker before rnnfast is imported there.

    Returns
    -------
    concurrent.futures.ProcessPoolExecutor
        Using the ``spawn`` start method (libgomp is not fork-safe).
    """
    if workers is None:
        workers = os.cpu_count() or 1
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, got {workers}")
    return cf.ProcessPoolExecutor(max_workers=workers,
                                  mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_worker_init, initargs=(num_threads,))


def run_in_worker(fn: Callable[[dict], dict], config: dict, num_threads: Optional[int]) -> dict:
    """Run ``fn(config)`` with the rnnfast core limited to ``num_threads`` threads.

    This is what the sweep submits to the executor, so thread pinning does not
    depend on the executor's own initialisation hooks (a Dask worker has none
    of ours).  The returned dict gets ``"threads"`` and ``"worker_pid"`` added
    (informational; they are not part of the configuration).
    """
    watch_parent()
    if num_threads is not None:
        import rnnfast

        rnnfast.set_num_threads(int(num_threads))
    out = dict(fn(config))
    out.setdefault("threads", num_threads)
    out.setdefault("worker_pid", os.getpid())
    return out


# --------------------------------------------------------------------------- #
# runner
# --------------------------------------------------------------------------- #
def format_duration(seconds: Optional[float]) -> str:
    """``3h05m``, ``4m12s``, ``37s`` (or ``?`` for None / non-finite)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    if s >= 86400:
        return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


@dataclass
class SweepProgress:
    """State of a sweep, given to the progress callback.

    Attributes
    ----------
    total : int
        Runs in the sweep.
    skipped : int
        Runs found finished in the store before starting (not redone).
    done : int
        Runs finished (including ``skipped``).
    running : int
        Runs submitted and not finished whose futures report running.
    failed : int
        Runs that failed for good (retries exhausted).
    retries : int
        Failed attempts that were resubmitted so far.
    elapsed : float
        Seconds since the sweep started.
    eta : float or None
        Estimated seconds left (None until one run has finished).
    event : str
        What just happened: "start", "done", "retry", "failed", "tick", "end".
    config : dict or None
        The configuration the event is about.
    result : dict or None
        Its result ("done") or ``{"error": ...}`` ("retry", "failed").
    """

    total: int
    skipped: int = 0
    done: int = 0
    running: int = 0
    failed: int = 0
    retries: int = 0
    elapsed: float = 0.0
    eta: Optional[float] = None
    event: str = "start"
    config: Optional[dict] = None
    result: Optional[dict] = None

    def line(self) -> str:
        """One-line summary: counts, elapsed and estimated time left."""
        pending = self.total - self.done - self.failed
        return (f"[{self.done}/{self.total}] done {self.done} (resumed {self.skipped})  "
                f"running {self.running}  queued {max(0, pending - self.running)}  "
                f"failed {self.failed}  elapsed {format_duration(self.elapsed)}  "
                f"ETA {format_duration(self.eta) if pending else '0s'}")


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns.

    Attributes
    ----------
    records : list of dict
        ``{"key", "config", "result"}`` for every finished run, in the order of
        the configurations given (runs that failed are absent).
    failures : list of dict
        ``{"key", "config", "attempts", "error"}`` of runs that failed for good.
    skipped : int
        Runs that were already finished in the store.
    computed : int
        Runs computed by this call.
    seconds : float
        Wall time of the call.
    interrupted : bool
        True when the sweep stopped on KeyboardInterrupt (Ctrl-C; the command line raises it
        on SIGTERM too): the runs in progress were ended, the finished ones are stored.
    """

    records: List[dict]
    failures: List[dict] = field(default_factory=list)
    skipped: int = 0
    computed: int = 0
    seconds: float = 0.0
    interrupted: bool = False


def _error_text(exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}\n{tb[-4000:]}"


@renamed_argument("threads", "num_threads")
def run_sweep(configs: Iterable[Mapping], fn: Callable[[dict], dict], store: ResultStore, *,
              executor: Optional[cf.Executor] = None, workers: Optional[int] = None,
              num_threads: Optional[int] = 1, retries: int = 2,
              cost: Optional[Callable[[dict], float]] = None,
              progress: Optional[Callable[[SweepProgress], None]] = None,
              tick: float = 60.0,
              on_result: Optional[Callable[[dict], None]] = None) -> SweepResult:
    """Run every configuration not yet in ``store`` and store each result as it ends.

    Parameters
    ----------
    configs : iterable of mapping
        Run configurations (JSON-serialisable).  Duplicates are run once.
    fn : callable(dict) -> dict
        The run: a module-level function (picklable by reference), pure in its
        configuration, returning a JSON-serialisable dict.
    store : ResultStore
        Where results are read from (resume) and written to.
    executor : concurrent.futures.Executor, optional
        Where runs execute (e.g. a Dask ``client.get_executor()``).  It is not
        shut down here.  Default: :func:`local_executor` (``workers`` spawn
        processes), shut down at the end and rebuilt if a worker dies.
    workers : int, optional
        Size of the default pool, and the parallelism assumed for the ETA
        (default: the pool's size, else the number of CPU cores).
    num_threads : int or None
        Core threads per run (:func:`run_in_worker`); None leaves the default.
    retries : int
        How many times a failed run is resubmitted before it counts as failed.
    cost : callable(dict) -> float, optional
        Relative cost of a run (for the ETA and to start expensive runs first);
        default: every run costs 1.
    progress : callable(SweepProgress), optional
        Called at start, after every finished / retried / failed run, every
        ``tick`` seconds while waiting, and at the end.
    tick : float
        Seconds between "tick" progress calls.
    on_result : callable(record), optional
        Called in the driver after each result is stored (e.g. to rewrite the
        aggregated table).

    Returns
    -------
    SweepResult
    """
    if not callable(fn):
        raise TypeError("fn: expected a callable config -> result dict")
    if not isinstance(store, ResultStore):
        raise TypeError(f"store: expected a ResultStore, got {type(store).__name__}")
    if executor is not None and not isinstance(executor, cf.Executor):
        raise TypeError(f"executor: expected a concurrent.futures.Executor, got "
                        f"{type(executor).__name__}")
    retries = int(retries)
    if retries < 0:
        raise ValueError(f"retries: expected an integer >= 0, got {retries}")
    cost = cost or (lambda c: 1.0)

    ordered: List[dict] = []
    keys: List[str] = []
    seen = set()
    for c in configs:
        c = dict(c)
        k = config_hash(c)
        if k not in seen:
            seen.add(k)
            ordered.append(c)
            keys.append(k)

    t_start = time.perf_counter()
    finished: Dict[str, dict] = {}
    for k in keys:
        rec = store.load(k)
        if rec is not None:
            finished[k] = rec
    todo = [(k, c) for k, c in zip(keys, ordered) if k not in finished]
    todo.sort(key=lambda kc: -cost(kc[1]))  # long runs first: shorter tail
    state = SweepProgress(total=len(keys), skipped=len(finished), done=len(finished))

    own = executor is None
    if own:
        workers = int(workers) if workers is not None else (os.cpu_count() or 1)
        executor = local_executor(workers, num_threads)
    elif workers is None:
        workers = getattr(executor, "_max_workers", None) or os.cpu_count() or 1
    workers = max(1, int(workers))

    total_cost = sum(cost(c) for _, c in todo)
    done_cost = 0.0
    busy_seconds = 0.0  # worker-seconds spent on finished runs of this call
    attempts: Dict[str, int] = {k: 0 for k, _ in todo}
    failures: List[dict] = []
    inflight: Dict[cf.Future, tuple] = {}
    computed = 0
    interrupted = False

    def report(event, config=None, result=None):
        if progress is None:
            return
        state.event, state.config, state.result = event, config, result
        state.elapsed = time.perf_counter() - t_start
        state.running = min(workers, sum(1 for f in inflight if f.running()))
        if done_cost > 0 and busy_seconds > 0:
            left = max(0.0, total_cost - done_cost) * busy_seconds / done_cost
            state.eta = left / min(workers, max(1, len(inflight)))
        progress(state)

    def submit(k, c):
        attempts[k] += 1
        f = executor.submit(run_in_worker, fn, c, num_threads)
        inflight[f] = (k, c, time.perf_counter())

    def fail_or_retry(k, c, text, resubmit):
        if attempts[k] <= retries:
            state.retries += 1
            report("retry", c, {"error": text, "attempt": attempts[k]})
            resubmit.append((k, c))
        else:
            state.failed += 1
            failures.append({"key": k, "config": c, "attempts": attempts[k], "error": text})
            report("failed", c, {"error": text, "attempt": attempts[k]})

    try:
        for k, c in todo:
            submit(k, c)
        report("start")
        next_tick = time.monotonic() + tick
        while inflight:
            # Short waits: a signal the kernel delivers to one of the executor's threads does
            # not interrupt this thread's wait, and Python raises KeyboardInterrupt only here,
            # when this thread runs again (else up to a whole 60 s tick later).
            done_set, _ = cf.wait(list(inflight), timeout=max(0.0, min(_SIGNAL_POLL,
                                                                       next_tick - time.monotonic())),
                                  return_when=cf.FIRST_COMPLETED)
            if not done_set:
                if time.monotonic() >= next_tick:
                    report("tick")
                    next_tick = time.monotonic() + tick
                continue
            broken = False
            resubmit: List[tuple] = []
            for f in done_set:
                k, c, t0 = inflight.pop(f)
                try:
                    result = f.result()
                except (Exception, cf.CancelledError) as exc:  # noqa: BLE001 - retried
                    if own and isinstance(exc, BrokenProcessPool):
                        broken = True
                    fail_or_retry(k, c, _error_text(exc), resubmit)
                    continue
                if not isinstance(result, Mapping):
                    fail_or_retry(k, c, f"TypeError: the run returned {type(result).__name__}, "
                                        "expected a dict", resubmit)
                    continue
                store.save(c, result)
                rec = {"key": k, "config": c, "result": json_safe(dict(result))}
                finished[k] = rec
                computed += 1
                state.done += 1
                done_cost += cost(c)
                busy_seconds += float(result.get("seconds") or (time.perf_counter() - t0))
                if on_result is not None:
                    on_result(rec)
                report("done", c, rec["result"])
            if broken:
                # A worker process died: every future of the old pool fails with
                # BrokenProcessPool.  Rebuild the pool and resubmit what was in it
                # (each such run counts one failed attempt, so retries stay bounded).
                rest = list(inflight.items())
                inflight.clear()
                executor.shutdown(wait=False, cancel_futures=True)
                executor = local_executor(workers, num_threads)
                for _f, (k, c, _t0) in rest:
                    fail_or_retry(k, c, "BrokenProcessPool: a worker process died while "
                                        "this run was in the pool", resubmit)
            for k, c in resubmit:
                submit(k, c)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop now, keep what has finished
        interrupted = True
        for f in inflight:
            f.cancel()
        if own:
            _end_local_pool(executor)
    finally:
        if own and not interrupted:
            executor.shutdown(wait=True)
    inflight.clear()
    report("end")
    records = [finished[k] for k in keys if k in finished]
    return SweepResult(records, failures, state.skipped, computed,
                       time.perf_counter() - t_start, interrupted)

