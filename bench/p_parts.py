"""The parts of a forward + BPTT at one shape, every variant called in turn in one process.

    python bench/p_parts.py [--shape 125,20,6,50] [--threads 1,2] [--seconds 20]

Calls, one after the other in a loop (so that every variant meets the same stretches of a
shared machine, where separate runs would not): the forward with a linear activation (its
products alone), with ReLU and with tanh, the training backward (Ω folded into ∂E/∂W_rec, no
∂E/∂u: what ``RNNModel.loss_and_grad`` asks for an SGD-CR update) and the plain backward
(no Ω, no ∂E/∂u), on each thread count; float32. Prints each variant's median, first quartile
and fastest call in µs. The differences between variants say what the activation, Ω and the
second thread cost; the absolute times drift with the machine.
"""

import argparse
import time

import numpy as np

import rnnfast as rf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="125,20,6,50", help="T,B,I,H (default: the paper's P)")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    try:
        T, B, I, H = (int(x) for x in args.shape.split(","))
        threads = [int(x) for x in args.threads.split(",")]
    except ValueError:
        ap.error(f"--shape: expected T,B,I,H, got {args.shape!r}; --threads: comma-separated "
                 f"integers, got {args.threads!r}")
    if min(T, B, H) < 1 or I < 0 or min(threads) < 1:
        ap.error("expected T, B, H and thread counts ≥ 1 and I ≥ 0")
    dt = np.float32
    rng = np.random.default_rng(0)
    u = rng.standard_normal((T, B, I)).astype(dt)
    W_in = (rng.standard_normal((H, I)) * 0.1).astype(dt)
    W_rec = (rng.standard_normal((H, H)) * 0.95 / np.sqrt(H)).astype(dt)
    b, h0 = np.zeros(H, dt), np.zeros((B, H), dt)
    dh_last = rng.standard_normal((B, H)).astype(dt)
    ws = {n: rf.Workspace() for n in threads}
    fwd = {n: rf.forward(u, W_in, W_rec, b, h0, num_threads=n, workspace=ws[n]) for n in threads}
    cases = []
    for n in threads:
        for act in ("linear", "relu", "tanh"):
            cases.append((f"forward {act}, {n} thread(s)",
                          lambda n=n, act=act: rf.forward(u, W_in, W_rec, b, h0, activation=act,
                                                          num_threads=n)))
        cases.append((f"backward SGD-CR, {n} thread(s)",
                      lambda n=n: rf.backward(fwd[n], dh_last=dh_last, omega=True,
                                              omega_alpha=0.5, input_grad=False, num_threads=n,
                                              workspace=ws[n])))
        cases.append((f"backward plain, {n} thread(s)",
                      lambda n=n: rf.backward(fwd[n], dh_last=dh_last, input_grad=False,
                                              num_threads=n, workspace=ws[n])))
    times = {name: [] for name, _ in cases}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.seconds or min(map(len, times.values())) < 8:
        for name, call in cases:
            a = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - a)
    print(f"(T, B, I, H) = ({T}, {B}, {I}, {H}), float32, µs per call")
    print("| call | median | q1 | fastest | calls |\n|---|---|---|---|---|")
    for name, ts in times.items():
        v = np.array(ts[3:]) * 1e6  # the first calls warm up
        print(f"| {name} | {np.median(v):.1f} | {np.percentile(v, 25):.1f} | {v.min():.1f} "
              f"| {len(v)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
