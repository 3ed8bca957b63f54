"""RNNModel: a vanilla (Elman) RNN with a readout, on top of the C++ core.

    h_t = σ(W_rec h_{t-1} + W_in u_t + b),  t = 1..T       (rnnfast.forward)
    y   = readout(W_out h + b_out)  at the last step or at every step

Parameters (all one dtype, float32 or float64)::

    W_in  (H, I)   W_rec (H, H)   b (H,)   W_out (O, H)   b_out (O,)
    h0    (H,)     only with h0="learned" (shared by every sequence)

The authors' Theano code uses the transposes: ``W_uh = W_inᵀ``, ``W_hh = W_recᵀ``,
``W_hy = W_outᵀ``; the paper's x_t (formula 2) is the pre-activation, h_t = σ(x_t).

Files written by :meth:`RNNModel.save` are ``.npz`` archives written atomically
(temporary file + ``os.replace``) holding the parameters and a JSON header; they
are validated by :meth:`RNNModel.load`, which raises :class:`CheckpointError` for a
corrupt, truncated or inconsistent file.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import numpy as np

from .. import core as _core
from ..core import ACTIVATIONS
from ..fileio import CheckpointError, read_npz, write_npz
from . import init as _init
from . import losses as _losses

__all__ = ["RNNModel", "LossAndGrad", "CheckpointError", "RECURRENT", "BIASES"]

#: The recurrent weight matrix's name: where Ω's gradient goes and what the non-finite
#: policy "shrink" acts on.
RECURRENT = "W_rec"
#: The bias vectors' names (frozen at zero by the PTB settings).
BIASES = ("b", "b_out")

H0_POLICIES = ("zeros", "learned")
_MODEL_FORMAT = "rnnfast.RNNModel"
_MODEL_VERSION = 1


class LossAndGrad(NamedTuple):
    """What :meth:`RNNModel.loss_and_grad` returns.

    Attributes
    ----------
    loss : float
        Normalised loss (float64 accumulation).
    grads : dict name -> ndarray
        Gradient of the loss for every parameter, same keys/shapes as ``params``.
        Ω's gradient is NOT added (see ``omega_grad``).
    y : ndarray (B, O) or (T, B, O)
        Outputs at the read steps.
    h_last : ndarray (B, H)
        Final hidden state (carry it as ``h0`` for truncated BPTT).
    omega : float or None
        Ω (authors' squared-norm form, averaged over valid pairs), if requested.
    omega_grad : ndarray (H, H) or None
        ∂Ω/∂W_rec with h and ∂E/∂h held fixed (paper's approximation).
    omega_pairs : int or None
        Number of valid (step, example) pairs Ω averaged over.
    """

    loss: float
    grads: dict
    y: np.ndarray
    h_last: np.ndarray
    omega: Optional[float] = None
    omega_grad: Optional[np.ndarray] = None
    omega_pairs: Optional[int] = None


class RNNModel:
    """A vanilla RNN with a linear / softmax / sigmoid readout.

    Parameters
    ----------
    n_in, n_hidden, n_out : int
        I, H, O.
    init : str
        Initialisation scheme (see :mod:`rnnfast.nn.init`): "sigmoid", "basic_tanh",
        "smart_tanh", "orthogonal" or "identity". Ignored when ``params`` is given.
    activation : str or None
        "tanh", "sigmoid", "relu" or "linear"; None takes the scheme's.
    loss : {"softmax_ce", "linear_mse", "sigmoid_bce"}
        Readout + loss kind.
    at : {"last", "all"}
        Where the cost is read.
    normalize : {"step", "sequence", "sum"}
        Loss normalisation (see :mod:`rnnfast.nn.losses`; "step" = authors').
    h0 : {"zeros", "learned"}
        Initial state policy: zeros (authors), or a learned vector shared by all
        sequences (a parameter "h0" (H,), initialised to 0).
    dtype : float32 or float64
    rng : numpy.random.Generator or int or None
        Random source for the initialisation.
    params : dict, optional
        Explicit parameters (copied, validated) instead of an initialisation.
    init_kwargs : dict, optional
        Extra keyword arguments for :func:`rnnfast.nn.init.initialize`.
    """

    def __init__(self, n_in, n_hidden, n_out, *, init="smart_tanh", activation=None,
                 loss="softmax_ce", at="last", normalize="step", h0="zeros",
                 dtype=np.float64, rng=None, params=None, init_kwargs=None):
        _losses.check_loss_options(loss, at, normalize)
        if h0 not in H0_POLICIES:
            raise ValueError(f"h0={h0!r} is unknown; expected one of {H0_POLICIES}")
        if init not in _init.INIT_SCHEMES:
            raise ValueError(f"init scheme {init!r} is unknown; expected one of {_init.INIT_SCHEMES}")
        if activation is None:
            activation = _init.default_activation(init)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is unknown; expected one of {ACTIVATIONS}")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.n_in, self.n_hidden, self.n_out = int(n_in), int(n_hidden), int(n_out)
        self.init = init
        self.activation = activation
        self.loss = loss
        self.at = at
        self.normalize = normalize
        self.h0_policy = h0
        self.dtype = dtype
        if params is None:
            p = _init.initialize(init, self.n_in, self.n_hidden, self.n_out, rng,
                                 dtype=dtype, **(init_kwargs or {}))
            if h0 == "learned":
                p["h0"] = np.zeros(self.n_hidden, dtype)
            self.params = p
        else:
            self.params = {}
            self.set_params(params)

    # ------------------------------------------------------------------ params
    @property
    def param_names(self):
        """Names of the parameters, in a fixed order."""
        names = ("W_in", "W_rec", "b", "W_out", "b_out")
        return names + ("h0",) if self.h0_policy == "learned" else names

    def param_shapes(self):
        """dict name -> expected shape."""
        H, I, O = self.n_hidden, self.n_in, self.n_out
        shapes = {"W_in": (H, I), "W_rec": (H, H), "b": (H,), "W_out": (O, H), "b_out": (O,)}
        if self.h0_policy == "learned":
            shapes["h0"] = (H,)
        return shapes

    def set_params(self, params):
        """Replace all parameters by copies of ``params`` (validated: keys, shapes, dtype)."""
        shapes = self.param_shapes()
        missing = [k for k in shapes if k not in params]
        extra = [k for k in params if k not in shapes]
        if missing or extra:
            raise ValueError(f"params: missing {missing}, unexpected {extra}")
        new = {}
        for k, shape in shapes.items():
            a = np.asarray(params[k])
            if a.shape != shape:
                raise ValueError(f"parameter {k!r} must have shape {shape}, got {a.shape}")
            if not np.issubdtype(a.dtype, np.floating):
                raise TypeError(f"parameter {k!r} must be floating point, got {a.dtype}")
            new[k] = np.array(a, dtype=self.dtype, order="C", copy=True)
        self.params = new

    def config(self):
        """JSON-serialisable constructor arguments (everything but the parameters)."""
        return {
            "n_in": self.n_in, "n_hidden": self.n_hidden, "n_out": self.n_out,
            "init": self.init, "activation": self.activation, "loss": self.loss,
            "at": self.at, "normalize": self.normalize, "h0": self.h0_policy,
            "dtype": self.dtype.name,
        }

    def copy(self):
        """A deep copy."""
        return RNNModel(**self._ctor_config(), params=self.params)

    def _ctor_config(self):
        c = self.config()
        return {k: c[k] for k in c}

    def __repr__(self):
        return (f"RNNModel(n_in={self.n_in}, n_hidden={self.n_hidden}, n_out={self.n_out}, "
                f"activation={self.activation!r}, loss={self.loss!r}, at={self.at!r}, "
                f"h0={self.h0_policy!r}, dtype={self.dtype.name})")

    # ----------------------------------------------------------------- compute
    def _input(self, u):
        u = np.asarray(u)
        if u.ndim != 3 or u.shape[2] != self.n_in:
            raise ValueError(f"u must have shape (T, B, {self.n_in}), got {u.shape}")
        if u.dtype == self.dtype and u.flags.c_contiguous and u.shape[0] >= 1 and u.shape[1] >= 1:
            return u  # the training loop's case: no dtype checks, no copy (runs every update)
        if not (np.issubdtype(u.dtype, np.floating) or np.issubdtype(u.dtype, np.integer)
                or u.dtype == bool):
            raise TypeError(f"u must be numeric, got dtype {u.dtype}")
        if u.shape[0] < 1 or u.shape[1] < 1:
            raise ValueError(f"u must have T >= 1 and B >= 1, got shape {u.shape}")
        return np.ascontiguousarray(u, dtype=self.dtype)

    def initial_state(self, batch_size, h0=None):
        """The (B, H) initial state for a batch, or None for zeros.

        Parameters
        ----------
        batch_size : int
        h0 : ndarray (B, H) or None
            An explicit state (e.g. carried from the previous segment) overrides
            the policy.
        """
        if h0 is not None:
            h0 = np.asarray(h0, dtype=self.dtype)
            if h0.shape != (batch_size, self.n_hidden):
                raise ValueError(f"h0 must have shape ({batch_size}, {self.n_hidden}), got {h0.shape}")
            return np.ascontiguousarray(h0)
        if self.h0_policy == "learned":
            return np.ascontiguousarray(np.broadcast_to(self.params["h0"], (batch_size, self.n_hidden)))
        return None

    def forward(self, u, h0=None, *, keep_x=False, num_threads=None):
        """Run the recurrence (``rnnfast.forward``).

        Parameters
        ----------
        u : ndarray (T, B, I)
        h0 : ndarray (B, H) or None
            Overrides the h0 policy when given.

        Returns
        -------
        The core's forward result (``.h`` (T, B, H), ``.h_last`` (B, H), ...).
        """
        u = self._input(u)
        p = self.params
        return _core.forward(u, p["W_in"], p["W_rec"], p["b"], self.initial_state(u.shape[1], h0),
                                activation=self.activation, keep_x=keep_x, num_threads=num_threads)

    def outputs(self, u, h0=None, *, num_threads=None):
        """Outputs at the read steps (forward only).

        For ``at="last"`` this uses ``rnnfast.final_state``, whose memory does not
        grow with T (long generalisation tests).

        Parameters
        ----------
        u : ndarray (T, B, I)
        h0 : ndarray (B, H) or None

        Returns
        -------
        ndarray (B, O) for at="last", (T, B, O) for at="all": probabilities
        (softmax / sigmoid) or values (linear).
        """
        u = self._input(u)
        p = self.params
        if self.at == "last":
            hT = _core.final_state(u, p["W_in"], p["W_rec"], p["b"],
                                      self.initial_state(u.shape[1], h0),
                                      activation=self.activation, num_threads=num_threads)
            return _losses.readout(hT, p["W_out"], p["b_out"], self.loss,
                                   num_threads=num_threads)
        fwd = self.forward(u, h0, num_threads=num_threads)
        return _losses.readout(fwd.h, p["W_out"], p["b_out"], self.loss, num_threads=num_threads)

    predict = outputs

    def evaluate(self, u, targets, mask=None, h0=None, *, num_threads=None, return_state=False):
        """Loss and outputs without gradients (forward only).

        Parameters
        ----------
        u : ndarray (T, B, I)
        targets : ndarray
            As for :meth:`loss_and_grad`.
        mask : ndarray (T, B) or None
        h0 : ndarray (B, H) or None
            Explicit initial state (overrides the policy).
        return_state : bool
            Also return the final state h_T (B, H).

        Returns
        -------
        (loss, y) : (float, ndarray (B, O) or (T, B, O)), or (loss, y, h_last)
        """
        u = self._input(u)
        p = self.params
        if self.at == "last":
            if mask is not None:
                raise ValueError('mask is only supported with at="all"')
            h = _core.final_state(u, p["W_in"], p["W_rec"], p["b"],
                                     self.initial_state(u.shape[1], h0),
                                     activation=self.activation, num_threads=num_threads)
        else:
            h = self.forward(u, h0, num_threads=num_threads).h
        r = _losses.loss_and_grad(h, p["W_out"], p["b_out"], targets, kind=self.loss,
                                  at=self.at, mask=mask, normalize=self.normalize, grad=False,
                                  num_threads=num_threads)
        if return_state:
            return r.loss, r.y, np.array(h if h.ndim == 2 else h[-1])
        return r.loss, r.y

    def loss_and_grad(self, u, targets, mask=None, *, omega=False, omega_bound=_core.OMEGA_BOUND,
                      h0=None, num_threads=None, workspace=None, omega_alpha=None):
        """Loss and the gradients of all parameters (forward + readout + BPTT).

        Parameters
        ----------
        u : ndarray (T, B, I)
            Inputs (converted to the model dtype).
        targets : ndarray
            softmax_ce: int classes (B,) for at="last", (T, B) for at="all";
            linear_mse / sigmoid_bce: float (B, O) or (T, B, O).
        mask : ndarray (T, B) or None
            Steps whose cost counts (at="all" only).
        omega : bool
            Also compute Ω and ∂Ω/∂W_rec in the backward sweep (fused in C++).
        omega_bound : float
            Pairs with ‖∂E/∂h_{k+1}‖² below it are left out of Ω (authors: 1e-20).
        h0 : ndarray (B, H) or None
            Explicit initial state (overrides the policy; e.g. truncated BPTT).
        workspace : rnnfast.Workspace or None
            Reuse the kernels' output memory across calls (a training loop); the returned
            gradients are then overwritten by the next call with the same workspace.
        omega_alpha : float or None
            With ``omega``: α·∂Ω/∂W_rec already added to the W_rec gradient by the kernels
            (folded into its product; ``omega_grad`` of the result is then None).

        Returns
        -------
        LossAndGrad
        """
        u = self._input(u)
        p = self.params
        T, B = u.shape[:2]
        h0v = self.initial_state(B, h0)
        fwd = _core.forward(u, p["W_in"], p["W_rec"], p["b"], h0v,
                               activation=self.activation, num_threads=num_threads,
                               workspace=workspace)
        r = _losses.loss_and_grad(fwd.h, p["W_out"], p["b_out"], targets, kind=self.loss,
                                  at=self.at, mask=mask, normalize=self.normalize,
                                  num_threads=num_threads)
        kw = ({"omega": True, "omega_bound": omega_bound, "omega_alpha": omega_alpha}
              if omega else {})
        kw.update(num_threads=num_threads, workspace=workspace, input_grad=False)
        if r.dh_last is not None:
            g = _core.backward(fwd, dh_last=r.dh_last, **kw)
        else:
            g = _core.backward(fwd, r.dh, **kw)
        grads = {"W_in": g.W_in, "W_rec": g.W_rec, "b": g.b, "W_out": r.W_out, "b_out": r.b_out}
        if self.h0_policy == "learned" and h0 is None:
            grads["h0"] = g.h0.sum(axis=0)
        elif self.h0_policy == "learned":
            grads["h0"] = np.zeros(self.n_hidden, self.dtype)  # explicit state: h0 unused
        if omega:
            return LossAndGrad(r.loss, grads, r.y, fwd.h_last, float(g.omega), g.omega_grad,
                               int(g.omega_pairs))
        return LossAndGrad(r.loss, grads, r.y, fwd.h_last)

    # -------------------------------------------------------------------- I/O
    def save(self, path):
        """Write the model to ``path`` (.npz) atomically.

        Parameters
        ----------
        path : str or os.PathLike
        """
        meta = {"format": _MODEL_FORMAT, "version": _MODEL_VERSION, "config": self.config()}
        write_npz(path, self.params, meta)

    def state_arrays(self):
        """(config, params) for embedding in a trainer checkpoint."""
        return self.config(), {k: v.copy() for k, v in self.params.items()}

    @classmethod
    def from_config(cls, config, params, source="params"):
        """Build a model from :meth:`config` output and a parameter dict (validated)."""
        if not isinstance(config, dict):
            raise CheckpointError(f"{source}: model config must be a dict")
        try:
            return cls(**config, params=params)
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{source}: model does not fit its header: {e}") from e

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`.

        Raises
        ------
        FileNotFoundError, CheckpointError
            Missing file; corrupt, truncated or inconsistent content.
        """
        meta, arrays = read_npz(path, _MODEL_FORMAT)
        if meta.get("version") != _MODEL_VERSION:
            raise CheckpointError(f"{os.fspath(path)!r}: unsupported model version {meta.get('version')!r}")
        return cls.from_config(meta.get("config"), arrays, source=repr(os.fspath(path)))
