"""rnnfast: fast CPU training of vanilla recurrent networks.

C++ kernels (Eigen + OpenMP) for the forward recurrence and backpropagation through time,
with the methods of Pascanu, Mikolov & Bengio, "On the difficulty of training Recurrent
Neural Networks" (ICML 2013): gradient norm clipping and the Ω regularizer.

The functional core::

    fwd = rnnfast.forward(u, W_in, W_rec, b)          # u (T, B, I) -> fwd.h (T, B, H)
    g = rnnfast.backward(fwd, dh)                     # dh = ∂E/∂h_t (T, B, H)
    g.W_in, g.W_rec, g.b, g.h0, g.u                   # gradients
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from . import _aliases, _core
from .core import (
    ACTIVATIONS,
    OMEGA_BOUND,
    ForwardResult,
    Gradients,
    Workspace,
    backward,
    final_state,
    forward,
    get_num_threads,
    max_num_threads,
    release_memory,
    set_num_threads,
)

try:
    __version__ = _version("rnnfast")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"


_aliases.install()


def build_info() -> dict:
    """How this copy of rnnfast was compiled: compiler, flags, instruction sets, SIMD lanes,
    OpenMP and Eigen versions, and the default thread count."""
    info = dict(_core.build_info())
    info["version"] = __version__
    info["default_threads"] = get_num_threads()
    return info


__all__ = [
    "ACTIVATIONS",
    "OMEGA_BOUND",
    "ForwardResult",
    "Gradients",
    "Workspace",
    "backward",
    "build_info",
    "final_state",
    "forward",
    "get_num_threads",
    "max_num_threads",
    "release_memory",
    "set_num_threads",
    "__version__",
]
