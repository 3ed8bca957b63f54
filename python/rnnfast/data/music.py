"""Polyphonic music data sets (Boulanger-Lewandowski et al., ICML 2012) as piano rolls.

Two on-disk formats are read:

* the standard pickles: a dict ``{'train', 'valid', 'test'}`` -> list of sequences ->
  list of time steps -> list of MIDI note numbers (ints). Pickles are untrusted input and
  are read through :class:`RestrictedUnpickler`, which refuses every global (class or
  function) a pickle may try to import, so only plain containers and numbers can appear;
* the equivalent MATLAB v5 ``.mat`` files (needs SciPy): keys ``traindata``,
  ``validdata``, ``testdata``, each a cell array of ``T x 88`` binary piano rolls whose
  column ``c`` is MIDI note ``c + 21``.

A piece is held as a boolean piano roll ``(T, 88)``: row ``t`` is time step ``t`` and
column ``k`` is the piano key with MIDI number ``k + 21`` (keys 21..108).

Files are untrusted: the loaders take :class:`rnnfast.fileio.LoadLimits` (bytes read or
decompressed, elements, nesting depth) and raise :class:`rnnfast.fileio.LimitError` (a
ValueError) before the memory a file claims is allocated.

Batches for a trainer come from :class:`MusicBatches` (or :meth:`MusicData.batches`).
"""
from __future__ import annotations

import contextlib
import gc
import io
import itertools
import os
import pickle
import re
import reprlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from ..fileio import LimitError, LoadLimits, read_bytes
from ..nn.batch import Batch

__all__ = [
    "N_KEYS", "LOWEST_NOTE", "HIGHEST_NOTE", "SPLITS", "MUSIC_FILES",
    "UnsafePickleError", "RestrictedUnpickler", "restricted_loads",
    "MusicData", "MusicBatch", "MusicBatches",
    "load_music", "load_music_pickle", "load_music_mat", "music_path",
    "notes_to_roll", "roll_to_notes",
]

N_KEYS = 88
LOWEST_NOTE = 21    # MIDI number of piano key 0 (A0)
HIGHEST_NOTE = 108  # MIDI number of piano key 87 (C8)
SPLITS = ("train", "valid", "test")

#: Data set name -> (pickle file name, .mat file name) as laid out in ``shared/data/music``.
MUSIC_FILES = {
    "JSB": ("JSB_Chorales.pickle", "JSB_Chorales.mat"),
    "Nottingham": ("Nottingham.pickle", "Nottingham.mat"),
    "MuseData": ("MuseData.pickle", "MuseData.mat"),
    "Piano-midi.de": ("Piano-midi.de.pickle", "Piano_midi.mat"),
}
_ALIASES = {re.sub(r"[^a-z0-9]", "", k.lower()): k for k in MUSIC_FILES}
_ALIASES.update({"jsbchorales": "JSB", "pianomidi": "Piano-midi.de"})

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------- pickles
@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic GC: building ~10^6 small lists otherwise triggers it constantly
    (it more than doubles the load time); reference counting still frees everything."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class UnsafePickleError(ValueError):
    """A pickle tried to import a global (class or function); it was refused unexecuted."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only plain containers and numbers.

    Every opcode that needs a class or function (``GLOBAL``, ``STACK_GLOBAL``, ``INST``,
    extension codes) goes through :meth:`find_class`, which always refuses, so ``REDUCE``,
    ``NEWOBJ`` and ``BUILD`` never receive a callable and nothing is imported or run.
    What can come out: dict, list, tuple, set, frozenset, int, float, bool, None, str,
    bytes, bytearray (bytes and sets only in protocols 3 and 4+, which have opcodes for
    them; older protocols build them through a global and are refused). Persistent ids
    and out-of-band buffers are refused as well. Python 2 ``str`` is decoded as latin-1.
    """

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise UnsafePickleError(
            f"refusing to load global {module}.{name}: only plain containers and numbers "
            "are allowed in a data pickle")

    def persistent_load(self, pid):
        raise UnsafePickleError(
            f"refusing persistent id {pid!r}: only plain containers and numbers are allowed")


_repr = reprlib.Repr()  # error messages show at most a few levels and items of a value
_repr.maxlevel, _repr.maxlist, _repr.maxstring, _repr.maxother = 3, 4, 40, 40
_CONTAINERS = (list, tuple, dict, set, frozenset)


