"""The kernel plan: which key blocks a query block visits, and which of them skip the mask.

A compiler pass that returns data. For each head group the plan turns every term of its
Pattern into two key intervals of a query block of rows [q0, q_last], as affine data
(compiler/atoms.py's `Bounds` of `Key`s; codegen renders them as scalar Triton code and the
simulator evaluates them on numpy arrays):

- the term's hull: every key that some row of the block may attend through this term lies
  in it (the meet of its literals' hulls, `Atom.key_bounds`; a QRange only says when the
  term is active; an atom without bounds leaves the interval open);
- the term's full interval: keys that every row of the block may attend through the term
  (None when some literal is never full: moduli, powers, negations, neighbourhoods).

The kernel converts both intervals to key blocks (the full one shrunk to complete blocks
below N // BLOCK_N) and visits, per term, masked [a, b), unmasked [b, c), masked [c, d),
minus the blocks of the terms visited before it, so that no block is visited twice. The
order is chosen here: terms with a full interval first, terms with narrow key tiles (short
KRange terms, i.e. sinks) after the wide ones, and one term with a Power literal (or a
(q - k) mod m literal with a large m under a band, or a k mod m literal) last, where it
becomes a loop over disjoint key ranges (power-of-two block distances, or the diagonals of
the modulus) or over the stripe's keys alone (k = r, r + m, ...: tiles of BLOCK_N such keys,
read with a strided pointer) instead of one interval. Groups of more than MAX_TERMS terms are visited as one masked loop
over the union of the terms' hulls.

Masked tiles use the union predicate of the whole group, so they are always correct;
unmasked tiles skip the mask, which is correct because the term alone allows every pair.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .atoms import OPEN, Bounds, Conj, DiffMod, KMod, RangeAtom, Select
from .grid_plan import GridPlan, plan_grid
from .ir import Band, Lit, Pattern, Power, Program, Selection, Term

MAX_TERMS = 4  # terms visited as separate segment lists; beyond that one masked hull loop
NARROW_MAX = 64  # a term whose keys span at most this many positions gets narrow key tiles
DIFFMOD_LOOP_MIN = 64  # (q - k) mod m terms with m at least this loop over their diagonals
RESIDUE_MAX = 16  # bands & (q - k) mod d == 0 with d up to this run per residue class
EDGE_MERGE_MIN = 2048  # a first term's band at least this wide walks both masked edges in one loop
MIN_TILE = 16  # the smallest tile side tl.dot takes
# a split plan runs only where each residue class holds at least this many rows: below it the
# classes' launch is mostly overhead (H100: classes of 16 rows 0.44x the diagonal loop's speed,
# of 85 rows 4.3x, of 128 rows 7.1x; bench/proto/NOTES.md "Split launches")
SPLIT_MIN_ROWS = 64


def atom_bounds(lit: Lit, columns: bool = False) -> tuple[Bounds, Bounds | None]:
    """(hull, full) of one literal for a query block (for a key block with `columns`: the
    column view, Atom.query_bounds); a negation is open and never full."""
    if lit.negated:
        return OPEN, None
    return lit.atom.query_bounds() if columns else lit.atom.key_bounds()


def term_bounds(lits: tuple[Lit, ...], columns: bool = False) -> tuple[Bounds, Bounds | None]:
    """(hull, full) of a conjunction: the meet of its literals' intervals; full only while the
    hull's conditions hold too."""
    hull, full = OPEN, OPEN
    for lit in lits:
        h, f = atom_bounds(lit, columns)
        hull = hull & h
        full = None if full is None or f is None else full & f
    return hull, (None if full is None else Bounds(full.lo, full.hi, hull.on + full.on))


def _narrow_width(term: Term) -> int | None:
    """How many keys a term can reach at most, when a key range bounds it below NARROW_MAX."""
    c = term.conj
    if c.k_hi is not None:
        width = c.k_hi - max(c.k_lo or 0, 0) + 1
        if width <= NARROW_MAX:
            return max(width, 1)
    return None


