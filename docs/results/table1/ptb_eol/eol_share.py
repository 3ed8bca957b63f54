#!/usr/bin/env python
"""What the end-of-line symbol adds to a finished PTB run's bits per character: each split
scored with every symbol (the table's protocol) and without the end-of-line targets (the 49
other symbols only; the model still reads the line ends), statically and, with
``--dynamic-lr``, dynamically (one stream, each 200 characters scored before an SGD step on
them, as ../ptb_dynamic/dynamic_eval.py).

    python eol_share.py RUN_DIR DATA_DIR OUT_JSON [--label NAME] [--dynamic-lr 0.01]
        [--train-limit 1000000]

RUN_DIR: a finished run's folder (model.npz, results.json). Static scoring is the table's:
32 streams read in 1000-step pieces with the state carried; the training split on its first
``--train-limit`` characters. Adds (or replaces) the entry ``--label`` of OUT_JSON.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from rnnfast.data.metrics import char_bits
from rnnfast.data.ptb import CharStream
from rnnfast.experiments import natural as nat
from rnnfast.fileio import atomic_write_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ptb_dynamic"))
from dynamic_eval import dynamic_engine, load_run  # noqa: E402  (the sibling probe's helpers)


def token_bits(model, h, batch):
    """Per-target bits (T, B) of ``batch`` from state ``h`` (the table's scoring,
    ``metrics.char_bits``), the final state, and the targets."""
    fwd = model.forward(batch.u, h)
    bits = char_bits(nat._logits(model, fwd.h), batch.targets, logits=True)
    return bits, np.array(fwd.h_last, copy=True), batch.targets


class Tally:
    def __init__(self, eol):
        self.eol, self.bits, self.n, self.eol_bits, self.eol_n = eol, 0.0, 0, 0.0, 0

    def add(self, bits, idx):
        m = idx == self.eol
        self.bits += float(bits.sum())
        self.n += bits.size
        self.eol_bits += float(bits[m].sum())
        self.eol_n += int(m.sum())

    def row(self):
        return {"all": self.bits / self.n,
                "without_eol": (self.bits - self.eol_bits) / (self.n - self.eol_n),
                "eol_mean_bits": self.eol_bits / self.eol_n,
                "targets": self.n, "eol_targets": self.eol_n}


def static(model, cfg, problem, data):
    tally, h = Tally(problem.data.vocab.eol_index), None
    for b in CharStream(data, problem.n_in, cfg.eval_batch, cfg.eval_chunk, ahead=cfg.ahead,
                        dtype=model.dtype):
        bits, h, idx = token_bits(model, None if b.reset else h, b)
        tally.add(bits, idx)
    return tally.row()


def dynamic(model, cfg, problem, data, lr):
    engine = dynamic_engine(model, cfg, lr)
    m = engine.model
    tally, h = Tally(problem.data.vocab.eol_index), None
    for b in CharStream(data, problem.n_in, 1, cfg.seq_len, ahead=cfg.ahead, dtype=m.dtype):
        h0 = None if b.reset else h
        bits, h, idx = token_bits(m, h0, b)  # scored before the step, from the carried state
        tally.add(bits, idx)
        engine.step(b, h0)
    return tally.row()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("data")
    ap.add_argument("out_json")
    ap.add_argument("--label", default=None)
    ap.add_argument("--dynamic-lr", type=float, default=0.0)
    ap.add_argument("--train-limit", type=int, default=1_000_000)
    a = ap.parse_args()
    recorded, cfg, model, problem = load_run(a.run_dir, a.data)
    entry = {"run": os.path.basename(os.path.normpath(a.run_dir)), "recorded": recorded["ours"],
             "method": cfg.method, "lr": cfg.lr, "static": {}, "dynamic": {}}
    print(f"{a.run_dir}: recorded train / valid / test {recorded['ours']}", flush=True)
    for split in ("train", "valid", "test"):
        data = problem.data.split(split)
        if split == "train":
            data = data[:a.train_limit]
        t0 = time.perf_counter()
        r = entry["static"][split] = static(model, cfg, problem, data)
        print(f"static   {split:5s} all {r['all']:.4f}  without EOL {r['without_eol']:.4f}  "
              f"(EOL {r['eol_mean_bits']:.2f} bits each, {time.perf_counter() - t0:.0f} s)",
              flush=True)
    if a.dynamic_lr > 0:
        entry["dynamic_lr"] = a.dynamic_lr
        for split in ("valid", "test"):
            t0 = time.perf_counter()
            r = entry["dynamic"][split] = dynamic(model, cfg, problem, problem.data.split(split),
                                                  a.dynamic_lr)
            print(f"dynamic  {split:5s} all {r['all']:.4f}  without EOL {r['without_eol']:.4f}  "
                  f"(EOL {r['eol_mean_bits']:.2f} bits each, {time.perf_counter() - t0:.0f} s)",
                  flush=True)
    table = {}
    if os.path.exists(a.out_json):
        with open(a.out_json) as f:
            table = json.load(f)
    table[a.label or entry["run"]] = entry
    atomic_write_json(a.out_json, table)


if __name__ == "__main__":
    main()
