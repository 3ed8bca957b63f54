"""Data for the natural-task experiments: polyphonic music and PTB characters.

Loaders take a path (nothing is bundled or downloaded):

* :func:`load_music` -- Boulanger-Lewandowski ``.pickle`` (restricted unpickler) or
  ``.mat`` (SciPy) files -> :class:`MusicData` of ``(T, 88)`` bool piano rolls;
  :class:`MusicBatches` makes padded, masked next-step batches (no state carry).
* :func:`load_ptb_chars` -- ``ptb.char.{train,valid,test}.txt`` -> :class:`PTBChars`
  (50-symbol vocabulary from training); :class:`CharStream` makes truncated-BPTT segments
  of B parallel streams whose state carries over.
* :mod:`rnnfast.data.metrics` -- NLL per time step, bits per character (k ahead).

Every loader takes ``limits`` (:class:`LoadLimits`: bytes read or decompressed, elements,
nesting depth) and raises :class:`LimitError` (a ValueError) before a file can make it
allocate more.
"""
from ..fileio import LimitError, LoadLimits
from .metrics import (bits_per_char, bits_per_char_ahead, char_bits, music_nll,
                      nats_to_bits, step_nll)
from .music import (HIGHEST_NOTE, LOWEST_NOTE, MUSIC_FILES, N_KEYS, MusicBatch,
                    MusicBatches, MusicData, RestrictedUnpickler, UnsafePickleError,
                    load_music, load_music_mat, load_music_pickle, music_path,
                    notes_to_roll, restricted_loads, roll_to_notes)
from .ptb import (EOL, PTB_VOCAB_SIZE, CharBatch, CharStream, CharVocab, PTBChars,
                  load_ptb_chars, ptb_paths, read_char_file)

__all__ = [
    "bits_per_char", "bits_per_char_ahead", "char_bits", "music_nll", "nats_to_bits",
    "step_nll", "LimitError", "LoadLimits",
    "HIGHEST_NOTE", "LOWEST_NOTE", "MUSIC_FILES", "N_KEYS", "MusicBatch", "MusicBatches",
    "MusicData", "RestrictedUnpickler", "UnsafePickleError", "load_music", "load_music_mat",
    "load_music_pickle", "music_path", "notes_to_roll", "restricted_loads", "roll_to_notes",
    "EOL", "PTB_VOCAB_SIZE", "CharBatch", "CharStream", "CharVocab", "PTBChars",
    "load_ptb_chars", "ptb_paths", "read_char_file",
]
