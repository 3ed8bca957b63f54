"""A drop-in CPU backend for PyTorch users: :class:`RNN`, a ``torch.nn.RNN`` whose forward and
backpropagation through time run in rnnfast's C++ kernels.

Import it explicitly (``import rnnfast`` never imports torch)::

    import rnnfast.torch

Before (PyTorch's own module)::

    rnn = torch.nn.RNN(6, 50, nonlinearity="tanh", batch_first=True)

After (same arguments, same parameters, same ``forward``; the rest of the loop is unchanged)::

    rnn = rnnfast.torch.RNN(6, 50, nonlinearity="tanh", batch_first=True)
    out, h_n = rnn(x)                    # x (B, T, 6) -> out (B, T, 50), h_n (1, B, 50)
    loss_fn(readout(out), y).backward()  # BPTT in rnnfast.backward

What is the same as ``torch.nn.RNN``
    Constructor arguments (``input_size, hidden_size, num_layers=1, nonlinearity='tanh',
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None,
    dtype=None``) for the one-layer, one-direction case; parameter names and shapes
    (``weight_ih_l0`` (H, I), ``weight_hh_l0`` (H, H), ``bias_ih_l0`` (H,), ``bias_hh_l0``
    (H,)) so ``state_dict`` s load both ways; the default initialisation (every parameter
    uniform in ±1/√H, drawn in the same order, so the same seed gives the same weights);
    ``forward(input, hx=None) -> (output, h_n)`` with batched (T, B, I) / (B, T, I) and
    unbatched (T, I) input, ``hx`` (1, B, H) or (1, H); float32 and float64.

What differs
    * CPU only, float32/float64 only, one layer, one direction, no dropout, no
      ``PackedSequence``: anything else raises :class:`UnsupportedError` (a
      ``NotImplementedError`` and a ``ValueError``) that says what is unsupported, so
      ``except NotImplementedError: rnn = torch.nn.RNN(...)`` is a clean fallback.
    * The backward pass is an ``autograd.Function`` marked once-differentiable: no double
      backward and no ``torch.func`` transforms (``torch.func.functional_call`` works).
      ``torch.compile`` runs the kernels eagerly (a graph break); TorchScript is not
      supported. The class is an ``nn.Module``, not a subclass of ``torch.nn.RNN``.
    * Empty sequences (T = 0) and empty batches (B = 0) are rejected.
    * The kernels use ``b = bias_ih_l0 + bias_hh_l0``; both biases receive the same gradient.

Memory and copies
    Contiguous float tensors are handed to the kernels as NumPy views (``Tensor.numpy()``):
    with ``batch_first=False`` the input, ``hx`` and the weights are not copied, ``output`` is
    the kernel's own (T, B, H) array wrapped by ``torch.from_numpy``, and the gradients come
    back the same way. ``batch_first=True`` costs one transposed copy of the input (and of
    the output gradient in backward), because the kernels read time-major (T, B, I) memory;
    ``output`` is then a transposed view, as in PyTorch. Non-contiguous inputs are copied once.
    ``h_n`` is a separate (1, B, H) copy of the last state.

Threads
    ``RNN(..., num_threads=n)`` (or the attribute) sets the kernels' thread count per call;
    ``None`` uses :func:`rnnfast.get_num_threads`. PyTorch ships its own libgomp and the
    first one loaded serves both libraries, so ``torch.set_num_threads`` may change
    rnnfast's OpenMP default: set both explicitly when timing.

The Ω regularizer (Pascanu et al. 2013, eq. 9-10)
    ``RNN(..., omega=alpha)`` (or ``rnn.omega = alpha``) makes every backward pass through
    the module also compute Ω in the authors' form and its W_rec gradient (the paper's
    approximation, ∂E/∂h_t and h_t held constant), fused into the same sweep. α·∂Ω/∂W_rec is
    added to the gradient of ``weight_hh_l0`` (so ``loss.backward()`` leaves
    ``weight_hh_l0.grad`` = ∂E/∂W_rec + α·∂Ω/∂W_rec, before any clipping, as in the
    authors' code), and ``rnn.last_omega`` / ``rnn.last_omega_pairs`` /
    ``rnn.last_omega_grad`` hold the value, the number of (step, sequence) pairs it averages
    over and ∂Ω/∂W_rec (H, H) of the most recent backward. ``omega=0.0`` monitors Ω without
    changing any gradient; ``omega=None`` (default) turns it off. The α in force at the
    forward pass applies. Ω is a property of the loss's gradient, so it only exists after
    ``backward``; it is not part of the loss value.

Clipping
    :func:`clip_grad_norm` is the paper's Algorithm 1 on torch parameters with the policies
    of :mod:`rnnfast.nn.clipping` (non-finite/absurd norms: raise naming the parameter, skip,
    or the authors' W_rec shrink; an automatic threshold), returning the pre-clip norm and
    whether it clipped.
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch  # absolute import: the real PyTorch, not this module
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence

from . import core as _rf
from .nn.clipping import (AutoThreshold, ClipResult, GradientClipper, NONFINITE_POLICIES,
                          NonFiniteGradientError)

__all__ = ["RNN", "UnsupportedError", "InputError", "clip_grad_norm"]

_DTYPES = (torch.float32, torch.float64)


class UnsupportedError(NotImplementedError, ValueError):
    """A configuration or tensor that ``torch.nn.RNN`` accepts but rnnfast does not support
    (more layers, bidirectional, dropout, projections, a non-CPU device, a dtype other than
    float32/float64, ``PackedSequence`` input)."""


class InputError(ValueError, RuntimeError):
    """A malformed ``forward`` argument (shape, number of dimensions, mixed dtypes). It is a
    ``RuntimeError`` as well because that is what ``torch.nn.RNN`` raises for most of them."""


# --------------------------------------------------------------------------------------------
# torch <-> numpy
# --------------------------------------------------------------------------------------------

def _np(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    """A NumPy view of a CPU tensor's memory (no copy; strides kept), or None."""
    return None if t is None else t.detach().numpy()


