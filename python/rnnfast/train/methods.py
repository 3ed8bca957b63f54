"""The paper's three training methods, named once.

======== ======================= ==============================
name     gradient clipping       regularizer Ω
======== ======================= ==============================
SGD      no                      no
SGD-C    yes (Algorithm 1)       no
SGD-CR   yes                     yes (weight α, 0 = off)
======== ======================= ==============================

``SGD-C``/``SGD-CR`` are the names shown everywhere (tables, files, help); the paper's
Table 1 spelling (``SGD+C``, ``SGD+CR``), lower case and the short forms (``c``, ``cr``)
are accepted as input.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Method", "METHODS", "canonical_method", "method"]


class Method(NamedTuple):
    """A training method: whether it clips the gradient norm and whether it adds Ω; the
    default clipping threshold and Ω weight of the paper's temporal-order experiments."""

    name: str
    clipping: bool
    omega: bool
    clip: float = 1.0
    alpha: float = 4.0


METHODS = {
    "SGD": Method("SGD", False, False),
    "SGD-C": Method("SGD-C", True, False),
    "SGD-CR": Method("SGD-CR", True, True),
}

_ALIASES = {
    "sgd": "SGD",
    "sgd-c": "SGD-C", "sgd+c": "SGD-C", "sgdc": "SGD-C", "c": "SGD-C",
    "sgd-cr": "SGD-CR", "sgd+cr": "SGD-CR", "sgdcr": "SGD-CR", "cr": "SGD-CR",
}


def canonical_method(name) -> str:
    """``"SGD"``, ``"SGD-C"`` or ``"SGD-CR"`` from any accepted spelling; ValueError else."""
    m = _ALIASES.get(str(name).strip().lower())
    if m is None:
        raise ValueError(f"method: expected one of {', '.join(METHODS)} (or sgd-c, SGD+CR, "
                         f"cr, ...), got {name!r}")
    return m


def method(name) -> Method:
    """The :class:`Method` of any accepted spelling."""
    return METHODS[canonical_method(name)]