@dataclass(frozen=True)
class Loop:
    """A term visited as a loop over disjoint key ranges, nearest first, instead of one hull.

    kind "power": block distances 0, 1, 2, 4, ... of Power(block); "diffmod": the diagonals
    q - k = d0, d0 + m, d0 + 2m, ... of DiffMod(m, r) under a Band whose lower end makes
    d0 the first allowed difference; "stripe": the keys k = r + m * j of KMod(m, r) only,
    BLOCK_N consecutive j per tile (every key of a tile satisfies the literal, so the tile is
    dense where the term's other literals allow its rows).
    """

    kind: Literal["power", "diffmod", "stripe"]
    lit: Lit  # the literal that the loop replaces
    block: int = 0  # power
    m: int = 0  # diffmod, stripe
    d0: int = 0  # diffmod
    r: int = 0  # stripe


def _loop_of(term: Term) -> Loop | None:
    powers = term.atoms_of(Power)
    if len(powers) == 1:
        return Loop("power", Lit(powers[0]), block=powers[0].block)
    bands = [b for b in term.atoms_of(Band) if b.lo is not None]
    mods = [a for a in term.atoms_of(DiffMod) if a.m >= DIFFMOD_LOOP_MIN]
    if bands and mods:
        lo, a = bands[0].lo, mods[0]
        return Loop("diffmod", Lit(a), m=a.m, d0=lo + (a.r - lo) % a.m)
    stripes = [a for a in term.atoms_of(KMod) if a.m >= 2]
    if stripes:
        return Loop("stripe", Lit(stripes[0]), m=stripes[0].m, r=stripes[0].r)
    return None


# ------------------------------------------------------------------ plan records


@dataclass(frozen=True)
class TermPlan:
    """One term's visit: its key intervals, its key tile, and whether it loops."""

    slot: int  # position in the visiting order
    text: str  # the term, for comments
    hull: Bounds  # keys some row of the block may attend (and when the term is active)
    full_bounds: Bounds | None  # keys every row attends (None: never full)
    tile: str  # "BLOCK_N" or "BLOCK_N_NARROW"
    loop: Loop | None  # visited as a loop over disjoint key ranges (see Loop)
    narrow: int | None  # at most this many keys (narrow tiles)
    edge_merge: bool = False  # both masked edges in one loop (wide bands: one pipeline start less)

    @property
    def full(self) -> bool:
        """Whether the term has a full interval (tiles visited without the mask)."""
        return self.full_bounds is not None


@dataclass(frozen=True)
class GroupPlan:
    index: int | str  # the group's number ("3r": the residue plan of group 3)
    text: str
    pattern: Pattern  # the group's predicate (masked tiles evaluate it)
    mode: Literal["segments", "hull", "empty"]
    terms: tuple[TermPlan, ...]
    narrow: int  # widest narrow term (keys), 0 when none
    block_cap: int | None  # tiles no larger than this align with the pattern's chunks / powers
    grows: bool  # the number of keys grows with q (causal-like): schedule long blocks first
    rows_cap: int | None = None  # query tiles no taller than this (diagonal loops cost BLOCK_M per key)
    residue: int = 0  # d > 0: the group may run in residue mode (see residue_pattern)
    residue_plan: "GroupPlan | None" = None  # the plan of residue_pattern (or split_pattern's), on subsequences
    split: int = 0  # m > 0: the group may run as two launches merged by log-sum-exp (see split_pattern)
    split_plan: "GroupPlan | None" = None  # the first launch's plan: the pattern less its residue term
    grid: GridPlan | None = None  # a union of neighbourhoods: the tile-order kernel (grid_plan.py)
    columns: "SpanPlan | None" = None  # the backward's column plan (dK, dV by key tile)
    rows: "SpanPlan | None" = None  # the backward's row plan (dQ by query tile)
    select: "SelectPlan | None" = None  # the selection term's plan (blocks chosen at run time)

    @property
    def tuning(self) -> dict[str, int | bool | None]:
        """What the launch configuration reads of the plan (the generated module's _TUNING)."""
        caps = [c for c in (self.block_cap, self.select and self.select.atom.block) if c]
        return {
            "block_cap": min(caps) if caps else None,
            "rows_cap": self.rows_cap,
            "narrow": self.narrow,
            "grows": self.grows,
            "residue": 0 if self.select else self.residue,
            "split": 0 if self.select else self.split,
            "split_from": 0 if self.select else self.split * SPLIT_MIN_ROWS,  # the least N that splits
            "grid": self.grid is not None and self.select is None,
            "select": self.select is not None,
            "band": None if self.select else self.pattern.causal_band,  # (S, W): the Hopper kernel's shape
        }


