"""The README's functional-core example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_core_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    core = [b for b in blocks if "rnnfast.forward(" in b]
    assert core, "README has no example calling rnnfast.forward"
    namespace = {}
    exec(compile(core[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["g"].W_rec.shape == (namespace["H"], namespace["H"])
    assert namespace["g"].omega is not None
