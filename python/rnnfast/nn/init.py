"""Parameter initialisations of the paper, plus orthogonal and scaled identity.

All schemes set ``b = b_out = 0`` and draw from a :class:`numpy.random.Generator`
(or an integer seed), in the fixed order ``W_in``, ``W_rec``, ``W_out``, so the
same seed always gives the same parameters. Shapes follow rnnfast's convention
``h_t = σ(W_rec h_{t-1} + W_in u_t + b)``: ``W_in`` (H, I), ``W_rec`` (H, H),
``W_out`` (O, H). Row ``i`` of ``W_rec`` holds the INCOMING weights of unit
``i``; column ``j`` its OUTGOING weights. (The authors' Theano code stores the
transposes, ``W_hh = W_recᵀ``.)

Schemes (the paper's section 3.3 and the authors' code; docs/method.md)
-------------------------------------
``"sigmoid"``      sigmoid units; ``W_in, W_rec, W_out ~ N(0, 0.01²)``.
``"basic_tanh"``   tanh units; all ``~ N(0, 0.1²)``.
``"smart_tanh"``   tanh units; ``W_in, W_out ~ N(0, 0.01²)``; ``W_rec`` drawn
                   from ``N(0, 0.01²)``, then all but ``sparsity`` (15)
                   randomly chosen entries per unit are zeroed, then it is
                   rescaled to spectral radius 0.95. ``sparse_per="incoming"``
                   (default, as the paper's text says) keeps 15 non-zeros in
                   each ROW of ``W_rec``; ``sparse_per="outgoing"`` keeps 15 in
                   each COLUMN, which is what the authors' code does (15 per row
                   of its ``W_hh``). The spectrum is the same either way.
``"orthogonal"``   tanh units; ``W_rec`` a random orthogonal matrix (QR of a
                   Gaussian, signs fixed so it is Haar-distributed) times
                   ``gain`` (1.0); ``W_in, W_out ~ N(0, scale²)``, scale 0.1.
``"identity"``     ReLU units (Le et al. 2015's IRNN); ``W_rec = gain · I``
                   (gain 1.0); ``W_in, W_out ~ N(0, scale²)``, scale 0.001.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["INIT_SCHEMES", "default_activation", "initialize", "spectral_radius", "as_generator"]

# scheme -> (activation, default scale of W_in/W_out)
_SCHEMES = {
    "sigmoid": ("sigmoid", 0.01),
    "basic_tanh": ("tanh", 0.1),
    "smart_tanh": ("tanh", 0.01),
    "orthogonal": ("tanh", 0.1),
    "identity": ("relu", 0.001),
}
INIT_SCHEMES = tuple(_SCHEMES)


def as_generator(rng):
    """Return a numpy Generator from a Generator, an int seed or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, numbers.Integral):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")


def default_activation(scheme):
    """The hidden activation a scheme is meant for ("tanh", "sigmoid" or "relu")."""
    if scheme not in _SCHEMES:
        raise ValueError(f"init scheme {scheme!r} is unknown; expected one of {INIT_SCHEMES}")
    return _SCHEMES[scheme][0]


def spectral_radius(W):
    """Largest absolute eigenvalue of a square matrix W (H, H), as a float."""
    W = np.asarray(W)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square, got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        return float("nan")
    return float(np.max(np.abs(np.linalg.eigvals(W.astype(np.float64)))))


def _check_dims(n_in, n_hidden, n_out):
    for name, v in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def initialize(scheme, n_in, n_hidden, n_out, rng=None, *, dtype=np.float64,
               sparsity=15, spectral=0.95, sparse_per="incoming", scale=None, gain=1.0):
    """Draw initial parameters.

    Parameters
    ----------
    scheme : {"sigmoid", "basic_tanh", "smart_tanh", "orthogonal", "identity"}
    n_in, n_hidden, n_out : int
        I, H, O.
    rng : numpy.random.Generator or int or None
        Random source (an int is a seed).
    dtype : numpy dtype
        float32 or float64 (draws are made in float64 and then cast).
    sparsity : int
        smart_tanh: non-zeros kept per unit (min(sparsity, H)).
    spectral : float
        smart_tanh: target spectral radius of W_rec.
    sparse_per : {"incoming", "outgoing"}
        smart_tanh: keep ``sparsity`` non-zeros per row (incoming, paper) or
        per column (outgoing, authors' code) of W_rec.
    scale : float or None
        Standard deviation of W_in and W_out (and of W_rec for the Gaussian
        schemes); None uses the scheme's default.
    gain : float
        orthogonal / identity: multiplier of W_rec.

    Returns
    -------
    dict
        ``W_in`` (H, I), ``W_rec`` (H, H), ``b`` (H,), ``W_out`` (O, H),
        ``b_out`` (O,), all of ``dtype``.
    """
    if scheme not in _SCHEMES:
        raise ValueError(f"init scheme {scheme!r} is unknown; expected one of {INIT_SCHEMES}")
    _check_dims(n_in, n_hidden, n_out)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if sparse_per not in ("incoming", "outgoing"):
        raise ValueError(f"sparse_per must be 'incoming' or 'outgoing', got {sparse_per!r}")
    rng = as_generator(rng)
    H, I, O = int(n_hidden), int(n_in), int(n_out)
    s = _SCHEMES[scheme][1] if scale is None else float(scale)

    W_in = rng.normal(0.0, s, size=(H, I))
    if scheme in ("sigmoid", "basic_tanh"):
        W_rec = rng.normal(0.0, s, size=(H, H))
    elif scheme == "smart_tanh":
        W_rec = rng.normal(0.0, s, size=(H, H))
        k = min(int(sparsity), H)
        if k < 1:
            raise ValueError(f"sparsity must be >= 1, got {sparsity}")
        # for each unit, a random set of k kept connections (one permutation per unit)
        keep = np.argsort(rng.random((H, H)), axis=1)[:, :k]
        mask = np.zeros((H, H), dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        if sparse_per == "outgoing":
            mask = mask.T
        W_rec *= mask
        rho = spectral_radius(W_rec)
        if not rho > 0:
            raise ValueError("smart_tanh drew a W_rec with spectral radius 0; use another seed")
        W_rec *= spectral / rho
    elif scheme == "orthogonal":
        q, r = np.linalg.qr(rng.normal(size=(H, H)))
        q *= np.sign(np.diag(r))  # Haar-distributed
        W_rec = gain * q
    else:  # identity
        W_rec = gain * np.eye(H)
    W_out = rng.normal(0.0, s, size=(O, H))
    return {
        "W_in": W_in.astype(dtype),
        "W_rec": W_rec.astype(dtype),
        "b": np.zeros(H, dtype),
        "W_out": W_out.astype(dtype),
        "b_out": np.zeros(O, dtype),
    }
