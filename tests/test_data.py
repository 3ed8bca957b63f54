"""Tests of rnnfast.data: music/PTB loaders, minibatch streaming and Table 1 metrics.

Small files are written by the tests; the real data in ../shared/data is used when present.
"""
from __future__ import annotations

import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnfast.data.metrics import (bits_per_char, bits_per_char_ahead, char_bits, music_nll,
                                  nats_to_bits, step_nll)
from rnnfast.data.music import (MusicBatches, UnsafePickleError, load_music,
                                load_music_mat, load_music_pickle, music_path, notes_to_roll,
                                restricted_loads, roll_to_notes)
from rnnfast.data.ptb import CharStream, CharVocab, load_ptb_chars, read_char_file
from rnnfast.nn.batch import Batch

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SPLITS = ("train", "valid", "test")


# --------------------------------------------------------------------------- helpers
def random_notes(rng, n_seq, t_range=(1, 12), lo=21, hi=108):
    """Random pieces as lists of sorted MIDI note lists (some steps silent)."""
    seqs = []
    for _ in range(n_seq):
        T = int(rng.integers(*t_range))
        seqs.append([sorted(set(rng.integers(lo, hi + 1, size=int(rng.integers(0, 5))).tolist()))
                     for _ in range(T)])
    return seqs


def reference_roll(steps):
    """Independent per-note construction of a piano roll."""
    roll = np.zeros((len(steps), 88), dtype=bool)
    for t, notes in enumerate(steps):
        for n in notes:
            roll[t, n - 21] = True
    return roll


def write_pickle(path, obj, protocol=2):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.fixture
def notes_data():
    rng = np.random.default_rng(0)
    return {s: random_notes(rng, n) for s, n in zip(SPLITS, (7, 3, 4))}


# --------------------------------------------------------------------------- music pickles
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickle_roundtrip(tmp_path, notes_data, protocol):
    p = write_pickle(tmp_path / "toy.pickle", notes_data, protocol)
    d = load_music(p)
    assert d.name == "toy"
    for s in SPLITS:
        rolls = d.split(s)
        assert len(rolls) == len(notes_data[s])
        for r, steps in zip(rolls, notes_data[s]):
            assert r.dtype == bool and r.shape == (len(steps), 88)
            np.testing.assert_array_equal(r, reference_roll(steps))
            assert roll_to_notes(r) == steps
    assert d.n_steps("train") == sum(len(x) for x in notes_data["train"])


def test_pickle_tuples_and_extra_keys(tmp_path):
    obj = {"train": ((( 21, 108),), ((60,), ())), "valid": [[[64]]], "test": [[[]]],
           "meta": "ignored"}
    d = load_music(write_pickle(tmp_path / "t.pkl", obj))
    assert d.note_range() == (21, 108)
    np.testing.assert_array_equal(d.train[1], reference_roll([[60], []]))
    np.testing.assert_array_equal(notes_to_roll([[60, 61]]), reference_roll([[60, 61]]))


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_malicious_pickle_refused_without_executing(tmp_path):
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps({"train": [[[60]]], "valid": _Evil(f"touch {sentinel}"),
                            "test": [[[60]]]}, protocol=2)
    p = tmp_path / "evil.pickle"
    p.write_bytes(payload)
    with pytest.raises(UnsafePickleError) as exc:
        load_music(p)
    msg = str(exc.value)
    assert f"{os.system.__module__}.system" in msg and "evil.pickle" in msg
    assert isinstance(exc.value, ValueError)
    assert not sentinel.exists()
    # the payload is live: a plain unpickler does run it (harmless 'touch' in tmp_path)
    if sys.platform != "win32":
        pickle.loads(payload)
        assert sentinel.exists()


@pytest.mark.parametrize("payload, global_name", [
    (pickle.dumps(_Evil("true"), protocol=4), "system"),                 # STACK_GLOBAL
    (b"cbuiltins\neval\n(S'1+1'\ntR.", "builtins.eval"),                 # protocol-0 GLOBAL
    (b"(ibuiltins\nlist\n.", "builtins.list"),                           # INST
    (pickle.dumps({"train": __import__("collections").OrderedDict()}), "collections.OrderedDict"),
    (pickle.dumps(np.zeros(3)), "numpy"),
])
def test_any_global_refused(payload, global_name):
    with pytest.raises(UnsafePickleError, match=r"refusing to load global .*" + global_name.split(".")[0]):
        restricted_loads(payload, source="x.pickle")
    with pytest.raises(UnsafePickleError, match=global_name.replace(".", r"\.")):
        restricted_loads(payload, source="x.pickle")


