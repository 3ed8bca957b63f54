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
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor


def floats(text):
    return [float(x) for x in text.split(",")]


def ints(text):
    return [int(x) for x in text.split(",")]


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
    runs = [(a, s) for s in args.seeds for a in args.alphas]

    def folder(a, s):
        return os.path.join(args.out, f"{args.dataset}-a{a:g}-s{s}")

    def run(spec):
        a, s = spec
        d = folder(a, s)
        if os.path.exists(os.path.join(d, "results.json")):
            return
        os.makedirs(d, exist_ok=True)
        cmd = [sys.executable, "-c", "import sys; from rnnfast.cli import main; sys.exit(main())",
               "reproduce", "music", "--dataset", args.dataset,
               "--data", args.data, "--method", "SGD-CR", "--alpha", f"{a:g}", "--seed", str(s),
               "--threads", "1", "--budget", f"{args.budget:g}", "--out", d,
               "--no-progress", "--quiet"]
        if os.path.exists(os.path.join(d, "options.json")):
            cmd.append("--resume")  # a run cut short: continue it
        with open(os.path.join(d, "stdout.txt"), "a") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, runs))
    # Every finished run in OUT (also those of earlier calls with other α0 or seeds).
    rows = []
    for name in sorted(os.listdir(args.out)):
        p = os.path.join(args.out, name, "results.json")
        if os.path.exists(p):
            with open(p) as f:
                r = json.load(f)
            rows.append({"alpha0": r["config"]["alpha"], "seed": r["config"]["seed"], **r})
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
