"""argparse ``type=`` validators shared by the subcommands: each raises
``argparse.ArgumentTypeError`` with the expected form and the value given."""

from __future__ import annotations

import argparse
import math


def _number(s, cast, ok, what):
    try:
        v = cast(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
    return v


def positive_int(s) -> int:
    return _number(s, int, lambda v: v >= 1, "a positive integer")


def nonneg_int(s) -> int:
    return _number(s, int, lambda v: v >= 0, "a non-negative integer")


def positive_float(s) -> float:
    return _number(s, float, lambda v: math.isfinite(v) and v > 0, "a positive number")


def nonneg_float(s) -> float:
    return _number(s, float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
