"""The kernel plan: which key blocks a query block visits, and which of them skip the mask.

For each head group the plan turns every term of its Pattern into scalar integer Triton
code over the query block's first and last row (`q0`, `q_last`) and the sequence length
`N`:

- the term's key interval (its hull): every key that some row of the block may attend
  through this term lies in it. Band(lo, hi) gives [q0 - hi, q_last - lo]; KRange(lo, hi)
  gives [lo, hi]; Chunk(C) gives [q0 // C * C, q_last // C * C + C - 1]; Power(B) bounds
  keys by the block's own power block; a QRange only says when the term is active;
  anything else leaves the interval open ([0, N - 1]).
- the term's full interval: keys that every row of the block may attend through the term.
  Band: [q_last - hi, q0 - lo]; KRange: [lo, hi]; Chunk: the block's chunk, when the block
  lies in one chunk; QRange: open, when the block lies inside the range; moduli, powers,
  negations and neighbourhoods: none.

The kernel converts both intervals to key blocks (the full one shrunk to complete blocks
below N // BLOCK_N) and visits, per term, masked [a, b), unmasked [b, c), masked [c, d),
minus the blocks of the terms visited before it, so that no block is visited twice. The
order is chosen here: terms with a full interval first, terms with narrow key tiles (short
KRange terms, i.e. sinks) after the wide ones, and one term with a Power literal (or a
(q - k) mod m literal with a large m under a band) last, where it becomes a loop over
disjoint key ranges (power-of-two block distances, or the diagonals of the modulus)
instead of one interval. Groups of more than
MAX_TERMS terms are visited as one masked loop over the union of the terms' hulls.

Masked tiles use the union predicate of the whole group, so they are always correct;
unmasked tiles skip the mask, which is correct because the term alone allows every pair.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ..compiler.ir import (Band, Chunk, DiffMod, KMod, KRange, Lit, Neighborhood, Pattern, Power, Program,
                           QRange, Term)
from . import masks
from .grid_plan import GridPlan, plan_grid

MAX_TERMS = 4  # terms visited as separate segment lists; beyond that one masked hull loop
NARROW_MAX = 64  # a term whose keys span at most this many positions gets narrow key tiles
DIFFMOD_LOOP_MIN = 64  # (q - k) mod m terms with m at least this loop over their diagonals
RESIDUE_MAX = 16  # bands & (q - k) mod d == 0 with d up to this run per residue class
EDGE_MERGE_MIN = 2048  # a first term's band at least this wide walks both masked edges in one loop
MIN_TILE = 16  # the smallest tile side tl.dot takes


def _lin(var: str, c: int) -> str:
    return masks._offset(var, c)


@dataclass(frozen=True)
class Bounds:
    """Keys in [max(lo), min(hi)] while every condition in `on` holds (scalar texts)."""

    lo: tuple[str, ...] = ()
    hi: tuple[str, ...] = ()
    on: tuple[str, ...] = ()

    def __and__(self, other: "Bounds") -> "Bounds":
        return Bounds(self.lo + other.lo, self.hi + other.hi, self.on + other.on)


OPEN = Bounds()


def atom_bounds(lit: Lit) -> tuple[Bounds, Bounds | None]:
    """(hull, full) of one literal for a query block [q0, q_last]; full None: never full."""
    a = lit.atom
    if lit.negated:
        return OPEN, None
    if isinstance(a, Band):
        hull = Bounds(() if a.hi is None else (_lin("q0", -a.hi),), () if a.lo is None else (_lin("q_last", -a.lo),))
        full = Bounds(() if a.hi is None else (_lin("q_last", -a.hi),), () if a.lo is None else (_lin("q0", -a.lo),))
        return hull, full
    if isinstance(a, KRange):
        b = Bounds(() if a.lo is None else (str(a.lo),), () if a.hi is None else (str(a.hi),))
        return b, b
    if isinstance(a, QRange):
        meets = tuple(x for x in ((None if a.lo is None else f"(q_last >= {a.lo})"),
                                  (None if a.hi is None else f"(q0 <= {a.hi})")) if x)
        inside = tuple(x for x in ((None if a.lo is None else f"(q0 >= {a.lo})"),
                                   (None if a.hi is None else f"(q_last <= {a.hi})")) if x)
        return Bounds(on=meets), Bounds(on=inside)
    if isinstance(a, Chunk):
        c = a.size
        hull = Bounds((f"q0 // {c} * {c}",), (f"q_last // {c} * {c} + {c - 1}",))
        full = Bounds((f"q0 // {c} * {c}",), (f"q0 // {c} * {c} + {c - 1}",), (f"(q0 // {c} == q_last // {c})",))
        return hull, full
    if isinstance(a, (DiffMod, KMod)):
        return (OPEN, OPEN) if a.m == 1 else (OPEN, None)
    if isinstance(a, Power):
        b = a.block
        return Bounds(hi=(f"q_last // {b} * {b} + {b - 1}",)), None
    if isinstance(a, Neighborhood):
        if a.prefix:
            return OPEN, None
        # a window holds its query and spans (kernel - 1) * d per axis, strided or not (a stride
        # group's shared window holds each member; a causal one ends at the query)
        reach, stride = 0, 1
        for length, kernel, dil in reversed(list(zip(a.dims, a.kernel, a.dilation))):
            reach += (kernel - 1) * dil * stride
            stride *= length
        return Bounds((_lin("q0", -reach),), (_lin("q_last", reach),)), None
    raise TypeError(f"no plan rule for atom {a!r}")


def term_bounds(lits: tuple[Lit, ...]) -> tuple[Bounds, Bounds | None]:
    hull, full = OPEN, OPEN
    for lit in lits:
        h, f = atom_bounds(lit)
        hull = hull & h
        full = None if full is None or f is None else full & f
    return hull, (None if full is None else Bounds(full.lo, full.hi, hull.on + full.on))


def _narrow_width(term: Term) -> int | None:
    """How many keys a term can reach at most, when a KRange bounds it below NARROW_MAX."""
    for kr in term.atoms_of(KRange):
        if kr.hi is not None:
            width = kr.hi - max(kr.lo or 0, 0) + 1
            if width <= NARROW_MAX:
                return max(width, 1)
    return None


@dataclass(frozen=True)
class Loop:
    """A term visited as a loop over disjoint key ranges, nearest first, instead of one hull.

    kind "power": block distances 0, 1, 2, 4, ... of Power(block); "diffmod": the diagonals
    q - k = d0, d0 + m, d0 + 2m, ... of DiffMod(m, r) under a Band whose lower end makes
    d0 the first allowed difference.
    """

    kind: Literal["power", "diffmod"]
    lit: Lit  # the literal that the loop replaces
    block: int = 0  # power
    m: int = 0  # diffmod
    d0: int = 0  # diffmod


def _loop_of(term: Term) -> Loop | None:
    powers = term.atoms_of(Power)
    if len(powers) == 1:
        return Loop("power", Lit(powers[0]), block=powers[0].block)
    bands = [b for b in term.atoms_of(Band) if b.lo is not None]
    mods = [a for a in term.atoms_of(DiffMod) if a.m >= DIFFMOD_LOOP_MIN]
    if bands and mods:
        lo, a = bands[0].lo, mods[0]
        return Loop("diffmod", Lit(a), m=a.m, d0=lo + (a.r - lo) % a.m)
    return None


# ------------------------------------------------------------------ rendering of bounds


def max_text(exprs: tuple[str, ...], floor: str = "0") -> str:
    """max(floor, *exprs) as an int32 scalar tensor expression."""
    consts = [int(e) for e in exprs if _is_int(e)]
    texts = [e for e in exprs if not _is_int(e)]
    if floor == "0":
        consts.append(0)
    else:
        texts.append(floor)
    c = max(consts) if consts else None
    if not texts:
        return f"zero + {c}" if c >= 0 else f"zero - {-c}"
    out = texts[0]
    for t in texts[1:]:
        out = f"tl.maximum({out}, {t})"
    return out if c is None else f"tl.maximum({out}, {c})"


def min_text(exprs: tuple[str, ...], ceil: str = "N - 1") -> str:
    """min(ceil, *exprs) as an int32 scalar tensor expression."""
    consts = [int(e) for e in exprs if _is_int(e)]
    texts = [e for e in exprs if not _is_int(e)]
    if not texts:
        return f"zero + {ceil}" if not consts else f"tl.minimum(zero + {min(consts)}, {ceil})"
    out = texts[0]
    for t in texts[1:]:
        out = f"tl.minimum({out}, {t})"
    if consts:
        out = f"tl.minimum({out}, {min(consts)})"
    return f"tl.minimum({out}, {ceil})"


def _is_int(e: str) -> bool:
    return e.lstrip("-").isdigit()


def on_text(conds: tuple[str, ...]) -> str:
    return " & ".join(dict.fromkeys(conds))


# ------------------------------------------------------------------ plan records


@dataclass(frozen=True)
class TermPlan:
    """One term's visit: interval texts, its key tile, and whether it loops over powers."""

    slot: int  # position in the visiting order
    text: str  # the term, for comments
    lo: str  # first key of the hull (scalar tensor text)
    hi: str  # last key of the hull
    on: str  # extra activity condition ("" when always active)
    full: bool  # has a full interval
    full_lo: str
    full_hi: str
    full_on: str
    tile: str  # "BLOCK_N" or "BLOCK_N_NARROW"
    loop: Loop | None  # visited as a loop over disjoint key ranges (see Loop)
    narrow: int | None  # at most this many keys (narrow tiles)
    edge_merge: bool = False  # both masked edges in one loop (wide bands: one pipeline start less)


