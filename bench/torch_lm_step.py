#!/usr/bin/env python
"""One training step of pytorch/examples' word_language_model (``--model RNN_TANH`` at its
defaults: emsize = nhid = 200, 2 layers, dropout 0.2, bptt 35, batch 20, clip 0.25, SGD lr 20)
with torch.nn.RNN and with rnnfast.torch.RNN, interleaved in one run, and where the time goes.

The model is the program's own model.py, read from a git checkout of pytorch/examples
(COMMIT); the step is the program's ``train()`` body. Vocabulary: 33278 words (wikitext-2's)
by default. Phases of the forward pass are timed separately (embedding + dropout, RNN,
dropout + decoder + log_softmax + NLL), then the whole backward, then clip + SGD; the RNN's
own forward + backward is the difference measured by bench/torch_stack.py.

    python bench/torch_lm_step.py --checkout /path/to/examples.git --repeats 15
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

COMMIT = "77f55b912142e11fcfdf5b530231fb9c52f181e8"
PHASES = ("embed", "rnn", "decoder+loss", "backward", "clip+sgd", "step")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", required=True, help="git dir of a pytorch/examples clone")
    ap.add_argument("--vocab", type=int, default=33278)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    import rnnfast
    import rnnfast.torch as rt

    tmp = tempfile.mkdtemp(prefix="lmstep-")
    src = subprocess.run(["git", "--git-dir", args.checkout, "show",
                          f"{COMMIT}:word_language_model/model.py"],
                         check=True, capture_output=True).stdout
    pathlib.Path(tmp, "model.py").write_bytes(src)
    sys.path.insert(0, tmp)
    from model import RNNModel

    torch.manual_seed(0)
    V = args.vocab
    models = {"torch.nn.RNN": RNNModel("RNN_TANH", V, 200, 200, 2, 0.2)}
    models["rnnfast.torch.RNN"] = rt.replace_rnn(copy.deepcopy(models["torch.nn.RNN"]))
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, V, (36, 20), generator=g)
    x, y = data[:35], data[1:].reshape(-1)
    hidden0 = torch.zeros(2, 20, 200)

    def step(model, n):
        t = {}
        model.train()
        model.zero_grad()
        t0 = time.perf_counter()
        emb = model.drop(model.encoder(x))
        t1 = time.perf_counter()
        output, hidden = model.rnn(emb, hidden0)
        t2 = time.perf_counter()
        decoded = model.decoder(model.drop(output)).view(-1, model.ntoken)
        loss = F.nll_loss(F.log_softmax(decoded, dim=1), y)
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-1e-3)     # a small step: the timings, not the training
        t5 = time.perf_counter()
        return dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)))

    load0 = os.getloadavg()[0]
    print(f"torch {torch.__version__}, cpus {os.cpu_count()}, load average {load0:.2f}, "
          f"vocabulary {V}, {args.repeats} interleaved rounds per thread count")
    results = []
    for n in [int(t) for t in args.threads.split(",")]:
        times = {c: {p: [] for p in PHASES} for c in models}
        order = list(models)
        for r in range(args.warmup + args.repeats):
            order = order[1:] + order[:1]
            for c in order:
                torch.set_num_threads(n)
                rnnfast.set_num_threads(n)
                ph = step(models[c], n)
                if r >= args.warmup:
                    for p in PHASES:
                        times[c][p].append(ph[p])
        med = {c: {p: statistics.median(v) for p, v in times[c].items()} for c in models}
        print(f"\n{n} thread(s): median ms per phase")
        print("| phase | torch.nn.RNN | rnnfast.torch.RNN | torch / rnnfast |")
        print("|---|---|---|---|")
        for p in PHASES:
            a, b = med["torch.nn.RNN"][p], med["rnnfast.torch.RNN"][p]
            print(f"| {p} | {1e3 * a:.1f} | {1e3 * b:.1f} | {a / b:.2f}× |")
        results.append({"threads": n, "seconds": times, "median_ms":
                        {c: {p: 1e3 * v for p, v in m.items()} for c, m in med.items()}})
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "vocab": V, "load_average": load0,
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
