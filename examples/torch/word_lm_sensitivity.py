#!/usr/bin/env python
"""Why the word-language-model loss curves of torch.nn.RNN and rnnfast.torch.RNN separate after
some batches: the program's training (--model RNN_TANH, lr 20, clip 0.25, dropout 0.2) amplifies
any rounding difference. Same model (the program's model.py from the checkout), same weights,
same dropout masks, same batches; float64 and float32; per-step |loss(torch) - loss(rnnfast)|.
In float64 the first differences are ~1e-15 and grow ~10x per step, the signature of chaotic
dynamics, not of a wrong gradient (the gradients agree to 1e-10 in tests/test_torch_parity.py).

    python examples/torch/word_lm_sensitivity.py --checkout /path/to/examples.git
"""

import argparse
import copy
import pathlib
import sys
import tempfile

import torch

import rnnfast.torch as rt

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _checkout  # noqa: E402  (this folder's helper)

COMMIT = "77f55b912142e11fcfdf5b530231fb9c52f181e8"


def losses(model, data, steps, dtype):
    crit = torch.nn.NLLLoss()
    torch.manual_seed(5)                         # the same dropout masks for both
    model.train()
    hidden = model.init_hidden(20)
    out = []
    for i in range(steps):
        x, y = data[i * 35:(i + 1) * 35], data[i * 35 + 1:(i + 1) * 35 + 1].reshape(-1)
        hidden = hidden.detach()                 # the program's repackage_hidden
        model.zero_grad()
        logp, hidden = model(x, hidden)
        loss = crit(logp, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-20)       # the program's SGD, lr 20
        out.append(loss.item())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkout", required=True)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args(argv)
    _checkout.check_checkout(args.checkout, COMMIT, "https://github.com/pytorch/examples")
    with tempfile.TemporaryDirectory() as tmp:
        src = _checkout.git_show(args.checkout, COMMIT, "word_language_model/model.py")
        pathlib.Path(tmp, "model.py").write_bytes(src)
        sys.path.insert(0, tmp)
        from model import RNNModel
    torch.set_num_threads(1)
    V = 2000
    data = torch.randint(0, V, (35 * args.steps + 1, 20), generator=torch.Generator().manual_seed(0))
    print("step | float64 |Δloss| | float32 |Δloss|")
    diffs = {}
    for dtype in (torch.float64, torch.float32):
        torch.manual_seed(0)
        ref = RNNModel("RNN_TANH", V, 200, 200, 2, 0.2).to(dtype)
        ours = rt.replace_rnn(copy.deepcopy(ref))
        a, b = losses(ref, data, args.steps, dtype), losses(ours, data, args.steps, dtype)
        diffs[dtype] = [abs(x - y) for x, y in zip(a, b)]
    for i in range(args.steps):
        print(f"{i + 1:4d} | {diffs[torch.float64][i]:.1e} | {diffs[torch.float32][i]:.1e}")


if __name__ == "__main__":
    main()
