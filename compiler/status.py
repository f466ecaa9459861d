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


def range_status(lo_a: Any, lo_b: Any, hi_a: Any, hi_b: Any, lo: int | None, hi: int | None) -> np.ndarray:
    """Status of `lo <= x <= hi` when x takes every integer in [lo_a + lo_b, hi_a + hi_b] (arrays
    that broadcast, on a tile grid a column and a row: no integer array per tile is built)."""
    lo, hi = -(2**62) if lo is None else lo, 2**62 if hi is None else hi
    return status_of((lo_a >= lo - lo_b) & (hi_a <= hi - hi_b), (hi_a >= lo - hi_b) & (lo_a <= hi - lo_b))


def mod_status(lo_a: Any, lo_b: Any, width_a: Any, width_b: Any, m: int, r: int) -> np.ndarray:
    """Status of `x mod m == r` when x takes every integer in [lo_a + lo_b, lo_a + lo_b + width_a
    + width_b] (arrays that broadcast, on a tile grid a column and a row): each part is reduced
    mod m apart, and per tile only adds and compares run, in the narrowest integer type."""
    if m == 1:
        return np.full(np.broadcast(lo_a, lo_b, width_a, width_b).shape, Status.ALL, dtype=np.int8)
    width_a, width_b = np.asarray(width_a), np.asarray(width_b)
    bound = max(2 * m, int(np.abs(width_a).max(initial=0)) + int(np.abs(width_b).max(initial=0)))
    dtype = np.int16 if bound < 2**15 else np.int32 if bound < 2**31 else np.int64
    gap = np.asarray(((r - np.asarray(lo_a)) % m).astype(dtype) + ((-np.asarray(lo_b)) % m).astype(dtype))
    np.subtract(gap, m, out=gap, where=gap >= m)  # the smallest x >= lo with x mod m == r, less lo
    width = width_a.astype(dtype) + width_b.astype(dtype)
    hit = gap <= width
    return status_of((width == 0) & hit, hit)


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
