"""Mask expressions: the render table from IR atoms to predicate text over index tiles.

Every rule turns one atom into a boolean expression over two integer tiles named `q` (query
positions, a column) and `k` (key positions, a row). The text is the same for Triton and
for torch: it uses only `+ - // % & | ~ == <= >=` on integers, whose meanings agree on both
sides as long as no negative number is divided. Positions are never negative, so `q // C`
and `k % m` are safe; `q - k` can be, so a remainder of it is rendered in the
non-negative-safe form `((q - k) % m + m) % m` (Triton's `%` truncates like C, torch's
floors; both give the same value after the shift). Where a sub-expression can go negative
only on pairs that another conjunct already rejects (the grid coordinates of text tokens in
`Neighborhood`), the two targets may compute different garbage there and still agree on the
mask.

Negation, conjunction and union map to `~`, `&` and `|`; bounds that every term shares (the
causal `k <= q` of `causal & (sink(4) | window(W))`) are factored out of the union, so each
is evaluated once per pair. A term without literals allows every pair (`k >= 0`), a
pattern without terms allows none (`k < 0`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..compiler.ir import (Band, Chunk, DiffMod, KMod, KRange, Lit, Neighborhood, Pattern, Power, QRange,
                           Term)

Q, K = "q", "k"


def _offset(var: str, c: int) -> str:
    """`var + c` written without `+ -`."""
    if c == 0:
        return var
    return f"{var} + {c}" if c > 0 else f"{var} - {-c}"


def _range(x: str, lo: int | None, hi: int | None) -> str:
    parts = []
    if lo is not None:
        parts.append(f"({x} >= {lo})")
    if hi is not None:
        parts.append(f"({x} <= {hi})")
    return " & ".join(parts) if parts else f"({K} >= 0)"


def _band(lo: int | None, hi: int | None) -> str:
    """lo <= q - k <= hi as per-row key bounds, q - hi <= k <= q - lo: the subtraction runs
    on the column of query positions, leaving one compare per bound per pair."""
    parts = []
    if hi is not None:
        parts.append(f"({K} >= {_offset(Q, -hi)})")
    if lo is not None:
        parts.append(f"({K} <= {_offset(Q, -lo)})")
    return " & ".join(parts) if parts else f"({K} >= 0)"


def _mod(x: str, m: int, r: int, may_be_negative: bool) -> str:
    if m == 1:
        return f"({K} >= 0)"
    if may_be_negative:
        return f"((({x}) % {m} + {m}) % {m} == {r})"
    return f"({x} % {m} == {r})"


def _power(a: Power) -> str:
    d = f"({Q} // {a.block} - {K} // {a.block})"
    return f"(({d} == 0) | (({d} > 0) & (({d} & ({d} - 1)) == 0)))"


def _at_most(v: str, top: str) -> str:
    """min(v, top) as text in the arithmetic of compiler.ir._at_most."""
    over = f"({v} - {top})"
    return f"({v} - {over} * ({over} > 0))"


def _neighborhood(a: Neighborhood) -> str:
    """NATTEN's rule (compiler.ir.axis_low, strides included) per axis, on flattened grid positions."""
    gq, gk = f"({_offset(Q, -a.prefix)})", f"({_offset(K, -a.prefix)})"
    size = 1
    for length in a.dims:
        size *= length
    parts = [f"({gq} >= 0)", f"({gk} >= 0)", f"({gq} < {size})", f"({gk} < {size})"]
    stride = size
    for length, kernel, dil, causal, st in zip(a.dims, a.kernel, a.dilation, a.causal, a.stride):
        stride //= length
        x, y = f"({gq} // {stride} % {length})", f"({gk} // {stride} % {length})"
        parts.append(f"({x} % {dil} == {y} % {dil})")
        xi, yi = f"({x} // {dil})", f"({y} // {dil})"
        group_len = f"(({length} - {x} % {dil} + {dil} - 1) // {dil})"
        lead = xi
        if st > 1:  # the stride group's leader, at most the group's last member
            lead = f"({xi} // {st} * {st} + {st - 1 if causal else st // 2})"
            lead = _at_most(lead, f"({group_len} - 1)")
        if causal:
            parts.append(f"({yi} <= {xi})")
            parts.append(f"({yi} > {lead} - {kernel})")
            continue
        s0 = f"({lead} - {kernel // 2})"
        start = _at_most(f"({s0} * ({s0} > 0))", f"({group_len} - {kernel})")
        parts.append(f"({yi} >= {start})")
        parts.append(f"({yi} < {start} + {kernel})")
    inside = " & ".join(parts)
    if a.prefix == 0:
        return f"({inside})"
    return f"(({Q} < {a.prefix}) | ({K} < {a.prefix}) | ({inside}))"


RULES: dict[type, Callable] = {
    Band: lambda a: _band(a.lo, a.hi),
    KRange: lambda a: _range(K, a.lo, a.hi),
    QRange: lambda a: _range(Q, a.lo, a.hi),
    DiffMod: lambda a: _mod(f"{Q} - {K}", a.m, a.r, may_be_negative=True),
    KMod: lambda a: _mod(K, a.m, a.r, may_be_negative=False),
    Chunk: lambda a: f"({Q} // {a.size} == {K} // {a.size})",
    Power: _power,
    Neighborhood: _neighborhood,
}


def render_lit(lit: Lit) -> str:
    """A literal as a conjunction-safe text (no top-level `|`)."""
    text = RULES[type(lit.atom)](lit.atom)
    return f"~({text})" if lit.negated else text


def conjuncts(term: Term) -> list[str]:
    """The term as a list of texts whose conjunction it is (bands and ranges split per bound)."""
    out: list[str] = []
    for lit in term.lits:
        text = render_lit(lit)
        if not lit.negated and isinstance(lit.atom, (Band, KRange, QRange)):
            out.extend(text.split(" & "))
        else:
            out.append(text)
    return list(dict.fromkeys(out))


def render_term(term: Term) -> str:
    return " & ".join(conjuncts(term)) or f"({K} >= 0)"


@dataclass(frozen=True)
class MaskText:
    """A pattern's predicate as common & (term_0 | term_1 | ...).

    `common` holds the conjuncts that every term shares (a causal bound, say), computed once;
    `terms` the rest of each term, each safe to join with `|`. No terms at all: `common` is
    `(k < 0)`; a term with nothing beyond the common part: `terms` is empty.
    """

    common: tuple[str, ...]
    terms: tuple[str, ...]


def render_pattern(pattern: Pattern) -> MaskText:
    if not pattern.terms:
        return MaskText((f"({K} < 0)",), ())
    parts = [conjuncts(t) for t in pattern.terms]
    shared = [c for c in parts[0] if all(c in p for p in parts[1:])] if len(parts) > 1 else []
    rests = [[c for c in p if c not in shared] for p in parts]
    if any(not r for r in rests):  # one term is exactly the common part: the union is all of it
        return MaskText(tuple(shared) or (f"({K} >= 0)",), ())
    terms = tuple(" & ".join(r) for r in rests)
    if len(terms) > 1 or shared:
        terms = tuple(f"({t})" if " & " in t else t for t in terms)
    return MaskText(tuple(shared), terms)