@dataclass(frozen=True)
class GroupPlan:
    index: int | str  # the group's number ("3r": the residue plan of group 3)
    text: str
    masks: "masks.MaskText"  # the group's predicate: common & (term | term ...)
    mode: Literal["segments", "hull", "empty"]
    terms: tuple[TermPlan, ...]
    narrow: int  # widest narrow term (keys), 0 when none
    block_cap: int | None  # tiles no larger than this align with the pattern's chunks / powers
    grows: bool  # the number of keys grows with q (causal-like): schedule long blocks first
    rows_cap: int | None = None  # query tiles no taller than this (diagonal loops cost BLOCK_M per key)
    residue: int = 0  # d > 0: the group may run in residue mode (see residue_pattern)
    residue_plan: "GroupPlan | None" = None  # the plan of residue_pattern, on subsequences
    grid: GridPlan | None = None  # a union of neighbourhoods: the tile-order kernel (grid_plan.py)


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
        lo=max_text(hull.lo),
        hi=min_text(hull.hi),
        on=on_text(hull.on),
        full=full is not None,
        full_lo=max_text(full.lo) if full else "",
        full_hi=min_text(full.hi) if full else "",
        full_on=on_text(full.on) if full else "",
        tile="BLOCK_N_NARROW" if narrow else "BLOCK_N",
        loop=loop,
        narrow=narrow,
    )


