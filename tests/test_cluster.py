"""Tests of rnnfast.reproduce.cluster: sweeps on a Dask distributed cluster.

The cluster tests share one ``LocalCluster`` (2 worker processes, 1 thread
each) and skip when Dask distributed is not installed:

* a small synthetic sweep gives exactly the local spawn pool's results;
* killing a worker process in the middle of a run: the sweep completes, only
  that run is redone (on another worker), the loss is reported, and no finished
  result is lost, redone or duplicated;
* a run that kills every worker it runs on is retried a bounded number of
  times and then reported as failed, while the rest of the sweep completes;
* an interrupted sweep, rerun, redoes nothing that finished.

``pytest -s tests/test_cluster.py -k kill`` shows the worker-kill transcript.
"""

import json
import os
import signal
import sys
import threading
import time
import traceback

import pytest

from rnnfast.experiments import cluster as cl
from rnnfast.experiments import sweep as sw
from rnnfast.experiments import synthetic as syn


# --------------------------------------------------------------------------- run functions
# Module level: the workers import them from this module (spawned processes see sys.path).
def _log_line(config, text):
    with open(os.path.join(config["dir"], f"{config['x']}.log"), "a") as f:
        f.write(text + "\n")


def _phase(config):
    try:
        with open(os.path.join(config["dir"], "phase")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return "1"


def _logged_run(config):
    """Sleeps ``config["sleep"]`` s; logs ``start PID PHASE`` / ``end PID`` lines."""
    _log_line(config, f"start {os.getpid()} {_phase(config)}")
    time.sleep(config["sleep"])
    _log_line(config, f"end {os.getpid()}")
    return {"value": config["x"] * 10, "seconds": config["sleep"]}


def _deadly_run(config):
    """Kills the worker process running it when ``config["die"]`` (once the runs listed
    in ``config["after"]`` have ended, so that it dies alone on its worker)."""
    _log_line(config, f"start {os.getpid()}")
    if config.get("die"):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                _starts(config["dir"], x)[1] for x in config["after"]):
            time.sleep(0.02)
        time.sleep(0.3)  # the driver fetches their results
        os._exit(13)
    time.sleep(config.get("sleep", 0.0))
    _log_line(config, f"end {os.getpid()}")
    return {"value": config["x"], "seconds": 0.0}


def _add(a, b=0):
    return a + b


def _fail(message):
    raise ValueError(message)


def _starts(tmp, x):
    path = os.path.join(tmp, f"{x}.log")
    if not os.path.exists(path):
        return [], []
    with open(path) as f:
        lines = [ln.split() for ln in f.read().splitlines()]
    return [ln[1:] for ln in lines if ln[0] == "start"], [ln[1] for ln in lines if ln[0] == "end"]


# --------------------------------------------------------------------------- without Dask
def test_scheduler_address_forms_and_environment():
    env = {cl.SCHEDULER_ENV: " tcp://10.0.0.5:8786 "}
    assert cl.scheduler_address(None, environ={}) is None
    assert cl.scheduler_address(None, environ=env) == "tcp://10.0.0.5:8786"
    assert cl.scheduler_address("tls://sched:8786", environ=env) == "tls://sched:8786"
    assert cl.scheduler_address("sched.lan:8786") == "tcp://sched.lan:8786"
    assert cl.scheduler_address("[::1]:8786") == "tcp://[::1]:8786"
    assert cl.scheduler_address("local") == "local"
    assert cl.scheduler_address("local:3") == "local:3"
    assert cl.scheduler_address("", environ=env) is None  # explicit "none" beats the variable
    assert cl.scheduler_address(None, environ={cl.SCHEDULER_ENV: ""}) is None
    for bad in ("sched", "sched:port", "local:0", "tcp:/x:1", "host:99999"):
        with pytest.raises(ValueError, match="scheduler"):
            cl.scheduler_address(bad)
    with pytest.raises(ValueError, match=cl.SCHEDULER_ENV):
        cl.scheduler_address(None, environ={cl.SCHEDULER_ENV: "nonsense"})
    with pytest.raises(TypeError, match="scheduler"):
        cl.scheduler_address(8786)
    # no scheduler named: the caller keeps its local pool, Dask is not needed
    assert cl.connect(None, environ={}) is None


