#!/usr/bin/env python
"""Peer benchmark: rnnfast against torch.nn.RNN, a JAX ``lax.scan`` RNN, a NumPy BPTT and the
machine's GEMM ceiling, in one run.

What one run measures, for every size, dtype and thread count asked for:

* ``forward``  -- the forward recurrence over all T steps, all hidden states kept
  (what BPTT needs):
  ``rnnfast.forward(u, W_in, W_rec, b, num_threads=n)``; ``torch.nn.RNN`` under ``no_grad``;
  a jitted ``lax.scan``; the NumPy forward below.
* ``fwd+BPTT`` -- the forward above plus backpropagation through time for a loss whose direct
  gradient ∂E/∂h_t is a fixed random array ``G`` (T, B, H), i.e. E = Σ h·G, returning the
  gradients of W_in, W_rec, b, u and h0: ``rnnfast.backward(fwd, dh=G)``;
  ``out.backward(G)`` in torch (the same gradients as ``(out * G).sum().backward()`` without the
  extra element-wise op); ``jax.value_and_grad`` of ``sum(h * G)`` (jitted once);
  the NumPy BPTT below.
* the GEMM ceiling -- NumPy ``matmul`` of large square matrices (OpenBLAS): the best median
  rate over a few sizes, per dtype and thread count, first; then, within every case, one
  more ``matmul`` of that best size per round (below).

FLOP counts are nominal: forward 2·T·B·H·(H+I), forward+BPTT 3× that. ``% ceil`` is the
achieved GFLOP/s over the ceiling measured in the same case's rounds (the median of its
probes); ``×rf`` is a peer's time over rnnfast's time (above 1: rnnfast is faster).

How it is run: the orchestrator (this script) starts one worker process per (peer, thread
count) and asks them for one case at a time, case-major. A case is measured in ``--rounds``
rounds (default 3): a ceiling probe, then every peer in turn (the order rotated from round to
round), each with its share of the repeats and time budget (warm-ups in the first round only;
the worker keeps the case's inputs); a peer's samples of all rounds are pooled into one median.
Why: on a shared virtual machine the speed of vector code drifts for seconds at a time by up
to ~1.6× (measured on the 2-core EPYC this was written on: the (125,20,6,50) forward took
265 µs for seconds, then 400-470 µs, while L1 load throughput fell from 1.33 to 0.83 loads
per cycle and FMA throughput and a scalar add chain's 3.0 GHz stayed: another tenant of the
core's caches, not the clock). Timed one after the other, two peers or a peer and the ceiling
can land in different stretches; in rounds they share them.
Thread counts are set explicitly for every library before every measurement:
rnnfast ``num_threads=``, ``torch.set_num_threads``, threadpoolctl for NumPy's BLAS. JAX/XLA
cannot change its thread pool after import and ignores the classic
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` flags in current versions,
so the JAX worker of n threads is additionally pinned to n CPUs (``sched_setaffinity`` before
``import jax``; XLA sizes its pool from the schedulable CPUs). Every measurement records the
process's CPU time over wall time, so a library that ignores its thread setting shows up.
The NumPy worker (NumPy peer + GEMM ceiling) runs with ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` removed from its environment (they can halve OpenBLAS's single-thread
sgemm); the run prints what it removed and the OpenBLAS core name threadpoolctl reports.

The machine may be shared (builds, tests): before every measurement the run waits until
other processes use at most ``--max-foreign`` CPUs, measures the CPU time other processes
took during the measurement (``/proc/stat`` minus the worker's own), repeats a disturbed
measurement up to ``--retries`` times keeping the quietest, and marks a still-disturbed cell
with ``*``.

Peak memory is measured in a fresh process per (peer, size, dtype), one thread: after set-up
and a warm-up call the kernel's high-water mark is reset (``/proc/self/clear_refs``) and
``VmHWM - VmRSS`` around one call is the extra resident memory that call needed (outputs
included). Large allocations are forced onto mmap (``MALLOC_MMAP_THRESHOLD_``) so freed blocks
are returned and cannot hide the next call's peak. Without clear_refs it falls back to
``ru_maxrss`` growth (no warm-up, marked approximate).

Usage::

    python bench/peers.py                       # everything: P,S1..S5, 1,2 threads, f32,f64
    python bench/peers.py --sizes P,S3 --threads 1 --dtypes float32 --peers rnnfast,torch
    python bench/peers.py --check               # do the peers compute the same thing?
    python bench/peers.py --smoke --out /tmp/x  # tiny CI run: rnnfast + numpy only

Writes ``<out>/peers.json`` (all numbers), ``<out>/peers.md`` (the tables) and
``<out>/peers.png`` (chart; skipped with a note without matplotlib), each atomically.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------
# Problem definitions
# --------------------------------------------------------------------------------------------

#: Named sizes (T, B, I, H): P is the paper's temporal-order minibatch, S1-S5 span small to large.
SIZES = {
    "P": (125, 20, 6, 50),
    "S1": (100, 1, 8, 50),
    "S2": (100, 32, 8, 100),
    "S3": (200, 64, 64, 256),
    "S4": (100, 32, 128, 1024),
    "S5": (50, 16, 256, 2048),
    # The natural problems' minibatches (rnnfast.experiments.natural): PTB characters (one-hot
    # inputs, 500 sigmoid units, truncated BPTT of 200 steps, 8 streams) and the music data
    # (88-key piano rolls, 300 sigmoid units; 400 for MuseData; 4 segments of 200 steps)...
    "PTB": (200, 8, 50, 500),
    "MUS": (200, 4, 88, 300),
    "MUSE": (200, 4, 88, 400),
    # ...and as Table 1 now trains them: one stream / one segment per update.
    "PTB1": (200, 1, 50, 500),
    "MUS1": (200, 1, 88, 300),
}
#: Sizes with a "update" row: one full SGD-CR training update (readout, loss, BPTT with Ω,
#: α·∂Ω/∂W_rec, global-norm clipping, SGD step) — rnnfast's ``Engine.step`` against the same
#: update written as a PyTorch loop. The task of each: activation, loss, read steps, outputs,
#: inputs ("onehot": one symbol per step; "binary": ~5% of the keys on).
UPDATE_TASKS = {
    "P": dict(activation="tanh", loss="softmax_ce", at="last", n_out=4, inputs="onehot"),
    "PTB": dict(activation="sigmoid", loss="softmax_ce", at="all", n_out=50, inputs="onehot"),
    "MUS": dict(activation="sigmoid", loss="sigmoid_bce", at="all", n_out=88, inputs="binary"),
    "MUSE": dict(activation="sigmoid", loss="sigmoid_bce", at="all", n_out=88, inputs="binary"),
    "PTB1": dict(activation="sigmoid", loss="softmax_ce", at="all", n_out=50, inputs="onehot"),
    "MUS1": dict(activation="sigmoid", loss="sigmoid_bce", at="all", n_out=88, inputs="binary"),
}
#: SGD-CR's settings in the update rows (rnnfast.train.build's defaults for the method).
UPDATE_LR, UPDATE_CLIP, UPDATE_ALPHA = 0.01, 1.0, 4.0
#: Updates of the authors' complete temporal-order training (Pascanu et al. 2013, section 4.1).
TEMPORAL_ORDER_UPDATES = 336_000
#: The size of ``--smoke``.
SMOKE_SIZE = ("tiny", (10, 2, 3, 8))
PEERS = ("rnnfast", "torch", "jax", "numpy")
MODES = ("forward", "fwd+BPTT")
UPDATE = "update"  # the mode of the training-update rows
DTYPES = ("float32", "float64")
GRAD_NAMES = ("W_in", "W_rec", "b", "u", "h0")
#: Environment variables the machine may set that slow NumPy's OpenBLAS down.
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
#: Relative tolerance of the cross-peer checksum comparison, per dtype.
CHECK_TOL = {"float32": 2e-3, "float64": 1e-8}


def flops(T: int, B: int, I: int, H: int, mode: str) -> float:
    """Nominal FLOPs of one call: forward 2·T·B·H·(H+I), forward+BPTT three times that (and
    the same for a training update: its % of the ceiling counts the recurrence alone)."""
    f = 2.0 * T * B * H * (H + I)
    return f if mode == "forward" else 3.0 * f


def make_update_problem(T: int, B: int, I: int, H: int, dtype: str, task: dict,
                        seed: int = 0) -> dict:
    """Inputs, targets and initial parameters of one training-update case (the same for every
    peer): ``u`` (T,B,I), ``targets`` (B,) or (T,B) classes / (T,B,O) bits, ``W_in``,
    ``W_rec``, ``b``, ``W_out`` (O,H), ``b_out`` (O,)."""
    rng = np.random.default_rng([T, B, I, H, seed, 7])
    O = task["n_out"]
    if task["inputs"] == "onehot":
        u = np.eye(I)[rng.integers(0, I, size=(T, B))]
    else:
        u = (rng.random((T, B, I)) < 0.05).astype(float)
    if task["loss"] == "softmax_ce":
        targets = rng.integers(0, O, size=(B,) if task["at"] == "last" else (T, B))
    else:
        targets = (rng.random((T, B, O)) < 0.05).astype(dtype)
    scale = 0.95 / math.sqrt(H) if task["activation"] == "tanh" else 0.1
    p = {"u": u, "W_in": rng.standard_normal((H, I)) * 0.1,
         "W_rec": rng.standard_normal((H, H)) * scale, "b": np.zeros(H),
         "W_out": rng.standard_normal((O, H)) * 0.1, "b_out": np.zeros(O)}
    p = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in p.items()}
    p["targets"] = targets
    p["task"] = dict(task)
    return p


def make_problem(T: int, B: int, I: int, H: int, dtype: str, *, with_h0: bool = False,
                 seed: int = 0) -> dict:
    """Deterministic inputs of one case (the same values for every peer and dtype).

    Parameters
    ----------
    T, B, I, H : int
        Time steps, batch, input size, hidden size.
    dtype : str
        "float32" or "float64".
    with_h0 : bool
        Draw a random initial state (otherwise ``h0`` is None, i.e. zeros).

    Returns
    -------
    dict
        ``u`` (T,B,I), ``W_in`` (H,I), ``W_rec`` (H,H), ``b`` (H,), ``G`` (T,B,H) = ∂E/∂h_t,
        ``h0`` (B,H) or None. All C-contiguous arrays of ``dtype``.
    """
    rng = np.random.default_rng([T, B, I, H, seed])
    p = {
        "u": rng.standard_normal((T, B, I)),
        "W_in": rng.standard_normal((H, I)) / math.sqrt(I),
        "W_rec": rng.standard_normal((H, H)) * (0.95 / math.sqrt(H)),
        "b": 0.1 * rng.standard_normal(H),
        "G": rng.standard_normal((T, B, H)),
        "h0": 0.5 * rng.standard_normal((B, H)) if with_h0 else None,
    }
    return {k: (None if v is None else np.ascontiguousarray(v, dtype=dtype)) for k, v in p.items()}


# --------------------------------------------------------------------------------------------
# The NumPy peer: a careful BPTT (also the reference of --check)
# --------------------------------------------------------------------------------------------

def numpy_forward(u, W_in, W_rec, b, h0=None):
    """tanh RNN forward in NumPy, h_t = tanh(h_{t-1} W_recᵀ + u_t W_inᵀ + b).

    The input projection of all T·B rows is one GEMM; only the recurrent product and the
    fused add + tanh run per step, written into the output (no per-step allocation).

    Parameters
    ----------
    u : ndarray (T, B, I)
    W_in : ndarray (H, I)
    W_rec : ndarray (H, H)
    b : ndarray (H,)
    h0 : ndarray (B, H) or None (zeros)

    Returns
    -------
    ndarray (T, B, H)
        h_1..h_T.
    """
    T, B, I = u.shape
    H = W_rec.shape[0]
    h = np.empty((T, B, H), dtype=u.dtype)
    np.matmul(u.reshape(T * B, I), W_in.T, out=h.reshape(T * B, H))
    h += b
    W_recT = W_rec.T
    rec = np.empty((B, H), dtype=u.dtype)
    start = 0
    if h0 is None:               # h_0 = 0: the first step has no recurrent term
        np.tanh(h[0], out=h[0])
        start = 1
        prev = h[0]
    else:
        prev = h0
    for t in range(start, T):
        np.matmul(prev, W_recT, out=rec)
        rec += h[t]
        np.tanh(rec, out=h[t])
        prev = h[t]
    return h


def numpy_backward(u, W_in, W_rec, h0, h, G):
    """BPTT for E = Σ_t h_t·G_t in NumPy.

    The derivative 1 - h² is computed for all steps at once, the per-step loop does only
    δ_t = (G_t + carry) ⊙ (1 - h_t²) and carry = δ_t W_rec; the weight, bias and input
    gradients are single GEMMs / reductions over all T·B rows after the sweep.

    Parameters
    ----------
    u : ndarray (T, B, I)
    W_in : ndarray (H, I)
    W_rec : ndarray (H, H)
    h0 : ndarray (B, H) or None (zeros)
    h : ndarray (T, B, H)
        Hidden states from :func:`numpy_forward`.
    G : ndarray (T, B, H)
        Direct loss gradient ∂E/∂h_t.

    Returns
    -------
    dict
        ``W_in`` (H,I), ``W_rec`` (H,H), ``b`` (H,), ``u`` (T,B,I), ``h0`` (B,H).
    """
    T, B, I = u.shape
    H = W_rec.shape[0]
    dx = np.multiply(h, h)                      # dx holds 1 - h² first, then δ = ∂E/∂x
    np.subtract(1.0, dx, out=dx)
    carry = np.zeros((B, H), dtype=h.dtype)     # ∂E/∂h_t through h_{t+1}
    tmp = np.empty((B, H), dtype=h.dtype)
    for t in range(T - 1, -1, -1):
        np.add(G[t], carry, out=tmp)
        dx[t] *= tmp
        np.matmul(dx[t], W_rec, out=carry)
    dxf = dx.reshape(T * B, H)
    g_W_rec = dx[1:].reshape((T - 1) * B, H).T @ h[:-1].reshape((T - 1) * B, H)
    if h0 is not None:
        g_W_rec += dx[0].T @ h0
    return {
        "W_in": dxf.T @ u.reshape(T * B, I),
        "W_rec": g_W_rec,
        "b": dxf.sum(axis=0),
        "u": (dxf @ W_in).reshape(T, B, I),
        "h0": carry,
    }


# --------------------------------------------------------------------------------------------
# Peers: a common interface (imports happen inside, in the worker process)
# --------------------------------------------------------------------------------------------

class Peer:
    """One library's RNN. ``prepare`` converts a problem, ``forward``/``fwd_bwd`` are timed,
    ``outputs`` returns (h, grads) as float64 NumPy arrays for checking."""

    name = "?"

    def __init__(self, threads: int):
        self.threads = threads

    def versions(self) -> dict:
        raise NotImplementedError

    def set_threads(self) -> None:
        """Set this library's thread count (called before every measurement)."""

    def prepare(self, prob: dict) -> None:
        raise NotImplementedError

    def forward(self):
        raise NotImplementedError

    def fwd_bwd(self):
        raise NotImplementedError

    def outputs(self, res) -> tuple:
        raise NotImplementedError

    #: Whether the peer has a training-update row (prepare_update and update).
    has_update = False

    def prepare_update(self, prob: dict) -> None:
        raise NotImplementedError

    def update(self):
        """One full SGD-CR training update (the parameters change)."""
        raise NotImplementedError

    def update_params(self) -> dict:
        """The parameters after the updates so far, as float64 NumPy arrays."""
        raise NotImplementedError

    def release_cached_memory(self) -> None:
        """Free memory the library keeps from earlier calls for reuse, so that the memory
        measurement sees what one call needs (called before each measured call)."""


