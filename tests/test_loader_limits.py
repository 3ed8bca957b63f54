"""Loaders of untrusted files under explicit resource limits (LoadLimits): pickle bombs, deep
nesting, absurd declared sizes, .mat / .npz decompression bombs, corrupt archives, oversized
text; and atomic writes interrupted half-way."""

import os
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from rnnfast import fileio
from rnnfast.data import LimitError, LoadLimits, load_music, load_ptb_chars, restricted_loads
from rnnfast.fileio import CheckpointError, read_npz, write_npz


def _s(x):
    b = x.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _wrap(train: bytes) -> bytes:
    """A protocol-2 pickle {'train': <train>, 'valid': [[[60]]], 'test': [[[60]]]}."""
    ok = b"]]]K<aaa"
    return b"\x80\x02}" + _s("train") + train + b"s" + _s("valid") + ok + b"s" + _s("test") + ok + b"s."


def _deep(n):  # [[[...[60]...]]], n lists deep: 3n + 2 bytes
    return _wrap(b"]" * n + b"K<" + b"a" * n)


def _bomb(k):
    """k sequences (the same one), each of k steps (the same one) of all 88 notes: a ~4 KB
    pickle that expands to k² steps and 88·k² notes (k = 1000: 2.9 GB before the fix)."""
    step = b"](" + b"".join(b"K" + bytes([n]) for n in range(21, 109)) + b"eq\x01"
    seq = b"](" + step + b"h\x01" * (k - 1) + b"eq\x02"
    return _wrap(b"](" + seq + b"h\x02" * (k - 1) + b"e")


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ------------------------------------------------------------------ pickles
def test_small_bomb_is_accepted():
    obj = restricted_loads(_bomb(3))
    assert len(obj["train"]) == 3 and len(obj["train"][0][0]) == 88


def test_pickle_bomb_is_refused_before_it_expands(tmp_path):
    data = _bomb(1000)
    assert len(data) < 5000
    path = _write(tmp_path, "bomb.pickle", data)
    tracemalloc.start()
    try:
        with pytest.raises(LimitError, match=r"bomb.pickle: more than max_elements=5000000"):
            load_music(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, peak
    # a caller who trusts the file raises the limit; a smaller bomb then loads
    d = load_music(_write(tmp_path, "b.pickle", _bomb(30)), limits=LoadLimits(max_elements=10**6))
    assert d.n_steps("train") == 900


def test_deep_nesting_is_a_limit_error_not_a_recursion_error(tmp_path):
    path = _write(tmp_path, "deep.pickle", _deep(200_000))
    with pytest.raises(LimitError, match="nested deeper than max_depth=16"):
        load_music(path)
    # within the depth limit but the wrong structure: a short message, no RecursionError
    with pytest.raises(ValueError, match=r"note \[\[\[.*\]\]\] is a list") as e:
        load_music(path, limits=LoadLimits(max_depth=10**6))
    assert len(str(e.value)) < 300


@pytest.mark.parametrize("payload", [
    b"\x80\x04\x8e" + struct.pack("<Q", 2**63) + b".",          # BINBYTES8 of 2**63 bytes
    b"\x80\x04\x8d" + struct.pack("<Q", 2**62) + b".",          # BINUNICODE8
    b"\x80\x04\x95" + struct.pack("<Q", 2**63) + b"N.",         # FRAME
    b"\x80\x05\x96" + struct.pack("<Q", 2**64 - 1) + b".",      # BYTEARRAY8
    _wrap(b"]]]\x8a\x09" + b"\xff" * 8 + b"\x7f" + b"aaa"),       # a 72-bit note
    _wrap(b"]]]G" + struct.pack(">d", float("inf")) + b"aaa"),  # an infinite note
])
def test_infinite_sizes_are_value_errors(tmp_path, payload):
    with pytest.raises(ValueError, match="x.pickle"):
        load_music(_write(tmp_path, "x.pickle", payload))


def test_pickle_larger_than_max_bytes(tmp_path):
    path = _write(tmp_path, "big.pickle", _bomb(3))
    with pytest.raises(LimitError, match=r"big.pickle: \d+ bytes, more than max_bytes=100"):
        load_music(path, limits=LoadLimits(max_bytes=100))


@pytest.mark.parametrize("bad", [dict(max_bytes=0), dict(max_elements=-1), dict(max_depth=1.5),
                                 dict(max_bytes=True)])
def test_limits_are_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LoadLimits(**bad)


# ------------------------------------------------------------------ .mat
def test_mat_decompression_bomb_is_refused_before_inflating(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    path = tmp_path / "bomb.mat"
    rolls = np.empty((1, 1), dtype=object)
    rolls[0, 0] = np.zeros((100_000, 88), np.uint8)  # 8.8 MB, compresses to ~9 KB
    scipy_io.savemat(path, {"traindata": rolls, "validdata": rolls, "testdata": rolls},
                     do_compression=True)
    assert path.stat().st_size < 200_000
    with pytest.raises(LimitError, match="bomb.mat: decompresses to more than max_bytes=1000000"):
        load_music(path, limits=LoadLimits(max_bytes=10**6))
    with pytest.raises(LimitError, match="more than max_elements=1000 time steps"):
        load_music(path, limits=LoadLimits(max_elements=1000))
    d = load_music(path)
    assert d.n_steps("train") == 100_000


# ------------------------------------------------------------------ .npz
def test_npz_bomb_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, a=np.zeros(10**7), __meta__=np.array('{"format": "x"}'))
    assert path.stat().st_size < 100_000
    with pytest.raises(CheckpointError, match=r"decompress to \d+ bytes, more than max_bytes=1000000"):
        read_npz(path, "x", max_bytes=10**6)
    meta, arrays = read_npz(path, "x")
    assert arrays["a"].shape == (10**7,)


def test_npz_member_claiming_a_huge_array_is_refused(tmp_path):
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as z:
        header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
        header["shape"] = (1 << 40,)
        with z.open("a.npy", "w") as m:
            np.lib.format.write_array_header_1_0(m, header)
            m.write(b"\0" * 8)
        z.writestr("__meta__.npy", b"")
    with pytest.raises(CheckpointError, match=r"claims an array of shape \(1099511627776,\)"):
        read_npz(path, None)


def test_corrupt_compression_method_is_a_checkpoint_error(tmp_path):
    # Before: NotImplementedError("That compression method is not supported").
    path = tmp_path / "m.npz"
    write_npz(path, {"a": np.arange(5.0)}, {"format": "x"})
    data = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # method field of each header
        i = data.find(sig)
        while i >= 0:
            data[i + off:i + off + 2] = struct.pack("<H", 99)
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not a readable rnnfast file"):
        read_npz(path, "x")


def test_corrupt_deflate_data_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, a=np.arange(1000.0), __meta__=np.array('{"format": "x"}'))
    data = bytearray(path.read_bytes())
    data[60:90] = b"\xff" * 30
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        read_npz(path, "x")