def test_missing_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # "import distributed" fails
    with pytest.raises(ImportError, match=r"pip install 'rnnfast\[dask\]'"):
        cl.require_distributed()
    with pytest.raises(ImportError, match=r"rnnfast\[dask\]"):
        cl.connect("tcp://127.0.0.1:1")
    with pytest.raises(ImportError, match=r"rnnfast\[dask\]"):
        cl.connect(None, environ={cl.SCHEDULER_ENV: "local:2"})
    with pytest.raises(ImportError, match=r"rnnfast\[dask\]"):
        cl.local_cluster_executor(1)


def test_worker_loss_description():
    cfg = {"task": "temporal_order", "init": "smart_tanh", "method": "sgd-cr", "length": 50,
           "seed": 3, "lr": 0.01}
    loss = cl.WorkerLoss("k", "tcp://1.2.3.4:5", False, 2, 0.0, cfg, "run_in_worker")
    text = loss.describe()
    assert sw.config_hash(cfg) in text and "tcp://1.2.3.4:5 died" in text
    assert "method=sgd-cr" in text and "length=50" in text and "loss 2" in text
    retired = cl.WorkerLoss("k", "w", True, 1, 0.0, None, "f").describe()
    assert "retired" in retired and "f" in retired


# --------------------------------------------------------------------------- the cluster
@pytest.fixture(scope="module")
def dask_ex():
    pytest.importorskip("distributed")
    lost = []

    def on_lost(loss):
        lost.append(loss)
        print(f"LOST {loss.describe()}", flush=True)

    environ = dict(os.environ)  # the nannies write their workers' settings (OMP_NUM_THREADS=1,
    # MALLOC_TRIM_THRESHOLD_, ...) into this process's environment; later tests must not see them
    ex = cl.local_cluster_executor(2, threads_per_worker=1, on_lost=on_lost)
    ex.lost_seen = lost
    try:
        yield ex
    finally:
        ex.close()
        os.environ.clear()
        os.environ.update(environ)


def _reset(ex):
    """Both workers up (after a kill) and the loss lists empty."""
    ex.client.wait_for_workers(2, timeout=60)
    ex.losses.clear()
    ex.lost_seen.clear()


def test_executor_basics(dask_ex):
    _reset(dask_ex)
    assert dask_ex.max_workers == 2 and dask_ex._max_workers == 2
    infos = dask_ex.check_workers()
    assert len(infos) == 2
    for info in infos.values():
        assert info["pid"] != os.getpid() and info["omp_num_threads"] == "1"
    assert dask_ex.submit(_add, 1, b=2).result(timeout=60) == 3
    f = dask_ex.submit(_fail, "broken on purpose")
    with pytest.raises(ValueError, match="broken on purpose"):
        f.result(timeout=60)
    assert "_fail" in "".join(traceback.format_tb(f.exception().__traceback__))
    # a run submitted and cancelled at once never completes; the executor stays usable
    g = dask_ex.submit(time.sleep, 1.0)
    assert g.cancel() and g.cancelled()
    assert dask_ex.submit(_add, 5).result(timeout=60) == 5
    with pytest.raises(TypeError, match="fn"):
        dask_ex.submit(3)


