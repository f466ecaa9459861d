"""The atoms of the IR, each defined once: one class per kind of constraint on (q, k).

Everything any stage asks of an atom is a method of its class, so that adding an atom means
writing one class here, and no stage dispatches on an atom's type. The protocol (`Atom`):

- `holds(q, k)`: membership on broadcastable integer arrays (numpy or torch): the reference.
- `tile(q0, q1, k0, k1)`: the exact Status of every rectangle of pairs: block maps.
- `key_bounds()`: for a query block of rows [q0, q_last], the interval of keys that some row
  may attend (the hull) and the interval that every row attends (full, or None), as affine
  data (`Key`, `Cond`, `Bounds`): the kernel plan renders it and the simulator evaluates it.
- `query_bounds()`: the same for a key block of columns [k0, k_last]: the queries that may
  attend some key of it, and those that attend all of it (the column view, for backward
  passes that go by key tile).
- `render_parts(q, k)`: the predicate as texts whose conjunction it is, over integer tiles
  with the given names; the same text serves Triton and torch (see `render`).
- `constrain(conj)`: the atom's part of a conjunction's normal form (`Conj`), which pair
  counts, cost formulas, liveness regions and receptive fields read.
- `complement()`: positive atoms whose union is the atom's complement, or None to keep it
  negated.
- `depends`: what the atom reads: "q", "k", "d" (q - k alone) or "qk" (it couples them).
- `scale()`: the size of the atom's structure (pictures, lengths that show the pattern).

Periodic atoms (`Chunk`, `Power`) add the counting hooks `period` and `diagonal_windows`.

Data-dependent atoms (`Select`: key blocks chosen at run time by a score of q and k) answer
what positions can decide and refuse the rest: their tile status is SOME ("maybe") on every
tile, their key and query intervals are open and never full, their part of a conjunction
is recorded in `Conj.selects`; `holds`, `render_parts` and `complement` raise
`DataDependent`, so no stage can take a position-only answer for them by mistake. Lowering
splits a pattern into its static part and its selection term (ir.Selection), and every
stage reads the two apart.
A subclass that misses a method cannot be instantiated (abc), and tests/test_atoms.py runs
every atom through every method against brute force.

Rendering: the texts use only `+ - // % & | ~ == <= >=` on integers, whose meanings agree in
Triton and torch as long as no negative number is divided. Positions are never negative, so
`q // C` and `k % m` are safe; `q - k` can be, so a remainder of it is rendered in the
non-negative-safe form `((q - k) % m + m) % m` (Triton's `%` truncates like C, torch's
floors; both give the same value after the shift). Where a sub-expression can go negative
only on pairs that another conjunct already rejects (the grid coordinates of text tokens in
`Neighborhood`), the two targets may compute different garbage there and still agree.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from .status import brute_tile, mod_status, range_status, status_of

Depends = Literal["q", "k", "d", "qk", "data"]


class DataDependent(ValueError):
    """Asked of a data-dependent atom (a selection) what only the inputs can answer."""


# ------------------------------------------------------------------ affine bounds as data


@dataclass(frozen=True, order=True)
class Key:
    """A scalar of a block: `(var // step) * step + add`, where var is "q0" / "q_last" (the first
    and last row of a query block) or "k0" / "k_last" (of a key block); None: the constant `add`."""

    var: str | None = None
    add: int = 0
    step: int = 1

    def at(self, env: dict[str, Any]) -> Any:
        """The value for query-block arrays env["q0"], env["q_last"] (numpy or ints)."""
        if self.var is None:
            return self.add
        x = env[self.var]
        return (x // self.step) * self.step + self.add if self.step != 1 else x + self.add


@dataclass(frozen=True, order=True)
class Cond:
    """`left op right` between two Keys: when a term is active, or when a full interval exists."""

    left: Key
    op: Literal[">=", "<=", "=="]
    right: Key

    def at(self, env: dict[str, Any]) -> Any:
        a, b = self.left.at(env), self.right.at(env)
        return a >= b if self.op == ">=" else a <= b if self.op == "<=" else a == b


@dataclass(frozen=True)
class Bounds:
    """Keys in [max(0, *lo), min(N - 1, *hi)] while every condition in `on` holds."""

    lo: tuple[Key, ...] = ()
    hi: tuple[Key, ...] = ()
    on: tuple[Cond, ...] = ()

    def __and__(self, other: "Bounds") -> "Bounds":
        return Bounds(self.lo + other.lo, self.hi + other.hi, self.on + other.on)

    def at(self, env: dict[str, Any], n: int) -> tuple[Any, Any, Any]:
        """(first, last, active) for block arrays in env (q0 and q_last, or k0 and k_last), of n
        positions on the other side."""
        q0 = np.asarray(next(iter(env.values())))
        lo = np.zeros_like(q0)
        for key in self.lo:
            lo = np.maximum(lo, key.at(env))
        hi = np.full_like(q0, n - 1)
        for key in self.hi:
            hi = np.minimum(hi, key.at(env))
        on = np.ones(q0.shape, dtype=bool)
        for cond in self.on:
            on = on & cond.at(env)
        return lo, hi, on


OPEN = Bounds()


def _q(var: str, add: int = 0) -> Key:
    return Key(var, add)


def _const(c: int) -> Key:
    return Key(None, c)


# ------------------------------------------------------------------ the normal form of a conjunction


def meet_range(lo: int | None, hi: int | None, lo2: int | None, hi2: int | None) -> tuple[int | None, int | None]:
    """The intersection of [lo, hi] and [lo2, hi2] (None: an open end)."""
    lo = lo2 if lo is None else lo if lo2 is None else max(lo, lo2)
    hi = hi2 if hi is None else hi if hi2 is None else min(hi, hi2)
    return lo, hi


def crt(mods: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> tuple[int, int] | None:
    """x = r_i (mod m_i) for all i, as one (m, r); None when incompatible."""
    m, r = 1, 0
    for mi, ri in mods:
        g = math.gcd(m, mi)
        if (ri - r) % g:
            return None
        lcm = m // g * mi
        t = ((ri - r) // g * pow(m // g, -1, mi // g)) % (mi // g) if mi // g > 1 else 0
        m, r = lcm, (r + m * t) % lcm
    return m, r


@dataclass(frozen=True)
class Conj:
    """A conjunction of positive atoms split by kind of constraint: ranges of q - k, q and k,
    residues of q - k and of k (merged by the Chinese remainder theorem), and the atoms that
    couple q and k (chunks, power blocks, grid neighbourhoods). Built by `Conj.of`, each atom
    adding its part through `Atom.constrain`."""

    d_lo: int | None = None
    d_hi: int | None = None
    q_lo: int | None = None
    q_hi: int | None = None
    k_lo: int | None = None
    k_hi: int | None = None
    dmods: tuple[tuple[int, int], ...] = ()
    kmods: tuple[tuple[int, int], ...] = ()
    chunks: tuple["Chunk", ...] = ()
    powers: tuple["Power", ...] = ()
    grids: tuple["Neighborhood", ...] = ()
    selects: tuple["Select", ...] = ()

    @staticmethod
    def of(atoms: Any) -> "Conj":
        c = Conj()
        for a in atoms:
            c = a.constrain(c)
        return c

    @property
    def dmod(self) -> tuple[int, int] | None:
        return crt(self.dmods)

    @property
    def kmod(self) -> tuple[int, int] | None:
        return crt(self.kmods)

    @property
    def periodic(self) -> tuple[Any, ...]:
        """The atoms that hold on q's residues modulo a period, per diagonal (chunks, powers)."""
        return self.chunks + self.powers

    @property
    def empty(self) -> bool:
        """True when the ranges or residues contradict (a sufficient test)."""
        ranges = ((self.d_lo, self.d_hi), (self.q_lo, self.q_hi), (self.k_lo, self.k_hi))
        return (
            any(a is not None and b is not None and a > b for a, b in ranges) or self.dmod is None or self.kmod is None
        )


