"""The functional core: forward recurrence and backpropagation through time on NumPy arrays.

Model (Elman form), for t = 1..T::

    x_t = W_rec h_{t-1} + W_in u_t + b        (pre-activation; the paper's x_t)
    h_t = σ(x_t)

The paper's formula 2, ``x_t = W_rec σ(x_{t-1}) + W_in u_t + b``, is the same network: with
``h_t = σ(x_t)`` it reads ``x_t = W_rec h_{t-1} + W_in u_t + b``. Keep ``keep_x=True`` in
:func:`forward` to get the paper's x_t; :attr:`Gradients.dx` is ∂E/∂x_t.

Shapes: ``u`` (T, B, I), ``W_in`` (H, I), ``W_rec`` (H, H), ``b`` (H,), ``h0`` (B, H),
``h`` (T, B, H) — T time steps, B sequences, I inputs, H hidden units. The authors' Theano code
multiplies row vectors from the right (``h·W_hh``), so their ``W_hh`` is our ``W_rec.T``.

Arrays are float32 or float64 (all of one dtype). C-contiguous arrays are used without a copy,
read-only ones included (``np.load(..., mmap_mode="r")``, ``np.frombuffer``); others (Fortran
order, strided views, misaligned) are copied once. An input that shares memory with an output
of the call (``h0`` = ``h_last`` of an earlier call on the same :class:`Workspace`) is copied
before the outputs are written.

Threads: a call runs on at most :func:`max_num_threads` threads (the number of processors, or
OpenMP's default team when it is larger, at most ``OMP_THREAD_LIMIT``); a larger ``num_threads``
is clamped to it. In a ``fork()`` child of a process that has run the kernels on several
threads, every call runs on one thread: GCC's OpenMP runtime cannot start a team there (the
child would wait forever for the parent's threads). ``spawn`` / ``forkserver`` children are
not affected. The kernels release the GIL, so several Python threads may run them at once.

Resources: before allocating, a call computes the memory it needs (outputs, copies of inputs,
the kernels' scratch) and raises ``MemoryError`` naming the size when it exceeds the machine's
physical memory (for a call over 1 GiB, the memory available now). A long call checks for
Ctrl-C between chunks of time steps (every ~10⁸ flops) and raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

from . import _core

__all__ = [
    "ACTIVATIONS",
    "OMEGA_BOUND",
    "ForwardResult",
    "Gradients",
    "Workspace",
    "backward",
    "final_state",
    "forward",
    "get_num_threads",
    "linear",
    "linear_grads",
    "max_num_threads",
    "readout_loss",
    "release_memory",
    "set_num_threads",
    "sgd_step",
    "squared_norms",
]

#: Activation names, in the order the kernels number them.
ACTIVATIONS = ("tanh", "sigmoid", "relu", "linear")
#: Ω leaves out the pairs whose ‖∂E/∂h‖² is below this (the authors' guard against 0/0).
OMEGA_BOUND = 1e-20
_SCHEDULES = {"auto": 0, "serial": 1, "batch": 2, "hidden": 3}

_default_threads: int | None = None


#: The most threads a call gets in this process (see max_num_threads); read once.
_THREAD_CAP = int(_core.thread_cap())


def set_num_threads(n: int | None) -> None:
    """Set the default thread count of the kernels (``None``: OpenMP's default, i.e.
    ``OMP_NUM_THREADS`` or the number of cores). A per-call ``num_threads`` overrides it.
    A positive int; values above :func:`max_num_threads` are clamped to it."""
    global _default_threads
    _default_threads = None if n is None else _check_threads(n)


def get_num_threads() -> int:
    """The thread count a call without ``num_threads`` uses (at most :func:`max_num_threads`)."""
    n = _default_threads if _default_threads is not None else int(_core.max_threads())
    return min(n, max_num_threads())


def max_num_threads() -> int:
    """The most threads one call runs on: the number of processors this process may use, or
    OpenMP's default team (``OMP_NUM_THREADS``) when that is larger, and at most
    ``OMP_THREAD_LIMIT``; 1 in a ``fork()`` child of a process that ran the kernels on several
    threads (OpenMP cannot start a team there). Larger requests are clamped to it."""
    return int(_core.thread_cap())


def release_memory() -> int:
    """Return to the operating system the memory kept from dropped output arrays (see
    :class:`Workspace`); returns the number of bytes released."""
    return int(_core.release_memory())


def _check_threads(n) -> int:
    """``num_threads`` validated (a positive int or None) and clamped to the threads a call can
    get (the kernels clamp again, to 1 in a fork() child)."""
    if type(n) is int and n >= 1:  # the common case, without the slow ABC check below
        return n if n <= _THREAD_CAP else _THREAD_CAP
    if n is None:
        return get_num_threads()
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"num_threads: expected a positive int, got {n!r}")
    if n < 1:
        raise ValueError(f"num_threads: expected a positive int, got {n}")
    return min(int(n), _THREAD_CAP)


def _check_workspace(workspace) -> None:
    if workspace is not None and not isinstance(workspace, Workspace):
        raise TypeError(f"workspace: expected an rnnfast.Workspace or None, got "
                        f"{type(workspace).__name__}")


def _activation_code(activation) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    return ACTIVATIONS.index(activation)


def _schedule_code(schedule) -> int:
    if schedule not in _SCHEDULES:
        raise ValueError(f"_schedule: expected one of {tuple(_SCHEDULES)}, got {schedule!r}")
    return _SCHEDULES[schedule]


def _checked(name: str, a, shape_doc: str, ndim: int, dtype=None, ref: str = "u") -> np.ndarray:
    """``a`` as a float array (an ndarray is not copied) after checking its ``ndim`` and, if
    given, its ``dtype`` (that of the call's argument ``ref``); :func:`_readable` makes the
    kernels' copy once every argument is checked and the call's memory is known to fit."""
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(
            f"{name}: dtype {a.dtype} differs from {ref}'s {np.dtype(dtype)}; "
            "all arrays of one call must share one dtype"
        )
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected shape {shape_doc}, got shape {a.shape}")
    return a


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf names: no physical bound
        return None


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), in bytes; None elsewhere."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


_PHYSICAL_MEMORY = _physical_memory()
_SMALL_CALL = 1 << 26  # bytes: calls below it are never checked (the common case, no cost)
_LARGE_CALL = 1 << 30  # bytes: calls above it are checked against the memory available now


def _check_memory(nbytes: int, what: str) -> None:
    """Raise MemoryError naming ``nbytes`` when a call that needs that much cannot fit: more
    than the machine's physical memory or, above 1 GiB, more than is available now."""
    if nbytes <= _SMALL_CALL:
        return
    limit, kind = _PHYSICAL_MEMORY, "physical memory"
    if nbytes > _LARGE_CALL:
        available = _available_memory()
        if available is not None and (limit is None or available < limit):
            limit, kind = available, "memory available now"
    if limit is not None and nbytes > limit:
        raise MemoryError(f"{what}: needs {nbytes / 2**30:.3g} GiB ({nbytes} bytes), more than "
                          f"the {limit / 2**30:.3g} GiB of {kind}")


def _scratch_bytes(T, B, I, H, itemsize, threads, backward=False, omega=False) -> int:
    """An upper bound of the memory the kernels allocate for one call besides its outputs:
    the packed weights (columns rounded up to whole panels) and, for the backward, per-thread
    norms, Ω's (H, H) and (T, B, H) scratch and the weight-gradient product's buffers."""
    packed = (H + I) * (H + 64) * itemsize
    if not backward:
        return packed
    TB = T * B
    per_thread = (1024 * (H + I + 64) + 64 * H * itemsize + (1 << 18)) + 2 * TB * 8
    extra = (H * H + TB * H) * itemsize if omega else 0
    return 2 * packed + threads * per_thread + TB * 8 + extra


def _readable(arrays: list, nbytes: int, what: str, workspace=None, slots=()) -> list:
    """``arrays`` (None entries kept) as the kernels read them: each array itself when it is
    C-contiguous and aligned, writable or not, else a C-contiguous copy; and a copy of an
    array that is a view of the memory of a ``workspace`` slot in ``slots`` (the
    :class:`ForwardResult` keeps its inputs for :func:`backward`: ``h0 = prev.h_last`` must
    not change when this call writes ``h``; views of a slot have the slot's buffer as
    ``base``, NumPy collapses chains of views). Before copying, the memory guard checks the
    copies plus ``nbytes`` (the call's outputs and scratch). One pass, one ``flags`` each:
    this runs at every call."""
    copy = None
    for i, a in enumerate(arrays):
        if a is None:
            continue
        f = a.flags
        if not (f.c_contiguous and f.aligned):
            copy = (copy or []) + [i]
        elif workspace is not None and a.base is not None:
            raw = workspace._raw
            if any(a.base is raw.get(n) for n in slots):
                copy = (copy or []) + [i]
    if copy:
        nbytes += sum(arrays[i].nbytes for i in copy)
    if nbytes > _SMALL_CALL:
        _check_memory(nbytes, what)
    if copy:
        arrays = list(arrays)
        for i in copy:
            arrays[i] = np.array(arrays[i], order="C")
    return arrays


def _empty(shape, dtype, workspace: "Workspace | None" = None, name: str = "") -> np.ndarray:
    """An uninitialised C-contiguous array whose data start on a 64-byte boundary.

    The kernels' vectorised loops peel a few scalar iterations until the output is aligned,
    so an output's address would otherwise change the last bits of the result from one call
    to the next. Aligned outputs make every result a function of the inputs alone (which a
    bit-for-bit resume of training relies on). With a workspace, the memory of its slot
    ``name`` is reused."""
    if workspace is not None:
        return workspace._array(name, shape, dtype)
    return _core.empty(shape, dtype)


def _empty_all(specs, dtype, workspace: "Workspace | None" = None) -> list:
    """:func:`_empty` for several ``(name, shape)`` at once: one call into the kernels' module
    (six separate calls took 8-15% of a ~40 µs backward call)."""
    if workspace is not None:
        return [workspace._array(name, shape, dtype) for name, shape in specs]
    return _core.empty_many([shape for _, shape in specs], dtype)


class Workspace:
    """Output memory reused by repeated :func:`forward` / :func:`backward` calls.

    A training loop allocates the same (T, B, H) outputs at every update. Without a
    workspace, the kernels' module keeps the memory of output arrays that were dropped (up
    to 256 MiB, blocks up to 64 MiB) and hands it to the next array of the same size, so
    fresh memory is not page-faulted in at every call as long as the previous results are
    released. A workspace goes further: its arrays are reused even while the previous results
    are still referenced, with no allocation at all (it grows to the largest shape seen).

    The arrays returned by a call that used a workspace are overwritten by the next call
    that uses it: copy whatever must outlive the next call. One workspace serves one thread.

    Inputs may be arrays a previous call returned from the workspace (``h0=prev.h_last``):
    the kernels copy an input that shares memory with an output before writing.
    """

    def __init__(self):
        self._raw: dict[str, np.ndarray] = {}  # 64-byte aligned bytes per slot
        self._views: dict[str, np.ndarray] = {}  # the last array handed out per slot

    def _array(self, name: str, shape, dtype) -> np.ndarray:
        view = self._views.get(name)
        if view is not None and view.shape == shape and view.dtype == dtype:
            return view
        dtype = np.dtype(dtype)
        need = math.prod(shape) * dtype.itemsize
        raw = self._raw.get(name)
        if raw is None or raw.nbytes < need:
            raw = self._raw[name] = _core.empty((max(need, 1),), np.dtype(np.uint8))
        view = self._views[name] = raw[:need].view(dtype).reshape(shape)
        return view

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(r.nbytes for r in self._raw.values())


def _check_lengths(lengths, T: int, B: int) -> np.ndarray:
    """``lengths`` as a 1-D int64 array (B,) with every value in [1, T], in any order."""
    a = lengths if isinstance(lengths, np.ndarray) else np.asarray(lengths)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"lengths: expected an array of integers, got dtype {a.dtype}")
    if a.shape != (B,):
        raise ValueError(f"lengths: expected shape (B,) = ({B},), got {a.shape}")
    lo, hi = int(a.min()), int(a.max())
    if lo < 1 or hi > T:
        raise ValueError(f"lengths: expected values in [1, T] = [1, {T}] (empty sequences are "
                         f"not allowed), got min {lo}, max {hi}")
    return np.array(a, dtype=np.int64, copy=True)


