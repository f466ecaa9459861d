"""Per-head and per-layer pattern sections, resolved to `resolved.Assignment`s.

Sections at one level split the pairs of their enclosing section (the whole model at the
top): each covers what its selector picks inside it, `rest` covers what its siblings
leave, and together they must cover it exactly once: an overlap or an uncovered head is
an error that names the heads. A nested body splits its section again. Each leaf section
becomes one Assignment per block of layers with the same heads (so a head set that differs
by layer gives one Assignment per distinct layer row).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ast
from .exprs import ExprScope
from .intexpr import give_model
from .resolved import Assignment, RExpr
from .select import Selection
from .shape import Pair, blocks, describe_pairs


@dataclass
class _Leaf:
    expr: RExpr | None
    pairs: frozenset[Pair]
    loc: ast.Loc


def resolve_sections(
    decl: ast.PatternDecl, sections: list[ast.PatternSection], selection: Selection, exprs: ExprScope
) -> list[Assignment]:
    """The Assignments of a sectioned pattern (empty after reporting a problem)."""
    if selection.shape.heads is None:
        selection.reporter.error(
            decl.loc,
            f"pattern {decl.name} has sections, so it needs the model's head count",
            give_model("heads"),
        )
        return []
    leaves: list[_Leaf] = []
    ok = _split(sections, selection.shape.universe("heads"), decl.loc, selection, exprs, leaves)
    if not ok or any(leaf.expr is None for leaf in leaves):
        return []
    return [
        Assignment(expr=leaf.expr, layers=layers, heads=heads, loc=leaf.loc)  # type: ignore[arg-type]
        for leaf in leaves
        for layers, heads in blocks(leaf.pairs)
    ]


def _split(
    sections: list[ast.PatternSection],
    domain: frozenset[Pair],
    owner: ast.Loc,
    selection: Selection,
    exprs: ExprScope,
    leaves: list[_Leaf],
) -> bool:
    """Split `domain` among sibling sections, appending leaves; False after an error."""
    chosen, ok = _choose(sections, domain, selection)
    for section, pairs in chosen:  # resolved even after an error, to report theirs too
        if isinstance(section.body, list):
            ok = _split(section.body, pairs, section.loc, selection, exprs, leaves) and ok
        elif pairs:
            leaves.append(_Leaf(exprs.resolve(section.body), pairs, section.loc))
    covered = frozenset().union(*(pairs for _, pairs in chosen))
    if ok and covered != domain:
        missing = describe_pairs(domain - covered, "heads", selection.shape)
        selection.reporter.error(owner, f"no section covers {missing}", "add a section for them, or a `rest:` section")
        return False
    return ok


def _choose(
    sections: list[ast.PatternSection], domain: frozenset[Pair], selection: Selection
) -> tuple[list[tuple[ast.PatternSection, frozenset[Pair]]], bool]:
    """Each section with the pairs it covers (`rest` last, with whatever is left), and
    whether they were all valid and disjoint."""
    chosen: list[tuple[ast.PatternSection, frozenset[Pair]]] = []
    rests = [s for s in sections if s.selector.kind == "rest"]
    for extra in rests[1:]:
        selection.reporter.error(
            extra.selector.loc, "only one `rest` section per level", f"the first is on line {rests[0].loc.line}"
        )
    ok = len(rests) <= 1
    for section in sections:
        if section.selector.kind == "rest":
            continue
        pairs = selection.select(section.selector, "heads", domain)
        if pairs is None:
            ok = False
            continue
        ok = _disjoint(section, pairs, chosen, selection) and _not_empty(section, pairs, selection) and ok
        chosen.append((section, pairs))
    if rests:
        taken = frozenset().union(*(pairs for _, pairs in chosen))
        chosen.append((rests[0], domain - taken))
    return chosen, ok


def _disjoint(
    section: ast.PatternSection,
    pairs: frozenset[Pair],
    earlier: list[tuple[ast.PatternSection, frozenset[Pair]]],
    selection: Selection,
) -> bool:
    for other, other_pairs in earlier:
        both = pairs & other_pairs
        if both:
            shared = describe_pairs(both, "heads", selection.shape)
            selection.reporter.error(
                section.selector.loc,
                f"this section and the one on line {other.loc.line} both cover {shared}",
                "each head of each layer gets exactly one pattern: make the sections disjoint",
            )
            return False
    return True


def _not_empty(section: ast.PatternSection, pairs: frozenset[Pair], selection: Selection) -> bool:
    """A section that covers nothing is a mistake, unless a head set is empty by calibration."""
    if pairs or any(isinstance(i, ast.HeadSetRef) for i in section.selector.items):
        return True
    selection.reporter.error(section.selector.loc, "this section covers no heads of its enclosing section")
    return False