def test_persistent_id_and_extension_refused():
    with pytest.raises(UnsafePickleError, match="persistent"):
        restricted_loads(b"Pfoo\n.")
    with pytest.raises(ValueError):
        restricted_loads(b"\x80\x02\x82\x01.")  # EXT1 code 1


def test_restricted_loads_plain_objects():
    obj = {"a": [1, 2.5, None, True, "s", (1, 2), -2 ** 80], "d": {}}
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert restricted_loads(pickle.dumps(obj, protocol=proto)) == obj
    # bytes (protocol >= 3) and sets (>= 4) have their own opcodes; older protocols
    # build them through a global (_codecs.encode, builtins.set) and are refused
    obj4 = dict(obj, b=b"b", s={1, 2}, f=frozenset([3]))
    assert restricted_loads(pickle.dumps(obj4, protocol=4)) == obj4
    with pytest.raises(UnsafePickleError, match=r"global __builtin__\.set"):
        restricted_loads(pickle.dumps({1, 2}, protocol=2))


@pytest.mark.parametrize("obj, fragment", [
    ([[[[60]]]], "top level is a list"),
    ({"train": [[[60]]], "test": [[[60]]]}, "missing split(s) ['valid']"),
    ({"train": "abc", "valid": [], "test": []}, "split 'train' is a str"),
    ({"train": [5], "valid": [], "test": []}, "split 'train' sequence 0 is a int"),
    ({"train": [[[60]], []], "valid": [], "test": []}, "sequence 1 has no time steps"),
    ({"train": [[[60], 61]], "valid": [], "test": []}, "sequence 0 time step 1 is a int"),
    ({"train": [[[60]], [[60], [], [61.0]]], "valid": [], "test": []},
     "sequence 1 time step 2: note 61.0 is a float"),
    ({"train": [[["60"]]], "valid": [], "test": []}, "is a str, expected an int"),
    ({"train": [[[True]]], "valid": [], "test": []}, "is a bool"),
    ({"train": [], "valid": [[[60], [20]]], "test": []},
     "split 'valid' sequence 0 time step 1: note 20 outside"),
    ({"train": [], "valid": [], "test": [[[109]]]}, "note 109 outside the 88 piano keys"),
    ({"train": [[[2 ** 70]]], "valid": [], "test": []}, "outside the 88 piano keys"),
])
def test_pickle_structure_errors(tmp_path, obj, fragment):
    p = write_pickle(tmp_path / "bad.pickle", obj)
    with pytest.raises(ValueError) as exc:
        load_music(p)
    assert fragment in str(exc.value) and str(p) in str(exc.value)