class _Ragged:
    """How the kernels see a batch with variable lengths. The kernels run step t on the
    first n_t = #{b : len_b > t} rows, so they take the lengths sorted non-increasing
    (PackedSequence order). Other orders are permuted into that order (stable sort) before the
    kernels and back after: one copy of the (T, B, ·) arrays each way.
    ``kernel`` is None when every length is T (the call is exactly the one without lengths)."""

    __slots__ = ("lengths", "kernel", "perm", "inv")

    def __init__(self, lengths: np.ndarray, T: int):
        self.lengths = lengths
        self.perm = self.inv = None
        if int(lengths.min()) == T:
            self.kernel = None
        elif np.all(lengths[:-1] >= lengths[1:]):
            self.kernel = lengths
        else:
            self.perm = np.argsort(-lengths, kind="stable")
            self.inv = np.empty_like(self.perm)
            self.inv[self.perm] = np.arange(len(self.perm))
            self.kernel = np.ascontiguousarray(lengths[self.perm])

    def to_kernel(self, a, axis: int):
        """``a`` with its sequences in the kernels' order (None stays None)."""
        return a if a is None or self.perm is None else np.take(a, self.perm, axis=axis)

    def from_kernel(self, a, axis: int):
        return a if a is None or self.inv is None else np.take(a, self.inv, axis=axis)


