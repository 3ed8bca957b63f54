"""Batch split against hidden split over a grid of (B, H): which one the thread plan should take.

    python bench/thread_plan.py [--threads 2] [--dtype float32] [--B 2,4,6,8] [--H 256,300,400,500]
        [--T 100] [--I 64] [--rounds 9]

For each (B, H): forward + backward with Ω (sigmoid, one Workspace per split) forced onto the
batch split (each thread owns B/n sequences for all steps, no barrier per step) and onto the
hidden split (each thread owns a block of W_rec's columns, one barrier per step), alternating
call by call; prints the medians, hidden ÷ batch, and the split the automatic plan takes
(``_core.plan``). The first two rounds are warm-up.

A map, not a verdict: the two splits alternating in one process share caches that separate
processes do not, and at four rows per thread with W_rec past L2 this grid favoured the hidden
split where ``bench/ab.py`` (each plan in its own build, processes interleaved) measured it
1.06× slower. Decide a change of the plan with ``bench/ab.py``.
"""

import argparse
import time

import numpy as np

import rnnfast
from rnnfast import _core


def ints(text):
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--B", type=ints, default=[2, 4, 6, 8])
    ap.add_argument("--H", type=ints, default=[256, 300, 400, 500])
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--I", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    dt, n, T, I = np.dtype(args.dtype), args.threads, args.T, args.I
    rng = np.random.default_rng(0)
    print(f"T = {T}, I = {I}, {dt}, {n} threads, L2 {rnnfast.build_info()['l2_cache_bytes']} "
          f"bytes; fwd + BPTT with Ω, median ms")
    print("| B | H | batch | hidden | hidden ÷ batch | auto |\n|---|---|---|---|---|---|")
    for B in args.B:
        for H in args.H:
            u = rng.standard_normal((T, B, I)).astype(dt)
            W_in = (rng.standard_normal((H, I)) * 0.1).astype(dt)
            W_rec = (rng.standard_normal((H, H)) * 0.9 / np.sqrt(H)).astype(dt)
            b, h0 = np.zeros(H, dt), np.zeros((B, H), dt)
            G = rng.standard_normal((T, B, H)).astype(dt)
            ws = {s: rnnfast.Workspace() for s in ("batch", "hidden")}
            times = {s: [] for s in ws}
            for r in range(max(args.rounds, 3)):
                for s in ws:
                    a = time.perf_counter()
                    f = rnnfast.forward(u, W_in, W_rec, b, h0, activation="sigmoid",
                                        num_threads=n, workspace=ws[s], _schedule=s)
                    rnnfast.backward(f, dh=G, omega=True, num_threads=n, workspace=ws[s],
                                     _schedule=s)
                    if r >= 2:
                        times[s].append(time.perf_counter() - a)
            mb, mh = np.median(times["batch"]), np.median(times["hidden"])
            auto = _core.plan(T, B, I, H, dt.itemsize, n)[1]
            print(f"| {B} | {H} | {mb * 1e3:.2f} | {mh * 1e3:.2f} | {mh / mb:.2f} | {auto} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