class NumpyPeer(Peer):
    """NumPy BPTT (:func:`numpy_forward`, :func:`numpy_backward`); BLAS threads by threadpoolctl."""

    name = "numpy"

    def __init__(self, threads):
        super().__init__(threads)
        from threadpoolctl import ThreadpoolController
        self._ctl = ThreadpoolController()

    def versions(self):
        import threadpoolctl
        return {"numpy": np.__version__, "threadpoolctl": threadpoolctl.__version__,
                "blas": [{k: i.get(k) for k in ("internal_api", "version", "architecture",
                                                 "threading_layer", "filepath")}
                         for i in self._ctl.info() if i.get("user_api") == "blas"]}

    def set_threads(self):
        self._ctl.limit(limits=self.threads, user_api="blas")

    def prepare(self, prob):
        self.p = prob

    def forward(self):
        p = self.p
        return numpy_forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])

    def fwd_bwd(self):
        p = self.p
        h = numpy_forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
        return h, numpy_backward(p["u"], p["W_in"], p["W_rec"], p["h0"], h, p["G"])

    def outputs(self, res):
        h, g = res
        return h, g


class RnnfastPeer(Peer):
    """``rnnfast.forward`` / ``rnnfast.backward(fwd, dh=G)`` with ``num_threads=n``."""

    name = "rnnfast"

    def __init__(self, threads):
        super().__init__(threads)
        import rnnfast
        self.rf = rnnfast

    def versions(self):
        v = {"rnnfast": getattr(self.rf, "__version__", "?")}
        try:
            v["build_info"] = {k: str(x) for k, x in self.rf.build_info().items()}
        except Exception as exc:  # noqa: BLE001 - informational only
            v["build_info"] = f"unavailable: {exc}"
        return v

    def set_threads(self):
        self.rf.set_num_threads(self.threads)

    def release_cached_memory(self):
        self.rf.release_memory()  # rnnfast keeps dropped outputs' memory for the next call

    def prepare(self, prob):
        self.p = prob

    def forward(self):
        p = self.p
        return self.rf.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"],
                               num_threads=self.threads)

    def fwd_bwd(self):
        p = self.p
        f = self.rf.forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"],
                            num_threads=self.threads)
        return f, self.rf.backward(f, dh=p["G"], num_threads=self.threads)

    def outputs(self, res):
        f, g = res
        return f.h, {k: getattr(g, k) for k in GRAD_NAMES}

    has_update = True

    def prepare_update(self, prob):
        from rnnfast.train import build
        task = prob["task"]
        T, B, I = prob["u"].shape
        H = prob["W_rec"].shape[0]
        self.engine = build("SGD-CR", n_in=I, n_out=task["n_out"], hidden=H,
                            activation=task["activation"], loss=task["loss"], at=task["at"],
                            dtype=str(prob["u"].dtype), lr=UPDATE_LR, clip=UPDATE_CLIP,
                            alpha=UPDATE_ALPHA, seed=0, num_threads=self.threads)
        for k in ("W_in", "W_rec", "b", "W_out", "b_out"):
            self.engine.model.params[k][...] = prob[k]
        self.batch = (prob["u"], prob["targets"])

    def update(self):
        return self.engine.step(self.batch)

    def update_params(self):
        return {k: np.array(v, np.float64) for k, v in self.engine.model.params.items()}


