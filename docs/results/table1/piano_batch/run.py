"""Table 1, Piano-midi.de SGD-CR: does the minibatch size matter? (The paper gives none; the
cells use one 200-step segment per update.)

    python docs/results/table1/piano_batch/run.py DATA OUT [--batches 4,16] [--seeds 1234,1]
        [--lr 1] [--jobs 2] [--budget 30]

Runs `rnnfast reproduce music --dataset Piano-midi.de --method SGD-CR --batch-size N --seed S
--lr LR --threads 1` for every (N, S), `--jobs` at a time, into OUT/Piano-midi.de-b<N>-s<S>
(-lr<LR> appended unless LR is the cell's 1.0); a run
whose results.json exists is skipped, one cut short is resumed (rerun the command). The cost
stays averaged over every (step, sequence) pair, so a batch of N segments takes N times fewer
updates per epoch at the same lr. Writes OUT/piano_batch.json and prints test NLL per batch
size and lr (mean ± sd over the seeds run).
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from music_probe import finished, ints, run_all  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--batches", type=ints, default=[4, 16])
    ap.add_argument("--seeds", type=ints, default=[1234, 1])
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--budget", type=float, default=30.0, help="minutes per run")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    lr = f"-lr{args.lr:g}" if args.lr != 1.0 else ""
    runs = [(os.path.join(args.out, f"Piano-midi.de-b{n}-s{s}{lr}"),
             ["--method", "SGD-CR", "--dataset", "Piano-midi.de", "--data", args.data,
              "--batch-size", str(n), "--seed", str(s), "--lr", f"{args.lr:g}",
              "--budget", f"{args.budget:g}"])
            for s in args.seeds for n in args.batches]
    run_all(runs, args.jobs)
    rows = [{"batch_size": r["config"]["batch_size"], "lr": r["config"]["lr"],
             "seed": r["config"]["seed"], **r} for r in finished(args.out)]
    with open(os.path.join(args.out, "piano_batch.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    print("| batch | lr | test NLL (seed: value) | mean ± sd | train | valid | epochs |")
    print("|---|---|---|---|---|---|---|")
    for n, lr in sorted({(r["batch_size"], r["lr"]) for r in rows}):
        got = sorted((r for r in rows if (r["batch_size"], r["lr"]) == (n, lr)),
                     key=lambda r: r["seed"])
        test = [r["ours"]["test"] for r in got]
        sd = statistics.stdev(test) if len(test) > 1 else float("nan")
        tr = statistics.mean(r["ours"]["train"] for r in got)
        va = statistics.mean(r["ours"]["valid"] for r in got)
        ep = ", ".join(str(r.get("epochs", "?")) for r in got)
        seeds = ", ".join(f"{r['seed']}: {t:.3f}" for r, t in zip(got, test))
        print(f"| {n} | {lr:g} | {seeds} | {statistics.mean(test):.3f} ± {sd:.3f} | {tr:.3f} | "
              f"{va:.3f} | {ep} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