def _expect_shape(name: str, a: np.ndarray, shape: tuple, shape_doc: str) -> None:
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape_doc} = {shape}, got {a.shape}")


class ForwardResult:
    """The hidden states of a forward pass and what BPTT needs from it.

    Attributes
    ----------
    h : ndarray (T, B, H)
        Hidden states h_1..h_T.
    x : ndarray (T, B, H) or None
        Pre-activations x_1..x_T (the paper's x_t), when ``keep_x=True``.
    activation : str
    lengths : ndarray (B,) int64 or None
        The ``lengths`` of :func:`forward` (a copy), or None. :func:`backward` uses them.
    """

    __slots__ = ("h", "x", "activation", "u", "W_in", "W_rec", "b", "_h0", "num_threads",
                 "lengths", "_ragged", "_kernel")

    def __init__(self, h, x, activation, u, W_in, W_rec, b, h0, num_threads, ragged=None,
                 kernel=None):
        self.h = h
        self.x = x
        self.activation = activation
        self.u = u
        self.W_in = W_in
        self.W_rec = W_rec
        self.b = b
        self._h0 = h0
        self.num_threads = num_threads
        self._ragged = ragged
        self.lengths = None if ragged is None else ragged.lengths
        # (u, h0, h) in the kernels' sequence order, when lengths are permuted; else None.
        self._kernel = kernel

    @classmethod
    def rebuild(cls, h, u, W_in, W_rec, b, h0=None, *, activation: str = "tanh", lengths=None,
                num_threads: int | None = None) -> "ForwardResult":
        """The ForwardResult of an earlier :func:`forward` call, from its arrays: for a caller
        that kept only arrays between the passes (a PyTorch custom operator's backward
        receives tensors only). The arrays must be those of that call, unmodified.

        Parameters
        ----------
        h : array (T, B, H)
            ``forward(...).h``.
        u : array (T, B, I)
        W_in : array (H, I)
        W_rec : array (H, H)
        b : array (H,)
        h0 : array (B, H), optional
        lengths : array (B,), optional
            As given to :func:`forward`.
        """
        _activation_code(activation)
        T, B = h.shape[:2]
        ragged = kernel = None
        if lengths is not None:
            ragged = _Ragged(_check_lengths(lengths, T, B), T)
            if ragged.perm is not None:  # not PackedSequence order: the kernels' copies
                kernel = (ragged.to_kernel(u, 1), ragged.to_kernel(h0, 0),
                          ragged.to_kernel(h, 1))
        return cls(h, None, activation, u, W_in, W_rec, b, h0, _check_threads(num_threads),
                   ragged=ragged, kernel=kernel)

    @property
    def h0(self) -> np.ndarray:
        """Initial state (B, H); zeros when none was given."""
        if self._h0 is None:
            return np.zeros(self.h.shape[1:], dtype=self.h.dtype)
        return self._h0

    @property
    def h_last(self) -> np.ndarray:
        """Final state h_T (B, H): pass it as ``h0`` of the next segment (truncated BPTT).
        With ``lengths``: row b is h at step len_b (index len_b − 1), a new array."""
        if self.lengths is None:
            return self.h[-1]
        return self.h[self.lengths - 1, np.arange(self.h.shape[1])]

    @property
    def dtype(self) -> np.dtype:
        return self.h.dtype

    def __repr__(self) -> str:
        T, B, H = self.h.shape
        return f"ForwardResult(T={T}, B={B}, H={H}, activation={self.activation!r}, dtype={self.dtype})"


