"""Table 1, SGD-CR music cells: does the Ω weight α0 (α_e = α0 / (2e), default 1) matter?

    python docs/results/table1/omega_weight/run.py DATA OUT [--dataset Piano-midi.de]
        [--alphas 0.25,1,4,16] [--seeds 1234,1,2] [--jobs 2] [--budget 30]

Runs `rnnfast reproduce music --method SGD-CR --alpha A --seed S --threads 1` for every
(A, S), `--jobs` at a time (one thread each), into OUT/<dataset>-a<A>-s<S>; a run whose
results.json exists is skipped, one cut short is resumed (rerun the command to resume).
Writes OUT/omega_weight.json (every finished run in OUT) and prints a table of test NLL per
α0 (mean ± sd over the seeds run).
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from music_probe import finished, ints, run_all  # noqa: E402


def floats(text):
    return [float(x) for x in text.split(",")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--dataset", default="Piano-midi.de")
    ap.add_argument("--alphas", type=floats, default=[0.25, 1.0, 4.0, 16.0])
    ap.add_argument("--seeds", type=ints, default=[1234, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--budget", type=float, default=30.0, help="minutes per run")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    runs = [(os.path.join(args.out, f"{args.dataset}-a{a:g}-s{s}"),
             ["--method", "SGD-CR", "--dataset", args.dataset, "--data", args.data,
              "--alpha", f"{a:g}", "--seed", str(s), "--budget", f"{args.budget:g}"])
            for s in args.seeds for a in args.alphas]
    run_all(runs, args.jobs)
    rows = [{"alpha0": r["config"]["alpha"], "seed": r["config"]["seed"], **r}
            for r in finished(args.out)]
    with open(os.path.join(args.out, "omega_weight.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    print("| α0 | test NLL (seed: value) | mean ± sd | train | valid | epochs |")
    print("|---|---|---|---|---|---|")
    for a in sorted({r["alpha0"] for r in rows}):
        got = sorted((r for r in rows if r["alpha0"] == a), key=lambda r: r["seed"])
        test = [r["ours"]["test"] for r in got]
        sd = statistics.stdev(test) if len(test) > 1 else float("nan")
        tr = statistics.mean(r["ours"]["train"] for r in got)
        va = statistics.mean(r["ours"]["valid"] for r in got)
        ep = ", ".join(str(r["epochs"]) for r in got)
        per = ", ".join(f"{r['seed']}: {r['ours']['test']:.2f}" for r in got)
        print(f"| {a:g} | {per} | {statistics.mean(test):.3f} ± {sd:.3f} (n={len(test)}) | "
              f"{tr:.2f} | {va:.2f} | {ep} |")


if __name__ == "__main__":
    main()
