"""Deprecated: :class:`Trainer`, the keyword-argument front end of earlier releases, kept for
one release as a thin wrapper that builds an :class:`~rnnfast.train.Engine` and its callbacks.
Use :func:`rnnfast.train.build` and :meth:`Engine.fit` instead."""

from __future__ import annotations

import warnings

from .. import core as _core
from ..nn import clipping as _clipping
from ..nn import optim as _optim
from .callbacks import Checkpoint, Progress, Validation
from .engine import Engine, TrainResult, is_task
from .history import History

__all__ = ["Trainer", "TrainResult", "History"]


class Trainer:
    """Deprecated wrapper: ``Trainer(model, data, optimizer, **settings).run(max_updates)``
    trains through an :class:`Engine` with :class:`Validation`, :class:`Checkpoint` and
    :class:`Progress` callbacks (the same keyword arguments as before)."""

    def __init__(self, model, data, optimizer=None, *, lr=None, clip=1.0, alpha=None,
                 nonfinite="shrink", strict_clip=False, batch_size=20, task=None, valid=None,
                 valid_every=1000, valid_size=10000, valid_batch=1000, valid_length=None,
                 success_error=0.01, monitor="loss", omega_bound=_core.OMEGA_BOUND,
                 rho_every=100, explosion_factor=10.0, seed=None, checkpoint_path=None,
                 checkpoint_every=None, history_path=None, progress=None, log=None,
                 num_threads=None):
        warnings.warn("rnnfast Trainer is deprecated; use rnnfast.train.build(...) and "
                      "Engine.fit(...)", DeprecationWarning, stacklevel=2)
        if optimizer is None:
            optimizer = _optim.SGD(lr if isinstance(lr, (int, float)) else 0.01)
        lr = getattr(optimizer, "lr", 0.01) if lr is None else lr
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha == 0:
            alpha = None
        clipper = clip if isinstance(clip, _clipping.GradientClipper) else \
            _clipping.GradientClipper(clip, strict=strict_clip, nonfinite=nonfinite)
        self.engine = Engine(model, optimizer, clipper, lr, alpha=alpha, omega_bound=omega_bound,
                             rho_every=rho_every, explosion_factor=explosion_factor, seed=seed,
                             num_threads=num_threads, batch_size=batch_size)
        self.data = data
        task = data if (task is None and is_task(data)) else task
        self.callbacks = [Progress(None, enabled=progress)]
        vdata = valid if valid is not None else (data if is_task(data) else None)
        if vdata is not None and valid_every:
            self.callbacks.append(Validation(
                vdata, every=0 if valid_every == "epoch" else valid_every,
                at_epoch_end=valid_every == "epoch", size=valid_size, batch=valid_batch,
                length=valid_length, task=task, success_error=success_error, monitor=monitor,
                log=log))
        if checkpoint_path or history_path:
            self.callbacks.append(Checkpoint(checkpoint_path, every=checkpoint_every,
                                             history=history_path))

    def __getattr__(self, name):
        # model, history, validations, update, best_error, solved, ... live on the engine
        return getattr(self.__dict__["engine"], name)

    def run(self, max_updates, *, time_limit=None):
        self.callbacks[0].total = int(max_updates)
        return self.engine.fit(self.data, max_updates=max_updates, time_limit=time_limit,
                               callbacks=self.callbacks)

    def save_checkpoint(self, path=None):
        self.engine.save_checkpoint(path or self.callbacks[-1].path, callbacks=self.callbacks)

    def load_checkpoint(self, path):
        self.engine.load_checkpoint(path, callbacks=self.callbacks)
