"""Block sparsity of grid patterns in tile order (compiler/tiling.py's GridTiling).

The tiled block map classifies every (query tile, key tile) pair of the grid part of a
pattern, with both sides in tile order: query tile i holds the grid tokens of slots
i*BM .. (i+1)*BM - 1 of `GridTiling.q_positions()`, key tile j those of `k_positions()`.
Padding slots (a tile that hangs over the grid) hold no token and are never allowed, so a
tile with padding is never ALL: the kernel masks it. Prefix tokens stay out of the map
(the kernel handles them in natural order); the map reports how many allowed pairs they
carry.

Exact and fast by separability. A term that is one neighbourhood allows a pair when every
axis allows its coordinates, and a tile pair is a box on every axis, so its status is the
product of per-axis statuses. A union of such terms is settled the same way: per axis, the
pairs of coordinates of a tile pair carry a bitmask (which terms allow them); the tile pair
is NONE when no combination of the axes' masks shares a bit, ALL when every combination
does, else SOME. Terms with other literals (`& causal`, `| global(G)`) are bounded on the
natural positions' hull of each tile; the few tiles that stays ambiguous are probed and
then enumerated.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from .ir import Lit, Neighborhood, Pattern, Status, Term, axis_neighbour, axis_window, status_of
from .tiling import GridTiling

_PROBES = 48
_RNG_SEED = 20250611
_BATCH = 32


@dataclass(frozen=True)
class TiledBlockMap:
    """Statuses of the grid part of a pattern in tile order, and what the prefix carries."""

    tiling: GridTiling
    status: np.ndarray  # (query tiles, key tiles) of Status
    prefix_pairs: int  # allowed pairs with a prefix query or a prefix key (natural order)

    @property
    def bm(self) -> int:
        return math.prod(self.tiling.q_tile)

    @property
    def bn(self) -> int:
        return math.prod(self.tiling.k_tile)

    def count(self, status: Status) -> int:
        return int((self.status == status).sum())

    @property
    def visited(self) -> int:
        """Tile pairs with at least one allowed pair: the ones a kernel must visit."""
        return int((self.status != Status.NONE).sum())

    @property
    def density(self) -> float:
        """Fraction of tile pairs that a kernel must visit."""
        return self.visited / self.status.size if self.status.size else 0.0


# ---------------------------------------------------------------- per-axis tables


def _axis_table(length: int, nb: Neighborhood, axis: int, rows: int, cols: int) -> np.ndarray:
    """allowed[x, y] on one axis for coordinates 0..rows-1 and 0..cols-1 (padding False)."""
    x = np.arange(rows)[:, None]
    y = np.arange(cols)[None, :]
    ok = np.asarray(axis_neighbour(x, y, length, *axis_window(nb, axis)), dtype=bool)
    return ok & (x < length) & (y < length)


def _union_status(nbs: list[Neighborhood], tiling: GridTiling) -> np.ndarray:
    """Exact statuses of a union of neighbourhoods over tile pairs (the module docstring)."""
    nq, nk = tiling.tiles(tiling.q_tile), tiling.tiles(tiling.k_tile)
    state: dict[int, np.ndarray] = {-1: np.ones((1, 1), dtype=bool)}  # -1: every bit
    for axis, length in enumerate(tiling.dims):
        tq, tk = tiling.q_tile[axis], tiling.k_tile[axis]
        masks = np.zeros((nq[axis] * tq, nk[axis] * tk), dtype=np.int64)
        for bit, nb in enumerate(nbs):
            masks |= _axis_table(length, nb, axis, nq[axis] * tq, nk[axis] * tk).astype(np.int64) << bit
        blocks = masks.reshape(nq[axis], tq, nk[axis], tk)
        present = {int(v): (blocks == v).any(axis=(1, 3)) for v in np.unique(masks)}
        last = axis == len(tiling.dims) - 1  # then only whether a combination is zero matters
        nxt: dict[int, np.ndarray] = {}
        for v, s in state.items():
            joined: dict[int, np.ndarray] = {}  # this axis's tables ORed by the key they give with v
            for w, p in present.items():
                key = int(v & w != 0) if last else v & w
                joined[key] = joined[key] | p if key in joined else p
            for key, p in joined.items():  # s x (p1 | p2) = (s x p1) | (s x p2): one outer product per key
                both = (s[:, None, :, None] & p[None, :, None, :]).reshape(s.shape[0] * p.shape[0], -1)
                nxt[key] = nxt[key] | both if key in nxt else both
        state = {v: s for v, s in nxt.items() if s.any()} or {0: np.zeros_like(next(iter(nxt.values())))}
    shape = next(iter(state.values())).shape
    zero = state.get(0, np.zeros(shape, dtype=bool))
    nonzero = np.zeros(shape, dtype=bool)
    for v, s in state.items():
        if v != 0:
            nonzero |= s
    return status_of(~zero, nonzero)


# ---------------------------------------------------------------- tile hulls in natural order


def _hulls(tiling: GridTiling, tile: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per tile (in tile order), the lowest and highest natural position of its real tokens."""
    counts = tiling.tiles(tile)
    idx = np.indices(counts).reshape(len(counts), -1)
    strides = np.array([math.prod(tiling.dims[a + 1 :]) for a in range(len(tiling.dims))])
    lo = idx * np.array(tile)[:, None]
    hi = np.minimum(lo + np.array(tile)[:, None], np.array(tiling.dims)[:, None]) - 1
    return tiling.prefix + strides @ lo, tiling.prefix + strides @ hi