def _check_size(obj, source: str, limits: LoadLimits) -> None:
    """Refuse ``obj`` when its containers nest deeper than ``limits.max_depth`` or hold more
    than ``limits.max_elements`` entries in all, counted with repetition (what converting it
    allocates: a list referenced a thousand times counts a thousand times). Iterative: no
    recursion, and it stops at the first limit crossed."""
    total = 0
    stack = [(obj, 1)]
    while stack:
        c, depth = stack.pop()
        if depth > limits.max_depth:
            raise LimitError(f"{source}: containers nested deeper than max_depth="
                             f"{limits.max_depth}")
        items = list(c.keys()) + list(c.values()) if isinstance(c, dict) else c
        total += len(items)
        if total > limits.max_elements:
            raise LimitError(f"{source}: more than max_elements={limits.max_elements} "
                             "elements (steps and notes, repeated references counted each "
                             "time); pass limits=LoadLimits(max_elements=...) to read it")
        if not set(map(type, items)).isdisjoint(_CONTAINERS):
            stack.extend((x, depth + 1) for x in items if isinstance(x, _CONTAINERS))


def restricted_loads(data: bytes, *, source: str = "<bytes>", limits: Optional[LoadLimits] = None):
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    Parameters
    ----------
    data : bytes
        The whole pickle; trailing bytes after the pickle's STOP are an error.
    source : str
        Name used in error messages (usually the file path).
    limits : LoadLimits, optional
        ``max_bytes`` of ``data``; ``max_depth`` and ``max_elements`` of the object it holds
        (checked before anything expands it). Default: ``LoadLimits()``.

    Raises
    ------
    UnsafePickleError
        The pickle tried to import a global; the message names it (e.g. ``posix.system``).
    LimitError
        A limit is exceeded.
    ValueError
        Truncated, corrupt or non-pickle data.
    """
    limits = LoadLimits() if limits is None else limits
    if len(data) > limits.max_bytes:
        raise LimitError(f"{source}: {len(data)} bytes, more than max_bytes={limits.max_bytes}")
    # A buffered reader lets the C unpickler prefetch with peek() (3x faster than BytesIO);
    # reads stay exact, so tell() is the end of the pickle.
    f = io.BufferedReader(io.BytesIO(data), buffer_size=1 << 20)
    try:
        obj = RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{source}: {e}") from None
    except EOFError:
        raise ValueError(f"{source}: pickle data is truncated (ran out of input)") from None
    except Exception as e:  # UnpicklingError, ValueError, KeyError, IndexError, ... from corrupt data
        kind = "truncated or corrupt" if "truncated" in str(e) else "not a valid pickle"
        raise ValueError(f"{source}: {kind}: {type(e).__name__}: {e}") from None
    if f.tell() != len(data):
        raise ValueError(f"{source}: {len(data) - f.tell()} bytes of trailing data after the pickle")
    _check_size(obj, source, limits)
    return obj


# --------------------------------------------------------------------------- conversions
def notes_to_roll(steps: Sequence[Sequence[int]]) -> np.ndarray:
    """Convert one piece given as time steps of MIDI notes into a piano roll.

    Parameters
    ----------
    steps : sequence of sequences of int
        ``steps[t]`` lists the MIDI notes sounding at time step ``t`` (21..108).

    Returns
    -------
    roll : ndarray of bool, shape (T, 88)
        ``roll[t, n - 21]`` is True when note ``n`` sounds at step ``t``.
    """
    return _split_to_rolls([steps], "<notes>", "piece")[0]


def roll_to_notes(roll: np.ndarray) -> list:
    """Inverse of :func:`notes_to_roll`.

    Parameters
    ----------
    roll : array_like, shape (T, 88)
        Binary piano roll.

    Returns
    -------
    list of list of int
        Sorted MIDI notes per time step.
    """
    roll = np.asarray(roll)
    if roll.ndim != 2 or roll.shape[1] != N_KEYS:
        raise ValueError(f"roll: expected shape (T, {N_KEYS}), got {roll.shape}")
    t, k = np.nonzero(roll)
    notes = (k + LOWEST_NOTE).tolist()
    bounds = np.searchsorted(t, np.arange(roll.shape[0] + 1)).tolist()
    return [notes[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _split_to_rolls(seqs, source: str, split: str) -> list:
    """Validate one split (list of sequences of lists of notes) and build its rolls."""
    where = f"{source}: split {split!r}"
    if not isinstance(seqs, (list, tuple)):
        raise ValueError(f"{where} is a {type(seqs).__name__}, expected a list of sequences")
    for i, seq in enumerate(seqs):
        if not isinstance(seq, (list, tuple)):
            raise ValueError(f"{where} sequence {i} is a {type(seq).__name__}, "
                             "expected a list of time steps")
        if len(seq) == 0:
            raise ValueError(f"{where} sequence {i} has no time steps")
    seq_len = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    seq_start = np.concatenate([[0], np.cumsum(seq_len)])

    def locate_step(s: int) -> str:
        i = int(np.searchsorted(seq_start, s, side="right")) - 1
        return f"{where} sequence {i} time step {s - int(seq_start[i])}"

    steps = list(itertools.chain.from_iterable(seqs))
    if set(map(type, steps)) - {list, tuple}:
        s = next(k for k, st in enumerate(steps) if not isinstance(st, (list, tuple)))
        raise ValueError(f"{locate_step(s)} is a {type(steps[s]).__name__}, "
                         "expected a list of MIDI note ints")
    counts = np.fromiter(map(len, steps), dtype=np.int64, count=len(steps))
    step_start = np.concatenate([[0], np.cumsum(counts)])
    flat = list(itertools.chain.from_iterable(steps))

    def locate_note(k: int) -> str:
        return locate_step(int(np.searchsorted(step_start, k, side="right")) - 1)

    if set(map(type, flat)) - {int}:
        k = next(k for k, n in enumerate(flat) if type(n) is not int)
        raise ValueError(f"{locate_note(k)}: note {_repr.repr(flat[k])} is a "
                         f"{type(flat[k]).__name__}, expected an int MIDI note number")
    try:
        notes = np.array(flat, dtype=np.int64)
    except OverflowError:
        k = next(k for k, n in enumerate(flat) if not -2**63 <= n < 2**63)
        raise ValueError(f"{locate_note(k)}: note {flat[k]} outside the 88 piano keys "
                         f"{LOWEST_NOTE}..{HIGHEST_NOTE}") from None
    bad = (notes < LOWEST_NOTE) | (notes > HIGHEST_NOTE)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"{locate_note(k)}: note {int(notes[k])} outside the 88 piano keys "
                         f"{LOWEST_NOTE}..{HIGHEST_NOTE}")
    rolls = np.zeros((len(steps), N_KEYS), dtype=bool)
    rolls[np.repeat(np.arange(len(steps)), counts), notes - LOWEST_NOTE] = True
    return [rolls[a:b] for a, b in zip(seq_start[:-1].tolist(), seq_start[1:].tolist())]


# --------------------------------------------------------------------------- data set
@dataclass(frozen=True)
class MusicData:
    """One polyphonic music data set as piano rolls.

    Attributes
    ----------
    name : str
        Data set name (file stem unless given).
    path : str
        File it was read from.
    train, valid, test : list of ndarray of bool, each shape (T_i, 88)
        Pieces of each split; column ``k`` is MIDI note ``k + 21``.
    """

    name: str
    path: str
    train: list
    valid: list
    test: list

    def split(self, split: str) -> list:
        """Pieces of ``split`` (one of ``'train'``, ``'valid'``, ``'test'``)."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        return getattr(self, split)

    def n_steps(self, split: str) -> int:
        """Total number of time steps in ``split``."""
        return int(sum(r.shape[0] for r in self.split(split)))

    def note_range(self) -> tuple:
        """(lowest, highest) MIDI note sounding anywhere in the data set."""
        any_key = np.zeros(N_KEYS, dtype=bool)
        for s in SPLITS:
            for r in self.split(s):
                any_key |= r.any(axis=0)
        keys = np.flatnonzero(any_key)
        if keys.size == 0:
            raise ValueError(f"{self.name}: no note sounds anywhere")
        return int(keys[0]) + LOWEST_NOTE, int(keys[-1]) + LOWEST_NOTE

    def batches(self, split: str, batch_size: int, **kwargs) -> "MusicBatches":
        """:class:`MusicBatches` over the pieces of ``split``; keywords are passed on."""
        return MusicBatches(self.split(split), batch_size, **kwargs)