# ------------------------------------------------------------------ the protocol


class Atom(abc.ABC):
    """What every atom provides (the module docstring says what each method is for)."""

    depends: Depends

    @abc.abstractmethod
    def holds(self, q: Any, k: Any) -> Any: ...

    @abc.abstractmethod
    def tile(self, q0: Any, q1: Any, k0: Any, k1: Any) -> np.ndarray: ...

    @abc.abstractmethod
    def key_bounds(self) -> tuple[Bounds, Bounds | None]: ...

    @abc.abstractmethod
    def query_bounds(self) -> tuple[Bounds, Bounds | None]: ...

    @abc.abstractmethod
    def render_parts(self, q: str, k: str) -> list[str]: ...

    @abc.abstractmethod
    def constrain(self, c: Conj) -> Conj: ...

    @abc.abstractmethod
    def complement(self) -> list["Atom"] | None: ...

    @abc.abstractmethod
    def scale(self) -> int: ...

    def render(self, q: str = "q", k: str = "k") -> str:
        """The predicate as one conjunction-safe text (no top-level `|`)."""
        return " & ".join(self.render_parts(q, k))


def offset_text(var: str, c: int) -> str:
    """`var + c` written without `+ -`."""
    if c == 0:
        return var
    return f"{var} + {c}" if c > 0 else f"{var} - {-c}"