def test_truncated_and_wrong_format(tmp_path, notes_data):
    raw = pickle.dumps(notes_data, protocol=2)
    for n in (0, 1, 10, len(raw) // 2, len(raw) - 1):
        p = tmp_path / f"trunc{n}.pickle"
        p.write_bytes(raw[:n])
        with pytest.raises(ValueError, match=r"trunc\d+\.pickle: .*(truncated|not a valid)"):
            load_music(p)
    p = tmp_path / "text.pickle"
    p.write_text("this is not a pickle\n")
    with pytest.raises(ValueError, match="text.pickle"):
        load_music(p)
    p = tmp_path / "trail.pickle"
    p.write_bytes(raw + b"junk")
    with pytest.raises(ValueError, match="4 bytes of trailing data"):
        load_music(p)
    with pytest.raises(ValueError, match="expected a .pickle, .pkl or .mat"):
        load_music(tmp_path / "x.txt")


def test_music_path_aliases(tmp_path):
    (tmp_path / "music").mkdir()
    assert music_path(tmp_path, "nottingham") == tmp_path / "music" / "Nottingham.pickle"
    assert music_path(tmp_path / "music", "Piano-midi.de", "mat").name == "Piano_midi.mat"
    assert music_path(tmp_path, "JSB_Chorales").name == "JSB_Chorales.pickle"
    assert music_path(tmp_path, "piano_midi").name == "Piano-midi.de.pickle"
    with pytest.raises(ValueError, match="dataset"):
        music_path(tmp_path, "Bach")
    with pytest.raises(ValueError, match="fmt"):
        music_path(tmp_path, "JSB", "midi")


# --------------------------------------------------------------------------- .mat
def _cell(rolls):
    c = np.empty((1, len(rolls)), dtype=object)
    for i, r in enumerate(rolls):
        c[0, i] = r.astype(np.uint8)
    return c


def test_mat_roundtrip_matches_pickle(tmp_path, notes_data):
    sio = pytest.importorskip("scipy.io")
    pk = load_music(write_pickle(tmp_path / "a.pickle", notes_data))
    sio.savemat(tmp_path / "a.mat", {f"{s}data": _cell(pk.split(s)) for s in SPLITS})
    mt = load_music(tmp_path / "a.mat")
    for s in SPLITS:
        assert len(mt.split(s)) == len(pk.split(s))
        for a, b in zip(mt.split(s), pk.split(s)):
            assert a.dtype == bool
            np.testing.assert_array_equal(a, b)


def test_mat_errors(tmp_path):
    sio = pytest.importorskip("scipy.io")
    good = [np.eye(3, 88, dtype=np.uint8)]
    sio.savemat(tmp_path / "m1.mat", {"traindata": _cell(good), "testdata": _cell(good)})
    with pytest.raises(ValueError, match=r"m1.mat: missing key 'validdata'"):
        load_music_mat(tmp_path / "m1.mat")
    sio.savemat(tmp_path / "m2.mat", {"traindata": _cell(good), "validdata": _cell(good),
                                      "testdata": _cell([np.zeros((4, 87))])})
    with pytest.raises(ValueError, match=r"m2.mat: testdata piece 0: expected .*88"):
        load_music_mat(tmp_path / "m2.mat")
    sio.savemat(tmp_path / "m3.mat", {"traindata": _cell([np.full((2, 88), 2)]),
                                      "validdata": _cell(good), "testdata": _cell(good)})
    with pytest.raises(ValueError, match="m3.mat: traindata piece 0: .* 0 or 1"):
        load_music_mat(tmp_path / "m3.mat")
    sio.savemat(tmp_path / "m4.mat", {"traindata": np.zeros((3, 88)), "validdata": _cell(good),
                                      "testdata": _cell(good)})
    with pytest.raises(ValueError, match="m4.mat: traindata is not a cell array"):
        load_music_mat(tmp_path / "m4.mat")
    raw = (tmp_path / "m3.mat").read_bytes()
    for n in (10, 100, len(raw) // 2):
        (tmp_path / "t.mat").write_bytes(raw[:n])
        with pytest.raises(ValueError, match="t.mat: not a readable MATLAB"):
            load_music_mat(tmp_path / "t.mat")
    (tmp_path / "x.mat").write_text("hello world " * 20)
    with pytest.raises(ValueError, match="x.mat: not a readable MATLAB"):
        load_music(tmp_path / "x.mat")


# --------------------------------------------------------------------------- music batches
def _check_batch_columns(b, rolls, predict_first=True):
    assert isinstance(b, Batch) and b.reset  # the one batch type; whole sequences
    T, B, K = b.u.shape
    assert K == 88 and b.targets.shape == (T, B, 88) and b.mask.shape == (T, B)
    assert b.mask.dtype == bool and b.origin["pieces"].shape == b.origin["starts"].shape == (B,)
    seen = []
    for col in range(B):
        n = int(b.mask[:, col].sum())
        assert b.mask[:n, col].all() and not b.mask[n:, col].any()
        p, s = int(b.origin["pieces"][col]), int(b.origin["starts"][col])
        roll = rolls[p].astype(b.u.dtype)
        ext = np.concatenate([np.zeros((1, 88)), roll]) if predict_first else roll
        # targets: the rows after the inputs (ext starts with a zero row if predict_first)
        np.testing.assert_array_equal(b.targets[:n, col], ext[s + 1:s + 1 + n])
        np.testing.assert_array_equal(b.u[:n, col], ext[s:s + n])
        assert not b.u[n:, col].any() and not b.targets[n:, col].any()
        seen.append((p, s, n))
    return seen


def test_music_batches_whole_pieces(notes_data):
    rolls = [reference_roll(x) for x in notes_data["train"]]
    mb = MusicBatches(rolls, 3, dtype=np.float32)
    assert mb.carries_state is False and len(mb) == 3 and mb.n_examples == 7
    seen = []
    for b in mb:
        assert b.u.dtype == np.float32
        seen += _check_batch_columns(b, rolls)
    assert [p for p, _, _ in seen] == list(range(7))          # natural order without rng
    assert all(s == 0 and n == len(rolls[p]) for p, s, n in seen)
    assert sum(n for _, _, n in seen) == mb.n_targets == sum(len(r) for r in rolls)


def test_music_batches_segments_and_shuffle(notes_data):
    rolls = [reference_roll(x) for x in notes_data["train"]]
    S = 4
    mb = MusicBatches(rolls, 2, segment_length=S, rng=np.random.default_rng(1))
    epochs = []
    for _ in range(2):
        seen = []
        for b in mb:
            seen += _check_batch_columns(b, rolls)
        epochs.append(seen)
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1])
    # segments tile every piece contiguously and never cross pieces
    for p, r in enumerate(rolls):
        segs = sorted((s, n) for q, s, n in epochs[0] if q == p)
        assert [s for s, _ in segs] == list(range(0, len(r), S))
        assert all(n == min(S, len(r) - s) for s, n in segs)
    again = [c for b in MusicBatches(rolls, 2, segment_length=S, rng=np.random.default_rng(1))
             for c in _check_batch_columns(b, rolls)]
    assert again == epochs[0]