class Gradients:
    """Gradients from :func:`backward`, each shaped like its argument of :func:`forward`.

    Attributes
    ----------
    W_in : (H, I)
    W_rec : (H, H)
    b : (H,)
    h0 : (B, H)
    u : (T, B, I) or None
    dx : (T, B, H)
        ∂E/∂x_t, the error at the pre-activations.
    omega, omega_grad, omega_pairs
        With ``omega=True``: Ω (float), ∂Ω/∂W_rec (H, H) and the number of (step, sequence)
        pairs Ω averages over; ``None`` otherwise. The gradients above never include Ω.
    dh_norm : (T, B) float64 or None
        With ``profile=True``: ‖∂E/∂h_t‖, the norm of the total back-propagated error at every
        step of every sequence.
    """

    __slots__ = ("W_in", "W_rec", "b", "h0", "u", "dx", "omega", "omega_grad", "omega_pairs",
                 "dh_norm")

    def __init__(self, *, W_in=None, W_rec=None, b=None, h0=None, u=None, dx=None, omega=None,
                 omega_grad=None, omega_pairs=None, dh_norm=None):
        # Plain assignments: this runs at every backward call (a loop over the slots cost
        # ~2.5 µs of a ~10 µs call overhead at tiny sizes).
        self.W_in, self.W_rec, self.b, self.h0, self.u, self.dx = W_in, W_rec, b, h0, u, dx
        self.omega, self.omega_grad, self.omega_pairs = omega, omega_grad, omega_pairs
        self.dh_norm = dh_norm

    def __repr__(self) -> str:
        extra = f", omega={self.omega:.6g}" if self.omega is not None else ""
        return f"Gradients(W_rec {self.W_rec.shape}, dtype={self.W_rec.dtype}{extra})"


