"""Trainer: the paper's training loop (SGD / SGD-C / SGD-CR) with history,
validation, early stopping, atomic checkpoints and exact resume.

One update (the authors' order)::

    batch   ← next minibatch (a Task draws a length, then a batch, from the train RNG)
    loss, g ← model.loss_and_grad(batch)                   (+ Ω, ∂Ω/∂W_rec if α > 0)
    g_W_rec += α_t · ∂Ω/∂W_rec                             (BEFORE clipping)
    norm    ← ‖g‖ over all parameters (float64); clip / non-finite policy
    θ       ← optimiser step with lr_t                     (not taken when skipped)

Every update appends a row to the history: ``update, length, loss, norm``
(pre-clip), ``clipped``, ``action`` (ok / clipped / skipped / shrunk), ``omega``,
``alpha``, ``lr``, ``rho`` (spectral radius of W_rec, every ``rho_every``
updates, NaN otherwise), ``explosion`` (pre-clip norm above
``explosion_factor`` × its running average) and ``seconds`` (wall time of the
update). Validation results form a second table. Both are written as JSON and
CSV, atomically.

Random streams. The trainer owns two ``numpy.random.Generator`` streams spawned
from one seed: ``rng_train`` (minibatch lengths and contents) and
``rng_valid`` (fresh validation sequences), so validating more or less often
never changes the training data. A checkpoint stores both bit-generator states,
the parameters, the optimiser's velocity, the schedules', clipper's and
running averages' states and the history; :meth:`Trainer.load_checkpoint` on a
trainer built with the same arguments continues EXACTLY as the uninterrupted
run (bit-identical parameters), given the same thread count in the core.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from typing import NamedTuple, Optional

import numpy as np

from . import clipping as _clipping
from . import core as _core
from . import init as _init
from . import optim as _optim
from .model import CheckpointError, RNNModel, atomic_write_text, json_safe, read_npz, write_npz

__all__ = ["Trainer", "TrainResult", "History"]

_CKPT_FORMAT = "rnnfast.TrainerCheckpoint"
_CKPT_VERSION = 1
_ACTIONS = ("ok", "clipped", "skipped", "shrunk")

# column name -> numpy dtype of the per-update history
_COLUMNS = {
    "update": np.int64,
    "length": np.int64,
    "loss": np.float64,
    "norm": np.float64,
    "clipped": np.int8,
    "action": np.int8,
    "omega": np.float64,
    "alpha": np.float64,
    "lr": np.float64,
    "rho": np.float64,
    "explosion": np.int8,
    "seconds": np.float64,
}


class History:
    """Column store of the per-update history (amortised O(1) appends)."""

    def __init__(self):
        self._n = 0
        self._cols = {k: np.empty(1024, dt) for k, dt in _COLUMNS.items()}

    def __len__(self):
        return self._n

    def append(self, row):
        """Append one row (dict with every column)."""
        if self._n == len(self._cols["update"]):
            for k, a in self._cols.items():
                b = np.empty(2 * len(a), a.dtype)
                b[: self._n] = a[: self._n]
                self._cols[k] = b
        for k, a in self._cols.items():
            a[self._n] = row[k]
        self._n += 1

    def column(self, name):
        """A view of one column, (n,)."""
        return self._cols[name][: self._n]

    def __getitem__(self, name):
        return self.column(name)

    @property
    def columns(self):
        return tuple(_COLUMNS)

    def arrays(self):
        """dict name -> copy of each column."""
        return {k: self.column(k).copy() for k in _COLUMNS}

    def load_arrays(self, arrays):
        n = len(arrays["update"])
        self._n = 0
        self._cols = {k: np.empty(max(1024, n), dt) for k, dt in _COLUMNS.items()}
        for k in _COLUMNS:
            if k not in arrays or len(arrays[k]) != n:
                raise CheckpointError(f"history column {k!r} is missing or has the wrong length")
            self._cols[k][:n] = arrays[k]
        self._n = n

    def rows(self):
        """Rows as dicts with Python values (action as its name, NaN as None)."""
        cols = {k: self.column(k).tolist() for k in _COLUMNS}
        out = []
        for i in range(self._n):
            r = {}
            for k in _COLUMNS:
                v = cols[k][i]
                if k == "action":
                    v = _ACTIONS[v]
                elif k in ("clipped", "explosion"):
                    v = bool(v)
                elif isinstance(v, float) and not math.isfinite(v):
                    v = None if math.isnan(v) else v
                r[k] = v
            out.append(r)
        return out


class TrainResult(NamedTuple):
    """Summary of :meth:`Trainer.run`.

    Attributes
    ----------
    updates : int
        Total updates done (including those before a resume).
    solved : bool
        Whether the success criterion was met.
    stopped : str
        Why the run stopped: "solved", "max_updates", "time", "exhausted".
    best_error : float or None
        Best validation error rate seen.
    last_validation : dict or None
        The last validation record.
    seconds : float
        Wall time of this call.
    """

    updates: int
    solved: bool
    stopped: str
    best_error: Optional[float]
    last_validation: Optional[dict]
    seconds: float


def _as_batch(item):
    """(u, targets, mask) from a Batch-like object or a 2/3-tuple."""
    if hasattr(item, "u") and hasattr(item, "targets"):
        return item.u, item.targets, getattr(item, "mask", None)
    if isinstance(item, tuple) and len(item) in (2, 3):
        return item[0], item[1], item[2] if len(item) == 3 else None
    raise TypeError(
        "a minibatch must be a Batch (u, targets, mask) or a tuple (u, targets[, mask]), "
        f"got {type(item).__name__}"
    )


def _is_task(obj):
    return all(hasattr(obj, a) for a in ("sample_length", "generate"))


class Trainer:
    """Train an :class:`~rnnfast.model.RNNModel` the way the paper does.

    Parameters
    ----------
    model : RNNModel
        Trained in place.
    data : Task or iterable of batches
        A Task (``sample_length(rng)``, ``generate(rng, batch_size, length,
        dtype)``, ``errors(y, batch)``) gives fresh minibatches forever and
        fresh validation sequences. An iterable gives batches (Batch or
        ``(u, targets[, mask])`` tuples); a re-iterable (a list, or an object
        whose ``__iter__`` yields the same batches each time) runs for several
        epochs and resumes exactly, a one-shot iterator stops when exhausted.
        If the iterable has ``carries_state = True`` (segments of long streams,
        truncated BPTT), each batch starts from the previous batch's final state
        unless ``batch.reset`` is true; the carried state is checkpointed.
    optimizer : SGD, optional
        Default ``SGD(lr)`` (plain SGD).
    lr : float, Schedule or None
        Learning rate or schedule; None (default) keeps the optimiser's ``lr``
        (``SGD()``'s is 0.01, the paper's temporal order).
    clip : float, "auto", GradientClipper or None
        Norm clipping threshold (default 1.0, the paper's); "auto" = a multiple
        of the running average norm; None = no clipping (the non-finite policy
        still applies). A GradientClipper is used as given.
    alpha : float, Schedule or None
        Ω weight α (0 or None: Ω off, plain SGD-C / SGD). The paper uses 4 on
        temporal order; ``InverseTime`` gives the 1/t decay.
    nonfinite : {"shrink", "skip", "raise"}
        Policy for a NaN/Inf/> ``absurd`` norm when ``clip`` is not a
        GradientClipper (authors: shrink).
    strict_clip : bool
        Clip when norm > threshold (authors) instead of ≥ (paper).
    batch_size : int
        Minibatch size for a Task (paper: 20).
    task : Task, optional
        Supplies ``errors`` for validation when ``data`` is an iterable.
    valid : iterable of batches, optional
        Fixed validation batches (default with a Task: fresh sequences).
    valid_every : int or "epoch"
        Validate every this many updates (or at each epoch end).
    valid_size, valid_batch : int
        With a Task: sequences per validation (paper: 10,000) and chunk size.
    valid_length : int, optional
        With a Task: fixed validation length (default: drawn per chunk).
    success_error : float or None
        Stop when the validation error rate is below it (paper: 0.01).
    monitor : {"loss", "error"}
        Validation metric given to the learning-rate schedule's ``observe``.
    omega_bound : float
        Pairs with ‖∂E/∂h‖² below it are left out of Ω (authors: 1e-20).
    rho_every : int
        Record ρ(W_rec) every this many updates (0: never).
    explosion_factor : float
        Flag an update whose pre-clip norm exceeds this multiple of the running
        average norm (the arithmetic mean of the first 20 finite norms, then an
        exponential average with factor 0.99 in which a norm above
        ``explosion_factor`` × average counts as that cap; see
        :class:`~rnnfast.clipping.RunningAverage`).
    seed : int, numpy.random.SeedSequence or None
        Seed of the two random streams.
    checkpoint_path : str, optional
        Where checkpoints go (written atomically).
    checkpoint_every : int, optional
        Checkpoint every this many updates (and at the end of :meth:`run`).
    history_path : str, optional
        Prefix of the history files: ``<prefix>.json`` and ``<prefix>.csv``
        (written at each checkpoint and at the end of :meth:`run`).
    progress : bool or None
        Progress bar (tqdm): None = only when installed and stderr is a TTY.
    log : callable(str) or None
        Called with one line per validation.
    num_threads : int, optional
        Threads for the core (fix it for bit-exact resume).
    """

    def __init__(self, model, data, optimizer=None, *, lr=None, clip=1.0, alpha=None,
                 nonfinite="shrink", strict_clip=False, batch_size=20, task=None, valid=None,
                 valid_every=1000, valid_size=10000, valid_batch=1000, valid_length=None,
                 success_error=0.01, monitor="loss", omega_bound=1e-20, rho_every=100,
                 explosion_factor=10.0, seed=None, checkpoint_path=None, checkpoint_every=None,
                 history_path=None, progress=None, log=None, num_threads=None):
        if not isinstance(model, RNNModel):
            raise TypeError(f"model must be an RNNModel, got {type(model).__name__}")
        self.model = model
        self.data = data
        self.task = data if (task is None and _is_task(data)) else task
        if not _is_task(data) and not hasattr(data, "__iter__"):
            raise TypeError("data must be a Task (sample_length + generate) or an iterable of batches")
        if self.task is not None:
            self._check_task(self.task)
        if optimizer is None:
            optimizer = _optim.SGD(lr if isinstance(lr, (int, float)) else 0.01)
        if not hasattr(optimizer, "step"):
            raise TypeError("optimizer must have a step(params, grads, lr=...) method")
        self.optimizer = optimizer
        if lr is None:
            lr = getattr(optimizer, "lr", 0.01)
        self.lr = _optim.as_schedule(lr)
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha == 0:
            alpha = None
        self.alpha = _optim.as_schedule(alpha)
        if isinstance(clip, _clipping.GradientClipper):
            self.clipper = clip
        else:
            self.clipper = _clipping.GradientClipper(clip, strict=strict_clip, nonfinite=nonfinite)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.valid = valid
        if not (valid_every == "epoch" or (isinstance(valid_every, int) and valid_every >= 0)):
            raise ValueError(f"valid_every must be a non-negative int or 'epoch', got {valid_every!r}")
        self.valid_every = valid_every
        if int(valid_size) < 1 or int(valid_batch) < 1:
            raise ValueError("valid_size and valid_batch must be >= 1")
        self.valid_size, self.valid_batch = int(valid_size), int(valid_batch)
        self.valid_length = None if valid_length is None else int(valid_length)
        self.success_error = None if success_error is None else float(success_error)
        if monitor not in ("loss", "error"):
            raise ValueError(f"monitor must be 'loss' or 'error', got {monitor!r}")
        self.monitor = monitor
        self.omega_bound = float(omega_bound)
        self.rho_every = int(rho_every)
        if not float(explosion_factor) > 1:
            raise ValueError(f"explosion_factor must be > 1, got {explosion_factor}")
        self.explosion_factor = float(explosion_factor)
        self.norm_avg = _clipping.RunningAverage(warmup=20, decay=0.99, outlier=self.explosion_factor)
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        self.seed_entropy = ss.entropy
        s_train, s_valid = ss.spawn(2)
        self.rng_train = np.random.Generator(np.random.PCG64(s_train))
        self.rng_valid = np.random.Generator(np.random.PCG64(s_valid))
        self.checkpoint_path = checkpoint_path
        if checkpoint_every is not None and int(checkpoint_every) < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        self.checkpoint_every = None if checkpoint_every is None else int(checkpoint_every)
        self.history_path = history_path
        self.progress = progress
        self.log = log
        self.num_threads = num_threads
        # The kernels' outputs reuse one block of memory update after update (the gradients
        # are consumed before the next update).
        self.workspace = _core.Workspace()

        self.update = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self._iter = None
        self.history = History()
        self.validations = []
        self.best_error = None
        self.solved = False
        self.h_carry = None  # final state of the last batch, for data with carries_state

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _carries(data):
        """Whether a data source's batches continue each other's sequences."""
        return bool(getattr(data, "carries_state", False))

    def _check_task(self, task):
        m = self.model
        for attr, want in (("n_in", m.n_in), ("n_out", m.n_out), ("loss", m.loss), ("at", m.at)):
            got = getattr(task, attr, None)
            if got is not None and got != want:
                raise ValueError(f"task.{attr} is {got!r} but the model has {attr}={want!r}")

    @property
    def omega_on(self):
        return self.alpha is not None

    def _next_batch(self):
        """(u, targets, mask, batch) or None when a one-shot iterator is exhausted."""
        if _is_task(self.data):
            T = int(self.data.sample_length(self.rng_train))
            b = self.data.generate(self.rng_train, self.batch_size, T, dtype=self.model.dtype)
            return (*_as_batch(b), b)
        while True:
            if self._iter is None:
                self._iter = iter(self.data)
                for _ in range(self.batch_in_epoch):  # resume: skip what was consumed
                    next(self._iter)
            try:
                b = next(self._iter)
            except StopIteration:
                if self._iter is self.data:  # one-shot iterator
                    return None
                self._iter = None
                self.epoch += 1
                self.batch_in_epoch = 0
                if self.valid_every == "epoch":
                    self.validate()
                    if self.solved:
                        return None
                continue
            self.batch_in_epoch += 1
            return (*_as_batch(b), b)

    # ------------------------------------------------------------------ steps
    def train_step(self, u, targets, mask=None, h0=None):
        """One update on one minibatch; returns the history row (a dict).

        Parameters
        ----------
        u : ndarray (T, B, I)
        targets : ndarray
            As for :meth:`RNNModel.loss_and_grad`.
        mask : ndarray (T, B) or None
        h0 : ndarray (B, H) or None
            Initial state (truncated BPTT); None follows the model's h0 policy.
        """
        t0 = time.perf_counter()
        m = self.model
        k = self.update
        alpha = float(self.alpha(k)) if self.omega_on else 0.0
        res = m.loss_and_grad(u, targets, mask, omega=self.omega_on and alpha > 0,
                              omega_bound=self.omega_bound, h0=h0, num_threads=self.num_threads,
                              workspace=self.workspace)
        if self._carries(self.data):
            self.h_carry = np.array(res.h_last)  # state before this update's step (TBPTT)
        grads = res.grads
        if res.omega_grad is not None:
            gw = grads["W_rec"]
            gw += gw.dtype.type(alpha) * res.omega_grad  # before clipping (authors)
        avg = self.norm_avg.value if self.norm_avg.ready else None  # after a 20-update warm-up
        cr = self.clipper(grads, m.params)
        explosion = bool(avg is not None and avg > 0 and (not math.isfinite(cr.norm)
                                                          or cr.norm > self.explosion_factor * avg))
        self.norm_avg.update(cr.norm)
        lr = float(self.lr(k))
        if cr.action != "skipped":
            self.optimizer.step(m.params, grads, lr=lr)
        rho = float("nan")
        if self.rho_every and (k + 1) % self.rho_every == 0:
            rho = _init.spectral_radius(m.params["W_rec"])
        row = {
            "update": k + 1,
            "length": int(np.shape(u)[0]),
            "loss": res.loss,
            "norm": cr.norm,
            "clipped": int(cr.clipped),
            "action": _ACTIONS.index(cr.action),
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

    def _valid_batches(self):
        if self.valid is not None:
            yield from self.valid
            return
        if not _is_task(self.data):
            return
        left = self.valid_size
        while left > 0:
            n = min(self.valid_batch, left)
            T = self.valid_length or int(self.data.sample_length(self.rng_valid))
            yield self.data.generate(self.rng_valid, n, T, dtype=self.model.dtype)
            left -= n

    def validate(self):
        """Evaluate on validation data; record and return the result (dict).

        The dict has ``update``, ``loss`` (average over sequences, weighted by
        batch size), ``error`` (error rate from ``task.errors``, None without a
        task), ``sequences``, ``rho`` and ``seconds``.
        """
        t0 = time.perf_counter()
        tot_loss = 0.0
        n_seq = 0
        n_err = 0
        have_err = self.task is not None and hasattr(self.task, "errors")
        carry = self.valid is not None and self._carries(self.valid)
        h = None
        for b in self._valid_batches():
            u, targets, mask = _as_batch(b)
            h0 = h if (carry and not getattr(b, "reset", False)) else None
            loss, y, h = self.model.evaluate(u, targets, mask, h0=h0, num_threads=self.num_threads,
                                             return_state=True)
            B = np.shape(u)[1]
            tot_loss += loss * B
            n_seq += B
            if have_err:
                n_err += int(np.count_nonzero(self.task.errors(y, b)))
        if n_seq == 0:
            return None
        error = n_err / n_seq if have_err else None
        rec = {
            "update": self.update,
            "loss": tot_loss / n_seq,
            "error": error,
            "sequences": n_seq,
            "rho": _init.spectral_radius(self.model.params["W_rec"]),
            "lr": float(self.lr(self.update)),
            "seconds": time.perf_counter() - t0,
        }
        self.validations.append(rec)
        metric = rec["error"] if (self.monitor == "error" and error is not None) else rec["loss"]
        observe = getattr(self.lr, "observe", None)
        if observe is not None:
            observe(metric)
        if error is not None:
            if self.best_error is None or error < self.best_error:
                self.best_error = error
            if self.success_error is not None and error < self.success_error and math.isfinite(rec["loss"]):
                self.solved = True
        if self.log is not None:
            self.log(self._format_validation(rec))
        return rec

    def _format_validation(self, rec):
        n = len(self.history)
        w = self.history
        lo = max(0, n - (self.valid_every if isinstance(self.valid_every, int) and self.valid_every else n))
        def mean(col):
            a = w[col][lo:n]
            a = a[np.isfinite(a)]
            return float(a.mean()) if a.size else float("nan")
        err = "n/a" if rec["error"] is None else f"{100 * rec['error']:7.3f}%"
        return (f"update {rec['update']:8d}  train loss {mean('loss'):.4f}  valid loss {rec['loss']:.4f}  "
                f"valid error {err}  avg norm {mean('norm'):9.3f}  rho {rec['rho']:.3f}  "
                f"Omega {mean('omega'):.4f}  lr {rec['lr']:.3g}")

    # -------------------------------------------------------------------- run
    def _make_bar(self, total):
        if self.progress is False:
            return None
        if self.progress is None and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=total, initial=self.update, unit="upd", dynamic_ncols=True, leave=True)

    def run(self, max_updates, *, time_limit=None):
        """Train until ``max_updates`` updates in total, success, ``time_limit``
        seconds, or the end of a one-shot iterator.

        Returns
        -------
        TrainResult
        """
        max_updates = int(max_updates)
        start = time.perf_counter()
        bar = self._make_bar(max_updates)
        stopped = "max_updates"
        try:
            while not self.solved and self.update < max_updates:
                if time_limit is not None and time.perf_counter() - start > time_limit:
                    stopped = "time"
                    break
                nb = self._next_batch()
                if nb is None:
                    stopped = "solved" if self.solved else "exhausted"
                    break
                u, targets, mask, b = nb
                h0 = None
                if self._carries(self.data) and not getattr(b, "reset", False):
                    h0 = self.h_carry
                row = self.train_step(u, targets, mask, h0=h0)
                if bar is not None:
                    bar.update(1)
                    if self.update % 50 == 0:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", norm=f"{row['norm']:.3g}",
                                        err=("-" if self.best_error is None else f"{self.best_error:.3f}"))
                if isinstance(self.valid_every, int) and self.valid_every and self.update % self.valid_every == 0:
                    self.validate()
                if self.checkpoint_every and self.checkpoint_path and self.update % self.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.solved:
                stopped = "solved"
        finally:
            if bar is not None:
                bar.close()
        if self.checkpoint_path:
            self.save_checkpoint()
        elif self.history_path:
            self.save_history()
        return TrainResult(self.update, self.solved, stopped, self.best_error,
                           self.validations[-1] if self.validations else None,
                           time.perf_counter() - start)

    # ---------------------------------------------------------------- history
    def save_history(self, prefix=None):
        """Write ``<prefix>.json`` and ``<prefix>.csv`` atomically.

        The JSON holds ``{"columns": {name: [...]}, "validation": [...],
        "summary": {...}}`` (NaN as null); the CSV one row per update.
        """
        prefix = os.fspath(prefix if prefix is not None else self.history_path)
        if prefix is None:
            raise ValueError("no history path given")
        cols = {k: self.history.column(k).tolist() for k in _COLUMNS}
        cols["action"] = [_ACTIONS[a] for a in cols["action"]]
        doc = {
            "columns": cols,
            "validation": self.validations,
            "summary": self.summary(),
        }
        atomic_write_text(prefix + ".json", json.dumps(json_safe(doc), allow_nan=False))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        names = list(_COLUMNS)
        w.writerow(names)
        arrays = [cols[k] for k in names]
        for i in range(len(self.history)):
            w.writerow([_fmt(a[i]) for a in arrays])
        atomic_write_text(prefix + ".csv", buf.getvalue())

    def summary(self):
        """Small dict describing the run so far."""
        n = len(self.history)
        norms = self.history["norm"]
        return {
            "updates": self.update,
            "solved": self.solved,
            "best_error": self.best_error,
            "clipped_fraction": float(self.history["clipped"].mean()) if n else None,
            "explosions": int(self.history["explosion"].sum()) if n else 0,
            "max_norm": float(np.nanmax(norms)) if n and np.isfinite(norms).any() else None,
            "model": self.model.config(),
            "config": self._signature(),
        }

    # ------------------------------------------------------------- checkpoint
    def _signature(self):
        """Settings that must match for an exact resume."""
        def name(x):
            return repr(x) if (x is None or isinstance(x, _optim.Schedule)) else type(x).__name__

        return {
            "batch_size": self.batch_size,
            "lr": name(self.lr),
            "alpha": name(self.alpha),
            "clip_mode": self.clipper.mode,
            "clip_threshold": repr(self.clipper.threshold) if isinstance(
                self.clipper.threshold, _clipping.AutoThreshold) else self.clipper.threshold,
            "strict_clip": self.clipper.strict,
            "nonfinite": self.clipper.nonfinite,
            "omega_bound": self.omega_bound,
            "seed_entropy": str(self.seed_entropy),
        }

    def save_checkpoint(self, path=None):
        """Write a checkpoint atomically (the previous one survives any crash).

        Parameters
        ----------
        path : str, optional
            Default ``checkpoint_path``.
        """
        path = path if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path given")
        opt = self.optimizer.state_dict() if hasattr(self.optimizer, "state_dict") else {}
        velocity = opt.pop("velocity", {})
        meta = {
            "format": _CKPT_FORMAT,
            "version": _CKPT_VERSION,
            "model": self.model.config(),
            "update": self.update,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "rng_train": self.rng_train.bit_generator.state,
            "rng_valid": self.rng_valid.bit_generator.state,
            "optimizer": opt,
            "velocity_keys": sorted(velocity),
            "lr_schedule": self.lr.state_dict() if hasattr(self.lr, "state_dict") else {},
            "alpha_schedule": self.alpha.state_dict() if hasattr(self.alpha, "state_dict") else {},
            "clipper": self.clipper.state_dict(),
            "norm_avg": self.norm_avg.state_dict(),
            "best_error": self.best_error,
            "solved": self.solved,
            "validations": self.validations,
            "signature": self._signature(),
        }
        arrays = {f"param.{k}": v for k, v in self.model.params.items()}
        arrays.update({f"velocity.{k}": v for k, v in velocity.items()})
        arrays.update({f"history.{k}": v for k, v in self.history.arrays().items()})
        if self.h_carry is not None:
            arrays["h_carry"] = self.h_carry
        write_npz(path, arrays, json_safe(meta))
        if self.history_path:
            self.save_history()

    def load_checkpoint(self, path, *, strict=True):
        """Restore the full training state from a checkpoint.

        Build the trainer with the same arguments as the interrupted run, call
        this, then :meth:`run` with the same ``max_updates``.

        Parameters
        ----------
        path : str
        strict : bool
            Refuse a checkpoint whose settings (batch size, schedules, clipping,
            seed) differ from this trainer's.

        Raises
        ------
        FileNotFoundError, CheckpointError
        """
        meta, arrays = read_npz(path, _CKPT_FORMAT)
        src = repr(os.fspath(path))
        if meta.get("version") != _CKPT_VERSION:
            raise CheckpointError(f"{src}: unsupported checkpoint version {meta.get('version')!r}")
        try:
            if meta["model"] != self.model.config():
                raise CheckpointError(
                    f"{src}: checkpoint model {meta['model']} differs from this trainer's model "
                    f"{self.model.config()}"
                )
            if strict and meta["signature"] != json_safe(self._signature()):
                diff = {k: (meta["signature"].get(k), v) for k, v in json_safe(self._signature()).items()
                        if meta["signature"].get(k) != v}
                raise CheckpointError(f"{src}: trainer settings differ from the checkpoint's "
                                      f"(checkpoint, now): {diff}")
            params = {k[len("param."):]: v for k, v in arrays.items() if k.startswith("param.")}
            probe = RNNModel.from_config(meta["model"], params, source=src)  # validates shapes
            velocity = {k: arrays[f"velocity.{k}"] for k in meta["velocity_keys"]}
            hist = {k[len("history."):]: v for k, v in arrays.items() if k.startswith("history.")}
            new_hist = History()
            new_hist.load_arrays(hist)
            rng_train = np.random.Generator(np.random.PCG64())
            rng_train.bit_generator.state = meta["rng_train"]
            rng_valid = np.random.Generator(np.random.PCG64())
            rng_valid.bit_generator.state = meta["rng_valid"]
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{src}: incomplete or inconsistent checkpoint: {e!r}") from e
        # everything validated: commit
        self.model.params = probe.params
        if hasattr(self.optimizer, "load_state_dict"):
            self.optimizer.load_state_dict({**meta["optimizer"], "velocity": velocity})
        if hasattr(self.lr, "load_state_dict"):
            self.lr.load_state_dict(meta["lr_schedule"])
        if hasattr(self.alpha, "load_state_dict"):
            self.alpha.load_state_dict(meta["alpha_schedule"])
        self.clipper.load_state_dict(meta["clipper"])
        self.norm_avg.load_state_dict(meta["norm_avg"])
        self.rng_train, self.rng_valid = rng_train, rng_valid
        self.update = int(meta["update"])
        self.epoch = int(meta["epoch"])
        self.batch_in_epoch = int(meta["batch_in_epoch"])
        self._iter = None
        self.history = new_hist
        self.validations = list(meta["validations"])
        self.h_carry = arrays.get("h_carry")
        self.best_error = meta["best_error"]
        self.solved = bool(meta["solved"])


def _fmt(v):
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else repr(v))
    return str(v)
