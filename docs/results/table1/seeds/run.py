"""Table 1 music cells with other seeds: is a cell's gap to the paper (or its lead) seed noise?

    python docs/results/table1/seeds/run.py DATA OUT --dataset MuseData
        [--methods SGD-C,SGD-CR] [--seeds 1,2,3,4] [--patience N] [--jobs 2]

Each run is a Table 1 cell with another seed, ``rnnfast reproduce music --dataset D --method M
--seed S --threads 1`` (every other setting the cell's: patience 10 unless ``--patience``, 200
epochs at most) into OUT/M-sS, skipped when its results.json exists, resumed when cut short
(rerun to resume; ../music_probe.py). Then OUT/summary.md: every run (and, without
``--patience``, the Table 1 cell of seed 1234, read from ../cells) and the test NLL's mean ±
sd per method over them.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from music_probe import finished, ints, run_all, write_summary  # noqa: E402


def cell(dataset, method):
    """The Table 1 cell's results (seed 1234)."""
    with open(os.path.join(HERE, "..", "cells", f"{dataset}-{method}", "results.json")) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--dataset", required=True, choices=("Piano-midi.de", "Nottingham", "MuseData"))
    ap.add_argument("--methods", default="SGD-C,SGD-CR", help="comma-separated")
    ap.add_argument("--seeds", type=ints, default=[1, 2, 3, 4])
    ap.add_argument("--patience", type=int, default=None,
                    help="early-stopping patience (default: the cells' 10)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    a = ap.parse_args()
    methods = a.methods.split(",")
    jobs = [(m, s) for s in a.seeds for m in methods]
    run_all([(os.path.join(a.out, f"{m}-s{s}"),
              ["--method", m, "--dataset", a.dataset, "--data", a.data, "--seed", str(s)]
              + ([] if a.patience is None else ["--patience", str(a.patience)]))
             for m, s in jobs], a.jobs)
    got = {(r["config"]["method"], r["config"]["seed"]): r for r in finished(a.out)}
    cells = {m: cell(a.dataset, m) for m in methods}
    # The cells (seed 1234) are one more seed of the same settings, not of another patience.
    rows = [(m, "1234 (Table 1)", cells[m]) for m in methods] if a.patience is None else []
    rows += [(m, s, got[m, s]) for m, s in jobs if (m, s) in got]
    paper = {m: tuple(cells[m]["paper"]) for m in methods}  # (train, test)
    patience = "10" if a.patience is None else f"{a.patience} instead of the cells' 10"
    write_summary(a.out, f"{a.dataset}, the Table 1 cells' settings with other seeds (early-"
                  f"stopping patience {patience}, one sequence per update), one thread per run.",
                  rows, paper)


if __name__ == "__main__":
    main()
