"""The one on-disk checkpoint format of every training in rnnfast.

A checkpoint is a nested state (dicts, lists, JSON scalars and NumPy arrays anywhere) written
as one ``.npz``: the arrays as members, the rest as a JSON header whose array leaves are
references ``{"__array__": "<member>"}``. The header carries ``format`` (``FORMAT``) and
``version`` (``VERSION``). Writing is atomic (:func:`rnnfast.fileio.atomic_write`); reading
checks the archive, the format name, the version and every array reference before it returns,
so a caller can validate the whole state before touching a live object.
"""

from __future__ import annotations

import os

import numpy as np

from ..fileio import CheckpointError, json_safe, read_npz, write_npz

__all__ = ["FORMAT", "VERSION", "save_checkpoint", "load_checkpoint", "CheckpointError"]

FORMAT = "rnnfast.Checkpoint"
VERSION = 2
_REF = "__array__"


def _split(state, arrays, path):
    """JSON-safe copy of ``state`` with every ndarray moved into ``arrays``."""
    if isinstance(state, np.ndarray):
        name = path or "array"
        if name in arrays:
            raise ValueError(f"checkpoint: two arrays at {name!r}")
        arrays[name] = state
        return {_REF: name}
    if isinstance(state, dict):
        if _REF in state:
            raise ValueError(f"checkpoint: {_REF!r} is a reserved key")
        return {str(k): _split(v, arrays, f"{path}.{k}" if path else str(k))
                for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_split(v, arrays, f"{path}.{i}") for i, v in enumerate(state)]
    return json_safe(state)


def _join(meta, arrays, src, used):
    if isinstance(meta, dict):
        if set(meta) == {_REF}:
            name = meta[_REF]
            if not isinstance(name, str) or name not in arrays:
                raise CheckpointError(f"{src}: array {name!r} is referenced but missing")
            used.add(name)
            return arrays[name]
        return {k: _join(v, arrays, src, used) for k, v in meta.items()}
    if isinstance(meta, list):
        return [_join(v, arrays, src, used) for v in meta]
    return meta


def save_checkpoint(path, state: dict) -> str:
    """Write ``state`` (a dict) to ``path`` atomically; returns the path."""
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict, got {type(state).__name__}")
    arrays = {}
    body = _split(state, arrays, "")
    write_npz(path, arrays, {"format": FORMAT, "version": VERSION, "state": body})
    return os.fspath(path)


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError
        Not a readable archive, another format (an rnnfast file of another kind, or a
        checkpoint of an earlier rnnfast version: both are named), or an inconsistent one.
    """
    src = repr(os.fspath(path))
    meta, arrays = read_npz(path, None)
    fmt, version = meta.get("format"), meta.get("version")
    if fmt != FORMAT:
        raise CheckpointError(f"{src} is a {fmt!r} file, not a {FORMAT} (version {VERSION}); "
                              "files of earlier rnnfast versions cannot be resumed by this one")
    if version != VERSION:
        raise CheckpointError(f"{src} is a {FORMAT} of version {version!r}; this rnnfast reads "
                              f"version {VERSION}")
    if not isinstance(meta.get("state"), dict):
        raise CheckpointError(f"{src}: the header has no state")
    used = set()
    state = _join(meta["state"], arrays, src, used)
    extra = sorted(set(arrays) - used)
    if extra:
        raise CheckpointError(f"{src}: arrays {extra[:5]} are not referenced by the header")
    return state
