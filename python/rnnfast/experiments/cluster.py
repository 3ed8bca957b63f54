"""Running sweeps on a Dask distributed cluster.

:func:`rnnfast.experiments.sweep.run_sweep` takes any
:class:`concurrent.futures.Executor`.  This module builds one that runs on a
Dask cluster (``pip install 'rnnfast[dask]'``): :func:`connect` turns
``--scheduler tcp://host:port`` (or the environment variable
``RNNFAST_SCHEDULER``) into a :class:`DaskExecutor` around a
``dask.distributed.Client``; ``local`` / ``local:N`` starts a
``LocalCluster`` of N single-threaded worker processes in this process instead.
Scheduling, placement, worker restarts and the rescheduling of a run whose
worker died are Dask's own; this module only adapts its futures to
``concurrent.futures`` and reports what happened.

What the adapter adds to Dask's plain ``Client.get_executor()``:

* **unique task keys** (``pure=False``): a run resubmitted after a failure is a
  new task, never the old erred one again;
* **a finished run is released at once**: its result is fetched and the Dask
  future dropped, so that a later worker death cannot make Dask recompute a run
  whose result is already stored;
* **worker losses are reported**: the executor follows the scheduler's
  ``remove-worker`` events; every submitted run that was on a worker when it
  went away becomes a :class:`WorkerLoss` (in :attr:`DaskExecutor.losses` and
  given to ``on_lost``).  Dask reschedules such a run on another worker by
  itself, at most ``distributed.scheduler.allowed-failures`` times (3 by
  default); past that the future fails with ``KilledWorker`` and the sweep
  runner retries it at most ``retries`` more times and then reports it as
  failed.  Only the run on the dead worker is redone;
* **running()** is true while the run is on a worker (the scheduler's
  ``processing`` state, polled at most once a second and after every finished
  run), so the sweep's progress line counts running and queued runs on the
  cluster too;
* ``max_workers`` (also ``_max_workers``, which ``run_sweep`` reads) is the
  cluster's total thread count, for the time estimates.

Worker settings: one run per worker thread, and the core limited to the
sweep's ``threads`` (1 by default) OpenMP threads in each run by
:func:`rnnfast.experiments.sweep.run_in_worker`; Dask's nanny also starts worker
processes with ``OMP_NUM_THREADS=1``.  Start workers with ``--nthreads 1`` and
one worker process per core (``--nworkers N``): the trainer's Python parts hold
the GIL, so runs in threads of one process slow each other down.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

__all__ = [
    "SCHEDULER_ENV",
    "INSTALL_HINT",
    "require_distributed",
    "scheduler_address",
    "WorkerLoss",
    "RunLostError",
    "DaskExecutor",
    "connect",
    "local_cluster_executor",
    "LOCAL_SCHEDULER_CONFIG",
    "worker_info",
    "loss_printer",
]

#: Environment variable naming the Dask scheduler when ``--scheduler`` is not given.
SCHEDULER_ENV = "RNNFAST_SCHEDULER"

#: How to install the optional Dask dependency.
INSTALL_HINT = "pip install 'rnnfast[dask]'"

_log = logging.getLogger(__name__)

_LOCAL_RE = re.compile(r"^local(?::(\d+))?$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")
_HOSTPORT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def require_distributed():
    """Import ``distributed`` (Dask's cluster package) or explain how to install it.

    Returns
    -------
    module
        The ``distributed`` package.

    Raises
    ------
    ImportError
        Dask distributed is not installed; the message names
        ``pip install 'rnnfast[dask]'``.
    """
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            "running a sweep on a Dask cluster needs dask.distributed, which is not "
            f"installed: {INSTALL_HINT} (or pip install 'dask[distributed]')") from exc
    return distributed


def scheduler_address(scheduler: Optional[str] = None, *,
                      environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The Dask scheduler a sweep should use, or None for the local process pool.

    Parameters
    ----------
    scheduler : str, optional
        ``--scheduler`` value: ``tcp://host:port`` (any Dask protocol:
        ``tls://``, ``ucx://``, ``ws://`` ... ), ``host:port`` (taken as
        ``tcp://``), or ``local`` / ``local:N`` (a LocalCluster started here).
        An empty string means "none" and overrides the environment.
    environ : mapping, optional
        Where to read :data:`SCHEDULER_ENV` when ``scheduler`` is None
        (default ``os.environ``).

    Returns
    -------
    str or None
        The normalised address (``tcp://host:port``, ``local``, ``local:N``),
        or None when neither the argument nor the variable names a scheduler.

    Raises
    ------
    TypeError, ValueError
        The value is not a string of one of the forms above (the message says
        whether it came from the argument or the environment variable).
    """
    if scheduler is None:
        env = os.environ if environ is None else environ
        value, source = env.get(SCHEDULER_ENV), f"${SCHEDULER_ENV}"
    else:
        value, source = scheduler, "scheduler"
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{source}: expected a string such as tcp://host:port, got "
                        f"{type(value).__name__}")
    value = value.strip()
    if not value:
        return None
    m = _LOCAL_RE.match(value)
    if m:
        if m.group(1) is not None and int(m.group(1)) < 1:
            raise ValueError(f"{source}: local:N needs N >= 1 worker processes, got {value!r}")
        return value
    if _URL_RE.match(value):
        return value
    m = _HOSTPORT_RE.match(value)
    if m and 0 < int(m.group(2)) < 65536:
        return f"tcp://{value}"
    raise ValueError(f"{source}: expected a Dask scheduler address tcp://host:port (or "
                     f"host:port), or local / local:N, got {value!r}")


