"""The pathological synthetic tasks of Pascanu, Mikolov & Bengio (2013).

Six long-range problems (Hochreiter & Schmidhuber 1997; Martens & Sutskever
2011) used in section 4.1 of the paper: temporal order, 3-bit temporal order,
addition, multiplication, random permutation and noiseless memorization (the
5-bit and the 20-bit variants).

Every task follows the same protocol (see ``Task``):

* ``task.sample_length(rng)`` draws one nominal length per minibatch, uniformly
  in ``[min_length, max_length)``;
* ``task.generate(rng, batch_size, length, dtype)`` returns a :class:`Batch`
  ``(u, targets, mask)`` with time-major inputs ``u`` of shape ``(T, B, n_in)``;
* ``task.errors(y, batch)`` returns the per-sequence error flags of the paper's
  success criterion, given the readout outputs ``y`` at the read step(s);
* ``task.oracle(u)`` returns perfect readout outputs computed from the inputs
  alone (a reference solver, useful to test training/evaluation pipelines).

Conventions.  By default every generator follows the authors' published code
(repository ``pascanur/trainingRNNs``); ``convention="martens"`` selects the
conventions of Martens & Sutskever (2011) where they differ (marker windows,
start/trigger symbols, the addition target ``a + b`` instead of ``(a + b)/2``,
the permutation cost at every step, the position of the memorization trigger).
Each class docstring states exactly what is generated.  Position windows are
computed as the authors do, with ``int(L * fraction)`` (truncation).

Success (paper): fewer than 1 % misclassified sequences among 10,000 fresh ones,
see :func:`evaluate` and :func:`is_solved`.

Everything is vectorised NumPy (no Python loop over the batch or over time) and
seeded only through the ``numpy.random.Generator`` passed in.
"""
from __future__ import annotations

import difflib
import numbers
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from .nn.batch import Batch

__all__ = [
    "Batch",
    "Task",
    "TemporalOrder",
    "TemporalOrder3Bit",
    "Addition",
    "Multiplication",
    "Permutation",
    "Memorization",
    "TASKS",
    "CONVENTIONS",
    "SUCCESS_THRESHOLD",
    "EVAL_SEQUENCES",
    "get_task",
    "evaluate",
    "error_rate",
    "is_solved",
]

#: Conventions every task accepts.
CONVENTIONS: Tuple[str, ...] = ("authors", "martens")
#: Paper: a run succeeds with fewer than 1 % errors ...
SUCCESS_THRESHOLD: float = 0.01
#: ... on 10,000 fresh sequences.
EVAL_SEQUENCES: int = 10_000
#: Squared error above which an addition/multiplication sequence is an error.
REGRESSION_THRESHOLD: float = 0.04
#: Default budget for one evaluation chunk's input array, in bytes.
DEFAULT_CHUNK_BYTES: int = 64 * 2**20

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- #
# argument checks
# --------------------------------------------------------------------------- #
def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            "rng: expected a numpy.random.Generator (e.g. numpy.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    return rng


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} ({value!r})")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def _check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from exc
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def _check_convention(convention) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")
    return convention


def _one_hot(sym: np.ndarray, n: int, dtype: np.dtype) -> np.ndarray:
    """One-hot encode integer symbols ``sym`` (any shape) into ``sym.shape + (n,)``."""
    flat = np.zeros(sym.size * n, dtype=dtype)
    flat[np.arange(0, sym.size * n, n) + sym.ravel()] = 1
    return flat.reshape(sym.shape + (n,))


def _as_output(y, name: str, shape: Tuple[int, ...]) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != shape:
        raise ValueError(f"{name}: expected readout outputs of shape {shape}, got {y.shape}")
    if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
        raise TypeError(f"{name}: expected a real-valued array, got dtype {y.dtype}")
    return y


