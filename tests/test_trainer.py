"""rnnfast.train: the Engine's update order (Ω before clipping), non-finite policies, the
loop (validation, early stop, time limit, one-shot iterators, carried state), the history
files, the checkpoint format (exact resume, validation errors), the factory and method
names, the deprecated module paths, and the ``rnnfast train`` command."""

import csv
import importlib
import json
import os
import sys
import time
import warnings

import numpy as np
import pytest

from rnnfast.fileio import CheckpointError, json_safe
from rnnfast.nn import clipping as C
from rnnfast.nn import optim as O
from rnnfast.nn.batch import Batch
from rnnfast.nn.model import RNNModel
from rnnfast.train import (METHODS, Callback, Checkpoint, Engine, Every, Progress, Validation, build,
                           build_model, canonical_method)
from rnnfast.train import checkpoint as ckpt
from rnnfast.train import HistoryWriter, write_history


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


class Run:
    """An Engine, its data and its callbacks: what the old Trainer bundled, built by hand
    from the rnnfast.train pieces."""

    def __init__(self, model, data, *, optimizer=None, lr=None, clip=1.0, alpha=None,
                 nonfinite="shrink", batch_size=20, rho_every=0, seed=None, num_threads=None,
                 explosion_factor=10.0, callbacks=()):
        optimizer = optimizer or O.SGD(0.01)
        lr = optimizer.lr if lr is None else lr
        clipper = clip if isinstance(clip, C.GradientClipper) else \
            C.GradientClipper(clip, nonfinite=nonfinite)
        self.engine = Engine(model, optimizer, clipper, lr, alpha=alpha, rho_every=rho_every,
                             seed=seed, num_threads=num_threads, batch_size=batch_size,
                             explosion_factor=explosion_factor)
        self.data = data
        self.callbacks = list(callbacks)

    def __getattr__(self, name):
        return getattr(self.__dict__["engine"], name)

    def run(self, max_updates, **kw):
        return self.engine.fit(self.data, max_updates=max_updates, callbacks=self.callbacks, **kw)

    def load_checkpoint(self, path, **kw):
        self.engine.load_checkpoint(path, callbacks=self.callbacks, **kw)


def make_run(model, task, tmp_path=None, *, valid_every=7, success_error=None, history=None,
             log=None, progress=None, **kw):
    opts = dict(optimizer=O.SGD(0.05, momentum=0.9, nesterov=True), lr=O.HalveOnRise(0.05),
                clip=1.0, alpha=O.InverseTime(2.0, 10.0), batch_size=5, rho_every=4, seed=3,
                num_threads=1)
    opts.update(kw)
    cbs = [Progress(None, enabled=progress)]
    if valid_every:
        cbs.append(Validation(task, every=valid_every, size=30, batch=20,
                              success_error=success_error, log=log))
    if tmp_path is not None or history is not None:
        cbs.append(Checkpoint(None if tmp_path is None else str(tmp_path / "ckpt.npz"),
                              history=history if history is not None else str(tmp_path / "hist")))
    return Run(model, task, callbacks=cbs, **opts)


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
    eng = Engine(m, O.SGD(0.1), C.GradientClipper(0.05), 0.1, alpha=3.0, batch_size=4, seed=0,
                 num_threads=1)
    assert eng.lr(0) == 0.1
    # replay the engine's first batch: rng_train is the seed's first child
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(0).spawn(2)[0]))
    b = task.generate(rng, 4, task.sample_length(rng))
    r = ref.loss_and_grad(b.u, b.targets, omega=True, num_threads=1)
    g = dict(r.grads)
    g["W_rec"] = g["W_rec"] + 3.0 * r.omega_grad
    norm = C.global_norm(g)
    res = eng.fit(task, max_updates=1)
    assert res.updates == 1 and res.stopped == "max_updates"
    row = eng.history.rows()[0]
    assert row["norm"] == pytest.approx(norm, rel=1e-12)
    assert row["omega"] == pytest.approx(r.omega, rel=1e-12) and row["alpha"] == 3.0
    assert norm > 0.05 and row["clipped"] and row["action"] == "clipped"
    for k in g:
        np.testing.assert_allclose(m.params[k], ref.params[k] - 0.1 * 0.05 / norm * g[k],
                                   rtol=1e-12, atol=1e-15)


def test_step_returns_the_row_and_counts():
    task = TinyOrder()
    eng = Engine(make_model(), O.SGD(0.1), C.GradientClipper(1.0), 0.1, seed=0, num_threads=1)
    b = task.generate(np.random.default_rng(0), 3, 9)
    row = eng.step(b)
    assert row["update"] == 1 and row["length"] == 9 and eng.update == 1
    assert np.isnan(row["omega"]) and row["alpha"] == 0.0  # alpha=None: Ω off
    assert len(eng.history) == 1 and eng.history["loss"][0] == row["loss"]


