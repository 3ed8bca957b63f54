"""Smoke test of the peer benchmark ``bench/peers.py`` (tiny sizes; not a performance test).

Runs the script in a subprocess the way a user would: ``--smoke`` (one tiny size, rnnfast and
NumPy, one thread, float32) and ``--check`` on the NumPy BPTT (finite differences).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "peers.py"


def _run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_smoke_run_writes_consistent_results(tmp_path):
    pytest.importorskip("rnnfast", reason="the rnnfast core is not importable")
    proc = _run("--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "peers.json").read_text())
    assert (tmp_path / "peers.md").read_text().startswith("Command:")

    assert data["active_peers"] == ["rnnfast", "numpy"]
    assert data["mismatches"] == []
    assert set(data["ceilings"]) == {"float32/1"}
    ceiling = data["ceilings"]["float32/1"]
    assert ceiling["gflops"] > 0
    # --smoke runs 2 rounds: the ceiling was probed once per round, the peers' samples pooled
    assert data["meta"]["rounds"] == 2
    probes = ceiling["probes"]["tiny"]
    assert len(probes) == 2 and min(probes) > 0
    # one record per (peer, mode), all on the tiny size, timed and converted consistently
    recs = {(r["peer"], r["mode"]): r for r in data["results"]}
    assert set(recs) == {(p, m) for p in ("rnnfast", "numpy") for m in ("forward", "fwd+BPTT")}
    for (peer, mode), r in recs.items():
        assert (r["T"], r["B"], r["I"], r["H"]) == (10, 2, 3, 8)
        assert r["dtype"] == "float32" and r["threads"] == 1
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["q1_s"] <= r["median_s"] <= r["q3_s"]
        fl = 2 * 10 * 2 * 8 * (8 + 3) * (1 if mode == "forward" else 3)
        assert r["gflops"] == pytest.approx(fl / r["median_s"] / 1e9)
        assert r["rounds"] == 2 and r["samples"] >= 2
        assert r["ceiling_gflops"] == pytest.approx(float(np.median(probes)))
        assert r["frac_ceiling"] == pytest.approx(r["gflops"] / r["ceiling_gflops"])
        ratio = r["ratio_vs_rnnfast"]
        assert ratio == pytest.approx(r["median_s"] / recs[("rnnfast", mode)]["median_s"])
    # the two peers computed the same h and gradients (checksums: norm and a projection)
    a = recs[("rnnfast", "fwd+BPTT")]["checksums"]
    b = recs[("numpy", "fwd+BPTT")]["checksums"]
    assert set(a) == {"h", "W_in", "W_rec", "b", "u", "h0"}
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-6)
    # peak memory was measured in fresh processes for both peers
    assert {m["peer"] for m in data["memory"]} == {"rnnfast", "numpy"}


def _load_script():
    spec = importlib.util.spec_from_file_location("peers_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pool_samples_pools_the_rounds():
    bench = _load_script()
    a = {"times": [3.0, 1.0], "cpus": [3.0, 1.0], "number": 2}
    b = {"times": [2.0, 10.0, 4.0], "cpus": [1.0, 5.0, 2.0], "number": 1}
    out = bench.pool_samples([a, b])
    assert out["samples"] == 5 and out["rounds"] == 2 and out["number"] == 2
    assert out["median_s"] == 3.0 and out["min_s"] == 1.0 and out["max_s"] == 10.0
    assert (out["q1_s"], out["q3_s"]) == (2.0, 4.0)
    assert out["cpu_median_s"] == 2.0
    assert out["cpu_util"] == pytest.approx(12.0 / 20.0)


def test_check_validates_numpy_reference():
    proc = _run("--check", "--peers", "numpy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("vs finite differences") == 5
    assert "FAIL" not in out
    assert out.count(" ok") == 5 + 4            # 5 FD checks + 2 dtypes x 2 h0 variants


def test_bad_size_is_rejected():
    proc = _run("--sizes", "P,3x4", "--no-memory")
    assert proc.returncode != 0
    assert "--sizes" in proc.stderr and "'3x4'" in proc.stderr


def test_omega_cost_smoke_prints_one_row_per_thread_count():
    script = SCRIPT.parent / "omega_cost.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--threads", "1,2"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [r for r in proc.stdout.splitlines() if r.startswith("| tiny")]
    assert len(rows) == 2 and all("×" in r for r in rows)
    bad = subprocess.run([sys.executable, str(script), "--sizes", "Q"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "unknown size 'Q'" in bad.stderr


def test_small_threads_smoke_prints_every_pattern():
    script = SCRIPT.parent / "small_threads.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [r for r in proc.stdout.splitlines() if r.startswith("| ") and "×" in r]
    assert [r.split(" | ")[0][2:] for r in rows] == ["back-to-back", "after-blas", "after-gap"]
    bad = subprocess.run([sys.executable, str(script), "--size", "1x2"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "TxBxIxH" in bad.stderr


def test_history_save_smoke():
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "history_save.py"), "--rows",
                           "500", "--new", "20"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "history of 500 rows" in proc.stdout and "after 20 new rows" in proc.stdout


def test_ab_compares_two_interpreters_round_by_round():
    script = SCRIPT.parent / "ab.py"
    proc = subprocess.run([sys.executable, str(script), sys.executable, sys.executable,
                           "--shape", "3,2,1,5", "--rounds", "2", "--seconds", "0.05"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [r for r in proc.stdout.splitlines() if r.startswith("| 1 |") or r.startswith("| 2 |")]
    assert [r.split(" | ")[1] for r in rows] == ["A", "B", "A", "B"]
    assert "B / A: forward" in proc.stdout and "(fastest rounds " in proc.stdout
    upd = subprocess.run([sys.executable, str(script), sys.executable, sys.executable,
                          "--update", "P", "--rounds", "1", "--seconds", "0.05"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert upd.returncode == 0, upd.stdout + upd.stderr
    assert [r.split(" | ")[1] for r in upd.stdout.splitlines() if r.startswith("| 1 |")] == \
        ["A", "B"] and "B / A: update" in upd.stdout and "(fastest rounds " in upd.stdout
    bad = subprocess.run([sys.executable, str(script), sys.executable, sys.executable,
                          "--update", "P", "--omega"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert bad.returncode == 2 and "do not apply" in bad.stderr
    bad = subprocess.run([sys.executable, str(script), sys.executable, sys.executable,
                          "--shape", "3,2,5"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 2 and "expected T,B,I,H" in bad.stderr
    bad = subprocess.run([sys.executable, str(script), "/nonexistent/python", sys.executable,
                          "--shape", "3,2,1,5"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 2 and "not an executable interpreter" in bad.stderr


def test_thread_plan_prints_one_row_per_shape():
    script = SCRIPT.parent / "thread_plan.py"
    proc = subprocess.run([sys.executable, str(script), "--B", "2,4", "--H", "8", "--T", "3",
                           "--I", "2", "--rounds", "3"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [r for r in proc.stdout.splitlines() if r.startswith("| 2 |") or r.startswith("| 4 |")]
    assert len(rows) == 2 and all(r.rstrip(" |").split("| ")[-1] in ("serial", "batch", "hidden")
                                  for r in rows)


def test_p_parts_prints_every_variant():
    script = SCRIPT.parent / "p_parts.py"
    proc = subprocess.run([sys.executable, str(script), "--shape", "4,3,2,5", "--threads", "1,2",
                           "--seconds", "0"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [r for r in proc.stdout.splitlines() if r.startswith("| forward") or
            r.startswith("| backward")]
    assert len(rows) == 10  # (3 forwards + 2 backwards) × 2 thread counts
    assert all(float(r.split("|")[2]) > 0 for r in rows)
    bad = subprocess.run([sys.executable, str(script), "--shape", "4,3"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "expected T,B,I,H" in bad.stderr
