"""The per-update training history: a column store, and its JSON/CSV files.

Columns: ``update``, ``length`` (T of the batch), ``loss``, ``norm`` (pre-clip gradient norm),
``clipped``, ``action`` (ok / clipped / skipped / shrunk), ``omega``, ``alpha``, ``lr``,
``rho`` (spectral radius of W_rec, NaN between measurements), ``explosion`` (pre-clip norm
above a multiple of its running average) and ``seconds`` (wall time of the update).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from ..fileio import CheckpointError, atomic_write_text, json_safe

__all__ = ["History", "HistoryWriter", "COLUMNS", "ACTIONS", "write_history"]

ACTIONS = ("ok", "clipped", "skipped", "shrunk")

#: column name -> dtype
COLUMNS = {
    "update": np.int64,
    "length": np.int64,
    "loss": np.float64,
    "norm": np.float64,
    "clipped": np.int8,
    "action": np.int8,
    "omega": np.float64,
    "alpha": np.float64,
    "lr": np.float64,
    "rho": np.float64,
    "explosion": np.int8,
    "seconds": np.float64,
}


class History:
    """Column store of the per-update history (amortised O(1) appends)."""

    def __init__(self):
        self.generation = 0  # counts clear() and load_arrays(): rows replaced, not appended
        self.clear()

    def clear(self):
        """Drop every row (long runs fold what they need and clear to bound memory)."""
        self.generation += 1
        self._n = 0
        self._cols = {k: np.empty(1024, dt) for k, dt in COLUMNS.items()}

    def __len__(self):
        return self._n

    def append(self, row):
        """Append one row (a dict with every column)."""
        if self._n == len(self._cols["update"]):
            for k, a in self._cols.items():
                b = np.empty(2 * len(a), a.dtype)
                b[: self._n] = a[: self._n]
                self._cols[k] = b
        for k, a in self._cols.items():
            a[self._n] = row[k]
        self._n += 1

    def column(self, name):
        """A view of one column, (n,)."""
        return self._cols[name][: self._n]

    __getitem__ = column

    @property
    def columns(self):
        return tuple(COLUMNS)

    def arrays(self):
        """dict name -> copy of each column."""
        return {k: self.column(k).copy() for k in COLUMNS}

    def load_arrays(self, arrays):
        """Replace the rows by ``arrays`` (validated first: every column, equal lengths)."""
        if not isinstance(arrays, dict) or "update" not in arrays:
            raise CheckpointError("history: column 'update' is missing")
        n = len(arrays["update"])
        for k, dt in COLUMNS.items():
            a = arrays.get(k)
            if not isinstance(a, np.ndarray) or a.shape != (n,):
                raise CheckpointError(f"history column {k!r} is missing or has the wrong shape")
            if a.dtype != np.dtype(dt):
                raise CheckpointError(f"history column {k!r} has dtype {a.dtype}, expected "
                                      f"{np.dtype(dt)}")
        cols = {k: np.empty(max(1024, n), dt) for k, dt in COLUMNS.items()}
        for k in COLUMNS:
            cols[k][:n] = arrays[k]
        self._cols, self._n = cols, n
        self.generation += 1

    def rows(self):
        """Rows as dicts of Python values (action by name, clipped/explosion as bool, NaN None)."""
        cols = self.lists()
        return [{k: cols[k][i] for k in COLUMNS} for i in range(self._n)]

    def lists(self):
        """dict name -> list of Python values (action by name, flags as bool, NaN as None)."""
        out = {}
        for k in COLUMNS:
            v = self.column(k).tolist()
            if k == "action":
                v = [ACTIONS[a] for a in v]
            elif k in ("clipped", "explosion"):
                v = [bool(a) for a in v]
            elif COLUMNS[k] is np.float64:
                v = [None if math.isnan(a) else a for a in v]
            out[k] = v
        return out


def _csv_text(history, start=0):
    """Rows ``start..`` of ``history`` as CSV lines (floats as ``repr``: exact, ``nan``/``inf``
    spelled as Python does; no cell needs quoting)."""
    cols = []
    for k, dt in COLUMNS.items():
        v = history.column(k)[start:].tolist()
        if k == "action":
            v = [ACTIONS[a] for a in v]
        cols.append(map(repr if dt is np.float64 else str, v))
    return "".join([",".join(row) + "\n" for row in zip(*cols)])


class HistoryWriter:
    """``<prefix>.json`` (``{"columns", "validation", "summary"}``) and ``<prefix>.csv`` (one row
    per update) of one run, written again at every :meth:`write`.

    Both cost the rows added since the last write, not the whole history (a full write of 300k
    rows took 7.4 s). The JSON file is rewritten atomically from each column's text, which is
    kept and extended by the new rows. The CSV file is appended to when it is still the one
    this writer wrote (same size). When the history was cleared or reloaded since, or after
    :meth:`reset`, both are written anew (the CSV atomically). A crash in the middle of an
    append can leave a partial last CSV line; resuming from the checkpoint rewrites the file.
    """

    def __init__(self, prefix):
        self.prefix = os.fspath(prefix)
        self.reset()

    def reset(self):
        """Write both files anew at the next :meth:`write` (e.g. after restoring a checkpoint,
        whose history may be shorter than the files')."""
        self._rows, self._size, self._generation = 0, None, None
        self._json = {k: "" for k in COLUMNS}  # each column's JSON list, without brackets

    def write(self, history, *, validations=(), summary=None):
        n = len(history)
        if not (self._generation == history.generation and self._rows <= n):
            self.reset()  # rows replaced, not appended: everything anew
        start, texts = self._rows, dict(self._json)  # kept only once both files are written
        for k in COLUMNS:
            v = history.column(k)[start:]
            if k == "action":
                v = [ACTIONS[a] for a in v.tolist()]
            text = json.dumps(json_safe(v), allow_nan=False)[1:-1]
            if text:
                texts[k] += (", " + text) if texts[k] else text
        columns = ", ".join(f"{json.dumps(k)}: [{texts[k]}]" for k in COLUMNS)
        atomic_write_text(self.prefix + ".json",
                          f'{{"columns": {{{columns}}}, "validation": '
                          f"{json.dumps(json_safe(list(validations)), allow_nan=False)}, "
                          f'"summary": {json.dumps(json_safe(summary or {}), allow_nan=False)}}}\n')
        path = self.prefix + ".csv"
        try:
            on_disk = os.path.getsize(path)
        except OSError:
            on_disk = None
        if self._size is not None and on_disk == self._size:
            with open(path, "a", encoding="utf-8", newline="") as f:
                f.write(_csv_text(history, start))
                f.flush()
                os.fsync(f.fileno())
        else:
            atomic_write_text(path, ",".join(COLUMNS) + "\n" + _csv_text(history))
        self._rows, self._size = n, os.path.getsize(path)
        self._generation, self._json = history.generation, texts


def write_history(prefix, history, *, validations=(), summary=None):
    """Write ``<prefix>.json`` and ``<prefix>.csv`` once, atomically (see
    :class:`HistoryWriter`)."""
    HistoryWriter(prefix).write(history, validations=validations, summary=summary)
