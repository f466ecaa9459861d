"""Piecewise closed forms in one integer variable, and the lattice-point engine that derives them.

`Formula` is a list of pieces (first value, last value or None, sympy expression) over the
integers from a starting value on; the expressions are polynomials of degree <= 2 in the
variable and in floors/ceilings of it (quasi-polynomials), or, for PowerAttention, also in
floor(log2(.)). `lattice_count` derives one: the number of integer (q, k) with
  q, k between max/min of affine bounds c + e*n (e in {-1, 0, 1}),
  lo <= q - k <= hi,  q - k = r1 (mod m1),  k = r2 (mod m2),
as a function of n. It sums over one outer variable x (the diagonal d = q - k, or the key k
when its modulus is the larger) the length of the inner interval of q. The inner interval's
ends are max/min of functions affine in (x, n); they change form only at breakpoints x that
are affine in n, and the order of those breakpoints changes only at finitely many critical
n (chambers). In each chamber the sum splits into segments with a fixed, linear summand,
summed in closed form over x = x0 + L*j. Every step is exact integer arithmetic; a
chamber's representative point (never an integer) fixes which bound is active where.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from itertools import combinations
from typing import Callable, Iterable

import sympy as sp

N = sp.Symbol("N", integer=True, positive=True)
T = sp.Symbol("t", integer=True, nonnegative=True)
MAX_RESIDUES = 64  # outer residue classes a derivation may split into
MAX_SHIFT = 64  # how many leading points a piece may hand to the previous one (N <= W, not W - 1)
MAX_CHECK = 2048  # the longest point-by-point check when merging pieces


class flog2(sp.Function):
    """floor(log2(x)) for a positive integer x: the number of doublings (PowerAttention)."""

    is_integer = True

    @classmethod
    def eval(cls, x):
        if x.is_Integer and x > 0:
            return sp.Integer(int(x).bit_length() - 1)
        return None


def evaluate(expr: sp.Expr, var: sp.Symbol, n: int) -> int:
    """expr at var = n, exactly (integer and Fraction arithmetic; much faster than subs)."""
    try:
        fn = _compiled(expr, var)
    except _Uncompiled:
        return int(expr.subs(var, n))
    value = fn(n)
    if isinstance(value, Fraction):
        if value.denominator != 1:
            raise ValueError(f"{expr} is not an integer at {var} = {n}: {value}")
        value = value.numerator
    return int(value)


class _Uncompiled(Exception):
    pass


def _source(e: sp.Expr, var: sp.Symbol) -> str:
    if e == var:
        return "n"
    if e.is_Integer:
        return str(int(e))
    if e.is_Rational:
        return f"_F({e.p}, {e.q})"
    if e.is_Add:
        return "(" + " + ".join(_source(a, var) for a in e.args) + ")"
    if e.is_Mul:
        return "(" + " * ".join(_source(a, var) for a in e.args) + ")"
    if e.is_Pow:
        base, exp = e.args
        if exp.is_Integer and exp < 0:
            return f"(_F(1) / ({_source(base, var)}) ** {-int(exp)})"
        return f"(({_source(base, var)}) ** ({_source(exp, var)}))"
    names = {sp.floor: "_floor", sp.ceiling: "_ceil", flog2: "_flog2"}
    if e.func in names:
        return f"{names[e.func]}({_source(e.args[0], var)})"
    if isinstance(e, sp.Mod):
        return f"(({_source(e.args[0], var)}) % ({_source(e.args[1], var)}))"
    if isinstance(e, sp.Piecewise):
        out = "_none()"
        for value, cond in reversed(e.args):
            out = f"(({_source(value, var)}) if ({_source(cond, var)}) else {out})"
        return out
    if e is sp.true:
        return "True"
    if e is sp.false:
        return "False"
    ops = {sp.Le: "<=", sp.Lt: "<", sp.Ge: ">=", sp.Gt: ">", sp.Eq: "==", sp.Ne: "!="}
    if e.func in ops:
        return f"({_source(e.lhs, var)} {ops[e.func]} {_source(e.rhs, var)})"
    if isinstance(e, (sp.And, sp.Or)):
        joiner = " and " if isinstance(e, sp.And) else " or "
        return "(" + joiner.join(_source(a, var) for a in e.args) + ")"
    raise _Uncompiled(str(e.func))


def _none():
    raise ValueError("no Piecewise branch holds")


def _flog2(x) -> int:
    if x < 1 or int(x) != x:
        raise ValueError(f"flog2 of {x}")
    return int(x).bit_length() - 1


_NAMES = {"_F": Fraction, "_floor": math.floor, "_ceil": math.ceil, "_none": _none, "_flog2": _flog2}


@lru_cache(maxsize=8192)
def _compiled(expr: sp.Expr, var: sp.Symbol):
    return eval(f"lambda n: {_source(expr, var)}", dict(_NAMES))  # noqa: S307 (our own printer's text)


class NoFormula(Exception):
    """No closed form is derived for this term; the reason is the message."""


@dataclass(frozen=True)
class Piece:
    lo: int
    hi: int | None  # None: no upper end
    expr: sp.Expr

    def covers(self, n: int) -> bool:
        return n >= self.lo and (self.hi is None or n <= self.hi)


@dataclass(frozen=True)
class Formula:
    """A function of one integer variable from pieces[0].lo on, given piece by piece.

    `period`: every piece is a quasi-polynomial of degree <= 2 with this period, so two
    pieces that agree on 3 * period consecutive integers agree everywhere; 0 when a piece
    is not a quasi-polynomial (floor(log2 .)) and merging relies on symbolic equality.
    """

    var: sp.Symbol
    pieces: tuple[Piece, ...]
    period: int = 1

    # ------------------------------------------------------------ construction

    @staticmethod
    def const(var: sp.Symbol, value: sp.Expr | int, lo: int = 0, period: int = 1) -> "Formula":
        return Formula(var, (Piece(lo, None, sp.sympify(value)),), period)

    @property
    def start(self) -> int:
        return self.pieces[0].lo

    def at(self, n: int) -> int:
        for p in self.pieces:
            if p.covers(n):
                return evaluate(p.expr, self.var, n)
        raise ValueError(f"{self.var} = {n} is outside the formula's domain ({self.var} >= {self.start})")

    def expr_at(self, n: int) -> sp.Expr:
        for p in self.pieces:
            if p.covers(n):
                return p.expr
        raise ValueError(f"{self.var} = {n} is outside the formula's domain")

    @property
    def tail(self) -> sp.Expr:
        """The expression for large values of the variable."""
        return self.pieces[-1].expr

    def _cuts(self) -> set[int]:
        return {p.lo for p in self.pieces}

    def combine(self, other: "Formula", op: Callable[[sp.Expr, sp.Expr], sp.Expr]) -> "Formula":
        """Pointwise op on the common domain, split at both formulas' boundaries."""
        start = max(self.start, other.start)
        cuts = sorted(c for c in self._cuts() | other._cuts() | {start} if c >= start)
        pieces = []
        for i, lo in enumerate(cuts):
            hi = cuts[i + 1] - 1 if i + 1 < len(cuts) else None
            pieces.append(Piece(lo, hi, sp.expand(op(self.expr_at(lo), other.expr_at(lo)))))
        period = 0 if 0 in (self.period, other.period) else math.lcm(self.period, other.period)
        return Formula(self.var, tuple(pieces), period).merged()

    def __add__(self, other: "Formula") -> "Formula":
        return self.combine(other, lambda a, b: a + b)

    def __sub__(self, other: "Formula") -> "Formula":
        return self.combine(other, lambda a, b: a - b)

    def scaled(self, c: sp.Expr | int) -> "Formula":
        return Formula(self.var, tuple(Piece(p.lo, p.hi, sp.expand(c * p.expr)) for p in self.pieces), self.period)

    def map(self, f: Callable[[sp.Expr], sp.Expr]) -> "Formula":
        return Formula(self.var, tuple(Piece(p.lo, p.hi, f(p.expr)) for p in self.pieces), self.period)

    def restricted(self, lo: int, hi: int | None) -> "Formula":
        """The same function on [lo, hi] only."""
        out = []
        for p in self.pieces:
            a = max(p.lo, lo)
            b = p.hi if hi is None else (hi if p.hi is None else min(p.hi, hi))
            if b is None or a <= b:
                out.append(Piece(a, b, p.expr))
        return Formula(self.var, tuple(out), self.period)

    def then(self, other: "Formula") -> "Formula":
        """This formula up to where `other` starts, `other` from there."""
        head = [p for p in self.restricted(self.start, other.start - 1).pieces] if other.start > self.start else []
        period = 0 if 0 in (self.period, other.period) else math.lcm(self.period, other.period)
        return Formula(self.var, tuple(head) + other.pieces, period).merged()

    def merged(self) -> "Formula":
        """Join neighbouring pieces with equal expressions, and let each piece reach as far as it
        stays right (so `window(W)` reads N(N+1)/2 for N <= W, not N <= W - 1)."""
        pieces = list(self.pieces)
        out: list[Piece] = []
        for p in pieces:
            if out and self._same(out[-1].expr, p):
                out[-1] = Piece(out[-1].lo, p.hi, out[-1].expr)
                continue
            while out and self._same(p.expr, out[-1]):  # p's expression also holds before p
                p = Piece(out.pop().lo, p.hi, p.expr)
            if out:  # move leading points of p into the previous piece while it agrees
                prev = out[-1]
                lo = p.lo
                while (
                    (p.hi is None or lo <= p.hi) and lo - p.lo < MAX_SHIFT and _agree(prev.expr, p.expr, self.var, lo)
                ):
                    lo += 1
                if p.hi is not None and lo > p.hi:
                    out[-1] = Piece(prev.lo, p.hi, prev.expr)
                    continue
                if lo > p.lo:
                    out[-1] = Piece(prev.lo, lo - 1, prev.expr)
                    p = Piece(lo, p.hi, p.expr)
            out.append(p)
        return Formula(self.var, tuple(out), self.period)

    def _same(self, e: sp.Expr, p: Piece) -> bool:
        """Whether expression e equals piece p on all of p's integers: point by point where that
        decides it (much cheaper than sympy's expand), else symbolically."""
        span = 3 * self.period + 3  # quasi-polynomials of degree <= 2 that agree this long are equal
        if self.period and not (span > MAX_CHECK and (p.hi is None or p.hi - p.lo + 1 > MAX_CHECK)):
            last = p.lo + span - 1 if p.hi is None else min(p.hi, p.lo + span - 1)
            try:
                return all(evaluate(e, self.var, n) == evaluate(p.expr, self.var, n) for n in range(p.lo, last + 1))
            except ValueError:  # e is not defined there (flog2 of 0)
                pass
        return sp.expand(e - p.expr) == 0

    # ------------------------------------------------------------ presentation

    def as_expr(self) -> sp.Expr:
        """A sympy Piecewise (or the single expression) for the domain var >= start."""
        if len(self.pieces) == 1:
            return self.pieces[0].expr
        args = [(p.expr, self.var <= p.hi) for p in self.pieces[:-1]]
        return sp.Piecewise(*args, (self.pieces[-1].expr, True))

    def describe(self) -> list[tuple[str, str]]:
        """(range, expression) lines for reports."""
        v = str(self.var)
        out = []
        for p in self.pieces:
            if p.hi is None:
                rng = f"{v} >= {p.lo}"
            elif p.lo == p.hi:
                rng = f"{v} = {p.lo}"
            else:
                rng = f"{p.lo} <= {v} <= {p.hi}"
            out.append((rng, pretty(simplify_on(p.expr, self.var, p.lo, p.hi))))
        return out

    def __str__(self) -> str:
        return "; ".join(f"{e} for {r}" for r, e in self.describe())


