"""Exact numbers of allowed (q, k) pairs, without building an N x N mask.

A term is counted diagonal by diagonal: on the diagonal q - k = d every atom but the
neighbourhood is either a condition on d alone (band, q - k modulus), an interval of q
(q and k ranges, the matrix edges), or a periodic condition on q (k modulus, chunk, power
block distance), so the count on one diagonal is a difference of two closed floor
expressions, computed for all 2N - 1 diagonals at once with numpy. Negated literals are
removed by |T and not X| = |T| - |T and X|; unions by inclusion-exclusion,
|A or B| = |A| + |B| - |A and B|, where the intersections are simplified terms
(`algebra.conjoin`), so contained terms drop out early. Grid neighbourhoods
(and their intersections and unions) are counted exactly by per-axis boxes
(compiler/blocks.py); beside other literals, tile by tile, enumerating only the tiles
where both are partial. What this cannot count in closed form (several incommensurable
periodic atoms in one term) is counted from the exact block map plus enumeration of its
partial tiles.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .algebra import conjoin, simplify
from .blocks import MAX_BOX_TERMS, block_map, box_pair_count, box_tile_counts, lit_tile, nb_groups
from .atoms import Conj, meet_range
from .ir import Lit, Neighborhood, Pattern, Status, Term

BWD_MATMUL_RATIO = 2.5  # backward matrix products per allowed pair against the forward's (5 against 2)
MAX_RESIDUE_LOOP = 256  # several periodic atoms in one term: loop over residues up to this period
_TILE = 64


def count_pairs(pattern: Pattern, n: int) -> int:
    """The number of allowed pairs for n queries and n keys (prefill), exactly."""
    if n <= 0:
        return 0
    _BUDGET[0] = MAX_UNIONS
    groups = nb_groups(pattern.terms)
    if any(c is not None for c, _ in groups) and len(groups) <= MAX_GROUPS:
        try:  # inclusion-exclusion over the groups (N1 or N2 ...) and R, not over their terms
            return _count_groups(tuple(groups), n)
        except _OverBudget:
            _BUDGET[0] = MAX_UNIONS
    try:
        return _count_union(pattern.terms, n)
    except _OverBudget:
        return count_by_tiles(pattern, n)


MAX_UNIONS = 4096  # inclusion-exclusion steps before counting from the block map instead
_BUDGET = [MAX_UNIONS]


class _OverBudget(Exception):
    pass


@lru_cache(maxsize=4096)
def _count_union(terms: tuple[Term, ...], n: int) -> int:
    _BUDGET[0] -= 1
    if _BUDGET[0] < 0:
        raise _OverBudget
    if not terms:
        return 0
    if len(terms) == 1:
        return count_term(terms[0], n)
    first, rest = terms[0], terms[1:]
    both = [t for t in (conjoin(first, r) for r in rest) if t is not None]
    return count_term(first, n) + _count_union(rest, n) - _count_union(simplify(Pattern(tuple(both))).terms, n)


MAX_GROUPS = 6


def _count_groups(groups: tuple, n: int) -> int:
    """|G1 or G2 or ...| for groups (conjunctions of neighbourhoods or None, other literals)
    (blocks.nb_groups), by inclusion-exclusion; a meet of two groups is a group again."""
    _BUDGET[0] -= 1
    if _BUDGET[0] < 0:
        raise _OverBudget
    if not groups:
        return 0
    first, rest = groups[0], groups[1:]
    both = tuple(g for g in (_meet(first, r) for r in rest) if g is not None)
    return _count_group(first, n) + _count_groups(rest, n) - _count_groups(both, n)


def _meet(a: tuple, b: tuple) -> tuple | None:
    rest = conjoin(Term(a[1]), Term(b[1]))
    if rest is None:
        return None
    if a[0] is None or b[0] is None:
        conjs = b[0] if a[0] is None else a[0]
    else:
        conjs = tuple(dict.fromkeys(tuple(sorted(set(x + y), key=repr)) for x in a[0] for y in b[0]))
        if len(conjs) > MAX_BOX_TERMS:
            raise _OverBudget
    return conjs, rest.lits


def _count_group(group: tuple, n: int) -> int:
    conjs, rest = group
    if conjs is None:
        return _count_union((Term(rest),), n)
    return box_pair_count(conjs, n) if not rest else _count_nb_group(conjs, rest, n)


def reduce_term(term: Term) -> Term:
    """Drop chunk literals implied by a smaller chunk that divides them: same chunk of C
    implies same chunk of every multiple of C (LongNet's nested segments)."""
    chunks = term.conj.chunks
    sizes = sorted(a.size for a in chunks)
    if len(sizes) < 2 or any(b % sizes[0] for b in sizes[1:]):
        return term
    drop = {Lit(a) for a in chunks if a.size != sizes[0]}
    return Term(tuple(dict.fromkeys(lit for lit in term.lits if lit not in drop)))


@lru_cache(maxsize=4096)
def count_term(term: Term, n: int) -> int:
    """Allowed pairs of one conjunction for n queries and n keys."""
    term = reduce_term(term)
    negs = tuple(l.atom for l in term.lits if l.negated and isinstance(l.atom, Neighborhood))
    if negs:  # |T and not (M1 or M2 ...)| = |T| - |(T's neighbourhoods and M1) or ... and T's rest|
        base = Term(tuple(l for l in term.lits if not (l.negated and isinstance(l.atom, Neighborhood))))
        pos = tuple(l.atom for l in base.lits if not l.negated and isinstance(l.atom, Neighborhood))
        rest = tuple(l for l in base.lits if l.negated or not isinstance(l.atom, Neighborhood))
        cut = tuple(dict.fromkeys(pos + (m,) for m in negs))
        if len(cut) <= MAX_BOX_TERMS and len({(a.dims, a.prefix) for c in cut for a in c}) == 1:
            return count_term(base, n) - _count_group((cut, rest), n)
    neg = [lit for lit in term.lits if lit.negated]
    if neg:
        lit = neg[0]
        base = Term(tuple(x for x in term.lits if x != lit))
        with_atom = conjoin(base, Term((Lit(lit.atom),)))
        return count_term(base, n) - (count_term(with_atom, n) if with_atom is not None else 0)
    atoms = [lit.atom for lit in term.lits]
    if any(isinstance(a, Neighborhood) for a in atoms):
        ((conjs, rest),) = nb_groups((term,))
        if conjs is None:  # neighbourhoods over different grids
            return count_by_tiles(Pattern((term,)), n)
        return box_pair_count(conjs, n) if not rest else _count_nb_group(conjs, rest, n)
    value = _count_diagonals(atoms, n)
    return count_by_tiles(Pattern((term,)), n) if value is None else value


# ---------------------------------------------------------------- diagonals


def _window_count(
    a: np.ndarray, b: np.ndarray, period: int, lo: np.ndarray, hi: np.ndarray, step: int, res: np.ndarray
) -> np.ndarray:
    """#q in [a, b] (a >= 0) with lo <= q mod period <= hi and q = res (mod step); step | period."""

    def upto(x: np.ndarray) -> np.ndarray:  # #q in [0, x) with the conditions
        full, part = np.divmod(x, period)
        return full * _residues(lo, hi, step, res) + _residues(lo, np.minimum(hi, part - 1), step, res)

    return np.where(b >= a, upto(b + 1) - upto(a), 0)


def _residues(lo: np.ndarray, hi: np.ndarray, step: int, res: np.ndarray) -> np.ndarray:
    """#j in [lo, hi] with j = res (mod step)."""
    if step == 1:
        return np.maximum(hi - lo + 1, 0)
    cnt = (hi - res) // step - (lo - 1 - res) // step
    return np.where(hi >= lo, cnt, 0)


def _count_diagonals(atoms: list, n: int) -> int | None:
    """Count a conjunction of positive atoms (no neighbourhood) by diagonals; None if unsupported."""
    c = Conj.of(atoms)
    if c.grids:
        raise ValueError("neighbourhoods are counted by per-axis boxes, not by diagonals")
    lo, hi = meet_range(-(n - 1), n - 1, c.d_lo, c.d_hi)
    qlo, qhi = meet_range(0, n - 1, c.q_lo, c.q_hi)
    klo, khi = meet_range(0, n - 1, c.k_lo, c.k_hi)
    windows = c.periodic
    if lo > hi or qlo > qhi or klo > khi:
        return 0
    d = np.arange(lo, hi + 1, dtype=np.int64)
    dm, km = c.dmod, c.kmod
    if dm is None or km is None:
        return 0
    if dm[0] > 1:
        d = d[d % dm[0] == dm[1]]
    a = np.maximum.reduce([np.full_like(d, qlo), d + klo])
    b = np.minimum.reduce([np.full_like(d, qhi), d + khi])
    step, kres = km
    res = (kres + d) % step  # q = k + d = kres + d (mod step)
    if not windows:
        return int(_window_count(a, b, step, np.zeros_like(d), np.full_like(d, step - 1), step, res).sum())
    if len(windows) == 1 and windows[0].period % step == 0:
        return _single_window(windows[0], d, a, b, step, res)
    period = math.lcm(step, *[w.period for w in windows])
    if period > MAX_RESIDUE_LOOP:
        return None
    total = 0
    for rho in range(period):  # q = rho (mod period)
        ok = (rho - res) % step == 0
        for w in windows:
            ok = ok & w.window_ok(d, rho % w.period)
        total += int(
            _window_count(
                a[ok],
                b[ok],
                period,
                np.full(ok.sum(), rho),
                np.full(ok.sum(), rho),
                1,
                np.zeros(ok.sum(), dtype=np.int64),
            ).sum()
        )
    return total


def _single_window(w, d, a, b, step, res) -> int:
    """One chunk or power atom: windows of q mod period on each diagonal."""
    total = 0
    for p, wl, wh, keep in w.diagonal_windows(d):
        total += int((_window_count(a, b, p, wl, wh, step, res) * keep).sum())
    return total


# ---------------------------------------------------------------- neighbourhoods and tiles


def _count_nb_group(conjs, rest: tuple[Lit, ...], n: int) -> int:
    """Pairs of (a union of conjunctions of neighbourhoods) and the literals `rest`, tile by
    tile: a tile where the rest allows everything adds the union's exact count (per-axis
    boxes, compiler/blocks.py), one where it allows nothing adds none, and only the tiles
    where both are partial are enumerated (for `& causal`, the diagonal tiles)."""
    tile = max(_TILE, 1 << (-(-n // 512) - 1).bit_length())
    counts = box_tile_counts(conjs, n, n, tile, tile)
    none = np.zeros(counts.shape, dtype=bool)
    every = np.ones(counts.shape, dtype=bool)
    for lit in rest:
        s = np.broadcast_to(lit_tile(lit, n, n, tile, tile), counts.shape)
        none |= s == Status.NONE
        every &= s == Status.ALL
    total = int(counts[every & ~none].sum())
    qi, kj = np.nonzero(~every & ~none & (counts > 0))
    term = Pattern(tuple(Term(tuple(Lit(a) for a in c) + rest) for c in conjs))
    dq = np.arange(tile, dtype=np.int64)[None, :, None]
    dk = np.arange(tile, dtype=np.int64)[None, None, :]
    batch = max(1, (1 << 20) // (tile * tile))
    for s in range(0, len(qi), batch):
        i, j = qi[s : s + batch], kj[s : s + batch]
        q = (i * tile)[:, None, None] + dq
        k = (j * tile)[:, None, None] + dk
        total += int((np.asarray(term.holds(q, k), dtype=bool) & (q < n) & (k < n)).sum())
    return total


def count_by_tiles(pattern: Pattern, n: int, tile: int = _TILE) -> int:
    """Exact count from the block map: full tiles by area, partial tiles by enumeration."""
    bmap = block_map(pattern, n, tile, tile)
    sizes = np.minimum(np.arange(0, n, tile) + tile, n) - np.arange(0, n, tile)
    total = int((np.outer(sizes, sizes) * (bmap.status == Status.ALL)).sum())
    qi, kj = np.nonzero(bmap.status == Status.SOME)
    dq = np.arange(tile, dtype=np.int64)[None, :, None]
    dk = np.arange(tile, dtype=np.int64)[None, None, :]
    for s in range(0, len(qi), 64):
        i, j = qi[s : s + 64], kj[s : s + 64]
        q = (i * tile)[:, None, None] + dq
        k = (j * tile)[:, None, None] + dk
        total += int((np.asarray(pattern.holds(q, k), dtype=bool) & (q < n) & (k < n)).sum())
    return total
