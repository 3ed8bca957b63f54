"""Files written atomically and read back with validation: the one implementation used by
models, checkpoints, histories and results.

* :func:`atomic_write` (and its text / JSON forms): temporary file in the same folder, fsync,
  ``os.replace``; a crash leaves the previous file intact and no temporary file behind; the
  file gets the usual mode of a new file (0o666 less the umask).
* :func:`write_npz` / :func:`read_npz`: arrays plus a JSON header (``format``, ``version``,
  ...) in one ``.npz``; reading checks the whole archive and its format name.
* :func:`json_safe`: strict-JSON values (NaN -> null, ±inf -> "inf"/"-inf").
* :class:`LoadLimits`: the resource limits of the loaders of untrusted files (bytes read or
  decompressed, elements, nesting depth); exceeding one raises :class:`LimitError`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["CheckpointError", "LimitError", "LoadLimits", "atomic_write", "atomic_write_text",
           "atomic_write_json", "json_safe", "write_npz", "read_npz", "read_bytes", "csv_text",
           "NPZ_MAX_BYTES"]


class CheckpointError(ValueError):
    """A model or checkpoint file is corrupt, truncated or does not fit."""


class LimitError(ValueError):
    """A file exceeds a resource limit of its loader (:class:`LoadLimits`); nothing large was
    allocated."""


@dataclass(frozen=True)
class LoadLimits:
    """Resource limits of a loader of untrusted data files. Each bounds the memory a file can
    make the loader use, whatever the file claims; exceeding one raises :class:`LimitError`
    naming the file, the limit and how to raise it.

    Attributes
    ----------
    max_bytes : int
        Bytes read from a file, and bytes decompressed from it (``.mat``). Default 64 MiB
        (the largest real data file, MuseData's pickle, has 5.8 MB; its ``.mat``
        decompresses to 35 MB).
    max_elements : int
        Elements a data set may expand to: time steps plus notes of a music pickle, counted
        with repetition (a list referenced twice counts twice), or time steps of a ``.mat``.
        Default 5·10⁶ (MuseData: 1.75·10⁶).
    max_depth : int
        Containers nested in containers in a pickle (the music format has 4). Default 16.
    """

    max_bytes: int = 64 << 20
    max_elements: int = 5_000_000
    max_depth: int = 16

    def __post_init__(self):
        for k in ("max_bytes", "max_elements", "max_depth"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k}: expected a positive int, got {v!r}")


def read_bytes(path, max_bytes: int) -> bytes:
    """The content of ``path``, refusing (LimitError) a file of more than ``max_bytes``
    before reading it."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise LimitError(f"{path}: {size} bytes, more than max_bytes={max_bytes} "
                             "(pass limits=LoadLimits(max_bytes=...) to read it)")
        data = f.read(size + 1)  # read() allocates what it is asked for: ask for the size
    if len(data) > max_bytes:  # it grew while read
        raise LimitError(f"{path}: more than max_bytes={max_bytes} bytes")
    return data


#: The most bytes :func:`read_npz` decompresses from one file unless told otherwise.
NPZ_MAX_BYTES = 4 << 30


def _current_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once: os.umask is process-wide, not thread-safe to probe


def atomic_write(path, write):
    """Write a file atomically: ``write(fileobj)`` into a temporary file in the
    same directory, flush and fsync it, then ``os.replace`` it over ``path``.

    A crash or exception at any point leaves any previous file at ``path``
    intact; the temporary file is removed on error. The file gets the usual
    permissions of a new file (``0o666`` less the umask), not the private mode
    of a temporary file.

    Parameters
    ----------
    path : str or os.PathLike
    write : callable(fileobj)
        Writes the content to a binary file object.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if os.chmod in os.supports_fd:
                os.chmod(f.fileno(), 0o666 & ~_UMASK)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename durable; not possible on every platform
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path, text: str) -> str:
    """:func:`atomic_write` of ``text`` as UTF-8; returns the path."""
    path = os.fspath(path)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def atomic_write_json(path, obj, *, indent=1) -> str:
    """:func:`atomic_write_text` of ``json_safe(obj)`` as strict JSON (``indent=None``: one
    line, for large documents); returns the path."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False)
                             + "\n")


