"""Subcommands of the ``rnnfast`` command line; each module exposes ``register(subparsers)``."""