def forward(u, W_in, W_rec, b, h0=None, *, activation: str = "tanh", keep_x: bool = False,
            num_threads: int | None = None, workspace: Workspace | None = None,
            lengths=None, _schedule: str = "auto") -> ForwardResult:
    """Run the recurrence h_t = σ(W_rec h_{t-1} + W_in u_t + b) over all T steps.

    Parameters
    ----------
    u : array (T, B, I)
        Inputs. T ≥ 1 and B ≥ 1; I may be 0 (an input-less network).
    W_in : array (H, I)
    W_rec : array (H, H)
    b : array (H,)
    h0 : array (B, H), optional
        Initial state; zeros when omitted. For a long sequence cut into segments (truncated
        BPTT), pass the previous segment's ``h_last``.
    activation : {"tanh", "sigmoid", "relu", "linear"}
    keep_x : bool
        Also store the pre-activations x_t (one more (T, B, H) array).
    num_threads : int, optional
        Threads for this call (default: :func:`get_num_threads`): a positive int, clamped to
        :func:`max_num_threads` (1 in a fork() child of a process that ran several). Small
        problems use one.
    workspace : Workspace, optional
        Reuse the memory of the previous call with this workspace for ``h`` and ``x``.
    lengths : 1-D integer array-like (B,), optional
        Variable sequence lengths (a padded batch, as for PyTorch's ``PackedSequence``), each
        in [1, T], in any order. Sequence b runs steps t < len_b exactly as alone;
        ``h[t, b]`` (and ``x[t, b]``) is 0 for t ≥ len_b, and ``h_last[b]`` is h at step
        len_b. The padding costs nothing: in PackedSequence order (non-increasing lengths)
        step t runs only the first #{b : len_b > t} rows; other orders are permuted into it
        and back (a stable sort; one copy of u and h each way). All lengths equal to T give
        exactly the result without lengths.

    Returns
    -------
    ForwardResult
        ``.h`` (T, B, H); keeps references to the arguments for :func:`backward` — do not
        modify them in place between the two calls.
    """
    act = _activation_code(activation)
    threads = _check_threads(num_threads)
    schedule = _schedule_code(_schedule)
    _check_workspace(workspace)
    u = _checked("u", u, "(T, B, I)", 3)
    dtype = u.dtype
    T, B, I = u.shape
    if T == 0 or B == 0:
        raise ValueError(f"u: expected at least one time step and one sequence, got shape {u.shape}")
    W_rec = _checked("W_rec", W_rec, "(H, H)", 2, dtype)
    H = W_rec.shape[0]
    if H == 0 or W_rec.shape != (H, H):
        raise ValueError(f"W_rec: expected a square (H, H) matrix with H ≥ 1, got shape {W_rec.shape}")
    W_in = _checked("W_in", W_in, "(H, I)", 2, dtype)
    _expect_shape("W_in", W_in, (H, I), "(H, I)")
    b = _checked("b", b, "(H,)", 1, dtype)
    _expect_shape("b", b, (H,), "(H,)")
    if h0 is not None:
        h0 = _checked("h0", h0, "(B, H)", 2, dtype)
        _expect_shape("h0", h0, (B, H), "(B, H)")
    ragged = None if lengths is None else _Ragged(_check_lengths(lengths, T, B), T)
    itemsize = dtype.itemsize
    # The kernels copy an input inside a workspace output too, but only for the call.
    u, W_in, W_rec, b, h0 = _readable(
        [u, W_in, W_rec, b, h0],
        (2 if keep_x else 1) * T * B * H * itemsize + _scratch_bytes(T, B, I, H, itemsize, threads),
        "forward", workspace, ("h", "x"))
    h = _empty((T, B, H), dtype, workspace, "h")
    x = _empty((T, B, H), dtype, workspace, "x") if keep_x else None
    if ragged is None or ragged.perm is None:
        _core.forward(u, W_in, W_rec, b, h0, h, x, act, threads, schedule,
                      None if ragged is None else ragged.kernel)
        return ForwardResult(h, x, activation, u, W_in, W_rec, b, h0, threads, ragged)
    # Unsorted lengths: the kernels run the sequences sorted by length, h and x come back in
    # the caller's order; the sorted u, h0, h stay with the result for the backward.
    uk, h0k = ragged.to_kernel(u, 1), ragged.to_kernel(h0, 0)
    _core.forward(uk, W_in, W_rec, b, h0k, h, x, act, threads, schedule, ragged.kernel)
    hk = h
    h, x = ragged.from_kernel(hk, 1), ragged.from_kernel(x, 1)
    return ForwardResult(h, x, activation, u, W_in, W_rec, b, h0, threads, ragged, (uk, h0k, hk))


