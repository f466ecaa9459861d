"""Set algebra on the IR: union, intersection and difference of patterns, kept in normal form.

Intersection distributes over the terms; difference is intersection with the complement,
and complements of ranges and small moduli become unions of positive atoms, so most
patterns stay free of negation. Each conjunction is simplified as it is built (bands,
ranges and equal moduli intersect; contradictions drop the term), which is what makes
`causal & window(W)` a single band.
"""

from __future__ import annotations

import itertools

from .ir import Band, KRange, Lit, ModAtom, Pattern, QRange, RangeAtom, Term


def union(a: Pattern, b: Pattern) -> Pattern:
    return simplify(Pattern(a.terms + b.terms))


def intersect(a: Pattern, b: Pattern) -> Pattern:
    terms = [conjoin(x, y) for x, y in itertools.product(a.terms, b.terms)]
    return simplify(Pattern(tuple(t for t in terms if t is not None)))


def difference(a: Pattern, b: Pattern) -> Pattern:
    return intersect(a, complement(b))


def complement(p: Pattern) -> Pattern:
    """Pairs not in p: the intersection over terms of the union of negated literals."""
    out = Pattern((Term(),))
    for term in p.terms:
        out = intersect(out, Pattern(tuple(Term((lit,)) for lit in _negate_term(term))))
    return out


def _negate_term(term: Term) -> list[Lit]:
    """The literals whose union is the complement of a term (De Morgan)."""
    return [neg for lit in term.lits for neg in _negate_lit(lit)]


def _negate_lit(lit: Lit) -> list[Lit]:
    """The literals whose union is the complement of one literal: positive atoms where the
    atom can say (`Atom.complement`: ranges, small moduli), else the negation."""
    if lit.negated:
        return [Lit(lit.atom)]
    parts = lit.atom.complement()
    return [Lit(lit.atom, negated=True)] if parts is None else [Lit(a) for a in parts]


def conjoin(a: Term, b: Term) -> Term | None:
    """The conjunction of two terms, simplified; None when it is empty."""
    lits = list(a.lits) + list(b.lits)
    merged: dict[type, Lit] = {}
    rest: list[Lit] = []
    for lit in lits:
        atom = lit.atom
        if not lit.negated and isinstance(atom, RangeAtom):
            prev = merged.get(type(atom))
            atom = _intersect_range(prev.atom, atom) if prev else atom
            if atom is None:
                return None
            merged[type(atom)] = Lit(atom)
        else:
            rest.append(lit)
    out = _dedupe_moduli(rest)
    if out is None:
        return None
    if any(Lit(lit.atom, not lit.negated) in out for lit in out):
        return None
    kr = merged.get(KRange)
    if kr is not None and kr.atom.hi is not None and kr.atom.hi < 0:
        return None  # keys are never negative
    qr = merged.get(QRange)
    if qr is not None and qr.atom.hi is not None and qr.atom.hi < 0:
        return None
    return Term(tuple(merged.values()) + tuple(out))


def _intersect_range(a, b):
    lo = b.lo if a.lo is None else a.lo if b.lo is None else max(a.lo, b.lo)
    hi = b.hi if a.hi is None else a.hi if b.hi is None else min(a.hi, b.hi)
    if lo is not None and hi is not None and lo > hi:
        return None
    return type(a)(lo, hi)


def _dedupe_moduli(lits: list[Lit]) -> list[Lit] | None:
    """Drop repeated literals; two positive residues of one modulus contradict."""
    seen: dict[tuple[type, int], int] = {}
    out: list[Lit] = []
    for lit in dict.fromkeys(lits):
        atom = lit.atom
        if not lit.negated and isinstance(atom, ModAtom):
            key = (type(atom), atom.m)
            if key in seen and seen[key] != atom.r:
                return None
            seen[key] = atom.r
        out.append(lit)
    return out


def _implies(a: Term, b: Term) -> bool:
    """True when every pair of term a is in term b (sufficient, syntactic check)."""
    for lit in b.lits:
        if lit in a.lits:
            continue
        atom = lit.atom
        if lit.negated or not isinstance(atom, RangeAtom):
            return False
        mine = [x.atom for x in a.lits if not x.negated and type(x.atom) is type(atom)]
        if not mine or not _range_within(mine[0], atom):
            return False
    return True


def _range_within(inner, outer) -> bool:
    lo_ok = outer.lo is None or (inner.lo is not None and inner.lo >= outer.lo)
    hi_ok = outer.hi is None or (inner.hi is not None and inner.hi <= outer.hi)
    return lo_ok and hi_ok


def _merge_bands(a: Term, b: Term) -> Term | None:
    """Two terms equal but for overlapping or adjacent bands become one term."""
    band_a = [l for l in a.lits if not l.negated and isinstance(l.atom, Band)]
    band_b = [l for l in b.lits if not l.negated and isinstance(l.atom, Band)]
    if len(band_a) != 1 or len(band_b) != 1:
        return None
    rest_a = set(a.lits) - set(band_a)
    rest_b = set(b.lits) - set(band_b)
    if rest_a != rest_b:
        return None
    x, y = band_a[0].atom, band_b[0].atom
    if x.lo is not None and y.hi is not None and y.hi + 1 < x.lo:
        return None
    if y.lo is not None and x.hi is not None and x.hi + 1 < y.lo:
        return None
    lo = None if x.lo is None or y.lo is None else min(x.lo, y.lo)
    hi = None if x.hi is None or y.hi is None else max(x.hi, y.hi)
    return Term(tuple(rest_a) + (Lit(Band(lo, hi)),))


def simplify(p: Pattern) -> Pattern:
    """Merge overlapping bands and drop terms that another term contains."""
    terms = list(dict.fromkeys(p.terms))
    changed = True
    while changed:
        changed = False
        for i, j in itertools.permutations(range(len(terms)), 2):
            merged = _merge_bands(terms[i], terms[j])
            if merged is not None:
                terms = [t for n, t in enumerate(terms) if n not in (i, j)] + [merged]
                changed = True
                break
            if _implies(terms[i], terms[j]):
                del terms[i]
                changed = True
                break
    return Pattern(tuple(terms))
