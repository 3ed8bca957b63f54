"""Ctrl-C, SIGTERM and SIGKILL of a real `rnnfast reproduce synthetic`: the command stops
within seconds, the finished runs are kept, and no worker process outlives it."""

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# two runs solved within a second (basic_tanh), two that would run for many minutes (sigmoid)
SWEEP = ["reproduce", "synthetic", "--inits", "basic_tanh,sigmoid", "--methods", "SGD",
         "--lengths", "10", "--seeds", "2", "--max-updates", "2000000", "--valid-size", "200",
         "--eval-size", "1000", "--workers", "2"]


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d))
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def _default_sigint():
    """In the child before exec: SIGINT at its default, as at a terminal (see _start)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(out):
    # Ctrl-C as at a terminal: SIGINT at its default in the command even when this test runs
    # in a background job (`cmd &` starts with SIGINT ignored, and an ignored signal stays
    # ignored across exec: the command would never see it)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from rnnfast.cli import main; sys.exit(main())"]
        + SWEEP + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
        preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120
    runs = out / "runs"
    while time.monotonic() < deadline:
        if runs.is_dir() and len(list(runs.glob("*.json"))) >= 2:
            workers = [c for c in _children(proc.pid) if _alive(c)]
            if workers:
                return proc, workers
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the sweep did not get going: {proc.communicate()[0]}")


def _gone(pids, within):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_stops_the_sweep_keeps_results_and_says_how_to_resume(tmp_path, sig, code):
    proc, workers = _start(tmp_path / "o")
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        # "within seconds", with room for a loaded machine (the sweep alone runs for minutes);
        # its usual time is ~0.3 s
        out, _ = proc.communicate(timeout=20)
    finally:  # on a timeout too: no running child or open pipe left for later tests
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
    assert time.monotonic() - t0 < 10.0
    assert proc.returncode == code, out
    assert "rerun the same command to resume" in out
    assert "Traceback" not in out
    assert len(list((tmp_path / "o" / "runs").glob("*.json"))) >= 2
    assert _gone(workers, 2.0), "worker processes outlived the sweep"


def test_workers_die_with_a_killed_parent(tmp_path):
    proc, workers = _start(tmp_path / "o")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=5)
    assert _gone(workers, 3.0), "orphaned workers keep computing"


DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "music")),
                    reason="../shared/data/music not present")
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_stops_table1_and_its_cells(tmp_path, sig, code):
    out = tmp_path / "t1"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from rnnfast.cli import main; sys.exit(main())",
         "reproduce", "table1", "--data", DATA, "--cells", "Nottingham-SGD,Nottingham-SGD-C",
         "--budget", "5", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("*/history.json")):
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
    workers = [c for c in _children(proc.pid) if _alive(c)]
    assert workers
    t0 = time.monotonic()
    proc.send_signal(sig)
    text = proc.communicate(timeout=10)[0]
    assert time.monotonic() - t0 < 5
    assert proc.returncode == code, text
    assert "rerun the same command to resume" in text
    time.sleep(0.5)
    assert not [w for w in workers if _alive(w)]
    assert list(out.glob("*/checkpoint.npz"))  # the cells resume from their checkpoints