def backward(fwd: ForwardResult, dh=None, *, dh_last=None, omega: bool = False,
             omega_bound: float = OMEGA_BOUND, profile: bool = False, input_grad: bool = True,
             num_threads: int | None = None, workspace: Workspace | None = None,
             lengths=None, omega_alpha: float | None = None,
             _schedule: str = "auto") -> Gradients:
    """Backpropagation through time for the network of ``fwd``.

    Parameters
    ----------
    fwd : ForwardResult
        From :func:`forward`.
    dh : array (T, B, H), optional
        The direct loss gradient ∂⁺E/∂h_t at every step (what the loss at step t alone gives,
        not the back-propagated total).
    dh_last : array (B, H), optional
        The direct gradient at the last step only: the cheap form for a loss that reads h_T
        alone (no (T, B, H) array of zeros). Added to ``dh[-1]`` when both are given.
    omega : bool
        Also compute the regularizer Ω of Pascanu et al. (2013, eq. 9-10) in the authors'
        form, fused into the same backward sweep: for every step t and sequence,
        r = ‖∂E/∂h_t · ∂h_t/∂h_{t-1}‖² / ‖∂E/∂h_t‖² and Ω is the mean of (r − 1)² over the
        pairs with ‖∂E/∂h_t‖² ≥ ``omega_bound``. ``omega_grad`` is ∂Ω/∂W_rec with h and
        ∂E/∂h held constant (the paper's approximation). Add ``α·omega_grad`` to the W_rec
        gradient yourself (before clipping, as the authors do).
    omega_alpha : float, optional
        With ``omega=True``: add ``omega_alpha·∂Ω/∂W_rec`` to ``g.W_rec`` in the kernels instead
        of returning ∂Ω/∂W_rec (``g.omega_grad`` is then None; ``g.omega`` and
        ``g.omega_pairs`` are still given). The cheap form for a training update: the Ω term
        is folded into ∂E/∂W_rec's product, Σ_t a_tᵀ (h_{t-1} + α c_t v_t), so Ω needs no
        product of its own (equal to adding ``omega_alpha * omega_grad`` yourself, to float
        rounding). Ignored (no Ω) without ``omega=True``.
    profile : bool
        Also return ``dh_norm`` (T, B): ‖∂E/∂h_t‖ at every step, the gradient-flow profile.
    input_grad : bool
        Compute ``g.u`` = ∂E/∂u (default). A training update that does not need it passes
        False: ``g.u`` is then None, and W_in is not packed a second time.
    num_threads : int, optional
        As in :func:`forward`: a positive int, clamped to :func:`max_num_threads`.
    workspace : Workspace, optional
        Reuse the memory of the previous call with this workspace for the gradients.
    lengths : 1-D integer array-like (B,), optional
        The backward always uses ``fwd.lengths`` (the ``lengths`` of :func:`forward`); passing
        them again is allowed, passing different ones (or any when the forward had none) is
        an error. With lengths, only steps t < len_b of sequence b contribute: ``dh[t, b]``
        for t ≥ len_b is ignored, ``dh_last[b]`` is the gradient at h of step len_b, and every
        gradient equals that of running each sequence alone at its own length (``dx``,
        ``u`` and ``dh_norm`` are 0 at padded steps; Ω counts the valid steps only).

    Returns
    -------
    Gradients
    """
    if not isinstance(fwd, ForwardResult):
        raise TypeError(f"fwd: expected the ForwardResult of rnnfast.forward, got {type(fwd).__name__}")
    threads = _check_threads(num_threads)
    schedule = _schedule_code(_schedule)
    _check_workspace(workspace)
    T, B, H = fwd.h.shape
    I = fwd.u.shape[2]
    dtype = fwd.h.dtype
    if dh is None and dh_last is None:
        raise ValueError("backward: give dh (T, B, H) and/or dh_last (B, H)")
    ragged = fwd._ragged
    if lengths is not None:
        lengths = _check_lengths(lengths, T, B)
        if ragged is None or not np.array_equal(lengths, ragged.lengths):
            raise ValueError("lengths: differ from the lengths of the forward (fwd.lengths = "
                             f"{fwd.lengths}); backward uses fwd's, pass them or nothing")
    if dh is not None:  # shape first: a wrong broadcast view must not be copied
        dh = _checked("dh", dh, "(T, B, H)", 3, dtype)
        _expect_shape("dh", dh, (T, B, H), "(T, B, H) of fwd")
    if dh_last is not None:
        dh_last = _checked("dh_last", dh_last, "(B, H)", 2, dtype)
        _expect_shape("dh_last", dh_last, (B, H), "(B, H) of fwd")
    omega_bound = float(omega_bound)
    if not omega_bound >= 0.0:
        raise ValueError(f"omega_bound: expected a non-negative number, got {omega_bound}")
    alpha = 0.0
    if omega and omega_alpha is not None:
        alpha = float(omega_alpha)
        if not math.isfinite(alpha):
            raise ValueError(f"omega_alpha: expected a finite number, got {omega_alpha}")
    fold = omega and alpha != 0.0  # α·∂Ω/∂W_rec into g.W_rec: no omega_grad array
    itemsize = dtype.itemsize
    outputs = (T * B * H + (T * B * I if input_grad else 0) + H * I + H * H + H + B * H
               + (H * H if omega else 0)) * itemsize + (T * B * 8 if profile else 0)
    dh, dh_last = _readable([dh, dh_last],
                            outputs + _scratch_bytes(T, B, I, H, itemsize, threads, True, omega),
                            "backward")
    klen = None if ragged is None else ragged.kernel
    u, h0, h = fwd.u, fwd._h0, fwd.h
    if fwd._kernel is not None:  # unsorted lengths: the sequences in the kernels' order
        u, h0, h = fwd._kernel
        dh, dh_last = ragged.to_kernel(dh, 1), ragged.to_kernel(dh_last, 0)

    specs = [("dW_in", (H, I)), ("dW_rec", (H, H)), ("db", (H,)), ("dh0", (B, H)),
             ("dx", (T, B, H))] + ([("du", (T, B, I))] if input_grad else [])
    dW_in, dW_rec, db, dh0, dx, *du = _empty_all(specs, dtype, workspace)
    du = du[0] if input_grad else None
    g = Gradients(W_in=dW_in, W_rec=dW_rec, b=db, h0=dh0, u=du, dx=dx)
    omega_grad = _empty((H, H), dtype, workspace, "omega_grad") if omega and not fold else None
    dh_norm = np.empty((T, B), np.float64) if profile else None
    total, pairs = _core.backward(
        u, fwd.W_in, fwd.W_rec, h0, h, dh, dh_last, g.dx, g.W_in, g.W_rec, g.b,
        g.h0, g.u, omega_grad, omega_bound, dh_norm, _activation_code(fwd.activation), threads,
        schedule, klen, alpha,
    )
    if fwd._kernel is not None:  # back to the caller's order
        g.dx, g.u, g.h0 = ragged.from_kernel(g.dx, 1), ragged.from_kernel(g.u, 1), ragged.from_kernel(g.h0, 0)
        dh_norm = ragged.from_kernel(dh_norm, 1)
    if omega:
        g.omega = total / pairs if pairs > 0 else 0.0
        g.omega_grad = omega_grad
        g.omega_pairs = int(pairs)
    g.dh_norm = dh_norm
    return g


