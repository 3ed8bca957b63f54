#!/usr/bin/env python
"""Run the sequence classifier of Atcold/NYU-DLSP20 (08-seq_classification.ipynb: Hochreiter &
Schmidhuber's temporal-order task, generated in the program by res/sequential_tasks.py, a
``SimpleRNN`` around ``torch.nn.RNN``) twice: unchanged, and with the two-line swap of
seq_classification.patch (rnnfast.torch.RNN).

The notebook's code cells are concatenated into one script, as ``jupyter nbconvert --to script``
does (nothing of the program is stored in this repository; it is read from a git checkout at
COMMIT). What is run: every code cell up to and including the 100-epoch SimpleRNN run (cells
1-14: the SimpleRNN 10- and 100-epoch trainings, and the SimpleLSTM 10-epoch training between
them); the cells after it use only the LSTM and plots. The program's settings are its own
(EASY difficulty, batch 32, hidden 4, RMSprop lr 1e-3, seeds).

Around the program, not in it: matplotlib runs headless and ``plt.show()`` records the data of
each loss/accuracy figure the program draws (that is where the loss curves come from); a stub
``IPython.display`` (res/plot_lib.py imports it for notebook output only). The notebook saves
nothing, so after it the runner saves the trained model (``torch.save(model)``), loads it in a
fresh process with ``torch.load``'s default ``weights_only=True`` and, as safe globals, the
classes a program lists for a model holding ``torch.nn.RNN`` (SimpleRNN, Linear, nn.RNN; the
same list for both variants), and checks the loaded model's test predictions equal the trained one's.

Usage::

    python examples/torch/run_seq_classifier.py --checkout /path/to/NYU-DLSP20.git
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _checkout  # noqa: E402  (this folder's helper)

COMMIT = "3049c83260ba05700e2ab9b7ed13cdbe5ddba0fd"
HERE = pathlib.Path(__file__).resolve().parent
PATCH = HERE / "seq_classification.patch"
NOTEBOOK = "08-seq_classification.ipynb"
LAST_CELL = 14          # 1-based: the 100-epoch SimpleRNN training

BOOT = r'''
import json, pickle, sys, time
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

figures = []
def show(*args, **kwargs):
    for num in plt.get_fignums():
        fig = plt.figure(num)
        figures.append([{"ylabel": ax.get_ylabel(),
                         "lines": [[float(v) for v in line.get_ydata()] for line in ax.lines]}
                        for ax in fig.axes])
    plt.close("all")
plt.show = show

t0 = time.perf_counter()
code = open("program.py").read()
g = globals()    # the program's classes live in __main__, where pickle looks for them
exec(compile(code, "program.py", "exec"), g)
wall = time.perf_counter() - t0
import torch
model = g["model"]
torch.save(model, "model.pt")
# the test batches and the trained model's predictions, for the check in a fresh process
gen = g["test_data_gen"]
data = [torch.from_numpy(gen[i][0]).float() for i in range(len(gen))]
model.eval()
with torch.no_grad():
    pred = [model(x)[:, -1, :] for x in data]
torch.save({"data": data, "pred": pred}, "check.pt")
json.dump({"figures": figures, "wall_seconds": wall, "rnn_class": type(model.rnn).__module__
           + "." + type(model.rnn).__name__}, open("result.json", "w"))
'''

LOAD = r'''
import sys, torch
sys.argv = ["x"]
src = open("program.py").read()
# the program's class definitions (cells 1-4), without running its trainings
g = globals()    # classes defined in __main__, where the pickle (made in __main__) looks
exec(compile(src[:src.index("def train(")], "program.py", "exec"), g)
# what a program lists for a model holding torch.nn.RNN (as pytorch/examples' word LM does)
with torch.serialization.safe_globals([g["SimpleRNN"], torch.nn.Linear, torch.nn.RNN]):
    model = torch.load("model.pt")                     # weights_only=True, the default
ref = torch.load("check.pt")
model.eval()
with torch.no_grad():
    same = all(torch.equal(model(x)[:, -1, :], p) for x, p in zip(ref["data"], ref["pred"]))
print(type(model.rnn).__module__ + "." + type(model.rnn).__name__, "predictions equal:", same)
sys.exit(0 if same else 1)
'''

STUB = "def HTML(*a, **k):\n    return None\n\n\ndef display(*a, **k):\n    return None\n"


def git_show(checkout: str, path: str) -> bytes:
    return _checkout.git_show(checkout, COMMIT, path)


def script(notebook: bytes) -> str:
    cells = [c for c in json.loads(notebook)["cells"] if c["cell_type"] == "code"]
    return "".join(f"# In[{i}]:\n{''.join(c['source'])}\n\n\n"
                   for i, c in enumerate(cells[:LAST_CELL], 1))


def run(checkout: str, variant: str, out: pathlib.Path, threads) -> dict:
    with tempfile.TemporaryDirectory(prefix="seqcls-") as tmp:
        work = pathlib.Path(tmp)
        (work / "res").mkdir()
        (work / "IPython").mkdir()
        for f in ("res/sequential_tasks.py", "res/plot_lib.py", "res/ziegler.png"):
            (work / f).write_bytes(git_show(checkout, f))
        (work / "IPython" / "__init__.py").write_text(
            "version_info = (9, 0, 0)\n\n\ndef get_ipython():\n    return None\n")
        (work / "IPython" / "display.py").write_text(STUB)
        (work / "program.py").write_text(script(git_show(checkout, NOTEBOOK)))
        if variant == "rnnfast":
            subprocess.run(["patch", "-s", "program.py", str(PATCH)], cwd=work, check=True)
        (work / "boot.py").write_text(BOOT)
        (work / "load.py").write_text(LOAD)
        t0 = time.perf_counter()
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)     # torch's and rnnfast's default threads
        p = subprocess.run([sys.executable, "boot.py"], cwd=work, capture_output=True, text=True,
                           env=env)
        wall = time.perf_counter() - t0
        log = p.stdout + p.stderr
        if p.returncode != 0:
            (out / f"seq_classifier_{variant}.log").write_text(log)
            raise SystemExit(f"{variant}: the program failed\n{log[-3000:]}")
        res = json.loads((work / "result.json").read_text())
        q = subprocess.run([sys.executable, "load.py"], cwd=work, capture_output=True, text=True)
        log += f"\n--- save/load check in a fresh process (exit {q.returncode}):\n{q.stdout}{q.stderr}"
        (out / f"seq_classifier_{variant}.log").write_text(log)
        res.update(variant=variant, process_wall_seconds=wall, save_load_ok=q.returncode == 0,
                   save_load_output=q.stdout.strip())
        return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", required=True, help="git dir of an Atcold/NYU-DLSP20 clone")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the program (default: "
                    "unset, i.e. every core)")
    ap.add_argument("--parallel", action="store_true",
                    help="run the two variants at the same time (same machine load for both)")
    args = ap.parse_args(argv)
    _checkout.check_checkout(args.checkout, COMMIT, "https://github.com/Atcold/NYU-DLSP20")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = ("torch", "rnnfast")
    if args.parallel:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(2) as pool:
            futures = {v: pool.submit(run, args.checkout, v, out, args.threads) for v in variants}
            res = {v: f.result() for v, f in futures.items()}
    else:
        res = {v: run(args.checkout, v, out, args.threads) for v in variants}
    # figures 0 and 2 are SimpleRNN's (10 and 100 epochs), figure 1 the SimpleLSTM's
    rows = []
    for v, r in res.items():
        for f, fig in enumerate(r["figures"]):
            for ax in fig:
                for series, ys in zip(("train", "test"), ax["lines"]):
                    rows += [[f, "SimpleLSTM" if f == 1 else "SimpleRNN", ax["ylabel"], v,
                              series, e + 1, y] for e, y in enumerate(ys)]
    with open(out / "seq_classifier_curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["figure", "model", "metric", "variant", "series", "epoch", "value"])
        w.writerows(rows)
    summary = {v: {k: r[k] for k in ("wall_seconds", "process_wall_seconds", "rnn_class",
                                      "save_load_ok", "save_load_output")}
               for v, r in res.items()}
    for v, r in res.items():
        finals = {f: {ax["ylabel"]: [ys[-1] for ys in ax["lines"]] for ax in fig}
                  for f, fig in enumerate(r["figures"])}
        summary[v]["final_train_test"] = finals
    (out / "seq_classifier_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax_i, metric in enumerate(["loss", "acc"]):
        ax = axes[ax_i]
        for v, r in res.items():
            f = r["figures"][2]                      # SimpleRNN, 100 epochs
            lines = [a for a in f if a["ylabel"] == metric][0]["lines"]
            for series, ys in zip(("train", "test"), lines):
                ax.plot(range(1, len(ys) + 1), ys, ls="-" if v == "torch" else "--",
                        label=f"{v} {series}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
    fig.suptitle("NYU-DLSP20 08-seq_classification: SimpleRNN, 100 epochs (last batch's loss)")
    fig.tight_layout()
    fig.savefig(out / "seq_classifier_curves.png", dpi=100)
    return 0 if all(r["save_load_ok"] for r in res.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
