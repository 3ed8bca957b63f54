#!/usr/bin/env python
"""Dynamic evaluation of a finished PTB run (Mikolov's RNNLM toolkit's ``-dynamic``): score a
split as ONE stream in order, 200 characters at a time, each segment scored before the model
takes an SGD step on it (clipped at the run's threshold, no Ω), so the model adapts to the
text it has just read. lr 0 is the static score of the same stream (no update).

    python dynamic_eval.py RUN_DIR DATA_DIR [--lrs 0,0.001,0.003,0.01] [--splits valid,test]

RUN_DIR: a finished run's folder (model.npz, results.json), e.g. a Table 1 cell's. The lr is
chosen on the validation split; the test split is scored with each lr too, for the record.
Prints one line per (lr, split) and writes RUN_DIR/dynamic_eval.json.
"""

import argparse
import json
import math
import os
import time

from rnnfast.data.ptb import CharStream
from rnnfast.experiments import natural as nat
from rnnfast.fileio import atomic_write_json
from rnnfast.nn.model import BIASES, RNNModel
from rnnfast.train import build


def load_run(run_dir, data):
    """A finished run's recorded results, config, best model and problem."""
    with open(os.path.join(run_dir, "results.json")) as f:
        recorded = json.load(f)
    cfg = nat.NaturalConfig.from_dict(recorded["config"])
    model = RNNModel.load(os.path.join(run_dir, "model.npz"))
    return recorded, cfg, model, nat.load_problem(cfg, data)


def dynamic_engine(model, cfg, lr):
    """SGD steps of ``lr`` on a copy of ``model``, clipped at the run's threshold, no Ω."""
    return build("SGD-C" if cfg.uses_clipping else "SGD", model=model.copy(), lr=lr,
                 clip=cfg.clip if cfg.uses_clipping else 0, strict_clip=True,
                 nonfinite="shrink", frozen=() if cfg.biases else BIASES, seed=cfg.seed,
                 num_threads=1)


def dynamic_bits(model, cfg, stream, lr):
    """Bits per character of ``stream`` (one stream, state carried), each segment scored
    before an SGD step of ``lr`` on it; ``model`` is left unchanged."""
    engine = dynamic_engine(model, cfg, lr)
    engine.fit(stream, max_epochs=1)
    nats = float(sum(engine.history["loss"]))  # each segment's cost before its update
    return nats / (stream.n_predictions * math.log(2.0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("data")
    ap.add_argument("--lrs", default="0,0.001,0.003,0.01")
    ap.add_argument("--splits", default="valid,test")
    a = ap.parse_args()
    recorded, cfg, model, problem = load_run(a.run_dir, a.data)
    print(f"{a.run_dir}: recorded train / valid / test {recorded['ours']}", flush=True)
    rows = []
    for lr in (float(x) for x in a.lrs.split(",")):
        for split in a.splits.split(","):
            stream = CharStream(problem.data.split(split), problem.n_in, 1, cfg.seq_len,
                                ahead=cfg.ahead, dtype=model.dtype)
            t0 = time.perf_counter()
            bits = dynamic_bits(model, cfg, stream, lr)
            rows.append({"lr": lr, "split": split, "bits_per_char": bits,
                         "characters": stream.n_predictions,
                         "seconds": time.perf_counter() - t0})
            print(f"lr {lr:g}  {split:5s}  {bits:.4f} bits/char  "
                  f"({stream.n_predictions} characters, {rows[-1]['seconds']:.0f} s)", flush=True)
    atomic_write_json(os.path.join(a.run_dir, "dynamic_eval.json"),
                      {"recorded": recorded["ours"], "rows": rows})


if __name__ == "__main__":
    main()
