"""`attnc analyze`: every analysis of a program in one record, shown as rich text, JSON or a PNG.

`analyze` runs the analyses (cost, liveness, receptive field, validation) and returns an
`Analysis`; `render` prints it with rich, `Analysis.to_dict` is the JSON, and `plot` draws
the mask at a small N, the block map at N, the receptive field by layer and the cache size
as decoding proceeds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cost import BWD_MATMUL_RATIO, DTYPE_BYTES, GroupCost, growth_class, group_cost
from .formula import T, Formula, NoFormula
from .ir import Neighborhood, Pattern, Program, Status
from .liveness import NO_DECODE, CacheLayout, cache_layout, decodable
from .passes import Diagnostic, describe_members, validate
from .receptive import ReceptiveField, layer_patterns, receptive_field
from .selection import UNKNOWABLE, SelectionBounds, selection_bounds
from .blocks import block_map
from .grid_blocks import tiled_block_map
from .tiling import GridTerm, GridTerms, choose_tiling, grid_terms, visited_tiles
from ..spec.limits import MAX_MODEL
from .limits import MAX_ANALYSED_LENGTH, bound_problem
from ..spec.shape import span

DEFAULT_LAYERS = 32  # the stack depth for the receptive field when the file gives no model


@dataclass
class KV:
    """The lossless cache of one head group at decode position N, per KV head and layer."""

    layout: CacheLayout
    tokens: int
    formula: Formula | None
    note: str | None
    growth: str
    bytes_per_token: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout.to_dict(),
            "tokens": self.tokens,
            "bytes": self.tokens * self.bytes_per_token,
            "formula": None if self.formula is None else [{"range": r, "expr": e} for r, e in self.formula.describe()],
            "note": self.note,
            "growth": self.growth,
            "bytes_per_token": self.bytes_per_token,
        }


@dataclass
class GridOrder:
    """A grid pattern at one tile size: the kernel's tile order against row-major order.

    Tile order covers the grid queries and keys (compiler/grid_blocks.py); the prefix rows
    and columns stay in natural order and are counted apart (`prefix_pairs`). Useful-pair
    density is the allowed pairs over the pairs of the visited tiles.
    """

    bm: int
    bn: int
    q_tile: tuple[int, ...]
    k_tile: tuple[int, ...]
    tiles: int  # tile pairs of the grid part in tile order (padding included)
    visited: int  # non-empty tile pairs in tile order
    kernel_visits: int | None  # tiles the kernel's per-term boxes visit (None: not a union of neighbourhoods)
    useful: float
    row_major_tiles: int  # tile pairs of the whole sequence in natural order
    row_major_visited: int
    row_major_useful: float
    prefix: int
    prefix_pairs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "block": [self.bm, self.bn],
            "q_tile": list(self.q_tile),
            "k_tile": list(self.k_tile),
            "tile_order": {
                "tiles": self.tiles,
                "visited": self.visited,
                "kernel_visits": self.kernel_visits,
                "visited_share": self.visited / self.tiles if self.tiles else 0.0,
                "useful_pair_density": self.useful,
            },
            "row_major": {
                "tiles": self.row_major_tiles,
                "visited": self.row_major_visited,
                "visited_share": self.row_major_visited / self.row_major_tiles if self.row_major_tiles else 0.0,
                "useful_pair_density": self.row_major_useful,
            },
            "prefix": self.prefix,
            "prefix_pairs": self.prefix_pairs,
        }


GRID_BLOCKS = ((128, 64), (128, 128))  # the tile sizes reported for grid patterns


def _grid_terms_of(pattern: Pattern) -> tuple[GridTerms | None, bool]:
    """The neighbourhood terms that choose the tiling, and whether they are the whole pattern."""
    g = grid_terms(pattern)
    if g is not None:
        return g, True
    terms = []
    for term in pattern.terms:
        nbs = [l for l in term.lits if isinstance(l.atom, Neighborhood) and not l.negated]
        if len(nbs) == 1:
            terms.append(GridTerm(nbs[0].atom, tuple(l for l in term.lits if l is not nbs[0])))
    if not terms or len({(t.nb.dims, t.nb.prefix) for t in terms}) != 1:
        return None, False
    return GridTerms(terms[0].nb.dims, terms[0].nb.prefix, tuple(terms)), False


def grid_analysed(pattern: Pattern, n: int) -> bool:
    """Whether grid_orders compares tile orders for this pattern: a grid pattern at its grid's length."""
    g, _ = _grid_terms_of(pattern)
    return g is not None and n == g.prefix + g.size


