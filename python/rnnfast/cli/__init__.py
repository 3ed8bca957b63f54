"""The ``rnnfast`` command line: one subcommand per module in :mod:`rnnfast.cli`."""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules of rnnfast.cli; each exposes ``register(subparsers)``.
COMMANDS = ("train", "reproduce", "figures")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="rnnfast",
        description="Fast CPU training of vanilla RNNs, with the gradient clipping and Ω "
                    "regularizer of Pascanu, Mikolov & Bengio (ICML 2013).",
    )
    parser.add_argument("--version", action="version", version=f"rnnfast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"rnnfast.cli.{name}").register(sub)
    return parser


def run_subcommand(name: str, argv: list[str] | None = None) -> int:
    """``rnnfast NAME ARGV...``: what each subcommand module's ``main`` runs
    (``python -m rnnfast.cli.NAME``)."""
    return main([name] + list(sys.argv[1:] if argv is None else argv))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
