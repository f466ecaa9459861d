"""Exact numbers of allowed (q, k) pairs, without building an N x N mask.

A term is counted diagonal by diagonal: on the diagonal q - k = d every atom but the
neighbourhood is either a condition on d alone (band, q - k modulus), an interval of q
(q and k ranges, the matrix edges), or a periodic condition on q (k modulus, chunk, power
block distance), so the count on one diagonal is a difference of two closed floor
expressions, computed for all 2N - 1 diagonals at once with numpy. Negated literals are
removed by |T and not X| = |T| - |T and X|; unions by inclusion-exclusion,
|A or B| = |A| + |B| - |A and B|, where the intersections are simplified terms
(`algebra.conjoin`), so contained terms drop out early. What this cannot count in
closed form (a neighbourhood beside other atoms, several incommensurable periodic atoms
in one term) is counted from the exact block map plus enumeration of its partial tiles.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .algebra import conjoin, simplify
from .blocks import block_map
from .ir import (Band, Chunk, DiffMod, KMod, KRange, Lit, Neighborhood, Pattern, Power, QRange, Status,
                 Term, axis_neighbour)

MAX_RESIDUE_LOOP = 256  # several periodic atoms in one term: loop over residues up to this period
_TILE = 64


def count_pairs(pattern: Pattern, n: int) -> int:
    """The number of allowed pairs for n queries and n keys (prefill), exactly."""
    if n <= 0:
        return 0
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
    return (count_term(first, n) + _count_union(rest, n)
            - _count_union(simplify(Pattern(tuple(both))).terms, n))


def reduce_term(term: Term) -> Term:
    """Drop chunk literals implied by a smaller chunk that divides them: same chunk of C
    implies same chunk of every multiple of C (LongNet's nested segments)."""
    sizes = sorted(lit.atom.size for lit in term.lits if isinstance(lit.atom, Chunk) and not lit.negated)
    if len(sizes) < 2 or any(b % sizes[0] for b in sizes[1:]):
        return term
    keep = [lit for lit in term.lits
            if not (isinstance(lit.atom, Chunk) and not lit.negated and lit.atom.size != sizes[0])]
    return Term(tuple(dict.fromkeys(keep)))


@lru_cache(maxsize=4096)
def count_term(term: Term, n: int) -> int:
    """Allowed pairs of one conjunction for n queries and n keys."""
    term = reduce_term(term)
    neg = [lit for lit in term.lits if lit.negated]
    if neg:
        lit = neg[0]
        base = Term(tuple(x for x in term.lits if x != lit))
        with_atom = conjoin(base, Term((Lit(lit.atom),)))
        return count_term(base, n) - (count_term(with_atom, n) if with_atom is not None else 0)
    atoms = [lit.atom for lit in term.lits]
    if any(isinstance(a, Neighborhood) for a in atoms):
        if len(atoms) == 1:
            return _count_neighborhood(atoms[0], n)
        return count_by_tiles(Pattern((term,)), n)
    value = _count_diagonals(atoms, n)
    return count_by_tiles(Pattern((term,)), n) if value is None else value


# ---------------------------------------------------------------- diagonals


def _window_count(a: np.ndarray, b: np.ndarray, period: int, lo: np.ndarray, hi: np.ndarray,
                  step: int, res: np.ndarray) -> np.ndarray:
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


def crt(mods: list[tuple[int, int]]) -> tuple[int, int] | None:
    """x = r_i (mod m_i) for all i, as one (m, r); None when incompatible."""
    m, r = 1, 0
    for mi, ri in mods:
        g = math.gcd(m, mi)
        if (ri - r) % g:
            return None
        lcm = m // g * mi
        # r + m t = ri (mod mi)  ->  t = (ri - r)/g * inv(m/g) (mod mi/g)
        t = ((ri - r) // g * pow(m // g, -1, mi // g)) % (mi // g) if mi // g > 1 else 0
        m, r = lcm, (r + m * t) % lcm
    return m, r


def _count_diagonals(atoms: list, n: int) -> int | None:
    """Count a conjunction of positive atoms (no neighbourhood) by diagonals; None if unsupported."""
    lo, hi = -(n - 1), n - 1
    qlo, qhi, klo, khi = 0, n - 1, 0, n - 1
    dmods, kmods, windows = [], [], []
    for a in atoms:
        if isinstance(a, Band):
            lo = lo if a.lo is None else max(lo, a.lo)
            hi = hi if a.hi is None else min(hi, a.hi)
        elif isinstance(a, QRange):
            qlo = qlo if a.lo is None else max(qlo, a.lo)
            qhi = qhi if a.hi is None else min(qhi, a.hi)
        elif isinstance(a, KRange):
            klo = klo if a.lo is None else max(klo, a.lo)
            khi = khi if a.hi is None else min(khi, a.hi)
        elif isinstance(a, DiffMod):
            dmods.append((a.m, a.r))
        elif isinstance(a, KMod):
            kmods.append((a.m, a.r))
        elif isinstance(a, (Chunk, Power)):
            windows.append(a)
    if lo > hi or qlo > qhi or klo > khi:
        return 0
    d = np.arange(lo, hi + 1, dtype=np.int64)
    dm = crt(dmods)
    km = crt(kmods)
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
    if len(windows) == 1 and _period(windows[0]) % step == 0:
        return _single_window(windows[0], d, a, b, step, res)
    period = math.lcm(step, *[_period(w) for w in windows])
    if period > MAX_RESIDUE_LOOP:
        return None
    total = 0
    for rho in range(period):  # q = rho (mod period)
        ok = (rho - res) % step == 0
        for w in windows:
            ok = ok & _window_ok(w, d, rho % _period(w))
        total += int(_window_count(a[ok], b[ok], period, np.full(ok.sum(), rho), np.full(ok.sum(), rho),
                                   1, np.zeros(ok.sum(), dtype=np.int64)).sum())
    return total


def _period(w) -> int:
    return w.size if isinstance(w, Chunk) else w.block


def _single_window(w, d, a, b, step, res) -> int:
    """One chunk or power atom: windows of q mod period on each diagonal."""
    total = 0
    for p, wl, wh, keep in _windows(w, d):
        total += int((_window_count(a, b, p, wl, wh, step, res) * keep).sum())
    return total


def _windows(w, d):
    """(period, lo, hi, keep) windows of q mod period where the atom holds on diagonal d."""
    if isinstance(w, Chunk):
        c = w.size
        keep = (np.abs(d) <= c - 1).astype(np.int64)
        yield c, np.maximum(d, 0), c - 1 + np.minimum(d, 0), keep
        return
    bsz = w.block
    t, u = np.divmod(d, bsz)  # q mod B >= u: block distance t; else t + 1
    yield bsz, u, np.full_like(d, bsz - 1), _power_distance(t).astype(np.int64)
    yield bsz, np.zeros_like(d), u - 1, _power_distance(t + 1).astype(np.int64)


def _window_ok(w, d, r):
    """Whether residue r of q (mod the atom's period) satisfies the atom on each diagonal d."""
    ok = np.zeros(d.shape, dtype=bool)
    for p, wl, wh, keep in _windows(w, d):
        ok |= (keep > 0) & (wl <= r) & (r <= wh)
    return ok


def _power_distance(x: np.ndarray) -> np.ndarray:
    return (x == 0) | ((x > 0) & ((x & (x - 1)) == 0))


# ---------------------------------------------------------------- neighbourhoods and tiles


def _count_neighborhood(nb: Neighborhood, n: int) -> int:
    """Pairs of a neighbourhood: per query, the product over axes of its allowed coordinates,
    cut at the flattened key bound n with a mixed-radix (lexicographic) count."""
    p, grid = nb.prefix, math.prod(nb.dims)
    n_text = min(p, n)
    total = n_text * n + n_text * max(0, n - n_text)  # text rows see all keys; text columns seen by all
    g_n = max(0, min(n - p, grid))  # grid queries (and keys) below n
    if g_n == 0:
        return total
    tables = []
    for length, k, dl, c in zip(nb.dims, nb.kernel, nb.dilation, nb.causal):
        x = np.arange(length)[:, None]
        y = np.arange(length)[None, :]
        allowed = np.asarray(axis_neighbour(x, y, length, k, dl, c), dtype=bool)
        tables.append((allowed, np.concatenate([np.zeros((length, 1), np.int64), allowed.cumsum(1)], axis=1)))
    q = np.arange(g_n, dtype=np.int64)
    coords, rem = [], q
    strides = [math.prod(nb.dims[i + 1:]) for i in range(len(nb.dims))]
    for s, length in zip(strides, nb.dims):
        coords.append((rem // s) % length)
    bound_digits = [(g_n // s) % length if g_n < grid else None for s, length in zip(strides, nb.dims)]
    counts = [cum[x, -1] for (allowed, cum), x in zip(tables, coords)]
    if g_n >= grid:
        return total + int(np.prod(np.stack(counts), axis=0).sum())
    # keys y with flat(y) < g_n: sum over the first axis where y's digit is below the bound's
    out = np.zeros(g_n, dtype=np.int64)
    prefix_ok = np.ones(g_n, dtype=bool)
    for i, ((allowed, cum), x, m) in enumerate(zip(tables, coords, bound_digits)):
        rest = np.prod(np.stack(counts[i + 1:]), axis=0) if i + 1 < len(counts) else 1
        out += prefix_ok * cum[x, m] * rest
        prefix_ok &= allowed[x, m]
    return total + int(out.sum())


def count_by_tiles(pattern: Pattern, n: int, tile: int = _TILE) -> int:
    """Exact count from the block map: full tiles by area, partial tiles by enumeration."""
    bmap = block_map(pattern, n, tile, tile)
    sizes = np.minimum(np.arange(0, n, tile) + tile, n) - np.arange(0, n, tile)
    total = int((np.outer(sizes, sizes) * (bmap.status == Status.ALL)).sum())
    qi, kj = np.nonzero(bmap.status == Status.SOME)
    dq = np.arange(tile, dtype=np.int64)[None, :, None]
    dk = np.arange(tile, dtype=np.int64)[None, None, :]
    for s in range(0, len(qi), 64):
        i, j = qi[s:s + 64], kj[s:s + 64]
        q = (i * tile)[:, None, None] + dq
        k = (j * tile)[:, None, None] + dk
        total += int((np.asarray(pattern.holds(q, k), dtype=bool) & (q < n) & (k < n)).sum())
    return total