def _rng(x: Any, lo: int | None, hi: int | None) -> Any:
    if lo is None and hi is None:
        return x == x
    if lo is None:
        return x <= hi
    if hi is None:
        return x >= lo
    return (x >= lo) & (x <= hi)


def _bound_texts(x: str, lo: int | None, hi: int | None, k: str) -> list[str]:
    parts = []
    if lo is not None:
        parts.append(f"({x} >= {lo})")
    if hi is not None:
        parts.append(f"({x} <= {hi})")
    return parts or [f"({k} >= 0)"]


def _ends(name: str, lo: int | None, hi: int | None) -> str:
    return f"{'' if lo is None else f'{lo} <= '}{name}{'' if hi is None else f' <= {hi}'}"


def _while_in(lo: int | None, hi: int | None, first: str, last: str) -> tuple[Bounds, Bounds]:
    """Open intervals, active while a block [first, last] meets [lo, hi] (hull) or lies in it (full)."""
    meets = tuple(
        x
        for x in (
            None if lo is None else Cond(Key(last), ">=", _const(lo)),
            None if hi is None else Cond(Key(first), "<=", _const(hi)),
        )
        if x
    )
    inside = tuple(
        x
        for x in (
            None if lo is None else Cond(Key(first), ">=", _const(lo)),
            None if hi is None else Cond(Key(last), "<=", _const(hi)),
        )
        if x
    )
    return Bounds(on=meets), Bounds(on=inside)


class RangeAtom(Atom):
    """lo <= x <= hi for one of q - k, k, q (an open end is None)."""

    lo: int | None
    hi: int | None

    def complement(self) -> list[Atom]:
        kind = type(self)
        out: list[Atom] = []
        if self.lo is not None:
            out.append(kind(None, self.lo - 1))
        if self.hi is not None:
            out.append(kind(self.hi + 1, None))
        return out

    def scale(self) -> int:
        return max((abs(x) for x in (self.lo, self.hi) if x is not None), default=0)


@dataclass(frozen=True, order=True)
class Band(RangeAtom):
    """lo <= q - k <= hi (an open end is None): causal, window, band."""

    lo: int | None
    hi: int | None
    depends = "d"

    def holds(self, q, k):
        return _rng(q - k, self.lo, self.hi)

    def tile(self, q0, q1, k0, k1):
        return range_status(q0, -k1, q1, -k0, self.lo, self.hi)

    def key_bounds(self):
        hull = Bounds(
            () if self.hi is None else (_q("q0", -self.hi),), () if self.lo is None else (_q("q_last", -self.lo),)
        )
        full = Bounds(
            () if self.hi is None else (_q("q_last", -self.hi),), () if self.lo is None else (_q("q0", -self.lo),)
        )
        return hull, full

    def query_bounds(self):
        hull = Bounds(
            () if self.lo is None else (_q("k0", self.lo),), () if self.hi is None else (_q("k_last", self.hi),)
        )
        full = Bounds(
            () if self.lo is None else (_q("k_last", self.lo),), () if self.hi is None else (_q("k0", self.hi),)
        )
        return hull, full

    def render_parts(self, q, k):
        """lo <= q - k <= hi as per-row key bounds q - hi <= k <= q - lo: the subtraction runs
        on the column of query positions, leaving one compare per bound per pair."""
        parts = []
        if self.hi is not None:
            parts.append(f"({k} >= {offset_text(q, -self.hi)})")
        if self.lo is not None:
            parts.append(f"({k} <= {offset_text(q, -self.lo)})")
        return parts or [f"({k} >= 0)"]

    def constrain(self, c):
        return replace(c, **dict(zip(("d_lo", "d_hi"), meet_range(c.d_lo, c.d_hi, self.lo, self.hi))))

    def __str__(self) -> str:
        return _ends("q-k", self.lo, self.hi)


