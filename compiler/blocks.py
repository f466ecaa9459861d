"""Block sparsity: which (BM x BN) tiles of the attention matrix are empty, partial or full.

Exact, and cheap at long N: every atom classifies a whole grid of tiles at once with
interval arithmetic (`Atom.tile`). A term is full on a tile exactly when all its literals
are, and empty when one of them is; the pattern is full when a term is, empty when all
terms are. What interval arithmetic cannot decide alone (a term with two partial literals
that might be jointly empty, or several partial terms whose union might cover the tile) is
settled cheaply where possible: the tile's corners and 60 fixed pseudo-random points are
probed, and one allowed plus one forbidden probe proves the tile partial. Only the rest are
enumerated pair by pair, which happens on few tiles at the edges of bands. A grid
neighbourhood is classified from per-query key lists (each query reads at most prod(kernel)
grid keys) rather than tile by tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np

from .ir import Lit, Neighborhood, Pattern, Status, axis_neighbour, status_of

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


_PROBES = 60
_RNG_SEED = 20240607


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
            s = np.broadcast_to(_lit_tile(lit, q0c, q1c, k0r, k1r, n_q, n_k, bm, bn), shape)
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
    ambiguous &= ~_probe_partial(pattern, ambiguous, q0, q1, k0, k1)
    _settle_by_enumeration(pattern, status, ambiguous, q0, q1, k0, k1, bm, bn)
    return BlockMap(n_q, n_k, bm, bn, status)


def _lit_tile(lit: Lit, q0, q1, k0, k1, n_q: int, n_k: int, bm: int, bn: int) -> np.ndarray:
    if isinstance(lit.atom, Neighborhood):
        s = _neighborhood_tiles(lit.atom, n_q, n_k, bm, bn)
        return (2 - s).astype(np.int8) if lit.negated else s
    return lit.tile(q0, q1, k0, k1)


def _probe_partial(pattern: Pattern, ambiguous: np.ndarray, q0, q1, k0, k1) -> np.ndarray:
    """Ambiguous tiles where some probe is allowed and another forbidden: certainly partial."""
    out = np.zeros(ambiguous.shape, dtype=bool)
    qi, kj = np.nonzero(ambiguous)
    if len(qi) == 0:
        return out
    rng = np.random.default_rng(_RNG_SEED)
    fq = np.concatenate([[0.0, 0.0, 1.0, 1.0], rng.random(_PROBES)])[None, :]
    fk = np.concatenate([[0.0, 1.0, 0.0, 1.0], rng.random(_PROBES)])[None, :]
    for s in range(0, len(qi), 4096):
        i, j = qi[s:s + 4096], kj[s:s + 4096]
        rows = (q1[i] - q0[i])[:, None]
        cols = (k1[j] - k0[j])[:, None]
        q = q0[i][:, None] + np.rint(fq * rows).astype(np.int64)
        k = k0[j][:, None] + np.rint(fk * cols).astype(np.int64)
        allowed = np.asarray(pattern.holds(q, k), dtype=bool)
        out[i, j] = allowed.any(axis=1) & ~allowed.all(axis=1)
    return out


def _neighborhood_tiles(nb: Neighborhood, n_q: int, n_k: int, bm: int, bn: int) -> np.ndarray:
    """Exact tile statuses of one neighbourhood atom, from allowed-pair counts per tile."""
    nqb, nkb = -(-n_q // bm), -(-n_k // bn)
    rows = np.minimum(np.arange(nqb) * bm + bm, n_q) - np.arange(nqb) * bm
    cols = np.minimum(np.arange(nkb) * bn + bn, n_k) - np.arange(nkb) * bn
    counts = np.zeros((nqb, nkb), dtype=np.int64)
    p, g = nb.prefix, math.prod(nb.dims)
    # text rows read every key; every row reads the text keys
    text_rows = np.zeros(nqb, dtype=np.int64)
    np.add.at(text_rows, np.arange(min(p, n_q)) // bm, 1)
    counts += text_rows[:, None] * cols[None, :]
    text_cols = np.zeros(nkb, dtype=np.int64)
    np.add.at(text_cols, np.arange(min(p, n_k)) // bn, 1)
    counts += (rows - text_rows)[:, None] * text_cols[None, :]
    # grid rows: the product of the axes' allowed coordinates
    gq = np.arange(max(0, min(n_q - p, g)), dtype=np.int64)
    if len(gq):
        strides = [math.prod(nb.dims[i + 1:]) for i in range(len(nb.dims))]
        offsets = np.zeros((len(gq), 1), dtype=np.int64)
        valid = np.ones((len(gq), 1), dtype=bool)
        for s, length, kk, dl, c in zip(strides, nb.dims, nb.kernel, nb.dilation, nb.causal):
            x = (gq // s) % length
            y = np.arange(length)
            table = np.asarray(axis_neighbour(y[:, None], y[None, :], length, kk, dl, c), dtype=bool)
            width = int(table.sum(axis=1).max()) if length else 0
            ys = np.full((length, max(width, 1)), -1, dtype=np.int64)
            for xv in range(length):
                hits = np.flatnonzero(table[xv])
                ys[xv, :len(hits)] = hits
            choice = ys[x]  # (queries, width)
            offsets = (offsets[:, :, None] + s * choice[:, None, :]).reshape(len(gq), -1)
            valid = (valid[:, :, None] & (choice[:, None, :] >= 0)).reshape(len(gq), -1)
        keys = offsets + p
        valid &= keys < n_k
        qb = ((gq + p) // bm)[:, None]
        idx = (np.broadcast_to(qb, keys.shape)[valid] * nkb + keys[valid] // bn)
        counts += np.bincount(idx, minlength=nqb * nkb).reshape(nqb, nkb)
    area = rows[:, None] * cols[None, :]
    return status_of(counts == area, counts > 0)


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
