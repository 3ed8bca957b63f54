"""Gradient clipping: the paper's Algorithm 1, element-wise clipping, an
automatic threshold, and a policy for non-finite or absurd gradient norms.

Algorithm 1 (norm clipping): with ``g`` ALL parameter gradients taken together,
``if ‖g‖ ≥ threshold: g ← threshold/‖g‖ · g``. The norm is one L2 norm over every
gradient (the square root of the sum of every tensor's sum of squares),
accumulated in float64 so float32 gradients cannot overflow it. ``strict=True``
uses the authors' ``>`` instead of the paper's ``≥`` (they differ only when the
norm equals the threshold exactly).

Non-finite / absurd norms. The authors' code treats a norm that is NaN, Inf or
larger than 1e10 as untrustworthy. :class:`GradientClipper` checks that first and
then applies its ``nonfinite`` policy:

``"raise"``   raise :class:`NonFiniteGradientError` naming the offending parameter
              (the first with a non-finite gradient, else the one with the
              largest norm);
``"skip"``    zero every gradient and report ``action="skipped"``; the caller must
              not apply the update (the trainer skips the optimiser step, so
              momentum does not move either);
``"shrink"``  the authors' rule: replace the step by a weight shrink,
              ``g_W_rec = 0.02 · W_rec`` and every other gradient 0 (an SGD step
              then gives ``W_rec ← (1 − 0.02·lr) W_rec``); ``action="shrunk"``.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Optional

import numpy as np

from .. import core as _core
from .model import RECURRENT

__all__ = [
    "NONFINITE_POLICIES",
    "NonFiniteGradientError",
    "ClipResult",
    "sum_squares",
    "global_norm",
    "clip_by_global_norm",
    "clip_elementwise",
    "RunningAverage",
    "AutoThreshold",
    "GradientClipper",
]

NONFINITE_POLICIES = ("raise", "skip", "shrink")
CLIP_MODES = ("norm", "elementwise", "none")


class NonFiniteGradientError(FloatingPointError):
    """The gradient norm was NaN, Inf or absurdly large.

    Attributes
    ----------
    param : str
        Name of the offending parameter.
    norm : float
        The total gradient norm.
    """

    def __init__(self, message, param, norm):
        super().__init__(message)
        self.param = param
        self.norm = norm


class ClipResult(NamedTuple):
    """Outcome of one clipping call.

    Attributes
    ----------
    norm : float
        Total L2 norm of all gradients BEFORE clipping (float64 accumulation).
    clipped : bool
        Whether any gradient was changed by clipping.
    scale : float
        Factor applied by norm clipping (1.0 when not clipped).
    threshold : float or None
        Threshold in force (None when clipping is off or still warming up).
    action : str
        "ok", "clipped", "skipped" or "shrunk".
    """

    norm: float
    clipped: bool
    scale: float = 1.0
    threshold: Optional[float] = None
    action: str = "ok"


def _items(grads):
    if type(grads) is dict or isinstance(grads, Mapping):  # dict first: the ABC check is slow
        return list(grads.items())
    return [(str(i), g) for i, g in enumerate(grads)]


def sum_squares(g):
    """Sum of squares of an array, accumulated in float64 (:func:`rnnfast.core.squared_norms`)."""
    return _core.squared_norms([g])[0]


def global_norm(grads):
    """One L2 norm over all gradients.

    Parameters
    ----------
    grads : mapping name -> ndarray, or sequence of ndarrays
        Arrays of any shape.

    Returns
    -------
    float
        ``sqrt(Σ_tensors Σ g²)`` accumulated in float64 (NaN/Inf propagate).
    """
    return math.sqrt(sum(_core.squared_norms([g for _, g in _items(grads)])))


def clip_by_global_norm(grads, threshold, *, strict=False, norm=None):
    """Algorithm 1: rescale all gradients IN PLACE when their norm reaches threshold.

    Parameters
    ----------
    grads : mapping name -> ndarray, or sequence of ndarrays
        Gradients, modified in place.
    threshold : float
        Positive threshold.
    strict : bool
        False: clip when ``norm >= threshold`` (paper). True: ``norm > threshold``
        (authors' code).
    norm : float, optional
        Pre-computed :func:`global_norm` of ``grads``.

    Returns
    -------
    ClipResult
        With the pre-clip norm. A NaN/Inf norm is returned without touching the
        gradients (use :class:`GradientClipper` for a policy).
    """
    threshold = float(threshold)
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    if norm is None:
        norm = global_norm(grads)
    hit = norm > threshold if strict else norm >= threshold
    if not math.isfinite(norm) or not hit:
        return ClipResult(norm, False, 1.0, threshold, "ok")
    scale = threshold / norm
    for _, g in _items(grads):
        g *= g.dtype.type(scale)
    return ClipResult(norm, True, scale, threshold, "clipped")


def clip_elementwise(grads, threshold, *, norm=None):
    """Element-wise clipping (Mikolov): clamp every entry to [-threshold, threshold], in place.

    Parameters
    ----------
    grads : mapping name -> ndarray, or sequence of ndarrays
    threshold : float
    norm : float, optional
        Pre-computed pre-clip norm.

    Returns
    -------
    ClipResult
        Pre-clip total norm, and ``clipped`` = whether any entry was clamped.
    """
    threshold = float(threshold)
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    if norm is None:
        norm = global_norm(grads)
    clipped = False
    for _, g in _items(grads):
        if np.any(np.abs(g) > threshold):
            clipped = True
            np.clip(g, -threshold, threshold, out=g)
    return ClipResult(norm, clipped, 1.0, threshold, "clipped" if clipped else "ok")


class RunningAverage:
    """Robust running average of gradient norms.

    The first ``warmup`` finite values are averaged arithmetically; after that the
    average is an exponential moving average with factor ``decay`` (or frozen
    when ``decay`` is None), in which a value above ``outlier`` times the current
    average enters as ``outlier × average``, so one explosion cannot drag the
    average far. Non-finite values are ignored.

    Parameters
    ----------
    warmup : int
    decay : float in [0, 1) or None
    outlier : float > 1
    """

    def __init__(self, warmup=100, decay=0.99, outlier=10.0):
        if int(warmup) < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        if decay is not None and not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1) or None, got {decay}")
        if not float(outlier) > 1.0:
            raise ValueError(f"outlier must be > 1, got {outlier}")
        self.warmup = int(warmup)
        self.decay = None if decay is None else float(decay)
        self.outlier = float(outlier)
        self.count = 0
        self.value = 0.0

    @property
    def ready(self):
        """True once ``warmup`` finite values have been seen."""
        return self.count >= self.warmup

    def update(self, x):
        """Fold in one value; returns the new average."""
        x = float(x)
        if not math.isfinite(x):
            return self.value
        if self.count < self.warmup:
            self.count += 1
            self.value += (x - self.value) / self.count
        else:
            self.count += 1
            if self.decay is not None:
                x = min(x, self.outlier * self.value)
                self.value = self.decay * self.value + (1.0 - self.decay) * x
        return self.value

    def state_dict(self):
        return {"count": self.count, "value": self.value}

    def load_state_dict(self, state):
        self.count = int(state["count"])
        self.value = float(state["value"])


class AutoThreshold:
    """Clipping threshold = ``factor`` × running average of the pre-clip norm.

    The paper's advice: look at the average norm over a sufficiently large number
    of updates; half to ten times it still converges. During the first ``warmup``
    updates no threshold is in force (``threshold`` is None) while the average
    builds up; afterwards the threshold follows the average (see
    :class:`RunningAverage`; ``decay=None`` freezes it at the warm-up mean).

    Parameters
    ----------
    factor : float
        Multiple of the running average (paper: 0.5 to 10 work).
    warmup : int
        Number of updates averaged before clipping starts.
    decay : float or None
        EMA factor after warm-up, None to freeze.
    """

    def __init__(self, factor=1.0, warmup=100, decay=0.99):
        if not float(factor) > 0:
            raise ValueError(f"factor must be positive, got {factor}")
        self.factor = float(factor)
        self.avg = RunningAverage(warmup, decay)

    def __repr__(self):
        return (f"AutoThreshold(factor={self.factor}, warmup={self.avg.warmup}, "
                f"decay={self.avg.decay})")

    @property
    def threshold(self):
        """Threshold now in force, or None during warm-up."""
        if not self.avg.ready or not self.avg.value > 0:
            return None
        return self.factor * self.avg.value

    def update(self, norm):
        """Record a pre-clip norm (after the clipping decision of this update)."""
        self.avg.update(norm)

    def state_dict(self):
        return {"factor": self.factor, **self.avg.state_dict()}

    def load_state_dict(self, state):
        self.avg.load_state_dict(state)


class GradientClipper:
    """Clipping plus non-finite policy, as used by the trainer.

    Parameters
    ----------
    threshold : float, "auto", AutoThreshold or None
        Clipping threshold; "auto" builds ``AutoThreshold()``; None disables
        clipping (the non-finite policy still applies).
    mode : {"norm", "elementwise"}
        Algorithm 1 or element-wise clipping.
    strict : bool
        Use ``>`` (authors) instead of ``≥`` (paper) for norm clipping.
    nonfinite : {"raise", "skip", "shrink"}
        What to do when the norm is NaN, Inf or above ``absurd``.
    absurd : float or None
        Norms above it count as non-finite (authors: 1e10); None: only NaN/Inf.
    shrink : float
        The shrink step's factor (authors: 0.02).
    recurrent : tuple of str
        The names of the recurrent weight(s) the shrink step acts on.
    """

    def __init__(self, threshold=1.0, *, mode="norm", strict=False, nonfinite="shrink",
                 absurd=1e10, shrink=0.02, recurrent=(RECURRENT,)):
        if mode not in ("norm", "elementwise"):
            raise ValueError(f"mode={mode!r} is unknown; expected 'norm' or 'elementwise'")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite={nonfinite!r} is unknown; expected one of {NONFINITE_POLICIES}")
        if isinstance(threshold, str):
            if threshold != "auto":
                raise ValueError(f"threshold must be a number, 'auto' or None, got {threshold!r}")
            threshold = AutoThreshold()
        elif threshold is not None and not isinstance(threshold, AutoThreshold):
            threshold = float(threshold)
            if not threshold > 0:
                raise ValueError(f"threshold must be positive, got {threshold}")
        if absurd is not None and not float(absurd) > 0:
            raise ValueError(f"absurd must be positive or None, got {absurd}")
        self.threshold = threshold
        self.mode = mode
        self.strict = bool(strict)
        self.nonfinite = nonfinite
        self.absurd = None if absurd is None else float(absurd)
        self.shrink = float(shrink)
        self.recurrent = tuple(recurrent)

    @property
    def current_threshold(self):
        """The threshold in force now (None if off or warming up)."""
        if isinstance(self.threshold, AutoThreshold):
            return self.threshold.threshold
        return self.threshold

    def is_bad(self, norm):
        """True when a norm is NaN, Inf or above ``absurd``."""
        return not math.isfinite(norm) or (self.absurd is not None and norm > self.absurd)

    def __call__(self, grads, params=None):
        """Clip ``grads`` in place.

        Parameters
        ----------
        grads : mapping name -> ndarray
            All gradients (with α·∂Ω/∂W_rec already added to W_rec's).
        params : mapping name -> ndarray, optional
            Current parameters; needed by the ``shrink`` policy (W_rec).

        Returns
        -------
        ClipResult
        """
        items = _items(grads)
        sq = list(zip([name for name, _ in items], _core.squared_norms([g for _, g in items])))
        norm = math.sqrt(sum(s for _, s in sq))
        thr = self.current_threshold
        if self.is_bad(norm):
            result = self._bad(norm, sq, grads, params, thr)
        elif thr is None:
            result = ClipResult(norm, False, 1.0, None, "ok")
        elif self.mode == "norm":
            result = clip_by_global_norm(grads, thr, strict=self.strict, norm=norm)
        else:
            result = clip_elementwise(grads, thr, norm=norm)
        if isinstance(self.threshold, AutoThreshold):
            self.threshold.update(norm)
        return result

    def _bad(self, norm, sq, grads, params, thr):
        bad = [name for name, s in sq if not math.isfinite(s)]
        culprit = bad[0] if bad else max(sq, key=lambda kv: kv[1])[0]
        if self.nonfinite == "raise":
            what = "non-finite values" if bad else "the largest norm"
            others = f" (also non-finite: {', '.join(bad[1:])})" if len(bad) > 1 else ""
            raise NonFiniteGradientError(
                f"gradient norm is {norm!r} (NaN, Inf or > {self.absurd}): "
                f"parameter {culprit!r} has {what}{others}",
                culprit,
                norm,
            )
        for _, g in _items(grads):
            g[...] = 0
        if self.nonfinite == "skip":
            return ClipResult(norm, False, 0.0, thr, "skipped")
        names = [k for k in self.recurrent if k in grads and params is not None and k in params]
        if not names:
            raise NonFiniteGradientError(
                f"gradient norm is {norm!r} (NaN, Inf or > {self.absurd}) and the 'shrink' "
                f"policy found no recurrent weight {list(self.recurrent)} in the parameters "
                "(pass params, or choose nonfinite='skip' or 'raise')", culprit, norm)
        for k in names:
            gw = grads[k]
            np.multiply(params[k], gw.dtype.type(self.shrink), out=gw)
        return ClipResult(norm, False, 0.0, thr, "shrunk")

    def state_dict(self):
        if isinstance(self.threshold, AutoThreshold):
            return {"auto": self.threshold.state_dict()}
        return {}

    def load_state_dict(self, state):
        if isinstance(self.threshold, AutoThreshold):
            if "auto" not in state:
                raise ValueError("checkpoint has no auto-threshold state but this clipper uses one")
            self.threshold.load_state_dict(state["auto"])
