"""The token order of grid patterns: tiles of the grid instead of rows of the flattened sequence.

A neighbourhood over a row-major flattened grid makes thin tiles: 128 consecutive tokens of
a 128 x 128 image are one image row, and their 13 x 13 neighbourhoods span 13 rows, so a
query block reads 13 x 128 keys of which each query needs 169. Ordered by tiles of the grid
(as GNA and NATTEN's fused kernels do), a query block is a compact patch (8 x 16 tokens) and
its keys a compact box around it, a few times fewer. Here:

- `GridTerms`: the patterns whose every term is one NATTEN neighbourhood (plus any other
  literals, which only narrow it): the generated code visits them in tile order.
- `GridTiling`: a query tile shape and a key tile shape (powers of two per axis, with
  BLOCK_M and BLOCK_N tokens) and the orders they induce. The grid is padded up to whole
  tiles; padding slots hold no token (position -1). Prefix tokens stay in natural order
  before the grid.
- `choose_tiling`: the tile shapes for which the kernel visits the fewest key tiles.

The kernel reads the tokens where they are (natural order, a gather of whole rows), so no
permutation is ever materialised; this module says which natural positions a tile holds.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

from .ir import Lit, Neighborhood, Pattern, axis_high, axis_low, axis_window


@dataclass(frozen=True)
class GridTerm:
    """One term of a grid pattern: its neighbourhood and the other literals that narrow it."""

    nb: Neighborhood
    others: tuple[Lit, ...]


@dataclass(frozen=True)
class GridTerms:
    """A pattern that is a union of neighbourhoods over one grid (with the same prefix)."""

    dims: tuple[int, ...]
    prefix: int
    terms: tuple[GridTerm, ...]

    @property
    def size(self) -> int:
        return math.prod(self.dims)

    def __hash__(self) -> int:
        return self._hash

    @functools.cached_property
    def _hash(self) -> int:
        """Computed once: the per-axis caches below are keyed by the grid terms, thousands of times."""
        return hash((self.dims, self.prefix, self.terms))


def grid_terms(pattern: Pattern) -> GridTerms | None:
    """The pattern as neighbourhood terms over one grid, or None when it is not one."""
    terms = []
    for term in pattern.terms:
        nbs = [l for l in term.lits if isinstance(l.atom, Neighborhood)]
        if len(nbs) != 1 or nbs[0].negated:
            return None
        terms.append(GridTerm(nbs[0].atom, tuple(l for l in term.lits if l is not nbs[0])))
    if not terms:
        return None
    shapes = {(t.nb.dims, t.nb.prefix) for t in terms}
    if len(shapes) != 1:
        return None
    dims, prefix = shapes.pop()
    return GridTerms(dims, prefix, tuple(terms))


@dataclass(frozen=True)
class GridTiling:
    """Query and key tile shapes over a grid, and the token orders they induce."""

    dims: tuple[int, ...]
    prefix: int
    q_tile: tuple[int, ...]
    k_tile: tuple[int, ...]

    def tiles(self, tile: tuple[int, ...]) -> tuple[int, ...]:
        """Tiles per axis for a tile shape (the last ones may hang over the grid)."""
        return tuple(-(-n // t) for n, t in zip(self.dims, tile))

    def positions(self, tile: tuple[int, ...]) -> np.ndarray:
        """Natural position of every slot in tile order (tile by tile, row-major inside), -1 for padding."""
        counts, d = self.tiles(tile), len(self.dims)
        strides = [math.prod(self.dims[a + 1 :]) for a in range(d)]
        pos, inside = np.int64(self.prefix), np.bool_(True)
        for a, (c, t) in enumerate(zip(counts, tile)):
            shape = [1] * (2 * d)
            shape[a], shape[d + a] = c, t  # axes: tile index per axis, then slot inside the tile
            coord = (np.arange(c, dtype=np.int64)[:, None] * t + np.arange(t, dtype=np.int64)).reshape(shape)
            pos, inside = pos + coord * strides[a], inside & (coord < self.dims[a])
        return np.where(inside, pos, -1).reshape(-1)

    def q_positions(self) -> np.ndarray:
        return self.positions(self.q_tile)

    def k_positions(self) -> np.ndarray:
        return self.positions(self.k_tile)


@functools.lru_cache(maxsize=4096)
def axis_key_tiles(
    length: int, tq: int, tk: int, kernel: int, dilation: int, causal: bool, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Per query tile along one axis, the first and last key tile that its rows' windows reach.

    The kernel's rule (grid.py.j2): the lowest window start and the highest window end
    (`ir.axis_low`, `ir.axis_high`) over the tile's rows inside the axis, clamped to the
    axis, divided by the key tile.
    """
    starts = np.arange(0, length, tq)
    low, high = _axis_ends(length, kernel, dilation, causal, stride)
    first = np.maximum(np.minimum.reduceat(low, starts), 0) // tk
    last = np.minimum(np.maximum.reduceat(high, starts), length - 1) // tk
    first.setflags(write=False)
    last.setflags(write=False)
    return first, last


