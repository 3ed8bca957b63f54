"""The one minibatch type: what every data source (tasks, music, PTB characters, a user's
list) gives the training engine and the model."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

__all__ = ["Batch", "as_batch"]


class Batch(NamedTuple):
    """One time-major minibatch.

    Attributes
    ----------
    u : ndarray (T, B, I)
        Inputs (float, or int64 symbol indices where a source says so).
    targets : ndarray
        softmax_ce: int64 classes, (B,) read at the last step or (T, B) at every step;
        linear_mse / sigmoid_bce: float (B, O) or (T, B, O).
    mask : ndarray (T, B) of bool, or None
        The steps whose cost counts (None: every step).
    reset : bool
        True: the sequences start here (from the model's initial state). False: they
        continue the previous batch's sequences (truncated BPTT: start from its final state).
    origin : Any
        Where the batch comes from, for the data source's own use (e.g. the pieces and start
        steps of music segments); the engine ignores it.
    """

    u: np.ndarray
    targets: np.ndarray
    mask: Optional[np.ndarray] = None
    reset: bool = True
    origin: Any = None


def as_batch(item) -> Batch:
    """A Batch from a Batch or a ``(u, targets[, mask])`` tuple; TypeError otherwise."""
    if isinstance(item, Batch):
        return item
    if isinstance(item, tuple) and len(item) in (2, 3):
        return Batch(*item)
    raise TypeError("a minibatch must be a rnnfast Batch or a tuple (u, targets[, mask]), "
                    f"got {type(item).__name__}")
