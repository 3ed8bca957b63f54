#!/usr/bin/env python
"""Forward + backward of a whole ``nn.RNN`` stack: ``rnnfast.torch.RNN`` against
``torch.nn.RNN``, in one run (the method of bench/torch_rnn.py: thread counts set before every
call, contenders interleaved call by call with a rotating order, medians over rounds).

One step, as in a language model's training loop (the input comes from an embedding, so it
requires a gradient; the loss reads every output and h_n)::

    module.zero_grad(set_to_none=True)
    out, h_n = module(u, h0)            # u (T, B, I), h0 (L·D, B, H)
    (out·G).sum() + (h_n·Gn).sum() -> backward

Contenders
    torch.nn.RNN
    rnnfast.torch.RNN            the module (custom operators, one Python call per layer)
    rnnfast core                 the same kernel calls straight from NumPy, no torch at all
                                 (one-direction configurations): the module's Python cost per
                                 layer is the difference
    rnnfast.torch.RNN serial     (bidirectional only) the two directions one after the other,
                                 each on all threads, instead of at once on half the threads

Configurations: name = (T, B, I, H, num_layers, bidirectional); LM2 is the word-language-model
program's RNN at its defaults (35, 20, 200, 200, 2 layers).

Usage::

    python bench/torch_stack.py                         # all configurations, 1 and 2 threads
    python bench/torch_stack.py --configs LM2 --repeats 60 --out /tmp/stack.json
    python bench/torch_stack.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

CONFIGS = {
    "LM1": (35, 20, 200, 200, 1, False),
    "LM2": (35, 20, 200, 200, 2, False),
    "LM2-bi": (35, 20, 200, 200, 2, True),
    "P3": (125, 20, 6, 50, 3, False),
}


def make_case(T, B, I, H, L, bidir, dtype):
    import numpy as np
    import torch
    import rnnfast
    import rnnfast.torch as rt

    tdtype = getattr(torch, dtype)
    D = 2 if bidir else 1
    torch.manual_seed(0)
    ref = torch.nn.RNN(I, H, L, bidirectional=bidir, dtype=tdtype)
    ours = rt.RNN(I, H, L, bidirectional=bidir, dtype=tdtype)
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(T, B, I, generator=gen, dtype=tdtype, requires_grad=True)   # (T, B, I)
    h0 = torch.randn(L * D, B, H, generator=gen, dtype=tdtype)                  # (L·D, B, H)
    G = torch.randn(T, B, D * H, generator=gen, dtype=tdtype)                   # (T, B, D·H)
    Gn = torch.randn(L * D, B, H, generator=gen, dtype=tdtype)                  # (L·D, B, H)

    def module_step(m, serial=False):
        def step(n):
            m.num_threads = n if m is ours else None
            rt.PARALLEL_DIRECTIONS = not serial
            m.zero_grad(set_to_none=True)
            u.grad = None
            out, hn = m(u, h0)
            ((out * G).sum() + (hn * Gn).sum()).backward()
            rt.PARALLEL_DIRECTIONS = True
        return step

    steps = {"torch.nn.RNN": module_step(ref), "rnnfast.torch.RNN": module_step(ours)}
    if bidir:
        steps["rnnfast.torch.RNN serial"] = module_step(ours, serial=True)
    else:
        p = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
        W = [(p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"], p[f"bias_ih_l{k}"] + p[f"bias_hh_l{k}"])
             for k in range(L)]
        u_np, h0_np, G_np, Gn_np = (t.detach().numpy() for t in (u, h0, G, Gn))

        def core_step(n):
            fwds, x = [], u_np
            for k in range(L):
                fwds.append(rnnfast.forward(x, *W[k], h0_np[k], num_threads=n))
                x = fwds[-1].h
            dh = G_np
            for k in reversed(range(L)):
                g = rnnfast.backward(fwds[k], dh, dh_last=Gn_np[k], num_threads=n)
                dh = g.u
        steps["rnnfast core"] = core_step

    def check():
        res = []
        for m in (ref, ours):
            m.zero_grad(set_to_none=True)
            u.grad = None
            out, hn = m(u, h0)
            ((out * G).sum() + (hn * Gn).sum()).backward()
            res.append([out.detach(), u.grad] + [q.grad for q in m.parameters()])
        return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(*res))

    return steps, check


def measure(steps, threads, repeats, warmup):
    import torch
    import rnnfast

    times = {(c, n): ([], []) for c in steps for n in threads}   # wall, process CPU
    order = list(steps)
    for n in threads:
        for r in range(warmup + repeats):
            order = order[1:] + order[:1]
            for c in order:
                torch.set_num_threads(n)
                rnnfast.set_num_threads(n)
                c0 = time.process_time()
                t0 = time.perf_counter()
                steps[c](n)
                if r >= warmup:
                    times[(c, n)][0].append(time.perf_counter() - t0)
                    times[(c, n)][1].append(time.process_time() - c0)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", help="write all timings as JSON")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, few repeats")
    args = ap.parse_args(argv)

    import torch
    import rnnfast

    configs = {"tiny": (5, 3, 4, 6, 2, True), "tiny1": (5, 3, 4, 6, 2, False)} if args.smoke \
        else {c: CONFIGS[c] for c in args.configs.split(",")}
    repeats = 2 if args.smoke else args.repeats
    threads = [int(t) for t in args.threads.split(",")]
    load0 = os.getloadavg()[0]
    print(f"torch {torch.__version__}, rnnfast {rnnfast.__version__}, cpus {os.cpu_count()}, "
          f"load average {load0:.2f}, {args.dtype}, {repeats} interleaved rounds per cell")
    print("wall: median and min over the rounds; cpu: median process CPU time (all threads; on "
          "one thread the figure least disturbed by other processes)")
    print("\n| config (T,B,I,H,L,bidir) | thr | contender | wall median ms | wall min ms | "
          "cpu median ms | torch / this (wall median) | torch / this (cpu) |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for name, cfg in configs.items():
        steps, check = make_case(*cfg, args.dtype)
        err = check()
        if not err <= (1e-4 if args.dtype == "float32" else 1e-10):
            print(f"{name}: modules disagree (max rel. difference {err:.2g})", file=sys.stderr)
            return 1
        times = measure(steps, threads, repeats, 1 if args.smoke else args.warmup)
        for n in threads:
            ref = statistics.median(times[("torch.nn.RNN", n)][0])
            ref_cpu = statistics.median(times[("torch.nn.RNN", n)][1])
            for c in steps:
                v, cpu = times[(c, n)]
                med, cmed = statistics.median(v), statistics.median(cpu)
                print(f"| {name} {cfg} | {n} | {c} | {1e3 * med:.2f} | {1e3 * min(v):.2f} | "
                      f"{1e3 * cmed:.2f} | {ref / med:.2f}× | {ref_cpu / cmed:.2f}× |", flush=True)
                results.append({"config": name, "shape": list(cfg), "threads": n,
                                "contender": c, "wall_seconds": v, "cpu_seconds": cpu,
                                "median_ms": 1e3 * med, "cpu_median_ms": 1e3 * cmed,
                                "speedup_vs_torch": ref / med,
                                "cpu_speedup_vs_torch": ref_cpu / cmed, "max_rel_diff": err})
    load1 = os.getloadavg()[0]
    print(f"\nload average at the end {load1:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "cpus": os.cpu_count(), "dtype": args.dtype,
                       "load_average": [load0, load1], "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