class TorchPeer(Peer):
    """``torch.nn.RNN`` (CPU, tanh; W_in, W_rec, b copied in, bias_hh = 0).

    forward: under ``torch.no_grad()``. fwd+BPTT: forward with autograd, ``out.backward(G)``
    with u and h0 requiring grad (parameter grads reset to None before each call)."""

    name = "torch"

    def __init__(self, threads):
        super().__init__(threads)
        import torch
        self.torch = torch
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:            # already set in this process (--check makes several)
            pass
        torch.set_num_threads(threads)

    def versions(self):
        t = self.torch
        return {"torch": t.__version__, "mkl": bool(t.backends.mkl.is_available()),
                "cpu_capability": t.backends.cpu.get_cpu_capability()}

    def set_threads(self):
        self.torch.set_num_threads(self.threads)

    def prepare(self, prob):
        torch = self.torch
        u = prob["u"]
        _, B, I = u.shape
        H = prob["W_rec"].shape[0]
        dt = torch.float32 if u.dtype == np.float32 else torch.float64
        rnn = torch.nn.RNN(I, H, num_layers=1, nonlinearity="tanh", bias=True,
                           batch_first=False, dtype=dt)
        with torch.no_grad():
            rnn.weight_ih_l0.copy_(torch.from_numpy(prob["W_in"]))
            rnn.weight_hh_l0.copy_(torch.from_numpy(prob["W_rec"]))
            rnn.bias_ih_l0.copy_(torch.from_numpy(prob["b"]))
            rnn.bias_hh_l0.zero_()
        self.rnn = rnn
        self.params = list(rnn.parameters())
        self.u = torch.from_numpy(prob["u"])
        self.u_g = self.u.clone().requires_grad_(True)
        h0 = prob["h0"] if prob["h0"] is not None else np.zeros((B, H), dtype=u.dtype)
        self.h0 = torch.from_numpy(h0).reshape(1, B, H)
        self.h0_g = self.h0.clone().requires_grad_(True)
        self.G = torch.from_numpy(prob["G"])

    def forward(self):
        with self.torch.no_grad():
            out, _ = self.rnn(self.u, self.h0)
        return out

    def fwd_bwd(self):
        for p in self.params:
            p.grad = None
        self.u_g.grad = None
        self.h0_g.grad = None
        out, _ = self.rnn(self.u_g, self.h0_g)
        out.backward(self.G)
        return out

    def outputs(self, res):
        r = self.rnn
        g = {"W_in": r.weight_ih_l0.grad, "W_rec": r.weight_hh_l0.grad, "b": r.bias_ih_l0.grad,
             "u": self.u_g.grad, "h0": self.h0_g.grad[0]}
        return res.detach().numpy(), {k: v.detach().numpy() for k, v in g.items()}

    has_update = True

    def prepare_update(self, prob):
        """The update as a PyTorch user writes it: the recurrence as a loop over steps (Ω needs
        the total ∂E/∂h_t of every step, which ``torch.nn.RNN`` does not expose), the readout,
        ``backward``, Ω from the retained ∂E/∂h_t in the authors' form (δ held constant) and a
        second ``backward`` for α·∂Ω/∂W_rec, ``clip_grad_norm_`` over all parameters and
        ``torch.optim.SGD``."""
        torch = self.torch
        task = prob["task"]
        self.uw = {k: torch.from_numpy(prob[k].copy()).requires_grad_(True)
                   for k in ("W_in", "W_rec", "b", "W_out", "b_out")}
        self.opt = torch.optim.SGD(list(self.uw.values()), lr=UPDATE_LR)
        self.u_upd = torch.from_numpy(prob["u"])
        t = prob["targets"]
        self.targets = torch.from_numpy(np.asarray(t, np.int64) if task["loss"] == "softmax_ce"
                                        else t)
        self.task = task

    def update(self):
        torch = self.torch
        F = torch.nn.functional
        p, task = self.uw, self.task
        u = self.u_upd
        T, B, I = u.shape
        H = p["W_rec"].shape[0]
        act = torch.tanh if task["activation"] == "tanh" else torch.sigmoid
        self.opt.zero_grad(set_to_none=True)
        xin = (u.reshape(T * B, I) @ p["W_in"].T + p["b"]).reshape(T, B, H)
        h = torch.zeros(B, H, dtype=u.dtype)
        hs = []
        for t in range(T):
            h = act(xin[t] + h @ p["W_rec"].T)
            h.retain_grad()
            hs.append(h)
        if task["at"] == "last":
            z = hs[-1] @ p["W_out"].T + p["b_out"]
        else:
            z = (torch.stack(hs).reshape(T * B, H) @ p["W_out"].T + p["b_out"])
        tg = self.targets.reshape(-1) if task["loss"] == "softmax_ce" else \
            self.targets.reshape(T * B, -1)
        if task["loss"] == "softmax_ce":
            loss = F.cross_entropy(z, tg)
        else:  # Σ over outputs, mean over the T·B read rows (rnnfast's "step")
            loss = F.binary_cross_entropy_with_logits(z, tg, reduction="sum") / z.shape[0]
        loss.backward()
        with torch.no_grad():  # Ω's factors, held constant
            D = torch.stack([x.grad for x in hs])              # (T, B, H) total ∂E/∂h_t
            Hs = torch.stack(hs)
            A = D * (1 - Hs * Hs) if task["activation"] == "tanh" else D * Hs * (1 - Hs)
            d2 = (D * D).sum(-1).reshape(-1)
            keep = d2 >= 1e-20
        V = A.reshape(T * B, H) @ p["W_rec"]                     # a_t W_rec
        r = (V * V).sum(-1) / torch.where(keep, d2, torch.ones_like(d2))
        omega = ((r - 1) ** 2)[keep].mean()
        (UPDATE_ALPHA * omega).backward()                       # adds α·∂Ω/∂W_rec
        torch.nn.utils.clip_grad_norm_(list(p.values()), UPDATE_CLIP)
        self.opt.step()
        return float(loss.detach())

    def update_params(self):
        return {k: v.detach().numpy().astype(np.float64) for k, v in self.uw.items()}


class JaxPeer(Peer):
    """A JAX RNN: input projection as one matmul, ``lax.scan`` over steps, jitted once per case.

    forward: ``jit(rnn)``; fwd+BPTT: ``jit(value_and_grad(sum(rnn(...) * G)))`` w.r.t.
    W_in, W_rec, b, u, h0; ``block_until_ready`` on every result. Compilation happens in
    ``prepare`` (never timed)."""

    name = "jax"

    def __init__(self, threads):
        super().__init__(threads)
        import jax
        jax.config.update("jax_enable_x64", True)   # float64 cases; float32 arrays stay f32
        import jax.numpy as jnp
        from jax import lax
        self.jax, self.jnp = jax, jnp

        def rnn(W_in, W_rec, b, u, h0):
            T, B, I = u.shape
            H = W_rec.shape[0]
            xin = (u.reshape(T * B, I) @ W_in.T + b).reshape(T, B, H)

            def step(h, x):
                h = jnp.tanh(x + h @ W_rec.T)
                return h, h

            return lax.scan(step, h0, xin)[1]

        def loss(W_in, W_rec, b, u, h0, G):
            return jnp.sum(rnn(W_in, W_rec, b, u, h0) * G)

        self._fwd = jax.jit(rnn)
        self._vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))

    def versions(self):
        import jaxlib
        return {"jax": self.jax.__version__, "jaxlib": jaxlib.__version__,
                "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
                "affinity": sorted(os.sched_getaffinity(0))}

    def prepare(self, prob):
        B, H = prob["u"].shape[1], prob["W_rec"].shape[0]
        h0 = prob["h0"] if prob["h0"] is not None else np.zeros((B, H), dtype=prob["u"].dtype)
        self.args = [self.jax.device_put(prob[k]) for k in ("W_in", "W_rec", "b", "u")]
        self.args.append(self.jax.device_put(h0))
        self.G = self.jax.device_put(prob["G"])
        self.forward()          # compile both once
        self.fwd_bwd()

    def forward(self):
        return self._fwd(*self.args).block_until_ready()

    def fwd_bwd(self):
        return self.jax.block_until_ready(self._vg(*self.args, self.G))

    def outputs(self, res):
        _, grads = res
        h = np.asarray(self.forward())
        return h, {k: np.asarray(g) for k, g in zip(GRAD_NAMES, grads)}


PEER_CLASSES = {c.name: c for c in (RnnfastPeer, TorchPeer, JaxPeer, NumpyPeer)}


# --------------------------------------------------------------------------------------------
# Timing, ceiling, memory
# --------------------------------------------------------------------------------------------

