"""Validation: warnings a user can act on, from the IR program and its analyses.

Each check is a small function from the program (and, where it needs them, the sequence
length and the per-group cache layouts) to diagnostics; `validate` runs them all. Nothing
here changes the program: simplification is `algebra.simplify`, applied during lowering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .ir import Band, HeadGroup, Neighborhood, Pattern, Program, Status
from ..spec.shape import ranges
from .tiling import grid_terms


@dataclass(frozen=True)
class Diagnostic:
    level: str  # "warning" or "note"
    code: str  # a stable name, such as "empty-pattern"
    message: str
    where: str = ""  # which heads or cache section

    def __str__(self) -> str:
        return f"{self.level}: {self.where + ': ' if self.where else ''}{self.message} [{self.code}]"

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "code": self.code, "message": self.message, "where": self.where}


def describe_members(members: frozenset[tuple[int, int]], layers: int, heads: int) -> str:
    """'all heads', 'layers 0..4, heads 0..9', or one line per distinct head set."""
    sets: dict[int, set[int]] = {}
    for l, h in members:
        sets.setdefault(l, set()).add(h)
    by_layer = {l: tuple(sorted(hs)) for l, hs in sets.items()}
    head_sets = set(by_layer.values())
    if len(members) == layers * heads:
        return "all heads"
    if len(head_sets) == 1:
        hs = next(iter(head_sets))
        lay = "all layers" if len(by_layer) == layers else f"layers {ranges(list(by_layer))}"
        return f"{lay}, heads {ranges(hs)}" if len(hs) < heads else f"{lay}, all heads"
    parts = []
    for hs in sorted(head_sets):
        ls = [l for l, v in by_layer.items() if v == hs]
        parts.append(f"layers {ranges(ls)}: heads {ranges(hs)}")
    return "; ".join(parts)


def _where(program: Program, group: HeadGroup) -> str:
    return describe_members(group.members, program.model.layers, program.model.heads)


# ---------------------------------------------------------------- checks


def check_empty_patterns(program: Program, n: int, layouts: Any) -> list[Diagnostic]:
    return [
        Diagnostic(
            "warning",
            "empty-pattern",
            "the pattern allows no (query, key) pair: every output of these heads is zero; "
            "check the set operators (an `&` of disjoint patterns, or a `-` that removes everything)",
            _where(program, g),
        )
        for g in program.groups
        if not g.reach.terms
    ]


def empty_rows(pattern: Pattern, n: int, bmap: Any = None, edge_blocks: int = 2) -> list[int]:
    """Query rows with no allowed key: every row of a query block whose tiles are all empty, and,
    checked pair by pair, the rows of the first `edge_blocks` query blocks (where bands that skip
    the diagonal leave rows empty) when they visit at most 64 partial tiles."""
    from .blocks import block_map

    bmap = bmap if bmap is not None else block_map(pattern, n, 128, 128)
    bm, bn = bmap.bm, bmap.bn
    nqb = bmap.status.shape[0]
    out: list[int] = []
    for i in range(nqb):
        row = bmap.status[i]
        q = np.arange(i * bm, min((i + 1) * bm, n), dtype=np.int64)
        if not (row != Status.NONE).any():
            out.extend(int(x) for x in q)
        elif i < edge_blocks and not (row == Status.ALL).any() and (row == Status.SOME).sum() <= 64:
            hit = np.zeros(len(q), dtype=bool)
            # tiles nearest the diagonal first: they usually give every row a key, and the rest is skipped
            for j in sorted(np.flatnonzero(row == Status.SOME), key=lambda j: abs(j * bn - i * bm)):
                ks = np.arange(j * bn, min((j + 1) * bn, n), dtype=np.int64)
                hit |= np.asarray(pattern.holds(q[:, None], ks[None, :]), dtype=bool).any(axis=1)
                if hit.all():
                    break
            out.extend(int(x) for x in q[~hit])
    return sorted(set(out))


def check_empty_rows(program: Program, n: int, layouts: Any, bmaps: Any = None) -> list[Diagnostic]:
    out = []
    for i, g in enumerate(program.groups):
        if not g.reach.terms:
            continue
        # a selecting group: rows its reach leaves empty (the block map is the static part's)
        empty = empty_rows(g.reach, n, None if bmaps is None or g.selection else bmaps[i])
        if empty:
            out.append(
                Diagnostic(
                    "warning",
                    "empty-rows",
                    f"{len(empty):,} query rows ({ranges(empty[:20])}{' ...' if len(empty) > 20 else ''}) have no "
                    "allowed key, so their outputs are zeros; add the diagonal (`| window(1)`) or "
                    "start the band at 0 if those tokens should see something",
                    _where(program, g),
                )
            )
    return out


def check_causal_decode(program: Program, n: int, layouts: Any) -> list[Diagnostic]:
    out = []
    decoding = bool(program.cache)
    for g in program.groups:
        if not g.reach.terms or g.reach.is_causal:
            continue
        if decoding:
            out.append(
                Diagnostic(
                    "warning",
                    "non-causal-decode",
                    "the pattern lets a query read later keys, but the file has a cache block (decoding): "
                    "while decoding, keys after the query do not exist yet, so decode outputs differ from "
                    "prefill; intersect with `causal` for a decoder",
                    _where(program, g),
                )
            )
        else:
            out.append(
                Diagnostic(
                    "note",
                    "non-causal",
                    "not causal (a query reads later keys): an encoder pattern, with no decode and so no KV cache",
                    _where(program, g),
                )
            )
    return out


def check_window_covers_n(program: Program, n: int, layouts: Any) -> list[Diagnostic]:
    out = []
    for g in program.groups:
        for term in g.pattern.terms:
            bands = term.atoms_of(Band)
            if (
                bands
                and bands[0].lo is not None
                and bands[0].lo <= 0
                and bands[0].hi is not None
                and bands[0].hi >= n - 1
                and len(term.lits) == 1
            ):
                out.append(
                    Diagnostic(
                        "note",
                        "window-covers-n",
                        f"band {bands[0]} is wider than N = {n}: at this length it is the same as causal",
                        _where(program, g),
                    )
                )
                break
    return out


def check_grid_kernel(program: Program, n: int, layouts: Any) -> list[Diagnostic]:
    """A grid pattern that the tile-order kernel cannot run (the generic kernel runs it: correct,
    but it visits the row-major hull). The usual cause is `| global(G)` for CLS or text tokens,
    which the grid's prefix expresses on the fast path."""
    out = []
    for g in program.groups:
        has_grid = any(term.atoms_of(Neighborhood) for term in g.pattern.terms)
        if has_grid and grid_terms(g.pattern) is None:
            out.append(
                Diagnostic(
                    "warning",
                    "grid-generic-kernel",
                    "this grid pattern runs the generic kernel, not the faster tile-order one: every term must "
                    "hold one neighborhood; for global tokens (CLS, text), declare them as the grid's prefix, "
                    "as in grid(32, 32) prefix = 1, instead of writing | global(1)",
                    _where(program, g),
                )
            )
    return out


