#!/usr/bin/env python
"""Does the evaluation protocol explain the PTB shortfall? Scores a finished PTB run's model
(its model.npz and results.json) on the test split as the cell does (32 parallel streams of
the split, state carried across chunks of 1000 characters), as ONE stream (the whole split in
order, state carried throughout), and on the whole training split (the cell's table scores
its first 1,000,000 characters only).

    python eval_protocol.py RUN_DIR DATA_DIR      # RUN_DIR: e.g. a table1 cell's folder
"""

import json
import sys
import time

from rnnfast.experiments import natural as nat
from rnnfast.nn.model import RNNModel


def main(run_dir: str, data_dir: str) -> None:
    with open(f"{run_dir}/results.json") as f:
        recorded = json.load(f)
    cfg = recorded["config"]
    model = RNNModel.load(f"{run_dir}/model.npz")
    print(f"{run_dir}: recorded train / valid / test {recorded['ours']}")
    problems = {}  # eval_batch -> problem: the data read once per protocol
    for split, eval_batch, limit, what in [
            ("test", 32, None, "test, 32 streams (the cell's protocol)"),
            ("test", 1, None, "test, one stream"),
            ("train", 32, 1_000_000, "train, first 1,000,000 characters (the cell's table)"),
            ("train", 32, None, "train, all of it")]:
        if eval_batch not in problems:
            problems[eval_batch] = nat.load_problem(
                nat.NaturalConfig(**{**cfg, "eval_batch": eval_batch}), data_dir)
        problem = problems[eval_batch]
        t = time.perf_counter()
        value, n = problem.evaluate(model, split, num_threads=1, limit=limit)
        print(f"{what}: {value:.4f} bits/char over {n} characters "
              f"({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