def json_safe(x):
    """Recursively turn ``x`` into strict-JSON values.

    NaN becomes ``None``, ±inf the strings ``"inf"``/``"-inf"``, NumPy scalars and arrays
    Python scalars and lists, tuples lists, mapping keys strings; any other type raises
    ``TypeError``.
    """
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        x = float(x)
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "biu":
            return x.tolist()
        if x.dtype.kind == "f" and x.ndim == 1:  # a column at once; non-finite entries one by one
            out = x.tolist()
            for i in np.flatnonzero(~np.isfinite(x)).tolist():
                out[i] = json_safe(out[i])
            return out
        return json_safe(x.tolist())
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    raise TypeError(f"value of type {type(x).__name__} is not JSON-serialisable: {x!r}")


def write_npz(path, arrays, meta):
    """Atomically write ``arrays`` (dict name -> ndarray) and a JSON ``meta`` dict."""
    payload = dict(arrays)
    if "__meta__" in payload:
        raise ValueError("'__meta__' is a reserved array name")
    payload["__meta__"] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, **payload))


def _check_npz_sizes(z: zipfile.ZipFile, path: str, max_bytes: int) -> None:
    """Refuse an archive whose members decompress to more than ``max_bytes`` in all, or whose
    array header claims more data than its member holds (NumPy allocates the claimed array
    before reading it), before anything is decompressed."""
    total = sum(info.file_size for info in z.infolist())
    if total > max_bytes:
        raise CheckpointError(f"{path!r}: its members decompress to {total} bytes, more than "
                              f"max_bytes={max_bytes}")
    for info in z.infolist():
        if not info.filename.endswith(".npy"):
            continue
        with z.open(info) as m:
            version = np.lib.format.read_magic(m)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(m)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(m)
        if math.prod(shape) * dtype.itemsize > info.file_size:
            raise CheckpointError(f"{path!r}: member {info.filename!r} claims an array of "
                                  f"shape {shape} {dtype}, more than its {info.file_size} bytes")


def read_npz(path, expected_format, *, max_bytes: int = NPZ_MAX_BYTES):
    """Read an archive written by :func:`write_npz`, fully, with clear errors.

    ``max_bytes`` bounds the bytes decompressed: a zip bomb raises CheckpointError before
    anything is decompressed.

    Returns
    -------
    (meta, arrays) : (dict, dict name -> ndarray)

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    CheckpointError
        It is not a readable archive (corrupt, truncated), has no valid header, or
        its format is not ``expected_format`` (None: any format; the caller checks it).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    try:
        with open(path, "rb") as fh:
            if zipfile.is_zipfile(fh):
                fh.seek(0)
                with zipfile.ZipFile(fh) as zf:
                    _check_npz_sizes(zf, path, max_bytes)
            fh.seek(0)
            z = np.load(fh, allow_pickle=False)
            if not hasattr(z, "files"):  # a plain .npy array, not an archive
                raise CheckpointError(f"{path!r} is a single array, not an rnnfast .npz archive")
            with z:
                arrays = {k: z[k] for k in z.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, NotImplementedError,
            RuntimeError, zlib.error, MemoryError) as e:
        # NotImplementedError: an unknown compression method; RuntimeError: encrypted member
        raise CheckpointError(
            f"{path!r} is not a readable rnnfast file (corrupt or truncated?): {e}"
        ) from e
    if "__meta__" not in arrays:
        raise CheckpointError(f"{path!r} has no rnnfast header ('__meta__' missing)")
    try:
        meta = json.loads(str(arrays.pop("__meta__")))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path!r} has an unreadable header: {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path!r} has a header that is not a JSON object")
    if expected_format is not None and meta.get("format") != expected_format:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path!r} is not a {expected_format} file (format {got!r})")
    return meta, arrays


def csv_text(rows, columns) -> str:
    """CSV text of ``rows`` (dicts) in ``columns`` order: None as empty, floats to 6 digits."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        out = []
        for k in columns:
            v = r.get(k)
            if v is None:
                out.append("")
            elif isinstance(v, float):
                out.append(f"{v:.6g}")
            else:
                out.append(str(v))
        w.writerow(out)
    return buf.getvalue()
