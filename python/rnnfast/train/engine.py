"""The training engine: the one loop every training in rnnfast runs through.

One update, in the authors' order::

    batch   ← the data source's next minibatch (its state carried in when it continues
              the previous batch's sequences: truncated BPTT)
    loss, g ← model.loss_and_grad(batch)                   (+ Ω, ∂Ω/∂W_rec when α_t > 0)
    g_W_rec += α_t · ∂Ω/∂W_rec                             (before clipping)
    norm    ← ‖g‖ over all parameters (float64); clip / non-finite policy
    θ       ← optimiser step with lr_t                     (not taken when skipped)

What differs between experiments comes in from outside: the data (a :class:`DataSource`, a
Task, or a list of batches) and callbacks (:mod:`rnnfast.train.callbacks`: validation,
success and early stop, schedules, logging, progress, checkpoints). The engine's state —
parameters, optimiser, schedules, clipper, running norm average, random streams, carried state,
history and position in the data — is what a checkpoint holds; a resumed run continues
bit-identically (same thread count).

Random streams: two ``numpy.random.Generator`` spawned from one seed, ``rng_train`` (the
minibatches a Task draws) and ``rng_valid`` (fresh validation sequences), so validating more or
less often never changes the training data.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import time
from typing import NamedTuple, Optional

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_limits

from .. import core as _core
from ..fileio import CheckpointError, json_safe
from ..nn import clipping as _clipping
from ..nn import init as _init
from ..nn import optim as _optim
from ..nn.batch import as_batch
from ..nn.model import RECURRENT, RNNModel
from . import checkpoint as _ckpt
from .history import ACTIONS, History

__all__ = ["Engine", "TrainResult", "DataSource", "TaskStream", "BatchList", "as_source"]

_blas = None  # threadpoolctl's handle on the loaded BLAS libraries, for step() outside fit()


def _blas_on_one_thread():
    """NumPy's BLAS on one thread for one update (a context): the C++ kernels are already
    parallel, and OpenBLAS's threads, spinning after each product, took a core from theirs
    (a PTB update 22.7 → 51.9 ms on 2 cores, when the readout's products still ran on NumPy;
    an update may still call LAPACK for ρ(W_rec), and so may a user's code). The handle is made
    once (~0.2 ms, a scan of the loaded libraries); a limit then costs ~8 µs."""
    global _blas
    if _blas is None:
        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


class TrainResult(NamedTuple):
    """What :meth:`Engine.fit` returns.

    Attributes
    ----------
    updates : int
        Updates done in total (a resumed run counts those before).
    solved : bool
        Whether a callback declared success.
    stopped : str
        Why it stopped: "solved", "max_updates", "max_epochs", "time", "exhausted", or a
        callback's reason (e.g. "early_stop").
    best_error : float or None
        Best validation error rate seen.
    last_validation : dict or None
    seconds : float
        Wall time of this call.
    """

    updates: int
    solved: bool
    stopped: str
    best_error: Optional[float]
    last_validation: Optional[dict]
    seconds: float


# ---------------------------------------------------------------------------- data sources
class DataSource:
    """Where batches come from, epoch by epoch.

    ``epoch(index, start)`` yields the :class:`~rnnfast.nn.batch.Batch` es of epoch ``index``
    (0-based) from its ``start``-th on (a resumed epoch). A source whose state continues from
    batch to batch (truncated BPTT) sets ``carries_state``; its batches with ``reset=False``
    start from the previous batch's final state. ``repeats`` is False for a one-shot source.
    """

    carries_state = False
    repeats = True

    def epoch(self, index, start=0):
        raise NotImplementedError


class TaskStream(DataSource):
    """Fresh minibatches of a task forever (one endless epoch), drawn from ``rng``.

    Each batch draws its length (``task.sample_length(rng)``), then its sequences
    (``task.generate(rng, batch_size, length, dtype)``). The position is the generator's
    state (the engine checkpoints it), so ``start`` is not needed.
    """

    def __init__(self, task, batch_size, rng, dtype):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        self.task, self.batch_size, self.rng, self.dtype = task, int(batch_size), rng, dtype

    def epoch(self, index, start=0):
        while True:
            T = int(self.task.sample_length(self.rng))
            yield as_batch(self.task.generate(self.rng, self.batch_size, T, dtype=self.dtype))


class BatchList(DataSource):
    """A re-iterable collection of batches (a list, or an object whose ``__iter__`` gives the
    same batches each time): one epoch per pass. A one-shot iterator gives one epoch."""

    def __init__(self, batches, carries_state=None):
        self.batches = batches
        self.repeats = iter(batches) is not batches
        self.carries_state = bool(getattr(batches, "carries_state", False)
                                  if carries_state is None else carries_state)

    def epoch(self, index, start=0):
        it = iter(self.batches)
        if self.repeats and start:
            it = itertools.islice(it, start, None)
        return (as_batch(b) for b in it)


def is_task(obj) -> bool:
    """Whether ``obj`` is a Task (draws fresh batches: ``sample_length`` and ``generate``)."""
    return all(hasattr(obj, a) for a in ("sample_length", "generate"))


def check_task(task, model):
    """ValueError when a task's inputs, outputs, loss or read steps do not fit ``model``."""
    for attr, want in (("n_in", model.n_in), ("n_out", model.n_out), ("loss", model.loss),
                       ("at", model.at)):
        got = getattr(task, attr, None)
        if got is not None and got != want:
            raise ValueError(f"task.{attr} is {got!r} but the model has {attr}={want!r}")


def as_source(data, engine, batch_size=20):
    """A DataSource from a DataSource, a Task (fresh batches from ``engine.rng_train``) or an
    iterable of batches."""
    if isinstance(data, DataSource):
        return data
    if is_task(data):
        check_task(data, engine.model)
        return TaskStream(data, batch_size, engine.rng_train, engine.model.dtype)
    if hasattr(data, "__iter__"):
        return BatchList(data)
    raise TypeError("data: expected a DataSource, a Task (sample_length + generate) or an "
                    f"iterable of batches, got {type(data).__name__}")


# ---------------------------------------------------------------------------------- engine
class Engine:
    """Trains a model: the update (:meth:`step`) and the loop (:meth:`fit`).

    Build it with :func:`rnnfast.train.build` (from a method name and settings) or by hand.

    Parameters
    ----------
    model : RNNModel
        Trained in place.
    optimizer : SGD
        Has ``step(params, grads, lr=...)``, ``state_dict()``, ``load_state_dict()``.
    clipper : GradientClipper
        Clipping and the non-finite policy (``GradientClipper(None)``: no clipping).
    lr : Schedule
        Learning rate per update (``Constant(0.01)``: the paper's temporal order).
    alpha : Schedule or None
        Ω weight α per update; None: Ω off.
    omega_bound : float
        Pairs with ‖∂E/∂h‖² below it are left out of Ω.
    frozen : tuple of str
        Parameters kept fixed (their gradients zeroed), e.g. ``rnnfast.nn.model.BIASES``.
    rho_every : int
        Record ρ(W_rec) in the history every this many updates (0: never).
    explosion_factor : float
        Flag an update whose pre-clip norm exceeds this multiple of the running average norm
        (:class:`~rnnfast.nn.clipping.RunningAverage`).
    seed : int, SeedSequence or None
        Seed of ``rng_train`` and ``rng_valid``.
    num_threads : int or None
        Threads of the kernels (keep it fixed for a bit-identical resume).
    batch_size : int
        Minibatch size when :meth:`fit` is given a Task.
    """

    def __init__(self, model, optimizer, clipper, lr, *, alpha=None,
                 omega_bound=_core.OMEGA_BOUND, frozen=(), rho_every=0, explosion_factor=10.0,
                 seed=None, num_threads=None, batch_size=20):
        if not isinstance(model, RNNModel):
            raise TypeError(f"model: expected an RNNModel, got {type(model).__name__}")
        if not hasattr(optimizer, "step"):
            raise TypeError("optimizer: expected an object with step(params, grads, lr=...)")
        if not isinstance(clipper, _clipping.GradientClipper):
            raise TypeError(f"clipper: expected a GradientClipper, got {type(clipper).__name__}")
        bad = [k for k in frozen if k not in model.params]
        if bad:
            raise ValueError(f"frozen: unknown parameters {bad}; the model has "
                             f"{model.param_names}")
        if not float(explosion_factor) > 1:
            raise ValueError(f"explosion_factor: expected a number > 1, got {explosion_factor!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        self.model = model
        self.optimizer = optimizer
        self.clipper = clipper
        self.lr = _optim.as_schedule(lr)
        self.alpha = _optim.as_schedule(alpha)
        self.omega_bound = float(omega_bound)
        self.frozen = tuple(frozen)
        self.rho_every = int(rho_every)
        self.explosion_factor = float(explosion_factor)
        self.norm_avg = _clipping.RunningAverage(warmup=20, decay=0.99,
                                                 outlier=self.explosion_factor)
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        self.seed_entropy = ss.entropy
        s_train, s_valid = ss.spawn(2)
        self.rng_train = np.random.Generator(np.random.PCG64(s_train))
        self.rng_valid = np.random.Generator(np.random.PCG64(s_valid))
        self.num_threads = num_threads
        self.batch_size = int(batch_size)
        # The kernels' outputs reuse one block of memory update after update (the gradients
        # are consumed before the next update).
        self.workspace = _core.Workspace()
        self._scaled_omega_grad = None  # scratch of step()
        self._fitting = False  # inside fit(), which has set NumPy's BLAS to one thread

        self.update = 0          # updates done
        self.epoch = 0           # epochs completed
        self.batch_in_epoch = 0  # batches of the current epoch trained on
        self.h_carry = None      # (B, H) final state of the last batch, for carried sources
        self._last_h = None      # (B, H) final state of the last step()
        self.history = History()
        self.stop_reason = None
        self.solved = False
        self.callbacks = []      # those of the running fit(), for checkpoints
        self.validations = []    # validation records (appended by validation callbacks)
        self.best_error = None   # lowest validation error rate recorded

    # -------------------------------------------------------------------- the update
    def step(self, batch, h0=None):
        """One update on one batch; returns the history row (a dict).

        Parameters
        ----------
        batch : Batch or tuple (u, targets[, mask])
        h0 : ndarray (B, H) or None
            Initial state (truncated BPTT); None follows the model's h0 policy.

        NumPy's BLAS runs on one thread during the update, as in :meth:`fit`.
        """
        if self._fitting:
            return self._step(batch, h0)
        with _blas_on_one_thread():
            return self._step(batch, h0)

    def _step(self, batch, h0):
        t0 = time.perf_counter()
        u, targets, mask = batch[0], batch[1], (batch[2] if len(batch) > 2 else None)
        m = self.model
        k = self.update
        alpha = float(self.alpha(k)) if self.alpha is not None else 0.0
        # α·∂Ω/∂W_rec folded into the W_rec gradient's product by the kernels (no Ω product of
        # its own) unless W_rec is frozen (its gradient is zeroed before Ω's is added).
        fold = alpha > 0 and RECURRENT not in self.frozen
        res = m.loss_and_grad(u, targets, mask, omega=alpha > 0, omega_bound=self.omega_bound,
                              h0=h0, num_threads=self.num_threads, workspace=self.workspace,
                              omega_alpha=alpha if fold else None)
        self._last_h = res.h_last
        grads = res.grads
        for name in self.frozen:
            grads[name][...] = 0
        if res.omega_grad is not None:
            gw = grads[RECURRENT]
            og = self._scaled_omega_grad  # α·∂Ω/∂W_rec without a new array per update
            if og is None or og.shape != gw.shape or og.dtype != gw.dtype:
                og = self._scaled_omega_grad = np.empty_like(gw)
            np.multiply(gw.dtype.type(alpha), res.omega_grad, out=og)
            gw += og  # before clipping, as the authors
        avg = self.norm_avg.value if self.norm_avg.ready else None  # after a warm-up
        cr = self.clipper(grads, m.params)
        explosion = bool(avg is not None and avg > 0
                         and (not math.isfinite(cr.norm) or cr.norm > self.explosion_factor * avg))
        self.norm_avg.update(cr.norm)
        lr = float(self.lr(k))
        if cr.action != "skipped":
            if isinstance(self.optimizer, _optim.SGD):  # its kernel on the engine's threads
                self.optimizer.step(m.params, grads, lr=lr, num_threads=self.num_threads)
            else:
                self.optimizer.step(m.params, grads, lr=lr)
        rho = float("nan")
        if self.rho_every and (k + 1) % self.rho_every == 0:
            rho = _init.spectral_radius(m.params[RECURRENT])
        row = {
            "update": k + 1,
            "length": int(np.shape(u)[0]),
            "loss": res.loss,
            "norm": cr.norm,
            "clipped": int(cr.clipped),
            "action": ACTIONS.index(cr.action),
            "omega": res.omega if res.omega is not None else float("nan"),
            "alpha": alpha,
            "lr": lr,
            "rho": rho,
            "explosion": int(explosion),
            "seconds": time.perf_counter() - t0,
        }
        self.history.append(row)
        self.update = k + 1
        return row

    # ---------------------------------------------------------------------- the loop
    def stop(self, reason, *, solved=False):
        """Ask :meth:`fit` to stop after the current update (for callbacks)."""
        self.stop_reason = str(reason)
        if solved:
            self.solved = True

    def fit(self, data, *, max_updates=None, max_epochs=None, time_limit=None, callbacks=()):
        """Train until a callback stops it, ``max_updates`` updates in total, ``max_epochs``
        epochs in total, ``time_limit`` seconds of this call, or a one-shot source's end.

        Parameters
        ----------
        data : DataSource, Task or iterable of batches
        callbacks : sequence of Callback
            Called in order at every hook (:class:`rnnfast.train.callbacks.Callback`).

        Returns
        -------
        TrainResult
        """
        source = as_source(data, self, self.batch_size)
        callbacks = list(callbacks)
        names = [cb.name for cb in callbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"callbacks: names must be unique (checkpoints key their state by "
                             f"name), got {names}")
        self.callbacks = callbacks
        # NumPy's BLAS on one thread while training (see _blas_on_one_thread), the loaded
        # libraries scanned afresh once per fit()
        with threadpool_limits(1, user_api="blas"):
            self._fitting = True
            try:
                return self._fit(source, callbacks, max_updates, max_epochs, time_limit)
            finally:
                self._fitting = False

    def _fit(self, source, callbacks, max_updates, max_epochs, time_limit):
        start = time.perf_counter()
        self.stop_reason = None
        self.solved = False
        for cb in callbacks:
            cb.on_fit_begin(self)
        try:
            while self.stop_reason is None:
                if max_epochs is not None and self.epoch >= max_epochs:
                    self.stop("max_epochs")
                    break
                for schedule in (self.lr, self.alpha):
                    if hasattr(schedule, "set_epoch"):
                        schedule.set_epoch(self.epoch + 1)
                for cb in callbacks:
                    cb.on_epoch_begin(self)
                ended = False
                batches = iter(source.epoch(self.epoch, self.batch_in_epoch))
                while True:
                    # the limits first: drawing a batch moves a task's random stream
                    if time_limit is not None and time.perf_counter() - start >= time_limit:
                        self.stop("time")
                        break
                    if max_updates is not None and self.update >= max_updates:
                        self.stop("max_updates")
                        break
                    try:
                        batch = next(batches)
                    except StopIteration:
                        ended = True
                        break
                    h0 = self.h_carry if (source.carries_state and not batch.reset) else None
                    row = self.step(batch, h0)
                    if source.carries_state:
                        self.h_carry = np.array(self._last_h)  # the state this batch ended in
                    self.batch_in_epoch += 1
                    for cb in callbacks:
                        cb.on_update_end(self, batch, row)
                    if self.stop_reason is not None:
                        break
                if not ended:
                    break
                self.epoch += 1
                self.batch_in_epoch = 0
                self.h_carry = None
                for cb in callbacks:
                    cb.on_epoch_end(self)
                if not source.repeats and self.stop_reason is None:
                    self.stop("exhausted")
        finally:
            # also on an exception or Ctrl-C: callbacks save what they hold (checkpoints)
            result = self._result(time.perf_counter() - start)
            for cb in callbacks:
                cb.on_fit_end(self, result)
        return result

    def _result(self, seconds):
        stopped = self.stop_reason or "interrupted"
        return TrainResult(self.update, self.solved, stopped, self.best_error,
                           self.validations[-1] if self.validations else None, seconds)

    def record_validation(self, record):
        """Append a validation record (a dict; ``error`` may be None), track the best error
        and, inside :meth:`fit`, pass the record to every callback's ``on_validation``."""
        self.validations.append(record)
        err = record.get("error")
        if err is not None and (self.best_error is None or err < self.best_error):
            self.best_error = err
        if self._fitting:
            for cb in self.callbacks:
                cb.on_validation(self, record)

    # -------------------------------------------------------------------- state
    def signature(self):
        """Settings that must match for an exact resume."""
        def name(x):
            return repr(x) if (x is None or isinstance(x, _optim.Schedule)) else type(x).__name__

        thr = self.clipper.threshold
        return json_safe({
            "model": self.model.config(),
            "optimizer": type(self.optimizer).__name__,
            "lr": name(self.lr),
            "alpha": name(self.alpha),
            "clip_mode": self.clipper.mode,
            "clip_threshold": repr(thr) if isinstance(thr, _clipping.AutoThreshold) else thr,
            "strict_clip": self.clipper.strict,
            "nonfinite": self.clipper.nonfinite,
            "omega_bound": self.omega_bound,
            "frozen": list(self.frozen),
            "batch_size": self.batch_size,
            "seed_entropy": str(self.seed_entropy),
        })

    def state_dict(self):
        """The whole training state (nested dicts with arrays), for a checkpoint."""
        def sd(x):
            return x.state_dict() if hasattr(x, "state_dict") else {}

        return {
            "signature": self.signature(),
            "params": {k: v.copy() for k, v in self.model.params.items()},
            "optimizer": sd(self.optimizer),
            "lr": sd(self.lr),
            "alpha": sd(self.alpha),
            "clipper": self.clipper.state_dict(),
            "norm_avg": self.norm_avg.state_dict(),
            "rng_train": self.rng_train.bit_generator.state,
            "rng_valid": self.rng_valid.bit_generator.state,
            "update": self.update,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "h_carry": self.h_carry,
            "history": self.history.arrays(),
            "validations": self.validations,
            "best_error": self.best_error,
        }

    def save_checkpoint(self, path, *, callbacks=None, config=None):
        """Write the engine's and the callbacks' state (and an experiment's ``config``,
        checked on resume) to ``path``, atomically."""
        callbacks = self.callbacks if callbacks is None else callbacks
        state = {"engine": self.state_dict(), "config": config,
                 "callbacks": {}}
        for cb in callbacks:
            cb_state = cb.state_dict()
            if cb_state is not None:
                state["callbacks"][cb.name] = cb_state
        _ckpt.save_checkpoint(path, state)

    def load_checkpoint(self, path, *, callbacks=(), config=None, changeable=()):
        """Restore a state written by :meth:`save_checkpoint`.

        The whole file is validated first — its format and version, the configuration and
        settings (they must equal this engine's and ``config``, except the ``config`` keys
        named in ``changeable``: how long a run goes, say), and every component's state,
        loaded into copies — and only then committed to the live objects: a bad checkpoint
        leaves them untouched.

        Raises
        ------
        FileNotFoundError, CheckpointError
        """
        src = repr(os.fspath(path))
        state = _ckpt.load_checkpoint(path)
        try:
            saved, now = state.get("config"), json_safe(config)
            if changeable and isinstance(saved, dict) and isinstance(now, dict):
                saved = {k: v for k, v in saved.items() if k not in changeable}
                now = {k: v for k, v in now.items() if k not in changeable}
            if now != saved:
                diff = settings_diff(saved, now)
                raise CheckpointError(f"{src}: the run's settings differ from the checkpoint's "
                                      f"(checkpoint, now): {diff}")
            e = state["engine"]
            if e["signature"] != self.signature():
                raise CheckpointError(f"{src}: training settings differ from the checkpoint's "
                                      f"(checkpoint, now): {settings_diff(e['signature'], self.signature())}")
            counters = {k: e[k] for k in ("update", "epoch", "batch_in_epoch")}
            for k, v in counters.items():
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise CheckpointError(f"{src}: {k} must be an integer >= 0, got {v!r}")
            probe = RNNModel.from_config(self.model.config(), e["params"], source=src)
            staged = []
            for obj, key in ((self.optimizer, "optimizer"), (self.lr, "lr"),
                             (self.alpha, "alpha"), (self.clipper, "clipper"),
                             (self.norm_avg, "norm_avg")):
                if obj is not None and hasattr(obj, "load_state_dict"):
                    trial = copy.deepcopy(obj)
                    trial.load_state_dict(e[key])
                    staged.append((obj, e[key]))
            rngs = []
            for key in ("rng_train", "rng_valid"):
                g = np.random.Generator(np.random.PCG64())
                g.bit_generator.state = e[key]
                rngs.append(g)
            validations = e["validations"]
            if not isinstance(validations, list) or not all(isinstance(v, dict)
                                                             for v in validations):
                raise CheckpointError(f"{src}: validations must be a list of records")
            history = History()
            history.load_arrays(e["history"])
            h_carry = e["h_carry"]
            if h_carry is not None and (not isinstance(h_carry, np.ndarray) or h_carry.ndim != 2
                                        or h_carry.shape[1] != self.model.n_hidden
                                        or h_carry.dtype.kind != "f"):
                raise CheckpointError(f"{src}: the carried state is not a (B, "
                                      f"{self.model.n_hidden}) float array")
            best_error = e["best_error"]
            if best_error is not None and (isinstance(best_error, bool)
                                           or not isinstance(best_error, (int, float))):
                raise CheckpointError(f"{src}: best_error must be a number or null, got "
                                      f"{best_error!r}")
            cb_states = state["callbacks"]
            for cb in callbacks:
                s = cb_states.get(cb.name)
                if cb.state_dict() is not None:
                    if s is None:
                        raise CheckpointError(f"{src}: no state for callback {cb.name!r}")
                    copy.deepcopy(cb).load_state_dict(s)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise CheckpointError(f"{src}: incomplete or inconsistent checkpoint: {exc!r}") from exc
        # everything validated: commit
        self.model.params = probe.params
        for obj, s in staged:
            obj.load_state_dict(s)
        for cb in callbacks:
            if cb.state_dict() is not None:
                cb.load_state_dict(cb_states[cb.name])
        self.rng_train.bit_generator.state = rngs[0].bit_generator.state
        self.rng_valid.bit_generator.state = rngs[1].bit_generator.state
        self.update, self.epoch, self.batch_in_epoch = (counters["update"], counters["epoch"],
                                                        counters["batch_in_epoch"])
        self.h_carry = None if h_carry is None else np.ascontiguousarray(h_carry,
                                                                         self.model.dtype)
        self.history = history
        self.validations = list(validations)
        self.best_error = best_error


def settings_diff(old, new):
    """{key: (old, new)} where two settings dicts differ; (old, new) when either is not a dict."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)}
    return (old, new)