def load_music_pickle(path: PathLike, *, name: Optional[str] = None,
                      limits: Optional[LoadLimits] = None) -> MusicData:
    """Load a Boulanger-Lewandowski music pickle safely.

    Parameters
    ----------
    path : str or path-like
        Pickle of ``{'train','valid','test'}`` -> sequences -> time steps -> MIDI note ints.
        Extra top-level keys are ignored.
    name : str, optional
        Data set name; defaults to the file stem.
    limits : LoadLimits, optional
        Resource limits (default ``LoadLimits()``): the file's size (``max_bytes``; the
        unpickled objects take at most ~64 bytes per byte of pickle), the nesting depth and
        the steps plus notes the pieces expand to (``max_elements``; the rolls and the
        conversion take at most ~120 bytes per element, 0.6 GB at the default).

    Raises
    ------
    UnsafePickleError
        The pickle tries to import a global; nothing is executed.
    LimitError
        A limit is exceeded (before the data are expanded).
    ValueError
        Truncated/corrupt file, wrong top-level type, missing split, wrong nesting,
        non-int notes or notes outside 21..108; the message names the file and position.
    """
    path = os.fspath(path)
    limits = LoadLimits() if limits is None else limits
    raw = read_bytes(path, limits.max_bytes)
    with _gc_paused():
        obj = restricted_loads(raw, source=path, limits=limits)
        rolls = _pickle_rolls(obj, path)
    return MusicData(name or Path(path).stem, path, **rolls)