def test_alpha_zero_is_plain_sgd_c():
    task = TinyOrder()
    a = make_run(make_model(), task, alpha=None, optimizer=O.SGD(0.05), lr=0.05)
    b = build("SGD-C", model=make_model(), lr=0.05, seed=3, num_threads=1, batch_size=5,
              rho_every=4)
    assert b.alpha is None and b.clipper.threshold == 1.0
    a.run(10)
    b.fit(task, max_updates=10, callbacks=[Validation(task, every=7, size=30, batch=20)])
    assert_same_state(a, b)
    assert np.all(np.isnan(a.history["omega"]))


@pytest.mark.parametrize("policy", ["skip", "shrink", "raise"])
def test_nonfinite_policies_in_the_loop(policy):
    task = TinyOrder()
    m = make_model()
    before = {k: v.copy() for k, v in m.params.items()}
    eng = Engine(m, O.SGD(0.1, momentum=0.5), C.GradientClipper(1.0, nonfinite=policy), 0.1,
                 seed=0)
    b = task.generate(np.random.default_rng(0), 3, 9)
    u = b.u.copy()
    u[2, 1, 0] = np.nan
    if policy == "raise":
        with pytest.raises(C.NonFiniteGradientError, match="'W_in'|'W_rec'|'b'|'W_out'"):
            eng.step(Batch(u, b.targets))
        return
    row = eng.step(Batch(u, b.targets))
    action = eng.history.rows()[-1]["action"]
    if policy == "skip":
        assert action == "skipped"
        for k in before:
            assert np.array_equal(m.params[k], before[k])
        assert eng.optimizer.velocity == {}  # no step at all
    else:
        assert action == "shrunk"
        np.testing.assert_allclose(m.params["W_rec"], (1 - 0.1 * 0.02) * before["W_rec"],
                                   rtol=1e-12)
        for k in ("W_in", "b", "W_out", "b_out"):
            assert np.array_equal(m.params[k], before[k])
    assert row["update"] == 1


def test_explosion_flagged_and_one_shot_iterator_is_one_epoch():
    task = TinyRegress()
    rng = np.random.default_rng(0)
    batches = [task.generate(rng, 4, 6) for _ in range(40)]
    u, t, mask = batches[30][:3]
    batches[30] = Batch(u, t * 1e4, mask)  # one huge error: the gradient norm spikes
    run = Run(make_model(TinyRegress), iter(batches), optimizer=O.SGD(0.01), clip=1.0, seed=0,
              explosion_factor=10.0)
    res = run.run(100)
    assert res.stopped == "exhausted" and res.updates == 40 and run.epoch == 1
    flags = run.history["explosion"]
    assert flags[30] == 1 and flags.sum() == 1
    assert run.history["clipped"][30] == 1
    # the iterator is spent: a second fit trains on nothing
    res = run.run(100)
    assert res.updates == 40 and res.stopped == "exhausted"


def test_rho_every_and_history_columns():
    task = TinyOrder()
    run = make_run(make_model(), task, rho_every=3, valid_every=0)
    run.run(9)
    rho = run.history["rho"]
    assert np.all(np.isnan(rho[[0, 1, 3, 4, 6, 7]]))
    assert np.all(np.isfinite(rho[[2, 5, 8]]))
    W = run.model.params["W_rec"]
    assert rho[8] == pytest.approx(np.max(np.abs(np.linalg.eigvals(W))), rel=1e-12)
    assert list(run.history["update"]) == list(range(1, 10))
    assert np.all((run.history["length"] >= 8) & (run.history["length"] < 12))
    assert set(run.history.columns) >= {"update", "length", "loss", "norm", "clipped", "action",
                                          "omega", "alpha", "lr", "rho", "explosion", "seconds"}


# ------------------------------------------------------- validation, stopping
def test_early_stop_at_success():
    class Easy(TinyOrder):
        def errors(self, y, batch):
            return np.zeros(len(batch.targets), bool)

    run = make_run(make_model(), Easy(), valid_every=5, success_error=0.01)
    res = run.run(1000)
    assert res.solved and res.stopped == "solved" and res.updates == 5
    assert res.best_error == 0.0 and res.last_validation["sequences"] == 30


def test_confirm_can_veto_success_and_callbacks_can_stop():
    class Easy(TinyOrder):
        def errors(self, y, batch):
            return np.zeros(len(batch.targets), bool)

    asked = []
    eng = Engine(make_model(), O.SGD(0.05), C.GradientClipper(1.0), 0.05, seed=0, batch_size=5)
    val = Validation(Easy(), every=2, size=10, batch=10, success_error=0.01,
                     confirm=lambda e: asked.append(e.update) or e.update >= 6)
    res = eng.fit(Easy(), max_updates=100, callbacks=[val])
    assert asked == [2, 4, 6] and res.solved and res.updates == 6

    eng = Engine(make_model(), O.SGD(0.05), C.GradientClipper(1.0), 0.05, seed=0, batch_size=5)
    res = eng.fit(TinyOrder(), max_updates=100,
                  callbacks=[Every(3, lambda e: e.stop("early_stop"))])
    assert res.stopped == "early_stop" and not res.solved and res.updates == 3


