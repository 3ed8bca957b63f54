#!/usr/bin/env python
"""Forward + backward time of ``rnnfast.torch.RNN`` against ``torch.nn.RNN``, in one run.

What is timed, per size, dtype and thread count: one training step's RNN work through the
module API a PyTorch user calls::

    module.zero_grad(set_to_none=True)
    out, h_n = module(u)          # u (T, B, I), time-major, no hx
    out.backward(G)               # G (T, B, H): E = Σ out·G, gradients of all 4 parameters

for ``torch.nn.RNN`` and ``rnnfast.torch.RNN`` holding the same parameters (tanh, bias), plus
the same work on the raw NumPy core (``rnnfast.forward`` + ``rnnfast.backward``) to show what
the torch wrapper costs. ``--input-grad`` also makes ``u`` require a gradient (an RNN that is
not the first layer); by default it does not, as for an RNN reading data.

How: thread counts are set explicitly before every single timed call (the counts themselves are
measured one after the other, so a call never follows a switch of team size) — ``torch.set_num_threads(n)``
and ``rnnfast.set_num_threads(n)`` plus the module's ``num_threads=n`` — because torch ships its
own libgomp and whichever loads first serves both libraries. The three contenders are
interleaved call by call (the order rotates every round) so that a noisy, shared machine
disturbs them alike; each cell reports the median and the minimum wall time over ``--repeats``
rounds after warm-up, and the median process CPU time (all threads; on one thread it is the
figure least disturbed by other processes, on two it includes OpenMP's spin-waiting). The
1-minute load average at the start and end is printed and stored.

Sizes (T, B, I, H): P = (125, 20, 6, 50) the paper's temporal-order minibatch,
S2 = (100, 32, 8, 100), S3 = (200, 64, 64, 256) (the sizes of bench/peers.py).

Usage::

    python bench/torch_rnn.py                              # P, S2, S3; 1 and 2 threads; float32
    python bench/torch_rnn.py --dtypes float32,float64 --repeats 100 --out /tmp/torch_rnn.json
    python bench/torch_rnn.py --smoke                      # a few seconds: does it run?
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


SIZES = {
    "P": (125, 20, 6, 50),
    "S2": (100, 32, 8, 100),
    "S3": (200, 64, 64, 256),
}
CONTENDERS = ("torch.nn.RNN", "rnnfast.torch.RNN", "rnnfast core")


def _atomic_write(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def make_case(T, B, I, H, dtype, input_grad):
    """The modules, inputs and step functions of one (size, dtype)."""
    import torch
    import rnnfast
    import rnnfast.torch as rt

    tdtype = getattr(torch, dtype)
    torch.manual_seed(0)
    ref = torch.nn.RNN(I, H, dtype=tdtype)
    ours = rt.RNN(I, H, dtype=tdtype)
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(T, B, I, generator=gen, dtype=tdtype).requires_grad_(input_grad)  # (T, B, I)
    G = torch.randn(T, B, H, generator=gen, dtype=tdtype)                             # (T, B, H)
    # the raw core on the same numbers
    W_in = ref.weight_ih_l0.detach().numpy().copy()                                  # (H, I)
    W_rec = ref.weight_hh_l0.detach().numpy().copy()                                 # (H, H)
    b = (ref.bias_ih_l0 + ref.bias_hh_l0).detach().numpy()                           # (H,)
    u_np, G_np = u.detach().numpy().copy(), G.numpy().copy()

    def module_step(m):
        def step(n):
            m.zero_grad(set_to_none=True)
            u.grad = None
            out, _ = m(u)
            out.backward(G)
        return step

    def core_step(n):
        fwd = rnnfast.forward(u_np, W_in, W_rec, b, num_threads=n)
        rnnfast.backward(fwd, G_np, num_threads=n)

    ours_step = module_step(ours)

    def ours_threads(n):
        ours.num_threads = n
        ours_step(n)

    return {"torch.nn.RNN": module_step(ref), "rnnfast.torch.RNN": ours_threads,
            "rnnfast core": core_step}, (ref, ours, u, G)


def check(ref, ours, u, G) -> float:
    """Largest relative difference of output and weight gradients between the two modules."""
    worst = 0.0
    grads = []
    for m in (ref, ours):
        m.zero_grad(set_to_none=True)
        out, _ = m(u)
        out.backward(G)
        grads.append([out.detach()] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    return worst


def measure(steps: dict, threads: list, repeats: int, warmup: int) -> dict:
    """Interleaved timings: {(contender, n): ([wall seconds, ...], [process CPU seconds, ...])}."""
    import torch
    import rnnfast

    def set_threads(n):
        torch.set_num_threads(n)
        rnnfast.set_num_threads(n)

    times = {(c, n): ([], []) for c in CONTENDERS for n in threads}
    order = list(CONTENDERS)
    # Thread counts outermost: switching torch's OpenMP team between 1 and 2 threads before
    # every call would time the switch, not the RNN.
    for n in threads:
        for r in range(warmup + repeats):
            order = order[1:] + order[:1]             # rotate who goes first
            for c in order:
                set_threads(n)
                c0 = time.process_time()
                t0 = time.perf_counter()
                steps[c](n)
                dt = time.perf_counter() - t0
                dc = time.process_time() - c0
                if r >= warmup:
                    times[(c, n)][0].append(dt)
                    times[(c, n)][1].append(dc)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="P,S2,S3")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--repeats", type=int, default=0,
                    help="timed rounds per cell (default: about 3 s of torch time, 20..200)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--input-grad", action="store_true", help="u requires grad as well")
    ap.add_argument("--out", help="write all timings as JSON (atomically)")
    ap.add_argument("--smoke", action="store_true", help="tiny size, few repeats")
    args = ap.parse_args(argv)

    import torch
    import rnnfast

    sizes = {"tiny": (10, 2, 3, 8)} if args.smoke else \
        {s: SIZES[s] for s in args.sizes.split(",")}
    threads = [int(t) for t in args.threads.split(",")]
    dtypes = args.dtypes.split(",")
    load0 = os.getloadavg()[0]
    print(f"torch {torch.__version__}, rnnfast {rnnfast.__version__}, cpus {os.cpu_count()}, "
          f"load average {load0:.2f}, input grad: {args.input_grad}")
    print("wall time: median (min) ms over interleaved rounds; cpu: median process CPU time ms "
          "(all threads); speed-up = torch / rnnfast.torch, wall medians and CPU medians\n")
    print("| size (T,B,I,H) | dtype | thr | rounds | torch.nn.RNN wall | rnnfast.torch.RNN wall "
          "| rnnfast core wall | torch cpu | rnnfast.torch cpu | speed-up wall / cpu |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for name, (T, B, I, H) in sizes.items():
        for dtype in dtypes:
            steps, mods = make_case(T, B, I, H, dtype, args.input_grad)
            err = check(*mods)
            tol = 1e-4 if dtype == "float32" else 1e-10
            if not err <= tol:
                print(f"{name} {dtype}: modules disagree (max rel. difference {err:.2g})",
                      file=sys.stderr)
                return 1
            repeats = args.repeats
            if args.smoke:
                repeats = 3
            elif repeats <= 0:                        # about 3 s of torch time per cell
                torch.set_num_threads(1)
                t0 = time.perf_counter()
                steps["torch.nn.RNN"](1)
                repeats = int(min(200, max(20, 3.0 / (time.perf_counter() - t0))))
            times = measure(steps, threads, repeats, 1 if args.smoke else args.warmup)
            for n in threads:
                cell = {c: times[(c, n)][0] for c in CONTENDERS}
                cpu = {c: times[(c, n)][1] for c in CONTENDERS}
                med = {c: statistics.median(v) for c, v in cell.items()}
                mn = {c: min(v) for c, v in cell.items()}
                cmed = {c: statistics.median(v) for c, v in cpu.items()}
                ratio = med["torch.nn.RNN"] / med["rnnfast.torch.RNN"]
                cratio = cmed["torch.nn.RNN"] / cmed["rnnfast.torch.RNN"]
                print(f"| {name} ({T},{B},{I},{H}) | {dtype} | {n} | {repeats} | "
                      + " | ".join(f"{1e3 * med[c]:.3f} ({1e3 * mn[c]:.3f})" for c in CONTENDERS)
                      + f" | {1e3 * cmed['torch.nn.RNN']:.3f} | {1e3 * cmed['rnnfast.torch.RNN']:.3f}"
                      + f" | {ratio:.2f}× / {cratio:.2f}× |", flush=True)
                results.append({"size": name, "shape": [T, B, I, H], "dtype": dtype,
                                "threads": n, "rounds": repeats, "max_rel_diff": err,
                                "wall_seconds": cell, "cpu_seconds": cpu,
                                "median_ms": {c: 1e3 * v for c, v in med.items()},
                                "min_ms": {c: 1e3 * v for c, v in mn.items()},
                                "cpu_median_ms": {c: 1e3 * v for c, v in cmed.items()}})
    load1 = os.getloadavg()[0]
    print(f"\nload average at the end {load1:.2f}")
    if args.out:
        _atomic_write(args.out, json.dumps({
            "torch": torch.__version__, "rnnfast": rnnfast.__version__, "cpus": os.cpu_count(),
            "input_grad": args.input_grad, "load_average": [load0, load1],
            "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
