"""The plan of a grid group: what the tile-order neighbourhood kernel (grid.py.j2) needs.

A head group whose pattern is a union of neighbourhoods over one grid
(`compiler.tiling.grid_terms`) runs a kernel of its own: each program takes a tile of the
grid as its query block (a compact patch instead of a row-major run of tokens), visits per
term the box of key tiles that its rows' windows span, and reads queries and keys where they
lie in the natural order (rows gathered by position). Prefix text tokens are two more
loops in natural order: grid rows read the prefix keys first, and extra programs compute
the prefix rows over every key.

In a tile, every (term, axis) is one compare pair per element: the window of a query
coordinate x is low(x), low(x) + d, ..., low(x) + (kernel - 1) * d (`compiler.ir
.axis_low`), computed once per query row, and a key coordinate y is inside when
0 <= y - low(x) <= (kernel - 1) * d and (for d > 1) d divides y - low(x). Literals that
narrow a term beyond its neighbourhood are evaluated on natural positions with the usual
mask text.

Tile shapes are chosen by the compiler for every (BLOCK_M, BLOCK_N) a configuration may use
(`TILE_SIZES`), so the module picks them by table at launch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .ir import Lit, Pattern
from .tiling import GridTerms, choose_tiling, grid_terms

# (BLOCK_M, BLOCK_N) pairs that get tile shapes: what compiler/configs.py's rows and the CPU
# config can pick, and the small tiles tests ask for; other overrides run the generic kernel
TILE_SIZES = ((16, 16), (16, 32), (32, 16), (32, 32), (64, 32), (64, 64), (128, 64), (128, 128))


@dataclass(frozen=True)
class AxisWindow:
    """One term's window on one axis, as the kernel computes it."""

    length: int
    kernel: int
    dilation: int
    causal: bool

    @property
    def span(self) -> int:
        return (self.kernel - 1) * self.dilation

    @property
    def shift(self) -> int:
        """log2 of a power-of-two dilation above 1 (the kernel shifts instead of dividing), else 0."""
        d = self.dilation
        return d.bit_length() - 1 if d > 1 and d & (d - 1) == 0 else 0


@dataclass(frozen=True)
class GridTermPlan:
    text: str
    axes: tuple[AxisWindow, ...]
    others: tuple[Lit, ...]  # the term's other literals, evaluated on natural positions


@dataclass(frozen=True)
class GridPlan:
    source: GridTerms  # the compiler's view: grid, prefix, terms (token order and tile counts)
    terms: tuple[GridTermPlan, ...]
    tiles: dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...]]]  # (BM, BN) -> (q tile, k tile)

    @property
    def dims(self) -> tuple[int, ...]:
        return self.source.dims

    @property
    def prefix(self) -> int:
        return self.source.prefix

    @property
    def size(self) -> int:
        """Grid tokens."""
        return self.source.size

    @property
    def strides(self) -> tuple[int, ...]:
        """Natural (row-major) stride of each axis."""
        return tuple(math.prod(self.dims[a + 1:]) for a in range(len(self.dims)))

    def runs(self, n: int, bm: int, bn: int) -> bool:
        """Whether the tile-order kernel runs a launch of n tokens at these tiles (the generated
        module's `_grid_fits`): exactly prefix + grid tokens, tiles the compiler planned."""
        return n == self.prefix + self.size and (bm, bn) in self.tiles


def plan_grid(pattern: Pattern) -> GridPlan | None:
    """The grid plan of a group's pattern, or None when the generic kernel runs it."""
    g = grid_terms(pattern)
    if g is None:
        return None
    terms = []
    for t in g.terms:
        axes = tuple(AxisWindow(n, k, d, c) for n, k, d, c in zip(g.dims, t.nb.kernel, t.nb.dilation, t.nb.causal))
        terms.append(GridTermPlan(str(t.nb) + (" and " + " and ".join(map(str, t.others)) if t.others else ""),
                                  axes, tuple(t.others)))
    tiles = {}
    for bm, bn in TILE_SIZES:
        tiling = choose_tiling(g, bm, bn)
        tiles[(bm, bn)] = (tiling.q_tile, tiling.k_tile)
    return GridPlan(g, tuple(terms), tiles)