@dataclass(frozen=True, order=True)
class KRange(RangeAtom):
    """lo <= k <= hi: sinks, global keys."""

    lo: int | None
    hi: int | None
    depends = "k"

    def holds(self, q, k):
        return _rng(k + 0 * q, self.lo, self.hi)

    def tile(self, q0, q1, k0, k1):
        return range_status(k0, 0 * q0, k1, 0 * q1, self.lo, self.hi)

    def key_bounds(self):
        b = Bounds(() if self.lo is None else (_const(self.lo),), () if self.hi is None else (_const(self.hi),))
        return b, b

    def query_bounds(self):
        """Any query, while some key of the block is in range (hull) or all are (full)."""
        return _while_in(self.lo, self.hi, "k0", "k_last")

    def render_parts(self, q, k):
        return _bound_texts(k, self.lo, self.hi, k)

    def constrain(self, c):
        return replace(c, **dict(zip(("k_lo", "k_hi"), meet_range(c.k_lo, c.k_hi, self.lo, self.hi))))

    def __str__(self) -> str:
        return _ends("k", self.lo, self.hi)


@dataclass(frozen=True, order=True)
class QRange(RangeAtom):
    """lo <= q <= hi: global queries."""

    lo: int | None
    hi: int | None
    depends = "q"

    def holds(self, q, k):
        return _rng(q + 0 * k, self.lo, self.hi)

    def tile(self, q0, q1, k0, k1):
        return range_status(q0, 0 * k0, q1, 0 * k1, self.lo, self.hi)

    def key_bounds(self):
        """Any key, while some row of the block is in range (hull) or all are (full)."""
        return _while_in(self.lo, self.hi, "q0", "q_last")

    def query_bounds(self):
        b = Bounds(() if self.lo is None else (_const(self.lo),), () if self.hi is None else (_const(self.hi),))
        return b, b

    def render_parts(self, q, k):
        return _bound_texts(q, self.lo, self.hi, k)

    def constrain(self, c):
        return replace(c, **dict(zip(("q_lo", "q_hi"), meet_range(c.q_lo, c.q_hi, self.lo, self.hi))))

    def __str__(self) -> str:
        return _ends("q", self.lo, self.hi)


MAX_EXPANDED_MODULUS = 16  # complements of x mod m == r expand to m - 1 atoms up to this m


class ModAtom(Atom):
    """x mod m == r for one of q - k, k."""

    m: int
    r: int

    def complement(self) -> list[Atom] | None:
        if self.m > MAX_EXPANDED_MODULUS:
            return None
        return [replace(self, r=r) for r in range(self.m) if r != self.r]

    def key_bounds(self):
        return (OPEN, OPEN) if self.m == 1 else (OPEN, None)

    def query_bounds(self):
        return self.key_bounds()

    def scale(self) -> int:
        return 16 * self.m


@dataclass(frozen=True, order=True)
class DiffMod(ModAtom):
    """(q - k) mod m == r: strided and dilated diagonals."""

    m: int
    r: int
    depends = "d"

    def holds(self, q, k):
        return (q - k) % self.m == self.r

    def tile(self, q0, q1, k0, k1):
        return mod_status(q0, -k1, q1 - q0, k1 - k0, self.m, self.r)

    def render_parts(self, q, k):
        if self.m == 1:
            return [f"({k} >= 0)"]
        return [f"((({q} - {k}) % {self.m} + {self.m}) % {self.m} == {self.r})"]

    def constrain(self, c):
        return replace(c, dmods=c.dmods + ((self.m, self.r),))

    def __str__(self) -> str:
        return f"(q-k) mod {self.m} == {self.r}"


