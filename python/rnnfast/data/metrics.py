"""Evaluation metrics of Table 1 (Pascanu, Mikolov & Bengio 2013), pure NumPy.

Music: negative log-likelihood per time step, in nats, of 88 independent sigmoid
outputs. PTB characters: bits per character for the next character and for the character
``k`` steps ahead. All computations are done in float64; logits inputs use stable forms
(softplus / log-sum-exp), probability inputs are clipped to ``[eps, 1 - eps]``.

Pooling over a split: every function with ``reduce="sum"`` returns ``(total, count)``;
the split's value is ``sum(totals) / sum(counts)`` over all its batches, i.e. an average
over all predicted time steps (characters) of the split pooled together -- not a mean of
per-piece or per-batch means.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["step_nll", "music_nll", "char_bits", "bits_per_char", "bits_per_char_ahead",
           "nats_to_bits"]

LN2 = math.log(2.0)


def nats_to_bits(x):
    """Convert a log-loss in nats to bits (divide by ln 2)."""
    return np.asarray(x, dtype=np.float64) / LN2 if np.ndim(x) else float(x) / LN2


def _float(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def _check_eps(eps: float) -> float:
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"eps: expected 0 <= eps < 0.5, got {eps!r}")
    return float(eps)


def step_nll(y, targets, *, logits: bool = False, eps: float = 1e-12) -> np.ndarray:
    """Negative log-likelihood, in nats, of each time step's piano roll.

    For one step with predictions ``p_k`` (k = 1..88) and binary targets ``v_k``::

        NLL_t = - sum_k [ v_k log p_k + (1 - v_k) log(1 - p_k) ]

    i.e. the sum of the 88 sigmoid units' binary cross-entropies.

    Parameters
    ----------
    y : array_like, shape (..., K)
        Probabilities ``p`` in [0, 1], or pre-sigmoid logits ``z`` (``p = sigmoid(z)``)
        when ``logits`` is True (then ``NLL_t = sum_k softplus(z_k) - v_k z_k``, exact
        and stable for any ``z``).
    targets : array_like, shape (..., K)
        Targets in [0, 1] (binary piano rolls).
    logits : bool
        Interpret ``y`` as logits.
    eps : float
        Probabilities are clipped to ``[eps, 1 - eps]`` (ignored with logits; 0 disables,
        giving ``inf`` for a certain wrong prediction).

    Returns
    -------
    ndarray of float64, shape (...)
    """
    y = _float(y, "y")
    t = _float(targets, "targets")
    if y.shape != t.shape or y.ndim < 1:
        raise ValueError(f"targets: expected the shape of y {y.shape}, got {t.shape}")
    if np.any((t < 0) | (t > 1)):
        raise ValueError("targets: expected values in [0, 1]")
    if logits:
        loss = np.maximum(y, 0.0) - t * y + np.log1p(np.exp(-np.abs(y)))
    else:
        if np.any((y < 0) | (y > 1)):
            raise ValueError("y: expected probabilities in [0, 1] (pass logits=True for logits)")
        eps = _check_eps(eps)
        p = np.clip(y, eps, 1.0 - eps)
        with np.errstate(divide="ignore", invalid="ignore"):
            loss = -(np.where(t != 0, t * np.log(p), 0.0)
                     + np.where(t != 1, (1.0 - t) * np.log1p(-p), 0.0))
    return loss.sum(axis=-1)


def _reduce(per_step: np.ndarray, mask, reduce: str):
    if mask is None:
        total, count = float(per_step.sum()), int(per_step.size)
    else:
        m = np.asarray(mask)
        if m.shape != per_step.shape:
            raise ValueError(f"mask: expected shape {per_step.shape}, got {m.shape}")
        if m.dtype.kind == "b":
            total, count = float(per_step[m].sum()), int(np.count_nonzero(m))
        elif m.dtype.kind in "iuf":
            if np.any((m != 0) & (m != 1)):
                raise ValueError("mask: expected 0/1 values")
            m = m != 0
            total, count = float(per_step[m].sum()), int(np.count_nonzero(m))
        else:
            raise TypeError(f"mask: expected a bool or 0/1 array, got dtype {m.dtype}")
    if reduce == "sum":
        return total, count
    if reduce != "mean":
        raise ValueError(f"reduce: expected 'mean' or 'sum', got {reduce!r}")
    if count == 0:
        raise ValueError("mask: selects no step to average over")
    return total / count


def music_nll(y, targets, mask=None, *, logits: bool = False, eps: float = 1e-12,
              reduce: str = "mean"):
    """Music negative log-likelihood per time step (Table 1, music rows), in nats.

    Definition (the paper's measure, after Boulanger-Lewandowski et al. 2012)::

        NLL = (1 / N) * sum_{valid steps t} - sum_{k=1}^{88} [ v_{t,k} log p_{t,k}
                                                  + (1 - v_{t,k}) log(1 - p_{t,k}) ]

    where ``p_t = sigmoid(W_out h_t + b_out)`` is the prediction for the piano roll
    ``v_t`` made from the steps before ``t``, and ``N`` is the number of valid steps. The
    average is over all predicted time steps of the split pooled together (use
    ``reduce="sum"`` per batch and divide the summed totals by the summed counts).

    Parameters
    ----------
    y : array_like, shape (T, B, 88) (any leading shape)
        Probabilities, or logits when ``logits`` is True.
    targets : array_like, shape (T, B, 88)
        Binary piano rolls to predict.
    mask : array_like of bool or 0/1, shape (T, B), optional
        Steps that count (padding excluded); None counts all.
    logits : bool
        ``y`` holds pre-sigmoid logits (stable path).
    eps : float
        Probability clipping, see :func:`step_nll`.
    reduce : {'mean', 'sum'}
        ``'mean'``: the NLL per step (float). ``'sum'``: ``(total_nats, n_steps)``.
    """
    return _reduce(step_nll(y, targets, logits=logits, eps=eps), mask, reduce)


def char_bits(scores, targets, *, logits: bool = False, eps: float = 1e-12) -> np.ndarray:
    """``-log2 p(target)`` for each prediction of a softmax over characters.

    Parameters
    ----------
    scores : array_like, shape (..., C)
        Probabilities (rows summing to 1), or unnormalised logits when ``logits`` is True
        (then ``-log2 p = (logsumexp(z) - z_target) / ln 2``, stable).
    targets : array_like of int, shape (...)
        Target symbol indices in ``[0, C)``.
    logits : bool
        Interpret ``scores`` as logits.
    eps : float
        Probabilities are clipped below at ``eps`` (0 disables).

    Returns
    -------
    ndarray of float64, shape (...)
    """
    s = _float(scores, "scores")
    t = np.asarray(targets)
    if t.dtype.kind not in "iu":
        raise TypeError(f"targets: expected an int array, got dtype {t.dtype}")
    if s.ndim < 1 or s.shape[:-1] != t.shape:
        raise ValueError(f"targets: expected shape {s.shape[:-1]} (scores without the last "
                         f"axis), got {t.shape}")
    C = s.shape[-1]
    if t.size and (t.min() < 0 or t.max() >= C):
        raise ValueError(f"targets: expected indices in [0, {C})")
    picked = np.take_along_axis(s, t[..., None].astype(np.intp), axis=-1)[..., 0]
    if logits:
        m = s.max(axis=-1)
        m = np.where(np.isfinite(m), m, 0.0)
        lse = m + np.log(np.exp(s - m[..., None]).sum(axis=-1))
        return (lse - picked) / LN2
    if np.any((s < 0) | (s > 1)):
        raise ValueError("scores: expected probabilities in [0, 1] (pass logits=True for logits)")
    eps = _check_eps(eps)
    with np.errstate(divide="ignore"):
        return -np.log2(np.maximum(picked, eps)) if eps > 0 else -np.log2(picked)


def bits_per_char(scores, targets, mask=None, *, logits: bool = False, eps: float = 1e-12,
                  reduce: str = "mean"):
    """Bits per character (Table 1, PTB rows).

    Definition::

        BPC = (1 / N) * sum_{predictions i} - log2 p_i(c_i)

    the mean, over the N predicted characters, of the negative base-2 log-probability the
    softmax gives to the correct character. With targets from
    ``CharStream(..., ahead=1)`` (``c_i = s_{t+1}`` given ``s_1..s_t``) this is the usual
    next-character BPC; with ``ahead=k`` (``c_i = s_{t+k}`` given ``s_1..s_t``) it is the
    k-steps-ahead variant (the paper's "5 steps" is k = 5). End-of-line counts as a
    character. Pooled over the split as described in the module docstring.

    Parameters
    ----------
    scores : array_like, shape (T, B, C) (any leading shape)
        Probabilities, or logits when ``logits`` is True.
    targets : array_like of int, shape (T, B)
        Target symbol indices.
    mask : array_like of bool or 0/1, shape (T, B), optional
        Predictions that count; None counts all.
    logits, eps
        See :func:`char_bits`.
    reduce : {'mean', 'sum'}
        ``'mean'``: bits per character (float). ``'sum'``: ``(total_bits, n_characters)``.
    """
    return _reduce(char_bits(scores, targets, logits=logits, eps=eps), mask, reduce)


def bits_per_char_ahead(scores, symbols, ahead: int = 1, *, logits: bool = False,
                        eps: float = 1e-12, reduce: str = "mean"):
    """k-steps-ahead bits per character of one aligned stream.

    Definition::

        BPC_k = (1 / (N - k)) * sum_{t=0}^{N-k-1} - log2 p_t(s_{t+k})

    where row ``t`` of ``scores`` is the distribution the model outputs after reading
    ``s_0 .. s_t``; rows ``t >= N - k`` have no target and are ignored.

    Parameters
    ----------
    scores : array_like, shape (N, C)
        Outputs after each input symbol (probabilities, or logits when ``logits``).
    symbols : array_like of int, shape (N,)
        The symbol stream that was fed in.
    ahead : int
        k >= 1.
    logits, eps, reduce
        See :func:`bits_per_char`.
    """
    if isinstance(ahead, bool) or not isinstance(ahead, (int, np.integer)) or ahead < 1:
        raise ValueError(f"ahead: expected a positive int, got {ahead!r}")
    s = np.asarray(scores)
    sym = np.asarray(symbols)
    if s.ndim != 2 or sym.ndim != 1 or s.shape[0] != sym.shape[0]:
        raise ValueError(f"scores/symbols: expected shapes (N, C) and (N,), got {s.shape} "
                         f"and {sym.shape}")
    if sym.shape[0] <= ahead:
        raise ValueError(f"symbols: need more than ahead={ahead} symbols, got {sym.shape[0]}")
    return bits_per_char(s[:-ahead], sym[ahead:], logits=logits, eps=eps, reduce=reduce)