# --------------------------------------------------------------------------- #
# reports
# --------------------------------------------------------------------------- #
_DESCRIBE_KEYS = ("experiment", "task", "init", "method", "length", "seed")


@dataclass
class WorkerLoss:
    """A submitted run was on a worker when that worker left the cluster.

    Attributes
    ----------
    key : str
        Dask key of the task.
    worker : str
        Address of the worker that went away.
    expected : bool
        False when the worker died (crash, kill, lost connection); True when it
        was retired on purpose (the run is rescheduled without counting as a
        failure by Dask).
    count : int
        How many times this submission has lost its worker so far.
    time : float
        ``time.time()`` in the driver when the loss was seen.
    config : dict or None
        The run's configuration when the task is a sweep run (the first dict
        among its arguments), else None.
    function : str
        Name of the submitted function.
    """

    key: str
    worker: str
    expected: bool
    count: int
    time: float
    config: Optional[dict] = None
    function: str = ""

    def describe(self) -> str:
        """One line for a progress log."""
        what = self.function or "task"
        if self.config is not None:
            from .sweep import config_hash

            parts = [f"{k}={self.config[k]}" for k in _DESCRIBE_KEYS if k in self.config]
            what = f"run {config_hash(self.config)} ({' '.join(parts)})" if parts else \
                f"run {config_hash(self.config)}"
        why = "was retired" if self.expected else "died"
        return (f"worker {self.worker} {why} while {what} was running or queued there "
                f"(loss {self.count} of this submission); it is rescheduled (by Dask up to "
                f"its allowed-failures, then by the sweep's retries)")


class RunLostError(RuntimeError):
    """The cluster lost a run's result (Dask future status ``lost``); it is retried."""


def loss_printer(stream=None) -> Callable[[WorkerLoss], None]:
    """An ``on_lost`` callback printing ``LOST <WorkerLoss.describe()>`` lines."""
    import sys

    def show(loss: WorkerLoss) -> None:
        print(f"LOST {loss.describe()}", file=stream or sys.stdout, flush=True)

    return show


# --------------------------------------------------------------------------- #
# the executor
# --------------------------------------------------------------------------- #
@dataclass
class _Entry:
    cf_future: "_ClusterFuture"
    function: str
    config: Optional[dict]
    dask_future: Any = None
    losses: int = 0
    cancelled: bool = False


class _ClusterFuture(cf.Future):
    """A ``concurrent.futures.Future`` for a task on the cluster.

    ``running()`` asks the executor whether the scheduler has the task on a
    worker; ``cancel()`` also cancels the Dask task.
    """

    def __init__(self, executor: "DaskExecutor", key: str):
        super().__init__()
        self._executor = executor
        self.key = key

    def running(self) -> bool:
        """True while the task is on a worker (scheduler state ``processing``)."""
        if self.done():
            return False
        return self._executor._is_processing(self.key)

    def cancel(self) -> bool:
        """Cancel the run: the future is cancelled and the Dask task released."""
        ok = super().cancel()
        if ok:
            self._executor._cancel_key(self.key)
        return ok


def _first_dict(args) -> Optional[dict]:
    for a in args:
        if isinstance(a, dict):
            return a
    return None


def _funcname(fn) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return re.sub(r"[^A-Za-z0-9_.]", "_", str(name))[:60] or "task"