def _pickle_rolls(obj, path: str) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: top level is a {type(obj).__name__}, expected a dict with "
                         f"keys {list(SPLITS)}")
    missing = [s for s in SPLITS if s not in obj]
    if missing:
        raise ValueError(f"{path}: missing split(s) {missing}; keys found: "
                         f"{sorted(map(_repr.repr, obj))[:20]}")
    return {s: _split_to_rolls(obj[s], path, s) for s in SPLITS}


def _mat_decompressed_bytes(path: str, max_bytes: int) -> int:
    """Bytes a MATLAB v5 file holds once its compressed elements are inflated, counted by
    inflating them in bounded pieces (nothing kept); LimitError as soon as the count passes
    ``max_bytes``. Files that are not v5 are left to scipy's reader."""
    raw = read_bytes(path, max_bytes)
    if len(raw) < 128 or raw[126:128] not in (b"IM", b"MI"):
        return len(raw)
    order = "<" if raw[126:128] == b"IM" else ">"
    total, pos = 128, 128
    while pos + 8 <= len(raw):
        kind, nbytes = struct.unpack(order + "II", raw[pos:pos + 8])
        if kind >> 16:  # small data element: the data sit in the tag
            pos += 8
            total += 8
            continue
        body = raw[pos + 8:pos + 8 + nbytes]
        if kind == 15:  # miCOMPRESSED
            d = zlib.decompressobj()
            chunk = body
            try:
                while chunk:
                    total += len(d.decompress(chunk, 1 << 20))
                    if total > max_bytes:
                        raise LimitError(f"{path}: decompresses to more than max_bytes="
                                         f"{max_bytes} bytes (pass limits=LoadLimits("
                                         "max_bytes=...) to read it)")
                    chunk = d.unconsumed_tail
            except zlib.error as e:
                raise ValueError(f"{path}: corrupt compressed data: {e}") from None
            pos += 8 + nbytes
        else:
            total += 8 + nbytes
            pos += 8 + nbytes + (-nbytes) % 8
    return total


def load_music_mat(path: PathLike, *, name: Optional[str] = None,
                   limits: Optional[LoadLimits] = None) -> MusicData:
    """Load the ``.mat`` version of a music data set (needs SciPy).

    Parameters
    ----------
    path : str or path-like
        MATLAB v5 file with cell arrays ``traindata``, ``validdata``, ``testdata`` of
        ``T x 88`` binary piano rolls (column ``c`` = MIDI note ``c + 21``).
    name : str, optional
        Data set name; defaults to the file stem.
    limits : LoadLimits, optional
        ``max_bytes`` bounds the file and what it decompresses to (checked by inflating it in
        bounded pieces before SciPy reads it); ``max_elements`` the time steps of all pieces.

    Raises
    ------
    ImportError
        SciPy is not installed.
    LimitError
        A limit is exceeded (a decompression bomb: before it is inflated in memory).
    ValueError
        Unreadable/truncated file, missing key, or a cell that is not a binary ``T x 88`` roll.
    """
    try:
        import scipy.io
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading .mat music files needs SciPy (pip install scipy); "
                          "the .pickle files need nothing extra") from e
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    limits = LoadLimits() if limits is None else limits
    _mat_decompressed_bytes(path, limits.max_bytes)
    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError as e:
        raise ValueError(f"{path}: unsupported .mat version (v7.3/HDF5 is not read; "
                         f"save as v5): {e}") from None
    except Exception as e:
        raise ValueError(f"{path}: not a readable MATLAB .mat file "
                         f"(truncated or wrong format): {type(e).__name__}: {e}") from None
    rolls = {}
    steps = 0
    for split in SPLITS:
        key = split + "data"
        where = f"{path}: {key}"
        if key not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise ValueError(f"{path}: missing key {key!r}; keys found: {found}")
        cell = mat[key]
        if not (isinstance(cell, np.ndarray) and cell.dtype == object):
            raise ValueError(f"{where} is not a cell array of piano rolls")
        pieces = []
        for i, a in enumerate(cell.ravel(order="F")):
            if not (isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[1] == N_KEYS
                    and a.shape[0] > 0 and (a.dtype.kind in "biuf")):
                shape = getattr(a, "shape", None)
                raise ValueError(f"{where} piece {i}: expected a non-empty numeric T x {N_KEYS} "
                                 f"piano roll, got {type(a).__name__} of shape {shape}")
            if not np.all((a == 0) | (a == 1)):
                raise ValueError(f"{where} piece {i}: piano roll values must be 0 or 1")
            pieces.append(a.astype(bool))
            steps += a.shape[0]
            if steps > limits.max_elements:
                raise LimitError(f"{path}: more than max_elements={limits.max_elements} "
                                 "time steps")
        rolls[split] = pieces
    return MusicData(name or Path(path).stem, path, **rolls)


