#!/usr/bin/env python
"""Run pytorch/examples' word_language_model twice, unchanged (torch.nn.RNN) and with the
two-line swap of word_language_model.patch (rnnfast.torch.RNN), and collect its own log.

The program is taken from a git checkout of https://github.com/pytorch/examples at COMMIT
(nothing of it is stored in this repository). Its default arguments are kept except
``--model RNN_TANH`` (the program's nn.RNN; its default is LSTM), ``--epochs`` (default 40)
and ``--log-interval 20`` (default 200, for a finer loss curve). The checkout we had lacks
wikitext-2's train.txt (a large file), so ``--data`` points at a folder made from the two
splits it has: train.txt = wikitext-2 test.txt (245k tokens, 350 batches of 20×35), valid.txt
and test.txt = the first and second half of wikitext-2 valid.txt (lines).

Usage::

    python examples/torch/run_word_lm.py --checkout /path/to/examples.git --epochs 2
    python examples/torch/run_word_lm.py --checkout ... --epochs 1 --only rnnfast   # quick

Writes OUT/word_lm_<variant>.log, OUT/word_lm_loss.csv (batch, variant, train loss),
OUT/word_lm_valid.csv, OUT/word_lm_summary.json (wall times, ms/batch, test loss, the
save/load at the program's end) and OUT/word_lm_loss.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _checkout  # noqa: E402  (this folder's helper)

COMMIT = "77f55b912142e11fcfdf5b530231fb9c52f181e8"
HERE = pathlib.Path(__file__).resolve().parent
PATCH = HERE / "word_language_model.patch"
FILES = ["main.py", "model.py", "data.py"]

TRAIN = re.compile(r"\| epoch\s+(\d+) \|\s+(\d+)/\s*(\d+) batches \| lr ([\d.]+) \| ms/batch\s+([\d.]+)"
                   r" \| loss\s+([\d.]+)")
VALID = re.compile(r"\| end of epoch\s+(\d+) \| time:\s+([\d.]+)s \| valid loss\s+([\d.]+)")
TEST = re.compile(r"\| End of training \| test loss\s+([\d.]+)")


def git_show(checkout: str, path: str) -> bytes:
    return _checkout.git_show(checkout, COMMIT, path)


def prepare(checkout: str, work: pathlib.Path, swap: bool) -> None:
    prog = work / "word_language_model"
    (prog / "data").mkdir(parents=True)
    for f in FILES:
        (prog / f).write_bytes(git_show(checkout, f"word_language_model/{f}"))
    if swap:
        subprocess.run(["patch", "-p1", "-s", "-i", str(PATCH)], cwd=work, check=True)
    test = git_show(checkout, "word_language_model/data/wikitext-2/test.txt")
    valid = git_show(checkout, "word_language_model/data/wikitext-2/valid.txt").splitlines(True)
    half = len(valid) // 2
    (prog / "data" / "train.txt").write_bytes(test)
    (prog / "data" / "valid.txt").write_bytes(b"".join(valid[:half]))
    (prog / "data" / "test.txt").write_bytes(b"".join(valid[half:]))


def run(checkout: str, variant: str, epochs: int, out: pathlib.Path, extra=(), tag="",
        threads=None) -> dict:
    with tempfile.TemporaryDirectory(prefix="wlm-") as tmp:
        work = pathlib.Path(tmp)
        prepare(checkout, work, variant == "rnnfast")
        cmd = [sys.executable, "main.py", "--model", "RNN_TANH", "--epochs", str(epochs),
               "--log-interval", "20", "--data", "data", "--save", "model.pt", *extra]
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)     # torch's and rnnfast's default threads
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=work / "word_language_model", capture_output=True, text=True,
                           env=env)
        wall = time.perf_counter() - t0
        log = p.stdout + p.stderr
        (out / f"word_lm{tag}_{variant}.log").write_text(f"$ {' '.join(cmd)}\n{log}")
        if p.returncode != 0:
            raise SystemExit(f"{variant}: the program failed (exit {p.returncode}); see "
                             f"{out / f'word_lm{tag}_{variant}.log'}\n{log[-2000:]}")
    train = [(int(m[1]), int(m[2]), int(m[3]), float(m[5]), float(m[6])) for m in TRAIN.finditer(log)]
    valid = [(int(m[1]), float(m[2]), float(m[3])) for m in VALID.finditer(log)]
    test = [float(m[1]) for m in TEST.finditer(log)]
    return {"variant": variant, "command": " ".join(cmd), "wall_seconds": wall,
            "train": train, "valid": valid,
            "test_loss_after_load": test[0] if test else None,
            # the program's last lines load model.pt (torch.load, weights_only default) and
            # evaluate the loaded model on the test split: the line exists only if that worked
            "save_load_ok": bool(test)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", required=True, help="git dir of a pytorch/examples clone")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--only", choices=["torch", "rnnfast"])
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--lr", help="the program's --lr (default: its own, 20)")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the program")
    ap.add_argument("--parallel", action="store_true", help="both variants at the same time")
    ap.add_argument("--tag", default="", help="suffix of the output files' names")
    args = ap.parse_args(argv)
    _checkout.check_checkout(args.checkout, COMMIT, "https://github.com/pytorch/examples")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = [args.only] if args.only else ["torch", "rnnfast"]
    extra = ["--lr", args.lr] if args.lr else []
    tag = args.tag + (f"_lr{args.lr}" if args.lr else "")
    kw = dict(extra=extra, tag=tag, threads=args.threads)
    if args.parallel:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(2) as pool:
            futures = {v: pool.submit(run, args.checkout, v, args.epochs, out, **kw)
                       for v in variants}
            res = {v: f.result() for v, f in futures.items()}
    else:
        res = {v: run(args.checkout, v, args.epochs, out, **kw) for v in variants}
    for v, r in res.items():
        ms = [t[3] for t in r["train"]]
        r["median_ms_per_batch"] = sorted(ms)[len(ms) // 2] if ms else None
        print(f"{v}: wall {r['wall_seconds']:.1f} s, median ms/batch {r['median_ms_per_batch']}, "
              f"valid {[x[2] for x in r['valid']]}, test after load {r['test_loss_after_load']}")
    if len(res) < 2:
        return 0
    with open(out / f"word_lm_loss{tag}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "batch", "batches_per_epoch", "variant", "ms_per_batch", "train_loss"])
        for v, r in res.items():
            for e, b, n, ms, loss in r["train"]:
                w.writerow([e, b, n, v, ms, loss])
    with open(out / f"word_lm_valid{tag}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "variant", "epoch_seconds", "valid_loss"])
        for v, r in res.items():
            for e, s, loss in r["valid"]:
                w.writerow([e, v, s, loss])
    (out / f"word_lm_summary{tag}.json").write_text(json.dumps(
        {v: {k: r[k] for k in ("command", "wall_seconds", "median_ms_per_batch",
                               "test_loss_after_load", "save_load_ok", "valid")}
         for v, r in res.items()}, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for v, r in res.items():
        x = [(e - 1) * n + b for e, b, n, _, _ in r["train"]]
        ax.plot(x, [t[4] for t in r["train"]], label=f"{v} (train, per 20 batches)",
                ls="-" if v == "torch" else "--")
        n = r["train"][0][2] if r["train"] else 1
        ax.plot([e * n for e, _, _ in r["valid"]], [x[2] for x in r["valid"]], "o",
                label=f"{v} (valid)")
    ax.set_xlabel("batch")
    ax.set_ylabel("loss")
    ax.set_title("pytorch/examples word_language_model, --model RNN_TANH"
                 + (f" --lr {args.lr}" if args.lr else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"word_lm_loss{tag}.png", dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
