"""Table 1 music cells: the settings the paper reports but our reading could get wrong.

    python docs/results/table1/music_hparams/run.py DATA OUT --dataset Piano-midi.de
        [--method SGD-CR] [--seeds 1,2,3] [--vary lr=0.25,0.5,2 hidden=150,600 seq-len=50,100]
        [--lr BASE] [--jobs 1]

One setting at a time is moved away from the paper's reported ones (lr 1.0, 0.5 for MuseData;
the rest the Table 1 cell's: 300 hidden units, 400 for MuseData, 200-step segments, ...) and
each variant is run with every seed, ``rnnfast reproduce music --dataset D --method M --seed S
--threads 1 --lr REPORTED --NAME VALUE`` into OUT/NAME-VALUE-sS (the reported settings into
OUT/cell-sS; ``--lr`` moves the base rate, the cell's and every variant's), skipped when
finished, resumed when cut short (../music_probe.py). OUT/summary.md then gives, per
variant, the seeds finished, the mean validation NLL (what chooses a variant: the test
numbers are what we compare with the paper) and the test NLL's mean ± sd
(``--summary-only``: write it from the runs finished so far).
"""

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from music_probe import ints, run_all  # noqa: E402

from rnnfast.experiments.natural import PAPER_TABLE1  # noqa: E402
from rnnfast.fileio import atomic_write_text  # noqa: E402

# the paper's reported music learning rates (rnnfast's defaults are a quarter of them, an
# eighth for MuseData, since this probe: rnnfast.experiments.natural's module docstring)
REPORTED_LR = {"Piano-midi.de": 1.0, "Nottingham": 1.0, "MuseData": 0.5}


def variants(text):
    """``NAME=V1,V2`` -> (NAME, [V1, V2]) (an argparse type)."""
    name, _, values = text.partition("=")
    if not name or not values:
        raise argparse.ArgumentTypeError(f"expected NAME=V1,V2,..., got {text!r}")
    return name, values.split(",")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--dataset", required=True, choices=("Piano-midi.de", "Nottingham", "MuseData"))
    ap.add_argument("--method", default="SGD-CR", choices=("SGD", "SGD-C", "SGD-CR"))
    ap.add_argument("--seeds", type=ints, default=[1, 2, 3])
    ap.add_argument("--vary", type=variants, nargs="+",
                    default=[("lr", ["0.25", "0.5", "2"]), ("hidden", ["150", "600"]),
                             ("seq-len", ["50", "100"])],
                    help="options of `rnnfast reproduce music` and the values to try")
    ap.add_argument("--lr", type=float, default=None,
                    help="the base learning rate of every run but an lr variant's "
                         "(default: the reported one)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    ap.add_argument("--summary-only", action="store_true",
                    help="only write the summary of the runs already finished")
    a = ap.parse_args()
    base = ["--method", a.method, "--dataset", a.dataset, "--data", a.data]
    base_lr = REPORTED_LR[a.dataset] if a.lr is None else a.lr
    reported = ["--lr", str(base_lr)]  # pinned: the defaults are not the reported rates
    settings = [("cell", None, reported)] + [
        (n, v, [f"--{n}", v] + (reported if n != "lr" else [])) for n, vs in a.vary for v in vs]
    runs = []
    for s in a.seeds:  # seed-major: every variant has a first seed early
        for name, value, extra in settings:
            label = "cell" if value is None else f"{name}-{value}"
            runs.append((os.path.join(a.out, f"{label}-s{s}"), base + ["--seed", str(s)] + extra))
    if not a.summary_only:
        run_all(runs, a.jobs)

    done = {}
    for d, _ in runs:
        if os.path.exists(os.path.join(d, "results.json")):
            with open(os.path.join(d, "results.json")) as f:
                done[os.path.basename(d)] = json.load(f)
    lines = [f"{a.dataset} {a.method}: one setting moved from the reported ones at a time (seeds "
             f"{', '.join(map(str, a.seeds))}; one thread per run; paper test "
             f"{PAPER_TABLE1[a.dataset][a.method][1]:.2f}).", "",
             "| variant | seeds done | valid NLL, mean | test NLL, mean ± sd | train NLL, mean | "
             "epochs, mean |", "|---|---|---|---|---|---|"]
    for name, value, _ in settings:
        label = "cell" if value is None else f"{name}-{value}"
        rs = [done[f"{label}-s{s}"] for s in a.seeds if f"{label}-s{s}" in done]
        if not rs:
            continue
        v, t, tr = ([r["ours"][k] for r in rs] for k in ("valid", "test", "train"))
        spread = f" ± {statistics.stdev(t):.3f}" if len(t) > 1 else ""
        ep = statistics.mean(r["epochs"] for r in rs)
        kind = "reported" if base_lr == REPORTED_LR[a.dataset] else "base"
        shown = f"{kind} (lr {base_lr:g})" if value is None else f"--{name} {value}"
        lines.append(f"| {shown} | {len(rs)} | {statistics.mean(v):.3f} | "
                     f"{statistics.mean(t):.3f}{spread} | {statistics.mean(tr):.3f} | {ep:.0f} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(os.path.join(a.out, "summary.md"), text)
    print(text)


if __name__ == "__main__":
    main()
