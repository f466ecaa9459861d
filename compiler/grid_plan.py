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
.axis_low`, with the row's stride leader), computed once per query row, and a key
coordinate y is inside when 0 <= y - low(x) <= (kernel - 1) * d (y <= x on a causal axis)
and (for d > 1) d divides y - low(x). Where every row of a query tile shares one window
(`compiler.tiling.anchored`: GNA's strides), the key boxes start at that window and the
mask on the axis is one vector per tile. Literals that narrow a term beyond its
neighbourhood are evaluated on natural positions with the usual mask text.

Tile shapes are chosen by the compiler for every (BLOCK_M, BLOCK_N) a configuration may use
(`TILE_SIZES`), so the module picks them by table at launch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .configs import BWD_CONFIGS, BWD_CPU_CONFIG
from .ir import Lit, Pattern, axis_window
from .tiling import GridTerms, anchorable, choose_tiling, grid_terms

# (BLOCK_M, BLOCK_N) pairs that get tile shapes: what compiler/configs.py's rows and the CPU
# config can pick, and the small tiles tests ask for; the backward's (major, minor) blocks in
# both orders (dQ by query tile, dK/dV by key tile); other overrides run the generic kernels
TILE_SIZES = tuple(
    dict.fromkeys(
        [(16, 16), (16, 32), (32, 16), (32, 32), (64, 32), (64, 64), (128, 64), (128, 128)]
        + [
            pair
            for c in [*(row[3] for row in BWD_CONFIGS), BWD_CPU_CONFIG]
            for pair in ((c["BLOCK_MAJOR"], c["BLOCK_MINOR"]), (c["BLOCK_MINOR"], c["BLOCK_MAJOR"]))
        ]
    )
)


@dataclass(frozen=True)
class AxisWindow:
    """One term's window on one axis, as the kernel computes it."""

    length: int
    kernel: int
    dilation: int
    causal: bool
    stride: int = 1
    anchorable: bool = (
        False  # compiler.tiling.anchorable: boxes from the shared window when the tile divides the stride
    )

    @property
    def span(self) -> int:
        return (self.kernel - 1) * self.dilation

    @property
    def shift(self) -> int:
        """log2 of a power-of-two dilation above 1 (the kernel shifts instead of dividing), else 0."""
        return _log2(self.dilation)

    def low(self, x: str) -> str:
        """Triton text of `compiler.ir.axis_low` for coordinate x (a row vector or a scalar).

        Power-of-two dilations and strides are shifts and masks: written with // 2 and % 2,
        Triton 3.6 on an H200 miscompiled the window start of bfloat16 kernels
        (bench/proto/NOTES.md)."""
        d, s, k = self.dilation, self.stride, self.kernel
        if d == 1:
            member, group, last = x, "", f"{self.length - 1}"
        elif self.shift:
            member, group = f"({x} >> {self.shift})", f"({x} & {d - 1})"
            last = f"(({self.length + d - 1} - {group}) // {d} - 1)"
        else:
            member, group = f"({x} // {d})", f"({x} % {d})"
            last = f"(({self.length + d - 1} - {group}) // {d} - 1)"
        lead = member
        if s > 1:
            first = f"({member} & {-s})" if _log2(s) else f"({member} // {s} * {s})"
            lead = f"tl.minimum({first} + {s - 1 if self.causal else s // 2}, {last})"
        if self.causal:
            start = f"{lead} - {k - 1}"
        else:
            start = f"tl.minimum(tl.maximum({lead} - {k // 2}, 0), {last} - {k - 1})"
        if d == 1:
            return start
        return f"({start}) * {d} + {group}"

    def query_range(self, y0: str, y1: str) -> tuple[str, str]:
        """Triton text of (lo, hi): every query coordinate whose window (`low`) holds a key
        coordinate in [y0, y1] lies in [lo, hi] -- the column view of this axis, which the
        backward's dK/dV pass visits by key tile. In members u = x // d of one residue class,
        the window starts at clamp(lead(u) - kernel // 2, 0, last - kernel + 1) (causal:
        lead(u) - kernel + 1, unclamped) with u - (s - 1) + s // 2 <= lead(u) <= u + s // 2
        (causal: u <= lead(u) <= u + s - 1); inverting these bounds gives the interval. Key
        members near either end of the axis are reached from the clamped windows there, so
        those give the axis' end."""
        d, s, k, n = self.dilation, self.stride, self.kernel, self.length
        w0, w1 = (y0, y1) if d == 1 else (f"({y0} // {d})", f"({y1} // {d})")
        if self.causal:
            return y0, f"tl.minimum(({w1} + {k - 1}) * {d} + {d - 1}, {n - 1})"
        lo = f"tl.where({w0} < {k}, 0, ({w0} - {k - 1 - k // 2 + s // 2}) * {d})"
        reach = f"({w1} + {k // 2 + s - 1 - s // 2}) * {d} + {d - 1}"
        return lo, f"tl.where({w1} > {n // d - 1 - k}, {n - 1}, tl.minimum({reach}, {n - 1}))"


def _log2(v: int) -> int:
    """log2 of a power of two above 1, else 0."""
    return v.bit_length() - 1 if v > 1 and v & (v - 1) == 0 else 0


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
        return tuple(math.prod(self.dims[a + 1 :]) for a in range(len(self.dims)))

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
        axes = tuple(AxisWindow(n, *axis_window(t.nb, a), anchorable(g, a)) for a, n in enumerate(g.dims))
        terms.append(
            GridTermPlan(
                str(t.nb) + (" and " + " and ".join(map(str, t.others)) if t.others else ""), axes, tuple(t.others)
            )
        )
    tiles = {}
    for bm, bn in TILE_SIZES:
        tiling = choose_tiling(g, bm, bn)
        tiles[(bm, bn)] = (tiling.q_tile, tiling.k_tile)
    return GridPlan(g, tuple(terms), tiles)
