"""Smoke test of the peer benchmark ``bench/peers.py`` (tiny sizes; not a performance test).

Runs the script in a subprocess the way a user would: ``--smoke`` (one tiny size, rnnfast and
NumPy, one thread, float32) and ``--check`` on the NumPy BPTT (finite differences).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "peers.py"


def _run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_smoke_run_writes_consistent_results(tmp_path):
    pytest.importorskip("rnnfast", reason="the rnnfast core is not importable")
    pytest.importorskip("threadpoolctl", reason="the benchmark needs threadpoolctl")
    proc = _run("--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "peers.json").read_text())
    assert (tmp_path / "peers.md").read_text().startswith("Command:")

    assert data["active_peers"] == ["rnnfast", "numpy"]
    assert data["mismatches"] == []
    assert set(data["ceilings"]) == {"float32/1"}
    assert data["ceilings"]["float32/1"]["gflops"] > 0
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
        assert r["frac_ceiling"] == pytest.approx(r["gflops"] / data["ceilings"]["float32/1"]
                                                  ["gflops"])
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


def test_check_validates_numpy_reference():
    pytest.importorskip("threadpoolctl", reason="the benchmark needs threadpoolctl")
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
