"""Piano-midi.de with a longer early-stopping patience: every method x seeds, two runs at a time.

    python docs/results/table1/patience/run.py DATA OUT [--patience 40] [--seeds 1234,1,2,3,4]

Each run is ``rnnfast reproduce music --dataset Piano-midi.de --method M --seed S --patience P
--max-epochs 200 --threads 1`` into OUT/M-sS (skipped when its results.json exists: rerun to
resume); then OUT/summary.md (every run, and mean ± sd per method) is written.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

METHODS = ("SGD", "SGD-C", "SGD-CR")
PAPER = {"SGD": (6.87, 7.56), "SGD-C": (6.81, 7.53), "SGD-CR": (7.01, 7.46)}


def run(data, out, method, seed, patience):
    d = os.path.join(out, f"{method}-s{seed}")
    if os.path.exists(os.path.join(d, "results.json")):
        return d
    os.makedirs(d, exist_ok=True)
    cmd = [sys.executable, "-c", "import sys; from rnnfast.cli import main; sys.exit(main())",
           "reproduce", "music", "--dataset", "Piano-midi.de",
           "--data", data, "--method", method, "--seed", str(seed), "--patience", str(patience),
           "--max-epochs", "200", "--threads", "1", "--no-progress", "--quiet", "--fresh",
           "--out", d]
    with open(os.path.join(d, "stdout.txt"), "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--patience", type=int, default=40)
    ap.add_argument("--seeds", default="1234,1,2,3,4")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    jobs = [(m, s) for s in seeds for m in METHODS]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda j: run(a.data, a.out, j[0], j[1], a.patience), jobs))
    rows = []
    for m, s in jobs:
        r = json.load(open(os.path.join(a.out, f"{m}-s{s}", "results.json")))
        rows.append((m, s, r["ours"], r["updates"], r["stopped"], r["train_seconds"]))
    lines = [f"Piano-midi.de, early-stopping patience {a.patience} (the Table 1 cells: 10), "
             "max 200 epochs, one thread per run.", "",
             "| method | seed | train | valid | test | updates | stopped | training time |",
             "|---|---|---|---|---|---|---|---|"]
    for m, s, o, u, st, sec in rows:
        lines.append(f"| {m} | {s} | {o['train']:.3f} | {o['valid']:.3f} | {o['test']:.3f} | "
                     f"{u:,} | {st} | {sec / 60:.1f} min |")
    lines += ["", "| method | test NLL, mean ± sd (min–max) | train NLL, mean | paper train / test |",
              "|---|---|---|---|"]
    for m in METHODS:
        t = [o["test"] for mm, _, o, *_ in rows if mm == m]
        tr = [o["train"] for mm, _, o, *_ in rows if mm == m]
        sd = statistics.stdev(t) if len(t) > 1 else 0.0
        lines.append(f"| {m} | {statistics.mean(t):.3f} ± {sd:.3f} ({min(t):.3f}–{max(t):.3f}), "
                     f"{len(t)} seeds | {statistics.mean(tr):.3f} | {PAPER[m][0]} / {PAPER[m][1]} |")
    text = "\n".join(lines) + "\n"
    tmp = os.path.join(a.out, "summary.md.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(a.out, "summary.md"))
    print(text)


if __name__ == "__main__":
    main()
