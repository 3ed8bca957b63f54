"""Checkpoint(seconds=...): a time-based cadence whose saves stay a bounded share of the run.

The clock is the callbacks module's ``time.perf_counter``, replaced by a fake one that the
training advances by one second per update and a save by a chosen duration."""

import pytest

from rnnfast import tasks
from rnnfast.train import Checkpoint, build
from rnnfast.train import callbacks as cbmod


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Tick(cbmod.Callback):
    """One second of 'training' per update."""

    def __init__(self, clock):
        self.clock = clock

    def on_update_end(self, engine, batch, row):
        self.clock.now += 1.0


def _run(monkeypatch, tmp_path, updates, save_seconds, **kw):
    clock = FakeClock()
    monkeypatch.setattr(cbmod.time, "perf_counter", clock)
    saves = []
    real_write = cbmod.HistoryWriter.write

    def slow_write(self, history, **kw):  # a save's duration, as the clock sees it
        saves.append(len(history))
        clock.now += save_seconds
        real_write(self, history, **kw)
    monkeypatch.setattr(cbmod.HistoryWriter, "write", slow_write)
    cp = Checkpoint(str(tmp_path / "c.npz"), history=str(tmp_path / "h"), **kw)
    task = tasks.TemporalOrder(10, 12)
    engine = build("SGD-C", task=task, hidden=4, lr=0.01, clip=1.0, seed=0)
    engine.fit(task, max_updates=updates,
               callbacks=[Tick(clock), cp])
    return saves


def test_saves_every_interval_when_saving_is_cheap(monkeypatch, tmp_path):
    saves = _run(monkeypatch, tmp_path, 50, 0.0, seconds=10)
    # one save per 10 'seconds' of training, and the final one
    assert saves == [10, 20, 30, 40, 50, 50]


def test_slow_saves_are_spaced_to_ten_times_their_cost(monkeypatch, tmp_path):
    saves = _run(monkeypatch, tmp_path, 100, 3.0, seconds=10)
    # after a 3 s save the next waits 30 s (not 10): saving stays under ~10% of the run
    assert saves[:3] == [10, 40, 70]
    gaps = [b - a for a, b in zip(saves, saves[1:-1])]
    assert all(g >= 30 for g in gaps)


def test_every_and_seconds_combine(monkeypatch, tmp_path):
    saves = _run(monkeypatch, tmp_path, 20, 0.0, every=7, seconds=10)
    # a save of either kind restarts the clock: 7, 14 (every), then 24 is past the end
    assert saves == [7, 14, 20]


@pytest.mark.parametrize("bad", [0, -1.0, "60", True])
def test_bad_seconds_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="seconds"):
        Checkpoint(str(tmp_path / "c.npz"), seconds=bad)
