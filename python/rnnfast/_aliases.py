"""Old module paths kept as deprecated aliases for one release: ``import rnnfast.model`` gives
``rnnfast.nn.model`` (the same module object) with a DeprecationWarning."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module -> new module
MOVED = {
    "rnnfast.model": "rnnfast.nn.model",
    "rnnfast.losses": "rnnfast.nn.losses",
    "rnnfast.clipping": "rnnfast.nn.clipping",
    "rnnfast.init": "rnnfast.nn.init",
    "rnnfast.optim": "rnnfast.nn.optim",
    "rnnfast.trainer": "rnnfast.train.trainer",
    "rnnfast.diagnostics": "rnnfast.analysis.diagnostics",
    "rnnfast.dynamics": "rnnfast.analysis.dynamics",
    "rnnfast.reproduce": "rnnfast.experiments",
    "rnnfast.reproduce.sweep": "rnnfast.experiments.sweep",
    "rnnfast.reproduce.synthetic": "rnnfast.experiments.synthetic",
    "rnnfast.reproduce.natural": "rnnfast.experiments.natural",
    "rnnfast.reproduce.cluster": "rnnfast.experiments.cluster",
    "rnnfast.commands": "rnnfast.cli",
    "rnnfast.commands.train": "rnnfast.cli.train",
    "rnnfast.commands.reproduce": "rnnfast.cli.reproduce",
    "rnnfast.commands.figures": "rnnfast.cli.figures",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new):
        self.new = new

    def create_module(self, spec):
        warnings.warn(f"{spec.name} is deprecated; import {self.new}", DeprecationWarning,
                      stacklevel=2)
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec  # the import system set the alias's spec on the module


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        new = MOVED.get(name)
        if new is None:
            return None
        return importlib.util.spec_from_loader(name, _AliasLoader(new))


def install():
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        # first: the path finder would load a second copy of a moved submodule
        sys.meta_path.insert(0, _AliasFinder())


def renamed_argument(old, new):
    """Decorator: the keyword ``old`` of a function is now ``new``; ``old`` is still accepted
    for one release, with a DeprecationWarning."""
    import functools

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got both {old!r} (deprecated) and {new!r}")
                warnings.warn(f"{fn.__name__}({old}=...) is deprecated; use {new}=...",
                              DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return call
    return wrap
