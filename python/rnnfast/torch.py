"""A drop-in CPU backend for PyTorch users: :class:`RNN`, a ``torch.nn.RNN`` whose forward and
backpropagation through time run in rnnfast's C++ kernels. See docs/torch.md.

Import it explicitly (``import rnnfast`` never imports torch)::

    import rnnfast.torch

    rnn = rnnfast.torch.RNN(200, 200, 2, dropout=0.2)   # same arguments as torch.nn.RNN
    rnnfast.torch.replace_rnn(model)                    # or swap every nn.RNN of a model in place

What is the same as ``torch.nn.RNN``
    :class:`RNN` is a subclass of ``torch.nn.RNN``: the constructor, parameters (names, shapes,
    default initialisation drawn in the same order), ``state_dict``, ``_flat_weights``,
    ``all_weights``, ``flatten_parameters`` (a no-op on the CPU), ``extra_repr``, the warning
    for ``dropout`` with one layer, and ``forward(input, hx=None) -> (output, h_n)`` with every
    option: ``num_layers``, ``bidirectional``, ``dropout`` between layers (training only; the
    masks are drawn exactly as torch draws them, so the same seed gives the same numbers),
    ``batch_first``, ``bias``, tanh/relu, ``hx``, unbatched input and ``PackedSequence`` in
    and out (``h_n`` at each sequence's last valid step).

What differs
    * The kernels run float32/float64 on the CPU. Other devices (CUDA, meta) and dtypes
      (float16, bfloat16) run torch's own implementation instead, with a one-time
      ``RuntimeWarning``; so do empty inputs (T = 0 or B = 0).
    * Double backward (gradients of gradients) raises a ``RuntimeError`` naming the limitation.
    * ``torch.compile`` (also ``fullgraph=True``), ``torch.export`` and ``torch.jit.trace`` see
      the kernels as the custom operators ``torch.ops.rnnfast.rnn_layer`` (+ its backward):
      no graph break, and the captured program computes on every new input.
      ``torch.jit.script`` is not supported.
    * The kernels use ``b = bias_ih + bias_hh``; both biases receive the same gradient.

Threads
    ``RNN(..., num_threads=n)`` (or the attribute) sets the kernels' thread count per call;
    ``None`` uses :func:`rnnfast.get_num_threads`. A bidirectional layer with n ≥ 2 threads
    runs its two directions at once, on n // 2 threads each. PyTorch ships its own libgomp and
    the first one loaded serves both libraries, so ``torch.set_num_threads`` may change
    rnnfast's OpenMP default: set both explicitly when timing.

The Ω regularizer (Pascanu et al. 2013, eq. 9-10)
    ``RNN(..., omega=alpha)`` (or ``rnn.omega = alpha``) makes every backward pass also compute
    Ω for each recurrent weight ``weight_hh_l{k}{_reverse}`` in the authors' form and add
    α·∂Ω/∂W_hh to that weight's gradient (before any clipping, as in the authors' code).
    ``last_omega`` (the sum over the recurrent weights), ``last_omega_pairs`` and
    ``last_omega_grad`` (∂Ω/∂W_hh (H, H); a dict name -> tensor when there are several
    recurrent weights) describe the most recent backward. ``omega=0.0`` monitors Ω without
    changing any gradient; ``None`` (default) turns it off. Eager mode only.

Clipping
    :func:`clip_grad_norm` is the paper's Algorithm 1 on torch parameters, next to
    ``torch.nn.utils.clip_grad_norm_`` (see its docstring for the differences).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import math
import numbers
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch  # absolute import: the real PyTorch, not this module
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import core as _rf
from .nn.clipping import (AutoThreshold, ClipResult, GradientClipper, NONFINITE_POLICIES,
                          NonFiniteGradientError)

__all__ = ["RNN", "replace_rnn", "UnsupportedError", "InputError", "clip_grad_norm"]

_DTYPES = (torch.float32, torch.float64)


class UnsupportedError(NotImplementedError, ValueError):
    """Something ``torch`` accepts that rnnfast does not support (e.g. a gradient on another
    device for :func:`clip_grad_norm`)."""


class InputError(ValueError, RuntimeError):
    """A malformed argument rnnfast itself detects (``forward`` arguments are checked by
    ``torch.nn.RNN``'s own code and raise what torch raises)."""


# --------------------------------------------------------------------------------------------
# The kernels, one layer (both directions) at a time
# --------------------------------------------------------------------------------------------

def _np(t: Optional[Tensor]) -> Optional[np.ndarray]:
    """A NumPy view of a contiguous CPU tensor's memory (no copy), or None."""
    return None if t is None else t.detach().contiguous().numpy()


def _reverse(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """x (T, B, F) with each sequence's valid steps in reverse order (padding stays at the end);
    its own inverse."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T).unsqueeze(1)                                   # (T, 1)
    idx = torch.where(t < lengths, lengths - 1 - t, t)                 # (T, B)
    return x.gather(0, idx.unsqueeze(2).expand_as(x))


# Variable lengths go to the kernels (rnnfast.forward/backward's lengths=): each sequence stops
# at its own length and padded steps cost nothing; h is 0 there and dh there is ignored. From
# the module they come in PackedSequence order (non-increasing), the kernels' own order.
def _kernel_forward(u, h0, W_in, W_rec, b, lengths, activation, threads) -> _rf.ForwardResult:
    """u (T, B, I), h0 (B, H) or None, lengths (B,) Tensor or None -> ForwardResult."""
    return _rf.forward(u, W_in, W_rec, b, h0, activation=activation, num_threads=threads,
                       lengths=None if lengths is None else lengths.numpy())


def _forward_result(h, u, W_in, W_rec, b, h0, lengths, activation, threads) -> _rf.ForwardResult:
    """The ForwardResult of an earlier _kernel_forward, rebuilt from the arrays autograd saved
    (a custom operator's backward receives tensors only)."""
    return _rf.ForwardResult.rebuild(h, u, W_in, W_rec, b, h0, activation=activation,
                                     lengths=None if lengths is None else lengths.numpy(),
                                     num_threads=threads)


def _kernel_backward(fwd, dh, dh_last, input_grad, omega, omega_bound, threads) -> _rf.Gradients:
    """dh (T, B, H) the direct output gradient (entries at padded steps are ignored), dh_last
    (B, H) the gradient of the state at each sequence's last step; either may be None."""
    return _rf.backward(fwd, dh, dh_last=dh_last, omega=omega, omega_bound=omega_bound,
                        input_grad=input_grad, num_threads=threads)


_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()
#: Run a bidirectional layer's two directions at once (False: one after the other, each on
#: all threads; bench/torch_stack.py measures both).
PARALLEL_DIRECTIONS = True


def _per_direction(fn, D: int, threads: int) -> list:
    """[fn(0, n), fn(1, n)]: the two directions at once on threads // 2 each (the kernels
    release the GIL) when there are two of both, else one after the other."""
    global _pool
    if D == 1 or threads < 2 or not PARALLEL_DIRECTIONS:
        return [fn(d, threads) for d in range(D)]
    with _pool_lock:
        if _pool is None or _pool._rnnfast_pid != os.getpid():   # a fork child has no thread
            _pool = ThreadPoolExecutor(1, thread_name_prefix="rnnfast-direction")
            _pool._rnnfast_pid = os.getpid()
    second = _pool.submit(fn, 1, threads - threads // 2)
    return [fn(0, threads // 2), second.result()]


def _threads(num_threads: int) -> int:
    return _rf.get_num_threads() if num_threads <= 0 else _rf._check_threads(num_threads)


def _layer_forward(u, h0, weights, lengths, activation, num_threads):
    """out (T, B, D·H), h_n (D, B, H), [ForwardResult per direction] of one layer: u (T, B, I),
    h0 (D, B, H), weights [W_in (H, I), W_rec (H, H), b (H,)] per direction; direction 1 reads
    each sequence backwards. h_n[d] is direction d's state at each sequence's last step in its
    own order."""
    D = len(weights) // 3
    threads = _threads(num_threads)

    def run(d, n):
        u_d = u if d == 0 else _reverse(u, lengths)
        W_in, W_rec, b = weights[3 * d:3 * d + 3]
        return _kernel_forward(_np(u_d), _np(h0[d]), _np(W_in), _np(W_rec), _np(b), lengths,
                               activation, n)

    fwds = _per_direction(run, D, threads)
    h_n = torch.from_numpy(np.stack([f.h_last for f in fwds]))
    if D == 1:
        return torch.from_numpy(fwds[0].h), h_n, fwds        # the kernel's array, no copy
    out = torch.cat([torch.from_numpy(fwds[0].h), _reverse(torch.from_numpy(fwds[1].h), lengths)], 2)
    return out, h_n, fwds


def _layer_backward(grad_out, grad_hn, u, h0, weights, lengths, out, activation, num_threads,
                    input_grad, omega=None, fwds=None):
    """[du (T, B, I), dh0 (D, B, H), dW_in, dW_rec, db per direction] for the gradients of
    out, grad_out (T, B, D·H), and of h_n, grad_hn (D, B, H) (either may be None: the kernels
    take h_n's as their dh_last); du is empty when not ``input_grad``. With ``omega`` (the
    bound), also a list of (Ω, pairs, ∂Ω/∂W_rec) per direction. ``fwds``: the layer's
    ForwardResults from _layer_forward (eager mode), else they are rebuilt from the arrays
    (then ``weights`` and ``out`` are not read)."""
    D = len(fwds) if fwds is not None else len(weights) // 3
    H = (fwds[0].h if fwds is not None else weights[1]).shape[-1]
    threads = _threads(num_threads)

    def run(d, n):
        rev = (lambda x: x) if d == 0 else (lambda x: _reverse(x, lengths))
        if fwds is not None:
            fwd = fwds[d]
        else:
            W_in, W_rec, b = weights[3 * d:3 * d + 3]
            h = _np(rev(out[:, :, d * H:(d + 1) * H]))       # the direction's states, its time order
            fwd = _forward_result(h, _np(rev(u)), _np(W_in), _np(W_rec), _np(b), _np(h0[d]),
                                  lengths, activation, n)
        dh = None if grad_out is None else _np(rev(grad_out[:, :, d * H:(d + 1) * H]))
        return _kernel_backward(fwd, dh, None if grad_hn is None else _np(grad_hn[d]),
                                input_grad, omega is not None,
                                _rf.OMEGA_BOUND if omega is None else omega, n)

    gs = _per_direction(run, D, threads)
    if input_grad:
        du = torch.from_numpy(gs[0].u)
        if D == 2:
            du = du + _reverse(torch.from_numpy(gs[1].u), lengths)
    else:
        du = u.new_empty(0)
    grads = [du, torch.stack([torch.from_numpy(g.h0) for g in gs])]
    for g in gs:
        grads += [torch.from_numpy(g.W_in), torch.from_numpy(g.W_rec), torch.from_numpy(g.b)]
    if omega is None:
        return grads
    return grads, [(float(g.omega), int(g.omega_pairs), torch.from_numpy(g.omega_grad)) for g in gs]


# --------------------------------------------------------------------------------------------
# The same functions as torch custom operators: torch.compile, torch.export and jit.trace
# record them as operators (with shapes from the fake implementations) instead of tracing
# into NumPy, and autograd differentiates them through register_autograd.
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("rnnfast::rnn_layer", mutates_args=())
def _rnn_layer(u: Tensor, h0: Tensor, weights: List[Tensor], lengths: Optional[Tensor],
               activation: str, num_threads: int) -> Tuple[Tensor, Tensor]:
    """out (T, B, D·H), h_n (D, B, H) = one RNN layer; see _layer_forward. num_threads ≤ 0:
    the default."""
    out, h_n, _ = _layer_forward(u, h0, weights, lengths, activation, num_threads)
    return out, h_n


@_rnn_layer.register_fake
def _(u, h0, weights, lengths, activation, num_threads):
    T, B, _ = u.shape
    D, H = len(weights) // 3, weights[1].shape[0]
    return u.new_empty((T, B, D * H)), u.new_empty((D, B, H))


@torch.library.custom_op("rnnfast::rnn_layer_backward", mutates_args=())
def _rnn_layer_backward(grad_out: Optional[Tensor], grad_hn: Optional[Tensor], u: Tensor,
                        h0: Tensor, weights: List[Tensor], lengths: Optional[Tensor],
                        out: Tensor, activation: str, num_threads: int,
                        input_grad: bool) -> List[Tensor]:
    """[du, dh0, dW_in_0, dW_rec_0, db_0, (dW_in_1, dW_rec_1, db_1)]; see _layer_backward."""
    return _layer_backward(grad_out, grad_hn, u, h0, weights, lengths, out, activation,
                           num_threads, input_grad)


@_rnn_layer_backward.register_fake
def _(grad_out, grad_hn, u, h0, weights, lengths, out, activation, num_threads, input_grad):
    grads = [u.new_empty(u.shape if input_grad else (0,)), h0.new_empty(h0.shape)]
    return grads + [w.new_empty(w.shape) for w in weights]


def _setup_context(ctx, inputs, output):
    u, h0, weights, lengths, activation, num_threads = inputs
    ctx.save_for_backward(u, h0, output[0], lengths, *weights)
    ctx.activation, ctx.num_threads = activation, num_threads


def _backward(ctx, grad_out, grad_hn):
    u, h0, out, lengths, *weights = ctx.saved_tensors
    need_u, need_h0, need_w = ctx.needs_input_grad[:3]
    grads = torch.ops.rnnfast.rnn_layer_backward(
        grad_out, grad_hn, u, h0, weights, lengths, out, ctx.activation, ctx.num_threads, need_u)
    return (grads[0] if need_u else None, grads[1] if need_h0 else None,
            [g if n else None for g, n in zip(grads[2:], need_w)], None, None, None)


_rnn_layer.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):  # noqa: ARG001
    raise RuntimeError(
        "rnnfast.torch.RNN: double backward (a gradient of a gradient, e.g. "
        "torch.autograd.grad(..., create_graph=True) followed by another backward, or a "
        "gradient penalty) is not supported by rnnfast's kernels; use torch.nn.RNN for it "
        "(rnnfast.torch.RNN.to_torch())")


def _no_double_backward_setup(ctx, inputs, output):
    pass


_rnn_layer_backward.register_autograd(_no_double_backward,
                                      setup_context=_no_double_backward_setup)


# --------------------------------------------------------------------------------------------
# Eager mode: the same functions through an autograd.Function (the custom operator's dispatch
# costs ~0.2 ms per layer), one node for all the layers between two dropouts, which can also
# report Ω
# --------------------------------------------------------------------------------------------

def _layer_weights(w, layer: int, D: int, bias: bool) -> list:
    """[W_in (H, I), W_rec (H, H), b (H,)] per direction of ``layer`` from the flat weights w
    (torch.nn.RNN's order, of the layers given); b = b_ih + b_hh, or zeros without biases."""
    per = 4 if bias else 2
    out = []
    for d in range(D):
        k = (layer * D + d) * per
        b = w[k + 2] + w[k + 3] if bias else w[k].new_zeros(w[k].shape[0])
        out += [w[k], w[k + 1], b]
    return out


class _EagerStack(torch.autograd.Function):
    """Layers of the stack run one after the other, as ONE autograd node: out (T, B, D·H) of
    the last, h_n (n·D, B, H) of all, for u (T, B, I) and h0 (n·D, B, H); ``w`` holds the
    layers' flat weights. The biases are summed inside (∂E/∂b goes to both). With ``alpha``
    not None, also Ω per direction: α·∂Ω/∂W_rec is added to W_rec's gradient and (Ω, pairs,
    ∂Ω/∂W_rec) stored in ``stats[name]`` for each recurrent weight's name."""

    @staticmethod
    def forward(ctx, u, h0, lengths, cfg, stats, *w):
        n, D, bias, activation, num_threads, alpha, bound, names = cfg
        layer_in, outs, h_n, fwds = u, [], [], []
        for layer in range(n):
            out, h_last, f = _layer_forward(layer_in, h0[layer * D:(layer + 1) * D],
                                            _layer_weights(w, layer, D, bias), lengths,
                                            activation, num_threads)
            outs.append(out)
            h_n.append(h_last)
            fwds.append(f)
            layer_in = out
        ctx.save_for_backward(u, h0, lengths, *outs, *w)
        # The kernels' ForwardResults (views of the saved tensors) spare the first backward
        # rebuilding them; it drops them, so that the states are freed with the saved tensors
        # (a second backward with retain_graph=True rebuilds them).
        ctx.cfg, ctx.stats, ctx.fwds = cfg, stats, fwds
        ctx.set_materialize_grads(False)      # an unused output's gradient stays None
        return layer_in, h_n[0] if n == 1 else torch.cat(h_n)

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        if torch.is_grad_enabled():      # create_graph=True: a gradient of this gradient follows
            _no_double_backward(ctx)
        n, D, bias, activation, num_threads, alpha, bound, names = ctx.cfg
        u, h0, lengths, *rest = ctx.saved_tensors   # (also checks for in-place changes)
        fwds, ctx.fwds = ctx.fwds, None
        outs, w = rest[:n], rest[n:]
        need = ctx.needs_input_grad          # u, h0, lengths, cfg, stats, *w
        if grad_out is None and grad_hn is None:
            return (None,) * (5 + len(w))
        per = 4 if bias else 2
        gw, dh0, g = [None] * len(w), [None] * n, grad_out
        for layer in reversed(range(n)):
            rows = slice(layer * D, (layer + 1) * D)
            res = _layer_backward(g, None if grad_hn is None else grad_hn[rows],
                                  u if layer == 0 else outs[layer - 1], h0[rows],
                                  None if fwds else _layer_weights(w, layer, D, bias), lengths,
                                  outs[layer], activation, num_threads, layer > 0 or need[0],
                                  omega=None if alpha is None else bound,
                                  fwds=fwds[layer] if fwds else None)
            grads = res if alpha is None else res[0]
            for d in range(D):
                k = (layer * D + d) * per
                gw[k], gw[k + 1] = grads[2 + 3 * d], grads[3 + 3 * d]
                if bias:
                    gw[k + 2], gw[k + 3] = grads[4 + 3 * d], grads[4 + 3 * d].clone()
                if alpha is not None:
                    value, pairs, grad = res[1][d]
                    ctx.stats[names[layer * D + d]] = (value, pairs, grad)
                    if alpha != 0.0:
                        gw[k + 1] = gw[k + 1] + alpha * grad
            dh0[layer] = grads[1]
            g = grads[0]
        return (g if need[0] else None, torch.cat(dh0) if need[1] else None, None, None, None,
                *[x if ok else None for x, ok in zip(gw, need[5:])])


def _capturing(tensors) -> bool:
    """Whether torch.compile / torch.export / jit.trace (or a tensor subclass such as fake
    tensors) is at work: then the custom operator runs, so that it is recorded."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or any(type(t) not in (Tensor, nn.Parameter) for t in tensors))


def _check_omega(omega) -> Optional[float]:
    if omega is None:
        return None
    if isinstance(omega, bool) or not isinstance(omega, numbers.Real):
        raise TypeError(
            f"omega: expected the regularizer weight α (a float ≥ 0; 0 = monitor only) or None, "
            f"got {omega!r}"
        )
    omega = float(omega)
    if not (math.isfinite(omega) and omega >= 0.0):
        raise ValueError(f"omega: expected a finite α ≥ 0 or None, got {omega}")
    return omega


# --------------------------------------------------------------------------------------------
# PackedSequence <-> padded, in the packed (sorted) batch order
# --------------------------------------------------------------------------------------------

def _packed_index(batch_sizes: Tensor):
    """rows (N,) of the (T·B) time-major padded layout holding the packed data, in packed
    order, and lengths (B,) (non-increasing), for batch_sizes (T,)."""
    T, B = len(batch_sizes), int(batch_sizes[0])
    valid = torch.arange(B).unsqueeze(0) < batch_sizes.unsqueeze(1)   # (T, B)
    return valid.reshape(-1).nonzero().squeeze(1), valid.sum(0)


def _pad(data: Tensor, rows: Tensor, T: int, B: int) -> Tensor:
    """data (N, F) packed -> (T, B, F), zeros at padded steps."""
    out = data.new_zeros((T * B, data.shape[1]))
    return out.index_copy(0, rows, data).view(T, B, -1)


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------

_warned: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class RNN(nn.RNN):
    r"""Elman RNN with rnnfast's CPU kernels: a ``torch.nn.RNN`` subclass with the same
    arguments, parameters and results (see the module docstring for what differs).

    h_t = σ(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh),  σ = tanh or relu.

    Parameters
    ----------
    *args, **kwargs
        Those of ``torch.nn.RNN``: ``input_size, hidden_size, num_layers=1,
        nonlinearity='tanh', bias=True, batch_first=False, dropout=0.0, bidirectional=False,
        device=None, dtype=None``.
    num_threads : int, optional
        Kernel threads per call (default: :func:`rnnfast.get_num_threads`).
    omega : float, optional
        Weight α of the Ω regularizer, see the module docstring; None (default) is off,
        0.0 monitors Ω without changing gradients.
    omega_bound : float
        (step, sequence) pairs with ‖∂E/∂h_t‖² below it are left out of Ω.

    Examples
    --------
    >>> import torch, rnnfast.torch
    >>> rnn = rnnfast.torch.RNN(6, 50, 2, bidirectional=True)
    >>> out, h_n = rnn(torch.randn(125, 20, 6))     # (T, B, I) -> (T, B, 2·50), (2·2, B, 50)
    """

    def __init__(self, *args, num_threads: Optional[int] = None, omega: Optional[float] = None,
                 omega_bound: float = _rf.OMEGA_BOUND, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_rnnfast(num_threads, omega, omega_bound)

    def _init_rnnfast(self, num_threads, omega, omega_bound) -> None:
        # Plain values only, so that torch.load(weights_only=True) reads a pickled module.
        if num_threads is not None:
            _rf._check_threads(num_threads)
        self.num_threads = num_threads
        self._omega = _check_omega(omega)
        self.omega_bound = float(omega_bound)
        if not self.omega_bound >= 0.0:
            raise ValueError(f"omega_bound: expected a non-negative number, got {omega_bound}")
        self._omega_stats: dict = {}     # recurrent weight name -> (Ω, pairs, ∂Ω/∂W_rec)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        if self.num_threads is not None:
            s += f", num_threads={self.num_threads}"
        if self._omega is not None:
            s += f", omega={self._omega}"
        return s

    # -- conversions --------------------------------------------------------------------------

    @classmethod
    def from_torch(cls, rnn: nn.RNN, **kwargs) -> "RNN":
        """A module with ``rnn``'s configuration, training mode and the SAME parameter objects
        (an optimizer built on ``rnn`` keeps working). ``kwargs``: ``num_threads``, ``omega``,
        ``omega_bound``."""
        if not isinstance(rnn, nn.RNN):
            raise TypeError(f"rnn: expected a torch.nn.RNN, got {type(rnn).__name__}")
        new = cls.__new__(cls)
        new.__dict__.update(rnn.__dict__)
        for name in ("_parameters", "_buffers", "_modules"):   # own dicts, same tensors
            new.__dict__[name] = dict(rnn.__dict__[name])
        new._init_flat_weights()
        new._init_rnnfast(kwargs.pop("num_threads", None), kwargs.pop("omega", None),
                          kwargs.pop("omega_bound", _rf.OMEGA_BOUND))
        if kwargs:
            raise TypeError(f"from_torch: unexpected arguments {sorted(kwargs)}")
        return new

    def to_torch(self) -> nn.RNN:
        """A ``torch.nn.RNN`` with this configuration and a copy of the parameters."""
        w = self.weight_ih_l0
        rnn = nn.RNN(self.input_size, self.hidden_size, self.num_layers, self.nonlinearity,
                     self.bias, self.batch_first, self.dropout, self.bidirectional,
                     device=w.device, dtype=w.dtype)
        rnn.load_state_dict(self.state_dict())
        rnn.train(self.training)
        return rnn

    # -- Ω ------------------------------------------------------------------------------------

    @property
    def omega(self) -> Optional[float]:
        """Weight α of the Ω regularizer (None: off; 0.0: monitor only)."""
        return self._omega

    @omega.setter
    def omega(self, value) -> None:
        self._omega = _check_omega(value)

    @property
    def last_omega(self) -> Optional[float]:
        """Ω of the most recent backward pass, summed over the recurrent weights (None before)."""
        s = self._omega_stats
        return sum(v[0] for v in s.values()) if s else None

    @property
    def last_omega_pairs(self) -> Optional[int]:
        """Number of (step, sequence) pairs Ω averages over (summed over recurrent weights)."""
        s = self._omega_stats
        return sum(v[1] for v in s.values()) if s else None

    @property
    def last_omega_grad(self):
        """∂Ω/∂W_hh (H, H) of the most recent backward (not multiplied by α); a dict
        name -> tensor when the module has several recurrent weights."""
        s = self._omega_stats
        if not s:
            return None
        return next(iter(s.values()))[2] if len(s) == 1 else {k: v[2] for k, v in s.items()}

    # -- forward ------------------------------------------------------------------------------

    def _weights(self) -> list:
        """The parameters in torch.nn.RNN's flat order (read by name: nothing assigned, so
        torch.export and torch.func.functional_call see their own tensors)."""
        return [getattr(self, n) for n in self._flat_weights_names]

    def _torch_reason(self, input: Tensor, hx: Optional[Tensor], weights: list) -> Optional[str]:
        """Why this call must run torch's implementation, or None. The dtype is the
        weights': an input or hx of another dtype is an error the checks in ``forward`` raise
        as torch does (no fallback, no warning)."""
        for t in [input, hx] + weights:
            if t is None:
                continue
            if t.device.type != "cpu":
                return f"tensors on {t.device}"
            if t.layout != torch.strided:
                return f"layout {t.layout}"
        if weights[0].dtype not in _DTYPES:
            return f"dtype {weights[0].dtype}"
        return None

    def forward(self, input, hx=None):
        """``torch.nn.RNN.forward``: (output, h_n) for input (T, B, I), (B, T, I) with
        ``batch_first``, (T, I) unbatched or a ``PackedSequence``, and hx (L·D, B, H) or
        (L·D, H); see ``torch.nn.RNN``."""
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        if not isinstance(data, Tensor):
            raise TypeError(f"input: expected a Tensor or PackedSequence, got {type(input).__name__}")
        weights = self._weights()
        reason = self._torch_reason(data, hx, weights)
        if reason is None and not torch.jit.is_tracing() and 0 in tuple(data.shape[:-1]):
            reason = "empty input"
        if reason is not None:
            if reason != "empty input":
                _warn_once(reason, f"rnnfast.torch.RNN: {reason} are not supported by rnnfast's "
                           "kernels (CPU float32/float64); running torch.nn.RNN's own "
                           "implementation instead (same results, torch's speed)"
                           if reason.startswith("tensors") else
                           f"rnnfast.torch.RNN: {reason} is not supported by rnnfast's kernels "
                           "(float32/float64); running torch.nn.RNN's own implementation instead")
            return super().forward(input, hx)

        D = 2 if self.bidirectional else 1
        # The prelude of torch.nn.RNN.forward: the same checks and errors.
        if packed:
            if torch.jit.is_tracing():   # the packing's sizes would be frozen into the trace
                raise RuntimeError(
                    "rnnfast.torch.RNN: torch.jit.trace cannot record a PackedSequence input "
                    "(its batch sizes would become constants of the trace); trace with padded "
                    "input, or use torch.compile / torch.export")
            x, batch_sizes, sorted_indices, unsorted_indices = input
            rows, lengths = _packed_index(batch_sizes)
            T, B = len(batch_sizes), int(batch_sizes[0])
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)
            batched = True
        else:
            batch_sizes = lengths = None
            if input.dim() not in (2, 3):
                raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            batched = input.dim() == 3
            if not batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but "
                                           f"got {hx.dim()}-D tensor")
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got "
                                   f"{hx.dim()}-D tensor")
            x = input
            B = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            hx = torch.zeros(self.num_layers * D, B, self.hidden_size, dtype=x.dtype)
        self.check_forward_args(x, hx, batch_sizes)
        if hx.dtype != x.dtype:
            raise InputError(f"hx: dtype {hx.dtype} does not match the input's {x.dtype}; "
                             f"convert it with hx.to({x.dtype})")

        if packed:
            u = _pad(x, rows, T, B)                                     # (T, B, I)
        else:
            u = x.transpose(0, 1) if self.batch_first else x            # (T, B, I) view
        out, h_n = self._stack(u, hx, weights, lengths, rows if packed else None)
        if packed:
            data_out = out.reshape(T * B, -1).index_select(0, rows)     # (N, D·H)
            return (PackedSequence(data_out, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(h_n, unsorted_indices))
        if self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out, h_n = out.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        return out, h_n

    def _stack(self, u: Tensor, hx: Tensor, w: list, lengths: Optional[Tensor],
               rows: Optional[Tensor]):
        """out (T, B, D·H), h_n (L·D, B, H) for u (T, B, I), hx (L·D, B, H), the flat weights
        w, lengths (B,) or None; rows: the packed layout's rows (dropout is drawn on the packed
        data, as torch does)."""
        D = 2 if self.bidirectional else 1
        T, B, _ = u.shape
        L, act, omega = self.num_layers, self.nonlinearity, self._omega
        threads = 0 if self.num_threads is None else int(self.num_threads)
        per = (4 if self.bias else 2) * D             # flat weights per layer
        capture = _capturing([u, hx] + w)
        if capture and omega is not None:
            raise RuntimeError("rnnfast.torch.RNN: omega (the Ω regularizer) works in eager "
                               "mode only; set rnn.omega = None before capturing")
        # Layers run in groups: one custom operator per layer under capture, else one eager
        # node for all the layers between two dropouts (all of them without dropout).
        dropout = self.dropout > 0 and self.training
        group = 1 if capture or dropout else L
        layer_in, h_n = u, []
        for first in range(0, L, group):
            stop = min(first + group, L)
            h0, ws = hx[first * D:stop * D], w[first * per:stop * per]   # (n·D, B, H)
            if capture:
                out, h_last = torch.ops.rnnfast.rnn_layer(
                    layer_in, h0, _layer_weights(ws, 0, D, self.bias), lengths, act, threads)
            else:
                names = [self._flat_weights_names[k + 1] for k in range(first * per, stop * per,
                                                                         per // D)]
                out, h_last = _EagerStack.apply(
                    layer_in, h0, lengths,
                    (stop - first, D, self.bias, act, threads, omega, self.omega_bound, names),
                    self._omega_stats, *ws)
            h_n.append(h_last)
            if stop < L and dropout:
                if rows is None:
                    out = nn.functional.dropout(out, self.dropout, True)
                else:  # draw the mask on the packed data, as torch does
                    kept = nn.functional.dropout(out.reshape(T * B, -1).index_select(0, rows),
                                                 self.dropout, True)
                    out = _pad(kept, rows, T, B)
            layer_in = out
        return layer_in, h_n[0] if len(h_n) == 1 else torch.cat(h_n)


# torch.load(weights_only=True), the default, may rebuild a pickled module holding an RNN.
torch.serialization.add_safe_globals([RNN])


# torch.compile: Dynamo refuses every instance of torch.nn.RNN (its config.allow_rnn, off by
# default, is for torch's own kernels, which it cannot compile reliably). For rnnfast's RNN,
# whose forward is plain torch code around custom operators, the refusal is lifted for the
# wrapping of that one module only. Dynamo is imported lazily by torch (seconds), so the patch
# is applied when its module loads.
_BUILDER = "torch._dynamo.variables.builder"


def _patch_dynamo(builder) -> None:
    original = builder.VariableBuilder.wrap_module
    if getattr(original, "_rnnfast", False):
        return

    def wrap_module(self, value):
        if isinstance(value, RNN):
            from torch._dynamo import config
            with config.patch(allow_rnn=True):
                return original(self, value)
        return original(self, value)

    wrap_module._rnnfast = True
    builder.VariableBuilder.wrap_module = wrap_module


class _DynamoHook(importlib.abc.MetaPathFinder):
    """Patches Dynamo's module builder right after it is imported."""

    def find_spec(self, name, path, target=None):
        if name != _BUILDER:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch_dynamo(module)
            spec.loader.exec_module = exec_and_patch
        return spec


if _BUILDER in sys.modules:
    _patch_dynamo(sys.modules[_BUILDER])
else:
    sys.meta_path.insert(0, _DynamoHook())


def replace_rnn(model: nn.Module, **kwargs) -> nn.Module:
    """Swap every ``torch.nn.RNN`` inside ``model`` for :class:`RNN`, in place, keeping the
    parameter objects (so an existing optimizer keeps working) and the training mode.

    Parameters
    ----------
    model : nn.Module
        Any module; a bare ``torch.nn.RNN`` is converted and returned.
    **kwargs
        rnnfast options for every swapped module (``num_threads``, ``omega``, ``omega_bound``).

    Returns
    -------
    nn.Module
        ``model`` itself (or the new RNN when ``model`` was an ``nn.RNN``).

    Examples
    --------
    >>> model = MyLanguageModel()               # contains self.rnn = nn.RNN(...)
    >>> rnnfast.torch.replace_rnn(model)        # one line; everything else unchanged
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if type(model) is nn.RNN:
        return RNN.from_torch(model, **kwargs)
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if type(child) is nn.RNN:   # exactly torch's class: subclasses may change forward
                setattr(parent, name, RNN.from_torch(child, **kwargs))
    return model


# --------------------------------------------------------------------------------------------
# Clipping
# --------------------------------------------------------------------------------------------

def _named(parameters) -> list:
    """``[(name, tensor)]`` from tensors, (name, tensor) pairs or a name -> tensor mapping."""
    if isinstance(parameters, torch.Tensor):
        return [("0", parameters)]
    if isinstance(parameters, Mapping):
        return [(str(k), v) for k, v in parameters.items()]
    out = []
    for i, p in enumerate(parameters):
        if isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], torch.Tensor):
            out.append((str(p[0]), p[1]))
        elif isinstance(p, torch.Tensor):
            out.append((str(i), p))
        else:
            raise TypeError(f"parameters: expected tensors or (name, tensor) pairs, got "
                            f"{type(p).__name__} at position {i}")
    return out


def _grad_view(name: str, g: torch.Tensor) -> np.ndarray:
    if g.device.type != "cpu" or g.layout != torch.strided:
        raise UnsupportedError(
            f"parameters: the gradient of {name!r} is on {g.device} ({g.layout}); "
            "clip_grad_norm works on dense CPU gradients (use torch.nn.utils.clip_grad_norm_ "
            "elsewhere)"
        )
    if g.dtype not in (torch.float16, torch.float32, torch.float64):
        raise UnsupportedError(f"parameters: the gradient of {name!r} has dtype {g.dtype}; "
                               "expected float16, float32 or float64")
    return g.numpy()


def clip_grad_norm(parameters, max_norm: Union[float, AutoThreshold, None], *,
                   mode: str = "norm", strict: bool = False, nonfinite: str = "shrink",
                   absurd: Optional[float] = 1e10,
                   recurrent: Union[torch.Tensor, Sequence[torch.Tensor], None] = None,
                   shrink: float = 0.02) -> ClipResult:
    """Algorithm 1 of Pascanu et al. (2013) on torch gradients, in place, with a policy for
    non-finite or absurd norms.

    What it adds over ``torch.nn.utils.clip_grad_norm_``: the exact rule
    ``g ← max_norm/‖g‖ · g`` when ``‖g‖ ≥ max_norm`` (no ε, gradients below the threshold
    untouched, ``strict=True`` for the authors' ``>``); the norm accumulated in float64; a
    result saying whether it clipped; the paper's automatic threshold (``max_norm`` an
    :class:`rnnfast.nn.clipping.AutoThreshold` kept across steps); and the non-finite policies
    of :class:`rnnfast.nn.clipping.GradientClipper`, whose semantics it reuses:

    ``"raise"``  :class:`rnnfast.nn.clipping.NonFiniteGradientError` naming the parameter (the
                 first with a non-finite gradient, else the one with the largest norm);
    ``"skip"``   zero every gradient, ``action="skipped"``: do not call ``optimizer.step()``
                 (momentum would still move);
    ``"shrink"`` the authors' rule: every gradient 0 except ``grad = shrink · W`` for each
                 ``recurrent`` weight, so an SGD step gives W ← (1 − shrink·lr) W;
                 ``action="shrunk"``.

    A norm is "bad" when NaN, Inf or above ``absurd`` (authors: 1e10; None: NaN/Inf only).

    Parameters
    ----------
    parameters : iterable of Tensor, iterable of (name, Tensor), mapping, or a Tensor
        E.g. ``model.parameters()`` or ``model.named_parameters()`` (names appear in errors).
        Parameters whose ``.grad`` is None are ignored. Gradients must be dense CPU tensors.
    max_norm : float, AutoThreshold or None
        The threshold; an ``AutoThreshold`` (create it once, pass it every step) clips at
        ``factor`` × the running average of past norms after its warm-up; None only measures
        the norm and applies the non-finite policy.
    mode : {"norm", "elementwise"}
        Algorithm 1, or clamping every entry to [-max_norm, max_norm] (Mikolov).
    strict : bool
        Clip when ``‖g‖ > max_norm`` instead of ``≥``.
    nonfinite : {"shrink", "skip", "raise"}
        Default "shrink", as everywhere in rnnfast (the authors' rule).
    absurd : float or None
    recurrent : Tensor or sequence of Tensor, optional
        The recurrent weight(s) W_rec for ``nonfinite="shrink"``; default: the parameters
        whose name contains ``"weight_hh"`` when ``parameters`` are named.
    shrink : float
        The shrink factor (authors: 0.02).

    Returns
    -------
    rnnfast.nn.clipping.ClipResult
        ``norm`` (the total norm BEFORE clipping, a float), ``clipped``, ``scale``,
        ``threshold``, ``action`` ("ok", "clipped", "skipped", "shrunk").

    Examples
    --------
    In a training loop, in place of ``torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)``::

        loss.backward()
        res = rnnfast.torch.clip_grad_norm(model.named_parameters(), 1.0, nonfinite="skip")
        if res.action != "skipped":
            optimizer.step()
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite={nonfinite!r} is unknown; expected one of {NONFINITE_POLICIES}")
    if isinstance(max_norm, str):
        raise ValueError(
            f"max_norm={max_norm!r}: for the automatic threshold create "
            "rnnfast.nn.clipping.AutoThreshold() once and pass that object at every step"
        )
    named = _named(parameters)
    if recurrent is None:
        rec = [p for n, p in named if "weight_hh" in n]
    elif isinstance(recurrent, torch.Tensor):
        rec = [recurrent]
    else:
        rec = list(recurrent)
    grads = {}
    for name, p in named:
        if p.grad is not None:
            if name in grads:
                raise ValueError(f"parameters: the name {name!r} appears twice")
            grads[name] = _grad_view(name, p.grad)
    # The shrink itself is done below on every recurrent weight; the clipper's "skip" is the
    # same decision and the same zeroing. Without recurrent weights the clipper raises before
    # touching any gradient.
    policy = nonfinite if nonfinite != "shrink" else ("skip" if rec else "raise")
    clipper = GradientClipper(max_norm, mode=mode, strict=strict, nonfinite=policy,
                              absurd=absurd, shrink=shrink)
    try:
        result = clipper(grads)
    except NonFiniteGradientError as e:
        if nonfinite != "shrink":
            raise
        raise NonFiniteGradientError(
            f"{e}; nonfinite='shrink' (the default) needs the recurrent weight(s): pass named "
            "parameters (names containing 'weight_hh') or recurrent=..., or choose "
            "nonfinite='skip' or 'raise'", e.param, e.norm) from None
    if nonfinite == "shrink" and result.action == "skipped":
        with torch.no_grad():
            for W in rec:
                if W.grad is None:
                    W.grad = torch.zeros_like(W)
                gv = _grad_view("recurrent", W.grad)
                np.multiply(W.detach().numpy(), gv.dtype.type(shrink), out=gv)
        result = result._replace(action="shrunk")
    return result