def residue_pattern(pattern: Pattern) -> tuple[int, Pattern] | None:
    """(d, pattern on subsequences) when the pattern is bands & (q - k) mod d == 0, else None.

    Then query q and key k can only meet when q mod d == k mod d, so the rows and keys of
    one residue class form a subsequence (positions rho, rho + d, ...) on which the pattern
    is a plain band: lo <= d * (q' - k') <= hi. The kernel can run each residue class as
    dense attention over a d times shorter sequence (LongNet's dilated attention), where
    every tile is fully allowed instead of one pair in d.
    """
    if len(pattern.terms) != 1:
        return None
    lits = pattern.terms[0].lits
    mods = [l.atom for l in lits if isinstance(l.atom, DiffMod) and not l.negated]
    bands = [l.atom for l in lits if isinstance(l.atom, Band) and not l.negated]
    if len(mods) != 1 or len(bands) + 1 != len(lits) or mods[0].r != 0 or not 2 <= mods[0].m <= RESIDUE_MAX:
        return None
    d = mods[0].m
    lo = max((b.lo for b in bands if b.lo is not None), default=None)
    hi = min((b.hi for b in bands if b.hi is not None), default=None)
    lo = None if lo is None else -((-lo) // d)
    hi = None if hi is None else hi // d
    if lo is not None and hi is not None and lo > hi:
        return d, Pattern(())
    return d, Pattern((Term((Lit(Band(lo, hi)),)),))


def plan_group(index: int | str, pattern: Pattern, residue: bool = True) -> GroupPlan:
    res = residue_pattern(pattern) if residue else None
    if res is not None:
        sub = plan_group(f"{index}r", res[1], residue=False)
        return dataclasses.replace(plan_group(index, pattern, residue=False), residue=res[0], residue_plan=sub)
    terms = pattern.terms
    mask_texts = masks.render_pattern(pattern)
    caps = []
    for t in terms:
        for a in t.atoms_of(Chunk):
            caps.append(_pow2_divisor(a.size))
        for a in t.atoms_of(Power):
            caps.append(_pow2_divisor(a.block))
    caps = [c for c in caps if c >= MIN_TILE]
    grows = any(b.hi is None for t in terms for b in t.atoms_of(Band))
    common = dict(index=index, text=str(pattern), masks=mask_texts,
                  block_cap=min(caps) if caps else None, grows=grows)
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


def plan_program(program: Program) -> tuple[GroupPlan, ...]:
    return tuple(dataclasses.replace(plan_group(i, g.pattern), grid=plan_grid(g.pattern))
                 for i, g in enumerate(program.groups))