def _check_tensor(name: str, t: torch.Tensor, dtype: Optional[torch.dtype]) -> None:
    """Raise a clear error unless ``t`` is a dense CPU float32/float64 tensor of ``dtype``."""
    if t.device.type != "cpu":
        raise UnsupportedError(
            f"{name}: rnnfast.torch.RNN runs on the CPU only, got a tensor on {t.device}; "
            "move the module and tensors to the CPU (.cpu()), or use torch.nn.RNN on this device"
        )
    if t.layout != torch.strided:
        raise UnsupportedError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in _DTYPES:
        raise UnsupportedError(
            f"{name}: rnnfast supports float32 and float64 tensors, got {t.dtype}; "
            "convert with .float() or .double() (module and input alike)"
        )
    if dtype is not None and t.dtype != dtype:
        raise InputError(
            f"{name}: dtype {t.dtype} does not match the RNN's weights ({dtype}); "
            f"convert the input with .to({dtype}) or the module with .to({t.dtype})"
        )


# --------------------------------------------------------------------------------------------
# Ω bookkeeping
# --------------------------------------------------------------------------------------------

class _OmegaStats:
    """Where a backward pass leaves Ω for its module (no reference to the module itself)."""

    __slots__ = ("value", "pairs", "grad")

    def __init__(self):
        self.value: Optional[float] = None
        self.pairs: Optional[int] = None
        self.grad: Optional[torch.Tensor] = None


class _OmegaRequest:
    """What one forward pass asks its backward to do about Ω."""

    __slots__ = ("alpha", "bound", "stats")

    def __init__(self, alpha: float, bound: float, stats: _OmegaStats):
        self.alpha = alpha
        self.bound = bound
        self.stats = stats


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
# The autograd Function
# --------------------------------------------------------------------------------------------