def default_length(program: Program) -> int:
    """The N to analyse when none is given: the token count of the grid, else 32768."""
    grid = program.grid
    if grid is not None and getattr(grid, "dims", None):
        return int(getattr(grid, "prefix", 0) or 0) + int(np.prod(grid.dims))
    return 32768


def check_grid_length(program: Program, n: int, layouts: Any) -> list[Diagnostic]:
    out = []
    for g in program.groups:
        for term in g.pattern.terms:
            for nb in term.atoms_of(Neighborhood):
                tokens = nb.prefix + int(np.prod(nb.dims))
                if tokens != n:
                    out.append(
                        Diagnostic(
                            "note",
                            "grid-length",
                            f"the grid holds {tokens} tokens but N = {n}: positions past the grid attend only to "
                            f"the {nb.prefix} prefix tokens",
                            _where(program, g),
                        )
                    )
                    return out
    return out


def _budget_tokens(policy: Any, layer: int, layers: int) -> int | None:
    b = policy.budget
    if b.kind == "tokens":
        return b.tokens
    if b.kind == "list" and layer < len(b.per_layer):
        return b.per_layer[layer]
    if b.kind == "linear" and b.first is not None and b.last is not None:
        if layers <= 1:
            return b.first
        return round(b.first + (b.last - b.first) * layer / (layers - 1))
    if b.kind == "adaptive":
        return b.tokens
    return None