def grid_orders(pattern: Pattern, n: int, pairs: int, natural: dict[tuple[int, int], Any]) -> list[GridOrder]:
    """Tile order against row-major order for a grid pattern analysed at its grid's length."""
    g, whole = _grid_terms_of(pattern)
    if not grid_analysed(pattern, n):
        return []
    out = []
    for bm, bn in GRID_BLOCKS:
        tiling = choose_tiling(g, bm, bn)
        tiled = tiled_block_map(pattern, tiling)
        nat = natural.get((bm, bn)) or block_map(pattern, n, bm, bn)
        nat_visited = int((nat.status != Status.NONE).sum())
        grid_pairs = pairs - tiled.prefix_pairs
        out.append(
            GridOrder(
                bm,
                bn,
                tiling.q_tile,
                tiling.k_tile,
                int(tiled.status.size),
                tiled.visited,
                visited_tiles(g, tiling.q_tile, tiling.k_tile) if whole else None,
                grid_pairs / (tiled.visited * bm * bn) if tiled.visited else 0.0,
                int(nat.status.size),
                nat_visited,
                pairs / (nat_visited * bm * bn) if nat_visited else 0.0,
                g.prefix,
                tiled.prefix_pairs,
            )
        )
    return out


@dataclass
class GroupReport:
    index: int
    where: str
    cost: GroupCost
    kv: KV
    kv_pairs: int  # (layer, KV head) pairs the group's heads use
    block_render: str
    block_cell: int  # tiles per rendered cell side
    grid: list[GridOrder] = field(default_factory=list)  # tile order against row-major, per tile size
    selection: SelectionBounds | None = None  # bounds of the selected part (compiler/selection.py)

    def to_dict(self) -> dict[str, Any]:
        c = self.cost
        return {
            "grid_order": [g.to_dict() for g in self.grid],
            "index": self.index,
            "where": self.where,
            "pattern": str(c.pattern),
            "heads": c.heads,
            "kv_heads": self.kv_pairs,
            "density": c.density,
            "asymptotic": c.asymptotic,
            "asymptotic_from": c.asymptotic_how,
            "pairs": c.pairs.to_dict(),
            "flops_per_head": c.flops.to_dict(),
            "flops_formula": None if c.flops_expr is None else str(c.flops_expr),
            "bytes_per_head_min": c.bytes_min.to_dict(),
            "bytes_per_head_tiles": c.bytes_tiles,
            "bytes_per_head_tiles_qkv": c.bytes_tiles_qkv,
            "backward_flops_per_head": c.bwd_flops,
            "backward_bytes_per_head_min": c.bwd_bytes_min,
            "tiles": c.tiles,
            "block": list(c.block),
            "kv_cache": self.kv.to_dict(),
            "block_map": {"cell_tiles": self.block_cell, "render": self.block_render.splitlines()},
            "selection": None if self.selection is None else self.selection.to_dict(),
        }


@dataclass
class Analysis:
    name: str
    file: str
    digest: str
    n: int
    block: tuple[int, int]
    dtype: str
    program: Program
    groups: list[GroupReport]
    totals: dict[str, Any]
    receptive: ReceptiveField | None
    receptive_error: str | None
    diagnostics: list[Diagnostic]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        m = self.program.model
        return {
            "name": self.name,
            "file": self.file,
            "digest": self.digest,
            "n": self.n,
            "block": list(self.block),
            "dtype": self.dtype,
            "model": {"layers": m.layers, "heads": m.heads, "kv_heads": m.kv_heads, "head_dim": m.head_dim},
            "groups": [g.to_dict() for g in self.groups],
            "totals": {k: v.make() if isinstance(v, Deferred) else v for k, v in self.totals.items()},
            "receptive_field": None if self.receptive is None else self.receptive.to_dict(),
            "receptive_field_error": self.receptive_error,
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "seconds": self.seconds,
            "decodes": self.decodes,
        }

    @property
    def decodes(self) -> bool:
        """Whether the program decodes (every group's pattern is decodable): otherwise it has
        no KV cache, and the cache rows describe what a decoder would keep."""
        return all(decodable(g.pattern) for g in self.program.groups)


# ---------------------------------------------------------------- analysis