def test_on_validation_sees_each_record_before_the_success_stop():
    class Easy(TinyOrder):
        def errors(self, y, batch):
            return np.zeros(len(batch.targets), bool)

    class Seen(Callback):
        def __init__(self):
            self.seen = []

        def on_validation(self, engine, record):
            # the record just added, at its update, before Validation stops the run
            assert engine.validations[-1] is record and engine.stop_reason is None
            self.seen.append((engine.update, record["error"]))

    eng = Engine(make_model(), O.SGD(0.05), C.GradientClipper(1.0), 0.05, seed=0, batch_size=5)
    seen = Seen()
    val = Validation(Easy(), every=2, size=10, batch=10, success_error=0.01,
                     confirm=lambda e: e.update >= 6)
    res = eng.fit(Easy(), max_updates=100, callbacks=[val, seen])
    assert seen.seen == [(2, 0.0), (4, 0.0), (6, 0.0)] and res.updates == 6
    # outside fit() a record is only stored
    val.validate(eng)
    assert len(eng.validations) == 4 and len(seen.seen) == 3


def test_sgd_cr_learns_a_short_temporal_order():
    # end to end: the loop must actually learn (fails if any gradient or step is wrong)
    task = TinyOrder(10, 14)
    eng = Engine(make_model(hidden=16, seed=0, init="smart_tanh"), O.SGD(0.1),
                 C.GradientClipper(1.0), 0.1, alpha=2.0, batch_size=20, seed=0, num_threads=1)
    val = Validation(task, every=250, size=400, batch=400, success_error=0.01)
    res = eng.fit(task, max_updates=4000, callbacks=[val])
    assert res.solved and res.stopped == "solved", eng.validations[-1]


def test_validation_uses_its_own_stream():
    task = TinyOrder()
    a = make_run(make_model(), task, valid_every=3)
    b = make_run(make_model(), task, valid_every=0)
    a.run(12)
    b.run(12)
    # validating does not change the training data; only the lr schedule reacts
    assert np.array_equal(a.history["length"], b.history["length"])
    assert len(a.validations) == 4 and len(b.validations) == 0


def test_halve_on_rise_reacts_to_validation():
    task = TinyOrder()
    run = make_run(make_model(), task, valid_every=2, optimizer=O.SGD(0.05),
                   lr=O.HalveOnRise(0.05))
    run.run(40)
    losses = [v["loss"] for v in run.validations]
    rises = sum(b > a for a, b in zip(losses, losses[1:]))
    assert run.lr(0) == pytest.approx(0.05 * 0.5 ** rises)
    lrs = run.history["lr"]
    assert np.all(np.diff(lrs) <= 0)


def test_masked_task_runs_and_validates():
    task = TinyRegress()
    run = Run(make_model(TinyRegress), task, optimizer=O.SGD(0.05), lr=0.05, clip=1.0, alpha=1.0,
              batch_size=6, seed=1,
              callbacks=[Validation(task, every=5, size=12, batch=6)])
    res = run.run(10)
    assert res.updates == 10 and len(run.validations) == 2
    assert np.all(np.isfinite(run.history["omega"]))
    assert 0.0 <= run.validations[-1]["error"] <= 1.0


def test_time_limit_stops_the_loop():
    task = TinyOrder()
    eng = Engine(make_model(), O.SGD(0.05), C.GradientClipper(1.0), 0.05, seed=0, batch_size=5)
    res = eng.fit(task, time_limit=0)
    assert res.stopped == "time" and res.updates == 0 and not res.solved
    t0 = time.perf_counter()
    res = eng.fit(task, max_updates=10 ** 9, time_limit=0.3)
    assert res.stopped == "time" and 0 < res.updates < 10 ** 9
    assert time.perf_counter() - t0 < 5
    assert res.seconds >= 0.3


def test_fit_keeps_numpys_blas_on_one_thread_and_restores_it():
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    seen = []

    class Watch(Callback):
        name = "watch"

        def on_update_end(self, engine, batch, row):
            seen.append(blas_threads())
            if engine.update == 2:
                raise KeyboardInterrupt  # Ctrl-C: the limit is lifted on the way out too

    eng = Engine(make_model(), O.SGD(0.05), C.GradientClipper(1.0), 0.05, seed=0, batch_size=5)
    with threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        if not before or max(before) < 2:
            pytest.skip("NumPy's BLAS has no threads to limit here")
        with pytest.raises(KeyboardInterrupt):
            eng.fit(TinyOrder(), max_updates=5, callbacks=[Watch()])
        assert seen and all(t == [1] * len(before) for t in seen)
        assert blas_threads() == before


