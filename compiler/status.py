"""Tile statuses: how a predicate covers a rectangle of (q, k) pairs, and the interval rules
that classify whole grids of rectangles at once."""

from __future__ import annotations

import enum
from typing import Any

import numpy as np


class Status(enum.IntEnum):
    """How a predicate covers a tile of (q, k) pairs."""

    NONE = 0  # no pair allowed: the tile is skipped
    SOME = 1  # some pairs allowed: the tile is visited with a mask
    ALL = 2  # every pair allowed: the tile is visited without a mask


def status_of(all_true: np.ndarray, any_true: np.ndarray) -> np.ndarray:
    """Status codes from two boolean arrays: ALL where all_true, NONE where not any_true."""
    return np.asarray(np.add(np.logical_or(all_true, any_true), all_true, dtype=np.int8))  # NONE 0, SOME 1, ALL 2


def range_status(lo_v: np.ndarray, hi_v: np.ndarray, lo: int | None, hi: int | None) -> np.ndarray:
    """Status of `lo <= x <= hi` when x takes every integer in [lo_v, hi_v]."""
    lo_b = -(2**62) if lo is None else lo
    hi_b = 2**62 if hi is None else hi
    all_true = (lo_v >= lo_b) & (hi_v <= hi_b)
    any_true = (hi_v >= lo_b) & (lo_v <= hi_b)
    return status_of(all_true, any_true)


def mod_status(lo_a: np.ndarray, lo_b: np.ndarray, width: np.ndarray, m: int, r: int) -> np.ndarray:
    """Status of `x mod m == r` when x takes every integer in [lo, lo + width], lo = lo_a + lo_b.

    The low end comes in two parts that broadcast, each reduced modulo m apart: over a grid of
    tiles (lo_a a column, lo_b a row) the only division is per row and per column, not per tile."""
    if m == 1:
        return np.full(np.broadcast(lo_a, lo_b, width).shape, Status.ALL, dtype=np.int8)
    gap = (r - lo_a) % m + (-lo_b) % m  # (r - lo) mod m, plus m when the two parts wrap
    gap = gap - m * (gap >= m)  # the smallest x >= lo with x mod m == r, less lo
    any_true = gap <= width
    all_true = (width == 0) & any_true
    return status_of(all_true, any_true)


def brute_tile(atom: Any, q0, q1, k0, k1) -> np.ndarray:
    """Exact tile status by enumeration, for atoms without a closed form."""
    q0, q1, k0, k1 = np.broadcast_arrays(*(np.asarray(x) for x in (q0, q1, k0, k1)))
    out = np.empty(q0.shape, dtype=np.int8)
    for idx in np.ndindex(q0.shape):
        qs = np.arange(q0[idx], q1[idx] + 1)[:, None]
        ks = np.arange(k0[idx], k1[idx] + 1)[None, :]
        m = atom.holds(qs, ks)
        out[idx] = Status.ALL if m.all() else (Status.SOME if m.any() else Status.NONE)
    return out
