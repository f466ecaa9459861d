"""Symbolic cost: allowed pairs, FLOPs, bytes and KV-cache size as closed forms in N.

Pairs are derived per term from its atoms with the lattice-point engine of
`compiler.formula` (a sum over diagonals, or over keys for column stripes), and unions by
inclusion-exclusion over terms, |A or B| = |A| + |B| - |A and B|, whose intersections are
simplified terms (`algebra.conjoin`). Chunked terms are summed chunk by chunk (every full
chunk beyond the range constants holds the same count; the last, partial chunk is a
formula in N mod C); PowerAttention terms block distance by block distance (a finite sum
when the band is bounded, a geometric sum with floor(log2) otherwise). A negated literal
X becomes |T| - |T and X|. A term with a neighbourhood, several chunk or power atoms, or
too many residue classes has no formula: the analyses then give exact counts at the
requested N (`compiler.count`) and say why there is no formula.

Units: FLOPs = 4 * D * pairs per head (QK^T and PV, a multiply-add counted as 2); bytes
with `dtype_bytes` per element; the KV cache holds K and V, 2 * head_dim * dtype_bytes per
token per KV head per layer.

The backward pass (FlashAttention-2's, recomputing P from the saved log-sum-exp) runs five
matrix products per allowed pair where the forward runs two (QK^T again, dV += P^T dO,
dP = dO V^T, dQ += dS K, dK += dS^T Q): BWD_MATMUL_RATIO times the forward's FLOPs. It reads
Q, K, V, O and dO and writes dQ, dK and dV at least once: 8 * D * N elements per head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
import sympy as sp

from .algebra import conjoin, simplify
from .blocks import BlockMap
from .atoms import Conj
from .count import BWD_MATMUL_RATIO, count_pairs, reduce_term
from .formula import N, Formula, NoFormula, Piece, flog2, lattice_count
from .ir import Chunk, HeadGroup, Lit, Pattern, Power, Status, Term
from .blocks import block_map

D = sp.Symbol("D", integer=True, positive=True)
MAX_CHUNK_PIECES = 16  # chunks before the range constants that get their own piece
CLASSES = ("O(1)", "O(log N)", "O(N)", "O(N log N)", "O(N^2)")


# ---------------------------------------------------------------- pairs as a formula


def pairs_formula(pattern: Pattern) -> Formula:
    """Allowed pairs for N queries and N keys as a piecewise formula in N (N >= 1).

    Raises NoFormula (with the reason) when some term or intersection has no closed form.
    """
    _BUDGET[0] = MAX_UNIONS
    return _union_formula(pattern.terms)


MAX_UNIONS = 512  # inclusion-exclusion steps one pattern may take before giving up on a formula
_BUDGET = [MAX_UNIONS]


@lru_cache(maxsize=2048)
def _union_formula(terms: tuple[Term, ...]) -> Formula:
    _BUDGET[0] -= 1
    if _BUDGET[0] < 0:
        raise NoFormula(f"more than {MAX_UNIONS} overlapping term combinations (inclusion-exclusion)")
    if not terms:
        return Formula.const(N, 0, lo=1)
    if len(terms) == 1:
        return term_formula(terms[0])
    first, rest = terms[0], terms[1:]
    both = tuple(t for t in (conjoin(first, r) for r in rest) if t is not None)
    return term_formula(first) + _union_formula(rest) - _union_formula(simplify(Pattern(both)).terms)


@lru_cache(maxsize=4096)
def term_formula(term: Term) -> Formula:
    """Pairs of one conjunction of literals (see the module docstring)."""
    term = reduce_term(term)
    neg = [lit for lit in term.lits if lit.negated]
    if neg:
        lit = neg[0]
        base = Term(tuple(x for x in term.lits if x != lit))
        inter = conjoin(base, Term((Lit(lit.atom),)))
        out = term_formula(base)
        return out - term_formula(inter) if inter is not None else out
    atoms = [lit.atom for lit in term.lits]
    c = _Constraints.of(atoms)
    if c is None:
        return Formula.const(N, 0, lo=1)
    if len(c.chunks) + len(c.powers) > 1:
        raise NoFormula("several chunk/power atoms in one term")
    if c.chunks:
        return _chunk_formula(c, c.chunks[0].size)
    if c.powers:
        return _power_formula(c, c.powers[0].block)
    return lattice_count(N, 1, c.q_lo(0, 0), c.q_hi(-1, 1), c.k_lo(0, 0), c.k_hi(-1, 1), c.lo, c.hi, c.dmod, c.kmod)


@dataclass(frozen=True)
class _Constraints:
    """A positive conjunction split by kind; moduli merged by the Chinese remainder theorem."""

    lo: int | None
    hi: int | None
    qlo: int | None
    qhi: int | None
    klo: int | None
    khi: int | None
    dmod: tuple[int, int]
    kmod: tuple[int, int]
    chunks: tuple[Chunk, ...]
    powers: tuple[Power, ...]

    @staticmethod
    def of(atoms: list[Any]) -> "_Constraints | None":
        c = Conj.of(atoms)
        if c.grids:
            raise NoFormula("a neighbourhood over a token grid (counted exactly at N instead)")
        if c.dmod is None or c.kmod is None:
            return None
        return _Constraints(c.d_lo, c.d_hi, c.q_lo, c.q_hi, c.k_lo, c.k_hi, c.dmod, c.kmod, c.chunks, c.powers)

    def _bounds(self, base: list[tuple[int, int]], extra: int | None) -> list[tuple[int, int]]:
        return base + ([(extra, 0)] if extra is not None else [])

    def q_lo(self, c: int, e: int):
        return self._bounds([(c, e)], self.qlo)

    def q_hi(self, c: int, e: int):
        return self._bounds([(c, e)], self.qhi)

    def k_lo(self, c: int, e: int):
        return self._bounds([(c, e)], self.klo)

    def k_hi(self, c: int, e: int):
        return self._bounds([(c, e)], self.khi)

    @property
    def range_constants(self) -> list[int]:
        return [
            x
            for x in (
                self.qlo,
                None if self.qhi is None else self.qhi + 1,
                self.klo,
                None if self.khi is None else self.khi + 1,
            )
            if x is not None
        ]

    def beyond(self) -> "_Constraints | None":
        """The constraints far past every range constant: lower ends hold, upper ends fail."""
        if self.qhi is not None or self.khi is not None:
            return None
        return _Constraints(self.lo, self.hi, None, None, None, None, self.dmod, self.kmod, self.chunks, self.powers)


def of_mod(f: Formula, var_sub: sp.Expr, size: int) -> sp.Expr:
    """f(rho) for rho in [0, size - 1] as one expression in var_sub (= Mod(N, size))."""
    pieces = f.restricted(0, size - 1).pieces
    exprs = [p.expr.subs(f.var, var_sub) for p in pieces]
    if len(exprs) == 1:
        return exprs[0]
    return sp.Piecewise(*[(e, var_sub <= p.hi) for e, p in zip(exprs[:-1], pieces[:-1])], (exprs[-1], True))


_RHO = sp.Symbol("rho", integer=True, nonnegative=True)


def _block_formula(c: _Constraints, q0: int, k0: int, k_len: int | None) -> Formula:
    """Pairs with q in [q0, q0 + rho - 1] and k in [k0, k0 + k_len - 1] (k_len None: same as q),
    as a formula in rho >= 0."""
    k_lo = c.k_lo(k0, 0)
    k_hi = c.k_hi(k0 - 1, 1) if k_len is None else c.k_hi(k0 + k_len - 1, 0)
    return lattice_count(_RHO, 0, c.q_lo(q0, 0), c.q_hi(q0 - 1, 1), k_lo, k_hi, c.lo, c.hi, c.dmod, c.kmod)


def _chunk_formula(c: _Constraints, size: int) -> Formula:
    if size % c.kmod[0]:
        raise NoFormula(f"key stride {c.kmod[0]} does not divide chunk size {size}")
    consts = c.range_constants
    a_star = max([0] + [-(-x // size) for x in consts])
    if a_star > MAX_CHUNK_PIECES:
        raise NoFormula(f"range constants span {a_star} chunks")
    pieces: list[Piece] = []
    before = 0  # pairs in the full chunks before chunk a
    for a in range(a_star):
        f = _block_formula(c, a * size, a * size, None)
        for p in f.restricted(0, size - 1).pieces:
            lo, hi = p.lo + a * size, p.hi + a * size
            if hi < 1:
                continue
            pieces.append(Piece(max(lo, 1), hi, sp.expand(before + p.expr.subs(_RHO, N - a * size))))
        before += f.at(size)
    far = c.beyond()
    start = max(1, a_star * size)
    if far is None:
        tail = sp.Integer(before)
        period = 1
    else:
        f = _block_formula(far, 0, 0, None)
        g = f.at(size)
        tail = before + (sp.floor(N / size) - a_star) * g + of_mod(f, sp.Mod(N, size), size)
        period = math.lcm(size, f.period or 1)
    pieces.append(Piece(start, None, tail))
    return Formula(N, tuple(pieces), period).merged()


def _power_formula(c: _Constraints, block: int) -> Formula:
    if (
        c.qlo is not None
        or c.qhi is not None
        or c.klo is not None
        or c.khi is not None
        or c.dmod[0] > 1
        or c.kmod[0] > 1
    ):
        raise NoFormula("power(B) combined with ranges or moduli")
    b = block
    total = Formula.const(N, 0, lo=1)
    if c.hi is not None:
        deltas = [0] + [2**i for i in range(64) if 2**i <= (c.hi + b - 1) // b]
        tail_from = None
    else:
        d0 = 1 if c.lo is None else max(1, -(-(c.lo + b - 1) // b))
        i0 = (d0 - 1).bit_length()  # smallest i with 2**i >= d0
        deltas = [0] + [2**i for i in range(i0)]
        tail_from = i0
    for delta in deltas:
        total = total + _shift_formula(c, b, delta)
    if tail_from is not None:
        nf = sp.floor(N / b)
        rho = N - b * nf
        k = flog2(nf) + 1
        expr = b * b * (nf * (k - tail_from) - (2**k - 2**tail_from)) + rho * b * (k - tail_from)
        start = max(1, b * 2**tail_from)
        geo = Formula(N, ((Piece(1, start - 1, sp.Integer(0)),) if start > 1 else ()) + (Piece(start, None, expr),), 0)
        total = total + geo
    return total


def _shift_formula(c: _Constraints, b: int, delta: int) -> Formula:
    """Pairs whose query block is delta blocks after the key block."""
    if delta == 0:
        return _chunk_formula(c, b)
    f = _block_formula(c, delta * b, 0, b)
    g = f.at(b)
    expr = (sp.floor(N / b) - delta) * g + of_mod(f, sp.Mod(N, b), b)
    start = delta * b
    head = (Piece(1, start - 1, sp.Integer(0)),) if start > 1 else ()
    return Formula(N, head + (Piece(start, None, expr),), math.lcm(b, f.period or 1)).merged()


# ---------------------------------------------------------------- asymptotic class


def growth_class(f: Formula) -> str:
    """The asymptotic class of a formula's tail, from exact values at 2^40 and 2^41."""
    n = 2**40
    a, b = f.at(n), f.at(2 * n)
    if a == 0 and b == 0:
        return "O(1)"
    if a <= 0:
        return "O(N^2)" if b > 0 else "O(1)"
    r = Fraction(b, a)
    for bound, name in (
        (3, "O(N^2)"),
        (Fraction(2025, 1000), "O(N log N)"),
        (Fraction(3, 2), "O(N)"),
        (Fraction(10125, 10000), "O(log N)"),
    ):
        if r > bound:
            return name
    return "O(1)"


