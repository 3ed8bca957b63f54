#!/usr/bin/env python
"""Train and score a PTB cell on the text without its line ends: each split's line-end symbols
removed, the sentences run together (the vocabulary keeps its 50 outputs; the line end then
never occurs). The files put no `_` at a line's end, so this joins the last word of each
sentence to the first of the next.

    python train_without_eol.py DATA_DIR OUT [--method SGD-CR] [--threads 2] [--budget SECONDS]

Every other setting is the cell's (``rnnfast.experiments.natural.ptb_config``). Resumable:
rerun the same command. Writes OUT/results.json etc. as ``rnnfast reproduce ptb`` does.
"""

import argparse
import dataclasses
import os

from rnnfast.experiments import natural as nat


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--method", default="SGD-CR")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=None)
    a = ap.parse_args()
    cfg = nat.ptb_config(a.method)
    problem = nat.load_problem(cfg, a.data)
    d, eol = problem.data, problem.data.vocab.eol_index
    problem.data = dataclasses.replace(d, **{s: d.split(s)[d.split(s) != eol]
                                             for s in ("train", "valid", "test")})
    print({s: (d.split(s).size, problem.data.split(s).size) for s in ("train", "valid", "test")},
          flush=True)
    run = nat.NaturalRun(cfg, problem, out=a.out, num_threads=a.threads, progress=False,
                         log=lambda line: print(line, flush=True), train_eval_limit=1_000_000)
    if os.path.exists(os.path.join(a.out, "checkpoint.npz")):
        run.load_checkpoint()
        print(f"resumed at update {run.updates}", flush=True)
    outcome = run.run(budget=a.budget)
    print(outcome.results and nat.format_table(outcome.results) or outcome, flush=True)


if __name__ == "__main__":
    main()