def simplify_on(expr: sp.Expr, var: sp.Symbol, lo: int, hi: int | None) -> sp.Expr:
    """expr restricted to lo <= var <= hi: floors, ceilings and Mods of linear arguments that are
    constant there become constants, and Piecewise conditions that hold (or fail) at both ends
    are resolved. A display simplification; the value is unchanged on [lo, hi]."""
    if hi is None or not expr.has(sp.floor, sp.ceiling, sp.Mod, sp.Piecewise):
        return expr

    def linear(arg: sp.Expr) -> bool:
        return arg.is_polynomial(var) and sp.degree(arg, var) <= 1

    def fold(e: sp.Expr) -> sp.Expr:
        if isinstance(e, (sp.floor, sp.ceiling)) and linear(e.args[0]):
            a, b = e.func(e.args[0].subs(var, lo)), e.func(e.args[0].subs(var, hi))
            return a if a == b else e
        if isinstance(e, sp.Mod) and linear(e.args[0]) and e.args[1].is_Integer:
            x, c = e.args
            a, b = sp.floor(x.subs(var, lo) / c), sp.floor(x.subs(var, hi) / c)
            return x - c * a if a == b else e
        if isinstance(e, sp.Piecewise):
            kept = []
            for value, cond in e.args:
                if cond is sp.true:
                    kept.append((value, cond))
                    break
                try:
                    at_lo, at_hi = bool(cond.subs(var, lo)), bool(cond.subs(var, hi))
                except TypeError:
                    kept.append((value, cond))
                    continue
                monotone = isinstance(cond, sp.core.relational.Relational) and linear(cond.lhs - cond.rhs)
                if monotone and at_lo and at_hi and not kept:
                    return value
                if not (monotone and not at_lo and not at_hi):
                    kept.append((value, cond))
            if len(kept) == 1 and kept[0][1] is sp.true:
                return kept[0][0]
            return sp.Piecewise(*kept) if kept else e
        return e

    out = expr
    for _ in range(3):  # Mods inside Piecewise conditions fold first, then the conditions
        new = sp.expand(out.replace(lambda e: isinstance(e, (sp.floor, sp.ceiling, sp.Mod, sp.Piecewise)), fold))
        if new == out:
            break
        out = new
    return out