def time_call(fn, *, warmup: int, repeats: int, budget: float, min_sample: float = 2e-3,
              min_repeats: int = 5, number: int | None = None) -> dict:
    """Median time of ``fn()`` with its spread.

    ``warmup`` untimed calls (fewer when they take over ``budget/4`` s), then one
    calibration call (none when ``number`` is given); each sample runs ``number`` calls
    (enough for ``min_sample`` seconds) and reports the mean per call; samples =
    ``repeats`` capped by ``budget`` seconds but at least ``min(min_repeats, repeats)``.
    The garbage collector is off while timing. Also returns the process's CPU time over wall
    time during the samples (≈ threads busy) and the median process CPU time per call
    (``cpu_median_s``: on one thread and a busy machine, a better estimate of the
    undisturbed time than the wall clock), and the samples themselves (``times``, ``cpus``:
    seconds per call) so that samples of several rounds can be pooled (:func:`pool_samples`).
    """
    tw = time.perf_counter()
    for _ in range(warmup):
        fn()
        if time.perf_counter() - tw > budget / 4:    # slow calls: fewer warm-ups
            break
    if number is None:
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        number = max(1, math.ceil(min_sample / one))
        samples = int(min(repeats, max(min(min_repeats, repeats), budget // (one * number))))
    else:
        samples = repeats
    times, cpus = [], []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(samples):
            c, t = time.process_time(), time.perf_counter()
            for _ in range(number):
                fn()
            times.append((time.perf_counter() - t) / number)
            cpus.append((time.process_time() - c) / number)
    finally:
        if gc_was:
            gc.enable()
    return {**_sample_stats(times, cpus), "number": number}


def _sample_stats(times: list, cpus: list) -> dict:
    """Median, quartiles and extremes of per-call times; CPU time over wall time."""
    a = np.asarray(times)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median_s": float(med), "q1_s": float(q1), "q3_s": float(q3),
            "min_s": float(a.min()), "max_s": float(a.max()), "samples": len(times),
            "cpu_util": float(sum(cpus) / max(a.sum(), 1e-12)),
            "cpu_median_s": float(np.median(cpus)), "times": list(times), "cpus": list(cpus)}


def pool_samples(parts: list) -> dict:
    """One :func:`time_call` result from the results of several rounds (samples pooled)."""
    out = _sample_stats([t for p in parts for t in p["times"]],
                        [c for p in parts for c in p["cpus"]])
    out["number"] = max(p["number"] for p in parts)
    out["rounds"] = len(parts)
    return out


_PROBE_ARGS: dict = {}  # (N, dtype) -> the operands of gemm_ceiling's probes


def gemm_ceiling(dtype: str, threads: int, ns=(1024, 2048, 3072), budget: float = 3.0,
                 probe: bool = False) -> dict:
    """GEMM ceiling: NumPy ``matmul`` of N×N matrices on ``threads`` BLAS threads.

    Returns the best median rate over ``ns`` (GFLOP/s) and the per-N medians. A ``probe`` is
    one call per N, no warm-up (the ceiling re-measured within a case's rounds)."""
    from threadpoolctl import ThreadpoolController
    ctl = ThreadpoolController()
    ctl.limit(limits=threads, user_api="blas")
    per_n = {}
    rng = np.random.default_rng(1)
    for n in ns:
        if probe and (n, dtype) in _PROBE_ARGS:  # a probe's arrays are kept for the next one
            a, b, c = _PROBE_ARGS[(n, dtype)]
        else:
            a = rng.standard_normal((n, n)).astype(dtype)
            b = rng.standard_normal((n, n)).astype(dtype)
            c = np.empty((n, n), dtype=dtype)
            if probe:
                _PROBE_ARGS[(n, dtype)] = (a, b, c)
        fn = (lambda a=a, b=b, c=c: np.matmul(a, b, out=c))
        r = (time_call(fn, warmup=0, repeats=1, budget=0.0, number=1) if probe else
             time_call(fn, warmup=1, repeats=7, budget=budget, min_repeats=3))
        r["gflops"] = 2.0 * n ** 3 / r["median_s"] / 1e9
        per_n[str(n)] = r
    best = max(per_n, key=lambda k: per_n[k]["gflops"])
    # the same from process CPU time (meaningful on one thread while other processes run)
    cpu_rate = max(2.0 * int(k) ** 3 / max(v["cpu_median_s"], 1e-12) / 1e9
                   for k, v in per_n.items())
    return {"gflops": per_n[best]["gflops"], "best_n": int(best), "per_n": per_n,
            "gflops_cpu_time": cpu_rate, "dtype": dtype, "threads": threads}


def _checksums(h, grads) -> dict:
    """Norm and a fixed random projection of each output (cheap cross-peer comparison that
    also catches transposed gradients)."""
    out = {}
    for name, a in [("h", h)] + [(k, grads[k]) for k in GRAD_NAMES]:
        a = np.asarray(a, dtype=np.float64).ravel()
        w = np.random.default_rng(a.size).standard_normal(a.size)
        out[name] = [float(np.linalg.norm(a)), float(a @ w) / math.sqrt(a.size)]
    return out


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_memory(peer: Peer, prob: dict) -> dict:
    """Extra resident memory (MiB) of one forward and one forward+BPTT call, outputs included."""
    T, B, _ = prob["u"].shape
    H = prob["W_rec"].shape[0]
    state_mib = T * B * H * prob["u"].dtype.itemsize / 2 ** 20
    can_reset = _reset_hwm()
    res = {"method": "VmHWM-VmRSS after clear_refs" if can_reset else
           "ru_maxrss growth (approximate)", "state_MiB": state_mib}
    peer.prepare(prob)
    if can_reset:
        peer.forward()
        peer.fwd_bwd()
    gc.collect()
    for mode, fn in (("forward", peer.forward), ("fwd+BPTT", peer.fwd_bwd)):
        gc.collect()
        peer.release_cached_memory()
        if can_reset:
            _reset_hwm()
            base = _status_kb("VmRSS")
            out = fn()
            peak = _status_kb("VmHWM")
        else:
            base = _status_kb("VmRSS")
            out = fn()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        del out
        res[mode] = max(0, peak - base) / 1024.0
    return res


# --------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------

def _pin_cpus(n: int) -> list:
    cpus = sorted(os.sched_getaffinity(0))[:n]
    os.sched_setaffinity(0, cpus)
    return cpus


def _protocol_stdout():
    """Keep a private copy of stdout for the JSON protocol; library prints go to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto


def worker_main(peer_name: str, threads: int, pin: bool) -> int:
    """Serve JSON requests (one per line on stdin) for one peer at one thread count."""
    proto = _protocol_stdout()
    if pin or peer_name == "jax":
        _pin_cpus(threads)
    try:
        peer = PEER_CLASSES[peer_name](threads)
        info = {"ok": True, "versions": peer.versions(),
                "affinity": sorted(os.sched_getaffinity(0)),
                "env": {k: os.environ.get(k) for k in OPENBLAS_VARS + ("XLA_FLAGS",)
                        if os.environ.get(k) is not None}}
    except Exception as exc:  # noqa: BLE001 - reported back as a skip note
        proto.write(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return 0
    proto.write(json.dumps(info) + "\n")
    prepared = None  # (size, dtype) of the problem the peer holds
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["cmd"] == "quit":
                break
            if req["cmd"] == "ceiling":
                out = gemm_ceiling(req["dtype"], threads, tuple(req["ns"]), req.get("budget", 0),
                                   probe=req.get("probe", False))
            elif req["cmd"] == "case":
                key = (tuple(req["size"]), req["dtype"])
                if key != prepared:  # the rounds of one case reuse its problem
                    peer.p = peer.args = None
                    gc.collect()
                    peer.set_threads()
                    peer.prepare(make_problem(*req["size"], req["dtype"]))
                    if req.get("task") and peer.has_update:
                        peer.prepare_update(make_update_problem(*req["size"], req["dtype"],
                                                                req["task"]))
                    prepared = key
                out = {}
                for mode in req["modes"]:
                    if mode == UPDATE and not (req.get("task") and peer.has_update):
                        continue
                    fn = {"forward": peer.forward, "fwd+BPTT": peer.fwd_bwd,
                          UPDATE: getattr(peer, "update", None)}[mode]
                    peer.set_threads()
                    out[mode] = time_call(fn, warmup=req["warmup"], repeats=req["repeats"],
                                          budget=req["budget"],
                                          min_repeats=req.get("min_repeats", 5))
                if req.get("checksums", True):
                    out["checksums"] = _checksums(*peer.outputs(peer.fwd_bwd()))
            else:
                raise ValueError(f"unknown command {req['cmd']!r}")
            proto.write(json.dumps({"ok": True, "result": out}) + "\n")
        except Exception as exc:  # noqa: BLE001 - one failed case must not end the run
            proto.write(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
    return 0


def memory_main(peer_name: str, size: list, dtype: str) -> int:
    """Fresh process: print the memory of one case as JSON."""
    proto = _protocol_stdout()
    if peer_name == "jax":
        _pin_cpus(1)
    try:
        peer = PEER_CLASSES[peer_name](1)
        peer.set_threads()
        out = {"ok": True, "result": measure_memory(peer, make_problem(*size, dtype))}
    except Exception as exc:  # noqa: BLE001
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    proto.write(json.dumps(out) + "\n")
    return 0


def _worker_env(peer: str, threads: int, keep_openblas_env: bool) -> dict:
    env = dict(os.environ)
    if peer != "numpy":
        # NumPy's BLAS only computes these workers' inputs and checksums: on one thread, since
        # OpenBLAS's idle threads spin for ~0.1 s after every call (measured: 110 ms of CPU
        # after each case), which a peer measured next would share the cores with.
        env["OPENBLAS_NUM_THREADS"] = "1"
    if peer == "numpy" and not keep_openblas_env:
        for k in OPENBLAS_VARS:
            env.pop(k, None)
    if peer == "jax":
        env["JAX_PLATFORMS"] = "cpu"
        flag = ("--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
                if threads == 1 else
                f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}")
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


class Worker:
    """A worker process for one (peer, threads), talking JSON lines."""

    def __init__(self, peer: str, threads: int, *, pin: bool, keep_openblas_env: bool):
        self.peer, self.threads = peer, threads
        cmd = [sys.executable, os.path.abspath(__file__), "--_worker", peer,
               "--_wthreads", str(threads)] + (["--pin"] if pin else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1,
                                     env=_worker_env(peer, threads, keep_openblas_env))
        self.info = self._read()
        if not self.info.get("ok"):
            self.close()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            return {"ok": False, "error": f"worker exited (rc={rc})"}
        return json.loads(line)

    def ask(self, **req) -> dict:
        if self.proc.poll() is not None:
            return {"ok": False, "error": f"worker is gone (rc={self.proc.returncode})"}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def cpu_ticks(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            return 0

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def run_memory_case(peer: str, size, dtype: str, keep_openblas_env: bool) -> dict:
    env = _worker_env(peer, 1, keep_openblas_env)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["MALLOC_TRIM_THRESHOLD_"] = "65536"
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory", peer,
           "--_msize", ",".join(map(str, size)), "--_mdtype", dtype]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, timeout=600,
                       check=False)
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    if not lines:
        return {"ok": False, "error": f"memory process exited (rc={p.returncode})"}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------

def parse_sizes(text: str) -> list:
    """'P,S3' or 'P 10x2x3x8' -> [(name, (T,B,I,H)), ...]."""
    out = []
    for tok in text.replace(",", " ").split():
        if tok in SIZES:
            out.append((tok, SIZES[tok]))
        elif tok == SMOKE_SIZE[0]:
            out.append(SMOKE_SIZE)
        else:
            try:
                dims = tuple(int(x) for x in tok.lower().split("x"))
            except ValueError:
                dims = ()
            if len(dims) != 4 or min(dims) < 1:
                raise SystemExit(f"--sizes: {tok!r} is neither one of {', '.join(SIZES)} nor "
                                 "TxBxIxH with four positive integers")
            out.append((tok, dims))
    return out


def _cpu_info() -> dict:
    model, flags = platform.processor() or "?", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("?", "", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512vl", "avx512bw", "avx512_bf16")
           if f in flags]
    return {"model": model, "cpus": os.cpu_count(), "isa": isa,
            "affinity": sorted(os.sched_getaffinity(0))}


def _git_describe() -> str | None:
    """Commit (and '-dirty') of the source tree this script lives in, if it is a git checkout."""
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=False).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _atomic_write(path: Path, data, mode="w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)           # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _system_cpu() -> tuple:
    """(busy, steal) jiffies of the whole machine from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return v[0] + v[1] + v[2] + v[5] + v[6], (v[7] if len(v) > 7 else 0)


def _busy_cpus(seconds: float) -> float:
    """CPUs kept busy by all processes during ``seconds``."""
    b0, _ = _system_cpu()
    time.sleep(seconds)
    b1, _ = _system_cpu()
    return (b1 - b0) / os.sysconf("SC_CLK_TCK") / seconds


def _wait_quiet(workers, settle: float, max_busy: float, max_wait: float, log) -> float:
    """Wait until the machine is quiet before a measurement.

    Sleeps ``settle`` s, makes sure no idle worker keeps burning CPU (spinning threads), then
    waits (up to ``max_wait`` s) until all processes together use at most ``max_busy`` CPUs:
    the machine may be shared with builds and tests. Returns the seconds waited."""
    t0 = time.time()
    tick = os.sysconf("SC_CLK_TCK")
    if settle > 0:
        before = {w: w.cpu_ticks() for w in workers}
        time.sleep(settle)
        for w in workers:
            busy = (w.cpu_ticks() - before[w]) / tick / settle
            if busy > 0.2:
                log(f"  note: idle worker {w.peer}/{w.threads}t used {busy:.0%} CPU while "
                    "idle (spinning threads?); waiting")
                for _ in range(20):
                    b0 = w.cpu_ticks()
                    time.sleep(0.1)
                    if (w.cpu_ticks() - b0) / tick / 0.1 < 0.2:
                        break
    if max_wait > 0:
        busy = _busy_cpus(0.25)
        if busy > max_busy:
            log(f"  machine busy ({busy:.2f} CPUs used by other processes); waiting up to "
                f"{max_wait:.0f} s for it to quieten")
            deadline = time.time() + max_wait
            while busy > max_busy and time.time() < deadline:
                busy = _busy_cpus(1.0)
            if busy > max_busy:
                log(f"  still busy ({busy:.2f} CPUs); measuring anyway")
    return time.time() - t0


_WAITED = [0.0]   # seconds this run has waited for other processes so far


def _measure_case(w, req: dict, args, others, log) -> dict:
    """Ask worker ``w`` for one case; repeat (up to ``args.retries`` times) when other
    processes used more than ``args.max_foreign`` CPUs meanwhile, keeping the quietest try."""
    tick = os.sysconf("SC_CLK_TCK")
    best = None
    for attempt in range(1 + args.retries):
        allowed = max(0.0, min(args.quiet_wait, args.wait_total - _WAITED[0]))
        waited = _wait_quiet(others, args.settle, args.max_foreign, allowed, log)
        _WAITED[0] += max(0.0, waited - args.settle)
        (b0, s0), k0, t0 = _system_cpu(), w.cpu_ticks(), time.time()
        r = w.ask(**req)
        (b1, s1), k1, wall = _system_cpu(), w.cpu_ticks(), max(time.time() - t0, 1e-3)
        if not r.get("ok"):
            return r
        r["foreign_cpus"] = max(0.0, (b1 - b0) - (k1 - k0)) / tick / wall
        r["steal_cpus"] = (s1 - s0) / tick / wall
        r["attempt"] = attempt + 1
        r["waited_s"] = waited
        r["case_s"] = wall
        if best is None or r["foreign_cpus"] < best["foreign_cpus"]:
            best = r
        if r["foreign_cpus"] <= args.max_foreign or _WAITED[0] >= args.wait_total:
            break
        if attempt < args.retries:
            log(f"  other processes used {r['foreign_cpus']:.2f} CPUs during the measurement; "
                "measuring again")
    return best


def run_benchmark(args, log) -> dict:
    """Run every case and return the JSON-able results."""
    sizes, threads_list, dtypes, peers = args.sizes, args.threads, args.dtypes, args.peers
    t_start = time.time()
    if args.nice is not None:                # inherited by every worker process
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    meta = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "host": platform.node(),
            "python": platform.python_version(), "cpu": _cpu_info(),
            "flops": "forward 2*T*B*H*(H+I); fwd+BPTT 3x forward",
            "omp_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_"))},
            "pin_all": args.pin, "repeats": args.repeats, "rounds": args.rounds,
            "budget_s": args.budget, "warmup": args.warmup, "max_foreign": args.max_foreign,
            "niceness": os.getpriority(os.PRIO_PROCESS, 0), "git": _git_describe()}
    removed = {k: os.environ[k] for k in OPENBLAS_VARS if k in os.environ}
    if args.keep_openblas_env:
        meta["openblas_env"] = f"kept for the NumPy peer and ceiling: {removed or 'none set'}"
    elif removed:
        meta["openblas_env"] = ("unset for the NumPy peer and the GEMM ceiling: "
                                + ", ".join(f"{k}={v}" for k, v in removed.items()))
    else:
        meta["openblas_env"] = ("OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE were not set "
                                "(nothing to unset)")
    log(f"cpu: {meta['cpu']['model']}, {meta['cpu']['cpus']} CPUs, "
        f"ISA: {' '.join(meta['cpu']['isa']) or 'no AVX2'}")
    log(f"OpenBLAS env: {meta['openblas_env']}")

    notes, workers, peer_info = [], {}, {}
    for n in threads_list:
        for peer in list(dict.fromkeys(peers + ["numpy"])):   # numpy worker: the ceiling too
            w = Worker(peer, n, pin=args.pin, keep_openblas_env=args.keep_openblas_env)
            if w.info.get("ok"):
                workers[(peer, n)] = w
                peer_info.setdefault(peer, w.info)
                if peer == "jax":
                    peer_info[f"jax/{n}t"] = w.info
            else:
                msg = f"{peer} skipped: {w.info.get('error')}"
                if msg not in notes:
                    notes.append(msg)
                    log("note: " + msg)
    active = [p for p in peers if all((p, n) in workers for n in threads_list)]
    for p in peers:
        if p not in active and any((p, n) in workers for n in threads_list):
            notes.append(f"{p}: worker failed for some thread counts; skipped")
            for n in threads_list:
                if (p, n) in workers:
                    workers.pop((p, n)).close()
    if "numpy" in peer_info:
        blas = peer_info["numpy"]["versions"].get("blas", [])
        for b in blas:
            log(f"NumPy BLAS (NumPy peer and ceiling): {b.get('internal_api')} "
                f"{b.get('version')}, core {b.get('architecture')}, "
                f"{b.get('threading_layer')}")
        meta["numpy_blas"] = blas
    for p, info in peer_info.items():
        log(f"{p}: " + json.dumps({k: v for k, v in info["versions"].items()
                                   if k not in ("blas",)}, default=str))

    ceilings, results = {}, []
    rounds = args.rounds
    per_round = {"warmup": args.warmup, "repeats": max(1, math.ceil(args.repeats / rounds)),
                 "budget": args.budget / rounds, "min_repeats": max(1, math.ceil(5 / rounds))}

    def others_of(w):  # the workers that must stay quiet while w measures
        return [x for x in workers.values() if x is not w]

    for n in threads_list:
        for dt in dtypes:
            nw = workers.get(("numpy", n))
            if nw is None:
                raise SystemExit("the NumPy worker (GEMM ceiling) failed to start")
            r = _measure_case(nw, {"cmd": "ceiling", "dtype": dt, "ns": list(args.ceiling_n),
                                   "budget": args.budget * 2}, args, others_of(nw), log)
            if not r.get("ok"):
                raise SystemExit(f"GEMM ceiling failed: {r.get('error')}")
            ceil = ceilings[f"{dt}/{n}"] = {**r["result"], "foreign_cpus": r["foreign_cpus"],
                                            "probes": {}}
            log(f"GEMM ceiling {dt} {n}t: {ceil['gflops']:.1f} GFLOP/s (N={ceil['best_n']})")
            for name, (T, B, I, H) in sizes:
                # Rounds (see the module docstring): the GEMM ceiling once, then each peer in
                # turn in a rotated order, `rounds` times; a peer's samples are pooled.
                parts, probes, failed = {p: [] for p in active}, [], set()
                for rnd in range(rounds):
                    pr = _measure_case(nw, {"cmd": "ceiling", "dtype": dt,
                                            "ns": [ceil["best_n"]], "probe": True},
                                       args, others_of(nw), log)
                    if pr.get("ok"):
                        probes.append(pr["result"]["gflops"])
                    k = rnd % len(active)
                    for peer in active[k:] + active[:k]:
                        if peer in failed:
                            continue
                        w = workers[(peer, n)]
                        req = {"cmd": "case", "size": [T, B, I, H], "dtype": dt,
                               "modes": list(args.modes), **per_round, "checksums": rnd == 0,
                               "task": UPDATE_TASKS.get(name) if UPDATE in args.modes
                               else None}
                        if rnd > 0:
                            req["warmup"] = 0  # warmed up in round 1 (the problem is kept)
                        r = _measure_case(w, req, args, others_of(w), log)
                        if not r.get("ok"):
                            notes.append(f"{peer} {name} {dt} {n}t failed: {r.get('error')}")
                            log("note: " + notes[-1])
                            failed.add(peer)
                            continue
                        parts[peer].append(r)
                # the ceiling of this case: the median of its rounds' probes
                case_ceiling = float(np.median(probes)) if probes else ceil["gflops"]
                ceil["probes"][name] = probes
                for peer in active:
                    if peer in failed or not parts[peer]:
                        continue
                    rs = parts[peer]
                    disturb = {k: max(x[k] for x in rs) for k in ("foreign_cpus", "steal_cpus",
                                                                    "attempt")}
                    disturb["case_s"] = sum(x["case_s"] for x in rs)
                    for mode in [m for m in MODES + (UPDATE,) if m in rs[0]["result"]]:
                        m = pool_samples([x["result"][mode] for x in rs])
                        del m["times"], m["cpus"]
                        m["round_medians_s"] = [x["result"][mode]["median_s"] for x in rs]
                        gf = flops(T, B, I, H, mode) / m["median_s"] / 1e9
                        results.append({
                            "peer": peer, "size": name, "T": T, "B": B, "I": I, "H": H,
                            "dtype": dt, "threads": n, "mode": mode, **m, "gflops": gf,
                            "ceiling_gflops": case_ceiling, "frac_ceiling": gf / case_ceiling,
                            "checksums": rs[0]["result"]["checksums"], **disturb})
                    if disturb["foreign_cpus"] > args.max_foreign:
                        notes.append(f"{peer} {name} {dt} {n}t: other processes used "
                                     f"{disturb['foreign_cpus']:.2f} CPUs during the "
                                     "measurement (marked *)")
                    mine = {r["mode"]: r for r in results if r["peer"] == peer
                            and r["size"] == name and r["dtype"] == dt and r["threads"] == n}
                    fb = mine.get("fwd+BPTT") or next(iter(mine.values()))
                    log(f"  {name:>5} {dt} {n}t {peer:>8}: " + ", ".join(
                        f"{md} {_ms(r['median_s'])} ms" for md, r in mine.items())
                        + f" ({fb['samples']} samples of {fb['number']} "
                        f"in {rounds} rounds, cpu {fb['cpu_util']:.2f}, others "
                        f"{disturb['foreign_cpus']:.2f}, {disturb['case_s']:.1f} s)")
                log(f"  {name:>5} {dt} {n}t  ceiling: "
                    + ", ".join(f"{g:.0f}" for g in probes) + " GFLOP/s")
    for w in workers.values():
        w.close()

    # ratios, cross-peer checks, thread-setting sanity
    ref = "rnnfast" if "rnnfast" in active else ("numpy" if "numpy" in active else None)
    idx = {(r["peer"], r["size"], r["dtype"], r["threads"], r["mode"]): r for r in results}
    for r in results:
        base = idx.get((ref, r["size"], r["dtype"], r["threads"], r["mode"]))
        r["ratio_vs_" + str(ref)] = r["median_s"] / base["median_s"] if base else None
        if r["threads"] == 1 and r["cpu_util"] > 1.3:
            notes.append(f"{r['peer']} {r['size']} {r['dtype']} 1t {r['mode']}: CPU/wall "
                         f"{r['cpu_util']:.2f} > 1 on one thread (thread setting not honoured?)")
    mismatches = []
    if "numpy" in active:
        for r in results:
            if r["peer"] == "numpy" or r["mode"] != "fwd+BPTT":
                continue
            nref = idx.get(("numpy", r["size"], r["dtype"], r["threads"], r["mode"]))
            if nref is None:
                continue
            for k, (norm, proj) in nref["checksums"].items():
                mine = r["checksums"][k]
                err = max(abs(mine[0] - norm), abs(mine[1] - proj)) / max(norm, 1e-30)
                if err > CHECK_TOL[r["dtype"]]:
                    mismatches.append(f"{r['peer']} {r['size']} {r['dtype']} {r['threads']}t "
                                      f"{k}: rel. diff {err:.2e} vs NumPy")
        for m in mismatches:
            log("MISMATCH: " + m)

    memory = []
    if args.memory:
        log("peak memory (fresh process per case, 1 thread) ...")
        for dt in dtypes:
            for name, size in sizes:
                for peer in active:
                    r = run_memory_case(peer, size, dt, args.keep_openblas_env)
                    if r.get("ok"):
                        memory.append({"peer": peer, "size": name, "dtype": dt, **r["result"]})
                    else:
                        notes.append(f"memory {peer} {name} {dt}: {r.get('error')}")
    meta["seconds"] = time.time() - t_start
    meta["waited_for_quiet_s"] = _WAITED[0]
    return {"meta": meta, "peers": peer_info, "active_peers": active, "reference": ref,
            "sizes": {n: s for n, s in sizes}, "threads": threads_list, "dtypes": dtypes,
            "ceilings": ceilings, "results": results, "memory": memory,
            "mismatches": mismatches, "notes": notes}


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------