def final_state(u, W_in, W_rec, b, h0=None, *, activation: str = "tanh",
                num_threads: int | None = None, chunk_elements: int = 1 << 20,
                lengths=None) -> np.ndarray:
    """h_T of the recurrence, without storing all states: memory does not grow with T.

    Runs the sequence in time chunks of about ``chunk_elements`` state values (T_c·B·H),
    carrying the state across chunks. Same arguments as :func:`forward`; returns (B, H).
    With ``lengths``, row b is h at step len_b (``forward(...).h_last``).
    """
    u = _checked("u", u, "(T, B, I)", 3)
    T, B, _ = u.shape
    W_rec_arr = np.asarray(W_rec)
    H = W_rec_arr.shape[0] if W_rec_arr.ndim == 2 else 1
    step = max(1, min(T, int(chunk_elements) // max(1, B * H)))
    if lengths is not None and T > 0 and B > 0:
        lengths = _check_lengths(lengths, T, B)
        if step < T:
            return _final_state_ragged(u, W_in, W_rec, b, h0, lengths, step, activation,
                                       num_threads)
        return np.array(forward(u, W_in, W_rec, b, h0, activation=activation,
                                num_threads=num_threads, lengths=lengths).h_last, copy=True)
    h = h0
    for s in range(0, T, step):
        h = forward(u[s:s + step], W_in, W_rec, b, h, activation=activation,
                    num_threads=num_threads).h_last
    if h is None:  # T == 0: let forward raise its error
        forward(u, W_in, W_rec, b, h0, activation=activation, num_threads=num_threads)
    return np.array(h, copy=True)


def _final_state_ragged(u, W_in, W_rec, b, h0, lengths, step, activation, num_threads):
    """final_state with lengths, in chunks of ``step`` steps: each chunk runs the sequences not
    yet finished, and their states replace those rows."""
    T, B, _ = u.shape
    h = None
    for s in range(0, T, step):
        rows = np.flatnonzero(lengths > s)
        if rows.size == 0:
            break
        n = min(step, T - s)
        hs = None
        if h is not None:
            hs = h[rows]
        elif h0 is not None:
            hs = np.asarray(h0)[rows]
        out = forward(u[s:s + n][:, rows], W_in, W_rec, b, hs, activation=activation,
                      num_threads=num_threads, lengths=np.minimum(lengths[rows] - s, n)).h_last
        if h is None:
            h = (np.zeros((B, out.shape[1]), out.dtype) if h0 is None
                 else np.array(h0, dtype=out.dtype, copy=True))
        h[rows] = out
    return h


def linear(x, W, b=None, *, num_threads: int | None = None) -> np.ndarray:
    """The readout's product z = x Wᵀ + b over all rows, on the kernels' threads.

    Parameters
    ----------
    x : array (N, K)
        N rows (e.g. the T·B hidden states of a batch), K features.
    W : array (O, K)
    b : array (O,), optional
    num_threads : int, optional
        As for :func:`forward` (small products use one).

    Returns
    -------
    ndarray (N, O)
        Each element is one thread's sum in a fixed order: the same for every thread count.
    """
    threads = _check_threads(num_threads)
    x = _checked("x", x, "(N, K)", 2)
    W = _checked("W", W, "(O, K)", 2, x.dtype, ref="x")
    _expect_shape("W", W, (W.shape[0], x.shape[1]), "(O, K)")
    if b is not None:
        b = _checked("b", b, "(O,)", 1, x.dtype, ref="x")
        _expect_shape("b", b, (W.shape[0],), "(O,)")
        b = np.ascontiguousarray(b)
    return _core.linear(np.ascontiguousarray(x), np.ascontiguousarray(W), b, threads)


def linear_grads(dz, x, W, *, num_threads: int | None = None) -> tuple:
    """Gradients of :func:`linear`'s product given ∂E/∂z: (∂E/∂x, ∂E/∂W) = (dz W, dzᵀ x).

    Parameters
    ----------
    dz : array (N, O)
    x : array (N, K)
    W : array (O, K)
    num_threads : int, optional

    Returns
    -------
    (ndarray (N, K), ndarray (O, K))
        (∂E/∂b is ``dz.sum(axis=0)``.) The same for every thread count.
    """
    threads = _check_threads(num_threads)
    dz = _checked("dz", dz, "(N, O)", 2)
    x = _checked("x", x, "(N, K)", 2, dz.dtype, ref="dz")
    W = _checked("W", W, "(O, K)", 2, dz.dtype, ref="dz")
    N, O = dz.shape
    _expect_shape("x", x, (N, x.shape[1]), "(N, K)")
    _expect_shape("W", W, (O, x.shape[1]), "(O, K)")
    return tuple(_core.linear_grads(np.ascontiguousarray(dz), np.ascontiguousarray(x),
                                    np.ascontiguousarray(W), threads))


_LOSS_CODES = {"softmax_ce": 0, "sigmoid_bce": 1, "linear_mse": 2}


def readout_loss(kind, z, targets=None, weights=None, *, scale=1.0, grad=True,
                 num_threads: int | None = None) -> tuple:
    """The readout's loss of scores z in one pass, on the kernels' threads.

    Parameters
    ----------
    kind : {"softmax_ce", "sigmoid_bce", "linear_mse"}
        Outputs and per-row loss (see :mod:`rnnfast.nn.losses`).
    z : array (N, O)
        Scores (:func:`linear`'s output).
    targets : array or None
        ``softmax_ce``: integer classes (N,); otherwise values (N, O) of z's dtype. None: the
        outputs only (``grad`` must be False).
    weights : array (N,) or None
        Non-negative row weights (a mask); a row of weight 0 reads no target (any value,
        e.g. a padding class of -1), adds no loss and gets a zero gradient.
    scale : float
        Factor of the gradient (the normalisation, e.g. 1/N).
    grad : bool
        Also ∂/∂z of ``scale · Σ_n w_n loss_n``.
    num_threads : int, optional
        As for :func:`forward` (small problems use one).

    Returns
    -------
    (float, ndarray (N, O), ndarray (N, O) or None)
        ``Σ_n w_n loss_n`` (float64, rows added in order: the same for every thread count),
        the outputs (softmax / sigmoid probabilities; z itself for ``linear_mse``) and the
        gradient.
    """
    if kind not in _LOSS_CODES:
        raise ValueError(f"kind: expected one of {tuple(_LOSS_CODES)}, got {kind!r}")
    threads = _check_threads(num_threads)
    z = _checked("z", z, "(N, O)", 2)
    N, O = z.shape
    if targets is not None:
        t = np.asarray(targets)
        if kind == "softmax_ce":
            if t.dtype.kind not in "iu":
                raise TypeError(f"targets: expected integer classes, got dtype {t.dtype}")
            _expect_shape("targets", t, (N,), "(N,)")
            targets = np.ascontiguousarray(t, dtype=np.int64)
        else:
            t = _checked("targets", t, "(N, O)", 2, z.dtype, ref="z")
            _expect_shape("targets", t, (N, O), "(N, O)")
            targets = np.ascontiguousarray(t)
    elif grad:
        raise ValueError("grad=True needs targets")
    if weights is not None:
        w = np.asarray(weights)
        _expect_shape("weights", w, (N,), "(N,)")
        weights = np.ascontiguousarray(w, dtype=np.float64)
        if not (np.all(np.isfinite(weights)) and np.all(weights >= 0)):
            raise ValueError("weights: expected finite, non-negative values")
    z = np.ascontiguousarray(z)
    if kind == "linear_mse" and targets is None:
        return 0.0, z, None  # the outputs are z itself
    total, y, dz = _core.readout_loss(_LOSS_CODES[kind], z, targets, weights, float(scale),
                                      bool(grad), threads)
    return total, (z if kind == "linear_mse" else y), dz


def _readout_pass(kind: str, x: np.ndarray, W: np.ndarray, b: np.ndarray, targets, weights,
                  scale: float, grad: bool, threads: int) -> tuple:
    """:func:`linear`, :func:`readout_loss` and :func:`linear_grads` in a row, for a caller that
    has already checked their arguments (rnnfast.nn.losses: x (N, K), W (O, K), b (O,) of one
    float dtype; targets: C-contiguous int64 classes (N,) or values (N, O) of that dtype;
    float64 weights (N,) or None; ``threads`` from :func:`_check_threads`). The same kernels
    and results as the three public calls, without their three rounds of checks (4 µs of the
    readout's 18 at the paper's temporal-order shape). Returns ``(total, y, dz, dx, dW)``;
    the last three are None without ``grad``."""
    x, W = np.ascontiguousarray(x), np.ascontiguousarray(W)
    z = _core.linear(x, W, np.ascontiguousarray(b), threads)
    total, y, dz = _core.readout_loss(_LOSS_CODES[kind], z, targets, weights, float(scale),
                                      bool(grad), threads)
    y = z if kind == "linear_mse" else y
    if not grad:
        return total, y, None, None, None
    dx, dW = _core.linear_grads(dz, x, W, threads)
    return total, y, dz, dx, dW


def sgd_step(params, grads, lr, *, num_threads=None) -> None:
    """``p -= lr * g`` in place for each parameter and its gradient, in one pass on the kernels'
    threads, rounded as NumPy rounds that expression (``lr·g`` first), so bit for bit the same.

    Parameters
    ----------
    params, grads : sequences of arrays
        Pairs of the same shape (parameters: NumPy arrays, updated in place). C-contiguous
        float32 / float64 pairs of one dtype are updated by the kernel; any other pair by
        NumPy (the same result).
    lr : float
        The learning rate, converted to each parameter's dtype.
    num_threads : int, optional
        Threads for large parameters (default :func:`get_num_threads`).
    """
    params = params if type(params) is list else list(params)
    grads = grads if type(grads) is list else list(grads)
    if len(params) != len(grads):
        raise ValueError(f"sgd_step: {len(params)} parameters but {len(grads)} gradients")
    n = _check_threads(num_threads)
    try:
        return _core.sgd_step(params, grads, float(lr), n)  # the common case
    except TypeError:
        pass
    for p, g in zip(params, grads):
        if not isinstance(p, np.ndarray):  # (a copy would be updated and dropped)
            raise TypeError(f"sgd_step: parameters are updated in place and must be NumPy "
                            f"arrays, got {type(p).__name__}")
        if np.shape(g) != p.shape:
            raise ValueError(f"sgd_step: gradient of shape {np.shape(g)} for a parameter of "
                             f"shape {p.shape}")
        try:
            _core.sgd_step([p], [g], float(lr), n)
        except TypeError:
            p -= p.dtype.type(lr) * np.asarray(g)


def squared_norms(arrays) -> list:
    """Σ x² of each array, accumulated in float64: the pieces of Algorithm 1's gradient norm.

    Parameters
    ----------
    arrays : sequence of arrays
        Any shapes. float32 / float64 arrays are read in place (C-contiguous ones without a
        copy); any other dtype is converted to float64 first.

    Returns
    -------
    list of float
        One sum per array, in a fixed order of additions (a function of the array alone).
    """
    arrays = arrays if type(arrays) is list else list(arrays)
    try:
        return _core.squared_norms(arrays)  # the common case: contiguous float arrays
    except TypeError:
        pass
    out = []
    for a in arrays:
        x = np.asarray(a)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        out.append(_core.squared_norms([np.ascontiguousarray(x)])[0])
    return out
