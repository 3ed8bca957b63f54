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


def test_readme_training_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    train = [b for b in blocks if "rt.build(" in b]
    assert train, "README has no example calling rnnfast.train.build"
    monkeypatch.chdir(tmp_path)  # it writes run/checkpoint.npz and run/history.*
    namespace = {}
    exec(compile(train[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    result = namespace["result"]
    assert result.updates >= 500 and result.stopped in ("solved", "max_updates")
    assert (tmp_path / "run" / "checkpoint.npz").exists()
    assert (tmp_path / "run" / "history.json").exists()
