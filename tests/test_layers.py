"""The package's layers import one way: kernels -> model pieces -> training -> tasks, data and
analysis -> experiments -> command line and plots. Every import statement of every module
(also those inside functions) is parsed; a module may import its own layer or lower ones."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "python" / "rnnfast"

#: module prefix -> layer (the longest matching prefix wins)
LAYERS = {
    "rnnfast": 0, "rnnfast._core": 0, "rnnfast.core": 0, "rnnfast.fileio": 0,
    "rnnfast._aliases": 0, "rnnfast.errors": 0,
    "rnnfast.nn": 1,
    "rnnfast.train": 2, "rnnfast.torch": 2,
    "rnnfast.tasks": 3, "rnnfast.data": 3, "rnnfast.analysis": 3,
    "rnnfast.experiments": 4,
    "rnnfast.cli": 5, "rnnfast.plots": 5,
}


def layer(module):
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def module_name(path):
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path, source=None):
    """Absolute names of the rnnfast modules a file imports (``source``: its text, else read)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    source = path.read_text(encoding="utf-8") if source is None else source
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from . import x" may name a submodule: check it, not only the package
            out += [f"{mod}.{a.name}" if a.name != "*" else mod for a in node.names]
    return [m for m in out if m == "rnnfast" or m.startswith("rnnfast.")]


MODULES = sorted(p for p in PKG.rglob("*.py"))


def test_every_module_is_in_a_layer():
    assert MODULES
    for p in MODULES:
        layer(module_name(p))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_flow_downwards(path):
    me = module_name(path)
    if me == "rnnfast._aliases":
        return  # the deprecated aliases name moved modules as strings only
    bad = [m for m in imports(path) if layer(m) > layer(me)]
    assert not bad, f"{me} (layer {layer(me)}) imports higher layers: {bad}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_imports_a_deprecated_path(path):
    from rnnfast._aliases import MOVED

    if module_name(path) == "rnnfast._aliases":
        return
    old = [m for m in imports(path) if m in MOVED or m.rpartition(".")[0] in MOVED]
    assert not old, f"{module_name(path)} imports deprecated paths: {old}"


def test_the_checker_sees_an_upward_import():
    f = PKG / "nn" / "model.py"
    src = f.read_text(encoding="utf-8") + "\n\ndef _x():\n    from ..train import engine\n"
    found = imports(f, src)
    assert "rnnfast.train.engine" in found
    assert [m for m in found if layer(m) > layer("rnnfast.nn.model")] == ["rnnfast.train.engine"]