def _agree(a: sp.Expr, b: sp.Expr, var: sp.Symbol, n: int) -> bool:
    try:
        return evaluate(a, var, n) == evaluate(b, var, n)
    except ValueError:
        return False


@lru_cache(maxsize=1024)
def pretty(e: sp.Expr) -> str:
    """One line: factored polynomials, or common factors pulled out when floors and Mods appear
    (memoised: head groups and totals print the same expressions)."""
    return sp.sstr(sp.factor_terms(e) if e.has(sp.floor, sp.ceiling, sp.Mod) else sp.factor(e))


# ---------------------------------------------------------------- the lattice-point engine

Affine = tuple[int, int]  # c + e * n


@dataclass(frozen=True)
class _Bound:
    c: int
    a: int  # coefficient of the outer variable x: 0 or 1
    e: int  # coefficient of n

    def value(self, x: Fraction, n: Fraction) -> Fraction:
        return self.c + self.a * x + self.e * n


def lattice_count(
    var: sp.Symbol,
    n_min: int,
    q_lo: Iterable[Affine],
    q_hi: Iterable[Affine],
    k_lo: Iterable[Affine],
    k_hi: Iterable[Affine],
    d_lo: int | None = None,
    d_hi: int | None = None,
    dmod: tuple[int, int] = (1, 0),
    kmod: tuple[int, int] = (1, 0),
) -> Formula:
    """#{(q, k)} under the constraints in the module docstring, for var = n >= n_min."""
    q_lo, q_hi, k_lo, k_hi = map(list, (q_lo, q_hi, k_lo, k_hi))
    md, rd = dmod
    mk, rk = kmod
    big = math.lcm(md, mk)
    if mk > md:  # outer variable: the key k
        x0s = [rk + mk * i for i in range(big // mk)]
        mq, residue = md, (lambda x0: (x0 + rd) % md)
        lows = [_Bound(c, 0, e) for c, e in q_lo] + ([_Bound(d_lo, 1, 0)] if d_lo is not None else [])
        highs = [_Bound(c, 0, e) for c, e in q_hi] + ([_Bound(d_hi, 1, 0)] if d_hi is not None else [])
        x_lo = list(k_lo) + ([(c - d_hi, e) for c, e in q_lo] if d_hi is not None else [])
        x_hi = list(k_hi) + ([(c - d_lo, e) for c, e in q_hi] if d_lo is not None else [])
    else:  # outer variable: the diagonal d
        x0s = [rd + md * i for i in range(big // md)]
        mq, residue = mk, (lambda x0: (rk + x0) % mk)
        lows = [_Bound(c, 0, e) for c, e in q_lo] + [_Bound(c, 1, e) for c, e in k_lo]
        highs = [_Bound(c, 0, e) for c, e in q_hi] + [_Bound(c, 1, e) for c, e in k_hi]
        x_lo = ([(d_lo, 0)] if d_lo is not None else []) + [(c1 - c2, e1 - e2) for c1, e1 in q_lo for c2, e2 in k_hi]
        x_hi = ([(d_hi, 0)] if d_hi is not None else []) + [(c1 - c2, e1 - e2) for c1, e1 in q_hi for c2, e2 in k_lo]
    if len(x0s) > MAX_RESIDUES:
        raise NoFormula(f"{len(x0s)} residue classes (moduli {md} and {mk})")
    if not (lows and highs and x_lo and x_hi):
        raise NoFormula("unbounded sum")

    points: set[Affine] = {(c, e) for c, e in x_lo} | {(c + 1, e) for c, e in x_hi}
    crit: set[Fraction] = set()
    for group in (lows, highs):
        for u, v in combinations(group, 2):
            if u.a != v.a:  # x (u.a - v.a) = v.c - u.c + (v.e - u.e) n
                s = u.a - v.a
                points.add((s * (v.c - u.c), s * (v.e - u.e)))
            elif u.e != v.e:
                crit.add(Fraction(v.c - u.c, u.e - v.e))
    for h in highs:
        for l in lows:  # h - l + 1 = 0
            if h.a != l.a:
                s = h.a - l.a
                points.add((-s * (h.c - l.c + 1), -s * (h.e - l.e)))
            elif h.e != l.e:
                crit.add(Fraction(-(h.c - l.c + 1), h.e - l.e))
    for (c1, e1), (c2, e2) in combinations(points, 2):
        if e1 != e2:
            crit.add(Fraction(c2 - c1, e1 - e2))

    zs = sorted(z for z in crit if z > n_min)
    chambers = []  # (first integer, last integer or None, representative)
    for i, z in enumerate([None] + zs):
        lo_z = z
        hi_z = zs[i] if i < len(zs) else None
        lo_int = n_min if lo_z is None else math.ceil(lo_z)
        hi_int = None if hi_z is None else math.ceil(hi_z) - 1
        if hi_int is not None and hi_int < lo_int:
            continue
        base = Fraction(n_min) if lo_z is None else lo_z
        rep = base + (Fraction(1, 2) if hi_z is None else min(Fraction(1, 2), (hi_z - base) / 2))
        chambers.append((lo_int, hi_int, rep))

    pieces = []
    for lo_int, hi_int, rep in chambers:
        expr = _chamber_sum(var, rep, points, lows, highs, x_lo, x_hi, x0s, big, mq, residue)
        pieces.append(Piece(lo_int, hi_int, expr))
    return Formula(var, tuple(pieces), big).merged()


@lru_cache(maxsize=4096)
def _ceil_div(c: int, e: int, m: int, var: sp.Symbol) -> sp.Expr:
    """ceiling((c + e * var) / m) for an integer var, in the form sympy's ceiling gives it (its
    integer terms outside), built without sympy's assumption queries, which made this the
    slowest step of an analysis; memoised: one analysis asks the same few quotients often."""
    if e % m == 0:
        return sp.Integer(-(-c // m)) + (e // m) * var
    whole, part = divmod(c, m)
    if part:
        return sp.ceiling(sp.Rational(e, m) * var + sp.Rational(c, m), evaluate=False)
    return whole + sp.ceiling(sp.Rational(e, m) * var, evaluate=False)


def _chamber_sum(var, rep, points, lows, highs, x_lo, x_hi, x0s, big, mq, residue) -> sp.Expr:
    def at(p: Affine) -> Fraction:
        return p[0] + p[1] * rep

    ordered = sorted(points, key=at)
    terms = []  # summed once at the end: adding them one by one re-flattens the growing sum
    for p, q in zip(ordered, ordered[1:]):
        xm = (at(p) + at(q)) / 2
        if any(xm < c + e * rep for c, e in x_lo) or any(xm >= c + 1 + e * rep for c, e in x_hi):
            continue
        lo = max(lows, key=lambda b: b.value(xm, rep))
        hi = min(highs, key=lambda b: b.value(xm, rep))
        if hi.value(xm, rep) - lo.value(xm, rep) + 1 < 0:
            continue
        for x0 in x0s:
            c = residue(x0)
            ja = _ceil_div(p[0] - x0, p[1], big, var)
            jb1 = _ceil_div(q[0] - x0, q[1], big, var)
            cnt = jb1 - ja
            alpha = _ceil_div(hi.c + hi.a * x0 + 1 - c, hi.e, mq, var) - _ceil_div(lo.c + lo.a * x0 - c, lo.e, mq, var)
            beta = (hi.a - lo.a) * big // mq
            terms.append(cnt * alpha + sp.Rational(beta, 2) * cnt * (ja + jb1 - 1))
    return sp.expand(sp.Add(*terms))
