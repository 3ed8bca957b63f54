"""Readout layers and losses over all time steps at once.

The readout maps hidden states to outputs with one affine map,
``z = h W_outᵀ + b_out``, computed as ONE matrix product over every row that is
read (all ``T·B`` rows for ``at="all"``, the ``B`` rows of the last step for
``at="last"``); there is no per-step Python loop. The products run on the
kernels' threads (:func:`rnnfast.core.linear`), not on NumPy's BLAS, which
training keeps on one thread, and so does the loss: outputs, loss and ∂/∂z in one
pass over z (:func:`rnnfast.core.readout_loss`).

Loss kinds (``kind``)
---------------------
``"linear_mse"``
    Linear output ``y = z``, squared error ``Σ_o (y_o − t_o)²`` per read step
    (the authors' ``lastLinear``; addition and multiplication tasks).
``"softmax_ce"``
    Softmax output ``y = softmax(z)``, cross-entropy ``−log y_c`` with an integer
    class target ``c`` (the authors' ``lastSoftmax``/``softmax``).
``"sigmoid_bce"``
    Element-wise logistic output ``y = σ(z)``, binary cross-entropy
    ``Σ_o −t_o log y_o − (1 − t_o) log(1 − y_o)`` (multi-label, piano rolls).

Where the cost is read (``at``)
-------------------------------
``"last"``
    Only the last step ``h_T``; the recurrent gradient is returned as the cheap
    ``dh_last`` (B, H) form that :func:`rnnfast.backward` accepts.
``"all"``
    Every step, optionally weighted by a ``(T, B)`` ``mask`` (bool or
    non-negative float) that selects the steps whose cost counts (padded
    sequences of different lengths).

Normalisation (``normalize``)
-----------------------------
Every per-step cost is first summed over the output units. Then

``"step"`` (default)
    divided by the number of counted (step, example) pairs: ``B`` for
    ``at="last"``, ``T·B`` for ``at="all"`` without mask, ``Σ mask`` with a
    mask. This is exactly the authors' code (``cost.mean(axis=0).sum()`` over
    the ``B`` or ``T·B`` rows of the readout), and it is the "per time step" /
    "per character" quantity of the paper's Table 1 (in nats; divide by ``ln 2``
    for bits per character).
``"sequence"``
    summed over steps and divided by ``B``: the paper's ``E = Σ_t E_t`` per
    sequence, averaged over the minibatch.
``"sum"``
    the plain sum over all counted steps and examples.

For ``at="last"`` the ``"step"`` and ``"sequence"`` normalisations coincide.
The loss is accumulated in float64 whatever the working dtype; gradients are
returned in the dtype of ``h``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from .. import core as _core

__all__ = [
    "LOSS_KINDS",
    "READ_AT",
    "NORMALIZATIONS",
    "LossResult",
    "readout",
    "loss_and_grad",
    "check_loss_options",
    "check_targets",
]

LOSS_KINDS = ("softmax_ce", "linear_mse", "sigmoid_bce")
READ_AT = ("last", "all")
NORMALIZATIONS = ("step", "sequence", "sum")


class LossResult(NamedTuple):
    """What :func:`loss_and_grad` returns.

    Attributes
    ----------
    loss : float
        The normalised loss (accumulated in float64).
    W_out : ndarray (O, H) or None
        ∂loss/∂W_out (None with ``grad=False``).
    b_out : ndarray (O,) or None
        ∂loss/∂b_out (None with ``grad=False``).
    dh : ndarray (T, B, H) or None
        Direct loss gradient ∂loss/∂h_t at every step (``at="all"``), for
        ``rnnfast.backward(fwd, dh)``; None for ``at="last"`` or ``grad=False``.
    dh_last : ndarray (B, H) or None
        Direct loss gradient at the last step (``at="last"``), for
        ``rnnfast.backward(fwd, dh_last=...)``; None for ``at="all"`` or ``grad=False``.
    y : ndarray (B, O) or (T, B, O)
        Outputs at the read steps: probabilities (softmax / sigmoid) or values
        (linear), as ``Task.errors`` expects them.
    count : float
        The divisor used by the normalisation.
    """

    loss: float
    W_out: np.ndarray
    b_out: np.ndarray
    dh: Optional[np.ndarray]
    dh_last: Optional[np.ndarray]
    y: np.ndarray
    count: float


def check_loss_options(kind, at, normalize="step"):
    """Validate the loss options; raise ValueError naming the bad one."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind {kind!r} is unknown; expected one of {LOSS_KINDS}")
    if at not in READ_AT:
        raise ValueError(f"at={at!r} is unknown; expected one of {READ_AT}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize={normalize!r} is unknown; expected one of {NORMALIZATIONS}"
        )


