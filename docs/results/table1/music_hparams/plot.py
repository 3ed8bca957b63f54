"""Validation NLL per epoch for each learning rate of the probe, one panel per data set.

    python docs/results/table1/music_hparams/plot.py OUT_PIANO OUT_NOTTINGHAM OUT_MUSEDATA
        [--seed 1] [--png lr_curves.png]

Reads the runs of run.py (FOLDER/cell-sS and FOLDER/lr-V-sS, their epochs.json) of one seed
and draws every learning rate's validation curve (the NLL that chooses the rate).
"""

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from run import REPORTED_LR  # noqa: E402  (this folder's run.py)


def curves(folder, seed):
    """{lr: (epochs, valid NLL)} of the runs of ``folder`` with ``seed``, and the data set."""
    out, dataset = {}, None
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name, "epochs.json")
        if not name.endswith(f"-s{seed}") or not os.path.exists(p):
            continue
        if not (name.startswith("cell-") or name.startswith("lr-")):
            continue
        with open(os.path.join(folder, name, "config.json")) as f:
            cfg = json.load(f)
        dataset = cfg["dataset"]
        with open(p) as f:
            ep = [r for r in json.load(f) if r.get("end_of_epoch", True)]
        out[float(cfg["lr"])] = ([r["epoch"] for r in ep], [r["valid"] for r in ep])
    return dataset, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--png", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "lr_curves.png"))
    a = ap.parse_args()
    fig, axes = plt.subplots(1, len(a.folders), figsize=(5 * len(a.folders), 4), squeeze=False)
    for ax, folder in zip(axes[0], a.folders):
        dataset, cs = curves(folder, a.seed)
        for lr in sorted(cs, reverse=True):
            x, y = cs[lr]
            rel = lr / REPORTED_LR[dataset]
            # one colour per fraction of the reported rate, the same in every panel
            colour = f"C{round(math.log2(rel)) % 10}"
            ax.plot(x, y, label=f"lr {lr:g} ({rel:g}× reported)", lw=1.2, color=colour)
        lo = min(min(y) for _, y in cs.values())
        ax.set_ylim(lo - 0.05, lo + 0.6)
        ax.set_title(f"{dataset}, SGD-CR, seed {a.seed}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation NLL per time step (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = a.png + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, a.png)
    print(a.png)


if __name__ == "__main__":
    main()
