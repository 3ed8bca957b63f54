"""Reading a public program from a git checkout at a fixed commit (the runners of this folder
store nothing of the programs they run)."""

from __future__ import annotations

import subprocess


def check_checkout(checkout: str, commit: str, repository: str) -> None:
    """SystemExit with what to do when ``checkout`` is not a git directory holding ``commit``."""
    r = subprocess.run(["git", "--git-dir", checkout, "cat-file", "-e", f"{commit}^{{commit}}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(
            f"--checkout {checkout}: not a git directory holding commit {commit} of "
            f"{repository} ({r.stderr.strip() or 'git cat-file failed'}); pass the .git "
            f"folder (or bare repository) of a clone: git clone {repository}")


def git_show(checkout: str, commit: str, path: str) -> bytes:
    """The bytes of ``path`` at ``commit``."""
    return subprocess.run(["git", "--git-dir", checkout, "show", f"{commit}:{path}"],
                          check=True, capture_output=True).stdout
