"""The output folder of a command: it records every option in ``options.json``; a rerun into
it takes the options it was not given from there, and is refused when a given option differs
(``--fresh`` starts over). Also which options the user typed, and the clean-up of folders a
failed call created."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from typing import Iterable, List, Optional

from ..errors import UserError
from ..fileio import atomic_write_json

__all__ = ["OPTIONS_FILE", "given_options", "claim", "add_fresh_argument", "discard_created"]

OPTIONS_FILE = "options.json"

# never options of a run: the parser's plumbing and the flags that say how to open the folder
_PLUMBING = {"func", "command", "experiment", "given", "debug", "fresh", "resume", "out",
             "problem"}
# files that say how a run was set up; a folder holding nothing else has no results in it
_SETUP_FILES = {OPTIONS_FILE, "config.json", "sweep.json"}

_created: List[str] = []


def _subparsers(parser):
    yield parser
    for a in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(a, argparse._SubParsersAction):
            for p in a.choices.values():
                yield from _subparsers(p)


def given_options(parser: argparse.ArgumentParser, argv: Iterable[str]) -> set:
    """The destinations of the options typed in ``argv`` (parsed again with every default
    suppressed, so that an option given with its default value still counts as given)."""
    saved = []
    for p in _subparsers(parser):
        saved.append((p, p._defaults, [(a, a.default) for a in p._actions]))
        p._defaults = {}
        for a in p._actions:
            a.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(list(argv))))
    finally:
        for p, defaults, actions in saved:
            p._defaults = defaults
            for a, d in actions:
                a.default = d


def add_fresh_argument(p) -> None:
    p.add_argument("--fresh", action="store_true",
                   help="delete what the output folder holds and start over (by default a "
                        "rerun resumes; it is refused when an option differs)")


def _normal(v):
    return json.loads(json.dumps(v))


def _flag(name):
    return "--" + name.replace("_", "-")


def _show(v):
    if isinstance(v, list):
        return ",".join(map(str, v))
    return "(not set)" if v is None else str(v)


def claim(args, out: str, command: str, *, transient: Iterable[str] = (),
          changeable: Iterable[str] = (), needs_resume: bool = False,
          write: bool = True) -> bool:
    """Open ``out`` for this run of ``command`` (``rnnfast train``, ...).

    A folder that holds ``options.json`` is resumed: the options not given on the command
    line are set from it (every option is remembered), a given option that differs from it
    raises :class:`UserError` naming each such option, unless it is in ``changeable`` (how
    long or where the run goes: its new value is stored). ``transient`` options (how loudly)
    are never stored. ``--fresh`` deletes the folder first. ``needs_resume``: a folder that
    holds a run is resumed only with ``--resume``. Returns True when resuming; creates the
    folder and writes ``options.json`` (unless ``write`` is False).
    """
    transient, changeable = set(transient), set(changeable)
    given = getattr(args, "given", set())
    path = os.path.join(out, OPTIONS_FILE)
    skip = _PLUMBING | transient
    current = {k: _normal(v) for k, v in vars(args).items() if k not in skip}
    stored: Optional[dict] = None
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)["options"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{command}: {path} is unreadable ({e}); --fresh starts over") from None
    if stored is not None and getattr(args, "fresh", False):
        if write:
            shutil.rmtree(out)
        stored = None
    elif stored is None and getattr(args, "resume", False):
        raise UserError(f"{command}: nothing to resume: {path} does not exist")
    if stored is not None:
        if needs_resume and not getattr(args, "resume", False):
            raise UserError(f"{command}: {out} already holds a run; --resume continues it, "
                            "--fresh starts over, or choose another --out")
        diffs = [f"{_flag(k)} {_show(current[k])} (the folder's: {_show(stored[k])})"
                 for k in sorted(given & set(current) & set(stored))
                 if k not in changeable and current[k] != stored[k]]
        if diffs:
            raise UserError(f"{command}: {out} holds a run with other options: "
                            f"{'; '.join(diffs)}. Rerun without them to resume it, add "
                            "--fresh to start over, or choose another --out")
        for k, v in stored.items():
            if k in current and k not in given:
                setattr(args, k, tuple(v) if isinstance(v, list) else v)
                current[k] = v
    if write:
        if not os.path.isdir(out):
            os.makedirs(out)
            _created.append(out)
        from .. import __version__

        atomic_write_json(path, {"command": command, "options": current,
                                 "rnnfast_version": __version__})
    return stored is not None


def discard_created() -> None:
    """Remove the folders this call created when they hold no result (only setup files):
    a call that failed leaves nothing behind."""
    while _created:
        out = _created.pop()
        names = [f for _, _, files in os.walk(out) for f in files]
        if all(n in _SETUP_FILES for n in names):
            shutil.rmtree(out, ignore_errors=True)