def structural_class(pattern: Pattern) -> str:
    """An upper bound on the asymptotic class from the atoms alone (negated literals ignored)."""
    best = 0
    for term in pattern.terms:
        c = term.conj
        if c.grids:
            best = max(best, 2 if any(g.prefix for g in c.grids) else 0)
            continue
        d_bounded = bool(c.chunks) or (c.d_lo is not None and c.d_hi is not None)
        q_bounded = c.q_hi is not None
        k_bounded = c.k_hi is not None
        bounded = d_bounded + q_bounded + k_bounded
        power = bool(c.powers)
        if bounded >= 2:
            cls = 0
        elif bounded == 1:
            cls = 1 if power and not d_bounded else 2
        else:
            cls = 3 if power else 4
        best = max(best, cls)
    return CLASSES[best]


# ---------------------------------------------------------------- per head group and totals


@dataclass(frozen=True)
class Quantity:
    """A number at the requested N, with its closed form in N when one was derived."""

    value: int
    formula: Formula | None = None
    note: str | None = None  # why there is no formula, or how the value was obtained

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "formula": None if self.formula is None else [{"range": r, "expr": e} for r, e in self.formula.describe()],
            "note": self.note,
        }


@dataclass(frozen=True)
class GroupCost:
    """The cost of one head group at sequence length n."""

    pattern: Pattern
    heads: int  # (layer, query head) pairs in the group
    n: int
    pairs: Quantity
    density: float
    asymptotic: str
    asymptotic_how: str  # "formula" or "atoms (upper bound)"
    flops: Quantity  # per head
    bytes_min: Quantity  # per head
    bytes_tiles: int  # per head, tile model with Q kept per query block
    tiles: dict[str, int]
    block: tuple[int, int]
    bytes_tiles_qkv: int = 0  # per head, tile model with Q, K, V loaded per visited tile
    flops_expr: sp.Expr | None = None  # 4 * D * pairs with D symbolic when the head dim is unknown
    bmap: BlockMap | None = field(default=None, repr=False, compare=False)

    @property
    def bwd_flops(self) -> int:
        """Per head, the backward pass's FLOPs: BWD_MATMUL_RATIO times the forward's."""
        return int(BWD_MATMUL_RATIO * self.flops.value)

    @property
    def bwd_bytes_min(self) -> int:
        """Per head, the backward's minimum traffic: Q, K, V, O, dO read and dQ, dK, dV written once."""
        return 2 * self.bytes_min.value