def test_music_batches_no_first_prediction_and_drop_last():
    rolls = [reference_roll([[60], [62], [64, 67]]), reference_roll([[60]]),
             reference_roll([[70], [71]])]
    mb = MusicBatches(rolls, 1, predict_first=False)
    assert mb.n_examples == 2 and mb.n_targets == 3           # the 1-step piece is skipped
    seen = [c for b in mb for c in _check_batch_columns(b, rolls, predict_first=False)]
    assert seen == [(0, 0, 2), (2, 0, 1)]
    mb = MusicBatches(rolls, 2, drop_last=True)
    assert len(mb) == 1 and len(list(mb)) == 1
    for bad, kw in ((0, {}), (2, {"segment_length": 0}), (2, {"rng": 3}),
                    (2, {"dtype": np.int32})):
        with pytest.raises((ValueError, TypeError)):
            MusicBatches(rolls, bad, **kw)
    with pytest.raises(ValueError, match="rolls"):
        MusicBatches([np.zeros((3, 87), bool)], 1)


# --------------------------------------------------------------------------- PTB
def write_ptb(d, train, valid, test):
    d.mkdir(exist_ok=True)
    for s, text in zip(SPLITS, (train, valid, test)):
        (d / f"ptb.char.{s}.txt").write_text(text)
    return d


def test_ptb_vocab_and_encoding(tmp_path):
    d = write_ptb(tmp_path / "p", " a b _ c \n b a \n", "a _ b\r\n", "c c")
    P = load_ptb_chars(d)
    assert P.vocab.symbols == ("_", "a", "b", "c", "\n") and len(P.vocab) == 5
    assert P.vocab.eol_index == 4 and P.vocab.index("c") == 3
    np.testing.assert_array_equal(P.train, [1, 2, 0, 3, 4, 2, 1, 4])
    np.testing.assert_array_equal(P.valid, [1, 0, 2, 4])
    np.testing.assert_array_equal(P.test, [3, 3, 4])          # last line without newline
    assert P.train.dtype == np.int64
    assert [P.n_lines(s) for s in SPLITS] == [2, 1, 1]
    assert P.vocab.decode(P.train) == "ab_c\nba\n"
    # vocabulary order does not depend on the order of appearance
    assert CharVocab.from_text("c b a\n").symbols == CharVocab.from_text("a b c").symbols
    np.testing.assert_array_equal(read_char_file(d / "ptb.char.valid.txt", P.vocab), P.valid)
    with pytest.raises(ValueError, match="symbols"):
        CharVocab(("b", "a", "\n"))


