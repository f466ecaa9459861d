"""The IR of a pattern: a union of terms, each a conjunction of literals on (q, k).

Every later stage reads this normal form. A literal is an atom (a constraint on q - k, on k,
on q, modular, chunk, power-of-two block distance or grid neighbourhood), possibly negated.
Each atom knows three things about itself, so that one definition drives the reference, the
analyses and the kernel (STYLE.md, FlexAttention): `holds` evaluates it on index arrays,
`tile` classifies it exactly on a rectangle of (q, k), and its fields are what codegen
renders. The IR is immutable and hashable; `Program.digest()` keys compiled modules.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

INF = None  # an open end of a range


class Status(enum.IntEnum):
    """How a predicate covers a tile of (q, k) pairs."""

    NONE = 0  # no pair allowed: the tile is skipped
    SOME = 1  # some pairs allowed: the tile is visited with a mask
    ALL = 2  # every pair allowed: the tile is visited without a mask


def status_of(all_true: np.ndarray, any_true: np.ndarray) -> np.ndarray:
    """Status codes from two boolean arrays: ALL where all_true, NONE where not any_true."""
    return np.where(all_true, Status.ALL, np.where(any_true, Status.SOME, Status.NONE)).astype(np.int8)


def _range_status(lo_v: np.ndarray, hi_v: np.ndarray, lo: int | None, hi: int | None) -> np.ndarray:
    """Status of `lo <= x <= hi` when x takes every integer in [lo_v, hi_v]."""
    lo_b = -(2**62) if lo is None else lo
    hi_b = 2**62 if hi is None else hi
    all_true = (lo_v >= lo_b) & (hi_v <= hi_b)
    any_true = (hi_v >= lo_b) & (lo_v <= hi_b)
    return status_of(all_true, any_true)


def _mod_status(lo_v: np.ndarray, hi_v: np.ndarray, m: int, r: int) -> np.ndarray:
    """Status of `x mod m == r` when x takes every integer in [lo_v, hi_v]."""
    if m == 1:
        return np.full(np.broadcast(lo_v, hi_v).shape, Status.ALL, dtype=np.int8)
    first_hit = lo_v + (r - lo_v) % m  # the smallest x >= lo_v with x mod m == r
    any_true = first_hit <= hi_v
    all_true = (lo_v == hi_v) & any_true
    return status_of(all_true, any_true)


class Atom(Protocol):
    """What every atom provides: exact evaluation and exact tile classification."""

    def holds(self, q: Any, k: Any) -> Any: ...

    def tile(self, q0: np.ndarray, q1: np.ndarray, k0: np.ndarray, k1: np.ndarray) -> np.ndarray: ...


def _rng(x: Any, lo: int | None, hi: int | None) -> Any:
    if lo is None and hi is None:
        return x == x
    if lo is None:
        return x <= hi
    if hi is None:
        return x >= lo
    return (x >= lo) & (x <= hi)


@dataclass(frozen=True, order=True)
class Band:
    """lo <= q - k <= hi (an open end is None): causal, window, band."""

    lo: int | None
    hi: int | None

    def holds(self, q: Any, k: Any) -> Any:
        return _rng(q - k, self.lo, self.hi)

    def tile(self, q0, q1, k0, k1):
        return _range_status(q0 - k1, q1 - k0, self.lo, self.hi)

    def __str__(self) -> str:
        return f"{'' if self.lo is None else f'{self.lo} <= '}q-k{'' if self.hi is None else f' <= {self.hi}'}"


@dataclass(frozen=True, order=True)
class KRange:
    """lo <= k <= hi: sinks, global keys."""

    lo: int | None
    hi: int | None

    def holds(self, q: Any, k: Any) -> Any:
        return _rng(k + 0 * q, self.lo, self.hi)

    def tile(self, q0, q1, k0, k1):
        return _range_status(k0 + 0 * q0, k1 + 0 * q1, self.lo, self.hi)

    def __str__(self) -> str:
        return f"{'' if self.lo is None else f'{self.lo} <= '}k{'' if self.hi is None else f' <= {self.hi}'}"


@dataclass(frozen=True, order=True)
class QRange:
    """lo <= q <= hi: global queries."""

    lo: int | None
    hi: int | None

    def holds(self, q: Any, k: Any) -> Any:
        return _rng(q + 0 * k, self.lo, self.hi)

    def tile(self, q0, q1, k0, k1):
        return _range_status(q0 + 0 * k0, q1 + 0 * k1, self.lo, self.hi)

    def __str__(self) -> str:
        return f"{'' if self.lo is None else f'{self.lo} <= '}q{'' if self.hi is None else f' <= {self.hi}'}"


@dataclass(frozen=True, order=True)
class DiffMod:
    """(q - k) mod m == r: strided and dilated diagonals."""

    m: int
    r: int

    def holds(self, q: Any, k: Any) -> Any:
        return (q - k) % self.m == self.r

    def tile(self, q0, q1, k0, k1):
        return _mod_status(q0 - k1, q1 - k0, self.m, self.r)

    def __str__(self) -> str:
        return f"(q-k) mod {self.m} == {self.r}"


@dataclass(frozen=True, order=True)
class KMod:
    """k mod m == r: column stripes."""

    m: int
    r: int

    def holds(self, q: Any, k: Any) -> Any:
        return (k + 0 * q) % self.m == self.r

    def tile(self, q0, q1, k0, k1):
        return _mod_status(k0 + 0 * q0, k1 + 0 * q1, self.m, self.r)

    def __str__(self) -> str:
        return f"k mod {self.m} == {self.r}"


@dataclass(frozen=True, order=True)
class Chunk:
    """q div size == k div size: block-local attention."""

    size: int

    def holds(self, q: Any, k: Any) -> Any:
        return q // self.size == k // self.size

    def tile(self, q0, q1, k0, k1):
        c = self.size
        qa, qb, ka, kb = q0 // c, q1 // c, k0 // c, k1 // c
        all_true = (qa == qb) & (ka == kb) & (qa == ka)
        any_true = (qb >= ka) & (kb >= qa)
        return status_of(all_true, any_true)

    def __str__(self) -> str:
        return f"q div {self.size} == k div {self.size}"


def _is_power_distance(d: Any) -> Any:
    """d == 0 or d a positive power of two, elementwise on integer arrays."""
    return (d == 0) | ((d > 0) & ((d & (d - 1)) == 0))


@dataclass(frozen=True, order=True)
class Power:
    """Block distance (q div block) - (k div block) is 0 or a power of two: PowerAttention."""

    block: int

    def holds(self, q: Any, k: Any) -> Any:
        return _is_power_distance(q // self.block - k // self.block)

    def tile(self, q0, q1, k0, k1):
        b = self.block
        lo, hi = np.broadcast_arrays(np.asarray(q0 // b - k1 // b), np.asarray(q1 // b - k0 // b))
        hits = _power_hits(lo, hi)
        return status_of(hits == hi - lo + 1, hits > 0)

    def __str__(self) -> str:
        return f"(q div {self.block}) - (k div {self.block}) in {{0, 1, 2, 4, ...}}"


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Elementwise int.bit_length for non-negative int64 arrays."""
    out = np.zeros(x.shape, dtype=np.int64)
    v = x.copy()
    while (v > 0).any():
        out += v > 0
        v >>= 1
    return out


