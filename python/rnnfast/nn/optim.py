"""Optimisers and schedules (learning rate and the Ω weight α).

Optimiser
---------
:class:`SGD` covers the three update rules, all in place on a dict of
parameters (``params[name] -= ...``):

plain SGD (the paper's "MSGD", ``momentum=0``)
    ``θ ← θ − lr·g``
classical momentum
    ``v ← μ v − lr·g;  θ ← θ + v``
Nesterov momentum (``nesterov=True``; Sutskever et al. 2013 in the
reformulation of Bengio et al. 2012, where the gradient is taken at the
stored parameters)
    ``v ← μ v − lr·g;  θ ← θ + μ v − lr·g``

Schedules
---------
A schedule maps the update index ``t`` (0-based) to a value, and may react to
validation results through :meth:`Schedule.observe`:

- :class:`Constant` — ``value``.
- :class:`StepDecay` — ``value · gamma^⌊t / step⌋``.
- :class:`InverseTime` — ``value · t0 / (t0 + t)``, a "1/t" decay per update
  (``value=0.5, t0=1`` gives ``1/(2(1+t))``); the natural tasks' α uses
  :class:`EpochInverse`, the same decay per epoch.
- :class:`HalveOnRise` — ``value``, multiplied by ``factor`` (½) every time the
  observed validation error rises above the previous one (the paper's music
  runs).
- :class:`Anneal` — Mikolov's RNNLM rule: ``value`` until an epoch improves the
  validation error by less than 0.3%, then halved after every epoch; ``finished``
  when an epoch improves it by less than that again.

:func:`make_schedule` parses the command-line form of each.
"""

from __future__ import annotations

import math

import numpy as np

from .. import core as _core

__all__ = [
    "SGD",
    "Schedule",
    "Constant",
    "StepDecay",
    "InverseTime",
    "HalveOnRise",
    "Anneal",
    "EpochInverse",
    "make_schedule",
    "as_schedule",
]


def _positive(name, v, allow_zero=False):
    v = float(v)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {v}")
    return v


def _factor(v):
    """A multiplier in (0, 1) (the adaptive schedules' ``factor``)."""
    f = float(v)
    if not 0.0 < f < 1.0:
        raise ValueError(f"factor must be in (0, 1), got {v}")
    return f


class SGD:
    """Minibatch SGD with optional classical or Nesterov momentum.

    Parameters
    ----------
    lr : float
        Learning rate (the trainer overwrites ``.lr`` from its schedule).
    momentum : float in [0, 1)
        μ; 0 is the paper's plain SGD.
    nesterov : bool
        Nesterov momentum instead of classical (needs ``momentum > 0``).
    """

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False):
        self.lr = _positive("lr", lr, allow_zero=True)
        m = float(momentum)
        if not 0.0 <= m < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and m == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.momentum = m
        self.nesterov = bool(nesterov)
        self.velocity = {}
        self.steps = 0

    def step(self, params, grads, lr=None, *, num_threads=None):
        """Apply one update in place.

        Parameters
        ----------
        params : dict name -> ndarray
            Parameters, updated in place.
        grads : dict name -> ndarray
            Gradients of the same shapes (every key of params must be present).
        lr : float, optional
            Learning rate for this step (default ``self.lr``).
        num_threads : int, optional
            Threads of the plain step's kernel (:func:`rnnfast.core.sgd_step`; default
            :func:`rnnfast.get_num_threads`).
        """
        lr = self.lr if lr is None else float(lr)
        for name, p in params.items():
            if name not in grads:
                raise KeyError(f"no gradient for parameter {name!r}")
            g = grads[name]
            if g.shape != p.shape:
                raise ValueError(f"gradient of {name!r} has shape {g.shape}, expected {p.shape}")
        if self.momentum == 0.0:  # p -= lr·g, one kernel pass (NumPy's rounding)
            _core.sgd_step(list(params.values()), [grads[n] for n in params], lr,
                           num_threads=num_threads)
            self.steps += 1
            return
        for name, p in params.items():
            g = grads[name]
            lr_t = p.dtype.type(lr)
            mu = p.dtype.type(self.momentum)
            v = self.velocity.get(name)
            if v is None:
                v = self.velocity[name] = np.zeros_like(p)
            v *= mu
            v -= lr_t * g
            if self.nesterov:
                p += mu * v - lr_t * g
            else:
                p += v
        self.steps += 1

    def state_dict(self):
        """Serializable state: hyper-parameters, step count and velocity arrays."""
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "steps": self.steps,
            "velocity": {k: v.copy() for k, v in self.velocity.items()},
        }

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output (hyper-parameters must match)."""
        if float(state["momentum"]) != self.momentum or bool(state["nesterov"]) != self.nesterov:
            raise ValueError(
                f"optimizer state is for momentum={state['momentum']}, nesterov={state['nesterov']}; "
                f"this optimizer has momentum={self.momentum}, nesterov={self.nesterov}"
            )
        self.lr = float(state["lr"])
        self.steps = int(state["steps"])
        self.velocity = {k: np.array(v, copy=True) for k, v in state["velocity"].items()}


class Schedule:
    """Base class: ``schedule(t)`` is the value at update t (0-based)."""

    def __call__(self, t):
        raise NotImplementedError

    def observe(self, metric):
        """React to a validation metric (lower is better); default: nothing."""

    def set_epoch(self, epoch):
        """Called by the engine when epoch ``epoch`` (1-based) starts; default: nothing."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class Constant(Schedule):
    """A constant value."""

    def __init__(self, value):
        self.value = _positive("value", value, allow_zero=True)

    def __call__(self, t):
        return self.value

    def __repr__(self):
        return f"Constant({self.value})"