def coarse_status(status: np.ndarray, cells: int = 40) -> tuple[np.ndarray, int]:
    """Block statuses pooled into at most cells x cells: full if all full, empty if all empty."""
    f = max(1, -(-max(status.shape) // cells))
    rows, cols = -(-status.shape[0] // f), -(-status.shape[1] // f)
    pad_all = np.full((rows * f, cols * f), Status.ALL, dtype=np.int8)
    pad_none = np.full((rows * f, cols * f), Status.NONE, dtype=np.int8)
    pad_all[: status.shape[0], : status.shape[1]] = status
    pad_none[: status.shape[0], : status.shape[1]] = status
    all_full = (pad_all.reshape(rows, f, cols, f) == Status.ALL).all(axis=(1, 3))
    all_empty = (pad_none.reshape(rows, f, cols, f) == Status.NONE).all(axis=(1, 3))
    out = np.where(all_full, Status.ALL, np.where(all_empty, Status.NONE, Status.SOME)).astype(np.int8)
    return out, f


def _render(status: np.ndarray) -> str:
    glyph = np.array([".", "+", "#"])
    return "\n".join("".join(glyph[r]) for r in status)


def _kv(layout: CacheLayout, n: int, bytes_per_token: int) -> KV:
    tokens = layout.size_at(n)
    try:
        f = layout.size_formula()
        if f.at(n) != tokens:
            raise AssertionError(f"cache size formula gives {f.at(n)} at t={n}, exact {tokens}")
        note, growth = None, _size_growth(f)
    except NoFormula as exc:
        f, note, growth = None, f"no formula: {exc}", ("O(N)" if not _bounded(layout) else "O(1)")
    if not layout.exact:
        note = ((note + "; ") if note else "") + "a superset (lossless): " + "; ".join(layout.notes)
    return KV(layout, tokens, f, note, growth, bytes_per_token)


def _bounded(layout: CacheLayout) -> bool:
    return all(
        r.recent is not None or r.chunk is not None or r.k_hi is not None or r.until is not None for r in layout.regions
    )


def _size_growth(f: Formula) -> str:
    cls = growth_class(f)
    return {"O(N)": "O(N)", "O(1)": "O(1)"}.get(cls, cls)


def analyze(
    program: Program,
    n: int,
    layers: int | None = None,
    block: tuple[int, int] = (128, 128),
    dtype: str = "bf16",
    file: str = "",
    with_receptive: bool = True,
) -> Analysis:
    """Run every analysis of `program` at sequence length (and decode position) n."""
    for name, value, hi in (
        ("the sequence length", n, MAX_ANALYSED_LENGTH),
        ("layers", 1 if layers is None else layers, MAX_MODEL["layers"]),
    ):
        problem = bound_problem(name, value, 1, hi)
        if problem:
            raise ValueError(problem)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    model = program.model
    dtype_bytes = DTYPE_BYTES[dtype]
    head_dim = model.head_dim
    dval = head_dim or 128
    per_kv = max(1, model.heads // max(1, model.kv_heads))
    groups = []
    layouts = []
    for i, g in enumerate(program.groups):
        t = time.perf_counter()
        # the grid orders' block maps first, finer tiles first: coarser ones are summed from them
        natural = {s: block_map(g.pattern, n, *s) for s in GRID_BLOCKS} if grid_analysed(g.pattern, n) else {}
        cost = group_cost(g, n, head_dim, dtype_bytes, block, natural.get(tuple(block)))
        seconds[f"cost[{i}]"] = time.perf_counter() - t
        t = time.perf_counter()
        layout = cache_layout(g.reach)
        layouts.append(layout)
        kv = _kv(layout, n, 2 * dval * dtype_bytes)
        seconds[f"liveness[{i}]"] = time.perf_counter() - t
        coarse, f = coarse_status(cost.bmap.status)
        kv_pairs = len({(l, h // per_kv) for l, h in g.members})
        t = time.perf_counter()
        grid = grid_orders(g.pattern, n, cost.pairs.value, {**natural, tuple(block): cost.bmap})
        if grid:
            seconds[f"grid[{i}]"] = time.perf_counter() - t
        groups.append(
            GroupReport(
                i,
                describe_members(g.members, model.layers, model.heads),
                cost,
                kv,
                kv_pairs,
                _render(coarse),
                f,
                grid,
                selection_bounds(g, n),
            )
        )
    t = time.perf_counter()
    totals = _totals(program, groups, layouts, n, dval, dtype_bytes)
    seconds["totals"] = time.perf_counter() - t
    rf, rf_error = None, None
    if with_receptive:
        t = time.perf_counter()
        depth = layers or (model.layers if model.layers > 1 else DEFAULT_LAYERS)
        try:
            rf = receptive_field(layer_patterns(program, depth), n)
        except ValueError as exc:
            rf_error = str(exc)
        seconds["receptive"] = time.perf_counter() - t
    t = time.perf_counter()
    diags = validate(program, n, layouts, [g.cost.bmap for g in groups])
    seconds["passes"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return Analysis(
        program.name, file, program.digest(), n, block, dtype, program, groups, totals, rf, rf_error, diags, seconds
    )


class Deferred:
    """A value of the JSON report that only JSON prints, computed when the report is written
    as JSON (`Analysis.to_dict`): the text report never pays for it."""

    def __init__(self, make):
        self.make = make


def _total_pairs_formula(groups: list[GroupReport]) -> list[dict[str, str]] | None:
    """The allowed pairs of every (layer, head) together, as pieces of a formula in N (None
    where a group has none): the groups' formulas scaled by their heads, summed."""
    if any(g.cost.pairs.formula is None for g in groups):
        return None
    total = groups[0].cost.pairs.formula.scaled(groups[0].cost.heads)
    for g in groups[1:]:
        total = total + g.cost.pairs.formula.scaled(g.cost.heads)
    return [{"range": r, "expr": e} for r, e in total.describe()]


def _totals(
    program: Program, groups: list[GroupReport], layouts: list[CacheLayout], n: int, dval: int, dtype_bytes: int
) -> dict[str, Any]:
    model = program.model
    heads = model.layers * model.heads
    pairs = sum(g.cost.pairs.value * g.cost.heads for g in groups)
    causal = all(g.cost.pattern.is_causal for g in groups)
    dense_pairs = n * (n + 1) // 2 if causal else n * n
    # the cache of a (layer, KV head) serves every query head of its GQA group: union of layouts
    per_kv = max(1, model.heads // max(1, model.kv_heads))
    table = program.group_table()
    unions: dict[frozenset[int], int] = {}
    for l in range(model.layers):
        for kv in range(model.kv_heads):
            gs = frozenset(table[l][h] for h in range(kv * per_kv, min((kv + 1) * per_kv, model.heads)))
            unions[gs] = unions.get(gs, 0) + 1
    tokens, kv_f, kv_note = 0, Formula.const(T, 0, lo=0), None
    for gs, count in unions.items():
        layout = None
        for gi in sorted(gs):
            layout = layouts[gi] if layout is None else layout.union(layouts[gi])
        tokens += count * layout.size_at(n)
        if kv_f is not None:
            try:
                one = groups[next(iter(gs))].kv.formula if len(gs) == 1 else None  # derived already
                kv_f = kv_f + (one or layout.size_formula()).scaled(count)
            except NoFormula as exc:
                kv_f, kv_note = None, f"no formula: {exc}"
    per_token = 2 * dval * dtype_bytes
    dense_tokens = n * model.layers * model.kv_heads
    return {
        "heads": heads,
        "layers": model.layers,
        "query_heads": model.heads,
        "kv_heads": model.kv_heads,
        "head_dim": model.head_dim,
        "head_dim_assumed": model.head_dim is None,
        "pairs": pairs,
        "pairs_formula": Deferred(lambda: _total_pairs_formula(groups)),
        "flops": 4 * dval * pairs,
        "dense_flops": 4 * dval * dense_pairs * heads,
        "dense_baseline": "causal" if causal else "full",
        "flops_fraction_of_dense": pairs / (dense_pairs * heads) if dense_pairs else 0.0,
        "kv_tokens": tokens,
        "kv_bytes": tokens * per_token,
        "kv_formula_tokens": None if kv_f is None else [{"range": r, "expr": e} for r, e in kv_f.describe()],
        "kv_formula_note": kv_note,
        "dense_kv_bytes": dense_tokens * per_token,
        "kv_fraction_of_dense": tokens / dense_tokens if dense_tokens else 0.0,
        "bytes_per_token": per_token,
    }


# ---------------------------------------------------------------- rich text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _num(x: int) -> str:
    return f"{x:,}"


def _size(b: float) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= f:
            return f"{b / f:,.2f} {unit}"
    return f"{int(b)} B"


def _formula_text(f: Formula | None, note: str | None, limit: int = 3) -> str:
    if f is None:
        return f"[dim]{note or '-'}[/]"
    lines = [f"{e}  [dim]({r})[/]" if len(f.pieces) > 1 else e for r, e in f.describe()]
    if len(lines) > limit:
        lines = lines[:1] + [f"[dim]... {len(lines) - 2} more pieces ...[/]"] + lines[-1:]
    return "\n".join(lines)


def _layer_rows(rf: ReceptiveField) -> list[int]:
    want = {1, rf.layers}
    x = 2
    while x < rf.layers:
        want.add(x)
        x *= 2
    if rf.full_at is not None and rf.full_at <= rf.layers:
        want.add(rf.full_at)
    return sorted(w for w in want if 1 <= w <= rf.layers)


def render(a: Analysis, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    m = a.program.model
    shape = (
        f"{_plural(m.layers, 'layer')} x {_plural(m.heads, 'head')} ({m.kv_heads} KV), head_dim "
        f"{m.head_dim if m.head_dim is not None else '128 (assumed)'}"
    )
    console.print(
        f"[bold]{a.name}[/] {a.file}  N = {_num(a.n)}  tiles {a.block[0]}x{a.block[1]}  {a.dtype}  "
        f"[dim]{shape}  digest {a.digest}[/]"
    )
    for g in a.groups:
        c = g.cost
        pairs = f"{c.heads} (layer, head) pair{'s' if c.heads != 1 else ''}"
        console.rule(f"group {g.index + 1} of {len(a.groups)}: {pairs}", align="left")
        console.print(f"heads: {g.where}\npattern: {c.pattern}", highlight=False)
        if g.selection is not None:
            console.print(
                f"selection: {g.selection.selection}; the rows below count the static part exactly; the "
                f"selection adds at most {_num(g.selection.worst_pairs - g.selection.static_pairs)} pairs. "
                f"Keys are {UNKNOWABLE}.",
                highlight=False,
            )
        visited = c.tiles["partial"] + c.tiles["full"]
        total_tiles = visited + c.tiles["empty"]
        console.print(
            f"density {c.density:.4%} of N x N   tiles: {_num(c.tiles['empty'])} empty, "
            f"{_num(c.tiles['partial'])} partial, {_num(c.tiles['full'])} full "
            f"({visited / total_tiles:.2%} visited)   asymptotic {c.asymptotic} "
            f"[dim](from the {c.asymptotic_how})[/]"
        )
        t = Table(box=None, header_style="bold", pad_edge=False)
        t.add_column("per head")
        t.add_column(f"at N = {_num(a.n)}", justify="right")
        t.add_column("closed form")
        t.add_row("allowed pairs", _num(c.pairs.value), _formula_text(c.pairs.formula, c.pairs.note))
        sb = g.selection
        if sb is not None:
            t.add_row(f"+ {sb.selection}", f"<= {_num(sb.worst_pairs)}", f"[dim]{sb.worst_formula or 'no formula'}[/]")
        t.add_row(
            "FLOPs (4 D pairs)",
            f"{c.flops.value:.3e}",
            str(c.flops_expr) + "  [dim](large N)[/]" if c.flops_expr is not None else "[dim]4 D pairs[/]",
        )
        t.add_row(
            "bytes, tiles (Q, K, V per tile)",
            _size(c.bytes_tiles_qkv),
            "[dim]Q, K and V loaded per visited tile, O written once[/]",
        )
        t.add_row(
            "bytes, tiles (Q kept)",
            _size(c.bytes_tiles),
            "[dim]Q once per visited row block, K and V per visited tile, O once[/]",
        )
        t.add_row("bytes, minimum", _size(c.bytes_min.value), _formula_text(c.bytes_min.formula, None))
        t.add_row(
            "backward FLOPs, bytes (minimum)",
            f"{c.bwd_flops:.3e}, {_size(c.bwd_bytes_min)}",
            f"[dim]{BWD_MATMUL_RATIO}x the forward's matrix products; Q, K, V, O, dO read, dQ, dK, dV written once[/]",
        )
        kv = g.kv
        if a.decodes:
            t.add_row(
                "KV cache (tokens per KV head per layer)",
                f"{_num(kv.tokens)} = {_size(kv.tokens * kv.bytes_per_token)}",
                _formula_text(kv.formula, kv.note) + f"  [dim]in t, {kv.growth}[/]",
            )
        else:
            t.add_row("KV cache", "none", f"[dim]{NO_DECODE}[/]")
        console.print(t)
        if a.decodes:
            console.print(
                "cache layout: "
                + " + ".join(kv.layout.describe())
                + ("" if kv.layout.exact else "  [yellow](superset: not exact)[/]"),
                highlight=False,
            )
        cell = f"{g.block_cell}x{g.block_cell}"
        console.print(f"[dim]block map ('#' full, '+' partial, '.' empty; a cell = {cell} tiles):[/]")
        console.print(g.block_render, highlight=False)
        for o in g.grid:
            shape = f"query tile {'x'.join(map(str, o.q_tile))}, key tile {'x'.join(map(str, o.k_tile))}"
            box = "" if o.kernel_visits is None else f"; the kernel's boxes: {_num(o.kernel_visits)}"
            console.print(
                f"grid order, {o.bm}x{o.bn} tiles ({shape}): {_num(o.visited)} of {_num(o.tiles)} "
                f"visited ({o.visited / o.tiles:.2%}{box}), {o.useful:.1%} useful pairs",
                highlight=False,
            )
            console.print(
                f"  row-major order: {_num(o.row_major_visited)} of {_num(o.row_major_tiles)} visited "
                f"({o.row_major_visited / o.row_major_tiles:.2%}), {o.row_major_useful:.1%} useful pairs"
                + (
                    f"  [dim](the prefix of {o.prefix} stays in natural order: {_num(o.prefix_pairs)} pairs)[/]"
                    if o.prefix
                    else ""
                ),
                highlight=False,
            )
    tot = a.totals
    console.rule(f"totals over {_plural(tot['layers'], 'layer')} x {_plural(tot['query_heads'], 'head')}", align="left")
    kv_text = (
        f"KV cache at decode position N: {_size(tot['kv_bytes'])} = {tot['kv_fraction_of_dense']:.2%} of a full "
        f"cache ({_size(tot['dense_kv_bytes'])})"
        if a.decodes
        else f"no KV cache ({NO_DECODE})"
    )
    console.print(
        f"FLOPs {tot['flops']:.3e} = {tot['flops_fraction_of_dense']:.2%} of dense {tot['dense_baseline']} "
        f"({tot['dense_flops']:.3e});  {kv_text}"
    )
    if tot["kv_formula_tokens"] and a.decodes:
        pieces = tot["kv_formula_tokens"]
        text = "; ".join(f"{p['expr']} for {p['range']}" for p in pieces[-2:])
        console.print(f"[dim]cache tokens, all layers and KV heads: {text}[/]", highlight=False)
    rf = a.receptive
    if rf is not None:
        console.rule(f"receptive field of the last token (position {rf.n - 1:,})", align="left")
        if rf.requested_n:
            console.print(
                f"[yellow]computed at N = {rf.n:,} (the pattern needs enumeration; asked {rf.requested_n:,})[/]"
            )
        if rf.closed_form:
            console.print(f"closed form: {rf.closed_form}", highlight=False)
        t = Table(box=None, header_style="bold", pad_edge=False)
        for col in ("after layers", "earliest", "back", "unbroken back", "covered", "unreachable", "first gaps"):
            t.add_column(col, justify="right" if col != "first gaps" else "left")
        for l in _layer_rows(rf):
            r = rf.rows[l - 1]
            gaps = ", ".join(span(x, y) for x, y in r.gaps[:3]) + (" ..." if len(r.gaps) > 3 else "")
            t.add_row(str(l), _num(r.earliest), _num(r.back), _num(r.span), _num(r.covered), _num(r.unreachable), gaps)
        console.print(t)
        full = (f"{rf.full_at} layers" if rf.full_at is not None else "never") + f" [dim]({rf.full_note})[/]"
        console.print(f"layers to full coverage: {full}")
    elif a.receptive_error:
        console.print(f"[yellow]receptive field: {a.receptive_error}[/]")
    if a.diagnostics:
        console.rule("diagnostics", align="left")
        for d in a.diagnostics:
            style = "yellow" if d.level == "warning" else "cyan"
            console.print(
                f"[{style}]{d.level}[/] [{d.code}] {d.where + ': ' if d.where else ''}{d.message}", highlight=False
            )
    console.print(f"[dim]analysed in {a.seconds.get('total', 0):.2f} s[/]")


# ---------------------------------------------------------------- pictures


def small_n(pattern: Pattern, n: int) -> int:
    """A length at which the mask shows the pattern's structure: a few times its largest constant."""
    scale = max((lit.atom.scale() for term in pattern.terms for lit in term.lits), default=0)
    return int(min(n, max(128, min(2048, 3 * scale))))


_COLORS = ["#f4f4f4", "#f0a830", "#1f5fa8"]  # empty, partial, full


def _max_pool(mask: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Any-pooling to at most size x size, so thin stripes (sinks, strides) stay visible."""
    f = max(1, -(-max(mask.shape) // size))
    if f == 1:
        return mask, 1
    r, c = -(-mask.shape[0] // f), -(-mask.shape[1] // f)
    pad = np.zeros((r * f, c * f), dtype=bool)
    pad[: mask.shape[0], : mask.shape[1]] = mask
    return pad.reshape(r, f, c, f).any(axis=(1, 3)), f


def plot(a: Analysis, path: str, max_groups: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    groups = a.groups[:max_groups]
    rows = len(groups) + 1
    fig, axes = plt.subplots(rows, 2, figsize=(10, 4.2 * rows), squeeze=False)
    cmap = ListedColormap(_COLORS)
    for row, g in zip(axes, groups):
        p = g.cost.pattern
        ns = small_n(p, a.n)
        mask, f = _max_pool(p.mask(ns), 400)
        row[0].imshow(mask, cmap="Greys", interpolation="nearest", vmin=0, vmax=1, extent=(0, ns, ns, 0))
        text = str(p)
        text = text if len(text) < 70 else text[:67] + "..."
        row[0].set_title(
            f"group {g.index + 1}: mask at N = {ns}" + (f" (max-pooled {f}x{f})" if f > 1 else "") + f"\n{text}",
            fontsize=8,
        )
        row[0].set_xlim(-0.02 * ns, 1.02 * ns)
        row[0].set_ylim(1.02 * ns, -0.02 * ns)
        row[0].set_xlabel("key k")
        row[0].set_ylabel("query q")
        bmap = g.cost.bmap if g.cost.bmap is not None else block_map(p, a.n, *a.block)
        coarse, f = coarse_status(bmap.status, 256)
        nb = bmap.status.shape
        row[1].imshow(coarse, cmap=cmap, vmin=0, vmax=2, interpolation="nearest", extent=(0, nb[1], nb[0], 0))
        row[1].set_title(
            f"block map at N = {a.n:,}, {a.block[0]}x{a.block[1]} tiles\n"
            f"blue full, orange partial" + (f" (a pixel = {f}x{f} tiles)" if f > 1 else ""),
            fontsize=8,
        )
        row[1].set_xlim(-0.02 * nb[1], 1.02 * nb[1])
        row[1].set_ylim(1.02 * nb[0], -0.02 * nb[0])
        row[1].set_xlabel("key block")
        row[1].set_ylabel("query block")
    ax_rf, ax_kv = axes[-1]
    rf = a.receptive
    if rf is not None:
        layers = [r.layer for r in rf.rows]
        ax_rf.plot(layers, [r.covered / rf.n for r in rf.rows], "o-", ms=3, label="positions covered / N")
        ax_rf.plot(
            layers, [r.span / max(1, rf.n - 1) for r in rf.rows], "s--", ms=3, label="unbroken reach back / (N - 1)"
        )
        ax_rf.set_ylim(-0.02, 1.05)
        ax_rf.set_xlabel("layers")
        ax_rf.set_title(f"receptive field of token N - 1 (N = {rf.n:,})", fontsize=9)
        ax_rf.legend(fontsize=8)
        ax_rf.grid(alpha=0.3)
    ts = np.unique(np.linspace(0, a.n, 200).astype(np.int64))
    for g in groups:
        f = g.kv.formula
        ys = [f.at(int(t)) if f is not None else g.kv.layout.size_at(int(t)) for t in ts]
        ax_kv.plot(ts, ys, label=f"group {g.index + 1}: " + " + ".join(r.kind for r in g.kv.layout.regions))
    ax_kv.plot(ts, ts, color="grey", lw=0.8, ls=":", label="full cache")
    ax_kv.set_xlabel("decode position t")
    ax_kv.set_ylabel("live keys per KV head")
    ax_kv.set_title("lossless KV cache size while decoding", fontsize=9)
    ax_kv.legend(fontsize=8)
    ax_kv.grid(alpha=0.3)
    fig.suptitle(f"{a.name}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
