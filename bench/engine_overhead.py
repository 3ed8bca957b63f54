"""What the training engine adds per update over the bare kernels.

At the paper's temporal-order size (T=125, B=20, I=6, H=50, float32, 1 thread), times
(a) the bare update: rnnfast.forward + the readout's loss and gradient + rnnfast.backward with
Ω, reusing one Workspace, and (b) ``Engine.step`` of an SGD-CR engine (the same work plus
α·∂Ω/∂W_rec, Algorithm 1's norm and clipping, the SGD step and the history row), interleaved in
rounds, and prints the medians and the ratio.

    python bench/engine_overhead.py [--rounds 7] [--updates 300]
"""

import argparse
import statistics
import time

import numpy as np

import rnnfast
from rnnfast.nn import losses
from rnnfast.tasks import get_task
from rnnfast.train import build


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--updates", type=int, default=300)
    ap.add_argument("--length", type=int, default=125)
    args = ap.parse_args()
    rnnfast.set_num_threads(1)
    task = get_task("temporal_order", min_length=args.length, max_length=args.length)
    engine = build("SGD-CR", task=task, hidden=50, seed=0)
    m = engine.model
    batch = task.generate(np.random.default_rng(0), 20, args.length, dtype=m.dtype)
    ws = rnnfast.Workspace()
    p = m.params

    def bare():
        fwd = rnnfast.forward(batch.u, p["W_in"], p["W_rec"], p["b"], activation=m.activation,
                              workspace=ws)
        r = losses.loss_and_grad(fwd.h, p["W_out"], p["b_out"], batch.targets, kind=m.loss,
                                 at=m.at)
        rnnfast.backward(fwd, dh_last=r.dh_last, omega=True, input_grad=False, workspace=ws)

    def step():
        engine.step(batch)

    times = {"bare kernels + readout": [], "Engine.step (SGD-CR)": []}
    for f in (bare, step):  # warm-up
        for _ in range(50):
            f()
    for _ in range(args.rounds):
        for name, f in (("bare kernels + readout", bare), ("Engine.step (SGD-CR)", step)):
            t0 = time.perf_counter()
            for _ in range(args.updates):
                f()
            times[name].append((time.perf_counter() - t0) / args.updates)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:24s} median {1e6 * med[k]:8.1f} us/update  (rounds: "
              + ", ".join(f"{1e6 * x:.0f}" for x in v) + ")")
    ratio = med["Engine.step (SGD-CR)"] / med["bare kernels + readout"]
    print(f"engine overhead: {100 * (ratio - 1):.1f}% per update (T={args.length}, B=20, I=6, "
          f"H=50, float32, 1 thread)")


if __name__ == "__main__":
    main()