def _ms(s: float) -> str:
    ms = s * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3g}"


def _time_cell(r: dict, data: dict, ceiling: bool = False) -> str:
    """A table cell: median ms (q1–q3), the % of the ceiling when asked, * when disturbed."""
    c = f"{_ms(r['median_s'])} ({_ms(r['q1_s'])}–{_ms(r['q3_s'])})"
    if ceiling:
        c += f" {100 * r['frac_ceiling']:.0f}%"
    if r.get("foreign_cpus", 0) > data["meta"]["max_foreign"]:
        c += "*"
    return c


def format_tables(data: dict) -> str:
    """Markdown tables: one per (dtype, mode), plus the ceiling, thread scaling and memory."""
    res, peers, ref = data["results"], data["active_peers"], data["reference"]
    idx = {(r["peer"], r["size"], r["dtype"], r["threads"], r["mode"]): r for r in res}
    meta = data["meta"]
    lines = [f"Command: `{meta['command']}`  ",
             (f"CPU: {meta['cpu']['model']} ({meta['cpu']['cpus']} CPUs, "
              f"ISA {' '.join(meta['cpu']['isa'])}); started {meta['started']}, "
              f"took {meta.get('seconds', 0):.0f} s (of which "
              f"{meta.get('waited_for_quiet_s', 0):.0f} s waiting for other processes); "
              f"source {meta.get('git') or '?'}  "),
             f"OpenBLAS env: {meta['openblas_env']}  "]
    vers = []
    for p, info in data["peers"].items():
        if "/" in p:
            continue
        v = info["versions"]
        vers.append(", ".join(f"{k} {v[k]}" for k in ("rnnfast", "torch", "jax", "jaxlib",
                                                      "numpy", "threadpoolctl") if k in v))
    lines.append("Versions: " + "; ".join(vers) + "  ")
    if meta.get("numpy_blas"):
        b = meta["numpy_blas"][0]
        lines.append(f"NumPy BLAS: {b.get('internal_api')} {b.get('version')}, core "
                     f"{b.get('architecture')}  ")
    lines += ["", ("Cells: median ms (q1–q3), % of the GEMM ceiling at the same threads and "
                   f"dtype (re-measured in the case's rounds), and ×{ref} = time ÷ {ref}'s time "
                   f"(above 1: {ref} faster). FLOPs: "
                   "forward 2·T·B·H·(H+I), fwd+BPTT 3× that. * = other processes used more "
                   f"than {meta['max_foreign']} CPUs during that measurement (after retries)."),
              ""]
    lines += ["GEMM ceiling (NumPy matmul, N×N, best median, measured first): " + ", ".join(
        f"{k.replace('/', ' ')}t {c['gflops']:.0f} GFLOP/s (N={c['best_n']}"
        + (f"; from CPU time {c['gflops_cpu_time']:.0f})"
           if c.get("foreign_cpus", 0) > meta["max_foreign"] and "gflops_cpu_time" in c
           else ")") for k, c in data["ceilings"].items()), ""]
    probed = [(k, c) for k, c in data["ceilings"].items() if c.get("probes")]
    if probed:  # the ceiling re-measured in every case's rounds: the % cells divide by these
        lines += [f"GEMM ceiling probes per case (GFLOP/s, one per round; the % cells use "
                  f"their median), {meta.get('rounds', 1)} rounds:", "",
                  "| size | " + " | ".join(f"{k.replace('/', ' ')}t" for k, _ in probed) + " |",
                  "|---|" + "---|" * len(probed)]
        for name in data["sizes"]:
            lines.append(f"| {name} | " + " | ".join(
                ", ".join(f"{g:.0f}" for g in c["probes"].get(name, [])) or "—"
                for _, c in probed) + " |")
        lines.append("")
    for dt in data["dtypes"]:
        for mode in MODES:
            lines.append(f"### {dt}, {mode}")
            lines.append("")
            lines.append("| size (T,B,I,H) | thr | " + " | ".join(peers) + " |")
            lines.append("|---|---|" + "---|" * len(peers))
            for name, (T, B, I, H) in data["sizes"].items():
                for n in data["threads"]:
                    cells = []
                    for p in peers:
                        r = idx.get((p, name, dt, n, mode))
                        if r is None:
                            cells.append("—")
                            continue
                        c = _time_cell(r, data, ceiling=True)
                        rv = r.get("ratio_vs_" + str(ref))
                        if p != ref and rv is not None:
                            c += f" ×{rv:.1f}" if rv >= 1.95 else f" ×{rv:.2f}"
                        cells.append(c)
                    lines.append(f"| {name} ({T},{B},{I},{H}) | {n} | " + " | ".join(cells)
                                 + " |")
            lines.append("")
    upd = [r for r in res if r["mode"] == UPDATE]
    if upd:
        lines += _update_tables(data, idx, upd)
    disturbed = [r for r in res if r["threads"] == 1
                 and r.get("foreign_cpus", 0) > meta["max_foreign"]]
    if disturbed:
        lines.append("### 1 thread, process CPU time per call (ms) and % of the GEMM ceiling "
                     "measured the same way: the cells marked * above ran while other "
                     "processes used the CPUs; on one thread the CPU time a call got is closer "
                     "to its undisturbed time than the wall clock (caches are still shared)")
        lines.append("")
        lines.append("| size | dtype | mode | " + " | ".join(peers) + " |")
        lines.append("|---|---|---|" + "---|" * len(peers))
        for dt in data["dtypes"]:
            for mode in MODES:
                for name in data["sizes"]:
                    cells = []
                    T, B, I, H = data["sizes"][name]
                    ceil = data["ceilings"].get(f"{dt}/1", {}).get("gflops_cpu_time")
                    for p in peers:
                        r = idx.get((p, name, dt, 1, mode))
                        if r is None:
                            cells.append("—")
                            continue
                        c = _ms(r["cpu_median_s"])
                        if ceil:
                            gf = flops(T, B, I, H, mode) / r["cpu_median_s"] / 1e9
                            c += f" {100 * gf / ceil:.0f}%"
                        cells.append(c + ("*" if r in disturbed else ""))
                    lines.append(f"| {name} | {dt} | {mode} | " + " | ".join(cells) + " |")
        lines.append("")
    if len(data["threads"]) > 1 and 1 in data["threads"]:
        n2 = max(data["threads"])
        lines.append(f"### Thread scaling, fwd+BPTT: time at 1 thread ÷ time at {n2}")
        lines.append("")
        lines.append("| size | dtype | " + " | ".join(peers) + " |")
        lines.append("|---|---|" + "---|" * len(peers))
        for dt in data["dtypes"]:
            for name in data["sizes"]:
                cells = []
                for p in peers:
                    a = idx.get((p, name, dt, 1, "fwd+BPTT"))
                    b = idx.get((p, name, dt, n2, "fwd+BPTT"))
                    cells.append(f"{a['median_s'] / b['median_s']:.2f}" if a and b else "—")
                lines.append(f"| {name} | {dt} | " + " | ".join(cells) + " |")
        lines.append("")
    if data["memory"]:
        mem = {(m["peer"], m["size"], m["dtype"]): m for m in data["memory"]}
        method = data["memory"][0]["method"]
        lines.append(f"### Peak extra memory of one call, MiB (1 thread; {method}); "
                     "fwd / fwd+BPTT; 'state' = one T·B·H array")
        lines.append("")
        lines.append("| size | dtype | state | " + " | ".join(peers) + " |")
        lines.append("|---|---|---|" + "---|" * len(peers))
        for dt in data["dtypes"]:
            for name in data["sizes"]:
                cells, st = [], None
                for p in peers:
                    m = mem.get((p, name, dt))
                    if m is None:
                        cells.append("—")
                        continue
                    st = m["state_MiB"]
                    cells.append(f"{m['forward']:.1f} / {m['fwd+BPTT']:.1f}")
                lines.append(f"| {name} | {dt} | {st:.2f} | " + " | ".join(cells) + " |"
                             if st is not None else f"| {name} | {dt} | — | " + " | ".join(cells)
                             + " |")
        lines.append("")
    if data["mismatches"]:
        lines.append("MISMATCHES (peer outputs differ from NumPy's):")
        lines += [f"- {m}" for m in data["mismatches"]]
        lines.append("")
    else:
        lines.append("All peers' fwd+BPTT outputs (h and the 5 gradients) agree with the NumPy "
                     "BPTT (checksums) at every size, dtype and thread count measured.")
        lines.append("")
    if data["notes"]:
        lines.append("Notes:")
        lines += [f"- {n}" for n in data["notes"]]
        lines.append("")
    return "\n".join(lines)