class DaskExecutor(cf.Executor):
    """A :class:`concurrent.futures.Executor` running tasks on a Dask cluster.

    Parameters
    ----------
    client : distributed.Client
        Connected client.  The executor subscribes its ``"all"`` event topic
        (scheduler events such as ``remove-worker``) to see worker losses.
    on_lost : callable(WorkerLoss), optional
        Called for every loss of a worker while one of this executor's runs
        was on it (see :class:`WorkerLoss`).  Called in the client's event-loop
        thread: it must be quick (e.g. print a line).
    cluster : object with ``close()``, optional
        A cluster started for this executor (closed with it).
    owns_client : bool
        Close ``client`` when the executor is shut down.
    refresh : float
        Seconds between two polls of the scheduler's ``processing`` state for
        :meth:`concurrent.futures.Future.running`.

    Notes
    -----
    Tasks are submitted with unique keys (``pure=False``) and no Dask-level
    retries for exceptions (the sweep runner retries).  A finished task's
    result is fetched and the Dask future released right away.
    """

    def __init__(self, client, *, on_lost: Optional[Callable[[WorkerLoss], None]] = None,
                 cluster=None, owns_client: bool = False, refresh: float = 1.0):
        if on_lost is not None and not callable(on_lost):
            raise TypeError("on_lost: expected a callable(WorkerLoss) or None")
        self._client = client
        self._cluster = cluster
        self._owns_client = bool(owns_client)
        self._on_lost = on_lost
        self._refresh = float(refresh)
        self._lock = threading.Lock()
        self._entries: Dict[str, _Entry] = {}
        self._shutdown = False
        self._closed = False
        self._proc_keys: Optional[set] = None
        self._proc_time = -float("inf")
        #: Every :class:`WorkerLoss` seen, in order.
        self.losses: List[WorkerLoss] = []
        client.subscribe_topic("all", self._on_event)

    # ------------------------------------------------------------------ info
    @property
    def client(self):
        """The ``distributed.Client``."""
        return self._client

    @property
    def cluster(self):
        """The cluster started with this executor (LocalCluster), or None."""
        return self._cluster

    @property
    def max_workers(self) -> int:
        """Total worker threads of the cluster now (at least 1)."""
        try:
            n = sum(int(v) for v in self._client.nthreads().values())
        except Exception:  # noqa: BLE001 - informational
            n = 0
        return max(1, n)

    #: Alias read by :func:`rnnfast.experiments.sweep.run_sweep` for its ETA.
    _max_workers = max_workers

    @property
    def address(self) -> str:
        """Address of the scheduler."""
        sched = getattr(self._client, "scheduler", None)
        return str(getattr(sched, "address", "?"))

    def describe(self) -> str:
        """One line: scheduler address, workers and threads now."""
        try:
            nt = self._client.nthreads()
        except Exception:  # noqa: BLE001 - informational
            nt = {}
        kind = "LocalCluster" if self._cluster is not None else "Dask scheduler"
        return (f"{kind} {self.address}: {len(nt)} workers, "
                f"{sum(int(v) for v in nt.values())} threads")

    def __repr__(self) -> str:
        return f"<DaskExecutor {self.address}>"

    # ------------------------------------------------------------------ submit
    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` on the cluster; returns a concurrent future."""
        import functools

        if not callable(fn):
            raise TypeError("fn: expected a callable")
        name = _funcname(fn)
        key = f"{name}-{uuid.uuid4().hex}"
        fut = _ClusterFuture(self, key)
        entry = _Entry(fut, name, _first_dict(args))
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new runs after shutdown")
            self._entries[key] = entry
        call = functools.partial(fn, **kwargs) if kwargs else fn
        try:
            dfut = self._client.submit(call, *args, key=key, pure=False, retries=0)
        except BaseException:
            with self._lock:
                self._entries.pop(key, None)
            raise
        with self._lock:
            entry.dask_future = dfut
            cancelled = entry.cancelled
        if cancelled:  # cancelled between the two locks
            dfut.cancel()
            dfut.release()
        else:
            dfut.add_done_callback(self._finish)
        return fut

    def _finish(self, dfut) -> None:
        """Dask's done callback (its callback thread): hand the outcome over."""
        with self._lock:
            entry = self._entries.pop(dfut.key, None)
            self._proc_time = -float("inf")  # the next running() asks the scheduler again
        if entry is None:  # cancelled by us
            return
        exc: Optional[BaseException] = None
        value = None
        try:
            status = dfut.status
            if status == "finished":
                value = dfut.result()
            elif status == "error":
                err = dfut.exception()
                tb = dfut.traceback()
                exc = err.with_traceback(tb) if tb is not None else err
            elif status == "cancelled":
                exc = cf.CancelledError(f"the cluster cancelled task {dfut.key}")
            else:
                exc = RunLostError(f"the cluster lost task {dfut.key} (status {status!r})")
        except BaseException as e:  # noqa: BLE001 - e.g. the connection went away
            exc = e
        finally:
            # Drop the result from the cluster now: a worker that dies later
            # must not make Dask recompute a run whose result we have.
            dfut.release()
        try:
            if exc is None:
                entry.cf_future.set_result(value)
            else:
                entry.cf_future.set_exception(exc)
        except cf.InvalidStateError:  # cancelled meanwhile
            pass

    def _cancel_key(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                entry.cancelled = True
        if entry is not None and entry.dask_future is not None:
            try:
                entry.dask_future.cancel()
            except Exception:  # noqa: BLE001 - client already closed
                pass
            entry.dask_future.release()

    # ------------------------------------------------------------------ state
    def _is_processing(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            fresh = now - self._proc_time < self._refresh
            keys = self._proc_keys
        if not fresh:
            try:
                proc = self._client.processing()
                keys = {str(k) for ks in proc.values() for k in ks}
            except Exception:  # noqa: BLE001 - fall back to "submitted"
                keys = None
            with self._lock:
                self._proc_keys, self._proc_time = keys, now
        return True if keys is None else key in keys

    def _on_event(self, event) -> None:
        """Handler of the scheduler's ``all`` topic (client event-loop thread)."""
        try:
            _stamp, msg = event
            if not isinstance(msg, dict) or msg.get("action") != "remove-worker":
                return
            worker = str(msg.get("worker", "?"))
            expected = bool(msg.get("expected", False))
            found = []
            with self._lock:
                for k in msg.get("processing-tasks") or ():
                    entry = self._entries.get(str(k))
                    if entry is None:
                        continue
                    entry.losses += 1
                    loss = WorkerLoss(str(k), worker, expected, entry.losses, time.time(),
                                      entry.config, entry.function)
                    self.losses.append(loss)
                    found.append(loss)
                self._proc_time = -float("inf")
        except Exception:  # noqa: BLE001 - never break the client's loop
            _log.exception("rnnfast: could not read a scheduler event %r", event)
            return
        for loss in found:
            _log.info("rnnfast: %s", loss.describe())
            if self._on_lost is not None:
                try:
                    self._on_lost(loss)
                except Exception:  # noqa: BLE001
                    _log.exception("rnnfast: on_lost callback failed")

    def check_workers(self) -> Dict[str, dict]:
        """Ask every connected worker for :func:`worker_info`.

        Returns
        -------
        dict address -> info

        Raises
        ------
        RuntimeError
            A worker cannot import rnnfast or has another rnnfast version than
            this process (every worker must run the same code for results to
            be the same everywhere).
        """
        import rnnfast

        infos = self._client.run(worker_info, on_error="return")
        mine = getattr(rnnfast, "__version__", "?")
        bad = []
        for addr, info in sorted(infos.items()):
            if isinstance(info, BaseException):
                bad.append(f"{addr}: {type(info).__name__}: {info}")
            elif info.get("rnnfast") != mine:
                bad.append(f"{addr}: rnnfast {info.get('rnnfast')} (this process: {mine})")
        if bad:
            raise RuntimeError("Dask workers cannot run rnnfast sweeps (install the same "
                               "rnnfast on every worker):\n  " + "\n  ".join(bad))
        return infos

    # ------------------------------------------------------------------ close
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting runs; optionally cancel or wait for the submitted ones.

        Closes the client (and the cluster) when this executor owns them.
        Safe to call more than once.
        """
        with self._lock:
            self._shutdown = True
            entries = list(self._entries.items())
        if cancel_futures:
            for key, entry in entries:
                if entry.cf_future.cancel() is False:
                    self._cancel_key(key)
        if wait:
            cf.wait([e.cf_future for _, e in entries])
        self._close()

    def close(self) -> None:
        """Cancel whatever is still submitted and release the client/cluster."""
        self.shutdown(wait=False, cancel_futures=True)

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._client.unsubscribe_topic("all")
        except Exception:  # noqa: BLE001
            pass
        if self._owns_client:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __exit__(self, exc_type, exc, tb):
        self.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)
        return False


def worker_info() -> dict:
    """What a worker reports to :meth:`DaskExecutor.check_workers` (runs on the worker)."""
    import rnnfast

    return {"pid": os.getpid(), "rnnfast": getattr(rnnfast, "__version__", "?"),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "core_threads": rnnfast.get_num_threads()}


# --------------------------------------------------------------------------- #
# construction
# --------------------------------------------------------------------------- #
#: Scheduler settings of :func:`local_cluster_executor` (Dask configuration keys).
LOCAL_SCHEDULER_CONFIG = {
    # hand a worker only as many runs as it has threads: the others wait in the
    # scheduler for whichever worker frees up first, and a dying worker takes
    # only the runs it was running with it
    "distributed.scheduler.worker-saturation": 1.0,
}


def local_cluster_executor(n_workers: Optional[int] = None, *, threads_per_worker: int = 1,
                           on_lost: Optional[Callable[[WorkerLoss], None]] = None,
                           config: Optional[Mapping[str, Any]] = None,
                           **cluster_kwargs) -> DaskExecutor:
    """Start a ``dask.distributed.LocalCluster`` of worker processes and wrap it.

    Parameters
    ----------
    n_workers : int, optional
        Worker processes (default: the number of CPU cores).
    threads_per_worker : int
        Runs at a time per worker process (default 1).
    on_lost : callable(WorkerLoss), optional
        See :class:`DaskExecutor`.
    config : mapping, optional
        Dask configuration set while the cluster starts, over
        :data:`LOCAL_SCHEDULER_CONFIG` (e.g.
        ``{"distributed.scheduler.allowed-failures": 1}``).
    **cluster_kwargs
        More ``LocalCluster`` arguments (default: no dashboard, nanny-managed
        processes that Dask restarts when they die).

    Returns
    -------
    DaskExecutor
        Owning the cluster and its client (``close()`` stops both).  The
        calling script needs the ``if __name__ == "__main__":`` guard (the
        workers are spawned processes).
    """
    distributed = require_distributed()
    n = (os.cpu_count() or 1) if n_workers is None else n_workers
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_workers: expected an integer >= 1, got {n_workers!r}")
    if (isinstance(threads_per_worker, bool) or not isinstance(threads_per_worker, int)
            or threads_per_worker < 1):
        raise ValueError(f"threads_per_worker: expected an integer >= 1, got "
                         f"{threads_per_worker!r}")
    kw = dict(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
              dashboard_address=None)
    kw.update(cluster_kwargs)
    import dask

    with dask.config.set({**LOCAL_SCHEDULER_CONFIG, **dict(config or {})}):
        cluster = distributed.LocalCluster(**kw)
    try:
        client = distributed.Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    return DaskExecutor(client, on_lost=on_lost, cluster=cluster, owns_client=True)


def connect(scheduler: Optional[str] = None, *, n_workers: Optional[int] = None,
            on_lost: Optional[Callable[[WorkerLoss], None]] = None, timeout: float = 30.0,
            check: bool = True, environ: Optional[Mapping[str, str]] = None
            ) -> Optional[DaskExecutor]:
    """The executor for ``--scheduler`` (or ``$RNNFAST_SCHEDULER``), or None.

    Parameters
    ----------
    scheduler : str, optional
        See :func:`scheduler_address`.  None reads the environment variable.
    n_workers : int, optional
        Worker processes for ``local`` (``local:N`` wins; default: CPU cores).
    on_lost : callable(WorkerLoss), optional
        See :class:`DaskExecutor`.
    timeout : float
        Seconds to wait for the scheduler to answer.
    check : bool
        Ask the connected workers whether they can import this rnnfast
        (:meth:`DaskExecutor.check_workers`).
    environ : mapping, optional
        Environment to read (default ``os.environ``).

    Returns
    -------
    DaskExecutor or None
        None when no scheduler is named: the caller uses its local process pool.

    Raises
    ------
    ImportError
        Dask distributed is not installed (``pip install 'rnnfast[dask]'``).
    ValueError
        Malformed address.
    ConnectionError
        The scheduler did not answer within ``timeout`` seconds.
    RuntimeError
        A worker cannot run rnnfast (``check``).
    """
    addr = scheduler_address(scheduler, environ=environ)
    if addr is None:
        return None
    distributed = require_distributed()
    m = _LOCAL_RE.match(addr)
    if m:
        n = int(m.group(1)) if m.group(1) else n_workers
        ex = local_cluster_executor(n, on_lost=on_lost)
    else:
        try:
            client = distributed.Client(addr, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"scheduler: no Dask scheduler answered at {addr} within {timeout:g} s "
                f"({type(exc).__name__}: {exc}). Start one with `dask scheduler` and "
                f"workers with `dask worker {addr} --nthreads 1`.") from exc
        ex = DaskExecutor(client, on_lost=on_lost, owns_client=True)
    if check:
        try:
            ex.check_workers()
        except BaseException:
            ex.close()
            raise
    return ex