def _bias(b_ih, b_hh, H: int, dtype: np.dtype) -> np.ndarray:
    """The kernels' single bias (H,): b_ih + b_hh, or zeros without bias."""
    if b_ih is None:
        return np.zeros(H, dtype=dtype)
    return np.add(_np(b_ih), _np(b_hh))


class _RNNFunction(torch.autograd.Function):
    """output (T, B, H), h_n (1, B, H) = RNN(u (T, B, I), h0 (B, H) or None, W_in (H, I),
    W_rec (H, H), b_ih (H,) or None, b_hh (H,) or None); backward = rnnfast.backward."""

    @staticmethod
    def forward(ctx, u, h0, W_in, W_rec, b_ih, b_hh, activation, num_threads, omega):
        H = W_rec.shape[0]
        fwd = _rf.forward(_np(u), _np(W_in), _np(W_rec), _bias(b_ih, b_hh, H, _np(W_rec).dtype),
                          _np(h0), activation=activation, num_threads=num_threads)
        output = torch.from_numpy(fwd.h)                 # the kernel's array, no copy
        h_n = torch.from_numpy(fwd.h[-1:].copy())        # (1, B, H), independent of output
        ctx.fwd = fwd
        ctx.num_threads = num_threads
        ctx.omega = omega
        ctx.has_h0 = h0 is not None
        # Saved for autograd's version check only: an in-place change of the input, hx, the
        # weights or the output between forward and backward raises, as with torch.nn.RNN
        # (the kernels read the same memory through fwd).
        ctx.save_for_backward(u, h0, W_in, W_rec, output)
        ctx.set_materialize_grads(False)
        return output, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, grad_h_n):
        ctx.saved_tensors  # noqa: B018 - raises if a saved tensor was modified in place
        need = ctx.needs_input_grad
        none = (None,) * 9
        if grad_output is None and grad_h_n is None:
            return none
        omega = ctx.omega
        g = _rf.backward(
            ctx.fwd,
            _np(grad_output),                                   # dh (T, B, H)
            dh_last=None if grad_h_n is None else _np(grad_h_n[0]),  # (B, H)
            omega=omega is not None,
            omega_bound=_rf.OMEGA_BOUND if omega is None else omega.bound,
            num_threads=ctx.num_threads,
        )
        if omega is not None:
            omega.stats.value = float(g.omega)
            omega.stats.pairs = int(g.omega_pairs)
            omega.stats.grad = torch.from_numpy(g.omega_grad)
            if omega.alpha != 0.0:
                # g.W_rec is this call's own array: add α·∂Ω/∂W_rec in place.
                g.W_rec += g.W_rec.dtype.type(omega.alpha) * g.omega_grad
        db = torch.from_numpy(g.b)
        return (
            torch.from_numpy(g.u) if need[0] else None,
            torch.from_numpy(g.h0) if need[1] and ctx.has_h0 else None,
            torch.from_numpy(g.W_in) if need[2] else None,
            torch.from_numpy(g.W_rec) if need[3] else None,
            db if need[4] else None,
            # a tensor of its own: two parameters must not share one .grad buffer
            (db.clone() if need[4] else db) if need[5] else None,
            None, None, None,
        )


def _run(u, h0, W_in, W_rec, b_ih, b_hh, activation, num_threads, omega):
    """output (T, B, H), h_n (1, B, H) for u (T, B, I), h0 (B, H) or None: through the
    autograd Function when a gradient can flow, else straight to the kernel."""
    tensors = (u, h0, W_in, W_rec, b_ih, b_hh)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _RNNFunction.apply(*tensors, activation, num_threads, omega)
    # no graph to build: call the kernel directly and keep nothing for a backward pass
    fwd = _rf.forward(_np(u), _np(W_in), _np(W_rec),
                      _bias(b_ih, b_hh, W_rec.shape[0], _np(W_rec).dtype), _np(h0),
                      activation=activation, num_threads=num_threads)
    return torch.from_numpy(fwd.h), torch.from_numpy(fwd.h[-1:].copy())


