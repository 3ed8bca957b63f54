"""rnnfast.analysis.memory: the probes and the error-by-distance table."""

import numpy as np
import pytest

from rnnfast.analysis.memory import error_by_distance, marker_probe
from rnnfast.nn.model import RNNModel
from rnnfast.tasks import get_task


def _model(seed=0):
    return RNNModel(6, 12, 4, init="basic_tanh", loss="softmax_ce", at="last", rng=seed)


def test_probe_of_a_model_that_ignores_its_input_is_at_chance():
    m = _model()
    m.params["W_in"][...] = 0  # the state never sees a marker
    r = marker_probe(m, p0=3, p1=9, lags=(0, 5, 40), n_sequences=800, rng=1)
    assert r.lags.tolist() == [0, 5, 40]
    for acc in (r.probe_first, r.probe_second, r.readout_first, r.readout_second):
        assert np.all(np.abs(acc - 0.5) < 0.1)


def test_probe_reads_a_bit_held_in_the_state():
    # A linear unit that adds +1 for A and -1 for B and never decays holds
    # (1 - 2 v0) + (1 - 2 v1) after the markers: 2, 0 or -2.
    m = RNNModel(6, 2, 4, init="basic_tanh", activation="linear", loss="softmax_ce", at="last",
                 rng=0)
    p = m.params
    p["W_rec"][...] = np.eye(2)
    p["W_in"][...] = 0
    p["W_in"][0, 0], p["W_in"][0, 1] = 1.0, -1.0
    p["b"][...] = 0
    r = marker_probe(m, p0=2, p1=4, lags=(1, 30), n_sequences=600, rng=2)
    # 2 and -2 give both bits; 0 is (A, B) or (B, A): each bit is read 3/4 of the time, at
    # every lag
    assert np.allclose(r.probe_first, 0.75, atol=0.06)
    assert np.allclose(r.probe_second, 0.75, atol=0.06)
    assert r.probe_first[0] == pytest.approx(r.probe_first[1], abs=0.03)


def test_error_by_distance_bins_every_sequence():
    m = _model(1)
    task = get_task("temporal_order", min_length=20, max_length=21)
    d = error_by_distance(m, task, [20, 40], n_sequences=300, rng=3, bins=4)
    assert d.sequences.sum() == 600
    assert len(d.edges) == len(d.sequences) + 1
    ok = d.sequences > 0
    assert np.all((d.error[ok] >= d.first_wrong[ok]) & (d.error[ok] >= d.second_wrong[ok]))
    assert np.all((0 <= d.error[ok]) & (d.error[ok] <= 1))


def test_probe_rejects_bad_positions():
    with pytest.raises(ValueError):
        marker_probe(_model(), p0=5, p1=5)


def test_error_by_gap_between_markers():
    m = _model(2)
    task = get_task("temporal_order", min_length=20, max_length=21)
    after = error_by_distance(m, task, [30, 60], n_sequences=200, rng=4, bins=3)
    gap = error_by_distance(m, task, [30, 60], by="gap", n_sequences=200, rng=4, bins=3)
    assert gap.sequences.sum() == after.sequences.sum() == 400
    # the same sequences and answers, binned by another distance: the same overall error
    assert np.average(gap.error[gap.sequences > 0], weights=gap.sequences[gap.sequences > 0]) \
        == pytest.approx(np.average(after.error[after.sequences > 0],
                                    weights=after.sequences[after.sequences > 0]))
    with pytest.raises(ValueError, match="by"):
        error_by_distance(m, task, [30], by="first")