def test_ptb_unknown_symbol_and_bad_tokens(tmp_path):
    d = write_ptb(tmp_path / "p", "a b\n", "a b\nb z a\n", "a\n")
    with pytest.raises(ValueError, match=r"ptb.char.valid.txt: line 2: symbol 'z' is not in "
                                         r"the vocabulary"):
        load_ptb_chars(d)
    d = write_ptb(tmp_path / "q", "a b\nb a\n", "a\n", "a b\n b ab a\n")
    with pytest.raises(ValueError, match=r"ptb.char.test.txt: line 2: token 'ab' is not a single"):
        load_ptb_chars(d)
    (d / "ptb.char.valid.txt").write_bytes(b"a \xff\n")
    with pytest.raises(ValueError, match="valid.txt: not UTF-8"):
        load_ptb_chars(d)
    with pytest.raises(FileNotFoundError):
        load_ptb_chars(tmp_path / "missing")
    with pytest.raises(ValueError, match="no characters"):
        CharVocab.from_text(" \n\n")


@pytest.mark.parametrize("ahead", [1, 5])
@pytest.mark.parametrize("one_hot", [True, False])
def test_char_stream_contiguous_segments(ahead, one_hot):
    rng = np.random.default_rng(2)
    V, N, B, T = 7, 103, 3, 5
    data = rng.integers(0, V, size=N)
    cs = CharStream(data, V, B, T, ahead=ahead, one_hot=one_hot, dtype=np.float32)
    L = (N - ahead) // B
    assert cs.carries_state is True and cs.stream_length == L and len(cs) == -(-L // T)
    xs, ys = [], []
    for j, b in enumerate(cs):
        assert isinstance(b, Batch)
        assert b.reset == (j == 0) and b.origin["start"] == j * T and b.mask is None
        assert b.targets.dtype == np.int64 and b.targets.shape[1] == B
        if one_hot:
            assert b.u.dtype == np.float32 and b.u.shape == b.targets.shape + (V,)
            assert np.all(b.u.sum(-1) == 1)
            xs.append(b.u.argmax(-1))
        else:
            assert b.u.dtype == np.int64
            xs.append(b.u)
        ys.append(b.targets)
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == y.shape == (L, B) == (sum(a.shape[0] for a in xs), B)
    for col in range(B):   # consecutive segments continue each stream exactly
        np.testing.assert_array_equal(x[:, col], data[col * L:(col + 1) * L])
        np.testing.assert_array_equal(y[:, col], data[col * L + ahead:(col + 1) * L + ahead])
    assert cs.n_predictions == B * L
    cd = CharStream(data, V, B, T, ahead=ahead, drop_last=True)
    assert len(cd) == L // T and all(b.u.shape[0] == T for b in cd)
    assert cd.n_predictions == B * T * (L // T)


def test_char_stream_never_crosses_splits(tmp_path):
    d = write_ptb(tmp_path / "p", "a b x y\n" * 3, "x x x\nx\n" * 4, "y y\n" * 5)
    P = load_ptb_chars(d)
    x_, y_, eol = P.vocab.index("x"), P.vocab.index("y"), P.vocab.eol_index
    for split, allowed in (("valid", {x_, eol}), ("test", {y_, eol})):
        data = P.split(split)
        for ahead in (1, 5):
            cs = P.stream(split, 2, 3, ahead=ahead, one_hot=False)
            used_x = np.concatenate([b.u for b in cs])
            used_y = np.concatenate([b.targets for b in cs])
            assert set(np.unique(used_x)) | set(np.unique(used_y)) <= allowed
            L = cs.stream_length
            assert L == (data.size - ahead) // 2
            np.testing.assert_array_equal(used_y[:, 1], data[L + ahead:2 * L + ahead])
    with pytest.raises(ValueError, match="too few"):
        P.stream("test", 20, 3, ahead=5)
    with pytest.raises(ValueError, match="split"):
        P.stream("dev", 1, 3)
    with pytest.raises(ValueError, match="data"):
        CharStream(np.array([0, 9]), 5, 1, 1)
    with pytest.raises(ValueError, match="ahead"):
        CharStream(np.array([0, 1, 2]), 5, 1, 1, ahead=0)


# --------------------------------------------------------------------------- metrics
def test_step_nll_hand_computed():
    y = np.array([[[0.5, 0.25, 0.9]]])
    t = np.array([[[1.0, 0.0, 1.0]]])
    want = -(math.log(0.5) + math.log(0.75) + math.log(0.9))
    assert step_nll(y, t).shape == (1, 1)
    assert step_nll(y, t)[0, 0] == pytest.approx(want, rel=1e-12)
    z = np.log(y / (1 - y))
    assert step_nll(z, t, logits=True)[0, 0] == pytest.approx(want, rel=1e-12)
    # extreme logits stay exact and finite
    zz = np.array([1000.0, -1000.0, 1000.0, -1000.0, 0.0])
    tt = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    assert step_nll(zz, tt, logits=True) == pytest.approx(2000.0 + math.log(2), rel=1e-12)
    # certain, wrong probability: finite with eps, inf without
    assert np.isfinite(step_nll(np.array([1.0]), np.array([0.0])))
    with np.errstate(divide="ignore"):
        assert step_nll(np.array([1.0, 0.0]), np.array([0.0, 0.0]), eps=0.0) == np.inf
    assert step_nll(np.array([1.0, 0.0]), np.array([1.0, 0.0]), eps=0.0) == 0.0


def test_music_nll_mask_and_pooling():
    rng = np.random.default_rng(3)
    y = rng.uniform(0.05, 0.95, size=(4, 2, 88))
    t = (rng.uniform(size=(4, 2, 88)) < 0.1).astype(float)
    mask = np.array([[1, 1], [1, 1], [1, 0], [0, 0]], dtype=bool)
    per = np.array([[-(t[i, b] * np.log(y[i, b]) + (1 - t[i, b]) * np.log(1 - y[i, b])).sum()
                     for b in range(2)] for i in range(4)])
    assert music_nll(y, t, mask) == pytest.approx(per[mask].mean(), rel=1e-12)
    assert music_nll(y, t, mask.astype(np.float32)) == pytest.approx(per[mask].mean(), rel=1e-12)
    assert music_nll(y, t) == pytest.approx(per.mean(), rel=1e-12)
    total, count = music_nll(y, t, mask, reduce="sum")
    assert count == 5 and total == pytest.approx(per[mask].sum(), rel=1e-12)
    # pooling: summed totals / summed counts (not a mean of batch means)
    t1, c1 = music_nll(y[:1], t[:1], reduce="sum")
    t2, c2 = music_nll(y[1:, :1], t[1:, :1], reduce="sum")
    pooled = (t1 + t2) / (c1 + c2)
    assert pooled == pytest.approx(np.concatenate([per[0], per[1:, 0]]).mean(), rel=1e-12)
    assert pooled != pytest.approx((t1 / c1 + t2 / c2) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="selects no step"):
        music_nll(y, t, np.zeros((4, 2), bool))
    with pytest.raises(ValueError, match="mask"):
        music_nll(y, t, np.ones((4, 3), bool))
    with pytest.raises(ValueError, match="targets"):
        music_nll(y, t[..., :87])
    with pytest.raises(ValueError, match="probabilities"):
        music_nll(y + 1.0, t)
    with pytest.raises(ValueError, match="reduce"):
        music_nll(y, t, reduce="max")


def test_bits_per_char_hand_computed():
    p = np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.25, 0.25, 0.5]])
    tgt = np.array([0, 1, 2])
    np.testing.assert_allclose(char_bits(p, tgt), [1.0, 2.0, 1.0], rtol=1e-14)
    assert bits_per_char(p, tgt) == pytest.approx(4.0 / 3.0, rel=1e-14)
    assert bits_per_char(np.log(p) + 7.0, tgt, logits=True) == pytest.approx(4 / 3, rel=1e-12)
    assert bits_per_char(p, tgt, np.array([True, True, False])) == pytest.approx(1.5)
    assert bits_per_char(p, tgt, reduce="sum") == (pytest.approx(4.0), 3)
    assert bits_per_char(np.full((2, 3, 4), 0.25), np.zeros((2, 3), int)) == pytest.approx(2.0)
    z = np.array([[0.0, -1000.0], [1e4, 0.0]])
    np.testing.assert_allclose(char_bits(z, np.array([1, 0]), logits=True),
                               [(1000.0 + math.log1p(math.exp(-1000.0))) / math.log(2), 0.0],
                               rtol=1e-12, atol=1e-300)
    with pytest.raises(ValueError, match="targets"):
        char_bits(p, np.array([0, 1, 3]))
    with pytest.raises(TypeError, match="targets"):
        char_bits(p, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="targets"):
        char_bits(p, np.array([0, 1]))
    assert nats_to_bits(math.log(2) * 3) == pytest.approx(3.0)


