"""A music model's NLL over whole pieces against 200-step segments each from h = 0, by position.

    python docs/results/table1/music_hparams/state_reset.py MODEL.npz DATA_FILE [--split test]

Training starts every 200-step segment from h = 0 while the evaluation carries the state
over whole pieces; this scores the split both ways (MODEL.npz: a run's model.npz; DATA_FILE:
the data set's .pickle or .mat) and gives the mean NLL per time step over positions in the
piece, so a mismatch would show where it lies.
"""

import argparse

import numpy as np

from rnnfast.data import MusicBatches, load_music
from rnnfast.data.metrics import step_nll
from rnnfast.experiments.natural import _logits
from rnnfast.nn.model import RNNModel

BANDS = [(0, 50), (50, 200), (200, 250), (250, 400), (400, 1000), (1000, None)]


def per_step_nll(model, rolls, segment_length):
    """Per piece: the NLL (nats, summed over the 88 notes) of each of its steps, in order."""
    out = []
    for roll in rolls:
        steps = []
        for b in MusicBatches([roll], 1, segment_length=segment_length, dtype=model.dtype):
            z = _logits(model, model.forward(b.u, num_threads=1).h).astype(np.float64)
            nll = step_nll(z, b.targets, logits=True)[:, 0]  # (T,)
            steps.append(nll[b.mask[:, 0].astype(bool)])
        out.append(np.concatenate(steps))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--split", default="test")
    a = ap.parse_args()
    model = RNNModel.load(a.model)
    rolls = load_music(a.data).split(a.split)
    whole = per_step_nll(model, rolls, None)
    reset = per_step_nll(model, rolls, 200)
    W, R = np.concatenate(whole), np.concatenate(reset)
    pos = np.concatenate([np.arange(len(p)) for p in whole])
    print(f"{a.split}: whole pieces {W.mean():.4f}, state reset every 200 steps {R.mean():.4f} "
          f"({W.size} steps)")
    for lo, hi in BANDS:
        k = (pos >= lo) & (pos < (hi if hi is not None else np.inf))
        if k.any():
            band = f"[{lo}, {hi})" if hi is not None else f"[{lo}, end)"
            print(f"  steps {band:12s} n = {int(k.sum()):6d}: whole {W[k].mean():.3f}, "
                  f"reset {R[k].mean():.3f}")


if __name__ == "__main__":
    main()