# ------------------------------------------------------------------ PTB text
def test_ptb_file_larger_than_max_bytes(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.char.{split}.txt").write_text("a b _ c\n" * 100)
    assert len(load_ptb_chars(tmp_path).train) == 500
    with pytest.raises(LimitError, match=r"ptb.char.train.txt: 800 bytes, more than max_bytes=500"):
        load_ptb_chars(tmp_path, limits=LoadLimits(max_bytes=500))


# ------------------------------------------------------------------ atomic writes
@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError, SystemExit])
def test_interrupted_atomic_write_leaves_no_temporary_file(tmp_path, exc):
    target = tmp_path / "out.json"
    fileio.atomic_write_text(target, "old")

    def write(f):
        f.write(b"partial")
        raise exc("interrupted")

    with pytest.raises(exc):
        fileio.atomic_write(target, write)
    assert sorted(os.listdir(tmp_path)) == ["out.json"]
    assert target.read_text() == "old"


def test_failed_replace_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "adir"
    target.mkdir()
    (target / "x").write_text("keep")  # os.replace over a non-empty directory fails
    with pytest.raises(OSError):
        fileio.atomic_write_text(target, "new")
    assert sorted(os.listdir(tmp_path)) == ["adir"]


def test_interrupt_while_saving_a_checkpoint_leaves_no_temporary_file(tmp_path, monkeypatch):
    from rnnfast.train import checkpoint
    path = tmp_path / "ck.npz"
    checkpoint.save_checkpoint(path, {"a": np.arange(3.0)})

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, {"a": np.arange(4.0)})
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]
    assert checkpoint.load_checkpoint(path)["a"].shape == (3,)


# ------------------------------------------------------------------ engine checkpoints
@pytest.mark.parametrize("key,value,match", [
    ("h_carry", np.array([["a", "b"]]), "carried state is not a"),
    ("h_carry", np.zeros((2, 5), np.int64), "carried state is not a"),
    ("best_error", "low", "best_error must be a number"),
    ("best_error", True, "best_error must be a number"),
    ("update", -1, "update must be an integer >= 0"),
])
def test_engine_checkpoint_with_bad_fields_changes_nothing(tmp_path, key, value, match):
    # Before (h_carry of strings, best_error): the engine was half-restored, then a raw error.
    from rnnfast.tasks import TemporalOrder
    from rnnfast.train import build
    from rnnfast.train import checkpoint as ckpt
    task = TemporalOrder(min_length=10, max_length=12)
    eng = build("SGD-CR", task=task, hidden=5, seed=0, batch_size=4, dtype="float64")
    eng.fit(task, max_updates=2)
    path = tmp_path / "c.npz"
    eng.save_checkpoint(path)
    state = ckpt.load_checkpoint(path)
    if key == "h_carry":
        value = np.resize(value, (2, eng.model.n_hidden))
    state["engine"][key] = value
    ckpt.save_checkpoint(path, state)
    victim = build("SGD-CR", task=task, hidden=5, seed=0, batch_size=4, dtype="float64")
    victim.fit(task, max_updates=1)
    before = {k: v.copy() for k, v in victim.model.params.items()}
    with pytest.raises(CheckpointError, match=match):
        victim.load_checkpoint(path)
    assert victim.update == 1 and victim.best_error is None and victim.h_carry is None
    for k, v in before.items():
        assert np.array_equal(victim.model.params[k], v), k