def test_bits_per_char_ahead_alignment():
    # after reading s_t the model puts probability q_t on s_{t+k}; BPC_k = mean -log2 q_t
    syms = np.array([0, 1, 2, 0, 1, 2, 2])
    N, C, k = syms.size, 3, 2
    q = np.array([0.5, 0.25, 0.125, 0.5, 0.25])     # for t = 0 .. N-k-1
    scores = np.full((N, C), 0.0)
    for t in range(N):
        if t < N - k:
            scores[t] = (1 - q[t]) / (C - 1)
            scores[t, syms[t + k]] = q[t]
        else:
            scores[t] = 1.0 / C
    want = float(np.mean(-np.log2(q)))
    assert bits_per_char_ahead(scores, syms, k) == pytest.approx(want, rel=1e-14)
    assert bits_per_char_ahead(scores, syms, 1) != pytest.approx(want)
    with pytest.raises(ValueError, match="ahead"):
        bits_per_char_ahead(scores, syms, 0)
    with pytest.raises(ValueError, match="symbols"):
        bits_per_char_ahead(scores[:2], syms[:2], 2)


# --------------------------------------------------------------------------- real data
needs_music = pytest.mark.skipif(not (DATA / "music").is_dir(),
                                 reason="../shared/data/music not present")
needs_ptb = pytest.mark.skipif(not (DATA / "ptb_char").is_dir(),
                               reason="../shared/data/ptb_char not present")