def _update_tables(data: dict, idx: dict, upd: list) -> list:
    """The training-update rows: per size, dtype and threads, each peer's median ms per update
    (q1–q3), rnnfast's updates/s and (T·B)/s (characters per second at PTB), and
    ×rnnfast; then the time of the authors' 336k-update temporal-order run at P."""
    peers = [p for p in data["active_peers"] if any(r["peer"] == p for r in upd)]
    lines = ["### Full SGD-CR training update (readout, loss, BPTT with Ω, α·∂Ω/∂W_rec, "
             "clipping, SGD step): median ms per update (q1–q3), ×rnnfast = time ÷ rnnfast's",
             "",
             "| size (T,B,I,H) | dtype | thr | " + " | ".join(peers)
             + " | rnnfast updates/s | rnnfast (T·B)/s |",
             "|---|---|---|" + "---|" * len(peers) + "---|---|"]
    for name, (T, B, I, H) in data["sizes"].items():
        for dt in data["dtypes"]:
            for n in data["threads"]:
                base = idx.get(("rnnfast", name, dt, n, UPDATE))
                if not any(idx.get((p, name, dt, n, UPDATE)) for p in peers):
                    continue
                cells = []
                for p in peers:
                    r = idx.get((p, name, dt, n, UPDATE))
                    if r is None:
                        cells.append("—")
                        continue
                    c = _time_cell(r, data)
                    if p != "rnnfast" and base:
                        c += f" ×{r['median_s'] / base['median_s']:.1f}"
                    cells.append(c)
                extra = ([f"{1 / base['median_s']:.0f}", f"{T * B / base['median_s']:,.0f}"]
                         if base else ["—", "—"])
                lines.append(f"| {name} ({T},{B},{I},{H}) | {dt} | {n} | "
                             + " | ".join(cells + extra) + " |")
    lines.append("")
    for n in data["threads"]:
        r = idx.get(("rnnfast", "P", "float32", n, UPDATE))
        if r:
            sec = TEMPORAL_ORDER_UPDATES * r["median_s"]
            lines.append(f"The authors' temporal-order training ({TEMPORAL_ORDER_UPDATES:,} "
                         f"SGD-CR updates at P, float32) at this rate on {n} thread"
                         f"{'s' if n > 1 else ''}: {sec / 60:.1f} min ({sec:.0f} s).  ")
    lines.append("")
    return lines