def test_cluster_sweep_gives_the_local_results(dask_ex, tmp_path):
    _reset(dask_ex)
    settings = syn.SweepSettings(lengths=(10,), seeds=2, methods=("sgd", "sgd-cr"),
                                 inits=("smart_tanh",), max_updates=150, valid_every=50,
                                 valid_size=100, eval_size=200)
    t0 = time.perf_counter()
    local = syn.run_synthetic(settings, tmp_path / "local", workers=2, num_threads=1,
                              progress=False, estimate=False)
    t1 = time.perf_counter()
    dask = syn.run_synthetic(settings, tmp_path / "dask", executor=dask_ex,
                             workers=dask_ex.max_workers, num_threads=1,
                             progress=False, estimate=False)
    t2 = time.perf_counter()
    print(f"\n4 runs: local spawn pool {t1 - t0:.2f} s, LocalCluster {t2 - t1:.2f} s")
    assert local["computed"] == dask["computed"] == 4
    assert not local["failures"] and not dask["failures"]
    cluster_pids = {info["pid"] for info in dask_ex.check_workers().values()}
    drop = ("seconds", "ms_per_update", "worker_pid")
    assert [r["key"] for r in local["records"]] == [r["key"] for r in dask["records"]]
    for a, b in zip(local["records"], dask["records"]):
        assert b["result"]["worker_pid"] in cluster_pids
        assert a["result"]["worker_pid"] not in cluster_pids | {os.getpid()}
        ra = {k: v for k, v in a["result"].items() if k not in drop}
        rb = {k: v for k, v in b["result"].items() if k not in drop}
        assert ra == rb  # bit for bit (floats compared exactly)
        assert ra["updates"] == 150 and len(ra["validations"]) == 3
    # the same final table
    timing = ("seconds_mean", "seconds_total")
    pa = [{k: v for k, v in p.items() if k not in timing} for p in local["points"]]
    pb = [{k: v for k, v in p.items() if k not in timing} for p in dask["points"]]
    assert pa == pb and len(pa) == 2
    sa = json.loads((tmp_path / "local" / "summary.json").read_text())
    sb = json.loads((tmp_path / "dask" / "summary.json").read_text())
    assert [{k: v for k, v in p.items() if k not in timing} for p in sa["points"]] == pa
    assert [{k: v for k, v in p.items() if k not in timing} for p in sb["points"]] == pb
    assert dask_ex.losses == []


def test_interrupted_cluster_sweep_resumes_without_redoing_finished_runs(dask_ex, tmp_path):
    _reset(dask_ex)
    d = str(tmp_path)
    configs = [{"x": i, "dir": d, "sleep": 0.5} for i in range(8)]
    store = sw.ResultStore(tmp_path / "out")
    state = {"raised": False}

    def interrupt_after_three(p):
        if p.event == "done" and p.done == 3 and not state["raised"]:
            state["raised"] = True
            raise KeyboardInterrupt

    res = sw.run_sweep(configs, _logged_run, store, executor=dask_ex, num_threads=1,
                       progress=interrupt_after_three)
    assert res.interrupted and res.computed == 3
    first = {sw.config_hash(c): (tmp_path / "out" / "runs" / f"{sw.config_hash(c)}.json")
             .read_bytes() for c in configs if sw.config_hash(c) in store}
    assert len(first) == 3
    # the runs that were mid-way finish on the workers (their results are dropped);
    # the queued ones were cancelled: nothing starts any more
    time.sleep(0.3)
    started = [i for i in range(8) if _starts(d, i)[0]]
    time.sleep(0.8)
    assert [i for i in range(8) if _starts(d, i)[0]] == started and len(started) < 8
    assert not any(dask_ex.client.processing().values())
    with open(os.path.join(d, "phase"), "w") as f:
        f.write("2")

    res2 = sw.run_sweep(configs, _logged_run, store, executor=dask_ex, num_threads=1)
    assert not res2.interrupted and not res2.failures
    assert res2.skipped == 3 and res2.computed == 5
    assert [r["result"]["value"] for r in res2.records] == [10 * i for i in range(8)]
    for c in configs:
        key = sw.config_hash(c)
        phases = [s[1] for s in _starts(d, c["x"])[0]]
        if key in first:  # finished before the interruption: not started again, file untouched
            assert "2" not in phases
            assert (tmp_path / "out" / "runs" / f"{key}.json").read_bytes() == first[key]
        else:
            assert phases.count("2") == 1
    assert dask_ex.losses == []


