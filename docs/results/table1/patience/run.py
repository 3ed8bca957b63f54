"""Piano-midi.de with a longer early-stopping patience: every method x seeds, two runs at a time.

    python docs/results/table1/patience/run.py DATA OUT [--patience 40] [--seeds 1234,1,2,3,4]

Each run is ``rnnfast reproduce music --dataset Piano-midi.de --method M --seed S --patience P
--max-epochs 200 --threads 1`` into OUT/M-sS (skipped when its results.json exists, resumed
when cut short: rerun to resume; ../music_probe.py); then OUT/summary.md (every run, and mean
± sd per method) is written.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from music_probe import finished, ints, run_all, write_summary  # noqa: E402

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
    write_summary(a.out, f"Piano-midi.de, early-stopping patience {a.patience} (the Table 1 "
                  "cells: 10), max 200 epochs, one thread per run.",
                  [(m, s, got[m, s]) for m, s in jobs], PAPER)


if __name__ == "__main__":
    main()
