"""The rnnfast command line: one subcommand per module of rnnfast.cli."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

#: Modules of rnnfast.cli; each exposes ``register(subparsers)``.
COMMANDS = ("train", "reproduce", "figures", "data")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: stop, keep what has finished, say how to resume."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="rnnfast",
        description="Fast CPU training of vanilla RNNs, with the gradient clipping and Ω "
                    "regularizer of Pascanu, Mikolov & Bengio (ICML 2013).",
    )
    parser.add_argument("--version", action="version", version=f"rnnfast {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (default: one line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"rnnfast.cli.{name}").register(sub)
    return parser


def run_subcommand(name: str, argv: list[str] | None = None) -> int:
    """``rnnfast NAME ARGV...``: what each subcommand module's ``main`` runs
    (``python -m rnnfast.cli.NAME``)."""
    return main([name] + list(sys.argv[1:] if argv is None else argv))


_terminated = [False]


def terminated() -> bool:
    """Whether this call got SIGTERM (a command that stops on KeyboardInterrupt and returns
    normally exits with 143 then, not 130)."""
    return _terminated[0]


def _on_sigterm(signum, frame):
    _terminated[0] = True
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    from ..errors import UserError
    from .outdir import discard_created, given_options

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = given_options(parser, argv)
    try:
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave SIGTERM alone
        old = None
    name = f"rnnfast {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        print(f"{name}: {'terminated' if isinstance(e, Terminated) else 'interrupted'}",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except (UserError, OSError) as e:
        discard_created()
        if args.debug:
            raise
        msg = str(e)
        print(msg if msg.startswith("rnnfast ") else f"{name}: error: {msg}", file=sys.stderr)
        return 2 if isinstance(e, UserError) else 1
    except BaseException:
        discard_created()
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
