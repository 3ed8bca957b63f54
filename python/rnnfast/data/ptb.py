"""Penn Treebank characters in Mikolov's preprocessing (``ptb.char.{train,valid,test}.txt``).

File format: one sentence per line, characters separated by spaces, ``_`` marks a word
boundary. Each line is encoded as its characters followed by an end-of-line symbol, so a
split becomes one long stream of symbol indices (the sentences in file order).

The vocabulary (:class:`CharVocab`) is built from the training split only: its distinct
characters sorted by code point, then the end-of-line symbol last. For the real data that
is 49 characters + end-of-line = 50 symbols. A character of another split that is not in
the vocabulary is an error naming the character, file and line.

Truncated-BPTT minibatches come from :class:`CharStream` (or :meth:`PTBChars.stream`).

A file larger than ``limits.max_bytes`` (:class:`rnnfast.fileio.LoadLimits`, default 64 MiB;
the real training split has 5 MB) raises :class:`rnnfast.fileio.LimitError` before it is read;
decoding and encoding take at most ~20 bytes per byte of text.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from ..fileio import LoadLimits, read_bytes
from ..nn.batch import Batch

__all__ = ["EOL", "PTB_VOCAB_SIZE", "CharVocab", "PTBChars", "CharBatch", "CharStream",
           "load_ptb_chars", "read_char_file", "ptb_paths"]

EOL = "\n"            #: the end-of-line symbol (last index of every vocabulary)
PTB_VOCAB_SIZE = 50   #: symbols of the real PTB-char vocabulary (49 characters + end-of-line)
SPLITS = ("train", "valid", "test")
_SEPARATORS = np.array([9, 11, 12, 13, 32], dtype=np.uint32)  # \t \v \f \r space
PathLike = Union[str, "os.PathLike[str]"]


def _scan(text: str, source: str):
    """Code points (uint32, shape (N,)) of the symbols of ``text``, 10 = end-of-line.

    Tokens are checked to be single characters; every line ends with 10.
    """
    cp = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    is_nl = cp == 10
    is_tok = ~(is_nl | np.isin(cp, _SEPARATORS))
    multi = is_tok[1:] & is_tok[:-1]
    if multi.any():
        k = int(np.argmax(multi))
        a = k
        while a > 0 and is_tok[a - 1]:
            a -= 1
        b = k + 1
        while b < cp.size and is_tok[b]:
            b += 1
        line = int(np.count_nonzero(is_nl[:k])) + 1
        raise ValueError(f"{source}: line {line}: token {text[a:b]!r} is not a single "
                         "character (expected space-separated characters)")
    codes = cp[is_tok | is_nl]
    if codes.size and codes[-1] != 10:     # last line without a final newline still ends
        codes = np.append(codes, np.uint32(10))
    return codes


def _read_text(path: PathLike, limits: Optional[LoadLimits] = None) -> str:
    path = os.fspath(path)
    raw = read_bytes(path, (LoadLimits() if limits is None else limits).max_bytes)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None


@dataclass(frozen=True)
class CharVocab:
    """Fixed symbol vocabulary: characters sorted by code point, then end-of-line.

    Attributes
    ----------
    symbols : tuple of str
        ``symbols[i]`` is the symbol with index ``i``; the last one is :data:`EOL` (``'\\n'``).
    """

    symbols: tuple

    def __post_init__(self):
        s = self.symbols
        if not s or s[-1] != EOL or EOL in s[:-1]:
            raise ValueError("symbols: expected distinct characters followed by '\\n' last")
        if any(len(c) != 1 for c in s) or list(s[:-1]) != sorted(set(s[:-1])):
            raise ValueError("symbols: expected single characters sorted by code point")

    @classmethod
    def from_text(cls, text: str, *, source: str = "<text>") -> "CharVocab":
        """Vocabulary of the characters occurring in ``text`` (a training split's file text)."""
        return cls._from_codes(_scan(text, source), source)

    @classmethod
    def _from_codes(cls, codes: np.ndarray, source: str) -> "CharVocab":
        codes = np.unique(codes)
        codes = codes[codes != 10]
        if codes.size == 0:
            raise ValueError(f"{source}: no characters to build a vocabulary from")
        return cls(tuple(map(chr, codes.tolist())) + (EOL,))

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def eol_index(self) -> int:
        """Index of the end-of-line symbol (``len(self) - 1``)."""
        return len(self.symbols) - 1

    def index(self, symbol: str) -> int:
        """Index of one symbol (``'\\n'`` for end-of-line)."""
        try:
            return self.symbols.index(symbol)
        except ValueError:
            raise KeyError(f"symbol {symbol!r} is not in the vocabulary") from None

    def encode(self, text: str, *, source: str = "<text>") -> np.ndarray:
        """Encode file text (space-separated characters, one sentence a line).

        Parameters
        ----------
        text : str
            File contents; every line (also a last one without a newline) ends with
            the end-of-line symbol; whitespace-only trailing text is ignored.
        source : str
            Name for error messages.

        Returns
        -------
        ndarray of int64, shape (N,)
            Symbol indices, end-of-line included.

        Raises
        ------
        ValueError
            A token longer than one character, or a character not in the vocabulary
            (the message names it and its 1-based line).
        """
        return self._encode_codes(_scan(text, source), source)

    def _encode_codes(self, codes: np.ndarray, source: str) -> np.ndarray:
        known = np.array([ord(c) for c in self.symbols[:-1]], dtype=np.uint32)
        idx = np.searchsorted(known, codes)
        ok = known[np.minimum(idx, known.size - 1)] == codes
        is_nl = codes == 10
        bad = ~ok & ~is_nl
        if bad.any():
            k = int(np.argmax(bad))
            line = int(np.count_nonzero(is_nl[:k])) + 1
            raise ValueError(f"{source}: line {line}: symbol {chr(int(codes[k]))!r} is not in "
                             "the vocabulary built from the training split")
        idx[is_nl] = self.eol_index
        return idx.astype(np.int64)

    def decode(self, indices: np.ndarray) -> str:
        """Text of symbol indices (shape (N,)); end-of-line becomes ``'\\n'``, no spaces."""
        indices = np.asarray(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise ValueError(f"indices: expected values in [0, {len(self)})")
        return "".join(self.symbols[i] for i in indices.ravel().tolist())


def read_char_file(path: PathLike, vocab: CharVocab, *,
                   limits: Optional[LoadLimits] = None) -> np.ndarray:
    """Read and encode one ``ptb.char.*.txt`` file with ``vocab`` (``limits.max_bytes``: the
    largest file read; default ``LoadLimits()``).

    Returns
    -------
    ndarray of int64, shape (N,)
    """
    return vocab.encode(_read_text(path, limits), source=os.fspath(path))


def ptb_paths(data_dir: PathLike, prefix: str = "ptb.char") -> dict:
    """``{'train','valid','test'}`` -> path of ``<prefix>.<split>.txt`` under ``data_dir``
    (the data root holding ``ptb_char/``, or that folder itself)."""
    root = Path(data_dir)
    if (root / "ptb_char").is_dir():
        root = root / "ptb_char"
    return {s: root / f"{prefix}.{s}.txt" for s in SPLITS}


# --------------------------------------------------------------------------- streams
#: Deprecated alias: character segments are :class:`rnnfast.nn.batch.Batch` es (``reset``
#: True for the first segment of a pass; ``origin`` ``{"start": position of row 0 in each
#: stream}``).
CharBatch = Batch


class CharStream:
    """A split's symbol sequence as ``B`` parallel streams cut into length-``T`` segments.

    Prediction pairs are (input ``s[p]``, target ``s[p + ahead]``) for
    ``p = 0 .. N - ahead - 1``, all inside the one split given (nothing crosses into another
    split). The ``N - ahead`` pairs are divided into ``B`` contiguous streams of
    ``L = (N - ahead) // B`` pairs (stream ``b`` holds pairs ``b*L .. (b+1)*L - 1``; the
    last ``(N - ahead) mod B`` pairs are left out -- use ``B = 1`` to score a split exactly).
    Each stream is cut into consecutive segments of ``T`` steps (the last one shorter
    unless ``drop_last``). Segment ``j+1`` of column ``b`` continues exactly where segment
    ``j`` stopped, so the hidden state carries over (``carries_state`` is True): a trainer
    passes the previous segment's ``h_last`` as ``h0`` (gradients are truncated at the
    segment boundary) and starts from zeros when ``batch.reset`` is True.

    Parameters
    ----------
    data : array_like of int, shape (N,)
        Encoded split (symbol indices in ``[0, n_symbols)``).
    n_symbols : int
        Vocabulary size V (one-hot width).
    batch_size : int
        Number of parallel streams B.
    seq_len : int
        Segment length T (truncated-BPTT length).
    ahead : int
        Predict the symbol ``ahead`` steps after the input (1 = next symbol; the paper's
        "5 steps" is ``ahead=5``).
    one_hot : bool
        ``u`` as one-hot floats (T, B, V) if True, else int64 indices (T, B).
    dtype : numpy float dtype
        dtype of one-hot ``u``.
    drop_last : bool
        Drop a final segment shorter than ``seq_len``.

    Attributes
    ----------
    carries_state : bool
        Always True.
    stream_length : int
        L, pairs per stream.
    n_predictions : int
        Predictions per epoch (``B * L``, fewer with ``drop_last``).

    Examples
    --------
    Truncated BPTT with the state carried across segments::

        h = None
        for batch in ptb.stream("train", 32, 200, ahead=1):
            h0 = None if batch.reset else h
            fwd = rnnfast.forward(batch.u, W_in, W_rec, b, h0, activation="sigmoid")
            h = fwd.h_last                        # next segment's h0 (no gradient through it)
            ...  # softmax readout of fwd.h vs batch.targets, backward, update
    """

    carries_state = True

    def __init__(self, data, n_symbols: int, batch_size: int, seq_len: int, *,
                 ahead: int = 1, one_hot: bool = True, dtype=np.float64,
                 drop_last: bool = False):
        for nm, v in (("n_symbols", n_symbols), ("batch_size", batch_size),
                      ("seq_len", seq_len), ("ahead", ahead)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{nm}: expected a positive int, got {v!r}")
        data = np.asarray(data)
        if data.ndim != 1 or data.dtype.kind not in "iu":
            raise ValueError(f"data: expected a 1-D int array, got {data.dtype} of shape "
                             f"{data.shape}")
        if data.size and (data.min() < 0 or data.max() >= n_symbols):
            raise ValueError(f"data: symbol indices must lie in [0, {n_symbols})")
        self.dtype = np.dtype(dtype)
        if one_hot and self.dtype.kind != "f":
            raise TypeError(f"dtype: expected a float dtype, got {self.dtype}")
        self.n_symbols, self.batch_size, self.seq_len = int(n_symbols), int(batch_size), int(seq_len)
        self.ahead, self.one_hot, self.drop_last = int(ahead), bool(one_hot), bool(drop_last)
        B = self.batch_size
        L = (data.size - self.ahead) // B
        if L < 1:
            raise ValueError(f"data: {data.size} symbols are too few for {B} streams "
                             f"predicting {self.ahead} ahead")
        self.stream_length = L
        self._x = data[:B * L].astype(np.int64).reshape(B, L)
        self._y = data[self.ahead:self.ahead + B * L].astype(np.int64).reshape(B, L)
        self.n_predictions = B * (len(self) * self.seq_len if self.drop_last else L)

    def __len__(self) -> int:
        """Segments per epoch."""
        full, rest = divmod(self.stream_length, self.seq_len)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[Batch]:
        eye = np.eye(self.n_symbols, dtype=self.dtype) if self.one_hot else None
        for j in range(len(self)):
            a = j * self.seq_len
            x = np.ascontiguousarray(self._x[:, a:a + self.seq_len].T)
            y = np.ascontiguousarray(self._y[:, a:a + self.seq_len].T)
            yield Batch(eye[x] if self.one_hot else x, y, None, j == 0, {"start": a})


# --------------------------------------------------------------------------- data set
@dataclass(frozen=True)
class PTBChars:
    """The three encoded PTB-char splits and their vocabulary.

    Attributes
    ----------
    vocab : CharVocab
    train, valid, test : ndarray of int64, each shape (N_split,)
        Symbol streams (end-of-line included).
    paths : dict
        Split -> file read.
    """

    vocab: CharVocab
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    paths: dict

    def split(self, split: str) -> np.ndarray:
        """Encoded stream of ``split`` (``'train'``, ``'valid'`` or ``'test'``)."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        return getattr(self, split)

    def n_lines(self, split: str) -> int:
        """Lines (sentences) of ``split``."""
        return int(np.count_nonzero(self.split(split) == self.vocab.eol_index))

    def stream(self, split: str, batch_size: int, seq_len: int, **kwargs) -> CharStream:
        """:class:`CharStream` over ``split``; keywords (``ahead``, ``one_hot``, ``dtype``,
        ``drop_last``) are passed on."""
        return CharStream(self.split(split), len(self.vocab), batch_size, seq_len, **kwargs)


def load_ptb_chars(data_dir: PathLike, *, prefix: str = "ptb.char",
                   limits: Optional[LoadLimits] = None) -> PTBChars:
    """Load ``<prefix>.{train,valid,test}.txt`` from ``data_dir``.

    Parameters
    ----------
    data_dir : str or path-like
        Folder holding the three files, or the data root holding ``ptb_char/``.
    prefix : str
        File name prefix.
    limits : LoadLimits, optional
        ``max_bytes``: the largest file read (default ``LoadLimits()``, 64 MiB).

    Returns
    -------
    PTBChars
        Vocabulary from the training split (50 symbols for the real data) and the three
        encoded splits.

    Raises
    ------
    FileNotFoundError
        A split file is missing.
    ValueError
        Non-UTF-8 file, multi-character token, or (valid/test) a character unseen in
        training; the message names the file, line and symbol.
    """
    paths = ptb_paths(data_dir, prefix)
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"data_dir: {p} not found")
    text = _read_text(paths["train"], limits)
    codes = _scan(text, str(paths["train"]))
    vocab = CharVocab._from_codes(codes, str(paths["train"]))
    train = vocab._encode_codes(codes, str(paths["train"]))
    valid = read_char_file(paths["valid"], vocab, limits=limits)
    test = read_char_file(paths["test"], vocab, limits=limits)
    return PTBChars(vocab, train, valid, test, {k: str(v) for k, v in paths.items()})