def test_killing_a_worker_mid_run_redoes_only_that_run(dask_ex, tmp_path):
    _reset(dask_ex)
    d = str(tmp_path)
    target = 4
    configs = [{"x": i, "dir": d, "sleep": 3.0 if i == target else 0.2} for i in range(8)]
    store = sw.ResultStore(tmp_path / "out")
    killed = {}

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            starts, _ = _starts(d, target)
            if starts:
                time.sleep(0.5)  # well inside the run
                pid = int(starts[0][0])
                print(f"test: SIGKILL worker process {pid} while it runs x={target}", flush=True)
                killed["pid"] = pid
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    def show(p):
        if p.event in ("start", "done", "retry", "failed", "end"):
            extra = f"  x={p.config['x']}" if p.config else ""
            print(f"{p.event:>6} {p.line()}{extra}", flush=True)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    res = sw.run_sweep(configs, _logged_run, store, executor=dask_ex, num_threads=1, retries=2,
                       progress=show, tick=2.0)
    th.join(timeout=60)
    for loss in dask_ex.losses:
        print(f"reported: {loss.describe()}")

    assert "pid" in killed, "the run to kill never started"
    assert not res.failures and res.computed == 8 and not res.interrupted
    assert [r["result"]["value"] for r in res.records] == [10 * i for i in range(8)]
    # the killed run ran twice: first on the killed process, then elsewhere, once to the end
    starts, ends = _starts(d, target)
    assert len(starts) == 2 and int(starts[0][0]) == killed["pid"]
    assert int(starts[1][0]) != killed["pid"] and ends == [starts[1][0]]
    # every other run ran exactly once, including those the killed worker had finished
    finished_on_killed = 0
    for i in range(8):
        if i == target:
            continue
        s, e = _starts(d, i)
        assert len(s) == 1 and len(e) == 1, (i, s, e)
        finished_on_killed += int(s[0][0]) == killed["pid"]
    assert finished_on_killed >= 1  # the dead worker had finished runs: none was lost
    # one result file per run, none duplicated, each one readable
    names = sorted(os.listdir(tmp_path / "out" / "runs"))
    assert names == sorted(f"{sw.config_hash(c)}.json" for c in configs)
    assert all(store.load(sw.config_hash(c)) is not None for c in configs)
    assert len({r["key"] for r in res.records}) == 8
    # the loss was reported, for that run only
    assert [(l.config["x"], l.expected, l.count) for l in dask_ex.losses] == [(target, False, 1)]
    assert dask_ex.lost_seen == dask_ex.losses
    assert "died" in dask_ex.losses[0].describe()


def test_a_run_that_kills_its_workers_fails_after_bounded_retries(dask_ex, tmp_path):
    _reset(dask_ex)
    sched = dask_ex.cluster.scheduler
    saved = sched.allowed_failures
    sched.allowed_failures = 0  # Dask gives up at the first death: the sweep retries
    try:
        d = str(tmp_path)
        configs = [{"x": i, "dir": d, "sleep": 0.2} for i in range(3)]
        configs.append({"x": 3, "dir": d, "die": True, "after": [0, 1, 2]})  # submitted last
        events = []
        res = sw.run_sweep(configs, _deadly_run, sw.ResultStore(tmp_path / "out"),
                           executor=dask_ex, num_threads=1, retries=1,
                           progress=lambda p: events.append(p.event))
    finally:
        sched.allowed_failures = saved
    assert [r["config"]["x"] for r in res.records] == [0, 1, 2]
    assert len(res.failures) == 1
    f = res.failures[0]
    assert f["config"]["x"] == 3 and f["attempts"] == 2 and "KilledWorker" in f["error"]
    assert events.count("retry") == 1 and events.count("failed") == 1
    assert len(_starts(d, 3)[0]) == 2  # two tries, not more
    assert all(len(_starts(d, i)[0]) == 1 for i in (0, 1, 2))
    assert [(l.config["x"], l.expected) for l in dask_ex.losses] == [(3, False), (3, False)]
    assert sw.config_hash(configs[3]) not in sw.ResultStore(tmp_path / "out")


def test_an_unreachable_scheduler_is_a_clear_error():
    pytest.importorskip("distributed")
    with pytest.raises(ConnectionError, match="dask scheduler"):
        cl.connect("tcp://127.0.0.1:9", timeout=0.5)
