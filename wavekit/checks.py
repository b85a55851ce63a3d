"""Argument checks shared by the public entry points, so one kind of value has one rule and one message."""

from __future__ import annotations

import numbers

import torch


def positive_int(name: str, value: object) -> int:
    """`value` as an int when it is a positive integer (a bool is not); else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)


def usable_device(name: str, value: str | torch.device) -> torch.device:
    """The torch device `value`, checked usable on this machine; else ValueError naming `name`."""
    try:
        device = torch.device(value)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError) as err:  # AssertionError: torch built without CUDA
        reason = str(err).split(". ")[0][:160] or type(err).__name__
        raise ValueError(f"{name}: {value} is not usable here ({reason})") from None
    return device
