"""Block sparsity: which (BM x BN) tiles of the attention matrix are empty, partial or full.

Exact, and cheap at long N: every atom classifies a whole grid of tiles at once with
interval arithmetic (`Atom.tile`). A term is full on a tile exactly when all its literals
are, and empty when one of them is; the pattern is full when a term is, empty when all
terms are. What interval arithmetic cannot decide alone (a term with two partial literals
that might be jointly empty, or several partial terms whose union might cover the tile) is
settled by enumerating that tile's pairs, which happens only on the few tiles at the edges
of bands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir import Pattern, Status

_BRUTE_BATCH = 64


@dataclass(frozen=True)
class BlockMap:
    """Tile statuses of a pattern for n_q queries and n_k keys with tiles (bm, bn).

    `status[i, j]` is a Status for query block i (queries i*bm .. min((i+1)*bm, n_q) - 1)
    and key block j. Pairs outside the matrix do not count: a last, short tile is full
    when all of its real pairs are allowed.
    """

    n_q: int
    n_k: int
    bm: int
    bn: int
    status: np.ndarray

    def count(self, status: Status) -> int:
        return int((self.status == status).sum())

    @property
    def density(self) -> float:
        """Fraction of tiles that a kernel must visit."""
        return float((self.status != Status.NONE).mean()) if self.status.size else 0.0

    def ranges(self, qb: int) -> list[tuple[int, int]]:
        """The half-open key-block ranges that query block qb must visit, in order."""
        row = self.status[qb] != Status.NONE
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
        return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]

    def render(self, max_cols: int = 64) -> str:
        """A terminal picture: '#' full, '+' partial, '.' empty (rows are query blocks)."""
        glyph = np.array([".", "+", "#"])
        rows = self.status[:max_cols, :max_cols]
        return "\n".join("".join(glyph[r]) for r in rows)


def _tile_bounds(n: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    start = np.arange(0, n, b, dtype=np.int64)
    return start, np.minimum(start + b, n) - 1


def block_map(pattern: Pattern, n_q: int, bm: int, bn: int, n_k: int | None = None) -> BlockMap:
    """Classify every tile exactly (see the module docstring)."""
    n_k = n_q if n_k is None else n_k
    q0, q1 = _tile_bounds(n_q, bm)
    k0, k1 = _tile_bounds(n_k, bn)
    q0c, q1c, k0r, k1r = q0[:, None], q1[:, None], k0[None, :], k1[None, :]
    shape = (len(q0), len(k0))
    any_all = np.zeros(shape, dtype=bool)
    live_terms = np.zeros(shape, dtype=np.int32)
    exact_some = np.zeros(shape, dtype=bool)
    for term in pattern.terms:
        n_some = np.zeros(shape, dtype=np.int32)
        none = np.zeros(shape, dtype=bool)
        for lit in term.lits:
            s = np.broadcast_to(lit.tile(q0c, q1c, k0r, k1r), shape)
            none |= s == Status.NONE
            n_some += s == Status.SOME
        live = ~none
        any_all |= live & (n_some == 0)
        live_terms += live
        exact_some |= live & (n_some == 1)
    status = np.full(shape, Status.SOME, dtype=np.int8)
    status[live_terms == 0] = Status.NONE
    status[any_all] = Status.ALL
    ambiguous = ~any_all & (live_terms > 0) & ~((live_terms == 1) & exact_some)
    _settle_by_enumeration(pattern, status, ambiguous, q0, q1, k0, k1, bm, bn)
    return BlockMap(n_q, n_k, bm, bn, status)


def _settle_by_enumeration(pattern: Pattern, status: np.ndarray, ambiguous: np.ndarray,
                           q0: np.ndarray, q1: np.ndarray, k0: np.ndarray, k1: np.ndarray,
                           bm: int, bn: int) -> None:
    """Enumerate the pairs of the ambiguous tiles, in batches, and set their exact status."""
    qi, kj = np.nonzero(ambiguous)
    dq = np.arange(bm, dtype=np.int64)[None, :, None]
    dk = np.arange(bn, dtype=np.int64)[None, None, :]
    for s in range(0, len(qi), _BRUTE_BATCH):
        i, j = qi[s:s + _BRUTE_BATCH], kj[s:s + _BRUTE_BATCH]
        q = q0[i][:, None, None] + dq
        k = k0[j][:, None, None] + dk
        real = (q <= q1[i][:, None, None]) & (k <= k1[j][:, None, None])
        allowed = np.asarray(pattern.holds(q, k), dtype=bool) & real
        n_allowed = allowed.sum(axis=(1, 2))
        n_real = real.sum(axis=(1, 2))
        status[i, j] = np.where(n_allowed == n_real, Status.ALL,
                                np.where(n_allowed > 0, Status.SOME, Status.NONE))


def brute_block_map(pattern: Pattern, n_q: int, bm: int, bn: int, n_k: int | None = None) -> BlockMap:
    """The same classification from the dense mask: the reference the tests compare with."""
    n_k = n_q if n_k is None else n_k
    mask = pattern.mask(n_q, n_k)
    nqb, nkb = -(-n_q // bm), -(-n_k // bn)
    status = np.zeros((nqb, nkb), dtype=np.int8)
    for i in range(nqb):
        for j in range(nkb):
            t = mask[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn]
            status[i, j] = Status.ALL if t.all() else (Status.SOME if t.any() else Status.NONE)
    return BlockMap(n_q, n_k, bm, bn, status)
