"""Tests of the reproduction machinery: configuration keys, the atomic result
store, the executor-based sweep runner (resume, retries, a dying worker), the
synthetic sweep end to end (a short temporal-order run solved by SGD-CR, its
tables and figure), the generalisation evaluation and the command line."""

import argparse
import concurrent.futures as cf
import hashlib
import io
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from rnnfast import fileio
from rnnfast.experiments import sweep as sw
from rnnfast.experiments import generalization as gen
from rnnfast.experiments import synthetic as syn
from rnnfast.cli import reproduce as cmd


# --------------------------------------------------------------------------- helpers
def _square(config):
    """A cheap pure run: module level, so a spawned worker can import it."""
    return {"value": config["x"] ** 2, "seconds": 0.0}


_DIE_DIR_ENV = "RNNFAST_TEST_DIE_DIR"


def _die_once(config):
    """Kills its worker process the first time it runs for a config (marker file)."""
    marker = os.path.join(config["dir"], f"died-{config['x']}")
    if config.get("die") and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("x")
        os._exit(3)
    return {"value": config["x"] * 10, "seconds": 0.0, "pid": os.getpid()}


class Counter:
    """Thread-safe call counter around a run function (for thread executors)."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, config):
        with self.lock:
            self.calls.append(config)
        return self.fn(config)


def _tiny_settings(**kw):
    base = dict(lengths=(10,), seeds=1, methods=("sgd-cr",), inits=("smart_tanh",),
                max_updates=100, valid_every=50, valid_size=100, eval_size=200)
    base.update(kw)
    return syn.SweepSettings(**base)


# --------------------------------------------------------------------------- hashing
def test_config_hash_is_canonical_and_stable_across_processes():
    cfg = {"task": "temporal_order", "length": 50, "seed": 3, "lr": 0.01, "clip": None,
           "nested": {"b": [1, 2], "a": True}}
    reordered = {k: cfg[k] for k in reversed(list(cfg))}
    assert sw.config_hash(cfg) == sw.config_hash(reordered)
    text = ('{"clip":null,"length":50,"lr":0.01,"nested":{"a":true,"b":[1,2]},"seed":3,'
            '"task":"temporal_order"}')
    assert sw.canonical_json(cfg) == text
    assert sw.config_hash(cfg) == hashlib.sha256(text.encode()).hexdigest()[:16]
    # another interpreter with a different string-hash seed gives the same key
    code = ("import json,sys; from rnnfast.experiments.sweep import config_hash; "
            "print(config_hash(json.loads(sys.argv[1])))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(reordered)], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == sw.config_hash(cfg)


def test_config_hash_distinguishes_values_and_rejects_bad_configs():
    a = {"seed": 0, "length": 50}
    assert sw.config_hash(a) != sw.config_hash({"seed": 1, "length": 50})
    assert sw.config_hash(a) != sw.config_hash({"seed": 0, "length": 50.0})
    with pytest.raises(ValueError, match="config"):
        sw.config_hash({"x": float("nan")})
    with pytest.raises(TypeError, match="config"):
        sw.config_hash({"x": object()})
    with pytest.raises(TypeError, match="mapping"):
        sw.config_hash([("x", 1)])


def test_make_configs_cover_the_grid_and_pair_methods():
    s = syn.SweepSettings(lengths=(20, 30), seeds=2)
    cfgs = syn.make_configs(s)
    assert len(cfgs) == 3 * 3 * 2 * 2
    keys = {sw.config_hash(c) for c in cfgs}
    assert len(keys) == len(cfgs)
    by = {(c["init"], c["method"], c["length"], c["seed"]): c for c in cfgs}
    assert by[("sigmoid", "SGD", 20, 0)]["clip"] is None
    assert by[("sigmoid", "SGD", 20, 0)]["alpha"] == 0.0
    assert by[("sigmoid", "SGD-C", 20, 0)]["clip"] == 1.0
    assert by[("sigmoid", "SGD-C", 20, 0)]["alpha"] == 0.0
    assert by[("sigmoid", "SGD-CR", 20, 0)]["alpha"] == 4.0
    # the three methods of one point share their seeds (paired comparison)
    seeds = {tuple(syn._seed_sequence(by[("basic_tanh", m, 30, 1)]).generate_state(4))
             for m in syn.METHODS}
    assert len(seeds) == 1
    assert syn._seed_sequence(by[("basic_tanh", "SGD", 30, 0)]).generate_state(2).tolist() != \
        syn._seed_sequence(by[("basic_tanh", "SGD", 30, 1)]).generate_state(2).tolist()
    with pytest.raises(ValueError, match="methods"):
        syn.SweepSettings(methods=("adam",))
    with pytest.raises(ValueError, match="max_updates"):
        syn.SweepSettings(max_updates=0)


# --------------------------------------------------------------------------- store
def test_store_writes_atomically_and_ignores_corrupt_files(tmp_path, monkeypatch):
    store = sw.ResultStore(tmp_path)
    cfg = {"x": 1}
    key = store.save(cfg, {"value": 1})
    assert store.load(key)["result"] == {"value": 1}
    assert os.listdir(tmp_path / "runs") == [f"{key}.json"]
    assert os.stat(store.path(key)).st_mode & 0o777 == 0o666 & ~fileio._UMASK

    # a crash while writing leaves the previous file intact and no temporary file
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.save(cfg, {"value": 2})
    monkeypatch.undo()
    assert store.load(key)["result"] == {"value": 1}
    assert os.listdir(tmp_path / "runs") == [f"{key}.json"]

    # truncated or mismatching files count as missing (the run is redone)
    (tmp_path / "runs" / f"{key}.json").write_text('{"key": "')
    assert store.load(key) is None and key not in store
    other = sw.config_hash({"x": 2})
    (tmp_path / "runs" / f"{other}.json").write_text(
        json.dumps({"key": other, "config": {"x": 3}, "result": {}}))
    assert store.load(other) is None
    assert len(store.bad) == 2


def test_json_safe_and_nan_results_are_stored_as_strict_json(tmp_path):
    store = sw.ResultStore(tmp_path)
    key = store.save({"x": 1}, {"a": float("nan"), "b": np.float32(1.5), "c": np.int64(2),
                                "d": [float("inf")], "e": np.array([1, 2])})
    with open(store.path(key)) as f:
        text = f.read()
    assert "NaN" not in text and "Infinity" not in text
    assert store.load(key)["result"] == {"a": None, "b": 1.5, "c": 2, "d": ["inf"], "e": [1, 2]}


def test_json_safe_arrays_match_the_element_by_element_rule():
    from rnnfast.fileio import json_safe
    f = np.array([1.5, np.nan, np.inf, -np.inf, 0.0], np.float32)
    assert json_safe(f) == [1.5, None, "inf", "-inf", 0.0]
    assert json_safe(f.astype(np.float64)) == json_safe(f.tolist())
    assert json_safe(np.array([[1.0, np.nan]])) == [[1.0, None]]
    assert json_safe(np.array([True, False])) == [True, False]
    assert json_safe(np.arange(3, dtype=np.int8)) == [0, 1, 2]
    assert all(type(v) is float for v in json_safe(np.ones(2, np.float32)))
    with pytest.raises(TypeError, match="complex"):
        json_safe(np.array([1j]))


# --------------------------------------------------------------------------- runner
def test_sweep_resumes_without_redoing_finished_runs(tmp_path):
    configs = [{"x": i} for i in range(5)] + [{"x": 0}]  # a duplicate is run once
    store = sw.ResultStore(tmp_path)
    fn = Counter(_square)
    events = []
    with cf.ThreadPoolExecutor(2) as ex:
        res = sw.run_sweep(configs, fn, store, executor=ex, num_threads=None,
                           progress=lambda p: events.append((p.event, p.done)))
    assert res.computed == 5 and res.skipped == 0 and not res.failures
    assert [r["result"]["value"] for r in res.records] == [0, 1, 4, 9, 16]
    assert len(fn.calls) == 5
    assert events[0][0] == "start" and events[-1] == ("end", 5)
    assert sum(1 for e, _ in events if e == "done") == 5
    # interrupted sweep: remove two results, rerun: only those two are computed
    os.remove(store.path(sw.config_hash({"x": 1})))
    os.remove(store.path(sw.config_hash({"x": 4})))
    fn2 = Counter(_square)
    with cf.ThreadPoolExecutor(2) as ex:
        res2 = sw.run_sweep(configs, fn2, store, executor=ex, num_threads=None)
    assert sorted(c["x"] for c in fn2.calls) == [1, 4]
    assert res2.skipped == 3 and res2.computed == 2
    # complete sweep: nothing to do
    fn3 = Counter(_square)
    with cf.ThreadPoolExecutor(2) as ex:
        res3 = sw.run_sweep(configs, fn3, store, executor=ex, num_threads=None)
    assert fn3.calls == [] and res3.computed == 0 and len(res3.records) == 5


def test_failed_runs_are_retried_a_bounded_number_of_times(tmp_path):
    attempts = {}
    lock = threading.Lock()

    def flaky(config):
        with lock:
            attempts[config["x"]] = attempts.get(config["x"], 0) + 1
            n = attempts[config["x"]]
        if config["x"] == 1 and n == 1:
            raise RuntimeError("transient")
        if config["x"] == 2:
            raise ValueError("always broken")
        return {"value": config["x"], "seconds": 0.0}

    events = []
    with cf.ThreadPoolExecutor(2) as ex:
        res = sw.run_sweep([{"x": i} for i in range(4)], flaky, sw.ResultStore(tmp_path),
                           executor=ex, num_threads=None, retries=2,
                           progress=lambda p: events.append(p.event))
    assert attempts == {0: 1, 1: 2, 2: 3, 3: 1}
    assert [r["config"]["x"] for r in res.records] == [0, 1, 3]
    assert len(res.failures) == 1
    f = res.failures[0]
    assert f["config"] == {"x": 2} and f["attempts"] == 3 and "always broken" in f["error"]
    assert events.count("retry") == 3 and events.count("failed") == 1
    # the failure is not stored: a rerun tries it again
    assert sw.config_hash({"x": 2}) not in sw.ResultStore(tmp_path)


def test_a_dying_worker_is_retried_in_a_rebuilt_spawn_pool(tmp_path):
    configs = [{"x": i, "dir": str(tmp_path), "die": i == 1} for i in range(3)]
    events = []
    res = sw.run_sweep(configs, _die_once, sw.ResultStore(tmp_path / "out"), workers=2,
                       num_threads=1, retries=2, progress=lambda p: events.append(p.event))
    assert not res.failures
    assert sorted(r["result"]["value"] for r in res.records) == [0, 10, 20]
    assert os.path.exists(tmp_path / "died-1")
    assert "retry" in events
    assert all(r["result"]["threads"] == 1 for r in res.records)
    assert all(r["result"]["worker_pid"] != os.getpid() for r in res.records)


def test_run_sweep_checks_its_arguments(tmp_path):
    with pytest.raises(TypeError, match="store"):
        sw.run_sweep([], _square, str(tmp_path))
    with pytest.raises(TypeError, match="executor"):
        sw.run_sweep([], _square, sw.ResultStore(tmp_path), executor=object())
    with pytest.raises(ValueError, match="retries"):
        sw.run_sweep([], _square, sw.ResultStore(tmp_path), executor=cf.ThreadPoolExecutor(1),
                     retries=-1)
    with pytest.raises(ValueError, match="workers"):
        sw.local_executor(0)


# --------------------------------------------------------------------------- runs
def test_train_run_is_a_pure_function_of_its_config():
    cfg = syn.make_configs(_tiny_settings(methods=("sgd-c",), max_updates=60, valid_every=30))[0]
    a = syn.train_run(cfg)
    b = syn.train_run(dict(cfg))
    drop = ("seconds", "ms_per_update")
    assert sw.json_safe({k: v for k, v in a.items() if k not in drop}) == \
        sw.json_safe({k: v for k, v in b.items() if k not in drop})
    assert a["updates"] == 60 and len(a["validations"]) == 2
    json.dumps(sw.json_safe(a), allow_nan=False)


def test_short_temporal_order_is_solved_by_sgd_cr_end_to_end(tmp_path):
    """Smoke test: temporal order at length 20, SGD-CR, smart_tanh, paper's lr/clip/alpha,
    solved (< 1% errors on 2,000 fresh sequences) within 3,000 updates; the tables are
    written, and a rerun does no work."""
    settings = syn.SweepSettings(lengths=(20,), seeds=1, methods=("sgd-cr",),
                                 inits=("smart_tanh",), max_updates=3000, valid_every=250,
                                 valid_size=500, eval_size=2000)
    out = tmp_path / "sweep"
    with cf.ThreadPoolExecutor(1) as ex:  # the spawn pool is tested above
        res = syn.run_synthetic(settings, out, executor=ex, workers=1, num_threads=1,
                                progress=False, estimate=False)
    assert res["computed"] == 1 and not res["failures"]
    r = res["records"][0]["result"]
    assert r["solved"], r
    assert r["updates_to_success"] <= 3000
    assert r["confirm_error"] < 0.01
    point = res["points"][0]
    assert point["success_rate"] == 1.0 and point["updates_median"] == r["updates_to_success"]
    for name in ("runs.csv", "summary.csv", "summary.json", "sweep.json"):
        assert (out / name).is_file()
    doc = json.loads((out / "summary.json").read_text())
    assert doc["points"][0]["solved"] == 1 and doc["settings"]["lengths"] == [20]
    # the experiment layer does not plot (the CLI draws Figure 7 through rnnfast.plots)
    assert not (out / "figure7.png").exists()
    again = syn.run_synthetic(settings, out, executor=cf.ThreadPoolExecutor(1), workers=1,
                              num_threads=1, progress=False, estimate=False)
    assert again["computed"] == 0 and again["skipped"] == 1
    assert again["records"][0]["result"] == res["records"][0]["result"]


def test_aggregate_on_hand_built_records():
    def rec(method, L, seed, solved, ups, secs):
        c = {"task": "t", "init": "basic_tanh", "method": method, "length": L, "seed": seed,
             "max_updates": 100}
        return {"key": f"{method}{L}{seed}", "config": c,
                "result": {"solved": solved, "updates_to_success": ups if solved else None,
                           "updates": ups if solved else 100, "seconds": secs}}

    recs = [rec("SGD-CR", 50, 0, True, 40, 1.0), rec("SGD-CR", 50, 1, True, 60, 3.0),
            rec("SGD-CR", 50, 2, False, None, 5.0), rec("SGD", 50, 0, False, None, 2.0)]
    pts = syn.aggregate(recs)
    assert [(p["method"], p["length"]) for p in pts] == [("SGD", 50), ("SGD-CR", 50)]
    sgd, cr = pts
    assert sgd["success_rate"] == 0 and sgd["updates_median"] is None
    assert cr["runs"] == 3 and cr["solved"] == 2
    assert cr["success_rate"] == pytest.approx(2 / 3)
    assert cr["updates_median"] == 50 and cr["updates_min"] == 40 and cr["updates_max"] == 60
    assert cr["seconds_mean"] == pytest.approx(3.0) and cr["seconds_total"] == pytest.approx(9.0)
    text = syn.format_table(pts)
    assert "SGD-CR" in text and "67%" in text


def test_plot_figure7_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from rnnfast import plots

    pts = []
    for init in syn.INITS:
        for m in syn.METHODS:
            for L, rate in ((20, 1.0), (50, 0.5)):
                pts.append({"init": init, "method": m, "length": L, "success_rate": rate,
                            "updates_median": 100.0 if rate else None})
    path = plots.plot_figure7(pts, tmp_path / "f.png", title="t")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.plot_figure7([], tmp_path / "g.png")


def test_estimate_uses_the_probe_and_the_budget():
    s = _tiny_settings(lengths=(10, 20), seeds=2)
    per = syn.probe_update_time(s, updates=3)
    assert set(per) == {10, 20} and all(v > 0 for v in per.values())
    cfgs = syn.make_configs(s)
    one = syn.estimate_seconds(cfgs, per, 1)
    assert syn.estimate_seconds(cfgs, per, 2) == pytest.approx(one / 2)
    assert one >= sum(c["max_updates"] * per[c["length"]] for c in cfgs)


# --------------------------------------------------------------------------- generalisation
def test_generalization_trains_resumes_and_evaluates_each_length(tmp_path):
    s = gen.GeneralizationSettings(min_length=10, max_length=20, max_updates=40, valid_every=20,
                                   valid_size=50, eval_lengths=(10, 30), eval_size=64,
                                   checkpoint_every=20)
    doc = gen.run_generalization(s, tmp_path, stream=io.StringIO())
    assert [r["length"] for r in doc["rows"]] == [10, 30]
    for r in doc["rows"]:
        assert r["sequences"] == 64 and 0 <= r["errors"] <= 64
        assert r["error_rate"] == pytest.approx(r["errors"] / 64)
    assert doc["train"]["updates"] == 40
    # not solved in 40 updates: the best validation snapshot is what was evaluated
    assert not doc["train"]["solved"] and doc["train"]["evaluated"] == "best"
    best = json.loads((tmp_path / "train" / "best.json").read_text())
    assert best["update"] in (20, 40) and best["error"] == doc["train"]["best_error"]
    assert doc["train"]["best_update"] == best["update"]
    saved = json.loads((tmp_path / "generalization.json").read_text())
    assert saved["rows"] == sw.json_safe(doc["rows"])
    assert (tmp_path / "generalization.csv").read_text().startswith("length,")
    # finished training is not redone; evaluating a saved model gives the same table
    m1, t1 = gen.train_generalization(s, tmp_path / "train")
    assert t1["updates"] == 40
    doc2 = gen.run_generalization(s, tmp_path / "again", model_path=tmp_path / "train" /
                                  "best.npz", stream=io.StringIO())
    assert [r["errors"] for r in doc2["rows"]] == [r["errors"] for r in doc["rows"]]


def test_generalization_training_stops_on_time_and_resumes_exactly(tmp_path):
    s = gen.GeneralizationSettings(min_length=10, max_length=20, max_updates=60, valid_every=20,
                                   valid_size=50, checkpoint_every=20)
    _, part = gen.train_generalization(s, tmp_path / "a", num_threads=1, time_limit=1e-9)
    assert part["stopped"] == "time" and part["updates"] < 60
    assert not (tmp_path / "a" / "train.json").exists()
    assert (tmp_path / "a" / "checkpoint.npz").exists()
    m_resumed, done = gen.train_generalization(s, tmp_path / "a", num_threads=1)
    m_direct, direct = gen.train_generalization(s, tmp_path / "b", num_threads=1)
    assert done["updates"] == direct["updates"] == 60
    assert done["best_update"] == direct["best_update"]
    for k, v in m_direct.params.items():
        np.testing.assert_array_equal(m_resumed.params[k], v)


def test_generalization_engine_is_the_protocols_engine(tmp_path):
    # a probe that drives generalization_engine itself trains the protocol's model
    s = gen.preset("authors", min_length=10, max_length=20, max_updates=30, valid_every=0,
                   checkpoint_every=1000, seed=3)
    model, _ = gen.train_generalization(s, tmp_path, num_threads=1)
    engine, task = gen.generalization_engine(s, num_threads=1)
    w = engine.model.params["W_rec"]
    assert np.all((w != 0).sum(axis=0) == 15)  # the authors' 15 per column (h·W)
    assert np.max(np.abs(np.linalg.eigvals(w.astype(np.float64)))) == pytest.approx(0.95,
                                                                                   rel=1e-5)
    engine.fit(task, max_updates=30)
    for k, v in model.params.items():
        np.testing.assert_array_equal(engine.model.params[k], v)


def test_evaluate_lengths_matches_a_direct_evaluation():
    from rnnfast.nn.model import RNNModel
    from rnnfast.tasks import get_task

    task = get_task("temporal_order", min_length=15, max_length=15)
    model = RNNModel(task.n_in, 8, task.n_out, init="basic_tanh", loss=task.loss, at=task.at,
                     rng=0)
    rows = gen.evaluate_lengths(model, "temporal_order", (15,), n_sequences=300, seed=7)
    rng = np.random.default_rng(np.random.SeedSequence([7, 15]))
    batch = task.generate(rng, 300, 15)
    direct = task.errors(model.outputs(batch.u), batch).mean()
    assert rows[0]["error_rate"] == pytest.approx(direct)


# --------------------------------------------------------------------------- CLI
def _parser():
    p = argparse.ArgumentParser(prog="rnnfast")
    sub = p.add_subparsers(dest="command", required=True)
    cmd.register(sub)
    return p


def test_cli_parses_presets_and_help(capsys):
    args = _parser().parse_args(["reproduce", "synthetic", "--lengths", "20,30",
                                 "--inits", "basic_tanh", "--workers", "3"])
    s = cmd.synthetic_settings(args)
    assert s.lengths == (20, 30) and s.inits == ("basic_tanh",)
    assert s.methods == syn.DEFAULT.methods
    assert s.max_updates == syn.DEFAULT.max_updates and args.workers == 3
    full = cmd.synthetic_settings(_parser().parse_args(["reproduce", "synthetic", "--full"]))
    assert (full.hidden, full.lr, full.clip, full.alpha, full.batch_size) == \
        (50, 0.01, 1.0, 4.0, 20)
    assert full.max_updates == 5_000_000 and full.seeds == 5
    assert full.lengths == syn.FULL.lengths
    g = _parser().parse_args(["reproduce", "generalization", "--eval-lengths", "50,100"])
    assert g.eval_lengths == (50, 100) and g.func is cmd.run_generalization_command
    for argv in (["reproduce", "--help"], ["reproduce", "synthetic", "--help"],
                 ["reproduce", "generalization", "--help"]):
        with pytest.raises(SystemExit) as e:
            _parser().parse_args(argv)
        assert e.value.code == 0
    assert "--full" in capsys.readouterr().out
    for bad in (["reproduce", "synthetic", "--lengths", "0,5"],
                ["reproduce", "synthetic", "--methods", "adam"],
                ["reproduce"]):
        with pytest.raises(SystemExit) as e:
            _parser().parse_args(bad)
        assert e.value.code == 2
    capsys.readouterr()


def test_cli_estimate_only_prints_an_estimate(tmp_path, capsys):
    rc = cmd.main(["synthetic", "--lengths", "10", "--seeds", "1", "--max-updates", "100",
                   "--inits", "basic_tanh", "--estimate-only", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "3 runs" in out and "estimate:" in out
    assert not (tmp_path / "runs").exists()


def test_register_experiment_adds_a_subcommand():
    saved = list(cmd.EXPERIMENTS)
    try:
        def reg(sub):
            p = sub.add_parser("music")
            p.set_defaults(func=lambda a: 0)

        cmd.register_experiment("music", reg)
        args = _parser().parse_args(["reproduce", "music"])
        assert args.experiment == "music"
        cmd.register_experiment("music", "rnnfast.cli.reproduce:register_synthetic")
        assert [n for n, _ in cmd.EXPERIMENTS].count("music") == 1
        with pytest.raises(TypeError, match="register_fn"):
            cmd.register_experiment("x", 3)
    finally:
        cmd.EXPERIMENTS[:] = saved


def test_memory_probe_figure_tells_more_than_ten_models_apart(tmp_path):
    pytest.importorskip("matplotlib")
    from rnnfast import plots

    probe = {"p0": 15, "p1": 60, "lags": [50, 100], "probe_first": [1.0, 1.0],
             "probe_second": [1.0, 0.9]}
    models = [{"seed": k, "probes": {"short gap": probe, "long gap": probe}} for k in range(12)]
    fig = plots.plot_memory_probes({"models": models}, tmp_path / "p.png")
    lines = fig.axes[0].get_lines()[:12]  # one per model (the chance line comes after)
    styles = [(ln.get_color(), ln.get_linestyle()) for ln in lines]
    assert len(set(styles)) == 12
    assert styles[10][0] == styles[0][0] and styles[10][1] != styles[0][1]