def _pow2_divisor(x: int) -> int:
    return x & -x


def _term_plan(slot: int, term: Term, loop: Loop | None, narrow: int | None) -> TermPlan:
    lits = term.lits if loop is None else tuple(l for l in term.lits if l != loop.lit)
    hull, full = term_bounds(lits)
    if loop is not None and loop.kind == "diffmod":
        full = None  # rows of a block lie on different diagonals
    if narrow is not None and narrow < MIN_TILE:
        full = None  # no complete key tile fits in so few keys
    return TermPlan(
        slot=slot,
        text=str(term),
        hull=hull,
        full_bounds=full,
        tile="BLOCK_N_NARROW" if narrow else "BLOCK_N",
        loop=loop,
        narrow=narrow,
    )


def class_band(lo: int | None, hi: int | None, d: int) -> tuple[int | None, int | None]:
    """The band lo <= q - k <= hi on the subsequences of one residue class mod d, where
    q - k = d * (q' - k'): ceil(lo / d) <= q' - k' <= floor(hi / d) (None: open)."""
    return (None if lo is None else -((-lo) // d)), (None if hi is None else hi // d)


def residue_pattern(pattern: Pattern) -> tuple[int, Pattern] | None:
    """(d, pattern on subsequences) when the pattern is bands & (q - k) mod d == 0, else None.

    Then query q and key k can only meet when q mod d == k mod d, so the rows and keys of
    one residue class form a subsequence (positions rho, rho + d, ...) on which the pattern
    is a plain band: lo <= d * (q' - k') <= hi. The kernel can run each residue class as
    dense attention over a d times shorter sequence (LongNet's dilated attention), where
    every tile is fully allowed instead of one pair in d.
    """
    if len(pattern.terms) != 1 or any(lit.negated for lit in pattern.terms[0].lits):
        return None
    c = pattern.terms[0].conj
    if len(c.dmods) != 1 or c != Conj(d_lo=c.d_lo, d_hi=c.d_hi, dmods=c.dmods):
        return None
    ((d, r),) = c.dmods
    if r != 0 or not 2 <= d <= RESIDUE_MAX:
        return None
    lo, hi = class_band(c.d_lo, c.d_hi, d)
    if lo is not None and hi is not None and lo > hi:
        return d, Pattern(())
    return d, Pattern((Term((Lit(Band(lo, hi)),)),))


def _minus(a: tuple[float, float], b: tuple[float, float]) -> list[tuple[float, float]]:
    """The integers of interval a not in interval b, as at most two intervals (ends inclusive)."""
    out = [(a[0], min(a[1], b[0] - 1)), (max(a[0], b[1] + 1), a[1])]
    return [(lo, hi) for lo, hi in out if lo <= hi]


def split_pattern(pattern: Pattern) -> tuple[int, Pattern, Pattern] | None:
    """(m, rest, pattern on subsequences) when one term is bands & (q - k) mod m == 0 and every
    other term is a band of q - k alone (causal & (window(W) | strided(m))), else None.

    The strided term's pairs lie within residue classes q mod m, where its band becomes a
    band of q' - k' (`class_band`); each other term covers there exactly the differences of
    its own class band. The strided pairs that no other term covers are then the differences
    of one band (or none; more than one band: None), the pattern on subsequences. The rest
    (the other terms) runs as an ordinary launch, these pairs in residue mode, and the two
    partial softmaxes merge by log-sum-exp: no pair counts twice and none is missed.
    """
    inf = float("inf")
    strided, rest = [], []
    for t in pattern.terms:
        c = t.conj
        if any(lit.negated for lit in t.lits):
            return None
        if c == Conj(d_lo=c.d_lo, d_hi=c.d_hi):
            rest.append(t)
        elif len(c.dmods) == 1 and c.dmods[0][1] == 0 and c == Conj(d_lo=c.d_lo, d_hi=c.d_hi, dmods=c.dmods):
            strided.append(t)
        else:
            return None
    if len(strided) != 1 or not rest:
        return None
    c = strided[0].conj
    m = c.dmods[0][0]
    if m < 2:
        return None
    ends = lambda lo, hi: (-inf if lo is None else lo, inf if hi is None else hi)  # noqa: E731
    left = [ends(*class_band(c.d_lo, c.d_hi, m))]
    for t in rest:
        left = [piece for a in left for piece in _minus(a, ends(*class_band(t.conj.d_lo, t.conj.d_hi, m)))]
    if len(left) != 1:
        return None  # all covered (nothing to add) or several bands: the diagonal loop stays
    ((lo, hi),) = left
    band = Band(None if lo == -inf else int(lo), None if hi == inf else int(hi))
    return m, Pattern(tuple(rest)), Pattern((Term((Lit(band),)),))


def plan_group(index: int | str, pattern: Pattern, residue: bool = True) -> GroupPlan:
    """The group's plan; with `residue`, its residue plan or its split (residue_pattern,
    split_pattern). A split group's tiles (rows_cap) are those of its two launches; its own
    plan stays for the calls that run one launch (parts of a sequence, traces)."""
    res = residue_pattern(pattern) if residue else None
    if res is not None:
        sub = plan_group(f"{index}r", res[1], residue=False)
        return dataclasses.replace(plan_group(index, pattern, residue=False), residue=res[0], residue_plan=sub)
    split = split_pattern(pattern) if residue else None
    if split is not None:
        first = plan_group(f"{index}s", split[1], residue=False)
        sub = plan_group(f"{index}r", split[2], residue=False)
        whole = plan_group(index, pattern, residue=False)
        return dataclasses.replace(
            whole, split=split[0], split_plan=first, residue_plan=sub, rows_cap=first.rows_cap or sub.rows_cap
        )
    terms = pattern.terms
    caps = [_pow2_divisor(a.period) for t in terms for a in t.conj.periodic]
    caps = [c for c in caps if c >= MIN_TILE]
    grows = any(b.hi is None for t in terms for b in t.atoms_of(Band))
    common = dict(index=index, text=str(pattern), pattern=pattern, block_cap=min(caps) if caps else None, grows=grows)
    if not terms:
        return GroupPlan(mode="empty", terms=(), narrow=0, **common)
    if len(terms) > MAX_TERMS:
        plans = tuple(_term_plan(i, t, None, None) for i, t in enumerate(terms))
        return GroupPlan(mode="hull", terms=plans, narrow=0, **common)
    # visiting order: wide terms with a full interval, wide without, narrow, then one loop term
    loop_slot = next((i for i, t in enumerate(terms) if _loop_of(t) is not None), None)
    info = []
    for i, t in enumerate(terms):
        loop = _loop_of(t) if i == loop_slot else None
        narrow = _narrow_width(t) if loop_slot is None else None
        _, full = term_bounds(t.lits)
        rank = (loop is not None, narrow is not None, full is None)
        info.append((rank, i, t, loop, narrow))
    info.sort(key=lambda x: (x[0], x[1]))
    plans = tuple(_term_plan(slot, t, loop, narrow) for slot, (_, _, t, loop, narrow) in enumerate(info))
    first = info[0][2]
    widths = [b.hi - b.lo + 1 for b in first.atoms_of(Band) if b.lo is not None and b.hi is not None]
    if plans[0].full and plans[0].loop is None and widths and min(widths) >= EDGE_MERGE_MIN:
        plans = (dataclasses.replace(plans[0], edge_merge=True),) + plans[1:]
    widest = max((p.narrow or 0) for p in plans)
    # a diagonal loop computes BLOCK_M x BLOCK_M tiles for BLOCK_M pairs: shorter query tiles
    # (measured on an H100: causal & (window(256) | strided(256)), 128 -> 64 rows: 13.8 -> 8.7 ms)
    rows_cap = 64 if any(p.loop is not None and p.loop.kind == "diffmod" for p in plans) else None
    return GroupPlan(mode="segments", terms=plans, narrow=widest, rows_cap=rows_cap, **common)


# ------------------------------------------------------------------ spans: the backward pass's plans


@dataclass(frozen=True)
class SpanTerm:
    """One term's intervals on the other side of a block: the hull (every position that some
    member of the block may pair with through the term) and the full interval (positions that
    pair with every member of the block; None: never full)."""

    text: str
    hull: Bounds
    full_bounds: Bounds | None

    @property
    def full(self) -> bool:
        return self.full_bounds is not None


@dataclass(frozen=True)
class SpanPlan:
    """Per term, the intervals of one side that a block of the other side meets.

    `columns`: a key block [k0, k_last] and the queries that may see it (the column plan, for
    a dK/dV pass that goes by key tile); else a query block [q0, q_last] and the keys it may
    see (the row plan, for a dQ pass). A kernel visits, per term, the tiles of its hull that
    no earlier term visited, unmasked where some term's full interval holds the whole tile.
    """

    text: str
    pattern: Pattern
    columns: bool
    terms: tuple[SpanTerm, ...]


ColumnPlan = SpanPlan


def _plan_span(pattern: Pattern, columns: bool) -> SpanPlan:
    """Each term's hull and full interval; loop terms (power, diagonals) visit their hull,
    masked: a backward that looped over their ranges computed wrong gradients on Hopper GPUs
    (correct in the interpreter), bench/proto/NOTES.md."""
    terms = [SpanTerm(str(t), *term_bounds(t.lits, columns)) for t in pattern.terms]
    # terms with a full interval first: their tiles are then visited (and skipped later) first
    terms.sort(key=lambda t: not t.full)
    return SpanPlan(str(pattern), pattern, columns, tuple(terms))


def plan_columns(pattern: Pattern) -> ColumnPlan:
    """The column plan: for a key block [k0, k_last], per term, the queries that may attend it
    (the meet of its literals' `query_bounds` hulls) and those that attend all of it."""
    return _plan_span(pattern, columns=True)


def plan_rows(pattern: Pattern) -> SpanPlan:
    """The row plan in the same form: for a query block [q0, q_last], per term, the keys it may
    attend and those every row attends (term_bounds of all literals)."""
    return _plan_span(pattern, columns=False)


def span_tiles(plan: SpanPlan, n: int, block: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(visited, full) booleans per (block, tile) for a sequence of n positions: the tiles of
    `tile` positions that the blocks of `block` positions visit, and those that skip the mask
    (complete tiles inside some term's full interval). The backward kernels compute the same
    by scalar arithmetic; the simulator and the tests read it here."""
    first = np.arange(-(-n // block), dtype=np.int64) * block
    names = ("k0", "k_last") if plan.columns else ("q0", "q_last")
    env = {names[0]: first, names[1]: np.minimum(first + block, n) - 1}
    j = np.arange(-(-n // tile), dtype=np.int64)[None, :]
    visited = np.zeros((first.size, j.size), dtype=bool)
    full = np.zeros_like(visited)
    for t in plan.terms:
        lo, hi, on = t.hull.at(env, n)
        a = lo // tile
        d = np.where(on & (hi >= lo), hi // tile + 1, a)
        visited |= (j >= a[:, None]) & (j < d[:, None])
        if t.full_bounds is not None:
            flo, fhi, fon = t.full_bounds.at(env, n)
            b = np.clip(-(-flo // tile), a, d)
            c = np.clip(np.maximum(fhi + 1, 0) // tile, b, d)
            c = np.where(fon, c, b)
            full |= (j >= b[:, None]) & (j < c[:, None])
    return visited, full


def _with_spans(plan: GroupPlan) -> GroupPlan:
    """The group's plan with the backward's span plans (its residue and split plans' too)."""
    sub = None if plan.residue_plan is None else _with_spans(plan.residue_plan)
    first = None if plan.split_plan is None else _with_spans(plan.split_plan)
    spans = dict(columns=plan_columns(plan.pattern), rows=plan_rows(plan.pattern))
    return dataclasses.replace(plan, residue_plan=sub, split_plan=first, **spans)


# ------------------------------------------------------------------ selection


@dataclass(frozen=True)
class SelectPlan:
    """Which key blocks a selection may choose for a query block [q0, q_last], as key
    intervals the kernels evaluate per block: candidates meet some context term's hull
    (`reach`, per context term), and are not already covered, for every row of the query
    block, by a static term's full interval (`covered`, per static term that has one). The
    selection kernel ranks only the candidates; the attention kernel visits the chosen
    blocks with the mask `context & not static`, so no pair is counted twice, except where a
    chosen block is clean: inside some context term's full interval (`whole`) and meeting no
    static term's hull (`apart`) for every row, and wholly before N: then every pair it adds is
    allowed, and the kernel visits it without the mask."""

    atom: "Select"
    context: Pattern
    reach: tuple[Bounds, ...]
    covered: tuple[Bounds, ...]
    whole: tuple[Bounds, ...]
    apart: tuple[Bounds, ...]


def _beyond(term: Term, common: set[Lit]) -> tuple[Lit, ...]:
    """A static term's literals less what every context pair already satisfies: literals of
    `common` dropped, range ends equal to a common range's ends opened (causal & window(W),
    one band 0 <= q - k <= W - 1, becomes q - k <= W - 1 under a causal context)."""
    out = []
    for lit in term.lits:
        if lit in common:
            continue
        atom = lit.atom
        same = [c.atom for c in common if type(c.atom) is type(atom) and isinstance(atom, RangeAtom)]
        if same and not lit.negated:
            lo = None if atom.lo == same[0].lo else atom.lo
            hi = None if atom.hi == same[0].hi else atom.hi
            if lo is None and hi is None:
                continue
            lit = Lit(type(atom)(lo, hi))
        out.append(lit)
    return tuple(out)


def plan_select(static: Pattern, selection: Selection) -> SelectPlan:
    """Candidates meet a context term's hull; a block is covered where, for every row of the
    query block, a static term holds on every key of it that the context allows: the full
    interval of the term's literals beyond the literals every context term has (`_beyond`)."""
    terms = selection.context.terms
    reach = tuple(term_bounds(t.lits)[0] for t in terms)
    common = set(terms[0].lits).intersection(*(t.lits for t in terms[1:])) if terms else set()
    common = {l for l in common if not l.negated}
    covered = tuple(f for f in (term_bounds(_beyond(t, common))[1] for t in static.terms) if f is not None)
    whole = tuple(f for f in (term_bounds(t.lits)[1] for t in terms) if f is not None)
    apart = tuple(term_bounds(t.lits)[0] for t in static.terms)
    return SelectPlan(selection.atom, selection.context, reach, covered, whole, apart)


def plan_program(program: Program) -> tuple[GroupPlan, ...]:
    return tuple(
        _with_spans(
            dataclasses.replace(
                plan_group(i, g.pattern),
                grid=plan_grid(g.pattern),
                select=None if g.selection is None else plan_select(g.pattern, g.selection),
            )
        )
        for i, g in enumerate(program.groups)
    )
