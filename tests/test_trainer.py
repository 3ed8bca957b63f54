"""Trainer: update order (Ω before clipping), policies, history files, atomic
checkpoints, exact resume, early stop, and the ``rnnfast train`` command."""

import csv
import json
import os
from typing import NamedTuple, Optional

import numpy as np
import pytest

from rnnfast import clipping as C
from rnnfast import optim as O
from rnnfast.model import CheckpointError, RNNModel
from rnnfast.trainer import Trainer


class Batch(NamedTuple):
    u: np.ndarray
    targets: np.ndarray
    mask: Optional[np.ndarray] = None


class TinyOrder:
    """A small temporal-order task following the Task protocol: 6 one-hot channels,
    symbols 0/1 at two marked windows, distractors 2..5, class v0 + 2 v1 at the end."""

    name = "tiny_order"
    n_in, n_out = 6, 4
    loss, at = "softmax_ce", "last"

    def __init__(self, min_length=8, max_length=12):
        self.min_length, self.max_length = min_length, max_length

    def sample_length(self, rng):
        return int(rng.integers(self.min_length, self.max_length))

    def generate(self, rng, batch_size, length, dtype=np.float64):
        sym = rng.integers(2, 6, size=(length, batch_size))
        v = rng.integers(0, 2, size=(2, batch_size))
        p0 = rng.integers(0, max(1, length // 4), size=batch_size)
        p1 = rng.integers(length // 2, length - 1, size=batch_size)
        cols = np.arange(batch_size)
        sym[p0, cols] = v[0]
        sym[p1, cols] = v[1]
        u = np.eye(6, dtype=dtype)[sym]
        return Batch(u, (v[0] + 2 * v[1]).astype(np.int64))

    def errors(self, y, batch):
        return np.argmax(y, axis=-1) != batch.targets


class TinyRegress:
    """linear_mse at every step under a mask (variable lengths)."""

    name = "tiny_regress"
    n_in, n_out = 2, 1
    loss, at = "linear_mse", "all"
    min_length, max_length = 5, 9

    def sample_length(self, rng):
        return int(rng.integers(self.min_length, self.max_length))

    def generate(self, rng, batch_size, length, dtype=np.float64):
        u = rng.normal(size=(length, batch_size, 2)).astype(dtype)
        t = np.cumsum(u[..., :1], axis=0) * 0.1
        lengths = rng.integers(1, length + 1, size=batch_size)
        mask = np.arange(length)[:, None] < lengths[None, :]
        return Batch(u, t.astype(dtype), mask)

    def errors(self, y, batch):
        return np.any((y - batch.targets) ** 2 > 0.04, axis=(0, 2))


def make_model(task=TinyOrder, seed=1, hidden=8, dtype=np.float64, init="basic_tanh"):
    return RNNModel(task.n_in, hidden, task.n_out, init=init, loss=task.loss, at=task.at,
                    rng=seed, dtype=dtype)


def make_trainer(model, task, tmp_path=None, **kw):
    opts = dict(
        optimizer=O.SGD(0.05, momentum=0.9, nesterov=True),
        lr=O.HalveOnRise(0.05),
        clip=1.0,
        alpha=O.InverseTime(2.0, 10.0),
        batch_size=5,
        valid_every=7,
        valid_size=30,
        valid_batch=20,
        success_error=None,
        rho_every=4,
        seed=3,
        num_threads=1,
    )
    if tmp_path is not None:
        opts.update(checkpoint_path=str(tmp_path / "ckpt.npz"), history_path=str(tmp_path / "hist"))
    opts.update(kw)
    opt = opts.pop("optimizer")
    return Trainer(model, task, opt, **opts)


def assert_same_state(a, b):
    for k in a.model.params:
        assert np.array_equal(a.model.params[k], b.model.params[k]), k
    ha, hb = a.history.arrays(), b.history.arrays()
    for k in ha:
        if k != "seconds":
            assert np.array_equal(ha[k], hb[k], equal_nan=True), k
    strip = lambda vs: [{k: v for k, v in r.items() if k != "seconds"} for r in vs]  # noqa: E731
    assert strip(a.validations) == strip(b.validations)
    assert a.rng_train.bit_generator.state == b.rng_train.bit_generator.state
    assert a.rng_valid.bit_generator.state == b.rng_valid.bit_generator.state
    for k, v in a.optimizer.velocity.items():
        assert np.array_equal(v, b.optimizer.velocity[k]), k


# --------------------------------------------------------------- the update
def test_one_update_adds_omega_before_clipping_then_steps():
    task = TinyOrder()
    m = make_model()
    ref = m.copy()
    tr = Trainer(m, task, O.SGD(0.1), clip=0.05, alpha=3.0, batch_size=4, seed=0,
                 valid_every=0, num_threads=1)
    assert tr.lr(0) == 0.1  # lr=None keeps the optimiser's
    # replay the trainer's first batch
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(0).spawn(2)[0]))
    b = task.generate(rng, 4, task.sample_length(rng))
    r = ref.loss_and_grad(b.u, b.targets, omega=True, num_threads=1)
    g = dict(r.grads)
    g["W_rec"] = g["W_rec"] + 3.0 * r.omega_grad
    norm = C.global_norm(g)
    row = tr.train_step(b.u, b.targets)
    assert row["norm"] == pytest.approx(norm, rel=1e-12)
    assert row["omega"] == pytest.approx(r.omega, rel=1e-12) and row["alpha"] == 3.0
    assert norm > 0.05 and row["clipped"] == 1
    for k in g:
        np.testing.assert_allclose(m.params[k], ref.params[k] - 0.1 * 0.05 / norm * g[k],
                                   rtol=1e-12, atol=1e-15)


def test_alpha_zero_is_plain_sgd_c():
    task = TinyOrder()
    a = make_trainer(make_model(), task, alpha=0.0, optimizer=O.SGD(0.05), lr=0.05)
    b = make_trainer(make_model(), task, alpha=None, optimizer=O.SGD(0.05), lr=0.05)
    a.run(10)
    b.run(10)
    assert_same_state(a, b)
    assert np.all(np.isnan(a.history["omega"]))


@pytest.mark.parametrize("policy", ["skip", "shrink", "raise"])
def test_nonfinite_policies_in_the_loop(policy):
    task = TinyOrder()
    m = make_model()
    before = {k: v.copy() for k, v in m.params.items()}
    tr = Trainer(m, task, O.SGD(0.1, momentum=0.5), lr=0.1, clip=1.0, nonfinite=policy,
                 batch_size=3, valid_every=0, seed=0)
    b = task.generate(np.random.default_rng(0), 3, 9)
    u = b.u.copy()
    u[2, 1, 0] = np.nan
    if policy == "raise":
        with pytest.raises(C.NonFiniteGradientError, match="'W_in'|'W_rec'|'b'|'W_out'"):
            tr.train_step(u, b.targets)
        return
    tr.train_step(u, b.targets)
    action = tr.history.rows()[-1]["action"]
    if policy == "skip":
        assert action == "skipped"
        for k in before:
            assert np.array_equal(m.params[k], before[k])
        assert tr.optimizer.velocity == {}  # no step at all
    else:
        assert action == "shrunk"
        np.testing.assert_allclose(m.params["W_rec"], (1 - 0.1 * 0.02) * before["W_rec"], rtol=1e-12)
        for k in ("W_in", "b", "W_out", "b_out"):
            assert np.array_equal(m.params[k], before[k])


def test_explosion_flagged():
    task = TinyRegress()
    rng = np.random.default_rng(0)
    batches = [task.generate(rng, 4, 6) for _ in range(40)]
    u, t, mask = batches[30]
    batches[30] = Batch(u, t * 1e4, mask)  # one huge error: the gradient norm spikes
    m = make_model(TinyRegress)
    tr = Trainer(m, iter(batches), O.SGD(0.01), lr=0.01, clip=1.0, valid_every=0, seed=0,
                 explosion_factor=10.0)
    res = tr.run(100)
    assert res.stopped == "exhausted" and res.updates == 40
    flags = tr.history["explosion"]
    assert flags[30] == 1 and flags.sum() == 1
    assert tr.history["clipped"][30] == 1


def test_rho_every_and_history_columns():
    task = TinyOrder()
    tr = make_trainer(make_model(), task, rho_every=3, valid_every=0)
    tr.run(9)
    rho = tr.history["rho"]
    assert np.all(np.isnan(rho[[0, 1, 3, 4, 6, 7]]))
    assert np.all(np.isfinite(rho[[2, 5, 8]]))
    W = tr.model.params["W_rec"]
    assert rho[8] == pytest.approx(np.max(np.abs(np.linalg.eigvals(W))), rel=1e-12)
    assert list(tr.history["update"]) == list(range(1, 10))
    assert np.all((tr.history["length"] >= 8) & (tr.history["length"] < 12))


# ------------------------------------------------------- validation, stopping
def test_early_stop_at_success():
    class Easy(TinyOrder):
        def errors(self, y, batch):
            return np.zeros(len(batch.targets), bool)

    tr = make_trainer(make_model(), Easy(), valid_every=5, success_error=0.01)
    res = tr.run(1000)
    assert res.solved and res.stopped == "solved" and res.updates == 5
    assert res.best_error == 0.0 and res.last_validation["sequences"] == 30


def test_sgd_cr_learns_a_short_temporal_order():
    # end to end: the loop must actually learn (fails if any gradient or step is wrong)
    tr = Trainer(make_model(hidden=16, seed=0, init="smart_tanh"), TinyOrder(10, 14), O.SGD(0.1),
                 clip=1.0, alpha=2.0, batch_size=20, valid_every=250, valid_size=400,
                 valid_batch=400, success_error=0.01, seed=0, num_threads=1)
    res = tr.run(4000)
    assert res.solved and res.stopped == "solved", tr.validations[-1]


def test_validation_uses_its_own_stream():
    task = TinyOrder()
    a = make_trainer(make_model(), task, valid_every=3)
    b = make_trainer(make_model(), task, valid_every=0)
    a.run(12)
    b.run(12)
    # validating does not change the training data; only the lr schedule reacts
    assert np.array_equal(a.history["length"], b.history["length"])
    assert len(a.validations) == 4 and len(b.validations) == 0


def test_halve_on_rise_reacts_to_validation():
    task = TinyOrder()
    tr = make_trainer(make_model(), task, valid_every=2, optimizer=O.SGD(0.05), lr=O.HalveOnRise(0.05))
    tr.run(40)
    losses = [v["loss"] for v in tr.validations]
    rises = sum(b > a for a, b in zip(losses, losses[1:]))
    assert tr.lr(0) == pytest.approx(0.05 * 0.5 ** rises)
    lrs = tr.history["lr"]
    assert np.all(np.diff(lrs) <= 0)


def test_masked_task_runs_and_validates():
    task = TinyRegress()
    tr = Trainer(make_model(TinyRegress), task, O.SGD(0.05), lr=0.05, clip=1.0, alpha=1.0,
                 batch_size=6, valid_every=5, valid_size=12, valid_batch=6, seed=1)
    res = tr.run(10)
    assert res.updates == 10 and len(tr.validations) == 2
    assert np.all(np.isfinite(tr.history["omega"]))
    assert 0.0 <= tr.validations[-1]["error"] <= 1.0


class StreamBatch(NamedTuple):
    u: np.ndarray
    targets: np.ndarray
    mask: Optional[np.ndarray]
    reset: bool


class TinyStream:
    """B parallel streams cut into segments; each continues the previous one
    (the data helper's CharStream protocol: carries_state, batch.reset)."""

    carries_state = True

    def __init__(self, n_seg=4, T=6, B=3, seed=0):
        rng = np.random.default_rng(seed)
        u = rng.normal(size=(n_seg * T, B, 2))
        t = 0.1 * np.cumsum(u[..., :1], axis=0)  # needs memory across segments
        self.segs = [StreamBatch(u[i * T:(i + 1) * T], t[i * T:(i + 1) * T], None, i == 0)
                     for i in range(n_seg)]

    def __iter__(self):
        return iter(self.segs)


def test_state_carries_across_segments():
    data = TinyStream()
    m = make_model(TinyRegress)
    seen = []
    real = m.loss_and_grad

    def spy(u, targets, mask=None, **kw):
        r = real(u, targets, mask, **kw)
        seen.append((kw.get("h0"), r.h_last.copy()))
        return r

    m.loss_and_grad = spy
    tr = Trainer(m, data, O.SGD(0.01), clip=1.0, valid_every=0, seed=0)
    tr.run(6)  # one epoch and a half: the 5th batch is a reset
    assert seen[0][0] is None and seen[4][0] is None
    for i in (1, 2, 3, 5):
        assert np.array_equal(seen[i][0], seen[i - 1][1]), i
    # validation over a carrying stream chains the segments too
    m.loss_and_grad = real
    tr2 = Trainer(m, data, O.SGD(0.01), valid=data, task=TinyRegress(), valid_every=0, seed=0)
    rec = tr2.validate()
    full_u = np.concatenate([b.u for b in data])
    full_t = np.concatenate([b.targets for b in data])
    y = m.outputs(full_u)
    per_seg = [np.mean(np.sum((y[i * 6:(i + 1) * 6] - full_t[i * 6:(i + 1) * 6]) ** 2, axis=-1))
               for i in range(4)]
    assert rec["loss"] == pytest.approx(np.mean(per_seg), rel=1e-12)


def test_resume_mid_stream_restores_carried_state(tmp_path):
    data = TinyStream(n_seg=5)

    def mk(seed=1, **kw):
        return Trainer(make_model(TinyRegress, seed=seed), data, O.SGD(0.02, momentum=0.9),
                       clip=1.0, alpha=0.5, valid_every=0, seed=0, num_threads=1, **kw)

    full = mk()
    full.run(13)
    part = mk(checkpoint_path=str(tmp_path / "c.npz"))
    part.run(7)
    rest = mk(seed=3)
    rest.load_checkpoint(tmp_path / "c.npz")
    assert np.array_equal(rest.h_carry, part.h_carry)
    rest.run(13)
    assert_same_state(full, rest)


# --------------------------------------------------------- files and resume
def test_history_files(tmp_path):
    task = TinyOrder()
    tr = make_trainer(make_model(), task, history_path=str(tmp_path / "h"))
    tr.run(15)
    doc = json.loads((tmp_path / "h.json").read_text(),
                     parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    cols = doc["columns"]
    assert len(cols["loss"]) == 15 and cols["update"][-1] == 15
    assert set(cols["action"]) <= {"ok", "clipped", "skipped", "shrunk"}
    assert cols["rho"][0] is None and cols["rho"][3] is not None
    assert len(doc["validation"]) == 2 and doc["summary"]["updates"] == 15
    with open(tmp_path / "h.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15
    assert float(rows[4]["norm"]) == tr.history["norm"][4]
    assert rows[0]["rho"] == "nan"
    assert sorted(os.listdir(tmp_path)) == ["h.csv", "h.json"]


@pytest.mark.parametrize("clip", [1.0, "auto"])
def test_resume_is_bit_identical(tmp_path, clip):
    task = TinyOrder()

    def clipper():
        if clip == "auto":
            return C.GradientClipper(C.AutoThreshold(1.5, warmup=4, decay=0.9))
        return clip

    full = make_trainer(make_model(), task, clip=clipper())
    full.run(30)

    first = make_trainer(make_model(), task, tmp_path, clip=clipper())
    first.run(13)
    assert os.path.exists(tmp_path / "ckpt.npz")
    # a fresh process: a new model with a different init, restored from the file
    second = make_trainer(make_model(seed=99), task, tmp_path, clip=clipper())
    second.load_checkpoint(tmp_path / "ckpt.npz")
    assert second.update == 13
    second.run(30)
    assert second.update == 30
    assert_same_state(full, second)
    if clip == "auto":
        assert full.clipper.threshold.state_dict() == second.clipper.threshold.state_dict()


def test_resume_iterable_data_mid_epoch(tmp_path):
    task = TinyRegress()
    rng = np.random.default_rng(5)
    data = [task.generate(rng, 4, 7) for _ in range(6)]  # re-iterable: several epochs

    def mk(seed=1, **kw):
        return Trainer(make_model(TinyRegress, seed=seed), data, O.SGD(0.02, momentum=0.9), lr=0.02,
                       clip=1.0, alpha=0.5, task=task, valid=data[:2], valid_every="epoch", seed=0,
                       num_threads=1, **kw)

    full = mk()
    full.run(20)
    assert full.epoch == 3 and len(full.validations) == 3
    part = mk(checkpoint_path=str(tmp_path / "c.npz"))
    part.run(9)
    rest = mk(seed=7)
    rest.load_checkpoint(tmp_path / "c.npz")
    assert rest.epoch == 1 and rest.batch_in_epoch == 3
    rest.run(20)
    assert_same_state(full, rest)


def test_crash_while_checkpointing_keeps_last_good(tmp_path, monkeypatch):
    task = TinyOrder()
    tr = make_trainer(make_model(), task, tmp_path)
    tr.run(6)
    good = (tmp_path / "ckpt.npz").read_bytes()
    real_savez = np.savez

    def crash(f, **arrays):  # write part of the archive, then die
        real_savez(f, **arrays)
        f.truncate(100)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        tr.run(12)
    monkeypatch.undo()
    assert (tmp_path / "ckpt.npz").read_bytes() == good
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    again = make_trainer(make_model(seed=5), task, tmp_path)
    again.load_checkpoint(tmp_path / "ckpt.npz")
    assert again.update == 6


def test_corrupt_checkpoint_is_refused_and_nothing_lost(tmp_path):
    task = TinyOrder()
    tr = make_trainer(make_model(), task, tmp_path)
    tr.run(5)
    data = (tmp_path / "ckpt.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.npz").write_bytes(os.urandom(2000))
    victim = make_trainer(make_model(seed=4), task)
    victim.run(3)
    before = {k: v.copy() for k, v in victim.model.params.items()}
    for name in ("trunc.npz", "junk.npz"):
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            victim.load_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        victim.load_checkpoint(tmp_path / "none.npz")
    model_file = tmp_path / "model.npz"
    tr.model.save(model_file)
    with pytest.raises(CheckpointError, match="not a rnnfast.TrainerCheckpoint"):
        victim.load_checkpoint(model_file)
    assert victim.update == 3
    for k in before:
        assert np.array_equal(victim.model.params[k], before[k])


def test_checkpoint_settings_must_match(tmp_path):
    task = TinyOrder()
    tr = make_trainer(make_model(), task, tmp_path)
    tr.run(4)
    other = make_trainer(make_model(), task, batch_size=6)
    with pytest.raises(CheckpointError, match="batch_size"):
        other.load_checkpoint(tmp_path / "ckpt.npz")
    other.load_checkpoint(tmp_path / "ckpt.npz", strict=False)
    assert other.update == 4
    bigger = make_trainer(make_model(hidden=9), task)
    with pytest.raises(CheckpointError, match="model"):
        bigger.load_checkpoint(tmp_path / "ckpt.npz")


# ----------------------------------------------------------------- options
def test_bad_trainer_options():
    task = TinyOrder()
    m = make_model()
    with pytest.raises(ValueError, match="valid_every"):
        Trainer(m, task, valid_every="sometimes")
    with pytest.raises(ValueError, match="monitor"):
        Trainer(m, task, monitor="accuracy")
    with pytest.raises(ValueError, match="nonfinite"):
        Trainer(m, task, nonfinite="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(m, task, batch_size=0)
    with pytest.raises(TypeError, match="RNNModel"):
        Trainer("model", task)
    with pytest.raises(TypeError, match="Task"):
        Trainer(m, 42)
    with pytest.raises(ValueError, match=r"task.n_in is 6 but the model has n_in=2"):
        Trainer(make_model(TinyRegress), task)
    with pytest.raises(TypeError, match="minibatch must be"):
        Trainer(m, [np.zeros(3)], valid_every=0).run(1)


def test_quiet_without_terminal(capsys):
    tr = make_trainer(make_model(), TinyOrder())
    tr.run(8)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    lines = []
    tr2 = make_trainer(make_model(), TinyOrder(), log=lines.append)
    tr2.run(14)
    assert len(lines) == 2 and "valid error" in lines[0]


def test_progress_bar_on_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    import io
    import sys

    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    tr = make_trainer(make_model(), TinyOrder(), valid_every=0)
    tr.run(60)
    assert "60/60" in tty.getvalue()
    quiet = make_trainer(make_model(), TinyOrder(), valid_every=0, progress=False)
    tty.truncate(0)
    tty.seek(0)
    quiet.run(5)
    assert tty.getvalue() == ""


# --------------------------------------------------------------------- CLI
def _cli(argv):
    from rnnfast.commands import train

    return train.main(argv)


def test_cli_help_explains_options(capsys):
    with pytest.raises(SystemExit) as e:
        _cli(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--method", "--clip", "--alpha", "--lr", "--momentum", "--init", "--hidden",
                "--batch-size", "--resume", "--nonfinite", "--max-updates"):
        assert opt in text
    assert "paper: 0.01" in text and "paper: 50" in text


def test_cli_rejects_bad_options(capsys):
    for argv in (["--clip", "big"], ["--method", "adam"], ["--lr", "-1"], ["--bogus"]):
        with pytest.raises(SystemExit) as e:
            _cli(argv)
        assert e.value.code == 2
    capsys.readouterr()


SHORT = ["--task", "temporal_order", "--min-length", "10", "--max-length", "14", "--hidden", "8",
         "--valid-every", "10", "--valid-size", "40", "--valid-batch", "20", "--batch-size", "5",
         "--threads", "1", "--quiet", "--dtype", "float64", "--checkpoint-every", "7"]


def test_cli_run_and_resume(tmp_path, capsys):
    pytest.importorskip("rnnfast.tasks")
    a, b = tmp_path / "a", tmp_path / "b"
    assert _cli(SHORT + ["--out", str(a), "--max-updates", "25"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["updates"] == 25 and summary["method"] == "sgd-cr"
    assert {"config.json", "checkpoint.npz", "history.json", "history.csv", "model.npz"} <= set(
        os.listdir(a))
    assert _cli(SHORT + ["--out", str(b), "--max-updates", "12"]) == 0
    with pytest.raises(SystemExit, match="already holds a run"):
        _cli(SHORT + ["--out", str(b), "--max-updates", "12"])
    assert _cli(["--out", str(b), "--resume", "--max-updates", "25", "--quiet"]) == 0
    capsys.readouterr()
    ha = json.loads((a / "history.json").read_text())["columns"]
    hb = json.loads((b / "history.json").read_text())["columns"]
    for k in ha:
        if k != "seconds":
            assert ha[k] == hb[k], k
    ma = RNNModel.load(a / "model.npz")
    mb = RNNModel.load(b / "model.npz")
    for k in ma.params:
        assert np.array_equal(ma.params[k], mb.params[k])
    assert all(x is not None for x in ha["omega"])  # sgd-cr: Omega recorded every update


def test_cli_unknown_task_and_missing_resume(tmp_path):
    pytest.importorskip("rnnfast.tasks")
    with pytest.raises(SystemExit, match="unknown task"):
        _cli(["--task", "juggling", "--quiet"])
    with pytest.raises(SystemExit, match="nothing to resume"):
        _cli(["--out", str(tmp_path / "none"), "--resume"])
