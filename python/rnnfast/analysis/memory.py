"""How a trained temporal-order model stores its two bits: error by where the markers fall,
and linear probes of the hidden state at growing lags after the markers.

The generalisation test asks a model trained on 50-200 steps to answer after up to 5000. Two
measurements say where it fails:

* :func:`error_by_distance`: the error rate of the model's answer as a function of the number
  of steps between the second marker and the read step (fresh sequences of several lengths),
  and which bit is wrong (the first marker's, the second's, or both).
* :func:`marker_probe`: sequences with the first marker at step ``p0`` and the second at
  ``p1``, then distractors; at each lag after ``p1`` the hidden states of half the sequences
  fit a linear probe (least squares on ±1 labels) for each bit, scored on the other half. A
  bit the probe reads is still in the state; the model's own readout at that step is scored
  too (what it would answer if the sequence ended there).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from ..nn import losses as _losses

__all__ = ["DistanceErrors", "error_by_distance", "ProbeResult", "marker_probe"]


def _one_hot(sym, n, dtype):
    return np.eye(n, dtype=dtype)[sym]


class DistanceErrors(NamedTuple):
    """Errors binned by a distance: the steps from the second marker to the read step
    (:func:`error_by_distance`'s ``by="after"``) or between the two markers (``by="gap"``).

    Attributes
    ----------
    edges : ndarray (K + 1,)
        Bin edges (steps).
    sequences : ndarray (K,)
        Sequences per bin.
    error : ndarray (K,)
        Error rate of the answer per bin (NaN for an empty bin).
    first_wrong, second_wrong : ndarray (K,)
        Rate at which the first / the second marker's bit is wrong.
    """

    edges: np.ndarray
    sequences: np.ndarray
    error: np.ndarray
    first_wrong: np.ndarray
    second_wrong: np.ndarray


def _bits_of(y):
    """(bit0, bit1) of the class argmax (class = bit0 + 2 bit1)."""
    c = np.argmax(y, axis=1)
    return c & 1, c >> 1


def error_by_distance(model, task, lengths: Sequence[int], *, by="after", n_sequences=2000,
                      bins=12, rng=None, num_threads=None) -> DistanceErrors:
    """Error of ``model`` on fresh ``task`` sequences (two-bit temporal order) against the
    number of steps between the second marker and the end (``by="after"``) or between the
    two markers (``by="gap"``), pooled over ``lengths``.

    Returns
    -------
    DistanceErrors
    """
    if by not in ("after", "gap"):
        raise ValueError(f"by: expected 'after' or 'gap', got {by!r}")
    rng = np.random.default_rng(rng)
    dist, wrong0, wrong1 = [], [], []
    for L in lengths:
        b = task.generate(rng, int(n_sequences), int(L), dtype=model.dtype)
        sym = np.argmax(b.u, axis=2)                                     # (T, B)
        t_idx = np.argsort(sym >= 2, axis=0, kind="stable")[:2]         # the two marker steps
        p0, p1 = t_idx.min(axis=0), t_idx.max(axis=0)
        y = model.outputs(b.u, num_threads=num_threads)                  # (B, 4)
        got0, got1 = _bits_of(y)
        want0, want1 = b.targets & 1, b.targets >> 1
        dist.append(int(L) - 1 - p1 if by == "after" else p1 - p0)
        wrong0.append(got0 != want0)
        wrong1.append(got1 != want1)
    dist, wrong0, wrong1 = (np.concatenate(a) for a in (dist, wrong0, wrong1))
    edges = np.unique(np.quantile(dist, np.linspace(0, 1, int(bins) + 1)).round())
    k = np.clip(np.searchsorted(edges, dist, side="right") - 1, 0, len(edges) - 2)
    n = np.bincount(k, minlength=len(edges) - 1)

    def rate(mask):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.bincount(k, weights=mask.astype(float), minlength=len(n)) / n

    return DistanceErrors(edges, n, rate(wrong0 | wrong1), rate(wrong0), rate(wrong1))


class ProbeResult(NamedTuple):
    """Linear-probe and readout accuracy at lags after the second marker.

    Attributes
    ----------
    lags : ndarray (K,)
        Steps after the second marker.
    probe_first, probe_second : ndarray (K,)
        Held-out accuracy of a linear probe of h for the first / second bit.
    readout_first, readout_second : ndarray (K,)
        Accuracy of the model's own readout for each bit at that step.
    readout : ndarray (K,)
        Accuracy of the model's answer (both bits) at that step.
    state_norm : ndarray (K,)
        Mean ‖h‖ at that step.
    """

    lags: np.ndarray
    probe_first: np.ndarray
    probe_second: np.ndarray
    readout_first: np.ndarray
    readout_second: np.ndarray
    readout: np.ndarray
    state_norm: np.ndarray


def _probe_accuracy(h, bit, train):
    """Held-out accuracy of a least-squares linear probe (with bias) of ``bit`` from ``h``."""
    X = np.hstack([h.astype(np.float64), np.ones((h.shape[0], 1))])
    y = 2.0 * bit - 1.0
    w, *_ = np.linalg.lstsq(X[train], y[train], rcond=None)
    test = ~train
    return float(np.mean((X[test] @ w > 0) == (bit[test] > 0)))


def marker_probe(model, *, p0=15, p1=60, lags=(0, 10, 50, 100, 150, 250, 500, 1000, 2000, 4000),
                 n_sequences=2000, rng=None, num_threads=None) -> ProbeResult:
    """Probe a temporal-order model's state after markers at fixed steps.

    Sequences (the authors' six symbols) show random distractors except the first bit at step
    ``p0`` and the second at ``p1``; the state is read ``lag`` steps after ``p1`` for every
    lag. Half the sequences fit each probe, the other half score it.

    Returns
    -------
    ProbeResult
    """
    rng = np.random.default_rng(rng)
    lags = np.asarray(sorted(int(x) for x in lags))
    if lags[0] < 0 or p1 <= p0 or p0 < 0:
        raise ValueError("need 0 <= p0 < p1 and lags >= 0")
    B, T = int(n_sequences), int(p1 + lags[-1] + 1)
    sym = rng.integers(2, 6, size=(T, B))
    bits = rng.integers(0, 2, size=(2, B))
    sym[p0], sym[p1] = bits
    train = np.zeros(B, bool)
    train[rng.permutation(B)[: B // 2]] = True
    out = {k: [] for k in ("pf", "ps", "rf", "rs", "r", "n")}
    h, t = None, 0
    for lag in lags:
        stop = p1 + lag + 1
        u = _one_hot(sym[t:stop], model.n_in, model.dtype)
        h = model.forward(u, h, num_threads=num_threads).h_last.copy()  # (B, H) at step stop-1
        t = stop
        p = model.params
        got0, got1 = _bits_of(_losses.readout(h, p["W_out"], p["b_out"], model.loss))
        out["pf"].append(_probe_accuracy(h, bits[0], train))
        out["ps"].append(_probe_accuracy(h, bits[1], train))
        out["rf"].append(float(np.mean(got0 == bits[0])))
        out["rs"].append(float(np.mean(got1 == bits[1])))
        out["r"].append(float(np.mean((got0 == bits[0]) & (got1 == bits[1]))))
        out["n"].append(float(np.linalg.norm(h, axis=1).mean()))
    return ProbeResult(lags, *(np.asarray(out[k]) for k in ("pf", "ps", "rf", "rs", "r", "n")))