def check_cache_budgets(program: Program, n: int, layouts: Any) -> list[Diagnostic]:
    """Compare declared budgets with the lossless cache the pattern implies at decode position n."""
    if not program.cache or layouts is None:
        return []
    model = program.model
    per_kv = max(1, model.heads // max(1, model.kv_heads))
    table = program.group_table()
    out = []
    for i, policy in enumerate(program.cache):
        layers = policy.layers if policy.layers is not None else range(model.layers)
        kvs = policy.kv_heads if policy.kv_heads is not None else range(model.kv_heads)
        lossy, wasted, sinks_dead = [], [], []
        for l in layers:
            budget = _budget_tokens(policy, l, model.layers)
            for kv in kvs:
                groups = {table[l][h] for h in range(kv * per_kv, min((kv + 1) * per_kv, model.heads))}
                layout = None
                for gi in groups:
                    layout = layouts[gi] if layout is None else layout.union(layouts[gi])
                if layout is None:
                    continue
                live = layout.live(n)
                slots = int(live.sum()) + 1  # the live keys plus the token being decoded
                if budget is not None and budget < slots:
                    lossy.append((l, kv, budget, slots))
                elif budget is not None and budget > slots and layout.exact:
                    wasted.append((l, kv, budget, slots))
                if policy.sink and not live[: min(policy.sink, n)].all() and layout.exact:
                    sinks_dead.append((l, kv))
        where = f"cache rule {i + 1}"
        if lossy:
            l, kv, b, s = lossy[0]
            out.append(
                Diagnostic(
                    "note",
                    "lossy-budget",
                    f"budget {b} tokens < {s} slots the pattern needs at decode position {n} (its live keys "
                    f"plus the new token) "
                    f"(layer {l}, KV head {kv}{f', and {len(lossy) - 1} more' if len(lossy) > 1 else ''}): "
                    "eviction is lossy here, as intended for SnapKV/H2O-style policies",
                    where,
                )
            )
        if wasted:
            l, kv, b, s = wasted[0]
            out.append(
                Diagnostic(
                    "warning",
                    "budget-exceeds-live",
                    f"budget {b} tokens > {s} slots the pattern needs at decode position {n} (its live keys "
                    f"plus the new token; layer {l}, KV head {kv}): the extra slots hold keys no query reads "
                    f"again; a budget of {s} is lossless",
                    where,
                )
            )
        if sinks_dead:
            out.append(
                Diagnostic(
                    "warning",
                    "sink-not-read",
                    f"keep sink({policy.sink}) keeps keys that no future query of the pattern reads "
                    f"({len(sinks_dead)} (layer, KV head) pairs); drop the keep rule or add sink({policy.sink}) "
                    "to the pattern",
                    where,
                )
            )
    return out


CHECKS: tuple[Callable[[Program, int, Any], list[Diagnostic]], ...] = (
    check_empty_patterns,
    check_causal_decode,
    check_window_covers_n,
    check_grid_kernel,
    check_grid_length,
    check_cache_budgets,
)


def validate(
    program: Program, n: int, layouts: Sequence[Any] | None = None, block_maps: Sequence[Any] | None = None
) -> list[Diagnostic]:
    """Every check, warnings first. `layouts` are the groups' cache layouts (compiler.liveness),
    `block_maps` their block maps at n (computed here when not given)."""
    out = [d for check in CHECKS for d in check(program, n, layouts)]
    out += check_empty_rows(program, n, layouts, block_maps)
    return sorted(out, key=lambda d: d.level != "warning")