# README: split sizes, note range, training time steps
REAL_MUSIC = {
    "JSB": ((229, 76, 77), (43, 96), 13807),
    "Nottingham": ((694, 173, 170), (31, 93), 176561),
    "MuseData": ((524, 135, 124), (21, 105), 245202),
    "Piano-midi.de": ((87, 12, 25), (21, 108), 75911),
}


@needs_music
@pytest.mark.parametrize("name", list(REAL_MUSIC))
def test_real_music_pickles(name):
    sizes, note_range, train_steps = REAL_MUSIC[name]
    d = load_music_pickle(music_path(DATA, name))
    assert tuple(len(d.split(s)) for s in SPLITS) == sizes
    assert d.note_range() == note_range
    assert d.n_steps("train") == train_steps
    mb = d.batches("valid", 16, segment_length=200)
    assert sum(b.mask.sum() for b in mb) == mb.n_targets == d.n_steps("valid")


@needs_music
def test_real_jsb_mat_equals_pickle():
    pytest.importorskip("scipy.io")
    a = load_music(music_path(DATA, "JSB", "pickle"))
    b = load_music(music_path(DATA, "JSB", "mat"))
    for s in SPLITS:
        assert len(a.split(s)) == len(b.split(s))
        assert all(np.array_equal(x, y) for x, y in zip(a.split(s), b.split(s)))


@needs_ptb
def test_real_ptb_chars():
    P = load_ptb_chars(DATA)
    assert len(P.vocab) == 50 and P.vocab.symbols[-1] == "\n"
    lines = {"train": 42068, "valid": 3370, "test": 3761}
    chars = {"train": 4975414, "valid": 389672, "test": 438662}
    for s in SPLITS:
        assert P.n_lines(s) == lines[s]
        assert P.split(s).size - P.n_lines(s) == chars[s]
    assert P.vocab.decode(P.valid[:10]) == "consumers_"
    cs = P.stream("test", 1, 10000, ahead=5, one_hot=False)
    assert cs.n_predictions == P.test.size - 5
