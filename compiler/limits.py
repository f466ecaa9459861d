"""The largest problems the analyses work on: `attnc analyze` and `attnc simulate` refuse
larger ones with a clear error instead of running out of memory or time.

This module needs nothing but Python (the simulator also runs from a bare source tree on a
GPU machine, bench/calibrate.py, without the front end).
"""

from __future__ import annotations

MAX_ANALYSED_LENGTH = 2**20
"""Longest sequence the analyses and the simulator work at (1m tokens): their block maps and
cache vectors grow with the length (a few GiB of memory at the limit)."""

MAX_BATCH = 2**16
"""Largest batch the simulator predicts for."""

MAX_SIMULATED_ROWS = 2**32
"""Largest batch x heads x N the simulator predicts for: it schedules every query block of
every (batch, head) pair (2**32 is, for instance, batch 32 x 128 heads x 1m tokens)."""


def bound_problem(name: str, value: int, lo: int, hi: int) -> str | None:
    """Why `value` cannot be `name` (outside lo..hi, both included), or None."""
    if not lo <= value <= hi:
        return f"{name} must be between {lo} and {hi:,}, got {value}"
    return None
