"""Shared by the Table 1 music probes (omega_weight/run.py, piano_batch/run.py,
patience/run.py, seeds/run.py): run `rnnfast reproduce music` once per setting,
resumably, read back every finished run of an output folder, and write a summary table."""

import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from rnnfast.fileio import atomic_write_text


def ints(text):
    """A comma-separated list of integers (an argparse type)."""
    return [int(x) for x in text.split(",")]


def run_all(runs, jobs):
    """Run each (folder, CLI arguments after `reproduce music`, --method included) of `runs`,
    `jobs` at a time, one thread each. A folder whose results.json exists is skipped; one cut
    short is resumed."""

    def run(spec):
        d, extra = spec
        if os.path.exists(os.path.join(d, "results.json")):
            return
        os.makedirs(d, exist_ok=True)
        cmd = [sys.executable, "-c", "import sys; from rnnfast.cli import main; sys.exit(main())",
               "reproduce", "music", "--threads", "1", "--out", d,
               "--no-progress", "--quiet", *extra]
        if os.path.exists(os.path.join(d, "options.json")):
            cmd.append("--resume")  # a run cut short: continue it
        with open(os.path.join(d, "stdout.txt"), "a") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(run, runs))


def finished(out):
    """results.json of every finished run in `out` (also those of earlier calls), by folder."""
    rows = []
    for name in sorted(os.listdir(out)):
        p = os.path.join(out, name, "results.json")
        if os.path.exists(p):
            with open(p) as f:
                rows.append(json.load(f))
    return rows


def write_summary(out, title, rows, paper):
    """OUT/summary.md (atomically; also printed): every run of `rows` — (method, seed label,
    results.json) — then mean ± sd of the test NLL per method of `paper` (method -> the paper's
    (train, test)) over its rows."""
    lines = [title, "", "| method | seed | train | valid | test | updates | stopped | training time |",
             "|---|---|---|---|---|---|---|---|"]
    for m, s, r in rows:
        o = r["ours"]
        lines.append(f"| {m} | {s} | {o['train']:.3f} | {o['valid']:.3f} | {o['test']:.3f} | "
                     f"{r['updates']:,} | {r['stopped']} | {r['train_seconds'] / 60:.1f} min |")
    lines += ["", "| method | test NLL, mean ± sd (min–max) | train NLL, mean | paper train / test |",
              "|---|---|---|---|"]
    for m, (p_train, p_test) in paper.items():
        t = [r["ours"]["test"] for mm, _, r in rows if mm == m]
        tr = [r["ours"]["train"] for mm, _, r in rows if mm == m]
        sd = statistics.stdev(t) if len(t) > 1 else 0.0
        lines.append(f"| {m} | {statistics.mean(t):.3f} ± {sd:.3f} ({min(t):.3f}–{max(t):.3f}), "
                     f"{len(t)} seeds | {statistics.mean(tr):.3f} | {p_train:.2f} / {p_test:.2f} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(os.path.join(out, "summary.md"), text)
    print(text)
