"""Callbacks: what an experiment adds to the engine's loop.

A callback has hooks called by :meth:`rnnfast.train.Engine.fit`, in list order:
``on_fit_begin(engine)``, ``on_epoch_begin(engine)``, ``on_update_end(engine, batch, row)``,
``on_epoch_end(engine)`` (after the epoch counter moved on) and ``on_fit_end(engine, result)``
(also after an exception or Ctrl-C); ``on_validation(engine, record)`` whenever a validation
record is added (:meth:`rnnfast.train.Engine.record_validation`, by :class:`Validation` or
another validating callback), before the validating callback acts on it (the learning-rate
feedback, the success check). It stops the run with ``engine.stop(reason)``. A
callback with state returns it from ``state_dict()`` (None: stateless) and takes it back in
``load_state_dict``; checkpoints key it by ``name``.

Here: :class:`Validation` (periodic or per-epoch evaluation, the success criterion, the
learning-rate schedule's feedback), :class:`Checkpoint` (atomic checkpoints and the history
files), :class:`Progress` (a tqdm bar on a terminal) and :class:`Every` (call a function every
N updates).
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from ..nn import init as _init
from ..nn.batch import as_batch
from ..nn.model import RECURRENT
from .history import HistoryWriter

__all__ = ["Callback", "Validation", "Checkpoint", "Progress", "Every", "history_summary"]


class Callback:
    """Base class: every hook does nothing; no state."""

    @property
    def name(self):
        return type(self).__name__

    def on_fit_begin(self, engine):
        pass

    def on_epoch_begin(self, engine):
        pass

    def on_update_end(self, engine, batch, row):
        pass

    def on_epoch_end(self, engine):
        pass

    def on_validation(self, engine, record):
        pass

    def on_fit_end(self, engine, result):
        pass

    def state_dict(self):
        return None

    def load_state_dict(self, state):
        pass


class Validation(Callback):
    """Evaluate every ``every`` updates (and/or at each epoch's end), record the result,
    feed the learning-rate schedule, and stop when the error rate is below ``success_error``.

    Parameters
    ----------
    data : Task or iterable of batches
        A Task (``sample_length``, ``generate``, ``errors``) gives ``size`` fresh sequences per
        validation, drawn from ``engine.rng_valid`` in chunks of ``batch`` (of length
        ``length``, or a length drawn per chunk); an iterable gives fixed batches (carried
        state when it ``carries_state``).
    every : int
        Updates between validations (0: none on the update count).
    at_epoch_end : bool
        Also validate when an epoch of the training data ends.
    task : Task, optional
        Supplies ``errors(y, batch)`` when ``data`` is a list of batches.
    success_error : float or None
        Stop ("solved") when the error rate is below it (0: when it is zero) and the loss
        is finite.
    confirm : callable(engine) -> bool, optional
        Asked before stopping on success (e.g. a larger test): False keeps training.
    monitor : {"loss", "error"}
        Which number the learning-rate schedule's ``observe`` receives.
    log : callable(str) or None
        Receives one line per validation.
    """

    def __init__(self, data, *, every=1000, at_epoch_end=False, size=10000, batch=1000,
                 length=None, task=None, success_error=None, confirm=None, monitor="loss",
                 log=None):
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 0:
            raise ValueError(f"every: expected an integer >= 0, got {every!r}")
        if int(size) < 1 or int(batch) < 1:
            raise ValueError(f"size and batch: expected integers >= 1, got {size!r}, {batch!r}")
        if monitor not in ("loss", "error"):
            raise ValueError(f"monitor: expected 'loss' or 'error', got {monitor!r}")
        self.data = data
        self.fresh = all(hasattr(data, a) for a in ("sample_length", "generate"))
        self.task = data if (task is None and self.fresh) else task
        self.every = int(every)
        self.at_epoch_end = bool(at_epoch_end)
        self.size, self.batch = int(size), int(batch)
        self.length = None if length is None else int(length)
        self.success_error = None if success_error is None else float(success_error)
        self.confirm = confirm
        self.monitor = monitor
        self.log = log

    def on_update_end(self, engine, batch, row):
        if self.every and engine.update % self.every == 0:
            self.validate(engine)

    def on_epoch_end(self, engine):
        if self.at_epoch_end:
            self.validate(engine)

    def _batches(self, engine):
        if not self.fresh:
            yield from (as_batch(b) for b in self.data)
            return
        left = self.size
        while left > 0:
            n = min(self.batch, left)
            T = self.length or int(self.data.sample_length(engine.rng_valid))
            yield as_batch(self.data.generate(engine.rng_valid, n, T, dtype=engine.model.dtype))
            left -= n

    def validate(self, engine):
        """Evaluate now; record, observe and check success. Returns the record (a dict with
        ``update``, ``loss`` (mean over sequences), ``error`` (None without a task),
        ``sequences``, ``rho``, ``lr``, ``seconds``), or None without data."""
        t0 = time.perf_counter()
        model = engine.model
        have_err = self.task is not None and hasattr(self.task, "errors")
        carry = not self.fresh and bool(getattr(self.data, "carries_state", False))
        tot_loss, n_seq, n_err, h = 0.0, 0, 0, None
        for b in self._batches(engine):
            h0 = h if (carry and not b.reset) else None
            loss, y, h = model.evaluate(b.u, b.targets, b.mask, h0=h0,
                                        num_threads=engine.num_threads, return_state=True)
            B = np.shape(b.u)[1]
            tot_loss += loss * B
            n_seq += B
            if have_err:
                n_err += int(np.count_nonzero(self.task.errors(y, b)))
        if n_seq == 0:
            return None
        error = n_err / n_seq if have_err else None
        rec = {
            "update": engine.update,
            "loss": tot_loss / n_seq,
            "error": error,
            "sequences": n_seq,
            "rho": _init.spectral_radius(model.params[RECURRENT]),
            "lr": float(engine.lr(engine.update)),
            "seconds": time.perf_counter() - t0,
        }
        engine.record_validation(rec)
        observe = getattr(engine.lr, "observe", None)
        if observe is not None:
            observe(rec["error"] if (self.monitor == "error" and error is not None)
                    else rec["loss"])
        if self.log is not None:
            self.log(self._line(engine, rec))
        if (self.success_error is not None and error is not None
                and self._success(error) and math.isfinite(rec["loss"])
                and (self.confirm is None or self.confirm(engine))):
            engine.stop("solved", solved=True)
        return rec

    def _success(self, error):
        # 0 asks for zero errors: nothing is below it
        return error <= 0 if self.success_error == 0 else error < self.success_error

    def _line(self, engine, rec):
        h = engine.history
        n = len(h)
        lo = max(0, n - (self.every or n))

        def mean(col):
            a = h[col][lo:n]
            a = a[np.isfinite(a)]
            return float(a.mean()) if a.size else float("nan")

        err = "n/a" if rec["error"] is None else f"{100 * rec['error']:7.3f}%"
        return (f"update {rec['update']:8d}  train loss {mean('loss'):.4f}  valid loss "
                f"{rec['loss']:.4f}  valid error {err}  avg norm {mean('norm'):9.3f}  "
                f"rho {rec['rho']:.3f}  Omega {mean('omega'):.4f}  lr {rec['lr']:.3g}")


def history_summary(engine):
    """A small dict describing the run so far (goes into history.json)."""
    h = engine.history
    n = len(h)
    norms = h["norm"]
    return {
        "updates": engine.update,
        "solved": engine.solved,
        "best_error": engine.best_error,
        "clipped_fraction": float(h["clipped"].mean()) if n else None,
        "explosions": int(h["explosion"].sum()) if n else 0,
        "max_norm": float(np.nanmax(norms)) if n and np.isfinite(norms).any() else None,
        "model": engine.model.config(),
        "settings": engine.signature(),
    }


class Checkpoint(Callback):
    """Write the engine's and every callback's state to ``path`` (atomically) every
    ``every`` updates and/or every ``seconds``, at each epoch's end when ``at_epoch_end``, and
    when :meth:`fit` ends (also on an error or Ctrl-C); with ``history``, also
    ``<history>.json`` / ``.csv``.

    Parameters
    ----------
    path : str or None
        Checkpoint file (None: only the history files).
    every : int or None
        Save every this many updates.
    seconds : float or None
        Save when this many seconds have passed since the last save, and at least ten times
        the last save's own duration: the checkpoint and the history's JSON file hold the
        whole history, which grows with the run, so a time-based cadence keeps saving under
        ~10% of the run (the CSV file only gets the new rows).
    at_epoch_end : bool
    history : str or None
        Prefix of the history files.
    config : dict or None
        An experiment's settings, stored and compared on resume (:meth:`restore`).
    """

    def __init__(self, path=None, *, every=None, seconds=None, at_epoch_end=False, history=None,
                 config=None):
        if every is not None and (isinstance(every, bool) or int(every) < 1):
            raise ValueError(f"every: expected an integer >= 1 or None, got {every!r}")
        if seconds is not None and not (isinstance(seconds, (int, float))
                                        and not isinstance(seconds, bool) and seconds > 0):
            raise ValueError(f"seconds: expected a positive number or None, got {seconds!r}")
        if path is None and history is None:
            raise ValueError("Checkpoint: give a path, a history prefix, or both")
        self.path, self.every, self.at_epoch_end = path, every, bool(at_epoch_end)
        self.seconds = None if seconds is None else float(seconds)
        self.history, self.config = history, config
        self._writer = None if history is None else HistoryWriter(history)
        self._last_save = time.perf_counter()  # when the last save ended
        self._save_cost = 0.0                  # how long it took

    def save(self, engine):
        t0 = time.perf_counter()
        if self.path is not None:
            engine.save_checkpoint(self.path, config=self.config)
        if self._writer is not None:
            self._writer.write(engine.history, validations=engine.validations,
                               summary=history_summary(engine))
        self._last_save = time.perf_counter()
        self._save_cost = self._last_save - t0

    def _due(self, engine):
        if self.every and engine.update % self.every == 0:
            return True
        return self.seconds is not None and (time.perf_counter() - self._last_save
                                             >= max(self.seconds, 10.0 * self._save_cost))

    def restore(self, engine, callbacks):
        """Load ``path`` into ``engine`` and ``callbacks`` (see :meth:`Engine.load_checkpoint`)."""
        engine.load_checkpoint(self.path, callbacks=callbacks, config=self.config)
        if self._writer is not None:
            self._writer.reset()  # the files may hold rows past the checkpoint

    def on_fit_begin(self, engine):
        self._last_save = time.perf_counter()

    def on_update_end(self, engine, batch, row):
        if self._due(engine):
            self.save(engine)

    def on_epoch_end(self, engine):
        if self.at_epoch_end:
            self.save(engine)

    def on_fit_end(self, engine, result):
        self.save(engine)


class Progress(Callback):
    """A tqdm progress bar (on a terminal by default; ``enabled=True`` forces it, False hides
    it; nothing without tqdm). ``total`` is the update count to reach, or with
    ``per_epoch`` the batches of one epoch (a bar per epoch)."""

    def __init__(self, total=None, *, per_epoch=False, enabled=None):
        self.total, self.per_epoch, self.enabled = total, bool(per_epoch), enabled
        self.bar = None

    def _open(self, engine):
        if self.enabled is False:
            return None
        if self.enabled is None and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        if self.per_epoch:
            return tqdm(total=self.total, initial=engine.batch_in_epoch, unit="upd",
                        dynamic_ncols=True, leave=False, desc=f"epoch {engine.epoch + 1}")
        return tqdm(total=self.total, initial=engine.update, unit="upd", dynamic_ncols=True,
                    leave=True)

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_fit_begin(self, engine):
        if not self.per_epoch:
            self.bar = self._open(engine)

    def on_epoch_begin(self, engine):
        if self.per_epoch:
            self._close()
            self.bar = self._open(engine)

    def on_update_end(self, engine, batch, row):
        if self.bar is None:
            return
        self.bar.update(1)
        if self.per_epoch or engine.update % 50 == 0:
            err = "-" if engine.best_error is None else f"{engine.best_error:.3f}"
            self.bar.set_postfix(loss=f"{row['loss']:.4g}", norm=f"{row['norm']:.3g}",
                                 lr=f"{row['lr']:.3g}", err=err)

    def on_epoch_end(self, engine):
        if self.per_epoch:
            self._close()

    def on_fit_end(self, engine, result):
        self._close()


class Every(Callback):
    """Call ``fn(engine)`` every ``n`` updates (and at the end with ``at_end``)."""

    def __init__(self, n, fn, *, at_end=False, name=None):
        if int(n) < 1:
            raise ValueError(f"n: expected an integer >= 1, got {n!r}")
        self.n, self.fn, self.at_end = int(n), fn, bool(at_end)
        self._name = name

    @property
    def name(self):
        return self._name or f"Every({getattr(self.fn, '__name__', 'fn')})"

    def on_update_end(self, engine, batch, row):
        if engine.update % self.n == 0:
            self.fn(engine)

    def on_fit_end(self, engine, result):
        if self.at_end:
            self.fn(engine)
