"""Mask expressions: a pattern's predicate as text over integer tiles of positions.

Each atom renders itself (compiler/atoms.py, `render_parts`, given the names of the query
and key position tiles); this module composes those texts for a pattern. Negation,
conjunction and union map to `~`, `&` and `|`; bounds that every term shares (the causal
`k <= q` of `causal & (sink(4) | window(W))`) are factored out of the union, so each is
evaluated once per pair. A term without literals allows every pair (`k >= 0`), a pattern
without terms allows none (`k < 0`). The text is the same for Triton and torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..compiler.ir import Lit, Pattern, Term

Q, K = "q", "k"


def render_lits(lits: tuple[Lit, ...], q: str = Q, k: str = K) -> str:
    """A conjunction of literals as one text (`k >= 0` when there are none)."""
    return " & ".join(part for lit in lits for part in lit.render_parts(q, k)) or f"({k} >= 0)"


def conjuncts(term: Term, q: str = Q, k: str = K) -> list[str]:
    """The term as a list of texts whose conjunction it is (bands and ranges split per bound)."""
    return list(dict.fromkeys(part for lit in term.lits for part in lit.render_parts(q, k)))


@dataclass(frozen=True)
class MaskText:
    """A pattern's predicate as common & (term_0 | term_1 | ...).

    `common` holds the conjuncts that every term shares (a causal bound, say), computed once;
    `terms` the rest of each term, each safe to join with `|`. No terms at all: `common` is
    `(k < 0)`; a term with nothing beyond the common part: `terms` is empty.
    """

    common: tuple[str, ...]
    terms: tuple[str, ...]

    def text(self) -> str:
        """The whole predicate as one expression."""
        parts = list(self.common)
        if self.terms:
            parts.append("(" + " | ".join(self.terms) + ")" if len(self.terms) > 1 else self.terms[0])
        return " & ".join(parts)


def render_pattern(pattern: Pattern, q: str = Q, k: str = K) -> MaskText:
    if not pattern.terms:
        return MaskText((f"({k} < 0)",), ())
    parts = [conjuncts(t, q, k) for t in pattern.terms]
    shared = [c for c in parts[0] if all(c in p for p in parts[1:])] if len(parts) > 1 else []
    rests = [[c for c in p if c not in shared] for p in parts]
    if any(not r for r in rests):  # one term is exactly the common part: the union is all of it
        return MaskText(tuple(shared) or (f"({k} >= 0)",), ())
    terms = tuple(" & ".join(r) for r in rests)
    if len(terms) > 1 or shared:
        terms = tuple(f"({t})" if " & " in t else t for t in terms)
    return MaskText(tuple(shared), terms)
