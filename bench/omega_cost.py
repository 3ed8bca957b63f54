#!/usr/bin/env python
"""What the Ω regularizer adds to BPTT: ``rnnfast.backward`` with Ω against the same call
without, at the paper's sizes, in one run.

Three calls (``input_grad=False``, one reused Workspace, the forward done once outside the
timing):
  plain      ``backward(fwd, dh)``
  Ω fused    ``backward(..., omega=True, omega_alpha=α)``: the training engine's form; α·∂Ω/∂W_rec
             is folded into the W_rec gradient's product (Σ a_tᵀ(h_{t-1} + α c v_t), one GEMM)
  Ω + grad   ``backward(..., omega=True)``: ∂Ω/∂W_rec returned on its own (a symmetric
             Σ c a_tᵀa_t product and one H³ product, rnn.hpp), for callers that want it
Timing: the calls alternate within each round (the order reversed every round), the same
number of calls each per round, medians over ``--rounds`` rounds; the spread is the lowest and
highest round.

    python bench/omega_cost.py                          # P, S3, S4, S5; 1 and 2 threads
    python bench/omega_cost.py --sizes P --threads 2 --rounds 9
    python bench/omega_cost.py --smoke                  # tiny sizes (tests/test_bench_smoke.py)

Goals (issue 20): Ω-fused backward ≤ 1.2× the plain one at P, ≤ 1.15× at S3–S5.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import rnnfast

SIZES = {  # (T, B, I, H), as bench/peers.py
    "P": (125, 20, 6, 50),
    "S2": (100, 32, 8, 100),
    "S3": (200, 64, 64, 256),
    "S4": (100, 32, 128, 1024),
    "S5": (50, 16, 256, 2048),
}
GOALS = {"P": 1.2, "S3": 1.15, "S4": 1.15, "S5": 1.15}
VARIANTS = {"plain": {}, "fused": {"omega": True, "omega_alpha": 2.0}, "grad": {"omega": True}}


def case(T, B, I, H, dtype):
    """A forward result and its output gradient (T, B, H), seeded by the size."""
    rng = np.random.default_rng(T * 1_000_003 + B * 1009 + I * 31 + H)
    u = rng.standard_normal((T, B, I)).astype(dtype)                       # (T, B, I)
    W_in = (rng.standard_normal((H, I)) / np.sqrt(I)).astype(dtype)         # (H, I)
    W_rec = (rng.standard_normal((H, H)) * (1.1 / np.sqrt(H))).astype(dtype)  # (H, H)
    b = np.zeros(H, dtype)                                                  # (H,)
    dh = rng.standard_normal((T, B, H)).astype(dtype)                       # (T, B, H)
    return rnnfast.forward(u, W_in, W_rec, b), dh


def measure(fwd, dh, threads, rounds, repeats):
    """{variant: [ms per call, one per round]}."""
    ws = rnnfast.Workspace()
    times = {v: [] for v in VARIANTS}

    def call(v):
        rnnfast.backward(fwd, dh, num_threads=threads, workspace=ws, input_grad=False,
                         **VARIANTS[v])

    order = list(VARIANTS)
    for v in order:   # warm-up: the workspace's memory, the threads
        call(v)
    for _ in range(rounds):
        order.reverse()
        for v in order:
            t0 = time.perf_counter()
            for _ in range(repeats):
                call(v)
            times[v].append((time.perf_counter() - t0) / repeats * 1e3)
    return times


def _cell(t, v):
    return f"{statistics.median(t[v]):.3f} [{min(t[v]):.3f}, {max(t[v]):.3f}]"


def _ratio(t, v):
    r = sorted(a / b for a, b in zip(t[v], t["plain"]))
    return statistics.median(t[v]) / statistics.median(t["plain"]), r[0], r[-1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="P,S3,S4,S5",
                    help=f"comma-separated, of {','.join(SIZES)} (default P,S3,S4,S5)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--budget", type=float, default=0.4,
                    help="seconds of calls per round and variant, setting --repeats (default 0.4)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 2 rounds")
    args = ap.parse_args(argv)
    sizes = {"tiny": (10, 3, 4, 8)} if args.smoke else {}
    for name in ([] if args.smoke else args.sizes.split(",")):
        if name not in SIZES:
            ap.error(f"--sizes: unknown size {name!r}; expected some of {','.join(SIZES)}")
        sizes[name] = SIZES[name]
    threads = [int(t) for t in args.threads.split(",")]
    rounds = 2 if args.smoke else args.rounds
    print(f"rnnfast {rnnfast.__version__}, {args.dtype}, backward with and without Ω "
          f"(input_grad=False, one Workspace), {rounds} rounds; ms per call: median [lowest "
          "round, highest round]; ratios: of the medians [lowest, highest round]")
    print()
    print("| size (T, B, I, H) | threads | plain ms | Ω fused ms | Ω fused / plain | goal | "
          "Ω + grad ms | Ω + grad / plain |")
    print("|---|---|---|---|---|---|---|---|")
    for name, dims in sizes.items():
        fwd, dh = case(*dims, np.dtype(args.dtype))
        for n in threads:
            probe = measure(fwd, dh, n, 1, 1)
            repeats = 1 if args.smoke else max(1, int(args.budget / (probe["grad"][0] / 1e3)))
            t = measure(fwd, dh, n, rounds, repeats)
            fused, grad, goal = _ratio(t, "fused"), _ratio(t, "grad"), GOALS.get(name)
            verdict = "" if goal is None else (f"≤ {goal}× " + ("met" if fused[0] <= goal
                                                                 else "not met"))
            print(f"| {name} {dims} | {n} | {_cell(t, 'plain')} | {_cell(t, 'fused')} | "
                  f"{fused[0]:.2f}× [{fused[1]:.2f}, {fused[2]:.2f}] | {verdict} | "
                  f"{_cell(t, 'grad')} | {grad[0]:.2f}× [{grad[1]:.2f}, {grad[2]:.2f}] |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