@dataclass(frozen=True, order=True)
class KMod(ModAtom):
    """k mod m == r: column stripes."""

    m: int
    r: int
    depends = "k"

    def holds(self, q, k):
        return (k + 0 * q) % self.m == self.r

    def tile(self, q0, q1, k0, k1):
        return mod_status(k0, 0 * q0, k1 - k0, 0 * q1, self.m, self.r)

    def render_parts(self, q, k):
        if self.m == 1:
            return [f"({k} >= 0)"]
        return [f"({k} % {self.m} == {self.r})"]

    def constrain(self, c):
        return replace(c, kmods=c.kmods + ((self.m, self.r),))

    def __str__(self) -> str:
        return f"k mod {self.m} == {self.r}"


class PeriodicAtom(Atom):
    """An atom that couples q and k through blocks of `period` positions: on the diagonal
    q - k = d it holds on windows of q mod period (the counting hook `diagonal_windows`)."""

    depends = "qk"

    @property
    @abc.abstractmethod
    def period(self) -> int: ...

    @abc.abstractmethod
    def diagonal_windows(self, d: np.ndarray):
        """(period, lo, hi, keep) arrays: on diagonal d the atom holds for q mod period in
        [lo, hi] where keep is 1 (a union of such windows)."""

    @abc.abstractmethod
    def block_distances(self, limit: int) -> list[int]:
        """The distances (q div period) - (k div period) the atom allows, up to limit positions."""

    def window_ok(self, d: np.ndarray, r: int) -> np.ndarray:
        """Whether residue r of q (mod the period) satisfies the atom on each diagonal d."""
        ok = np.zeros(d.shape, dtype=bool)
        for _p, wl, wh, keep in self.diagonal_windows(d):
            ok |= (keep > 0) & (wl <= r) & (r <= wh)
        return ok

    def complement(self) -> None:
        return None


@dataclass(frozen=True, order=True)
class Chunk(PeriodicAtom):
    """q div size == k div size: block-local attention."""

    size: int

    @property
    def period(self) -> int:
        return self.size

    def holds(self, q, k):
        return q // self.size == k // self.size

    def tile(self, q0, q1, k0, k1):
        c = self.size
        qa, qb, ka, kb = q0 // c, q1 // c, k0 // c, k1 // c
        all_true = (qa == qb) & (ka == kb) & (qa == ka)
        any_true = (qb >= ka) & (kb >= qa)
        return status_of(all_true, any_true)

    def key_bounds(self):
        c = self.size
        hull = Bounds((Key("q0", 0, c),), (Key("q_last", c - 1, c),))
        full = Bounds((Key("q0", 0, c),), (Key("q0", c - 1, c),), (Cond(Key("q0", 0, c), "==", Key("q_last", 0, c)),))
        return hull, full

    def query_bounds(self):
        c = self.size
        hull = Bounds((Key("k0", 0, c),), (Key("k_last", c - 1, c),))
        full = Bounds((Key("k0", 0, c),), (Key("k0", c - 1, c),), (Cond(Key("k0", 0, c), "==", Key("k_last", 0, c)),))
        return hull, full

    def render_parts(self, q, k):
        return [f"({q} // {self.size} == {k} // {self.size})"]

    def constrain(self, c):
        return replace(c, chunks=c.chunks + (self,))

    def diagonal_windows(self, d):
        c = self.size
        keep = (np.abs(d) <= c - 1).astype(np.int64)
        yield c, np.maximum(d, 0), c - 1 + np.minimum(d, 0), keep

    def block_distances(self, limit: int) -> list[int]:
        return [0]

    def scale(self) -> int:
        return self.size

    def __str__(self) -> str:
        return f"q div {self.size} == k div {self.size}"


def is_power_distance(d: Any) -> Any:
    """d == 0 or d a positive power of two, elementwise on integer arrays."""
    return (d == 0) | ((d > 0) & ((d & (d - 1)) == 0))


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Elementwise int.bit_length for non-negative int64 arrays: the float's binary exponent (exact below 2**53)."""
    if x.size == 0 or x.max() < 2**53:
        return np.frexp(x.astype(np.float64))[1].astype(np.int64)
    return np.array([int(v).bit_length() for v in x.ravel()], dtype=np.int64).reshape(x.shape)