# torch.compile: run the kernels eagerly (a clean graph break) instead of tracing into them.
_compiler = getattr(torch, "compiler", None)
if _compiler is not None and hasattr(_compiler, "disable"):
    _run = _compiler.disable(_run)


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------

class RNN(nn.Module):
    r"""Elman RNN with rnnfast's CPU kernels, a drop-in for ``torch.nn.RNN`` (one layer).

    h_t = σ(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh),  σ = tanh or relu.

    Parameters
    ----------
    input_size : int
        I, features per step.
    hidden_size : int
        H, hidden units.
    num_layers : int
        Must be 1 (stack modules for depth).
    nonlinearity : {"tanh", "relu"}
    bias : bool
        With ``bias_ih_l0`` and ``bias_hh_l0`` (H,) (the kernels use their sum).
    batch_first : bool
        Input and output (B, T, ·) instead of (T, B, ·); costs one transposed copy of the
        input (and of the output gradient), see the module docstring.
    dropout : float
        Must be 0 (``torch.nn.RNN`` ignores it with one layer anyway).
    bidirectional : bool
        Must be False.
    device : torch.device or str, optional
        ``None``, ``"cpu"`` (or ``"meta"`` for deferred initialisation); forward runs on the
        CPU only.
    dtype : torch.dtype, optional
        float32 or float64 (default: torch's default dtype).
    num_threads : int, optional
        Kernel threads per call (default: :func:`rnnfast.get_num_threads`).
    omega : float, optional
        Weight α of the Ω regularizer, see the module docstring; None (default) is off,
        0.0 monitors Ω without changing gradients.
    omega_bound : float
        (step, sequence) pairs with ‖∂E/∂h_t‖² below it are left out of Ω.

    Attributes
    ----------
    weight_ih_l0 : Parameter (H, I)
    weight_hh_l0 : Parameter (H, H)
    bias_ih_l0, bias_hh_l0 : Parameter (H,)
        Present when ``bias=True``.
    last_omega : float or None
        Ω of the most recent backward pass (with ``omega`` set).
    last_omega_pairs : int or None
    last_omega_grad : Tensor (H, H) or None
        ∂Ω/∂W_rec of the most recent backward pass (not multiplied by α).

    Examples
    --------
    >>> import torch, rnnfast.torch
    >>> rnn = rnnfast.torch.RNN(6, 50, dtype=torch.float64)
    >>> out, h_n = rnn(torch.randn(125, 20, 6, dtype=torch.float64))
    >>> out.shape, h_n.shape
    (torch.Size([125, 20, 50]), torch.Size([1, 20, 50]))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, *, device=None, dtype=None,
                 num_threads: Optional[int] = None, omega: Optional[float] = None,
                 omega_bound: float = _rf.OMEGA_BOUND, **kwargs):
        super().__init__()
        if "proj_size" in kwargs:
            raise UnsupportedError(
                "proj_size: projections exist only for LSTM in torch and are not supported here"
            )
        if kwargs:
            raise TypeError(f"RNN() got unexpected keyword arguments {sorted(kwargs)}")
        # Same validation (and exception types) as torch.nn.RNN for values torch rejects too.
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        for name, v in (("bias", bias), ("batch_first", batch_first),
                        ("bidirectional", bidirectional)):
            if not isinstance(v, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(v).__name__}")
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} should be of type int, got: {type(v).__name__}")
            if v <= 0:
                raise ValueError(f"{name} must be greater than zero, got {v}")
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
                or not 0 <= dropout <= 1):
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             "probability of an element being zeroed")
        # What torch supports and rnnfast does not.
        if num_layers != 1:
            raise UnsupportedError(
                f"num_layers={num_layers}: rnnfast.torch.RNN has one layer; stack several "
                "modules (output of one as input of the next) or use torch.nn.RNN"
            )
        if bidirectional:
            raise UnsupportedError(
                "bidirectional=True: rnnfast.torch.RNN is one-directional; run a second module "
                "on the time-reversed input (input.flip(0)) or use torch.nn.RNN"
            )
        if dropout != 0:
            raise UnsupportedError(
                f"dropout={dropout}: not supported (with num_layers=1 torch.nn.RNN ignores it "
                "too, with a warning); pass dropout=0"
            )
        if device is not None and torch.device(device).type not in ("cpu", "meta"):
            raise UnsupportedError(
                f"device={device!r}: rnnfast.torch.RNN runs on the CPU only; "
                "use torch.nn.RNN on this device"
            )
        if dtype is not None and dtype not in _DTYPES:
            raise UnsupportedError(f"dtype={dtype}: rnnfast supports torch.float32 and torch.float64")
        if num_threads is not None:
            _rf._check_threads(num_threads)

        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = 1
        self.nonlinearity = nonlinearity
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = False
        self.proj_size = 0
        self.num_threads = num_threads
        self._omega = _check_omega(omega)
        self.omega_bound = float(omega_bound)
        if not self.omega_bound >= 0.0:
            raise ValueError(f"omega_bound: expected a non-negative number, got {omega_bound}")
        self._omega_stats = _OmegaStats()

        factory = {"device": device, "dtype": dtype}
        H, I = hidden_size, input_size
        # Registered in torch.nn.RNN's order, so reset_parameters draws the same numbers.
        self.weight_ih_l0 = nn.Parameter(torch.empty((H, I), **factory))
        self.weight_hh_l0 = nn.Parameter(torch.empty((H, H), **factory))
        if bias:
            self.bias_ih_l0 = nn.Parameter(torch.empty(H, **factory))
            self.bias_hh_l0 = nn.Parameter(torch.empty(H, **factory))
        else:
            self.register_parameter("bias_ih_l0", None)
            self.register_parameter("bias_hh_l0", None)
        self.reset_parameters()

    # -- torch.nn.RNN compatibility -----------------------------------------------------------

    def reset_parameters(self) -> None:
        """Every parameter uniform in [-1/√H, 1/√H], as ``torch.nn.RNN`` does."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op (kept so code written for ``torch.nn.RNN`` on cuDNN runs unchanged)."""

    @property
    def all_weights(self) -> list:
        """``[[weight_ih_l0, weight_hh_l0(, bias_ih_l0, bias_hh_l0)]]`` as in ``torch.nn.RNN``."""
        names = ["weight_ih_l0", "weight_hh_l0"] + (["bias_ih_l0", "bias_hh_l0"] if self.bias else [])
        return [[getattr(self, n) for n in names]]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        if self.num_threads is not None:
            s += f", num_threads={self.num_threads}"
        if self._omega is not None:
            s += f", omega={self._omega}"
        return s

    @classmethod
    def from_torch(cls, rnn: nn.RNN, **kwargs) -> "RNN":
        """A module with ``rnn``'s configuration and a copy of its parameters.

        Parameters
        ----------
        rnn : torch.nn.RNN
        **kwargs
            rnnfast-only options (``num_threads``, ``omega``, ``omega_bound``).
        """
        if not isinstance(rnn, nn.RNN):
            raise TypeError(f"rnn: expected a torch.nn.RNN, got {type(rnn).__name__}")
        w = rnn.weight_ih_l0
        new = cls(rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.nonlinearity, rnn.bias,
                  rnn.batch_first, rnn.dropout, rnn.bidirectional, device=w.device,
                  dtype=w.dtype, **kwargs)
        new.load_state_dict(rnn.state_dict())
        new.train(rnn.training)
        return new

    def to_torch(self) -> nn.RNN:
        """A ``torch.nn.RNN`` with this configuration and a copy of the parameters."""
        w = self.weight_ih_l0
        rnn = nn.RNN(self.input_size, self.hidden_size, 1, self.nonlinearity, self.bias,
                     self.batch_first, device=w.device, dtype=w.dtype)
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
        """Ω of the most recent backward pass through this module (None before any)."""
        return self._omega_stats.value

    @property
    def last_omega_pairs(self) -> Optional[int]:
        """Number of (step, sequence) pairs ``last_omega`` averages over."""
        return self._omega_stats.pairs

    @property
    def last_omega_grad(self) -> Optional[torch.Tensor]:
        """∂Ω/∂W_rec (H, H) of the most recent backward pass (not multiplied by α)."""
        return self._omega_stats.grad

    # -- forward ------------------------------------------------------------------------------

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None):
        """Run the recurrence over the whole sequence.

        Parameters
        ----------
        input : Tensor (T, B, I), (B, T, I) with ``batch_first``, or (T, I) unbatched
        hx : Tensor (1, B, H), or (1, H) for unbatched input, optional
            Initial state; zeros when omitted.

        Returns
        -------
        output : Tensor (T, B, H), (B, T, H) with ``batch_first``, or (T, H)
            h_1..h_T.
        h_n : Tensor (1, B, H), or (1, H)
            h_T.
        """
        if isinstance(input, PackedSequence):
            raise UnsupportedError(
                "input: PackedSequence is not supported by rnnfast.torch.RNN; pad the batch "
                "(torch.nn.utils.rnn.pad_packed_sequence) or use torch.nn.RNN"
            )
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input: expected a torch.Tensor, got {type(input).__name__}")
        if hx is not None and not isinstance(hx, torch.Tensor):
            raise TypeError(f"hx: expected a torch.Tensor or None, got {type(hx).__name__}")
        W_in, W_rec = self.weight_ih_l0, self.weight_hh_l0
        b_ih, b_hh = (self.bias_ih_l0, self.bias_hh_l0) if self.bias else (None, None)
        _check_tensor("weight_ih_l0", W_in, None)
        dtype = W_in.dtype
        for name, p in (("weight_hh_l0", W_rec), ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
            if p is not None:
                _check_tensor(name, p, dtype)
        _check_tensor("input", input, dtype)
        if hx is not None:
            _check_tensor("hx", hx, dtype)

        if input.dim() not in (2, 3):
            raise InputError(
                f"input: expected a 3-D tensor ({'B, T' if self.batch_first else 'T, B'}, I) "
                f"or a 2-D unbatched (T, I) tensor, got {input.dim()}-D of shape {tuple(input.shape)}"
            )
        batched = input.dim() == 3
        if batched:
            if hx is not None and hx.dim() != 3:
                raise InputError(f"hx: for batched 3-D input, hx should also be 3-D (1, B, H) "
                                 f"but got {hx.dim()}-D tensor")
            u = input.transpose(0, 1) if self.batch_first else input   # (T, B, I) view
        else:
            if hx is not None and hx.dim() != 2:
                raise InputError(f"hx: for unbatched 2-D input, hx should also be 2-D (1, H) "
                                 f"but got {hx.dim()}-D tensor")
            u = input.unsqueeze(1)                                     # (T, 1, I)
            hx = None if hx is None else hx.unsqueeze(1)               # (1, 1, H)
        T, B, I = u.shape
        H = self.hidden_size
        if I != self.input_size:
            raise InputError(f"input.size(-1) must be equal to input_size. "
                             f"Expected {self.input_size}, got {I}")
        if T == 0 or B == 0:
            raise InputError(f"input: expected at least one time step and one sequence, got "
                             f"T={T}, B={B}")
        if hx is not None and tuple(hx.shape) != (1, B, H):
            want = (1, B, H) if batched else (1, H)
            got = tuple(hx.shape) if batched else (hx.shape[0], hx.shape[2])
            raise InputError(f"hx: expected hidden size {want}, got {got}")
        h0 = None if hx is None else hx[0]                               # (B, H) view

        omega = None if self._omega is None else \
            _OmegaRequest(self._omega, self.omega_bound, self._omega_stats)
        output, h_n = _run(u, h0, W_in, W_rec, b_ih, b_hh, self.nonlinearity, self.num_threads,
                           omega)
        if not batched:
            return output.squeeze(1), h_n.squeeze(1)
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, h_n


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
