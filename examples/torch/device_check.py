#!/usr/bin/env python
"""On a machine with a CUDA GPU (about a minute): rnnfast.torch.RNN on tensors its kernels do
not take (CUDA; float16 and bfloat16 on CUDA and on the CPU) runs torch.nn.RNN's own
implementation and gives torch's results, with one RuntimeWarning per reason.

Prints one PASS/FAIL line per check; exits 1 if any check failed, 2 without a CUDA device.

    python examples/torch/device_check.py
"""

from __future__ import annotations

import io
import sys
import warnings

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfast.torch as rt

FAILED = []


def report(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILED.append(name)


def run(module, x, hx, packed_lengths):
    """output, h_n and the gradients (input, hx, parameters) of a fixed loss."""
    module.zero_grad(set_to_none=True)
    xs = x.detach().clone().requires_grad_(True)
    hs = hx.detach().clone().requires_grad_(True)
    inp = xs if packed_lengths is None else \
        pack_padded_sequence(xs, packed_lengths, enforce_sorted=False)
    torch.manual_seed(7)                               # the same dropout masks for both
    out, hn = module(inp, hs)
    if packed_lengths is not None:
        out, _ = pad_packed_sequence(out)
    (out.float().square().sum() + hn.float().sum()).backward()
    return [out, hn, xs.grad, hs.grad] + [p.grad for p in module.parameters()]


def max_diff(a_list, b_list) -> float:
    return max(float((a.detach().float() - b.detach().float()).abs().max())
               for a, b in zip(a_list, b_list))


def check(device: str, dtype: torch.dtype, kw: dict, packed: bool) -> None:
    if device == "cuda":   # cuDNN keeps its own dropout state: the two modules' masks differ
        kw = {**kw, "dropout": 0.0}
    name = f"{device} {str(dtype).replace('torch.', '')} {kw}{' packed' if packed else ''}"
    torch.manual_seed(0)
    ref = torch.nn.RNN(5, 8, **kw)
    ours = rt.RNN(5, 8, **kw)
    ours.load_state_dict(ref.state_dict())
    ref.to(device, dtype).train()                      # cuDNN's backward needs training mode
    ours.to(device, dtype).train()
    D = 2 if kw.get("bidirectional") else 1
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, 5, generator=g).to(device, dtype)                 # (T, B, I)
    hx = torch.randn(kw.get("num_layers", 1) * D, 3, 8, generator=g).to(device, dtype)
    lengths = torch.tensor([4, 7, 2]) if packed else None
    rt._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = run(ours, x, hx, lengths)
        run(ours, x, hx, lengths)                                         # no second warning
        want = run(ref, x, hx, lengths)
    ours_warn = [w for w in caught if "rnnfast" in str(w.message)]
    diff = max_diff(got, want)
    report(name, diff == 0.0 and len(ours_warn) == 1,
           f"max |rnnfast - torch| = {diff:g} over output, h_n and all gradients; "
           f"{len(ours_warn)} rnnfast warning(s)")


def main() -> int:
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    if not torch.cuda.is_available():
        print("FAIL no CUDA device: run this on a machine with a CUDA GPU")
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}")
    torch.backends.cudnn.deterministic = True          # the same kernels give the same bits
    torch.backends.cudnn.allow_tf32 = False            # cuDNN's RNNs use TF32 by default
    torch.backends.cuda.matmul.allow_tf32 = False      # (~4e-4 off float32 on an H200)
    configs = [dict(), dict(num_layers=2, bidirectional=True, dropout=0.3),
               dict(num_layers=3, nonlinearity="relu", bias=False)]
    for device, dtypes in [("cuda", [torch.float32, torch.float16, torch.bfloat16]),
                           ("cpu", [torch.float16, torch.bfloat16])]:
        for dtype in dtypes:
            for kw in configs:
                check(device, dtype, kw, packed=False)
            check(device, dtype, configs[1], packed=True)

    # The module moved to CUDA stays rnnfast's, flattens like torch's, and comes back.
    torch.manual_seed(0)
    ours = rt.RNN(5, 8, 2, bidirectional=True).cuda()
    ours.flatten_parameters()
    x = torch.randn(6, 2, 5)
    out_cuda = ours(x.cuda())[0].cpu()
    report("cuda module: isinstance nn.RNN and class kept",
           isinstance(ours, torch.nn.RNN) and type(ours) is rt.RNN)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    back = torch.load(buf, map_location="cpu")            # weights_only default
    out_cpu = back(x)[0]                                   # now on rnnfast's CPU kernels
    diff = float((out_cpu - out_cuda).abs().max())
    report("save on cuda, load on cpu (weights_only), kernels agree with cuDNN",
           type(back) is rt.RNN and diff < 1e-5, f"max difference {diff:.2g}")
    print(f"\n{len(FAILED)} check(s) failed" if FAILED else "\nall checks passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