def readout(h, W_out, b_out, kind, *, num_threads=None):
    """Outputs of the readout for hidden states of any leading shape.

    Parameters
    ----------
    h : ndarray (..., H)
        Hidden states, e.g. (B, H) for the last step or (T, B, H) for all.
    W_out : ndarray (O, H)
    b_out : ndarray (O,)
    kind : {"softmax_ce", "linear_mse", "sigmoid_bce"}
    num_threads : int, optional
        Threads of the product (as for :func:`rnnfast.forward`).

    Returns
    -------
    ndarray (..., O)
        Probabilities (softmax / sigmoid) or values (linear), in the wider of the
        dtypes of ``h`` and ``W_out``.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind {kind!r} is unknown; expected one of {LOSS_KINDS}")
    h, W_out, b_out = np.asarray(h), np.asarray(W_out), np.asarray(b_out)
    if W_out.ndim != 2:
        raise ValueError(f"W_out must be 2-D (O, H), got shape {W_out.shape}")
    H = W_out.shape[1]
    if h.shape[-1] != H:
        raise ValueError(f"h has {h.shape[-1]} hidden units but W_out expects {H}")
    lead = h.shape[:-1]
    dtype = np.result_type(h, W_out, b_out, np.float32)
    z = _core.linear(h.reshape(-1, H).astype(dtype, copy=False), W_out.astype(dtype, copy=False),
                     b_out.astype(dtype, copy=False), num_threads=num_threads)  # one product
    y = _core.readout_loss(kind, z, grad=False, num_threads=num_threads)[1]
    return y.reshape(lead + (W_out.shape[0],))


def _check_mask(mask, T, B):
    """Return the mask as float64 (T*B,) weights, validated; None stays None."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != (T, B):
        raise ValueError(f"mask must have shape (T, B) = {(T, B)}, got {m.shape}")
    if m.dtype == bool:
        return m.reshape(-1).astype(np.float64)
    if not (np.issubdtype(m.dtype, np.floating) or np.issubdtype(m.dtype, np.integer)):
        raise TypeError(f"mask must be bool or numeric, got dtype {m.dtype}")
    w = m.reshape(-1).astype(np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("mask weights must be finite and non-negative")
    return w


def check_targets(targets, kind, at, T, B, n_out, mask=None):
    """Validate targets against the loss kind and shapes.

    Parameters
    ----------
    targets : ndarray
        ``softmax_ce``: integer classes, (B,) for ``at="last"``, (T, B) for
        ``"all"``. ``linear_mse``/``sigmoid_bce``: float (B, O) or (T, B, O).
    kind, at : str
    T, B, n_out : int
    mask : ndarray (T, B) or None
        Classes at steps whose mask is 0 are not range-checked (padding may
        hold any value, e.g. -1).

    Returns
    -------
    ndarray
        The targets, flattened to (N,) classes or (N, O) values, N = B or T·B.
    """
    t = np.asarray(targets)
    rows = (B,) if at == "last" else (T, B)
    if kind == "softmax_ce":
        if t.dtype.kind not in "iu":
            raise TypeError(
                f"targets for softmax_ce must be integer class indices, got dtype {t.dtype}"
            )
        if t.shape != rows:
            raise ValueError(
                f"targets for softmax_ce with at={at!r} must have shape {rows}, got {t.shape}"
            )
        flat = t.reshape(-1).astype(np.int64, copy=False)
        if mask is not None:
            counted = np.asarray(mask).reshape(-1) != 0
            check = flat[counted]
        else:
            check = flat
        if check.size and (check.min() < 0 or check.max() >= n_out):  # two cheap reductions
            bad = check[(check < 0) | (check >= n_out)][0]
            raise ValueError(
                f"targets hold class {int(bad)}, outside the valid range [0, {n_out})"
            )
        if mask is not None:
            flat = np.where(counted, flat, 0)
        return flat
    if t.dtype.kind != "f":
        raise TypeError(f"targets for {kind} must be floating point, got dtype {t.dtype}")
    shape = rows + (n_out,)
    if t.shape != shape:
        raise ValueError(f"targets for {kind} with at={at!r} must have shape {shape}, got {t.shape}")
    flat = t.reshape(-1, n_out)
    if kind == "sigmoid_bce":
        if mask is not None:
            check = flat[np.asarray(mask).reshape(-1) != 0]
        else:
            check = flat
        if check.size and not (np.all(check >= 0) and np.all(check <= 1)):
            raise ValueError("targets for sigmoid_bce must lie in [0, 1]")
    return flat


def loss_and_grad(h, W_out, b_out, targets, *, kind, at="last", mask=None, normalize="step",
                  grad=True, num_threads=None):
    """Readout, loss and gradients over all read steps in one pass.

    Parameters
    ----------
    h : ndarray (T, B, H)
        Hidden states h_1..h_T from :func:`rnnfast.forward` (``fwd.h``). For
        ``at="last"`` a (B, H) array (the last state) is also accepted.
    W_out : ndarray (O, H)
        Readout weights, same dtype as ``h``.
    b_out : ndarray (O,)
        Readout bias.
    targets : ndarray
        See :func:`check_targets`.
    kind : {"softmax_ce", "linear_mse", "sigmoid_bce"}
    at : {"last", "all"}
    mask : ndarray (T, B) or None
        Weights of the steps whose cost counts (``at="all"`` only).
    normalize : {"step", "sequence", "sum"}
        See the module docstring; "step" is the authors' convention.
    grad : bool
        Also the gradients (False: the loss and outputs only, e.g. an evaluation).
    num_threads : int, optional
        Threads of the readout's products (as for :func:`rnnfast.forward`).

    Returns
    -------
    LossResult
    """
    check_loss_options(kind, at, normalize)
    h = np.asarray(h)
    W_out = np.asarray(W_out)
    b_out = np.asarray(b_out)
    if W_out.ndim != 2:
        raise ValueError(f"W_out must be 2-D (O, H), got shape {W_out.shape}")
    O, H = W_out.shape
    if b_out.shape != (O,):
        raise ValueError(f"b_out must have shape ({O},), got {b_out.shape}")
    if at == "last":
        if mask is not None:
            raise ValueError('mask is only supported with at="all"')
        if h.ndim == 3:
            hr = h[-1]
            T = h.shape[0]
        elif h.ndim == 2:
            hr = h
            T = 1
        else:
            raise ValueError(f"h must be (T, B, H) or (B, H), got shape {h.shape}")
        B = hr.shape[0]
    else:
        if h.ndim != 3:
            raise ValueError(f'h must be (T, B, H) for at="all", got shape {h.shape}')
        T, B = h.shape[:2]
        hr = h.reshape(T * B, h.shape[2])
    if hr.shape[-1] != H:
        raise ValueError(f"h has {hr.shape[-1]} hidden units but W_out expects {H}")
    if W_out.dtype != h.dtype or b_out.dtype != h.dtype:
        raise TypeError(
            f"W_out ({W_out.dtype}) and b_out ({b_out.dtype}) must have the dtype of h ({h.dtype})"
        )

    w = _check_mask(mask, T, B) if at == "all" else None
    tflat = check_targets(targets, kind, at, T, B, O, mask=mask if at == "all" else None)
    N = hr.shape[0]

    dtype = h.dtype

    if normalize == "sum":
        count = 1.0
    elif normalize == "sequence" or at == "last":
        count = float(B)
    else:  # "step"
        count = float(N) if w is None else float(w.sum())
    if count <= 0:
        raise ValueError("the mask selects no step: the loss is undefined")
    # the kernels read C-contiguous targets: int64 classes, or values in the model's dtype
    tflat = np.ascontiguousarray(tflat, dtype=np.int64 if kind == "softmax_ce" else dtype)
    # z = hr W_outᵀ + b_out (ONE product), then outputs, Σ w·loss (float64) and ∂loss/∂z in
    # one pass, then ∂/∂hr and ∂/∂W_out: the kernels' threads; every argument checked above
    total, y, dz, dh_rows, gW_out = _core._readout_pass(
        kind, hr, W_out, b_out, tflat, w, 1.0 / count, grad, _core._check_threads(num_threads))
    loss = total / count
    y_out = y if at == "last" else y.reshape(T, B, O)
    if not grad:
        return LossResult(float(loss), None, None, None, None, y_out, count)
    gb_out = dz.sum(axis=0)
    if at == "last":
        dh, dh_last = None, dh_rows
    else:
        dh, dh_last = dh_rows.reshape(T, B, H), None
    return LossResult(
        float(loss), gW_out.astype(dtype, copy=False), gb_out.astype(dtype, copy=False),
        dh, dh_last, y_out, count,
    )
