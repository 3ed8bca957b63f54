"""Validation bits/char per epoch of the PTB 1-step SGD-CR cell with the initial weights drawn
from N(0, 0.01²) (the earlier default) and N(0, 0.3²) (the default now), from each run's
epochs.json; writes compare.png next to this script.

    python compare.py
"""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
runs = {"init N(0, 0.01²)": os.path.join(here, "init0.01-PTB-ahead1-SGD-CR", "epochs.json"),
        "init N(0, 0.3²)": os.path.join(here, "..", "cells", "PTB-ahead1-SGD-CR", "epochs.json")}
fig, ax = plt.subplots(figsize=(6.4, 4.0))
for label, path in runs.items():
    with open(path) as f:
        rows = [r for r in json.load(f) if r["end_of_epoch"]]
    line, = ax.plot([r["epoch"] for r in rows], [r["valid"] for r in rows], marker="o", ms=3,
                    label=f"{label}: validation")
    ax.plot([r["epoch"] for r in rows], [r["train_cost"] for r in rows], ls="--",
            color=line.get_color(), label=f"{label}: epoch's training cost")
ax.axhline(1.41, color="k", lw=0.8, ls=":", label="paper's test, SGD-CR (1.41)")
ax.set_xlabel("epoch")
ax.set_ylabel("bits per character")
ax.set_ylim(1.35, 2.3)
ax.set_title("PTB characters, 1 step ahead, SGD-CR (500 sigmoid units)")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(os.path.join(here, "compare.png"), dpi=120)
