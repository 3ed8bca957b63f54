"""Two builds of rnnfast against each other: forward and backward at one shape, interleaved.

    python bench/ab.py OLD/bin/python NEW/bin/python --shape 125,20,6,50 [--dtype float32]
        [--threads 1] [--rounds 4] [--seconds 3] [--omega]

Each round runs a fresh process of each interpreter in turn (A, B, A, B, ...), and each
process times ``rnnfast.forward`` then ``rnnfast.backward`` (tanh, dh given, no Ω unless
``--omega``) for ``--seconds`` and reports its medians. Interleaving puts both builds under
the same drift of a shared machine; the table gives every round and the median of rounds.
Use it to keep or drop a kernel change: one interpreter per build (e.g. a venv with the
change installed and one without).
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys

#: runs in the interpreter under test: prints one JSON line of medians in seconds
CHILD = r"""
import json, sys, time
import numpy as np
import rnnfast as rf
T, B, I, H = map(int, sys.argv[1].split(","))
dt, n, secs, omega = np.dtype(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1"
rng = np.random.default_rng(0)
u = rng.standard_normal((T, B, I)).astype(dt)
W_in = (rng.standard_normal((H, I)) * 0.1).astype(dt)
W_rec = (rng.standard_normal((H, H)) * 0.95 / np.sqrt(H)).astype(dt)
b, h0 = np.zeros(H, dt), np.zeros((B, H), dt)
G = rng.standard_normal((T, B, H)).astype(dt)
fw, bw = [], []
t0 = time.perf_counter()
while time.perf_counter() - t0 < secs or len(fw) < 5:
    a = time.perf_counter()
    f = rf.forward(u, W_in, W_rec, b, h0, num_threads=n)
    m = time.perf_counter()
    rf.backward(f, dh=G, omega=omega, num_threads=n)
    fw.append(m - a)
    bw.append(time.perf_counter() - m)
print(json.dumps({"forward": float(np.median(fw)), "backward": float(np.median(bw)),
                  "calls": len(fw)}))
"""


def shape(text):
    try:
        dims = tuple(int(x) for x in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 4 or dims[2] < 0 or min(dims[0], dims[1], dims[3]) < 1:
        raise argparse.ArgumentTypeError(f"expected T,B,I,H (positive integers, I ≥ 0), "
                                         f"got {text!r}")
    return dims


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("python_a", help="interpreter of build A (the baseline)")
    ap.add_argument("python_b", help="interpreter of build B")
    ap.add_argument("--shape", required=True, type=shape, help="T,B,I,H")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per process")
    ap.add_argument("--omega", action="store_true", help="backward with Ω")
    args = ap.parse_args(argv)
    T, B, I, H = args.shape
    for py in (args.python_a, args.python_b):
        if shutil.which(py) is None:
            ap.error(f"{py}: not an executable interpreter")
    flops = 2.0 * T * B * H * (H + I)  # forward; the backward does twice this
    res = {"A": [], "B": []}
    print(f"shape (T, B, I, H) = ({T}, {B}, {I}, {H}) {args.dtype}, {args.threads} thread(s)"
          f"{', with Ω' if args.omega else ''}; medians in ms")
    print("| round | build | forward | backward | together |\n|---|---|---|---|---|")
    for r in range(args.rounds):
        for name, py in (("A", args.python_a), ("B", args.python_b)):
            proc = subprocess.run([py, "-c", CHILD, ",".join(map(str, args.shape)), args.dtype,
                                   str(args.threads), str(args.seconds),
                                   "1" if args.omega else "0"], capture_output=True, text=True)
            if proc.returncode != 0:  # e.g. no rnnfast in that interpreter
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                print(f"ab.py: build {name} ({py}) failed: {tail}", file=sys.stderr)
                return 1
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            res[name].append(m)
            print(f"| {r + 1} | {name} | {m['forward'] * 1e3:.3f} | {m['backward'] * 1e3:.3f} | "
                  f"{(m['forward'] + m['backward']) * 1e3:.3f} |", flush=True)
    med = {n: {k: statistics.median(x[k] for x in v) for k in ("forward", "backward")}
           for n, v in res.items()}
    for n in ("A", "B"):
        f, b = med[n]["forward"], med[n]["backward"]
        print(f"{n}: forward {f * 1e3:.3f} ms ({flops / f / 1e9:.1f} GFLOP/s), backward "
              f"{b * 1e3:.3f} ms ({2 * flops / b / 1e9:.1f} GFLOP/s)")
    ta = med["A"]["forward"] + med["A"]["backward"]
    tb = med["B"]["forward"] + med["B"]["backward"]
    print(f"B / A: forward {med['B']['forward'] / med['A']['forward']:.3f}, backward "
          f"{med['B']['backward'] / med['A']['backward']:.3f}, together {tb / ta:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