def _power_hits(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How many integers in [lo, hi] are 0 or a positive power of two, elementwise."""
    lo = lo.astype(np.int64)
    hi = hi.astype(np.int64)
    zero = (lo <= 0) & (hi >= 0)
    pos_lo = np.maximum(lo, 1)
    pos = np.where(hi >= pos_lo, _bit_length(np.maximum(hi, 0)) - _bit_length(pos_lo - 1), 0)
    return zero.astype(np.int64) + pos


@dataclass(frozen=True, order=True)
class Neighborhood:
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

    def __post_init__(self) -> None:
        if not self.stride:
            object.__setattr__(self, "stride", (1,) * len(self.dims))

    def holds(self, q: Any, k: Any) -> Any:
        in_text = (q < self.prefix) | (k < self.prefix)
        gq, gk = q - self.prefix, k - self.prefix
        inside = (gq >= 0) & (gk >= 0)
        ok = inside
        stride = 1
        coords = []
        for length in reversed(self.dims):
            coords.append(((gq // stride) % length, (gk // stride) % length, length))
            stride *= length
        ok = ok & (gq < stride) & (gk < stride)
        for (x, y, length), kk, dd, cc, ss in zip(reversed(coords), self.kernel, self.dilation, self.causal,
                                                   self.stride):
            ok = ok & axis_neighbour(x, y, length, kk, dd, cc, ss)
        return in_text | ok

    def tile(self, q0, q1, k0, k1):
        return _brute_tile(self, q0, q1, k0, k1)

    def __str__(self) -> str:
        strided = f", stride={self.stride}" if any(v != 1 for v in self.stride) else ""
        return (f"neighborhood(grid={self.dims}, kernel={self.kernel}, dilation={self.dilation}, "
                f"causal={self.causal}{strided})")


def axis_window(nb: Neighborhood, axis: int) -> tuple[int, int, bool, int]:
    """A neighbourhood's rule on one axis: (kernel, dilation, causal, stride), the arguments
    `axis_low`, `axis_high` and `axis_neighbour` take after the coordinates and the length."""
    return nb.kernel[axis], nb.dilation[axis], nb.causal[axis], nb.stride[axis]


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


def _brute_tile(atom: Any, q0, q1, k0, k1) -> np.ndarray:
    """Exact tile status by enumeration, for atoms without a closed form."""
    q0, q1, k0, k1 = np.broadcast_arrays(*(np.asarray(x) for x in (q0, q1, k0, k1)))
    out = np.empty(q0.shape, dtype=np.int8)
    for idx in np.ndindex(q0.shape):
        qs = np.arange(q0[idx], q1[idx] + 1)[:, None]
        ks = np.arange(k0[idx], k1[idx] + 1)[None, :]
        m = atom.holds(qs, ks)
        out[idx] = Status.ALL if m.all() else (Status.SOME if m.any() else Status.NONE)
    return out


ATOM_TYPES = (Band, KRange, QRange, DiffMod, KMod, Chunk, Power, Neighborhood)
AtomT = Band | KRange | QRange | DiffMod | KMod | Chunk | Power | Neighborhood


@dataclass(frozen=True, order=True)
class Lit:
    """An atom or its negation."""

    atom: AtomT
    negated: bool = False

    def holds(self, q: Any, k: Any) -> Any:
        v = self.atom.holds(q, k)
        return ~v if self.negated else v

    def tile(self, q0, q1, k0, k1) -> np.ndarray:
        s = self.atom.tile(q0, q1, k0, k1)
        return (2 - s).astype(np.int8) if self.negated else s

    def __str__(self) -> str:
        return f"not ({self.atom})" if self.negated else str(self.atom)


def _sort_key(x: Any) -> str:
    return repr(x)


@dataclass(frozen=True)
class Term:
    """A conjunction of literals; no literals means every pair."""

    lits: tuple[Lit, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lits", tuple(sorted(set(self.lits), key=_sort_key)))

    def holds(self, q: Any, k: Any) -> Any:
        out = (q + 0 * k) == (q + 0 * k)
        for lit in self.lits:
            out = out & lit.holds(q, k)
        return out

    def atoms_of(self, kind: type) -> list[Any]:
        return [lit.atom for lit in self.lits if not lit.negated and isinstance(lit.atom, kind)]

    def __str__(self) -> str:
        return " and ".join(str(lit) for lit in self.lits) if self.lits else "all"


@dataclass(frozen=True)
class Pattern:
    """A union of terms: the set of allowed (q, k) pairs. No terms means no pair."""

    terms: tuple[Term, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", tuple(sorted(set(self.terms), key=_sort_key)))

    def holds(self, q: Any, k: Any) -> Any:
        """Evaluate on broadcastable integer arrays (numpy or torch)."""
        out = (q + 0 * k) != (q + 0 * k)
        for term in self.terms:
            out = out | term.holds(q, k)
        return out

    def mask(self, n_q: int, n_k: int | None = None, q_offset: int = 0) -> np.ndarray:
        """The dense boolean mask for queries q_offset.. and keys 0..: for tests and pictures."""
        n_k = n_q + q_offset if n_k is None else n_k
        q = np.arange(q_offset, q_offset + n_q, dtype=np.int64)[:, None]
        k = np.arange(n_k, dtype=np.int64)[None, :]
        return np.asarray(self.holds(q, k), dtype=bool)

    @property
    def is_causal(self) -> bool:
        """True when every term forbids k > q (every allowed pair is causal)."""
        return all(any(b.lo is not None and b.lo >= 0 for b in t.atoms_of(Band)) for t in self.terms)

    def __str__(self) -> str:
        if not self.terms:
            return "nothing"
        return " | ".join(f"({t})" for t in self.terms)


@dataclass(frozen=True)
class ModelShape:
    layers: int = 1
    heads: int = 1
    kv_heads: int = 1
    head_dim: int | None = None


@dataclass(frozen=True)
class HeadGroup:
    """One pattern and the (layer, query head) pairs that use it."""

    pattern: Pattern
    members: frozenset[tuple[int, int]]


@dataclass(frozen=True)
class Program:
    """A compiled `.attn` file: the head groups of its pattern and its cache policies.

    `cache` holds the resolved cache policies (spec.resolved.CachePolicy) unchanged: they are
    already immutable records, and the cache stages read them directly.
    """

    name: str
    source: str
    model: ModelShape
    groups: tuple[HeadGroup, ...]
    cache: tuple[Any, ...] = ()
    grid: Any = None
    params: tuple[tuple[str, int], ...] = field(default=())

    def group_of(self, layer: int, head: int) -> int:
        for i, g in enumerate(self.groups):
            if (layer, head) in g.members:
                return i
        raise KeyError(f"no pattern for layer {layer}, head {head}")

    def group_table(self) -> list[list[int]]:
        """group index per [layer][query head]."""
        return [[self.group_of(l, h) for h in range(self.model.heads)] for l in range(self.model.layers)]

    @property
    def varies_by_layer(self) -> bool:
        table = self.group_table()
        return any(row != table[0] for row in table)

    def canonical(self) -> str:
        """A deterministic text of everything that changes generated code."""
        groups = [(str(g.pattern), repr(g.pattern), sorted(g.members)) for g in self.groups]
        cache = [c.model_dump(exclude={"loc"}) if hasattr(c, "model_dump") else repr(c) for c in self.cache]
        grid = self.grid.model_dump() if hasattr(self.grid, "model_dump") else repr(self.grid)
        return repr((self.name, self.model, groups, cache, grid))

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]
