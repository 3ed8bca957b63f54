"""One factory for the whole training stack: model, optimiser, clipping, Ω and engine, from
a method name and settings. Every caller builds through it: the CLI, the experiments, the
sweeps' workers, tests and the README."""

from __future__ import annotations

import numpy as np

from .. import core as _core
from ..nn import clipping as _clipping
from ..nn import optim as _optim
from ..nn.model import RNNModel
from .engine import Engine
from .methods import method as _method

__all__ = ["build", "build_model"]


def build_model(*, task=None, n_in=None, n_out=None, hidden=50, init="smart_tanh",
                activation=None, loss=None, at=None, normalize="step", h0="zeros",
                dtype="float32", init_kwargs=None, rng=None):
    """An :class:`~rnnfast.nn.model.RNNModel`; ``n_in``, ``n_out``, ``loss`` and ``at`` come
    from ``task`` when given (explicit values must agree)."""
    dims = {"n_in": n_in, "n_out": n_out, "loss": loss, "at": at}
    if task is not None:
        for k, given in dims.items():
            have = getattr(task, k)
            if given is not None and given != have:
                raise ValueError(f"{k}={given!r} disagrees with the task's {k}={have!r}")
            dims[k] = have
    missing = [k for k in ("n_in", "n_out") if dims[k] is None]
    if missing:
        raise ValueError(f"build_model: give a task or {' and '.join(missing)}")
    return RNNModel(dims["n_in"], hidden, dims["n_out"], init=init, activation=activation,
                    loss=dims["loss"] or "softmax_ce", at=dims["at"] or "last",
                    normalize=normalize, h0=h0, dtype=dtype, rng=rng,
                    init_kwargs=init_kwargs)


def build(method="SGD-CR", *, model=None, task=None, n_in=None, n_out=None, hidden=50,
          init="smart_tanh", activation=None, loss=None, at=None, normalize="step", h0="zeros",
          dtype="float32", init_kwargs=None, init_rng=None,
          lr=0.01, lr_schedule="constant", momentum=0.0, nesterov=False,
          clip=None, clip_mode="norm", strict_clip=False, nonfinite="shrink",
          alpha=None, alpha_schedule="constant", omega_bound=_core.OMEGA_BOUND,
          frozen=(), rho_every=0, explosion_factor=10.0, seed=None, num_threads=None,
          batch_size=20):
    """Build the training stack of ``method`` and return its :class:`Engine`
    (``engine.model`` is the model).

    Parameters
    ----------
    method : str
        "SGD", "SGD-C" or "SGD-CR" (or an accepted alias: sgd-cr, SGD+CR, cr, ...).
    model : RNNModel, optional
        Train this model; otherwise one is built from ``task`` / ``n_in``, ``n_out`` and the
        model settings (``hidden``, ``init``, ``activation``, ``loss``, ``at``,
        ``normalize``, ``h0``, ``dtype``, ``init_kwargs``), initialised from ``init_rng``
        (default: a stream spawned from ``seed``, independent of the engine's two).
    lr : float or Schedule
        Learning rate; with ``lr_schedule`` ("constant", "step:STEP[:GAMMA]",
        "inverse[:T0]", "halve[:FACTOR]") when a number.
    momentum, nesterov
        SGD momentum (the paper: none).
    clip : float, "auto", "auto:FACTOR", AutoThreshold or None
        The clipping threshold (0: no clipping); None takes the method's (1.0 for SGD-C and
        SGD-CR, 0 for SGD). Norm clipping (``clip_mode="norm"``,
        Algorithm 1) or element-wise; ``strict_clip`` clips on ``>`` as the authors' code.
    nonfinite : {"shrink", "skip", "raise"}
        Policy for a NaN/Inf/absurd norm (the authors': shrink).
    alpha : float or Schedule
        Ω's weight α (0: Ω off); None takes the method's (4.0 for SGD-CR, 0 otherwise); with
        ``alpha_schedule`` when a number.
    frozen : tuple of str
        Parameters kept fixed (e.g. ``rnnfast.nn.model.BIASES``).
    seed : int or SeedSequence
        The engine's random streams (and the default ``init_rng``).
    num_threads, batch_size, rho_every, explosion_factor, omega_bound
        As :class:`Engine`.
    """
    m = _method(method)
    if clip is None:
        clip = m.clip if m.clipping else 0
    if alpha is None:
        alpha = m.alpha if m.omega else 0.0
    if model is None:
        if init_rng is None:
            ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
            # children 0 and 1 of the seed are the engine's streams
            init_rng = np.random.default_rng(np.random.SeedSequence(ss.entropy).spawn(3)[2])
        model = build_model(task=task, n_in=n_in, n_out=n_out, hidden=hidden, init=init,
                            activation=activation, loss=loss, at=at, normalize=normalize, h0=h0,
                            dtype=dtype, init_kwargs=init_kwargs, rng=init_rng)
    if isinstance(clip, str) and clip.startswith("auto:"):
        clip = _clipping.AutoThreshold(float(clip[5:]))
    elif not (clip == "auto" or isinstance(clip, _clipping.AutoThreshold)):
        clip = float(clip) or None  # 0: no clipping
    clipper = _clipping.GradientClipper(clip, mode=clip_mode, strict=strict_clip,
                                        nonfinite=nonfinite)
    lr_s = lr if isinstance(lr, _optim.Schedule) else _optim.make_schedule(lr_schedule, lr)
    if isinstance(alpha, _optim.Schedule):
        alpha_s = alpha
    else:
        alpha_s = _optim.make_schedule(alpha_schedule, alpha) if float(alpha) > 0 else None
    optimizer = _optim.SGD(float(lr_s(0)), momentum=momentum, nesterov=nesterov)
    return Engine(model, optimizer, clipper, lr_s, alpha=alpha_s, omega_bound=omega_bound,
                  frozen=frozen, rho_every=rho_every, explosion_factor=explosion_factor,
                  seed=seed, num_threads=num_threads, batch_size=batch_size)
