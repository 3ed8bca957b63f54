#!/usr/bin/env python
"""Does a small problem gain from a second thread when the calls come as in a training loop?

At the paper's temporal-order size P = (125, 20, 6, 50), times one forward + BPTT-with-Ω
(``input_grad=False``, one Workspace: the engine's calls) on 1 and on 2 threads, in three call
patterns:

  back-to-back   the calls follow each other directly
  after-blas     a small NumPy BLAS product (as the readout's) runs before each call
  after-gap      ``--gap`` seconds of sleep before each call (other work of the update)

A call splits the batch between the threads for the whole sweep (no barrier per step), so it
needs the second core only at its start and end; the ratio shows whether that core is there
when asked. Rounds alternate 1 and 2 threads; medians over rounds.

    python bench/small_threads.py
    python bench/small_threads.py --size 100x32x8x100 --gap 0.0001
    python bench/small_threads.py --smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import rnnfast

PATTERNS = ("back-to-back", "after-blas", "after-gap")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="125x20x6x50", help="TxBxIxH (default P: 125x20x6x50)")
    ap.add_argument("--gap", type=float, default=0.0003,
                    help="seconds of sleep before each call in after-gap (default 0.0003)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--calls", type=int, default=100, help="calls per round (default 100)")
    ap.add_argument("--smoke", action="store_true", help="tiny size, 2 rounds of 3 calls")
    args = ap.parse_args(argv)
    try:
        T, B, I, H = (int(x) for x in ("4x4x3x8" if args.smoke else args.size).split("x"))
    except ValueError:
        ap.error(f"--size: expected TxBxIxH, four integers, got {args.size!r}")
    rounds, calls = (2, 3) if args.smoke else (args.rounds, args.calls)

    rng = np.random.default_rng(0)
    u = rng.standard_normal((T, B, I)).astype(np.float32)                       # (T, B, I)
    W_in = (rng.standard_normal((H, I)) / np.sqrt(I)).astype(np.float32)        # (H, I)
    W_rec = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32)       # (H, H)
    b = np.zeros(H, np.float32)                                                 # (H,)
    dh = rng.standard_normal((T, B, H)).astype(np.float32)                      # (T, B, H)
    X = rng.standard_normal((T * B, H)).astype(np.float32)                      # (T·B, H)
    W_out = rng.standard_normal((H, 4)).astype(np.float32)                      # (H, 4)
    ws = rnnfast.Workspace()

    def update(n):
        f = rnnfast.forward(u, W_in, W_rec, b, num_threads=n, workspace=ws)
        rnnfast.backward(f, dh, omega=True, omega_alpha=2.0, num_threads=n, workspace=ws,
                         input_grad=False)

    def before(pattern):
        if pattern == "after-blas":
            X.T @ (X @ W_out)
        elif pattern == "after-gap":
            time.sleep(args.gap)

    env = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND",
                                          "OPENBLAS_NUM_THREADS")}
    print(f"rnnfast {rnnfast.__version__}, float32, (T, B, I, H) = ({T}, {B}, {I}, {H}), "
          f"forward + BPTT with Ω per call; {rounds} rounds of {calls} calls; "
          + ", ".join(f"{k}={v}" for k, v in env.items() if v is not None))
    print()
    print("| pattern | 1 thread ms | 2 threads ms | 1 thread / 2 threads |")
    print("|---|---|---|---|")
    for pattern in PATTERNS:
        times = {1: [], 2: []}
        for n in (1, 2):
            update(n)
        for r in range(rounds):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                total = 0.0
                for _ in range(calls):
                    before(pattern)
                    t0 = time.perf_counter()
                    update(n)
                    total += time.perf_counter() - t0
                times[n].append(total / calls * 1e3)
        one, two = statistics.median(times[1]), statistics.median(times[2])
        print(f"| {pattern} | {one:.3f} | {two:.3f} | {one / two:.2f}× |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
