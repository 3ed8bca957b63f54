"""Table 1, PTB characters: the learning rate, chosen on the validation split.

    python docs/results/table1/ptb_lr/run.py DATA OUT [--method SGD-CR] [--lr 0.025,0.0125]
        [--ahead 1] [--jobs 2] [--budget MINUTES] [--summary-only]

Runs ``rnnfast reproduce ptb --method M --ahead A --lr LR --threads 1 --train-eval-limit
1000000`` (the Table 1 cell's settings but the rate) once per rate into OUT/M-aheadA-lrLR,
``--jobs`` at a time, one thread each; a finished run (results.json) is skipped and one cut
short is resumed (``--budget`` caps each command's training minutes, so a session's end
loses nothing). OUT/summary.md then gives, per rate, the validation bits/char after every
epoch next to the cell's (docs/results/table1/cells/PTB-aheadA-M/epochs.json, run at the
reported rate), and the final train / valid / test of the finished runs.
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from rnnfast.experiments.natural import PAPER_TABLE1
from rnnfast.fileio import atomic_write_text

HERE = os.path.dirname(os.path.abspath(__file__))
CELLS = os.path.join(HERE, "..", "cells")


def floats(text):
    """A comma-separated list of positive numbers (an argparse type), kept as written."""
    out = text.split(",")
    for x in out:
        try:
            if not float(x) > 0:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected positive numbers, got {x!r}") from None
    return out


def epochs(run_dir):
    """The end-of-epoch records of a run (epochs.json of a finished run, else the history's
    validation records: the run's folder is written as it goes)."""
    p = os.path.join(run_dir, "epochs.json")
    if os.path.exists(p):
        with open(p) as f:
            return [r["valid"] for r in json.load(f) if r["end_of_epoch"]]
    p = os.path.join(run_dir, "history.json")
    if os.path.exists(p):
        with open(p) as f:
            return [r["loss"] for r in json.load(f)["validation"]]
    return []


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--method", default="SGD-CR", choices=("SGD", "SGD-C", "SGD-CR"))
    ap.add_argument("--ahead", type=int, default=1, choices=(1, 5))
    ap.add_argument("--lr", type=floats, default=["0.025", "0.0125"])
    ap.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    ap.add_argument("--budget", type=float, default=None, help="training minutes per command")
    ap.add_argument("--summary-only", action="store_true")
    a = ap.parse_args()
    cell = f"PTB-ahead{a.ahead}-{a.method}"
    runs = {lr: os.path.join(a.out, f"{a.method}-ahead{a.ahead}-lr{lr}") for lr in a.lr}

    def run(lr):
        d = runs[lr]
        if os.path.exists(os.path.join(d, "results.json")):
            return
        os.makedirs(d, exist_ok=True)
        cmd = [sys.executable, "-c", "import sys; from rnnfast.cli import main; sys.exit(main())",
               "reproduce", "ptb", "--data", a.data, "--method", a.method, "--ahead",
               str(a.ahead), "--lr", lr, "--threads", "1", "--train-eval-limit", "1000000",
               "--out", d, "--no-progress"]
        if a.budget:
            cmd += ["--budget", str(a.budget)]
        if os.path.exists(os.path.join(d, "options.json")):
            cmd.append("--resume")
        with open(os.path.join(d, "stdout.txt"), "a") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)

    if not a.summary_only:
        with ThreadPoolExecutor(a.jobs) as pool:
            list(pool.map(run, a.lr))

    columns = []
    if os.path.exists(os.path.join(CELLS, cell, "results.json")):  # no PTB 5-step SGD cell
        with open(os.path.join(CELLS, cell, "results.json")) as f:
            cell_lr = json.load(f)["config"]["lr"]
        columns.append((f"cell (lr {cell_lr:g})", os.path.join(CELLS, cell)))
    columns += [(f"lr {lr}", runs[lr]) for lr in a.lr]
    curves = [epochs(d) for _, d in columns]
    paper = PAPER_TABLE1[f"PTB chars, {a.ahead} step" + ("s" if a.ahead > 1 else "")][a.method]
    steps = "1 step" if a.ahead == 1 else f"{a.ahead} steps"
    lines = [f"PTB characters, {steps} ahead, {a.method}: validation bits/char after "
             "each epoch (the learning rate halves every epoch once the rule starts; one "
             "thread per run).", "",
             "| epoch | " + " | ".join(c for c, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for e in range(max(map(len, curves), default=0)):
        lines.append(f"| {e + 1} | " + " | ".join(
            f"{c[e]:.4f}" if e < len(c) else "" for c in curves) + " |")
    lines += ["", "| run | train | valid | test | epochs | updates | stopped |",
              "|---|---|---|---|---|---|---|"]
    for label, d in columns:
        p = os.path.join(d, "results.json")
        if os.path.exists(p):
            with open(p) as f:
                r = json.load(f)
            o = r["ours"]
            lines.append(f"| {label} | {o['train']:.3f} | {o['valid']:.3f} | {o['test']:.3f} | "
                         f"{len(epochs(d))} | {r['updates']:,} | {r['stopped']} |")
        else:
            lines.append(f"| {label} | running or cut short | | | {len(epochs(d))} | | |")
    if paper:
        lines.append(f"| paper | {paper[0]:.2f} | | {paper[1]:.2f} | | | |")
    text = "\n".join(lines) + "\n"
    os.makedirs(a.out, exist_ok=True)
    atomic_write_text(os.path.join(a.out, "summary.md"), text)
    print(text)


if __name__ == "__main__":
    main()