class StepDecay(Schedule):
    """``value · gamma^⌊t / step⌋``."""

    def __init__(self, value, step, gamma=0.5):
        self.value = _positive("value", value, allow_zero=True)
        if int(step) < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        self.step = int(step)
        self.gamma = _positive("gamma", gamma)

    def __call__(self, t):
        return self.value * self.gamma ** (int(t) // self.step)

    def __repr__(self):
        return f"StepDecay({self.value}, step={self.step}, gamma={self.gamma})"


class InverseTime(Schedule):
    """``value · t0 / (t0 + t)``: 1/t decay with time constant t0."""

    def __init__(self, value, t0=1.0):
        self.value = _positive("value", value, allow_zero=True)
        self.t0 = _positive("t0", t0)

    def __call__(self, t):
        return self.value * self.t0 / (self.t0 + float(t))

    def __repr__(self):
        return f"InverseTime({self.value}, t0={self.t0})"


class HalveOnRise(Schedule):
    """Multiply by ``factor`` whenever the observed validation error rises.

    Parameters
    ----------
    value : float
        Initial value.
    factor : float in (0, 1)
        Multiplier applied on a rise (½ halves).
    min_value : float
        Floor.
    """

    def __init__(self, value, factor=0.5, min_value=0.0):
        self.value = _positive("value", value, allow_zero=True)
        self.factor = _factor(factor)
        self.min_value = _positive("min_value", min_value, allow_zero=True)
        self.last = None
        self.current = self.value

    def __call__(self, t):
        return self.current

    def observe(self, metric):
        metric = float(metric)
        if self.last is not None and metric > self.last:
            self.current = max(self.current * self.factor, self.min_value)
        self.last = metric

    def state_dict(self):
        return {"last": self.last, "current": self.current}

    def load_state_dict(self, state):
        self.last = None if state["last"] is None else float(state["last"])
        self.current = float(state["current"])

    def __repr__(self):
        return f"HalveOnRise({self.value}, factor={self.factor})"


class Anneal(Schedule):
    """Mikolov's RNNLM learning-rate rule: constant until an epoch improves the observed
    validation error by less than a relative ``min_improvement``, then multiplied by
    ``factor`` after every observation; ``finished`` once an epoch improves it by less than
    that again while annealing (the toolkit then stops training).

    Parameters
    ----------
    value : float
        Initial value.
    factor : float in (0, 1)
        Multiplier per observation once annealing (½ halves).
    min_improvement : float in [0, 1)
        Relative improvement below which annealing starts (and later ends): metric m after
        l counts as small when ``m · (1 + min_improvement) > l`` (the toolkit's 1.003 test).
    """

    def __init__(self, value, factor=0.5, min_improvement=0.003):
        self.value = _positive("value", value, allow_zero=True)
        self.factor = _factor(factor)
        mi = float(min_improvement)
        if not 0.0 <= mi < 1.0:
            raise ValueError(f"min_improvement must be in [0, 1), got {min_improvement}")
        self.min_improvement = mi
        self.last = None
        self.current = self.value
        self.annealing = False
        self.finished = False

    def __call__(self, t):
        return self.current

    def observe(self, metric):
        metric = float(metric)
        if self.last is not None:
            # not (m·(1 + mi) <= l): a small improvement, a rise, or NaN
            small = not (metric * (1.0 + self.min_improvement) <= self.last)
            if small and self.annealing:
                self.finished = True
            self.annealing = self.annealing or small
        if self.annealing:
            self.current *= self.factor
        self.last = metric

    def state_dict(self):
        return {"last": self.last, "current": self.current, "annealing": self.annealing,
                "finished": self.finished}

    def load_state_dict(self, state):
        self.last = None if state["last"] is None else float(state["last"])
        self.current = float(state["current"])
        self.annealing = bool(state["annealing"])
        self.finished = bool(state["finished"])

    def __repr__(self):
        return (f"Anneal({self.value}, factor={self.factor}, "
                f"min_improvement={self.min_improvement})")


class EpochInverse(Schedule):
    """Ω weight decaying per epoch: ``α_e = value / (2 e)`` in epoch ``e = 1, 2, ...``.

    Our reading of the paper's "1/(2t) style" schedule for the natural tasks (t the
    epoch). The engine calls :meth:`set_epoch` at the start of every epoch; the update
    index passed to ``__call__`` is ignored.

    Parameters
    ----------
    value : float
        α₀ (≥ 0).
    """

    def __init__(self, value):
        self.value = float(value)
        if not (math.isfinite(self.value) and self.value >= 0):
            raise ValueError(f"value: expected a number >= 0, got {value!r}")
        self.epoch = 1

    def set_epoch(self, epoch):
        """Set the 1-based epoch whose weight ``__call__`` returns."""
        if int(epoch) < 1:
            raise ValueError(f"epoch: expected >= 1, got {epoch!r}")
        self.epoch = int(epoch)

    def __call__(self, t):
        return self.value / (2.0 * self.epoch)

    def state_dict(self):
        return {"epoch": self.epoch}

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])

    def __repr__(self):
        return f"EpochInverse({self.value})"


