"""The hidden non-linearities σ in NumPy: values, derivatives and the bound γ of σ'.

The kernels apply σ in C++ (``rnnfast.core.ACTIVATIONS``); this module is the Python side used
by the analysis tools: σ and σ' evaluated without overflow, σ' recovered from h = σ(x), and
γ = sup |σ'|, the constant of the paper's vanishing/exploding bounds (‖∂h_t/∂h_{t-1}‖ ≤ γ λ₁).
"""

from __future__ import annotations

import numpy as np

from ..core import ACTIVATIONS

__all__ = ["ACTIVATIONS", "GAMMA", "gamma", "check", "value_and_derivative",
           "derivative_from_output"]

#: γ = sup |σ'(x)| of each activation.
GAMMA = {"tanh": 1.0, "sigmoid": 0.25, "relu": 1.0, "linear": 1.0}


def check(activation, allowed=ACTIVATIONS) -> str:
    """Return ``activation`` when it is one of ``allowed``; raise ValueError naming it if not."""
    if activation not in allowed:
        raise ValueError(f"activation: expected one of {tuple(allowed)}, got {activation!r}")
    return activation


def gamma(activation: str) -> float:
    """γ = sup |σ'| of ``activation``."""
    return GAMMA[check(activation)]


def value_and_derivative(x, activation="sigmoid"):
    """σ(x) and σ'(x), float64, without overflow for any finite x.

    Parameters
    ----------
    x : array_like, shape (...)
        Pre-activations.
    activation : {"tanh", "sigmoid", "relu", "linear"}

    Returns
    -------
    f, df : ndarray, shape (...)
    """
    check(activation)
    x = np.asarray(x, dtype=np.float64)
    if activation == "linear":
        return x.copy(), np.ones_like(x)
    if activation == "relu":
        return np.maximum(x, 0.0), (x > 0).astype(np.float64)
    if activation == "sigmoid":
        e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
        inv = 1.0 / (1.0 + e)
        f = np.where(x >= 0, inv, e * inv)
        return f, e * inv * inv
    e = np.exp(-2.0 * np.abs(x))
    inv = 1.0 / (1.0 + e)
    return np.tanh(x), 4.0 * e * inv * inv


def derivative_from_output(h, activation):
    """σ'(x) computed from h = σ(x), same shape and dtype as h (as the backward kernel does)."""
    check(activation)
    if activation == "tanh":
        return 1.0 - h * h
    if activation == "sigmoid":
        return h * (1.0 - h)
    if activation == "relu":
        return (h > 0).astype(h.dtype)
    return np.ones_like(h)