def _wrong_class(y: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``argmax(y, -1) != targets``; a row with a non-finite score is wrong."""
    wrong = np.argmax(y, axis=-1) != targets
    if np.issubdtype(y.dtype, np.floating):
        wrong |= ~np.isfinite(y).all(axis=-1)
    return wrong


# --------------------------------------------------------------------------- #
# base class
# --------------------------------------------------------------------------- #
class Task:
    """Base class of the synthetic tasks (the protocol of CONTRACT.md).

    Parameters
    ----------
    min_length, max_length : int
        Training length range ``[min_length, max_length)``; one nominal length
        is drawn per minibatch by :meth:`sample_length` (the authors' code).
        ``max_length=None`` or ``max_length == min_length`` fixes the length.
        The nominal length is the sequence length ``T`` except where the class
        docstring says otherwise (addition/multiplication under the authors'
        convention, memorization).
    convention : {"authors", "martens"}
        Which published conventions to follow (see the class docstring).

    Attributes
    ----------
    name : str
        Registry name (``get_task(task.name, **task.config())`` rebuilds it).
    n_in, n_out : int
        Input and readout sizes.
    loss : {"softmax_ce", "linear_mse"}
        Readout nonlinearity + loss the trainer must use.
    at : {"last", "all"}
        Where the cost is read: the last step only, or every step (``mask``).
    minimal_length : int
        Smallest nominal length the task is defined for.
    """

    name: str = "task"
    loss: str = "softmax_ce"
    at: str = "last"
    minimal_length: int = 1
    n_in: int = 0
    n_out: int = 0

    def __init__(self, min_length: int = 50, max_length: Optional[int] = 200, *,
                 convention: str = "authors") -> None:
        self.convention = _check_convention(convention)
        min_length = _check_int(min_length, "min_length", self.minimal_length)
        if max_length is None:
            max_length = min_length
        max_length = _check_int(max_length, "max_length", self.minimal_length)
        if max_length < min_length:
            raise ValueError(
                f"max_length: expected >= min_length ({min_length}), got {max_length}")
        self.min_length = min_length
        self.max_length = max_length

    # -- protocol ------------------------------------------------------------
    def sample_length(self, rng: np.random.Generator) -> int:
        """Draw one nominal length uniformly in ``[min_length, max_length)``.

        Returns ``min_length`` when ``max_length <= min_length`` (fixed length).
        """
        rng = _check_rng(rng)
        if self.max_length > self.min_length:
            return int(rng.integers(self.min_length, self.max_length))
        return self.min_length

    def generate(self, rng: np.random.Generator, batch_size: int, length: int,
                 dtype=np.float64) -> Batch:
        """Generate a minibatch of ``batch_size`` sequences of nominal ``length``.

        Parameters
        ----------
        rng : numpy.random.Generator
            The only source of randomness.
        batch_size : int
            Number of sequences ``B`` (>= 1).
        length : int
            Nominal length (>= ``minimal_length``); see the class docstring for
            how it maps to the number of steps ``T``.
        dtype : float32 or float64
            Dtype of ``u`` (and of float targets).

        Returns
        -------
        Batch
            ``u`` ``(T, B, n_in)``, ``targets``, ``mask`` (see :class:`Batch`).
        """
        rng = _check_rng(rng)
        batch_size = _check_int(batch_size, "batch_size", 1)
        length = self._check_length(length)
        dtype = _check_dtype(dtype)
        return self._generate(rng, batch_size, length, dtype)

    def errors(self, y, batch: Batch) -> np.ndarray:
        """Per-sequence errors under the paper's criterion.

        Parameters
        ----------
        y : array_like
            Readout outputs at the read step(s): ``(B, n_out)`` when
            ``at == "last"``, ``(T, B, n_out)`` when ``at == "all"`` (class
            scores or probabilities for ``softmax_ce``, values for ``linear_mse``).
        batch : Batch
            The batch ``y`` was computed from.

        Returns
        -------
        np.ndarray
            ``(B,)`` bool, True where the sequence counts as an error.  Outputs
            that are NaN/inf always count as errors.
        """
        u = self._check_batch(batch)
        T, B = u.shape[0], u.shape[1]
        shape = (B, self.n_out) if self.at == "last" else (T, B, self.n_out)
        y = _as_output(y, "y", shape)
        return self._errors(y, batch)

    def oracle(self, u) -> np.ndarray:
        """Perfect readout outputs computed from the inputs alone.

        A reference solver: ``task.errors(task.oracle(batch.u), batch)`` is all
        False.  Class outputs are one-hot scores, regression outputs the exact
        target value.

        Parameters
        ----------
        u : array_like
            ``(T, B, n_in)`` inputs as produced by :meth:`generate`.

        Returns
        -------
        np.ndarray
            ``(B, n_out)`` for ``at == "last"``, ``(T, B, n_out)`` for ``"all"``.
        """
        u = np.asarray(u)
        if u.ndim != 3 or u.shape[2] != self.n_in:
            raise ValueError(f"u: expected shape (T, B, {self.n_in}), got {u.shape}")
        return self._oracle(u)

    # -- helpers -------------------------------------------------------------
    def max_steps(self, length: int) -> int:
        """Largest number of steps ``T`` a batch of nominal ``length`` can have."""
        return self._check_length(length)

    def config(self) -> Dict[str, object]:
        """Keyword arguments such that ``get_task(self.name, **config())`` rebuilds the task."""
        return {"min_length": self.min_length, "max_length": self.max_length,
                "convention": self.convention}

    def describe(self) -> str:
        """One-line human-readable summary."""
        span = (f"length {self.min_length}" if self.max_length <= self.min_length
                else f"lengths [{self.min_length}, {self.max_length})")
        return (f"{self.name} ({self.convention} convention): {self.n_in} inputs, "
                f"{self.n_out} outputs, {self.loss} read at {self.at} step(s), {span}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def _check_length(self, length) -> int:
        return _check_int(length, "length", self.minimal_length)

    def _check_batch(self, batch) -> np.ndarray:
        if not isinstance(batch, tuple) or len(batch) not in (3, len(Batch._fields)):
            raise TypeError("batch: expected a Batch (u, targets, mask) from generate()")
        u = np.asarray(batch[0])
        if u.ndim != 3 or u.shape[2] != self.n_in:
            raise ValueError(f"batch.u: expected shape (T, B, {self.n_in}), got {u.shape}")
        return u

    # -- subclass hooks ------------------------------------------------------
    def _generate(self, rng, batch_size, length, dtype) -> Batch:  # pragma: no cover
        raise NotImplementedError

    def _errors(self, y, batch) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _oracle(self, u) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------- #
# temporal order
# --------------------------------------------------------------------------- #
class TemporalOrder(Task):
    """Temporal order problem (2 relevant symbols, 4 classes).

    Symbols are one-hot; channels 0 and 1 are the relevant symbols A and B,
    channels 2-5 the distractors c, d, e, f.  Every step shows a random
    distractor except ``n_bits`` marker steps, each showing A (bit 0) or B
    (bit 1) at a position drawn uniformly in its window.  The class, read by a
    softmax at the last step, is ``v0 + 2*v1`` (``+ 4*v2`` for 3 bits) where
    ``v_k`` is the bit shown at the k-th marker in time order.  ``T = length``.

    ``convention="authors"`` (code of pascanur/trainingRNNs, the default):
        6 input channels, no start/trigger symbol; with ``w = int(0.1*L)``
        the marker windows are ``[int(0.1*L), int(0.1*L) + w)`` and
        ``[int(0.5*L), int(0.5*L) + w)`` (about ``[10%, 20%)`` and ``[50%, 60%)``).
    ``convention="martens"`` (Martens & Sutskever 2011, after Hochreiter &
    Schmidhuber's start/trigger symbols):
        8 input channels: channel 6 is a start symbol shown at step 0, channel 7
        a trigger symbol shown at the last step (the read step).  Windows
        (inclusive) ``[max(1, int(0.01*L)), int(0.1*L)]`` and
        ``[int(0.4*L), int(0.5*L)]``.

    Both: class encoding ``v0 + 2*v1``; error = wrong argmax at the last step;
    ``minimal_length`` 10 (so that every window is non-empty).
    """

    name = "temporal_order"
    loss = "softmax_ce"
    at = "last"
    minimal_length = 10
    n_bits = 2
    # authors: window starts (fractions of L); every window is int(0.1*L) wide
    _authors_starts: Tuple[float, ...] = (0.1, 0.5)
    # martens: inclusive windows (fractions of L)
    _martens_windows: Tuple[Tuple[float, float], ...] = ((0.01, 0.1), (0.4, 0.5))

    def __init__(self, min_length: int = 50, max_length: Optional[int] = 200, *,
                 convention: str = "authors") -> None:
        super().__init__(min_length, max_length, convention=convention)
        self.n_in = 6 if self.convention == "authors" else 8
        self.n_out = 2 ** self.n_bits

    def windows(self, length: int) -> np.ndarray:
        """Half-open marker windows ``[lo, hi)`` for a sequence of ``length`` steps.

        Returns
        -------
        np.ndarray
            ``(n_bits, 2)`` int64, row k = ``(lo_k, hi_k)``.
        """
        L = self._check_length(length)
        if self.convention == "authors":
            w = int(L * 0.1)
            rows = [(int(L * f), int(L * f) + w) for f in self._authors_starts]
        else:
            rows = [(max(1, int(L * a)), int(L * b) + 1) for a, b in self._martens_windows]
        return np.asarray(rows, dtype=np.int64)

    def _generate(self, rng, B, L, dtype):
        win = self.windows(L)
        sym = rng.integers(2, 6, size=(L, B))
        bits = rng.integers(0, 2, size=(self.n_bits, B))
        pos = rng.integers(win[:, :1], win[:, 1:], size=(self.n_bits, B))
        sym[pos, np.arange(B)] = bits
        if self.convention == "martens":
            sym[0] = 6
            sym[-1] = 7
        targets = (bits << np.arange(self.n_bits)[:, None]).sum(axis=0).astype(np.int64)
        return Batch(_one_hot(sym, self.n_in, dtype), targets, None)

    def _errors(self, y, batch):
        return _wrong_class(y, np.asarray(batch.targets))

    def _oracle(self, u):
        T, B, _ = u.shape
        sym = np.argmax(u, axis=2)
        is_marker = sym < 2
        counts = is_marker.sum(axis=0)
        if np.any(counts != self.n_bits):
            raise ValueError(f"u: expected exactly {self.n_bits} A/B markers per sequence")
        b_idx, t_idx = np.nonzero(is_marker.T)  # sorted by sequence, then time
        bits = sym[t_idx, b_idx].reshape(B, self.n_bits)
        cls = (bits << np.arange(self.n_bits)).sum(axis=1)
        return _one_hot(cls, self.n_out, np.dtype(np.float64))


class TemporalOrder3Bit(TemporalOrder):
    """3-bit temporal order problem (3 relevant symbols, 8 classes).

    As :class:`TemporalOrder` with three markers and class ``v0 + 2*v1 + 4*v2``.

    ``convention="authors"``: windows ``[int(f*L), int(f*L) + int(0.1*L))`` for
        ``f = 0.1, 0.3, 0.6`` (about ``[10,20)``, ``[30,40)``, ``[60,70)`` %).
    ``convention="martens"``: start symbol at step 0, trigger at the last step,
        inclusive windows ``[int(0.10*L), int(0.20*L)]``,
        ``[int(0.33*L), int(0.43*L)]``, ``[int(0.66*L), int(0.76*L)]`` -- Hochreiter
        & Schmidhuber's 3-symbol windows (10-20, 33-43, 66-76 of ~100 steps)
        scaled to the length.
    """

    name = "temporal_order_3bit"
    n_bits = 3
    _authors_starts = (0.1, 0.3, 0.6)
    _martens_windows = ((0.1, 0.2), (0.33, 0.43), (0.66, 0.76))


# --------------------------------------------------------------------------- #
# addition / multiplication
# --------------------------------------------------------------------------- #
class _Arithmetic(Task):
    """Shared generator of the addition and multiplication problems."""

    loss = "linear_mse"
    at = "last"
    minimal_length = 10
    n_in = 2
    n_out = 1

    def __init__(self, min_length: int = 50, max_length: Optional[int] = 200, *,
                 convention: str = "authors", threshold: float = REGRESSION_THRESHOLD) -> None:
        super().__init__(min_length, max_length, convention=convention)
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) \
                or not np.isfinite(threshold) or threshold <= 0:
            raise ValueError(f"threshold: expected a finite number > 0, got {threshold!r}")
        self.threshold = float(threshold)

    def config(self):
        cfg = super().config()
        cfg["threshold"] = self.threshold
        return cfg

    def max_steps(self, length):
        L = self._check_length(length)
        if self.convention == "authors":
            return L + int(L * 0.1) - 1
        return L

    def _combine(self, a, b):  # pragma: no cover
        raise NotImplementedError

    def _generate(self, rng, B, L, dtype):
        T = L + int(rng.integers(int(L * 0.1))) if self.convention == "authors" else L
        w0, w1 = int(T * 0.1), int(T * 0.4)
        p0 = rng.integers(0, w0, size=B)
        p1 = rng.integers(w0, w0 + w1, size=B)
        u = np.zeros((T, B, 2), dtype=dtype)
        u[:, :, 1] = rng.random((T, B), dtype=dtype)
        cols = np.arange(B)
        if self.convention == "martens":
            u[0, :, 0] = -1      # start marker (overwritten below when p0 == 0)
            u[T - 4, :, 0] = -1  # "about to answer" marker, 3 steps before the read step
        u[p0, cols, 0] = 1
        u[p1, cols, 0] = 1
        target = self._combine(u[p0, cols, 1], u[p1, cols, 1])
        return Batch(u, target.astype(dtype).reshape(B, 1), None)

    def _errors(self, y, batch):
        t = np.asarray(batch.targets)
        sq = ((y - t) ** 2).sum(axis=1)
        return ~(sq <= self.threshold)  # NaN counts as an error

    def _oracle(self, u):
        marked = u[:, :, 0] == 1
        counts = marked.sum(axis=0)
        if np.any(counts != 2):
            raise ValueError("u: expected exactly 2 marked steps (channel 0 == 1) per sequence")
        vals = u[:, :, 1].astype(np.float64)
        return self._reduce(marked, vals).reshape(-1, 1)

    def _reduce(self, marked, vals):  # pragma: no cover
        raise NotImplementedError


class Addition(_Arithmetic):
    """Addition problem (linear output, squared error at the last step).

    Two input channels: channel 0 holds the markers, channel 1 values drawn
    uniformly in ``[0, 1)``.  Exactly two steps are marked with 1: ``p0`` in
    ``[0, int(0.1*T))`` and ``p1`` in ``[int(0.1*T), int(0.1*T) + int(0.4*T))``
    (about the first 10 % and the following 40 %).  The target, read at the
    last step by a linear output, combines the two marked values ``a, b``.
    A sequence is an error when its squared error exceeds ``threshold``
    (0.04, the paper and the authors' code).

    ``convention="authors"`` (default): ``T = length + r`` with ``r`` drawn once
        per minibatch uniformly in ``[0, int(0.1*length))``; target
        ``(a + b) / 2``; no other markers.
    ``convention="martens"``: ``T = length``; target ``a + b``; as in
        Sutskever's generator code the marker channel is also -1 at step 0
        (start; a value marker at step 0 overwrites it) and at step ``T - 4``
        (3 steps before the read step: "about to answer").

    ``minimal_length`` 10.
    """

    name = "addition"

    def _combine(self, a, b):
        return (a + b) / 2 if self.convention == "authors" else a + b

    def _reduce(self, marked, vals):
        s = np.where(marked, vals, 0.0).sum(axis=0)
        return s / 2 if self.convention == "authors" else s


class Multiplication(_Arithmetic):
    """Multiplication problem: as :class:`Addition` with target ``a * b``.

    Both conventions use the product; they differ as for :class:`Addition`
    (``T`` extension, start / "about to answer" markers under ``martens``).
    """

    name = "multiplication"

    def _combine(self, a, b):
        return a * b

    def _reduce(self, marked, vals):
        return np.where(marked, vals, 1.0).prod(axis=0)


# --------------------------------------------------------------------------- #
# random permutation
# --------------------------------------------------------------------------- #
class Permutation(Task):
    """Random permutation problem (predict the first symbol at the end).

    ``n_symbols`` (100) one-hot channels.  Step 0 shows symbol 0 or 1; steps
    ``1..T-1`` show symbols drawn uniformly from ``2..n_symbols-1``.
    ``T = length``.  The task is to output the first symbol at the last step.
    A sequence is an error when the argmax at the last step is wrong.

    ``convention="authors"`` (default): softmax cost at the last step only
        (``at == "last"``, targets ``(B,)``).
    ``convention="martens"``: softmax cost at every step (``at == "all"``):
        the target at step ``t < T-1`` is the next input symbol, at ``T-1``
        the first symbol (Sutskever's generator); only the last step counts
        for the error.

    ``minimal_length`` 2.
    """

    name = "permutation"
    loss = "softmax_ce"
    minimal_length = 2

    def __init__(self, min_length: int = 50, max_length: Optional[int] = 200, *,
                 convention: str = "authors", n_symbols: int = 100) -> None:
        super().__init__(min_length, max_length, convention=convention)
        self.n_symbols = _check_int(n_symbols, "n_symbols", 3)
        self.n_in = self.n_out = self.n_symbols
        self.at = "last" if self.convention == "authors" else "all"

    def config(self):
        cfg = super().config()
        cfg["n_symbols"] = self.n_symbols
        return cfg

    def _generate(self, rng, B, L, dtype):
        sym = rng.integers(2, self.n_symbols, size=(L, B))
        sym[0] = rng.integers(0, 2, size=B)
        if self.at == "last":
            targets = sym[0].astype(np.int64)
        else:
            targets = np.empty((L, B), dtype=np.int64)
            targets[:-1] = sym[1:]
            targets[-1] = sym[0]
        return Batch(_one_hot(sym, self.n_in, dtype), targets, None)

    def _errors(self, y, batch):
        t = np.asarray(batch.targets)
        if self.at == "last":
            return _wrong_class(y, t)
        return _wrong_class(y[-1], t[-1])

    def _oracle(self, u):
        first = np.argmax(u[0], axis=1)
        onehot = _one_hot(first, self.n_out, np.dtype(np.float64))
        if self.at == "last":
            return onehot
        y = np.zeros(u.shape[:2] + (self.n_out,))
        y[-1] = onehot  # earlier steps are unpredictable and do not count
        return y


# --------------------------------------------------------------------------- #
# noiseless memorization
# --------------------------------------------------------------------------- #
class Memorization(Task):
    """Noiseless memorization problem (softmax at every step).

    A pattern of ``n_pos`` symbols, each drawn uniformly from ``n_values``
    values, is shown first; then ``length`` blank steps; then a "go" marker;
    then the network must reproduce the pattern.  Inputs (``n_values + 2``
    channels): channels ``0..n_values-1`` the pattern symbols,
    channel ``n_values`` the blank, channel ``n_values + 1`` the go marker.
    Outputs (``n_values + 1`` classes): the pattern symbols and the blank
    class ``n_values``.  Targets are the blank class at every step except the
    ``n_pos`` recall steps at the end, where they are the pattern in order.
    A sequence is an error when any counted step's argmax is wrong
    (``score_steps="all"``: every step, as the authors' code and Sutskever's
    default; ``"recall"``: only the recall steps, ``mask`` marks them).

    Variants: the 5-bit problem is ``n_values=2, n_pos=5``; the 20-bit problem
    (Martens & Sutskever; the authors' default) is ``n_values=5, n_pos=10``
    (``5**10`` patterns, more than ``2**20``).

    ``convention="authors"`` (default): ``T = length + 2*n_pos``; the go marker
        is at step ``n_pos + length`` and that step is the first recall step
        (recall steps ``n_pos + length .. T-1``, blank input there).
    ``convention="martens"``: ``T = length + 2*n_pos + 1``; the go marker is at
        step ``n_pos + length``, one step before the recall period
        (recall steps ``T - n_pos .. T-1``), as in Sutskever's generator.

    ``minimal_length`` 1.
    """

    name = "memorization"
    loss = "softmax_ce"
    at = "all"
    minimal_length = 1

    def __init__(self, min_length: int = 50, max_length: Optional[int] = 200, *,
                 convention: str = "authors", n_values: int = 5, n_pos: int = 10,
                 score_steps: str = "all") -> None:
        super().__init__(min_length, max_length, convention=convention)
        self.n_values = _check_int(n_values, "n_values", 2)
        self.n_pos = _check_int(n_pos, "n_pos", 1)
        if score_steps not in ("all", "recall"):
            raise ValueError(f"score_steps: expected 'all' or 'recall', got {score_steps!r}")
        self.score_steps = score_steps
        self.n_in = self.n_values + 2
        self.n_out = self.n_values + 1
        self.blank = self.n_values
        self.go = self.n_values + 1
        self.variant = {(2, 5): "memorization_5bit",
                        (5, 10): "memorization_20bit"}.get((self.n_values, self.n_pos))
        self.name = self.variant or "memorization"

    def config(self):
        cfg = super().config()
        cfg.update(n_values=self.n_values, n_pos=self.n_pos, score_steps=self.score_steps)
        return cfg

    def max_steps(self, length):
        L = self._check_length(length)
        return L + 2 * self.n_pos + (self.convention == "martens")

    def _generate(self, rng, B, L, dtype):
        n = self.n_pos
        T = self.max_steps(L)
        pattern = rng.integers(0, self.n_values, size=(n, B))
        sym = np.full((T, B), self.blank, dtype=np.int64)
        sym[:n] = pattern
        sym[n + L] = self.go
        targets = np.full((T, B), self.blank, dtype=np.int64)
        targets[T - n:] = pattern
        mask = None
        if self.score_steps == "recall":
            mask = np.zeros((T, B), dtype=bool)
            mask[T - n:] = True
        return Batch(_one_hot(sym, self.n_in, dtype), targets, mask)

    def _errors(self, y, batch):
        t = np.asarray(batch.targets)
        wrong = _wrong_class(y, t)
        if batch.mask is not None:
            wrong &= np.asarray(batch.mask) > 0
        return wrong.any(axis=0)

    def _oracle(self, u):
        T, B, _ = u.shape
        n = self.n_pos
        go_steps = np.argmax(u[:, :, self.go], axis=0)
        if np.any(u[go_steps, np.arange(B), self.go] != 1):
            raise ValueError("u: expected one go marker per sequence")
        start = go_steps + (self.convention == "martens")
        if np.any(start + n != T):
            raise ValueError("u: go marker inconsistent with the sequence length")
        cls = np.full((T, B), self.blank, dtype=np.int64)
        cls[T - n:] = np.argmax(u[:n, :, : self.n_values], axis=2)
        return _one_hot(cls, self.n_out, np.dtype(np.float64))


# --------------------------------------------------------------------------- #
# registry
# --------------------------------------------------------------------------- #
_REGISTRY: Dict[str, Tuple[type, Dict[str, object]]] = {
    "temporal_order": (TemporalOrder, {}),
    "temporal_order_3bit": (TemporalOrder3Bit, {}),
    "addition": (Addition, {}),
    "multiplication": (Multiplication, {}),
    "permutation": (Permutation, {}),
    "memorization": (Memorization, {}),
    "memorization_5bit": (Memorization, {"n_values": 2, "n_pos": 5}),
    "memorization_20bit": (Memorization, {"n_values": 5, "n_pos": 10}),
}

#: Registered task names, for ``get_task`` (and CLI ``choices=``).
TASKS: Tuple[str, ...] = tuple(_REGISTRY)

# The task names of the authors' code (RNN.py's state['task']).
_ALIASES = {"torder": "temporal_order", "torder3": "temporal_order_3bit",
            "add": "addition", "mul": "multiplication", "perm": "permutation",
            "mem": "memorization"}

_COMMON_KWARGS = ("min_length", "max_length", "convention")
_EXTRA_KWARGS = {Addition: ("threshold",), Multiplication: ("threshold",),
                 Permutation: ("n_symbols",),
                 Memorization: ("n_values", "n_pos", "score_steps")}


def get_task(name: str, **kwargs) -> Task:
    """Build a task by registry name.

    Parameters
    ----------
    name : str
        One of :data:`TASKS` (case-insensitive, ``-`` accepted for ``_``), or
        an authors' short name (``torder``, ``torder3``, ``add``, ``mul``,
        ``perm``, ``mem``).
    **kwargs
        ``min_length``, ``max_length``, ``convention`` for every task, plus
        ``threshold`` (addition, multiplication), ``n_symbols`` (permutation),
        ``n_values``, ``n_pos``, ``score_steps`` (memorization; the 5-bit and
        20-bit variants fix ``n_values``/``n_pos`` and only accept values that
        agree).

    Raises
    ------
    ValueError
        Unknown name or invalid parameter value.
    TypeError
        Unknown keyword argument.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a task name (str), got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        hint = difflib.get_close_matches(key, TASKS, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"name: unknown task {name!r}{extra}; expected one of {', '.join(TASKS)}")
    cls, fixed = _REGISTRY[key]
    allowed = _COMMON_KWARGS + _EXTRA_KWARGS.get(cls, ())
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"get_task({key!r}): unexpected keyword argument(s) {unknown}; "
                        f"accepted: {', '.join(allowed)}")
    for k, v in fixed.items():
        if k in kwargs and kwargs[k] != v:
            raise ValueError(f"{k}: task {key!r} fixes {k}={v}, got {kwargs[k]!r} "
                             f"(use 'memorization' for other sizes)")
    return cls(**{**kwargs, **fixed})


# --------------------------------------------------------------------------- #
# success criterion
# --------------------------------------------------------------------------- #
def error_rate(errors) -> float:
    """Fraction of sequences in error.

    Parameters
    ----------
    errors : array_like
        ``(N,)`` bool per-sequence error flags (e.g. from ``Task.errors``).
    """
    e = np.asarray(errors)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"errors: expected a non-empty 1-D array of flags, got shape {e.shape}")
    return float(np.count_nonzero(e)) / e.size


def is_solved(error_fraction: float, threshold: float = SUCCESS_THRESHOLD) -> bool:
    """The paper's success test: ``error_fraction < threshold`` (1 %)."""
    return bool(error_fraction < threshold)


def evaluate(task: Task, predict_fn: Callable[[np.ndarray], np.ndarray],
             rng: np.random.Generator, n_sequences: int = EVAL_SEQUENCES,
             length: Optional[int] = None, chunk: Optional[int] = None,
             dtype=np.float64) -> float:
    """Error fraction of a predictor on fresh sequences, generated in chunks.

    Parameters
    ----------
    task : Task
        The task.
    predict_fn : callable
        ``predict_fn(u) -> y`` with ``u`` ``(T, b, n_in)`` and ``y`` the readout
        outputs at the read step(s), ``(b, n_out)`` (``at == "last"``) or
        ``(T, b, n_out)`` (``at == "all"``); typically a forward-only pass.
    rng : numpy.random.Generator
        Source of the evaluation sequences.
    n_sequences : int
        Number of sequences (10,000 in the paper).
    length : int, optional
        Nominal length of every sequence.  ``None`` draws one length per chunk
        with ``task.sample_length`` (the authors' validation loop).
    chunk : int, optional
        Sequences per call to ``predict_fn``.  ``None``: as many as keep one
        chunk's inputs under 64 MiB (at least 1, at most ``n_sequences``).
    dtype : float32 or float64
        Dtype of the generated inputs.

    Returns
    -------
    float
        Fraction of sequences in error (compare with :func:`is_solved`).
    """
    if not isinstance(task, Task):
        raise TypeError(f"task: expected a Task (see get_task), got {type(task).__name__}")
    if not callable(predict_fn):
        raise TypeError("predict_fn: expected a callable u -> y")
    rng = _check_rng(rng)
    n_sequences = _check_int(n_sequences, "n_sequences", 1)
    dtype = _check_dtype(dtype)
    if length is not None:
        length = task._check_length(length)
    if chunk is None:
        longest = task.max_steps(length if length is not None else max(task.max_length - 1,
                                                                     task.min_length))
        per_seq = longest * max(task.n_in, task.n_out) * dtype.itemsize
        chunk = max(1, min(n_sequences, DEFAULT_CHUNK_BYTES // per_seq))
    else:
        chunk = _check_int(chunk, "chunk", 1)
    n_err = 0
    done = 0
    while done < n_sequences:
        b = min(chunk, n_sequences - done)
        L = length if length is not None else task.sample_length(rng)
        batch = task.generate(rng, b, L, dtype)
        n_err += int(np.count_nonzero(task.errors(predict_fn(batch.u), batch)))
        done += b
    return n_err / n_sequences