def _pure(term: Term) -> Neighborhood | None:
    """The neighbourhood of a term that is exactly one positive neighbourhood literal."""
    if len(term.lits) == 1 and not term.lits[0].negated and isinstance(term.lits[0].atom, Neighborhood):
        return term.lits[0].atom
    return None


def _lit_status(lit: Lit, tiling: GridTiling, hulls, padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A literal's statuses over tile pairs (padding slots forbidden) and where SOME is exact.

    A neighbourhood is exact. Other literals are classified on the hull of the tiles'
    natural positions: NONE and ALL there hold for the tile, SOME is only a bound; a
    negated neighbourhood and an ALL on a tile pair with padding are bounds too.
    """
    if isinstance(lit.atom, Neighborhood):
        s = _union_status([lit.atom], tiling)
        if not lit.negated:
            return s, np.ones(s.shape, dtype=bool)
        s = (2 - s).astype(np.int8)
    else:
        q0, q1, k0, k1 = hulls
        s = np.asarray(lit.tile(q0[:, None], q1[:, None], k0[None, :], k1[None, :]), dtype=np.int8)
        s = np.broadcast_to(s, padded.shape).copy()
    s[padded & (s != Status.NONE)] = Status.SOME
    return s, np.zeros(s.shape, dtype=bool)


def tiled_block_map(pattern: Pattern, tiling: GridTiling) -> TiledBlockMap:
    """Exact statuses of the grid part of `pattern` over the tile pairs of `tiling`."""
    nbs = [nb for t in pattern.terms for nb in [_pure(t)] if nb is not None]
    for nb in nbs:
        if (nb.dims, nb.prefix) != (tiling.dims, tiling.prefix):
            raise ValueError(
                f"the tiling is for grid {tiling.dims} prefix {tiling.prefix}, "
                f"the pattern's neighbourhood for grid {nb.dims} prefix {nb.prefix}"
            )
    nqt = math.prod(tiling.tiles(tiling.q_tile))
    nkt = math.prod(tiling.tiles(tiling.k_tile))
    shape = (nqt, nkt)
    pure = _union_status(nbs, tiling) if nbs else np.zeros(shape, dtype=np.int8)
    if len(nbs) == len(pattern.terms):  # a union of neighbourhoods alone: exact as it is
        return TiledBlockMap(tiling, pure, _prefix_pairs(pattern, tiling))
    hulls = (*_hulls(tiling, tiling.q_tile), *_hulls(tiling, tiling.k_tile))
    qs, ks = _tile_slots(tiling)
    padded = (qs < 0).any(axis=1)[:, None] | (ks < 0).any(axis=1)[None, :]
    any_all = pure == Status.ALL
    live = (pure != Status.NONE).astype(np.int32)
    exact_some = pure == Status.SOME
    for term in pattern.terms:
        if _pure(term) is not None:
            continue
        none = np.zeros(shape, dtype=bool)
        not_all = np.zeros(shape, dtype=np.int32)
        exact_one = np.zeros(shape, dtype=bool)
        for lit in term.lits:
            s, exact = _lit_status(lit, tiling, hulls, padded)
            none |= s == Status.NONE
            not_all += s != Status.ALL
            exact_one |= (s == Status.SOME) & exact
        term_live = ~none
        term_all = term_live & (not_all == 0)  # on a padded tile pair only a term without literals
        any_all |= term_all & ~padded
        live += term_live
        exact_some |= term_live & (((not_all == 1) & exact_one) | (term_all & padded))
    status = np.full(shape, Status.SOME, dtype=np.int8)
    status[live == 0] = Status.NONE
    status[any_all] = Status.ALL
    ambiguous = ~any_all & (live > 0) & ~((live == 1) & exact_some)
    _settle(pattern, tiling, status, ambiguous)
    return TiledBlockMap(tiling, status, _prefix_pairs(pattern, tiling))


def _tile_slots(tiling: GridTiling) -> tuple[np.ndarray, np.ndarray]:
    bm, bn = math.prod(tiling.q_tile), math.prod(tiling.k_tile)
    return tiling.q_positions().reshape(-1, bm), tiling.k_positions().reshape(-1, bn)


def _settle(pattern: Pattern, tiling: GridTiling, status: np.ndarray, ambiguous: np.ndarray) -> None:
    """Exact statuses of the ambiguous tile pairs: probes first, then every pair."""
    if not ambiguous.any():
        return
    qi, kj = np.nonzero(ambiguous)
    qs, ks = _tile_slots(tiling)
    rng = random.Random(_RNG_SEED)  # the standard library's: numpy.random costs 20 ms to import
    pq = np.array([rng.randrange(qs.shape[1]) for _ in range(_PROBES)])
    pk = np.array([rng.randrange(ks.shape[1]) for _ in range(_PROBES)])
    q, k = qs[qi][:, pq], ks[kj][:, pk]
    allowed = np.asarray(pattern.holds(q, k), dtype=bool) & (q >= 0) & (k >= 0)
    proven = allowed.any(axis=1) & ~allowed.all(axis=1)
    status[qi[proven], kj[proven]] = Status.SOME
    qi, kj = qi[~proven], kj[~proven]
    for s in range(0, len(qi), _BATCH):
        i, j = qi[s : s + _BATCH], kj[s : s + _BATCH]
        q, k = qs[i][:, :, None], ks[j][:, None, :]
        real = (q >= 0) & (k >= 0)
        allowed = np.asarray(pattern.holds(q, k), dtype=bool) & real
        status[i, j] = np.where(
            allowed.all(axis=(1, 2)), Status.ALL, np.where(allowed.any(axis=(1, 2)), Status.SOME, Status.NONE)
        )


def _prefix_pairs(pattern: Pattern, tiling: GridTiling) -> int:
    p, n = tiling.prefix, tiling.prefix + math.prod(tiling.dims)
    if not p:
        return 0
    rows = np.asarray(pattern.holds(np.arange(p)[:, None], np.arange(n)[None, :]), dtype=bool).sum()
    cols = np.asarray(pattern.holds(np.arange(p, n)[:, None], np.arange(p)[None, :]), dtype=bool).sum()
    return int(rows + cols)


def brute_tiled_block_map(pattern: Pattern, tiling: GridTiling) -> TiledBlockMap:
    """The same map from the dense mask, permuted into tile order: the tests' reference."""
    n = tiling.prefix + math.prod(tiling.dims)
    mask = pattern.mask(n)
    qs, ks = _tile_slots(tiling)
    q, k = qs.reshape(-1), ks.reshape(-1)
    sub = mask[np.maximum(q, 0)][:, np.maximum(k, 0)] & (q >= 0)[:, None] & (k >= 0)[None, :]
    blocks = sub.reshape(qs.shape[0], qs.shape[1], ks.shape[0], ks.shape[1])
    status = status_of(blocks.all(axis=(1, 3)), blocks.any(axis=(1, 3)))
    p = tiling.prefix
    prefix_pairs = int(mask[:p].sum() + mask[p:, :p].sum())
    return TiledBlockMap(tiling, status, prefix_pairs)
