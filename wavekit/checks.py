"""Argument checks shared by the public entry points, so one kind of value has one rule and one message."""

from __future__ import annotations

import numbers


def positive_int(name: str, value: object) -> int:
    """`value` as an int when it is a positive integer (a bool is not); else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)
