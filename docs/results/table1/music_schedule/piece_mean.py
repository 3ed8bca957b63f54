"""NLL per time step two ways for a trained music model: over all steps (ours) and the mean
over pieces of each piece's per-step NLL.

    python piece_mean.py RUN_DIR DATASET DATA

RUN_DIR: a `rnnfast reproduce music` output folder (its model.npz, the best parameters);
DATA: the data folder. Prints one line per split.
"""
import sys
import numpy as np
from rnnfast.nn.model import RNNModel
from rnnfast.experiments import natural as nat
from rnnfast.data import metrics as M
from rnnfast.data import MusicBatches

if len(sys.argv) != 4:
    sys.exit(__doc__)
run, ds, data = sys.argv[1:4]
cfg = nat.music_config(ds, "SGD-CR")
prob = nat.load_problem(cfg, data)
model = RNNModel.load(f"{run}/model.npz")
for split in ("train", "valid", "test"):
    rolls = prob.data.split(split)
    per = []
    tot = cnt = 0.0
    for r in rolls:
        mb = MusicBatches([r], 1, dtype=np.float32)
        for b in mb:
            fwd = model.forward(b.u, num_threads=1)
            t, c = M.music_nll(nat._logits(model, fwd.h), b.targets, b.mask, logits=True, reduce="sum")
            per.append(t / c); tot += t; cnt += c
    lens = [r.shape[0] for r in rolls]
    print(f"{ds} {split}: pieces {len(rolls)} (steps {min(lens)}-{max(lens)}), per step {tot/cnt:.3f}, mean over pieces {np.mean(per):.3f}")
