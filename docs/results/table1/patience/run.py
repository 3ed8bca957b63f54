"""Piano-midi.de with a longer early-stopping patience: every method x seeds, two runs at a time.

    python docs/results/table1/patience/run.py DATA OUT [--patience 40] [--seeds 1234,1,2,3,4]

Each run is ``rnnfast reproduce music --dataset Piano-midi.de --method M --seed S --patience P
--max-epochs 200 --threads 1`` into OUT/M-sS (skipped when its results.json exists, resumed
when cut short: rerun to resume; ../music_probe.py); then OUT/summary.md (every run, and mean
± sd per method) is written.
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from music_probe import finished, ints, run_all  # noqa: E402

METHODS = ("SGD", "SGD-C", "SGD-CR")
PAPER = {"SGD": (6.87, 7.56), "SGD-C": (6.81, 7.53), "SGD-CR": (7.01, 7.46)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--patience", type=int, default=40)
    ap.add_argument("--seeds", type=ints, default=[1234, 1, 2, 3, 4])
    a = ap.parse_args()
    jobs = [(m, s) for s in a.seeds for m in METHODS]
    run_all([(os.path.join(a.out, f"{m}-s{s}"),
              ["--method", m, "--dataset", "Piano-midi.de", "--data", a.data, "--seed", str(s),
               "--patience", str(a.patience), "--max-epochs", "200"]) for m, s in jobs], 2)
    got = {(r["config"]["method"], r["config"]["seed"]): r for r in finished(a.out)}
    rows = [(m, s, got[m, s]) for m, s in jobs]
    lines = [f"Piano-midi.de, early-stopping patience {a.patience} (the Table 1 cells: 10), "
             "max 200 epochs, one thread per run.", "",
             "| method | seed | train | valid | test | updates | stopped | training time |",
             "|---|---|---|---|---|---|---|---|"]
    for m, s, r in rows:
        o = r["ours"]
        lines.append(f"| {m} | {s} | {o['train']:.3f} | {o['valid']:.3f} | {o['test']:.3f} | "
                     f"{r['updates']:,} | {r['stopped']} | {r['train_seconds'] / 60:.1f} min |")
    lines += ["", "| method | test NLL, mean ± sd (min–max) | train NLL, mean | paper train / test |",
              "|---|---|---|---|"]
    for m in METHODS:
        t = [r["ours"]["test"] for mm, _, r in rows if mm == m]
        tr = [r["ours"]["train"] for mm, _, r in rows if mm == m]
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