def draw_chart(data: dict, path: Path) -> str | None:
    """Grouped bars of % of the GEMM ceiling; returns a note if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart drawn (pip install matplotlib)"
    res, peers = data["results"], data["active_peers"]
    idx = {(r["peer"], r["size"], r["dtype"], r["threads"], r["mode"]): r for r in res}
    rows = [(dt, mode) for dt in data["dtypes"] for mode in MODES]
    cols = data["threads"]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(5.5 * len(cols), 3.0 * len(rows)),
                             squeeze=False, sharey=True)
    names = list(data["sizes"])
    x = np.arange(len(names))
    width = 0.8 / max(1, len(peers))
    colors = {"rnnfast": "#d62728", "torch": "#1f77b4", "jax": "#2ca02c", "numpy": "#7f7f7f"}
    for i, (dt, mode) in enumerate(rows):
        for j, n in enumerate(cols):
            ax = axes[i][j]
            for k, p in enumerate(peers):
                vals = [100 * idx[(p, s, dt, n, mode)]["frac_ceiling"]
                        if (p, s, dt, n, mode) in idx else 0 for s in names]
                xs = x + (k - (len(peers) - 1) / 2) * width
                ax.bar(xs, vals, width, label=p, color=colors.get(p))
                for xx, v, s in zip(xs, vals, names):
                    r = idx.get((p, s, dt, n, mode))
                    if r is not None and r.get("foreign_cpus", 0) > data["meta"]["max_foreign"]:
                        ax.text(xx, v, "*", ha="center", va="bottom", fontsize=8)
            ax.set_xticks(x, names)
            ax.set_title(f"{dt}, {mode}, {n} thread{'s' if n > 1 else ''}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
            if j == 0:
                ax.set_ylabel("% of GEMM ceiling")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("RNN forward / forward+BPTT throughput as % of NumPy GEMM ceiling "
                 f"({data['meta']['cpu']['model']}; * = disturbed by other processes)",
                 fontsize=11)
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write(path, buf.getvalue(), mode="wb")
    return None


# --------------------------------------------------------------------------------------------
# --check: do the peers compute the same thing?
# --------------------------------------------------------------------------------------------

def run_check(peers: list, log) -> bool:
    """Compare every available peer's h and gradients to the NumPy BPTT on small cases (with a
    random h0), after checking the NumPy BPTT itself against central finite differences."""
    ok = True
    T, B, I, H = 7, 3, 4, 5
    p = make_problem(T, B, I, H, "float64", with_h0=True, seed=3)

    def loss(q):
        return float(np.sum(numpy_forward(q["u"], q["W_in"], q["W_rec"], q["b"], q["h0"])
                            * q["G"]))
    h = numpy_forward(p["u"], p["W_in"], p["W_rec"], p["b"], p["h0"])
    g = numpy_backward(p["u"], p["W_in"], p["W_rec"], p["h0"], h, p["G"])
    rng = np.random.default_rng(0)
    eps = 1e-6
    for name in GRAD_NAMES:
        d = rng.standard_normal(p[name].shape)
        qp, qm = dict(p), dict(p)
        qp[name] = p[name] + eps * d
        qm[name] = p[name] - eps * d
        fd = (loss(qp) - loss(qm)) / (2 * eps)
        an = float(np.sum(g[name] * d))
        err = abs(fd - an) / max(abs(fd), 1e-12)
        good = err < 1e-6
        ok &= good
        log(f"numpy BPTT vs finite differences, d{name}: rel. err {err:.1e} "
            f"{'ok' if good else 'FAIL'}")
    made = {}
    for dt, tol in (("float64", 1e-9), ("float32", 1e-4)):
        for with_h0 in (True, False):
            q = make_problem(T, B, I, H, dt, with_h0=with_h0, seed=3)
            h_ref = numpy_forward(*(q[k].astype(np.float64) if q[k] is not None else None
                                    for k in ("u", "W_in", "W_rec", "b", "h0")))
            g_ref = numpy_backward(*(q[k].astype(np.float64) if q[k] is not None else None
                                     for k in ("u", "W_in", "W_rec", "h0")), h_ref,
                                   q["G"].astype(np.float64))
            for name in peers:
                if name not in made:
                    try:
                        made[name] = PEER_CLASSES[name](1)
                    except Exception as exc:  # noqa: BLE001
                        made[name] = None
                        log(f"{name}: skipped ({type(exc).__name__}: {exc})")
                peer = made[name]
                if peer is None:
                    continue
                peer.set_threads()
                peer.prepare(q)
                hh, gg = peer.outputs(peer.fwd_bwd())
                errs = {"h": np.abs(np.asarray(hh, np.float64) - h_ref).max()
                        / np.abs(h_ref).max()}
                for k in GRAD_NAMES:
                    a = np.asarray(gg[k], np.float64)
                    errs[k] = np.abs(a - g_ref[k]).max() / max(np.abs(g_ref[k]).max(), 1e-30)
                worst = max(errs, key=errs.get)
                good = errs[worst] < tol
                ok &= good
                log(f"{name:>8} {dt} h0={'rand' if with_h0 else 'None'}: max rel. err "
                    f"{errs[worst]:.1e} ({worst}) vs float64 NumPy {'ok' if good else 'FAIL'}")
    # The training-update rows: the same parameters after two updates from the same start.
    upd = [n for n in peers if made.get(n) is not None and made[n].has_update]
    if "rnnfast" in upd:
        for task_name, task in UPDATE_TASKS.items():
            prob = make_update_problem(9, 3, 5 if task["inputs"] == "onehot" else 6, 7,
                                       "float64", dict(task, n_out=min(task["n_out"], 4)))
            after = {}
            for name in upd:
                peer = made[name]
                peer.set_threads()
                peer.prepare_update(prob)
                peer.update()
                peer.update()
                after[name] = peer.update_params()
            for name in upd:
                if name == "rnnfast":
                    continue
                err = max(np.abs(after[name][k] - after["rnnfast"][k]).max()
                          / max(np.abs(after["rnnfast"][k]).max(), 1e-30) for k in after[name])
                good = err < 1e-6  # torch's clip_grad_norm_ divides by norm + 1e-6
                ok &= good
                log(f"{name:>8} update ({task_name} task, float64): parameters after 2 SGD-CR "
                    f"updates, max rel. diff {err:.1e} vs rnnfast {'ok' if good else 'FAIL'}")
    return ok


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="rnnfast vs torch.nn.RNN vs JAX lax.scan vs NumPy BPTT, plus the GEMM "
                    "ceiling, in one run.", formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(SIZES),
                    help=f"comma-separated names ({', '.join(SIZES)}) or TxBxIxH "
                         "(default: all named)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (1,2)")
    ap.add_argument("--dtypes", default="float32,float64", help="float32,float64")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument("--repeats", type=int, default=15,
                    help="max timed samples per measurement (default 15)")
    ap.add_argument("--budget", type=float, default=1.5,
                    help="seconds per measurement that cap the samples (at least 5 are "
                         "taken; default 1.5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds per case, over which the peers and a ceiling probe take turns "
                         "(default 3); repeats and budget are shared out over them")
    ap.add_argument("--out", default="results/bench",
                    help="output directory for peers.json/.md/.png (default results/bench)")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the peak-memory subprocesses")
    ap.add_argument("--ceiling-n", default="1024,2048,3072",
                    help="square GEMM sizes for the ceiling (default 1024,2048,3072)")
    ap.add_argument("--settle", type=float, default=0.2,
                    help="seconds between measurements, checking idle workers are quiet")
    ap.add_argument("--max-foreign", type=float, default=0.15,
                    help="CPUs other processes may use during a measurement before it is "
                         "repeated (default 0.15)")
    ap.add_argument("--retries", type=int, default=2,
                    help="repeats of a disturbed measurement (default 2)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="seconds to wait for a busy machine to quieten before each "
                         "measurement (default 60; 0: do not wait)")
    ap.add_argument("--wait-total", type=float, default=600.0,
                    help="total seconds the run may spend waiting for a busy machine and "
                         "retrying; afterwards it measures as it is and marks cells with * "
                         "(default 600)")
    ap.add_argument("--nice", type=int, default=None,
                    help="run the benchmark (and its workers) at this niceness, e.g. -10 on a "
                         "shared machine (below 0 needs root, and starves other work)")
    ap.add_argument("--pin", action="store_true",
                    help="pin every worker of n threads to n CPUs (JAX's always is)")
    ap.add_argument("--keep-openblas-env", action="store_true",
                    help="do not unset OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE for the NumPy worker")
    ap.add_argument("--modes", default=",".join(MODES + (UPDATE,)),
                    help="what to time: forward, fwd+BPTT, update (the training-update rows of "
                         f"the sizes {', '.join(UPDATE_TASKS)}); default all three")
    ap.add_argument("--check", action="store_true",
                    help="only check that the peers compute the same forward and gradients")
    ap.add_argument("--report", metavar="JSON",
                    help="only redraw the tables and chart of a saved peers.json (into --out "
                         "if given, else next to it)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny run for CI: one tiny size, rnnfast+numpy, 1 thread, float32")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_wthreads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--_memory", help=argparse.SUPPRESS)
    ap.add_argument("--_msize", help=argparse.SUPPRESS)
    ap.add_argument("--_mdtype", help=argparse.SUPPRESS)
    return ap


def _split(text: str) -> list:
    return [t for t in text.replace(",", " ").split() if t]


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args._worker:
        return worker_main(args._worker, args._wthreads, args.pin)
    if args._memory:
        return memory_main(args._memory, [int(x) for x in args._msize.split(",")],
                           args._mdtype)

    def log(msg):
        print(msg, flush=True)

    given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
    if args.smoke:
        if "--sizes" not in given:
            args.sizes = SMOKE_SIZE[0]
        if "--peers" not in given:
            args.peers = "rnnfast,numpy"
        if "--threads" not in given:
            args.threads = "1"
        if "--dtypes" not in given:
            args.dtypes = "float32"
        if "--repeats" not in given:
            args.repeats = 3
        if "--rounds" not in given:
            args.rounds = 2
        if "--budget" not in given:
            args.budget = 0.1
        if "--ceiling-n" not in given:
            args.ceiling_n = "256"
        if "--settle" not in given:
            args.settle = 0.0
        if "--quiet-wait" not in given:
            args.quiet_wait = 0.0
        if "--retries" not in given:
            args.retries = 0
        if "--wait-total" not in given:
            args.wait_total = 0.0
    args.peers = _split(args.peers)
    bad = [p for p in args.peers if p not in PEERS]
    if bad:
        ap.error(f"--peers: unknown {bad}; expected a subset of {', '.join(PEERS)}")
    if args.check:
        return 0 if run_check(args.peers, log) else 1
    if args.report:
        data = json.loads(Path(args.report).read_text())
        for c in data["ceilings"].values():   # files from before gflops_cpu_time existed
            c.setdefault("gflops_cpu_time", max(
                2.0 * int(k) ** 3 / max(v.get("cpu_median_s", v["median_s"]), 1e-12) / 1e9
                for k, v in c["per_n"].items()))
        out = Path(args.out) if "--out" in given else Path(args.report).parent
        return _write_outputs(data, out, log)
    args.sizes = parse_sizes(args.sizes)
    try:
        args.threads = [int(t) for t in _split(args.threads)]
        args.ceiling_n = [int(t) for t in _split(args.ceiling_n)]
    except ValueError:
        ap.error("--threads and --ceiling-n take comma-separated positive integers")
    if not args.threads or min(args.threads) < 1 or not args.ceiling_n:
        ap.error("--threads and --ceiling-n take comma-separated positive integers")
    args.modes = _split(args.modes)
    if not args.modes or any(m not in MODES + (UPDATE,) for m in args.modes):
        ap.error(f"--modes: expected a subset of {', '.join(MODES + (UPDATE,))}")
    args.dtypes = _split(args.dtypes)
    if not args.dtypes or any(d not in DTYPES for d in args.dtypes):
        ap.error(f"--dtypes: expected a subset of {', '.join(DTYPES)}")
    if args.repeats < 1 or args.warmup < 0 or args.budget < 0 or args.rounds < 1:
        ap.error("--repeats and --rounds must be >= 1, --warmup and --budget >= 0")

    return _write_outputs(run_benchmark(args, log), Path(args.out), log)


def _write_outputs(data: dict, out: Path, log) -> int:
    """Chart, JSON and tables into ``out``; print the tables. Exit code 1 on mismatches."""
    chart_note = draw_chart(data, out / "peers.png") if data["results"] else "no results"
    if chart_note and chart_note not in data["notes"]:
        data["notes"].append(chart_note)
    text = format_tables(data)
    _atomic_write(out / "peers.json", json.dumps(data, indent=1, default=str) + "\n")
    _atomic_write(out / "peers.md", text + "\n")
    log("")
    log(text)
    log(f"wrote {out / 'peers.json'}, {out / 'peers.md'}"
        + ("" if chart_note else f", {out / 'peers.png'}"))
    return 1 if data["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
