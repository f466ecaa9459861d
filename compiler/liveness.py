"""KV liveness: which cached keys a future query can still read, and the smallest lossless cache.

Convention. Decoding at position t means: the cache holds keys of positions < t, the query
of token t is about to be processed, and token t's own key is appended to the cache when
it is processed (so the kernel attends to the cache plus the new key). Key k < t is *live*
at t when some query q >= t may attend to it: live(t) = {k < t : exists q >= t, (q, k)
allowed}. Everything else can be dropped without changing any output. A buffer that
appends token t before attending needs one slot more than |live(t)|.

Per term the rule is exact arithmetic on the atoms (for a fixed k, the queries that may
read it are an interval of q, cut by periodic conditions):
  - k-only atoms (KRange, KMod) keep or drop k whatever t is: a sink area, column stripes;
  - Band(lo, hi): some q = k + d >= t needs t <= k + hi: a ring of the last hi keys;
    with (q - k) mod m == r the largest usable d replaces hi (dilated windows);
  - Chunk(C): q must share k's chunk: only keys of t's chunk survive (and with a band
    lo > 0, only offsets <= C - 1 - lo inside it);
  - QRange(hi): no future query after hi: the term's keys die when t > hi;
  - DiffMod, Power and negated literals on an unbounded interval of q: always some future q.
Where a periodic condition meets a bounded interval (DiffMod with a chunk or q-range,
Power or a negated literal with any upper bound on q, a neighbourhood) the rule drops
that condition: the cache keeps a superset (still lossless) and the layout says
`exact = False`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .atoms import Conj, crt
from .count import reduce_term
from ..spec.shape import span
from .ir import Pattern, Term

if TYPE_CHECKING:  # the size formulas need sympy: imported where they are built, so that
    from .formula import Formula  # compile and simulate (layouts only) never load it

NO_DECODE = "a non-causal or grid pattern has no decode, so no decode cache"


def decodable(pattern: Pattern) -> bool:
    """Whether a generated module decodes with this pattern, and so keeps a KV cache: a causal
    pattern without neighbourhoods (a non-causal one reads keys that do not exist yet while
    decoding; grid patterns are for prefill)."""
    return pattern.is_causal and not any(Conj.of([lit.atom]).grids for t in pattern.terms for lit in t.lits)


@dataclass(frozen=True)
class Region:
    """The keys k < t kept at decode position t by one structure of the cache:
    k_lo <= k <= k_hi, k mod stride[0] == stride[1], k >= t - recent, k in t's chunk with
    (k mod chunk) <= chunk_offset_max, and nothing once t > until."""

    k_lo: int = 0
    k_hi: int | None = None
    stride: tuple[int, int] = (1, 0)
    recent: int | None = None
    chunk: int | None = None
    chunk_offset_max: int | None = None
    until: int | None = None

    @property
    def kind(self) -> str:
        """What the cache manager implements: sink, ring, chunk, stripes or full."""
        if self.chunk is not None:
            return "chunk"
        if self.recent is not None:
            return "ring"
        if self.k_hi is not None:
            return "sink"
        if self.stride[0] > 1:
            return "stripes"
        return "full"

    def describe(self) -> str:
        parts = {
            "chunk": f"current chunk of {self.chunk} keys"
            + (f", last {self.recent} of it" if self.recent is not None else ""),
            "ring": f"ring of the last {self.recent} keys",
            "sink": f"sink: keys {span(self.k_lo, (self.k_hi or 0) + 1)}",
            "stripes": f"column stripes: every key with k mod {self.stride[0]} == {self.stride[1]}",
            "full": "full: every key (nothing evictable)",
        }[self.kind]
        extra = []
        if self.stride[0] > 1 and self.kind != "stripes":
            extra.append(f"only k mod {self.stride[0]} == {self.stride[1]}")
        if self.kind != "sink" and (self.k_lo > 0 or self.k_hi is not None):
            extra.append(f"keys {self.k_lo}.." if self.k_hi is None else f"keys {span(self.k_lo, self.k_hi + 1)}")
        if self.chunk_offset_max is not None:
            extra.append(f"offsets <= {self.chunk_offset_max} in the chunk")
        if self.until is not None:
            extra.append(f"only while t <= {self.until}")
        if self.kind == "full" and extra:
            parts = "every key"
        return parts + (f" ({', '.join(extra)})" if extra else "")

    def holds(self, k: np.ndarray, t: int) -> np.ndarray:
        ok = (k < t) & (k >= self.k_lo)
        if self.until is not None and t > self.until:
            return np.zeros_like(ok)
        if self.k_hi is not None:
            ok &= k <= self.k_hi
        if self.stride[0] > 1:
            ok &= k % self.stride[0] == self.stride[1]
        if self.recent is not None:
            ok &= k >= t - self.recent
        if self.chunk is not None:
            ok &= k // self.chunk == t // self.chunk
            if self.chunk_offset_max is not None:
                ok &= k % self.chunk <= self.chunk_offset_max
        return ok

    def intersect(self, o: "Region") -> "Region | None":
        stride = crt([self.stride, o.stride])
        if stride is None:
            return None
        chunk, off = self.chunk, self.chunk_offset_max
        if o.chunk is not None:
            if chunk is None:
                chunk, off = o.chunk, o.chunk_offset_max
            elif chunk == o.chunk:
                off = _min(off, o.chunk_offset_max)
            elif chunk % o.chunk == 0 and off is None and o.chunk_offset_max is None:
                chunk = o.chunk
            elif o.chunk % chunk == 0 and off is None and o.chunk_offset_max is None:
                pass
            else:
                from .formula import NoFormula

                raise NoFormula(f"chunks of {chunk} and {o.chunk} keys with offset limits")
        r = Region(
            max(self.k_lo, o.k_lo),
            _min(self.k_hi, o.k_hi),
            stride,
            _min(self.recent, o.recent),
            chunk,
            off,
            _min(self.until, o.until),
        )
        return None if r.k_hi is not None and r.k_hi < r.k_lo else r

    def within(self, o: "Region") -> bool:
        """A sufficient check that every key this region keeps, o keeps too, at every t."""
        return (
            self.k_lo >= o.k_lo
            and _le(self.k_hi, o.k_hi)
            and _le(self.recent, o.recent)
            and _le(self.until, o.until)
            and (
                o.stride[0] == 1 or (self.stride[0] % o.stride[0] == 0 and self.stride[1] % o.stride[0] == o.stride[1])
            )
            and (
                o.chunk is None
                or (self.chunk is not None and o.chunk % self.chunk == 0 and o.chunk_offset_max is None)
                or (self.chunk == o.chunk and _le(self.chunk_offset_max, o.chunk_offset_max))
            )
        )

    def size_formula(self) -> Formula:
        """|region at t| as a formula in t >= 0."""
        return _region_size(self)

    def _size_formula(self) -> Formula:
        from .formula import T, Formula, lattice_count

        if self.chunk is None:
            k_lo = [(self.k_lo, 0)] + ([(-self.recent, 1)] if self.recent is not None else [])
            k_hi = [(-1, 1)] + ([(self.k_hi, 0)] if self.k_hi is not None else [])
            f = lattice_count(T, 0, [(0, 0)], [(0, 0)], k_lo, k_hi, kmod=self.stride)
        else:
            f = self._chunk_size_formula()
        if self.until is not None:
            f = f.restricted(0, self.until).then(Formula.const(T, 0, lo=self.until + 1))
        return f

    def _chunk_size_formula(self) -> Formula:
        import sympy as sp

        from .cost import of_mod
        from .formula import T, Formula, NoFormula, Piece, lattice_count

        v = sp.Symbol("v", integer=True, nonnegative=True)
        c, m = self.chunk, self.stride[0]
        if c % m:
            raise NoFormula(f"stride {m} does not divide chunk {c}")
        consts = [x for x in (self.k_lo, None if self.k_hi is None else self.k_hi + 1) if x]
        a_star = max([0] + [-(-x // c) for x in consts])
        if a_star > 16:
            raise NoFormula("key range spans many chunks")

        def in_chunk(u: int, with_range: bool) -> Formula:
            lo = [(u * c, 0)] + ([(u * c - self.recent, 1)] if self.recent is not None else [])
            hi = [(u * c - 1, 1)] + ([(u * c + self.chunk_offset_max, 0)] if self.chunk_offset_max is not None else [])
            if with_range:
                lo.append((self.k_lo, 0))
                if self.k_hi is not None:
                    hi.append((self.k_hi, 0))
            return lattice_count(v, 0, [(0, 0)], [(0, 0)], lo, hi, kmod=self.stride)

        pieces = []
        for u in range(a_star):
            for p in in_chunk(u, True).restricted(0, c - 1).pieces:
                pieces.append(Piece(p.lo + u * c, p.hi + u * c, sp.expand(p.expr.subs(v, T - u * c))))
        if self.k_hi is not None:
            tail = sp.Integer(0)
        else:
            tail = of_mod(in_chunk(0, False), sp.Mod(T, c), c)
        pieces.append(Piece(a_star * c, None, tail))
        return Formula(T, tuple(pieces), math.lcm(c, m)).merged()


@lru_cache(maxsize=1024)
def _region_size(region: Region) -> Formula:
    return region._size_formula()


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _le(a: int | None, b: int | None) -> bool:
    """a <= b where None is +infinity."""
    return b is None or (a is not None and a <= b)


@dataclass(frozen=True)
class CacheLayout:
    """The minimal lossless cache of one pattern (or of the union of patterns sharing a KV head):
    a union of regions. `exact` is False when some term was over-approximated (`notes`)."""

    regions: tuple[Region, ...]
    exact: bool = True
    notes: tuple[str, ...] = ()

    def live(self, t: int) -> np.ndarray:
        """Boolean vector over k in [0, t): which keys the cache holds at decode position t."""
        k = np.arange(t, dtype=np.int64)
        out = np.zeros(t, dtype=bool)
        for r in self.regions:
            out |= r.holds(k, t)
        return out

    def size_at(self, t: int) -> int:
        return int(self.live(t).sum())

    def size_formula(self) -> Formula:
        """|live(t)| as a formula in t >= 0 (inclusion-exclusion over the regions)."""
        return _union_size(tuple(sorted(self.regions, key=repr)))

    @property
    def is_full(self) -> bool:
        return any(r.kind == "full" and r.k_lo == 0 and r.stride[0] == 1 and r.until is None for r in self.regions)

    def union(self, other: "CacheLayout") -> "CacheLayout":
        return _layout(
            list(self.regions) + list(other.regions),
            self.exact and other.exact,
            self.notes + tuple(n for n in other.notes if n not in self.notes),
        )

    def describe(self) -> list[str]:
        if not self.regions:
            return ["empty: no key is ever read again"]
        return [r.describe() for r in self.regions]

    def to_dict(self) -> dict[str, Any]:
        return {
            "regions": [
                dict(
                    kind=r.kind,
                    describe=r.describe(),
                    k_lo=r.k_lo,
                    k_hi=r.k_hi,
                    stride=list(r.stride),
                    recent=r.recent,
                    chunk=r.chunk,
                    chunk_offset_max=r.chunk_offset_max,
                    until=r.until,
                )
                for r in self.regions
            ],
            "exact": self.exact,
            "notes": list(self.notes),
        }


@lru_cache(maxsize=1024)
def _union_size(regions: tuple[Region, ...]) -> Formula:
    from .formula import T, Formula

    if not regions:
        return Formula.const(T, 0, lo=0)
    if len(regions) == 1:
        return regions[0].size_formula()
    first, rest = regions[0], regions[1:]
    both = [x for x in (first.intersect(r) for r in rest) if x is not None]
    return first.size_formula() + _union_size(rest) - _union_size(tuple(_prune(both)))


def _prune(regions: list[Region]) -> list[Region]:
    """Drop duplicates and regions inside another one."""
    regions = sorted(set(regions), key=repr)
    return [
        r
        for i, r in enumerate(regions)
        if not any(j != i and r.within(o) and not (o.within(r) and j > i) for j, o in enumerate(regions))
    ]


def _layout(regions: list[Region], exact: bool, notes: tuple[str, ...]) -> CacheLayout:
    return CacheLayout(tuple(_prune(regions)), exact, notes)


# ---------------------------------------------------------------- from the pattern


def cache_layout(pattern: Pattern) -> CacheLayout:
    """The minimal lossless cache layout of a pattern (see the module docstring)."""
    return _cache_layout(pattern)


@lru_cache(maxsize=512)
def _cache_layout(pattern: Pattern) -> CacheLayout:
    regions, exact, notes = [], True, []
    for term in pattern.terms:
        r, ok, why = term_region(term)
        if r is not None:
            regions.append(r)
        if not ok:
            exact = False
            notes.append(f"{term}: {why}")
    return _layout(regions, exact, tuple(notes))


def term_region(term: Term) -> tuple[Region | None, bool, str]:
    """The keys one term keeps alive: (region or None when none ever is, exact, why not exact)."""
    term = reduce_term(term)
    neg = [lit.atom for lit in term.lits if lit.negated]
    c = term.conj
    lo, hi, qlo, qhi, klo, khi = c.d_lo, c.d_hi, c.q_lo, c.q_hi, c.k_lo, c.k_hi
    if c.empty:
        return None, True, ""
    dmod, kmod = c.dmod, c.kmod
    chunks = [a.size for a in c.chunks]
    powers = c.powers
    base = Region(k_lo=max(0, klo or 0), k_hi=khi, stride=kmod)
    why = []
    if c.grids:
        return base, False, "a neighbourhood: every key kept"
    if any(a.depends == "k" for a in neg):
        why.append("a negated key stride is ignored")
    if any(Conj.of([a]).grids for a in neg):
        why.append("a negated neighbourhood is ignored (its prefix and grid keys may never be read)")
    q_neg = [a for a in neg if a.depends != "k"]
    chunk = chunks[0] if chunks else None
    if len(chunks) > 1:
        why.append("only the first of several chunk atoms is used")
    bounded = hi is not None or qhi is not None or chunk is not None
    if dmod[0] > 1 and bounded:
        if qhi is None and chunk is None and not powers and not q_neg:
            r = dmod[1]
            hi = hi - ((hi - r) % dmod[0])
            if lo is not None:
                lo = lo + ((r - lo) % dmod[0])
                if lo > hi:
                    return None, True, ""
        else:
            why.append("(q - k) modulus beside a bounded query range is ignored")
    if (powers or q_neg) and (bounded or dmod[0] > 1 or (powers and q_neg) or len(powers) > 1):
        why.append("power / negated atoms beside other query constraints are ignored")
    region = replace(base, recent=hi, until=qhi, chunk=chunk)
    k_lo, k_hi = region.k_lo, region.k_hi
    if qhi is not None and lo is not None:
        k_hi = _min(k_hi, qhi - lo)
    if qlo is not None and hi is not None:
        k_lo = max(k_lo, qlo - hi)
    off = None
    if chunk is not None:
        if lo is not None and lo > 0:
            off = chunk - 1 - lo
            if off < 0:
                return None, True, ""
        if qlo is not None:
            k_lo = max(k_lo, chunk * (qlo // chunk))
        if qhi is not None:
            k_hi = _min(k_hi, chunk * (qhi // chunk) + chunk - 1)
    if hi is not None and hi < 1 or (k_hi is not None and k_hi < k_lo):
        return None, True, ""
    region = replace(region, k_lo=k_lo, k_hi=k_hi, chunk_offset_max=off)
    return region, not why, "; ".join(why)


def brute_live(pattern: Pattern, t: int, horizon: int) -> np.ndarray:
    """{k < t : exists q in [t, t + horizon) with (q, k) allowed}, by enumeration (for tests)."""
    q = np.arange(t, t + horizon, dtype=np.int64)[:, None]
    k = np.arange(t, dtype=np.int64)[None, :]
    return np.asarray(pattern.holds(q, k), dtype=bool).any(axis=0) if t else np.zeros(0, dtype=bool)
