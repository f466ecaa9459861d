"""Lowering: a resolved `.attn` file (spec.resolved.Spec) becomes an IR Program.

Each primitive (spec/primitives.py) is one small function from its arguments to a Pattern;
operators map to the set algebra. Head assignments become head groups: assignments whose
expressions lower to the same pattern share a group, so a kernel launch specializes once
per distinct pattern, not once per section.
"""

from __future__ import annotations

from typing import Any, Callable

from ..spec.resolved import Assignment, RExpr, ROp, Spec
from .algebra import complement, difference, intersect, simplify, union
from .ir import (
    Band,
    Chunk,
    DiffMod,
    HeadGroup,
    KMod,
    KRange,
    Lit,
    ModelShape,
    Neighborhood,
    Pattern,
    Power,
    Program,
    QRange,
    Select,
    Term,
    split_selection,
)


def _one(*atoms: Any) -> Pattern:
    return Pattern((Term(tuple(Lit(a) for a in atoms)),))


def _window(args: dict[str, Any]) -> Pattern:
    if "size" in args:
        return _one(Band(0, args["size"] - 1))
    return _one(Band(-args["right"], args["left"]))


def _global(args: dict[str, Any]) -> Pattern:
    g = args["size"]
    return union(_one(QRange(None, g - 1)), _one(KRange(None, g - 1)))


def _neighborhood(args: dict[str, Any], grid: Any) -> Pattern:
    return _one(
        Neighborhood(
            tuple(grid.dims),
            tuple(args["kernel"]),
            tuple(args["dilation"]),
            tuple(bool(c) for c in args["causal"]),
            grid.prefix,
            tuple(args["stride"]),
        )
    )


PRIMITIVES: dict[str, Callable[[dict[str, Any], Any], Pattern]] = {
    "full": lambda a, grid: Pattern((Term(),)),
    "causal": lambda a, grid: _one(Band(0, None)),
    "window": lambda a, grid: _window(a),
    "sink": lambda a, grid: _one(KRange(None, a["size"] - 1)),
    "dilated": lambda a, grid: _one(Band(0, a["size"] * a["dilation"] - 1), DiffMod(a["dilation"], 0)),
    "strided": lambda a, grid: _one(DiffMod(a["stride"], 0)),
    "stride": lambda a, grid: _one(KMod(a["stride"], a["offset"])),
    "chunk": lambda a, grid: _one(Chunk(a["size"])),
    "global": lambda a, grid: _global(a),
    "band": lambda a, grid: _one(Band(a["lo"], a["hi"])),
    "power": lambda a, grid: _one(Power(a["block"])),
    "neighborhood": _neighborhood,
    "select": lambda a, grid: _one(
        Select(a["score"], a.get("top", 0), a.get("mass", 0), a["block"], a["stride"], a["last"])
    ),
}
"""Each primitive of spec/primitives.py as IR atoms (its meaning), given its arguments and the grid."""

OPERATORS: dict[str, Callable[[Pattern, Pattern], Pattern]] = {
    "|": union,
    "&": intersect,
    "-": difference,
}


def lower_expr(expr: RExpr, grid: Any = None) -> Pattern:
    """The IR pattern of a resolved expression, simplified."""
    if isinstance(expr, ROp):
        return OPERATORS[expr.op](lower_expr(expr.left, grid), lower_expr(expr.right, grid))
    return simplify(PRIMITIVES[expr.name](expr.args, grid))


def _members(a: Assignment, model: ModelShape) -> set[tuple[int, int]]:
    layers = range(model.layers) if a.layers is None else a.layers
    heads = range(model.heads) if a.heads is None else a.heads
    return {(l, h) for l in layers for h in heads}


def _group(pattern: Pattern, members: frozenset[tuple[int, int]]) -> HeadGroup:
    static, selection = split_selection(pattern)
    return HeadGroup(static, members, selection)


def lower(spec: Spec) -> Program:
    """The IR program of a resolved spec: one head group per distinct pattern."""
    model = ModelShape(
        layers=spec.model.layers or 1,
        heads=spec.model.heads or 1,
        kv_heads=spec.model.kv_heads or spec.model.heads or 1,
        head_dim=spec.model.head_dim,
    )
    groups: dict[Pattern, set[tuple[int, int]]] = {}
    for a in spec.assignments:
        groups.setdefault(lower_expr(a.expr, spec.grid), set()).update(_members(a, model))
    ordered = sorted(groups.items(), key=lambda kv: min(kv[1]))
    return Program(
        name=spec.name,
        source=spec.source,
        model=model,
        groups=tuple(_group(p, frozenset(m)) for p, m in ordered),
        cache=tuple(spec.cache),
        grid=spec.grid,
        params=tuple(sorted(spec.params.items())),
    )


__all__ = ["lower", "lower_expr", "complement", "PRIMITIVES"]