def load_music(path: PathLike, *, name: Optional[str] = None,
               limits: Optional[LoadLimits] = None) -> MusicData:
    """Load a music data set from a ``.pickle``/``.pkl`` or ``.mat`` file (by suffix).

    See :func:`load_music_pickle` and :func:`load_music_mat` (``limits``).
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".pickle", ".pkl"):
        return load_music_pickle(path, name=name, limits=limits)
    if suffix == ".mat":
        return load_music_mat(path, name=name, limits=limits)
    raise ValueError(f"path: expected a .pickle, .pkl or .mat file, got {os.fspath(path)!r}")


def music_path(data_dir: PathLike, dataset: str, fmt: str = "pickle") -> Path:
    """Path of a named data set under ``data_dir``.

    Parameters
    ----------
    data_dir : str or path-like
        The data root (holding ``music/``) or the ``music`` folder itself.
    dataset : str
        ``JSB``, ``Nottingham``, ``MuseData`` or ``Piano-midi.de`` (case, dashes, dots and
        underscores ignored; ``JSB_Chorales`` and ``Piano_midi`` also accepted).
    fmt : {'pickle', 'mat'}

    Returns
    -------
    pathlib.Path (not checked for existence)
    """
    key = _ALIASES.get(re.sub(r"[^a-z0-9]", "", dataset.lower()))
    if key is None:
        raise ValueError(f"dataset: expected one of {list(MUSIC_FILES)}, got {dataset!r}")
    if fmt not in ("pickle", "mat"):
        raise ValueError(f"fmt: expected 'pickle' or 'mat', got {fmt!r}")
    root = Path(data_dir)
    if (root / "music").is_dir():
        root = root / "music"
    return root / MUSIC_FILES[key][0 if fmt == "pickle" else 1]


# --------------------------------------------------------------------------- batches
#: Deprecated alias: music batches are :class:`rnnfast.nn.batch.Batch` es whose ``origin`` is
#: ``{"pieces": (B,) piece index in the split, "starts": (B,) step of the piece targeted at
#: row 0}``.
MusicBatch = Batch


class MusicBatches:
    """Padded, masked minibatches of whole pieces or fixed-length segments.

    The task is next-step prediction: at step ``t`` the network reads roll ``t-1`` and
    predicts roll ``t`` with 88 sigmoid outputs. With ``predict_first=True`` (default) the
    first step of every piece is predicted too, from an all-zero input, so a split yields
    exactly one target per time step of its pieces (the paper's "per time step" count);
    with ``predict_first=False`` a piece of length ``T`` gives ``T - 1`` targets.

    Examples are whole pieces (``segment_length=None``) or consecutive segments of
    ``segment_length`` targets (the last one of a piece shorter). Segments never cross
    pieces. Each example starts from a fresh (zero) state: ``carries_state`` is False,
    so a trainer resets ``h0`` for every batch. Iterating gives one epoch; with ``rng``
    each epoch uses a fresh permutation of the examples (else their natural order).

    Parameters
    ----------
    rolls : sequence of ndarray, each shape (T_i, 88)
        Binary piano rolls (e.g. ``MusicData.train``).
    batch_size : int
        Examples per batch (B); the last batch may be smaller unless ``drop_last``.
    segment_length : int, optional
        Targets per segment; None for whole pieces.
    rng : numpy.random.Generator, optional
        Shuffles the examples each epoch.
    predict_first : bool
        Predict each piece's first step from a zero input (see above).
    dtype : numpy float dtype
        dtype of ``u`` and ``targets``.
    drop_last : bool
        Drop a final batch with fewer than ``batch_size`` examples.

    Attributes
    ----------
    carries_state : bool
        Always False: no state flows between batches.
    n_examples : int
        Examples (pieces or segments) per epoch.
    n_targets : int
        Predicted time steps per epoch (all examples, before ``drop_last``).

    Examples
    --------
    ::

        batches = music.batches("train", 100, segment_length=200, rng=rng)
        for batch in batches:                     # one epoch, fresh shuffle
            fwd = rnnfast.forward(batch.u, W_in, W_rec, b, activation="sigmoid")  # h0 = 0
            ...  # sigmoid readout of fwd.h vs batch.targets, cost on batch.mask steps
        total, n = 0.0, 0
        for batch in music.batches("test", 100):  # whole pieces
            t, c = music_nll(probs, batch.targets, batch.mask, reduce="sum")
            total, n = total + t, n + c
        nll_per_step = total / n
    """

    carries_state = False

    def __init__(self, rolls: Sequence[np.ndarray], batch_size: int, *,
                 segment_length: Optional[int] = None,
                 rng: Optional[np.random.Generator] = None, predict_first: bool = True,
                 dtype=np.float64, drop_last: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if segment_length is not None and (isinstance(segment_length, bool) or not isinstance(
                segment_length, (int, np.integer)) or segment_length < 1):
            raise ValueError(f"segment_length: expected a positive int or None, "
                             f"got {segment_length!r}")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"dtype: expected a float dtype, got {self.dtype}")
        self.rolls = list(rolls)
        for i, r in enumerate(self.rolls):
            if not (isinstance(r, np.ndarray) and r.ndim == 2 and r.shape[1] == N_KEYS):
                raise ValueError(f"rolls[{i}]: expected an array of shape (T, {N_KEYS}), "
                                 f"got {getattr(r, 'shape', type(r).__name__)}")
        self.batch_size = int(batch_size)
        self.segment_length = None if segment_length is None else int(segment_length)
        self.rng = rng
        self.predict_first = bool(predict_first)
        self.drop_last = bool(drop_last)
        off = 1 if self.predict_first else 0
        n_tgt = np.array([r.shape[0] - 1 + off for r in self.rolls], dtype=np.int64)
        keep = np.flatnonzero(n_tgt > 0)
        n_tgt = n_tgt[keep]
        if self.segment_length is None:
            self._piece, self._start, self._len = keep, np.zeros_like(keep), n_tgt
        else:
            S = self.segment_length
            n_seg = -(-n_tgt // S)
            self._piece = np.repeat(keep, n_seg)
            first = np.repeat(np.cumsum(n_seg) - n_seg, n_seg)
            self._start = (np.arange(self._piece.size) - first) * S
            self._len = np.minimum(S, np.repeat(n_tgt, n_seg) - self._start)
        if self._piece.size == 0:
            raise ValueError("rolls: no piece has a step to predict")
        self.n_examples = int(self._piece.size)
        self.n_targets = int(self._len.sum())

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.n_examples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[Batch]:
        order = (self.rng.permutation(self.n_examples) if self.rng is not None
                 else np.arange(self.n_examples))
        off = 1 if self.predict_first else 0
        for b0 in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[b0:b0 + self.batch_size]
            lens = self._len[idx]
            T, B = int(lens.max()), idx.size
            u = np.zeros((T, B, N_KEYS), dtype=self.dtype)
            y = np.zeros((T, B, N_KEYS), dtype=self.dtype)
            # one copy per example (not per step): target j of a piece is roll[j + 1 - off],
            # its input roll[j - off] (zeros when j - off < 0).
            for col, (p, s, n) in enumerate(zip(self._piece[idx].tolist(),
                                                self._start[idx].tolist(), lens.tolist())):
                roll = self.rolls[p]
                y[:n, col] = roll[s + 1 - off:s + 1 - off + n]
                a = s - off
                if a < 0:
                    u[1:n, col] = roll[0:n - 1]
                else:
                    u[:n, col] = roll[a:a + n]
            mask = np.arange(T)[:, None] < lens[None, :]
            yield Batch(u, y, mask, True, {"pieces": self._piece[idx].copy(),
                                          "starts": self._start[idx].copy()})
