"""The IR of a pattern: a union of terms, each a conjunction of literals on (q, k).

Every later stage reads this normal form. A literal is an atom (compiler/atoms.py: a
constraint on q - k, on k, on q, modular, chunk, power-of-two block distance or grid
neighbourhood), possibly negated. Each atom carries everything every stage asks of it (its
membership, tile classification, key bounds, rendering, normal form), so that one definition
drives the reference, the analyses and the kernel. The IR is immutable and hashable;
`Program.digest()` keys compiled modules.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .atoms import (
    ATOM_TYPES,
    Atom,
    AtomT,
    Band,
    Bounds,
    Chunk,
    Conj,
    Cond,
    DiffMod,
    Key,
    KMod,
    KRange,
    ModAtom,
    Neighborhood,
    PeriodicAtom,
    Power,
    QRange,
    RangeAtom,
    Select,
    axis_high,
    axis_low,
    axis_neighbour,
    axis_window,
)
from .status import Status, status_of  # noqa: F401

INF = None  # an open end of a range


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

    def render_parts(self, q: str = "q", k: str = "k") -> list[str]:
        """Texts whose conjunction is the literal (a negation is one text)."""
        parts = self.atom.render_parts(q, k)
        return [f"~({' & '.join(parts)})"] if self.negated else parts

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

    @functools.cached_property
    def conj(self) -> Conj:
        """The normal form of the term's positive literals (compiler/atoms.py's Conj), computed
        once per term (the plan and the analyses ask for it in their loops)."""
        return Conj.of(lit.atom for lit in self.lits if not lit.negated)

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

    @property
    def covers_causal(self) -> bool:
        """True when some term is causal alone (0 <= q - k): every causal pair is allowed."""
        return any(t.lits == (Lit(Band(0, None)),) for t in self.terms)

    @property
    def causal_band(self) -> tuple[int, int] | None:
        """(S, W) when the pattern is `causal & (sink(S) | window(W))` in one of its forms:
        k <= q and (k < S or q - k < W), S = 0 without sinks, W = 0 for no window (causal
        itself); None for any other pattern. The shape of StreamingLLM, Mistral's sliding
        window and plain causal, which the Hopper kernel serves (codegen/support/hopper.py)."""
        sink, windows = 0, []
        for t in self.terms:
            bands, keys = t.atoms_of(Band), t.atoms_of(KRange)
            if len(t.lits) == 1 and bands and bands[0].lo == 0:
                windows.append(0 if bands[0].hi is None else bands[0].hi + 1)
            elif (
                len(t.lits) == 2
                and bands == [Band(0, None)]
                and keys
                and keys[0].lo in (None, 0)
                and keys[0].hi is not None
                and not sink
            ):
                sink = keys[0].hi + 1
            else:
                return None
        return (sink, windows[0]) if len(windows) == 1 else None

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
class Selection:
    """The run-time part of a pattern: the pairs of `context` whose key block is among the
    blocks `atom` chooses for the query's block (docs/selection.md). A pattern
    `static | (C_1 & select) | (C_2 & select)` has context C_1 | C_2."""

    atom: Select
    context: Pattern

    def holds(self, q: Any, k: Any, chosen: Any) -> Any:
        """Membership given the choice: chosen[q div block, k div block] (a boolean array
        over query blocks and key blocks, numpy or torch) says which blocks were picked."""
        b = self.atom.block
        return self.context.holds(q, k) & chosen[q // b, k // b]

    def __str__(self) -> str:
        return f"({self.context}) and {self.atom}"


def split_selection(pattern: Pattern) -> tuple[Pattern, Selection | None]:
    """(static part, selection): the terms without a Select literal, and the others as one
    Selection whose context is their union less the Select literal (spec/exprs.py allows one
    selection per expression, never negated)."""
    static = tuple(t for t in pattern.terms if not t.atoms_of(Select))
    chosen = [t for t in pattern.terms if t.atoms_of(Select)]
    if not chosen:
        return pattern, None
    atom = chosen[0].atoms_of(Select)[0]
    context = Pattern(tuple(Term(tuple(l for l in t.lits if l.atom != atom)) for t in chosen))
    return Pattern(static), Selection(atom, context)


@dataclass(frozen=True)
class HeadGroup:
    """One pattern and the (layer, query head) pairs that use it. `pattern` is the static
    part; `selection` the part chosen at run time (None for a static pattern)."""

    pattern: Pattern
    members: frozenset[tuple[int, int]]
    selection: Selection | None = None

    @property
    def reach(self) -> Pattern:
        """Every pair the group may attend: the static part and the selection's context (what
        receptive fields and cache liveness must assume of a selecting head)."""
        if self.selection is None:
            return self.pattern
        return Pattern(self.pattern.terms + self.selection.context.terms)


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
        groups = [(str(g.pattern), repr(g.pattern), sorted(g.members), repr(g.selection)) for g in self.groups]
        cache = [c.model_dump(exclude={"loc"}) if hasattr(c, "model_dump") else repr(c) for c in self.cache]
        grid = self.grid.model_dump() if hasattr(self.grid, "model_dump") else repr(self.grid)
        return repr((self.name, self.model, groups, cache, grid))

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]
