"""Validation bits/char and the epoch's training cost per epoch of the PTB cells rerun with the
initial weights drawn from N(0, 0.3²) (the default now) next to the same cells with
N(0, 0.01²) (the earlier default), from each run's epochs.json: one panel per cell whose
s = 0.01 run is kept here (init0.01-<cell>); writes compare.png next to this script.

    python compare.py
"""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
# (title, cell, the paper's test number, y range), in Table 1's order
panels = [("1 step ahead, SGD", "PTB-ahead1-SGD", 1.50, (1.35, 3.0)),
          ("1 step ahead, SGD-C", "PTB-ahead1-SGD-C", 1.42, (1.35, 2.3)),
          ("1 step ahead, SGD-CR", "PTB-ahead1-SGD-CR", 1.41, (1.35, 2.3)),
          ("5 steps ahead, SGD-C", "PTB-ahead5-SGD-C", 3.89, (3.6, 4.3)),
          ("5 steps ahead, SGD-CR", "PTB-ahead5-SGD-CR", 3.74, (3.6, 4.3))]
panels = [p for p in panels if os.path.isdir(os.path.join(here, f"init0.01-{p[1]}"))]
cols = min(3, len(panels))
rows = (len(panels) + cols - 1) // cols
fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.0 * rows), squeeze=False)
axes = axes.ravel()
for ax, (title, cell, paper, ylim) in zip(axes, panels):
    runs = {"init N(0, 0.01²)": os.path.join(here, f"init0.01-{cell}", "epochs.json"),
            "init N(0, 0.3²)": os.path.join(here, "..", "cells", cell, "epochs.json")}
    for label, path in runs.items():
        with open(path) as f:
            rows = [r for r in json.load(f) if r["end_of_epoch"]]
        epochs = [r["epoch"] for r in rows]
        line, = ax.plot(epochs, [r["valid"] for r in rows], marker="o", ms=3,
                        label=f"{label}: validation")
        ax.plot(epochs, [r["train_cost"] for r in rows], ls="--", color=line.get_color(),
                label=f"{label}: epoch's training cost")
    ax.axhline(paper, color="k", lw=0.8, ls=":", label=f"paper's test ({paper})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("bits per character")
    ax.set_ylim(*ylim)
    ax.set_title(f"PTB characters, {title}")
    ax.legend(fontsize=7)
for ax in axes[len(panels):]:
    ax.set_visible(False)
fig.tight_layout()
fig.savefig(os.path.join(here, "compare.png"), dpi=110)