def test_step_alone_keeps_numpys_blas_on_one_thread_and_restores_it():
    # a user's own loop over step(): the readout's products run while the kernels' threads
    # are up, so the same limit as in fit() (else OpenBLAS's spinning threads take a core)
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    eng = Engine(make_model(), O.SGD(0.05), C.GradientClipper(1.0), 0.05, seed=0, batch_size=5)
    seen = []
    inner = eng.model.loss_and_grad

    def watched(*a, **k):
        seen.append(blas_threads())
        return inner(*a, **k)

    eng.model.loss_and_grad = watched
    batch = TinyOrder().generate(np.random.default_rng(0), 5, 7)
    with threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        if not before or max(before) < 2:
            pytest.skip("NumPy's BLAS has no threads to limit here")
        eng.step(batch)
        eng.step(batch)
        assert blas_threads() == before
        eng.model.loss_and_grad = lambda *a, **k: 1 / 0
        with pytest.raises(ZeroDivisionError):  # lifted on an error too
            eng.step(batch)
        assert blas_threads() == before
    assert seen == [[1] * len(before)] * 2 and eng.update == 2


def test_max_epochs_over_a_list():
    task = TinyRegress()
    rng = np.random.default_rng(2)
    data = [task.generate(rng, 4, 7) for _ in range(3)]
    eng = Engine(make_model(TinyRegress), O.SGD(0.01), C.GradientClipper(1.0), 0.01, seed=0)
    res = eng.fit(data, max_epochs=2)
    assert res.stopped == "max_epochs" and res.updates == 6 and eng.epoch == 2



def test_epoch_schedules_follow_the_engine():
    # the engine calls set_epoch (1-based) on lr and alpha at the start of every epoch
    task = TinyRegress()
    rng = np.random.default_rng(4)
    data = [task.generate(rng, 4, 7) for _ in range(3)]
    eng = Engine(make_model(TinyRegress), O.SGD(0.01), C.GradientClipper(1.0), 0.01,
                 alpha=O.EpochInverse(2.0), seed=0, num_threads=1)
    eng.fit(data, max_epochs=3)
    assert list(eng.history["alpha"]) == [1.0] * 3 + [0.5] * 3 + [2.0 / 6] * 3
    assert eng.alpha.state_dict() == {"epoch": 3}