def _power_hits(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How many integers in [lo, hi] are 0 or a positive power of two, elementwise."""
    lo = lo.astype(np.int64)
    hi = hi.astype(np.int64)
    zero = (lo <= 0) & (hi >= 0)
    pos_lo = np.maximum(lo, 1)
    pos = np.where(hi >= pos_lo, _bit_length(np.maximum(hi, 0)) - _bit_length(pos_lo - 1), 0)
    return zero.astype(np.int64) + pos


@dataclass(frozen=True, order=True)
class Power(PeriodicAtom):
    """Block distance (q div block) - (k div block) is 0 or a power of two: PowerAttention."""

    block: int

    @property
    def period(self) -> int:
        return self.block

    def holds(self, q, k):
        return is_power_distance(q // self.block - k // self.block)

    def tile(self, q0, q1, k0, k1):
        b = self.block
        lo, hi = np.broadcast_arrays(np.asarray(q0 // b - k1 // b), np.asarray(q1 // b - k0 // b))
        hits = _power_hits(lo, hi)
        return status_of(hits == hi - lo + 1, hits > 0)

    def key_bounds(self):
        """No key beyond the block's own power block; never full (rows see different blocks)."""
        return Bounds(hi=(Key("q_last", self.block - 1, self.block),)), None

    def query_bounds(self):
        """No query before the block's own power block; never full."""
        return Bounds(lo=(Key("k0", 0, self.block),)), None

    def render_parts(self, q, k):
        d = f"({q} // {self.block} - {k} // {self.block})"
        return [f"(({d} == 0) | (({d} > 0) & (({d} & ({d} - 1)) == 0)))"]

    def constrain(self, c):
        return replace(c, powers=c.powers + (self,))

    def diagonal_windows(self, d):
        bsz = self.block
        t, u = np.divmod(d, bsz)  # q mod B >= u: block distance t; else t + 1
        yield bsz, u, np.full_like(d, bsz - 1), is_power_distance(t).astype(np.int64)
        yield bsz, np.zeros_like(d), u - 1, is_power_distance(t + 1).astype(np.int64)

    def block_distances(self, limit: int) -> list[int]:
        out, delta = [0], 1
        while delta * self.block <= limit:
            out.append(delta)
            delta *= 2
        return out

    def scale(self) -> int:
        return 8 * self.block

    def __str__(self) -> str:
        return f"(q div {self.block}) - (k div {self.block}) in {{0, 1, 2, 4, ...}}"


def _at_most(v: Any, top: Any) -> Any:
    """min(v, top) in plain arithmetic (ints, numpy arrays, tensors alike)."""
    over = v - top
    return v - over * (over > 0)


def axis_low(x: Any, length: int, kernel: int, dilation: int, causal: bool, stride: int = 1) -> Any:
    """The first key coordinate of query coordinate x's window on one axis (NATTEN's rule).

    In x's dilation group (the n coordinates congruent to x modulo d; x is member i = x div d)
    the members are cut into stride groups of s consecutive members, and every member uses
    the window of its group's leader: for a non-causal axis the centre member
    (i div s) * s + s div 2 (the right one of the two centres for an even s), for a causal
    axis the last member (i div s) * s + s - 1; in both cases at most n - 1 (a last partial
    group leads with the group's last member). With s = 1 the leader is x itself. The window
    holds the keys low, low + d, ..., up to `axis_high`: for a non-causal axis the kernel
    members centred on the leader (K div 2 before it), shifted inward at the borders; for a
    causal axis the ones from leader - K + 1 (below 0 near the start, so holding fewer).
    Plain arithmetic, so x may be an int, a numpy array or a tensor.
    """
    group = x % dilation
    group_len = (length - group + dilation - 1) // dilation
    lead = x // dilation
    if stride > 1:
        lead = _at_most(lead // stride * stride + (stride - 1 if causal else stride // 2), group_len - 1)
    if causal:
        return (lead - kernel + 1) * dilation + group
    start = lead - kernel // 2
    start = start * (start > 0)
    start = _at_most(start, group_len - kernel)
    return start * dilation + group


def axis_high(x: Any, length: int, kernel: int, dilation: int, causal: bool, stride: int = 1) -> Any:
    """The last key coordinate of x's window (see `axis_low`): low + (K - 1) d, except that a
    causal window ends at x itself (with a stride, before its leader's end)."""
    if causal:
        return x
    return axis_low(x, length, kernel, dilation, causal, stride) + (kernel - 1) * dilation


def axis_neighbour(x: Any, y: Any, length: int, kernel: int, dilation: int, causal: bool, stride: int = 1) -> Any:
    """NATTEN's rule on one axis (see Neighborhood): y is a member of x's window."""
    diff = y - axis_low(x, length, kernel, dilation, causal, stride)
    return (diff >= 0) & (y <= axis_high(x, length, kernel, dilation, causal, stride)) & (diff % dilation == 0)


def axis_window(nb: "Neighborhood", axis: int) -> tuple[int, int, bool, int]:
    """A neighbourhood's rule on one axis: (kernel, dilation, causal, stride), the arguments
    `axis_low`, `axis_high` and `axis_neighbour` take after the coordinates and the length."""
    return nb.kernel[axis], nb.dilation[axis], nb.causal[axis], nb.stride[axis]


def _text_at_most(v: str, top: str) -> str:
    """min(v, top) as text in the arithmetic of `_at_most`."""
    over = f"({v} - {top})"
    return f"({v} - {over} * ({over} > 0))"


@dataclass(frozen=True, order=True)
class Neighborhood(Atom):
    """NATTEN's neighbourhood over a token grid, flattened row-major after `prefix` text tokens.

    Per axis of length L with kernel K, dilation d, causality c and stride s, query
    coordinate x attends key coordinate y when x and y fall in the same dilation group
    (x mod d == y mod d) and y's index in the group lies in the window of x's stride leader
    (GNA: the s consecutive group members of x's stride group share one window): for a
    non-causal axis the K positions centred on the leader, shifted inward at the borders so
    that there are exactly K; for a causal axis the positions from leader - K + 1 to x
    itself (fewer at the start). See `axis_low`. Prefix tokens attend to and from everything.
    """

    dims: tuple[int, ...]
    kernel: tuple[int, ...]
    dilation: tuple[int, ...]
    causal: tuple[bool, ...]
    prefix: int = 0
    stride: tuple[int, ...] = ()  # per axis; () means 1 on every axis (NATTEN's stride-1 windows)
    depends = "qk"

    def __post_init__(self) -> None:
        if not self.stride:
            object.__setattr__(self, "stride", (1,) * len(self.dims))

    @property
    def size(self) -> int:
        return math.prod(self.dims)

    def holds(self, q, k):
        in_text = (q < self.prefix) | (k < self.prefix)
        gq, gk = q - self.prefix, k - self.prefix
        ok = (gq >= 0) & (gk >= 0) & (gq < self.size) & (gk < self.size)
        stride = self.size
        for axis, length in enumerate(self.dims):
            stride //= length
            ok = ok & axis_neighbour((gq // stride) % length, (gk // stride) % length, length, *axis_window(self, axis))
        return in_text | ok

    def tile(self, q0, q1, k0, k1):
        return brute_tile(self, q0, q1, k0, k1)

    def key_bounds(self):
        """Keys within the block's rows' reach in flattened positions; never full."""
        return self._within_reach("q0", "q_last")

    def query_bounds(self):
        return self._within_reach("k0", "k_last")

    def _within_reach(self, first: str, last: str) -> tuple[Bounds, None]:
        """Positions within the flattened reach of the windows (symmetric: a key in a query's
        window lies within the same reach of it: a window holds its query and spans
        (kernel - 1) * d per axis, strided or not); open with a prefix."""
        if self.prefix:
            return OPEN, None
        reach, stride = 0, 1
        for length, kernel, dil in reversed(list(zip(self.dims, self.kernel, self.dilation))):
            reach += (kernel - 1) * dil * stride
            stride *= length
        return Bounds((_q(first, -reach),), (_q(last, reach),)), None

    def render_parts(self, q, k):
        """NATTEN's rule per axis, strides included, on flattened grid positions (axis_low
        written out)."""
        gq, gk = f"({offset_text(q, -self.prefix)})", f"({offset_text(k, -self.prefix)})"
        parts = [f"({gq} >= 0)", f"({gk} >= 0)", f"({gq} < {self.size})", f"({gk} < {self.size})"]
        stride = self.size
        for length, kernel, dil, causal, st in zip(self.dims, self.kernel, self.dilation, self.causal, self.stride):
            stride //= length
            x, y = f"({gq} // {stride} % {length})", f"({gk} // {stride} % {length})"
            parts.append(f"({x} % {dil} == {y} % {dil})")
            xi, yi = f"({x} // {dil})", f"({y} // {dil})"
            group_len = f"(({length} - {x} % {dil} + {dil} - 1) // {dil})"
            lead = xi
            if st > 1:  # the stride group's leader, at most the group's last member
                lead = _text_at_most(f"({xi} // {st} * {st} + {st - 1 if causal else st // 2})", f"({group_len} - 1)")
            if causal:
                parts.append(f"({yi} <= {xi})")
                parts.append(f"({yi} > {lead} - {kernel})")
                continue
            s0 = f"({lead} - {kernel // 2})"
            start = _text_at_most(f"({s0} * ({s0} > 0))", f"({group_len} - {kernel})")
            parts.append(f"({yi} >= {start})")
            parts.append(f"({yi} < {start} + {kernel})")
        inside = " & ".join(parts)
        if self.prefix == 0:
            return [f"({inside})"]
        return [f"(({q} < {self.prefix}) | ({k} < {self.prefix}) | ({inside}))"]

    def constrain(self, c):
        return replace(c, grids=c.grids + (self,))

    def complement(self) -> None:
        return None

    def scale(self) -> int:
        return self.prefix + int(np.prod(self.dims[1:]))  # about one frame

    def __str__(self) -> str:
        strided = f", stride={self.stride}" if any(v != 1 for v in self.stride) else ""
        return (
            f"neighborhood(grid={self.dims}, kernel={self.kernel}, dilation={self.dilation}, "
            f"causal={self.causal}{strided})"
        )


@dataclass(frozen=True, order=True)
class Select(Atom):
    """Key blocks chosen at run time: per query block of `block` rows and per KV head, the
    key blocks of `block` keys that rank highest by `score` under a budget of `top` blocks
    or of `mass` percent of the estimated attention mass (the other one is 0). `stride`
    (antidiagonal) and `last` (vslash) are the scores' options. docs/selection.md."""

    score: str
    top: int
    mass: int
    block: int
    stride: int = 8
    last: int = 64
    depends = "data"

    def _refuse(self, what: str) -> DataDependent:
        return DataDependent(f"{self} is chosen at run time from q and k: positions alone cannot decide {what}")

    def holds(self, q, k):
        raise self._refuse("membership")

    def tile(self, q0, q1, k0, k1):
        """SOME ("maybe") everywhere: any block may be chosen, none is chosen for sure."""
        shape = np.broadcast(np.asarray(q0), np.asarray(q1), np.asarray(k0), np.asarray(k1)).shape
        return np.full(shape, 1, dtype=np.int8)

    def key_bounds(self):
        return OPEN, None

    def query_bounds(self):
        return OPEN, None

    def render_parts(self, q, k):
        raise self._refuse("a predicate (kernels read the chosen blocks' index lists)")

    def constrain(self, c):
        return replace(c, selects=c.selects + (self,))

    def complement(self):
        raise self._refuse("a complement")

    def scale(self) -> int:
        return self.block

    @property
    def budget_keys(self) -> int | None:
        """At most this many selected keys per row (top * block), None for a mass budget."""
        return self.top * self.block if self.top else None

    def __str__(self) -> str:
        budget = f"top={self.top}" if self.top else f"mass={self.mass}"
        opts = f", stride={self.stride}" if self.score == "antidiagonal" else ""
        opts += f", last={self.last}" if self.score == "vslash" else ""
        return f"select({self.score}, {budget}, block={self.block}{opts})"


ATOM_TYPES = (Band, KRange, QRange, DiffMod, KMod, Chunk, Power, Neighborhood, Select)
AtomT = Band | KRange | QRange | DiffMod | KMod | Chunk | Power | Neighborhood | Select