def analyze_pairs(pattern: Pattern, n: int) -> tuple[Quantity, str, str]:
    """Pairs at n (exact), with formula and asymptotic class."""
    exact = count_pairs(pattern, n)
    try:
        f = pairs_formula(pattern)
    except NoFormula as exc:
        return Quantity(exact, None, f"no formula: {exc}"), structural_class(pattern), "atoms (upper bound)"
    value = f.at(n)
    if value != exact:  # a derivation bug: never show a wrong formula
        return (
            Quantity(
                exact,
                None,
                f"formula dropped: it gives {value} at N = {n}, the exact count is {exact} "
                "(a bug: please report the pattern)",
            ),
            structural_class(pattern),
            "atoms (upper bound)",
        )
    return Quantity(exact, f), growth_class(f), "formula"


def tile_bytes(bmap: BlockMap, head_dim: int, dtype_bytes: int, q_per_tile: bool = False) -> int:
    """Bytes one head moves in the tile model: K and V tiles loaded once per visited tile, O written
    once per query row, and Q loaded once per visited tile (`q_per_tile`) or once per query block
    that visits a tile (a kernel that keeps its Q tile in SRAM, as FlashAttention does)."""
    n_q, n_k, bm, bn = bmap.n_q, bmap.n_k, bmap.bm, bmap.bn
    rows = np.minimum(np.arange(0, n_q, bm) + bm, n_q) - np.arange(0, n_q, bm)
    cols = np.minimum(np.arange(0, n_k, bn) + bn, n_k) - np.arange(0, n_k, bn)
    visited = bmap.status != Status.NONE
    kv = int((visited * cols[None, :]).sum()) * 2
    q = int((visited * rows[:, None]).sum()) if q_per_tile else int((visited.any(axis=1) * rows).sum())
    return (kv + q + n_q) * head_dim * dtype_bytes