class TinyStream:
    """B parallel streams cut into segments; each continues the previous one
    (the data helper's CharStream protocol: carries_state, batch.reset)."""

    carries_state = True

    def __init__(self, n_seg=4, T=6, B=3, seed=0):
        rng = np.random.default_rng(seed)
        u = rng.normal(size=(n_seg * T, B, 2))
        t = 0.1 * np.cumsum(u[..., :1], axis=0)  # needs memory across segments
        self.segs = [Batch(u[i * T:(i + 1) * T], t[i * T:(i + 1) * T], None, i == 0)
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
    eng = Engine(m, O.SGD(0.01), C.GradientClipper(1.0), 0.01, seed=0)
    eng.fit(data, max_updates=6)  # one epoch and a half: the 5th batch is a reset
    assert seen[0][0] is None and seen[4][0] is None
    for i in (1, 2, 3, 5):
        assert np.array_equal(seen[i][0], seen[i - 1][1]), i
    # validation over a carrying stream chains the segments too
    m.loss_and_grad = real
    eng2 = Engine(m, O.SGD(0.01), C.GradientClipper(1.0), 0.01, seed=0)
    rec = Validation(data, every=0, task=TinyRegress()).validate(eng2)
    assert eng2.validations == [rec]
    full_u = np.concatenate([b.u for b in data])
    full_t = np.concatenate([b.targets for b in data])
    y = m.outputs(full_u)
    per_seg = [np.mean(np.sum((y[i * 6:(i + 1) * 6] - full_t[i * 6:(i + 1) * 6]) ** 2, axis=-1))
               for i in range(4)]
    assert rec["loss"] == pytest.approx(np.mean(per_seg), rel=1e-12)


def test_resume_mid_stream_restores_carried_state(tmp_path):
    data = TinyStream(n_seg=5)

    def mk(seed=1, cbs=()):
        return Run(make_model(TinyRegress, seed=seed), data, optimizer=O.SGD(0.02, momentum=0.9),
                   clip=1.0, alpha=0.5, seed=0, num_threads=1, callbacks=cbs)

    full = mk()
    full.run(13)
    part = mk(cbs=[Checkpoint(str(tmp_path / "c.npz"))])
    part.run(7)
    rest = mk(seed=3)
    rest.load_checkpoint(tmp_path / "c.npz")
    assert rest.h_carry is not None
    assert np.array_equal(rest.h_carry, part.h_carry)
    rest.run(13)
    assert_same_state(full, rest)


# --------------------------------------------------------- files and resume
def test_history_files(tmp_path):
    task = TinyOrder()
    run = make_run(make_model(), task, history=str(tmp_path / "h"))
    run.run(15)
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
    assert float(rows[4]["norm"]) == run.history["norm"][4]
    assert rows[0]["rho"] == "nan"
    assert sorted(os.listdir(tmp_path)) == ["h.csv", "h.json"]


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_history_writer_appends_only_new_rows(tmp_path):
    task = TinyOrder()
    run = make_run(make_model(), task)
    run.run(6)
    w = HistoryWriter(tmp_path / "inc")
    w.write(run.history)
    first = (tmp_path / "inc.csv").read_bytes()
    run.run(15)
    w.write(run.history)
    write_history(tmp_path / "once", run.history)
    # the appended file equals a one-shot write of the whole history, byte for byte
    assert (tmp_path / "inc.csv").read_bytes() == (tmp_path / "once.csv").read_bytes()
    assert (tmp_path / "inc.csv").read_bytes().startswith(first)
    # the JSON built from the kept column texts is the whole history's json.dumps
    cols = {k: run.history[k].tolist() for k in run.history.columns}
    cols["action"] = [("ok", "clipped", "skipped", "shrunk")[a] for a in cols["action"]]
    expect = json.dumps(json_safe({"columns": cols, "validation": [], "summary": {}}),
                        allow_nan=False) + "\n"
    assert (tmp_path / "inc.json").read_text() == expect
    assert (tmp_path / "once.json").read_text() == expect
    # a file changed behind the writer's back is rewritten, not appended to
    with open(tmp_path / "inc.csv", "a") as f:
        f.write("1,2,partial")
    w.write(run.history)
    assert (tmp_path / "inc.csv").read_bytes() == (tmp_path / "once.csv").read_bytes()
    # so is one after reset() (a restored checkpoint may be behind the file)
    w.reset()
    with open(tmp_path / "inc.csv", "a") as f:
        f.write("16,10,0.5,1.0,0,ok,nan,0.0,0.1,nan,0,0.0\n")
    w.write(run.history)
    assert (tmp_path / "inc.csv").read_bytes() == (tmp_path / "once.csv").read_bytes()
    rows = _csv_rows(tmp_path / "inc.csv")
    assert [int(r["update"]) for r in rows] == list(range(1, 16))
    # a cleared history that grew past the rows on disk is written anew, not appended
    run.history.clear()
    run.run(35)
    w.write(run.history, validations=[{"update": 30, "error": float("nan")}], summary={"x": 1})
    assert [int(r["update"]) for r in _csv_rows(tmp_path / "inc.csv")] == list(range(16, 36))
    doc = json.loads((tmp_path / "inc.json").read_text())
    assert doc["columns"]["update"] == list(range(16, 36))
    assert doc["validation"] == [{"update": 30, "error": None}] and doc["summary"] == {"x": 1}


@pytest.mark.parametrize("clip", [1.0, "auto"])
def test_resume_is_bit_identical(tmp_path, clip):
    task = TinyOrder()

    def clipper():
        if clip == "auto":
            return C.GradientClipper(C.AutoThreshold(1.5, warmup=4, decay=0.9))
        return clip

    full = make_run(make_model(), task, clip=clipper())
    full.run(30)

    first = make_run(make_model(), task, tmp_path, clip=clipper())
    first.run(13)
    assert os.path.exists(tmp_path / "ckpt.npz")
    # a fresh process: a new model with a different init, restored from the file
    second = make_run(make_model(seed=99), task, tmp_path, clip=clipper())
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

    def mk(seed=1, path=None):
        cbs = [Validation(data[:2], every=0, at_epoch_end=True, task=task)]
        if path:
            cbs.append(Checkpoint(path))
        return Run(make_model(TinyRegress, seed=seed), data, optimizer=O.SGD(0.02, momentum=0.9),
                   lr=0.02, clip=1.0, alpha=0.5, seed=0, num_threads=1, callbacks=cbs)

    full = mk()
    full.run(20)
    assert full.epoch == 3 and len(full.validations) == 3
    part = mk(path=str(tmp_path / "c.npz"))
    part.run(9)
    rest = mk(seed=7)
    rest.load_checkpoint(tmp_path / "c.npz")
    assert rest.epoch == 1 and rest.batch_in_epoch == 3
    rest.run(20)
    assert_same_state(full, rest)


def test_crash_while_checkpointing_keeps_last_good(tmp_path, monkeypatch):
    task = TinyOrder()
    run = make_run(make_model(), task, tmp_path)
    run.run(6)
    good = (tmp_path / "ckpt.npz").read_bytes()
    real_savez = np.savez

    def crash(f, **arrays):  # write part of the archive, then die
        real_savez(f, **arrays)
        f.truncate(100)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        run.run(12)
    monkeypatch.undo()
    assert (tmp_path / "ckpt.npz").read_bytes() == good
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    again = make_run(make_model(seed=5), task, tmp_path)
    again.load_checkpoint(tmp_path / "ckpt.npz")
    assert again.update == 6


def _assert_untouched(run, before, update):
    assert run.update == update
    for k in before:
        assert np.array_equal(run.model.params[k], before[k])


def test_corrupt_checkpoint_is_refused_and_nothing_lost(tmp_path):
    task = TinyOrder()
    run = make_run(make_model(), task, tmp_path)
    run.run(5)
    data = (tmp_path / "ckpt.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.npz").write_bytes(os.urandom(2000))
    victim = make_run(make_model(seed=4), task)
    victim.run(3)
    before = {k: v.copy() for k, v in victim.model.params.items()}
    rng_state = victim.rng_train.bit_generator.state
    for name in ("trunc.npz", "junk.npz"):
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            victim.load_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        victim.load_checkpoint(tmp_path / "none.npz")
    model_file = tmp_path / "model.npz"
    run.model.save(model_file)
    with pytest.raises(CheckpointError, match=r"not a rnnfast\.Checkpoint") as e:
        victim.load_checkpoint(model_file)
    assert "'rnnfast.RNNModel' file" in str(e.value)  # names the format it found
    _assert_untouched(victim, before, 3)
    assert victim.rng_train.bit_generator.state == rng_state
    assert len(victim.history) == 3


def test_checkpoint_of_another_format_or_version_is_named(tmp_path):
    from rnnfast.fileio import write_npz

    write_npz(tmp_path / "old.npz", {"x": np.zeros(2)},
              {"format": "rnnfast.TrainerCheckpoint", "version": 1})
    with pytest.raises(CheckpointError, match="rnnfast.TrainerCheckpoint"):
        ckpt.load_checkpoint(tmp_path / "old.npz")
    write_npz(tmp_path / "v9.npz", {}, {"format": ckpt.FORMAT, "version": 9, "state": {}})
    with pytest.raises(CheckpointError, match="version 9"):
        ckpt.load_checkpoint(tmp_path / "v9.npz")


def test_checkpoint_round_trips_nested_state(tmp_path):
    state = {"a": np.arange(3.0), "b": [1, {"c": np.ones((2, 2), np.float32)}], "d": None,
             "e": "x"}
    ckpt.save_checkpoint(tmp_path / "s.npz", state)
    back = ckpt.load_checkpoint(tmp_path / "s.npz")
    assert np.array_equal(back["a"], state["a"]) and back["b"][0] == 1
    assert back["b"][1]["c"].dtype == np.float32 and back["d"] is None and back["e"] == "x"


def _tamper(path, fn):
    """Rewrite a checkpoint's state through ``fn(state)``."""
    state = ckpt.load_checkpoint(path)
    fn(state)
    ckpt.save_checkpoint(path, state)


def test_negative_update_counter_is_refused(tmp_path):
    task = TinyOrder()
    run = make_run(make_model(), task, tmp_path)
    run.run(4)
    _tamper(tmp_path / "ckpt.npz", lambda s: s["engine"].__setitem__("update", -1))
    victim = make_run(make_model(seed=4), task)
    victim.run(2)
    before = {k: v.copy() for k, v in victim.model.params.items()}
    with pytest.raises(CheckpointError, match="update must be an integer >= 0"):
        victim.load_checkpoint(tmp_path / "ckpt.npz")
    _assert_untouched(victim, before, 2)


def test_inconsistent_checkpoint_leaves_the_engine_untouched(tmp_path):
    task = TinyOrder()
    run = make_run(make_model(), task, tmp_path)
    run.run(4)
    # a state validated late (the params' shapes) must not half-commit the earlier ones
    _tamper(tmp_path / "ckpt.npz",
            lambda s: s["engine"]["params"].__setitem__("W_rec", np.zeros((3, 3))))
    victim = make_run(make_model(seed=4), task)
    victim.run(2)
    before = {k: v.copy() for k, v in victim.model.params.items()}
    vel = {k: v.copy() for k, v in victim.optimizer.velocity.items()}
    rng_state = victim.rng_train.bit_generator.state
    with pytest.raises(CheckpointError):
        victim.load_checkpoint(tmp_path / "ckpt.npz")
    _assert_untouched(victim, before, 2)
    assert victim.rng_train.bit_generator.state == rng_state
    for k, v in vel.items():
        assert np.array_equal(victim.optimizer.velocity[k], v)


class Counter(Callback):
    """A callback with state (saved in checkpoints under its name)."""

    def __init__(self):
        self.n = 0

    def on_update_end(self, engine, batch, row):
        self.n += 1

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = int(state["n"])


def test_callback_state_is_saved_and_a_missing_one_refused(tmp_path):
    task = TinyOrder()
    path = str(tmp_path / "c.npz")

    def mk(*cbs):
        return Run(make_model(), task, optimizer=O.SGD(0.05), batch_size=5, seed=0,
                   num_threads=1, callbacks=list(cbs))

    mk(Counter(), Checkpoint(path)).run(4)
    b = mk(Counter())
    b.load_checkpoint(path)
    assert b.update == 4 and b.callbacks[0].n == 4
    _tamper(path, lambda s: s.__setitem__("callbacks", {}))
    c = mk(Counter())
    c.run(2)
    before = {k: v.copy() for k, v in c.model.params.items()}
    with pytest.raises(CheckpointError, match="no state for callback 'Counter'"):
        c.load_checkpoint(path)
    _assert_untouched(c, before, 2)
    assert c.callbacks[0].n == 2


def test_checkpoint_settings_must_match(tmp_path):
    task = TinyOrder()
    run = make_run(make_model(), task, tmp_path)
    run.run(4)
    other = make_run(make_model(), task, batch_size=6)
    with pytest.raises(CheckpointError, match="batch_size"):
        other.load_checkpoint(tmp_path / "ckpt.npz")
    assert other.update == 0
    bigger = make_run(make_model(hidden=9), task)
    with pytest.raises(CheckpointError, match="model"):
        bigger.load_checkpoint(tmp_path / "ckpt.npz")
    # an experiment's config is stored and compared
    eng = build("SGD-CR", task=task, hidden=8, seed=0, batch_size=5, dtype="float64")
    cb = Checkpoint(str(tmp_path / "cfg.npz"), config={"lengths": [50]})
    eng.fit(task, max_updates=2, callbacks=[cb])
    eng2 = build("SGD-CR", task=task, hidden=8, seed=0, batch_size=5, dtype="float64")
    with pytest.raises(CheckpointError, match="settings differ"):
        Checkpoint(str(tmp_path / "cfg.npz"), config={"lengths": [100]}).restore(eng2, [])
    assert eng2.update == 0
    cb.restore(eng2, [cb])
    assert eng2.update == 2


# ----------------------------------------------------------------- options
def test_bad_engine_options():
    task = TinyOrder()
    m = make_model()
    clip = C.GradientClipper(1.0)
    with pytest.raises(ValueError, match="every"):
        Validation(task, every="sometimes")
    with pytest.raises(ValueError, match="monitor"):
        Validation(task, monitor="accuracy")
    with pytest.raises(ValueError, match="nonfinite"):
        C.GradientClipper(1.0, nonfinite="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        Engine(m, O.SGD(0.1), clip, 0.1, batch_size=0)
    with pytest.raises(TypeError, match="RNNModel"):
        Engine("model", O.SGD(0.1), clip, 0.1)
    with pytest.raises(TypeError, match="GradientClipper"):
        Engine(m, O.SGD(0.1), 1.0, 0.1)
    with pytest.raises(ValueError, match="frozen"):
        Engine(m, O.SGD(0.1), clip, 0.1, frozen=("W_nope",))
    eng = Engine(m, O.SGD(0.1), clip, 0.1)
    with pytest.raises(TypeError, match="data: expected"):
        eng.fit(42, max_updates=1)
    with pytest.raises(ValueError, match=r"n_in=2 disagrees with the task's n_in=6"):
        build_model(task=task, n_in=2)
    with pytest.raises(TypeError, match="minibatch must be"):
        eng.fit([np.zeros(3)], max_updates=1)
    with pytest.raises(ValueError, match="names must be unique"):
        eng.fit(task, max_updates=1, callbacks=[Progress(), Progress()])


def test_quiet_without_terminal(capsys):
    run = make_run(make_model(), TinyOrder())
    run.run(8)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    lines = []
    run2 = make_run(make_model(), TinyOrder(), log=lines.append)
    run2.run(14)
    assert len(lines) == 2 and "valid error" in lines[0]


def test_progress_bar_on_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    import io

    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    run = make_run(make_model(), TinyOrder(), valid_every=0)
    run.callbacks[0].total = 60
    run.run(60)
    assert "60/60" in tty.getvalue()
    quiet = make_run(make_model(), TinyOrder(), valid_every=0, progress=False)
    tty.truncate(0)
    tty.seek(0)
    quiet.run(5)
    assert tty.getvalue() == ""


# ------------------------------------------------------- factory and methods
def test_canonical_method_aliases():
    assert tuple(METHODS) == ("SGD", "SGD-C", "SGD-CR")
    for spelling, name in [("SGD", "SGD"), ("sgd", "SGD"), (" Sgd ", "SGD"),
                           ("SGD-C", "SGD-C"), ("sgd-c", "SGD-C"), ("SGD+C", "SGD-C"),
                           ("sgdc", "SGD-C"), ("c", "SGD-C"),
                           ("SGD-CR", "SGD-CR"), ("sgd-cr", "SGD-CR"), ("SGD+CR", "SGD-CR"),
                           ("sgd+cr", "SGD-CR"), ("SGDCR", "SGD-CR"), ("cr", "SGD-CR")]:
        assert canonical_method(spelling) == name, spelling
    for bad in ("adam", "", "SGD-X", "r"):
        with pytest.raises(ValueError, match="method"):
            canonical_method(bad)


def test_build_follows_the_method():
    task = TinyOrder()
    sgd = build("sgd", task=task, hidden=8, seed=0)
    c = build("SGD+C", task=task, hidden=8, seed=0)
    cr = build("cr", task=task, hidden=8, seed=0)
    assert sgd.clipper.threshold is None and sgd.alpha is None
    assert c.clipper.threshold == 1.0 and c.alpha is None
    assert cr.clipper.threshold == 1.0 and cr.alpha(0) == 4.0
    # the same seed gives the same model (the init stream is the seed's third child)
    for k in sgd.model.params:
        assert np.array_equal(sgd.model.params[k], cr.model.params[k])
    assert (cr.model.n_in, cr.model.n_out) == (6, 4)
    assert build("SGD-CR", task=task, hidden=8, alpha=0, seed=0).alpha is None
    with pytest.raises(ValueError, match="method"):
        build("adam", task=task)


# ------------------------------------------------------- deprecated paths
@pytest.mark.parametrize("old, new", [
    ("rnnfast.model", "rnnfast.nn.model"),
    ("rnnfast.clipping", "rnnfast.nn.clipping"),
    ("rnnfast.optim", "rnnfast.nn.optim"),
    ("rnnfast.init", "rnnfast.nn.init"),
    ("rnnfast.losses", "rnnfast.nn.losses"),
    ("rnnfast.diagnostics", "rnnfast.analysis.diagnostics"),
    ("rnnfast.reproduce.natural", "rnnfast.experiments.natural"),
    ("rnnfast.commands.train", "rnnfast.cli.train"),
])
def test_old_module_paths_warn_and_alias(monkeypatch, old, new):
    new_mod = importlib.import_module(new)
    for name in list(sys.modules):
        if name == old or name.startswith(old + "."):
            monkeypatch.delitem(sys.modules, name)
    parent = old.rsplit(".", 1)[0]
    if parent != "rnnfast" and parent in sys.modules:
        monkeypatch.delitem(sys.modules, parent)
    with pytest.deprecated_call() as rec:
        old_mod = importlib.import_module(old)
    assert any(f"{old} is deprecated; import {new}" in str(w.message) for w in rec), \
        [str(w.message) for w in rec]
    assert old_mod is new_mod


def test_old_paths_give_the_same_objects(monkeypatch):
    from rnnfast.nn.model import RNNModel as New

    monkeypatch.delitem(sys.modules, "rnnfast.model", raising=False)
    with pytest.warns(DeprecationWarning, match="rnnfast.model is deprecated"):
        from rnnfast.model import RNNModel as Old
    assert Old is New
    monkeypatch.delitem(sys.modules, "rnnfast.trainer", raising=False)
    with pytest.warns(DeprecationWarning):
        import rnnfast.trainer as old_trainer
    from rnnfast.train import trainer as new_trainer

    assert old_trainer is new_trainer
    # the new paths import without any warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("rnnfast.nn.model", "rnnfast.train", "rnnfast.fileio",
                     "rnnfast.experiments.natural", "rnnfast.cli.train"):
            importlib.import_module(name)


# --------------------------------------------------------------------- CLI
def _cli(argv):
    from rnnfast.cli import train

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
    assert _cli(SHORT + ["--out", str(a), "--max-updates", "25", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["updates"] == 25 and summary["method"] == "SGD-CR"
    assert {"options.json", "checkpoint.npz", "history.json", "history.csv", "model.npz"} <= set(
        os.listdir(a))
    assert _cli(SHORT + ["--out", str(b), "--max-updates", "12"]) == 0
    assert _cli(SHORT + ["--out", str(b), "--max-updates", "12"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert _cli(["--out", str(b), "--resume", "--max-updates", "25", "--quiet"]) == 0
    capsys.readouterr()
    ha = json.loads((a / "history.json").read_text())["columns"]
    hb = json.loads((b / "history.json").read_text())["columns"]
    for k in ha:
        if k != "seconds":
            assert ha[k] == hb[k], k
    # the CSV of the resumed run (appended to across the two calls) holds the same rows
    ca, cb = _csv_rows(a / "history.csv"), _csv_rows(b / "history.csv")
    assert len(ca) == len(cb) == 25
    assert all({**x, "seconds": 0} == {**y, "seconds": 0} for x, y in zip(ca, cb))
    ma = RNNModel.load(a / "model.npz")
    mb = RNNModel.load(b / "model.npz")
    for k in ma.params:
        assert np.array_equal(ma.params[k], mb.params[k])
    assert all(x is not None for x in ha["omega"])  # SGD-CR: Omega recorded every update


def test_cli_unknown_task_and_missing_resume(tmp_path, capsys):
    pytest.importorskip("rnnfast.tasks")
    assert _cli(["--task", "juggling", "--quiet"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert _cli(["--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