@functools.lru_cache(maxsize=1024)
def _axis_ends(length: int, kernel: int, dilation: int, causal: bool, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """`ir.axis_low` and `ir.axis_high` of every coordinate of an axis (read-only; choose_tiling
    reads them for many tile sides)."""
    x = np.arange(length, dtype=np.int64)
    low = np.broadcast_to(np.asarray(axis_low(x, length, kernel, dilation, causal, stride), dtype=np.int64), x.shape)
    high = np.broadcast_to(np.asarray(axis_high(x, length, kernel, dilation, causal, stride), dtype=np.int64), x.shape)
    return low, high


def _subsets(n: int) -> list[tuple[int, ...]]:
    return [s for r in range(1, n + 1) for s in itertools.combinations(range(n), r)]


def _axis_box(
    length: int, tq: int, tk: int, windows: tuple[tuple[int, int, bool, int], ...], shared: bool
) -> tuple[np.ndarray, int]:
    """Per query tile along one axis: key boxes in the intersection of the windows' boxes
    (windows as `axis_window`s), and their sum (`_subset_boxes` with one subset, all of them)."""
    out = _subset_boxes(length, tq, tk, windows, (tuple(range(len(windows))),), shared)[0]
    return out, int(out.sum())


@functools.lru_cache(maxsize=4096)
def _subset_boxes(
    length: int,
    tq: int,
    tk: int,
    windows: tuple[tuple[int, int, bool, int], ...],
    subsets: tuple[tuple[int, ...], ...],
    shared: bool,
) -> np.ndarray:
    """Per subset of the windows (rows) and query tile along one axis (columns): key boxes in
    the intersection of the subset's windows' boxes, all subsets at once. `shared`: one window
    that every query tile shares (`anchored`), read as ceil(K / TK) boxes from its start."""
    if shared:
        out = np.full((len(subsets), -(-length // tq)), -(-windows[0][0] // tk), dtype=np.int64)
    else:
        ends = [axis_key_tiles(length, tq, tk, *window) for window in windows]
        member = np.zeros((len(subsets), len(windows), 1), dtype=bool)
        for i, subset in enumerate(subsets):
            member[i, list(subset)] = True
        big = np.iinfo(np.int64).max
        first = np.where(member, np.array([f for f, _ in ends])[None], -big).max(axis=1)
        last = np.where(member, np.array([l for _, l in ends])[None], big).min(axis=1)
        out = np.maximum(last - first + 1, 0)
    out.setflags(write=False)
    return out


def anchorable(g: GridTerms, axis: int) -> bool:
    """Whether the kernel may start its key boxes on this axis at a query tile's shared window
    instead of at multiples of the key tile: the pattern is one term, not causal and not
    dilated on the axis. It does so for the query tiles of `anchored`."""
    nb = g.terms[0].nb
    return len(g.terms) == 1 and nb.dilation[axis] == 1 and not nb.causal[axis]


def anchored(g: GridTerms, axis: int, tq: int) -> bool:
    """Whether every query tile of tq coordinates shares one window on this axis (GNA): the
    tile divides the stride, so each tile lies in one stride group and all its rows use the
    group leader's window [W, W + K - 1]. The kernel then visits the ceil(K / TK) key boxes
    from W on (never more than the key tiles the window meets); grid.py.j2 renders this rule."""
    return anchorable(g, axis) and g.terms[0].nb.stride[axis] % tq == 0


def _box_axes(g: GridTerms, q_tile: tuple[int, ...], k_tile: tuple[int, ...]):
    """For each subset of terms (with its sign), per axis: the key boxes per query tile
    coordinate in the intersection of the subset's boxes, and their sum (tiles of the key tile
    grid, or boxes from the shared window's start on anchored axes)."""
    axes = range(len(g.dims))
    windows = [[axis_window(t.nb, a) for a in axes] for t in g.terms]
    shared = [anchored(g, a, tq) for a, tq in enumerate(q_tile)]  # one term, so subset == (0,)
    for subset in _subsets(len(g.terms)):
        yield (
            (1 if len(subset) % 2 else -1),
            [_axis_box(g.dims[a], q_tile[a], k_tile[a], tuple(windows[t][a] for t in subset), shared[a]) for a in axes],
        )


def unmasked_boxes(g: GridTerms, q_tile: tuple[int, ...], k_tile: tuple[int, ...]) -> int:
    """Key boxes per query tile that lie wholly inside a window every row of the tile shares
    (every axis anchored, no other literal): floor(K / TK) per axis. Every pair of such a box
    is useful (the kernel still applies its one-vector mask there: see grid.py.j2)."""
    if len(g.terms) != 1 or g.terms[0].others or not all(anchored(g, a, tq) for a, tq in enumerate(q_tile)):
        return 0
    return math.prod(k // tk for k, tk in zip(g.terms[0].nb.kernel, k_tile))


def tile_visits(g: GridTerms, q_tile: tuple[int, ...], k_tile: tuple[int, ...]) -> np.ndarray:
    """Key boxes each query tile's program visits (the union of its terms' boxes), in program
    order (query tiles row-major over the tile grid, the last axis fastest)."""
    total = np.zeros([-(-n // t) for n, t in zip(g.dims, q_tile)], dtype=np.int64)
    for sign, axes in _box_axes(g, q_tile, k_tile):
        total += sign * functools.reduce(np.multiply.outer, [c for c, _ in axes])
    return total.reshape(-1)


@functools.lru_cache(maxsize=4096)
def _axis_totals(g: GridTerms, axis: int, tq: int, tk: int) -> np.ndarray:
    """Per subset of terms (in _subsets order), the key boxes summed over the query tile
    coordinates of one axis: the axis's factor of visited_tiles (it depends on that axis's
    tile sides only, so choose_tiling's many shapes share it)."""
    windows = tuple(axis_window(t.nb, axis) for t in g.terms)
    subsets = tuple(_subsets(len(g.terms)))
    out = _subset_boxes(g.dims[axis], tq, tk, windows, subsets, anchored(g, axis, tq)).sum(axis=1)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=64)
def _subset_signs(n: int) -> np.ndarray:
    return np.array([1 if len(s) % 2 else -1 for s in _subsets(n)], dtype=np.int64)


def visited_tiles(g: GridTerms, q_tile: tuple[int, ...], k_tile: tuple[int, ...]) -> int:
    """The sum of tile_visits over all query tiles, without building it: by inclusion-exclusion
    over the terms, each subset's boxes a product of per-axis sums."""
    factors = [_axis_totals(g, a, tq, tk) for a, (tq, tk) in enumerate(zip(q_tile, k_tile))]
    return int(np.dot(_subset_signs(len(g.terms)), functools.reduce(np.multiply, factors)))


def _shapes(tokens: int, dims: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Tile shapes of `tokens` tokens: powers of two per axis, none much longer than its axis."""
    bits = tokens.bit_length() - 1
    limit = [max(1, 1 << (n - 1).bit_length()) for n in dims]
    out = []
    for split in itertools.product(range(bits + 1), repeat=len(dims)):
        if sum(split) == bits and all((1 << b) <= lim for b, lim in zip(split, limit)):
            out.append(tuple(1 << b for b in split))
    return out


def choose_tiling(g: GridTerms, block_m: int, block_n: int) -> GridTiling:
    """The tile shapes (BLOCK_M and BLOCK_N tokens) for which the kernel visits the fewest
    key tiles; ties go to more boxes wholly inside a shared window (`unmasked_boxes`), then to the shape with
    wider rows (longer contiguous runs of tokens)."""
    best = None
    k_shapes = _shapes(block_n, g.dims) or [tuple([1] * (len(g.dims) - 1) + [block_n])]
    for tq in _shapes(block_m, g.dims) or [tuple([1] * (len(g.dims) - 1) + [block_m])]:
        for tk in k_shapes:
            key = (
                visited_tiles(g, tq, tk),
                -unmasked_boxes(g, tq, tk),
                tuple(-x for x in reversed(tq)),
                tuple(-x for x in reversed(tk)),
            )
            if best is None or key < best[0]:
                best = (key, tq, tk)
    assert best is not None
    return GridTiling(g.dims, g.prefix, best[1], best[2])