def group_cost(
    group: HeadGroup,
    n: int,
    head_dim: int | None,
    dtype_bytes: int = 2,
    block: tuple[int, int] = (128, 128),
    bmap: BlockMap | None = None,
) -> GroupCost:
    """The costs of a head group at length n; `bmap`: its block map at `block`, when already built."""
    pattern = group.pattern
    pairs, cls, how = analyze_pairs(pattern, n)
    d = head_dim if head_dim is not None else D
    dval = head_dim if head_dim is not None else 128
    flops_f = pairs.formula.scaled(4 * dval) if pairs.formula is not None else None
    note_d = None if head_dim is not None else "head_dim unknown: D = 128 assumed for values"
    bmin = Formula(N, (Piece(1, None, 4 * dval * dtype_bytes * N),), 1)
    bmap = block_map(pattern, n, *block) if bmap is None else bmap
    tiles = {"empty": bmap.count(Status.NONE), "partial": bmap.count(Status.SOME), "full": bmap.count(Status.ALL)}
    return GroupCost(
        pattern=pattern,
        heads=len(group.members),
        n=n,
        pairs=pairs,
        density=pairs.value / (n * n),
        asymptotic=cls,
        asymptotic_how=how,
        flops=Quantity(4 * dval * pairs.value, flops_f, note_d),
        flops_expr=None if pairs.formula is None else sp.expand(4 * d * pairs.formula.tail),
        bytes_min=Quantity(4 * dval * dtype_bytes * n, bmin, "Q, K, V read and O written once"),
        bytes_tiles=tile_bytes(bmap, dval, dtype_bytes),
        tiles=tiles,
        block=block,
        bmap=bmap,
        bytes_tiles_qkv=tile_bytes(bmap, dval, dtype_bytes, q_per_tile=True),
    )


DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp32": 4, "float32": 4}
