"""Two builds of rnnfast against each other: forward and backward at one shape, interleaved.

    python bench/ab.py OLD/bin/python NEW/bin/python --shape 125,20,6,50 [--dtype float32]
        [--threads 1] [--rounds 4] [--seconds 3] [--omega]
    python bench/ab.py OLD/bin/python NEW/bin/python --update PTB [--threads 2] ...

Each round runs a fresh process of each interpreter in turn (A, B, A, B, ...), and each
process times ``rnnfast.forward`` then ``rnnfast.backward`` (tanh, dh given, no Ω unless
``--omega``) for ``--seconds`` and reports its medians. With ``--update NAME`` it times instead
the full SGD-CR training update of ``bench/peers.py``'s update case NAME (P, PTB, MUS, MUSE,
and PTB1, MUS1 with one sequence per update as Table 1 trains them: its shape, task and
engine; ``Engine.step`` with NumPy's BLAS on one thread), float32.
Interleaving puts both builds under the same drift of a shared machine; the table gives every
round and the median of rounds. Use it to keep or drop a change: one interpreter per build
(e.g. a venv with the change installed and one without).
"""

import argparse
import json
import os
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

#: the same for one training update of bench/peers.py's update case (argv: bench folder,
#: case name, threads, seconds)
CHILD_UPDATE = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
sys.path.insert(0, sys.argv[1])
import peers
name, n, secs = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
T, B, I, H = peers.SIZES[name]
peer = peers.RnnfastPeer(n)
peer.set_threads()
peer.prepare_update(peers.make_update_problem(T, B, I, H, "float32", peers.UPDATE_TASKS[name]))
ts = []
with threadpool_limits(1, user_api="blas"):
    peer.update()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < secs or len(ts) < 5:
        a = time.perf_counter()
        peer.update()
        ts.append(time.perf_counter() - a)
print(json.dumps({"update": float(np.median(ts)), "calls": len(ts)}))
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
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--shape", type=shape, help="T,B,I,H")
    what.add_argument("--update", choices=("P", "PTB", "MUS", "MUSE", "PTB1", "MUS1"),
                      help="time bench/peers.py's training update of this case instead")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per process")
    ap.add_argument("--omega", action="store_true", help="backward with Ω")
    args = ap.parse_args(argv)
    for py in (args.python_a, args.python_b):
        if shutil.which(py) is None:
            ap.error(f"{py}: not an executable interpreter")
    if args.update:
        if args.dtype != "float32" or args.omega:  # the update case fixes both
            ap.error("--update times peers.py's float32 SGD-CR update (Ω included): "
                     "--dtype and --omega do not apply")
        return compare_updates(args)
    T, B, I, H = args.shape
    flops = 2.0 * T * B * H * (H + I)  # forward; the backward does twice this
    print(f"shape (T, B, I, H) = ({T}, {B}, {I}, {H}) {args.dtype}, {args.threads} thread(s)"
          f"{', with Ω' if args.omega else ''}; medians in ms")
    print("| round | build | forward | backward | together |\n|---|---|---|---|---|")
    res = interleaved(args, [CHILD, ",".join(map(str, args.shape)), args.dtype,
                             str(args.threads), str(args.seconds), "1" if args.omega else "0"],
                      lambda m: f"{m['forward'] * 1e3:.3f} | {m['backward'] * 1e3:.3f} | "
                                f"{(m['forward'] + m['backward']) * 1e3:.3f}")
    if res is None:
        return 1
    med = {n: {k: statistics.median(x[k] for x in v) for k in ("forward", "backward")}
           for n, v in res.items()}
    for n in ("A", "B"):
        f, b = med[n]["forward"], med[n]["backward"]
        print(f"{n}: forward {f * 1e3:.3f} ms ({flops / f / 1e9:.1f} GFLOP/s), backward "
              f"{b * 1e3:.3f} ms ({2 * flops / b / 1e9:.1f} GFLOP/s)")
    ta = med["A"]["forward"] + med["A"]["backward"]
    tb = med["B"]["forward"] + med["B"]["backward"]
    fast = {n: min(x["forward"] + x["backward"] for x in v) for n, v in res.items()}
    print(f"B / A: forward {med['B']['forward'] / med['A']['forward']:.3f}, backward "
          f"{med['B']['backward'] / med['A']['backward']:.3f}, together {tb / ta:.3f} "
          f"(fastest rounds {fast['B'] / fast['A']:.3f})")
    return 0


def run_child(name, py, argv):
    """One process of one build: its JSON line, or None after saying why it failed."""
    proc = subprocess.run([py, "-c", *argv], capture_output=True, text=True)
    if proc.returncode != 0:  # e.g. no rnnfast in that interpreter
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"ab.py: build {name} ({py}) failed: {tail}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def interleaved(args, child_argv, cells):
    """args.rounds rounds of one process of build A then one of build B, each printed as a
    table row (`cells` formats its measurements); {"A": [...], "B": [...]} of their JSON
    results, or None when a build failed."""
    res = {"A": [], "B": []}
    for r in range(args.rounds):
        for name, py in (("A", args.python_a), ("B", args.python_b)):
            m = run_child(name, py, child_argv)
            if m is None:
                return None
            res[name].append(m)
            print(f"| {r + 1} | {name} | {cells(m)} |", flush=True)
    return res


def compare_updates(args):
    bench = os.path.dirname(os.path.abspath(__file__))
    print(f"training update of bench/peers.py's case {args.update}, float32, {args.threads} "
          f"thread(s); medians in ms")
    print("| round | build | update |\n|---|---|---|")
    res = interleaved(args, [CHILD_UPDATE, bench, args.update, str(args.threads),
                             str(args.seconds)], lambda m: f"{m['update'] * 1e3:.3f}")
    if res is None:
        return 1
    a, b = (statistics.median(m["update"] for m in res[n]) for n in ("A", "B"))
    fa, fb = (min(m["update"] for m in res[n]) for n in ("A", "B"))
    # fastest rounds too: on a VM whose 2-thread rounds fall into a fast and a ~2x slower mode
    # for whole processes, medians of a few rounds can compare a fast A with a slow B
    print(f"A: update {a * 1e3:.3f} ms (fastest round {fa * 1e3:.3f})\n"
          f"B: update {b * 1e3:.3f} ms (fastest round {fb * 1e3:.3f})\n"
          f"B / A: update {b / a:.3f} (fastest rounds {fb / fa:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
