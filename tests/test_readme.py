"""The README as a new user reads it: every ```python block runs as written (the slow ones
shortened: RNNFAST_README_FAST=0 runs them at full length), the two set-up commands, the
CPU-only torch install, the data download, no development paths or history."""

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)
FAST = os.environ.get("RNNFAST_README_FAST", "1") != "0"
#: smaller numbers for the slow snippets (the README's own numbers when FAST is off)
SHORTER = {"max_updates=2_000": "max_updates=300", "Progress(2_000)": "Progress(300)",
           "every=500": "every=100", "every=1_000": "every=150"}


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("i", range(len(BLOCKS)), ids=lambda i: f"block{i}")
def test_every_readme_python_block_runs(i, tmp_path, monkeypatch):
    code = BLOCKS[i]
    if "import torch" in code:
        pytest.importorskip("torch")
    if FAST:
        for old, new in SHORTER.items():
            code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)  # snippets may write files (run/checkpoint.npz, ...)
    namespace = {"__name__": "__readme__"}
    exec(compile(code, f"{README}:block{i}", "exec"), namespace)  # noqa: S102 - our README
    if "rnnfast.forward(" in code:
        assert namespace["g"].W_rec.shape == (namespace["H"], namespace["H"])
        assert namespace["g"].omega is not None
    if "rt.build(" in code:
        assert namespace["result"].stopped in ("solved", "max_updates")
        assert (tmp_path / "run" / "checkpoint.npz").exists()
        assert (tmp_path / "run" / "history.json").exists()


def test_readme_tells_a_new_user_what_they_need():
    assert 'pip install ".[progress,plot]" && rnnfast reproduce synthetic' in TEXT
    assert re.search(r'^pip install "\.\[test\]" && pytest$', TEXT, re.M)  # .ci/run greps it
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in TEXT
    assert "rnnfast data download" in TEXT and "RNNFAST_DATA" in TEXT
    assert "## Reproduction status" in TEXT
    for stale in ("../shared/data", "this session", "sgd-cr", "SGD+C"):
        assert stale not in TEXT, stale
    assert (ROOT / "CHANGELOG.md").exists()
    assert "/rnnfast-reproduce/" in (ROOT / ".gitignore").read_text().split()