def make_schedule(spec, value):
    """Build a schedule from its command-line form.

    Parameters
    ----------
    spec : str
        ``"constant"``, ``"step:STEP[:GAMMA]"``, ``"inverse[:T0]"``, ``"halve[:FACTOR]"``
        or ``"anneal[:FACTOR[:MIN_IMPROVEMENT]]"``.
    value : float
        Initial value.

    Returns
    -------
    Schedule
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"schedule must be a non-empty string, got {spec!r}")
    kind, *args = spec.split(":")
    try:
        nums = [float(a) for a in args]
    except ValueError:
        raise ValueError(f"schedule {spec!r}: arguments after ':' must be numbers") from None
    if kind == "constant" and not nums:
        return Constant(value)
    if kind == "step" and 1 <= len(nums) <= 2:
        if nums[0] != int(nums[0]):
            raise ValueError(f"schedule {spec!r}: STEP must be an integer")
        return StepDecay(value, int(nums[0]), *nums[1:])
    if kind == "inverse" and len(nums) <= 1:
        return InverseTime(value, *nums)
    if kind == "halve" and len(nums) <= 1:
        return HalveOnRise(value, *nums)
    if kind == "anneal" and len(nums) <= 2:
        return Anneal(value, *nums)
    raise ValueError(
        f"schedule {spec!r} is unknown; expected 'constant', 'step:STEP[:GAMMA]', "
        "'inverse[:T0]', 'halve[:FACTOR]' or 'anneal[:FACTOR[:MIN_IMPROVEMENT]]'"
    )


def as_schedule(x):
    """A Schedule from a Schedule, a number (constant) or None (None)."""
    if x is None or isinstance(x, Schedule):
        return x
    if isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool):
        return Constant(x)
    if callable(x):
        return x
    raise TypeError(f"expected a Schedule, a number or None, got {type(x).__name__}")
