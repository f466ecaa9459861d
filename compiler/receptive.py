"""Receptive field across layers: which input positions the last token (position N - 1) depends on.

The hidden state of token q after layer l depends on its own state after layer l - 1 (the
residual stream) and on the states of the keys k that layer l lets it attend to. So the
set of input positions behind token N - 1 after l layers is found backwards: start from
{N - 1}, add what layer l's pattern lets those positions read, then layer l - 1's, down to
layer 1. A layer's pattern is the union of its heads' patterns. Per-layer patterns make the
set after l layers a chain of its own for every l.

Sets are boolean vectors of length N and one layer's step is exact vector arithmetic per
term: the keys reachable from a set R through a term are R correlated with the term's
diagonal set D = {d : d-only atoms hold} (a sliding-window count when D is an arithmetic
progression, an FFT otherwise), chunk by chunk for chunked terms, block distance by block
distance for PowerAttention, axis by axis for a grid neighbourhood, and finally filtered by
the term's key-only atoms. Exotic terms (several coupled atoms, negated chunks) are
enumerated row by row, which is fine up to N of a few thousand.

Closed forms, where the pattern is one of the known shapes, are derived alongside and must
agree with the vectors: a stack of window(W) layers reaches (W - 1) * l back; sinks add
positions 0..S-1 from layer 1; causal & power(B) reaches every block distance with at most
l bits set after l layers (so 2^l blocks in l layers); a chunk never leaves its chunk.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from .algebra import simplify
from .count import reduce_term
from .atoms import Conj, PeriodicAtom
from .ir import Neighborhood, Pattern, Program, Term, axis_neighbour, axis_window
from ..spec.shape import span

MAX_ENUMERATED_N = 8192  # row-by-row enumeration of exotic terms only up to this N
MAX_EXTRA_LAYERS = 4096  # how far past the model's depth to look for full coverage (uniform stacks)
EXTRA_SECONDS = 0.4  # and for how long


class Unsupported(Exception):
    """The exact propagation of this term at this N would need enumeration of an N x N mask."""


# ---------------------------------------------------------------- one step


def reach(term: Term, src: np.ndarray) -> np.ndarray:
    """Keys k in [0, n) such that (q, k) satisfies the term for some q with src[q]."""
    plan = _plan(term, len(src))
    if plan.q_ok is not None:
        src = src & plan.q_ok
    if not src.any():
        return np.zeros(len(src), dtype=bool)
    out = plan.run(src)
    return out if plan.k_ok is None else out & plan.k_ok


@dataclass(frozen=True)
class _Plan:
    """How one term moves a set of query positions to key positions at length n."""

    term: Term
    n: int
    kind: str  # "diag", "periodic", "grid", "enumerate"
    dvec: np.ndarray
    q_ok: np.ndarray | None
    k_ok: np.ndarray | None
    coupled: Any = None
    ap: tuple[int, int, int] | None = None  # dvec as an arithmetic progression (d0, step, count)

    def run(self, src: np.ndarray) -> np.ndarray:
        if self.kind == "diag":
            return _correlate(src[None, :], self.dvec, self.n, self.ap)[0]
        if self.kind == "periodic":  # block distances of the chunk / power atom, one shift each
            out = np.zeros(len(src), dtype=bool)
            for delta in self.coupled.block_distances(self.n - 1):
                out |= _chunked(src, self.dvec, self.coupled.period, delta)
            return out
        if self.kind == "grid":
            return _neighborhood(self.coupled, src)
        return _enumerate(self.term, src)


@lru_cache(maxsize=256)
def _plan(term: Term, n: int) -> _Plan:
    term = reduce_term(term)
    q = np.arange(n, dtype=np.int64)
    q_ok = k_ok = None
    d_lits, coupled = [], []
    for lit in term.lits:
        if lit.atom.depends == "q":
            ok = np.asarray(lit.holds(q, 0), dtype=bool)
            q_ok = ok if q_ok is None else q_ok & ok
        elif lit.atom.depends == "k":
            ok = np.asarray(lit.holds(0, q), dtype=bool)
            k_ok = ok if k_ok is None else k_ok & ok
        elif lit.atom.depends == "d":
            d_lits.append(lit)
        else:
            coupled.append(lit)
    d = np.arange(-(n - 1), n, dtype=np.int64)
    dvec = np.ones(2 * n - 1, dtype=bool)
    for lit in d_lits:
        dvec &= np.asarray(lit.holds(d, 0), dtype=bool)
    one = coupled[0] if len(coupled) == 1 and not coupled[0].negated else None
    if not coupled:
        kind = "diag"
    elif one is not None and isinstance(one.atom, PeriodicAtom):
        kind = "periodic"
    elif one is not None and Conj.of([one.atom]).grids and not d_lits and q_ok is None and k_ok is None:
        kind = "grid"
    else:
        kind = "enumerate"
        if n > MAX_ENUMERATED_N:
            raise Unsupported(f"term {term} needs row enumeration; use N <= {MAX_ENUMERATED_N}")
    return _Plan(term, n, kind, dvec, q_ok, k_ok, None if one is None else one.atom, _ap(dvec, n))


def _ap(dvec: np.ndarray, n: int) -> tuple[int, int, int] | None:
    """(d0, step, count) when the true entries of dvec (index d + n - 1) are an arithmetic progression."""
    idx = np.flatnonzero(dvec)
    if len(idx) == 0:
        return (0, 1, 0)
    step = int(idx[1] - idx[0]) if len(idx) > 1 else 1
    if len(idx) == 1 or (np.diff(idx) == step).all():
        return int(idx[0]) - (n - 1), step, len(idx)
    return None


def _correlate(src: np.ndarray, dvec: np.ndarray, n: int, ap: tuple[int, int, int] | None | str = "?") -> np.ndarray:
    """out[r, k] = any_q src[r, q] and dvec[q - k + n - 1], for each row r (length n each)."""
    if ap == "?":
        ap = _ap(dvec, n)
    if ap is None:
        return _fft_correlate(src, dvec, n)
    if ap[2] == 0:
        return np.zeros(src.shape, dtype=bool)
    return _ap_window(src, *ap)


def _ap_window(src: np.ndarray, d0: int, m: int, count: int) -> np.ndarray:
    """out[r, k] = any(src[r, k + d0 + m*j] for j in range(count)), indices outside [0, n) false."""
    rows, n = src.shape
    out = np.zeros(src.shape, dtype=bool)
    for rho, ks, a, b in _ap_index(n, d0, m, count):
        sub = src[:, rho::m]
        cs = np.zeros((rows, sub.shape[1] + 1), dtype=np.int32)
        np.cumsum(sub, axis=1, out=cs[:, 1:])
        out[:, ks] = cs[:, b] > cs[:, a]
    return out


@lru_cache(maxsize=256)
def _ap_index(n: int, d0: int, m: int, count: int) -> tuple[tuple[int, np.ndarray, np.ndarray, np.ndarray], ...]:
    out = []
    for rho in range(min(m, n)):
        length = len(range(rho, n, m))
        ks = np.arange((rho - d0) % m, n, m)
        if len(ks) == 0:
            continue
        i0 = (ks + d0 - rho) // m
        out.append((rho, ks, np.clip(i0, 0, length), np.clip(i0 + count, 0, length)))
    return tuple(out)


def _fft_correlate(src: np.ndarray, dvec: np.ndarray, n: int) -> np.ndarray:
    size = 1 << (3 * n).bit_length()
    a = np.fft.rfft(src.astype(np.float64), size, axis=1)
    b = np.fft.rfft(dvec[::-1].astype(np.float64), size)
    conv = np.fft.irfft(a * b[None, :], size, axis=1)
    return conv[:, n - 1 : 2 * n - 1] > 0.5


def _chunked(src: np.ndarray, dvec: np.ndarray, size: int, delta: int) -> np.ndarray:
    """Keys in the block `delta` blocks before each source query's block, with q - k in D."""
    n = len(src)
    shift = delta * size
    if shift >= n:
        return np.zeros(n, dtype=bool)
    moved = np.zeros(n, dtype=bool)
    moved[: n - shift] = src[shift:]  # query q -> position q - shift, in the key's block
    blocks = -(-n // size)
    grid = np.zeros(blocks * size, dtype=bool)
    grid[:n] = moved
    grid = grid.reshape(blocks, size)
    center = n - 1 + shift  # d' = d - shift for |d'| < size
    lo, hi = center - (size - 1), center + size  # slice of dvec for d' in [-(size-1), size-1]
    local = np.zeros(2 * size - 1, dtype=bool)
    a, b = max(lo, 0), min(hi, len(dvec))
    if a < b:
        local[a - lo : b - lo] = dvec[a:b]
    out = _correlate(grid, local, size).reshape(-1)[:n]
    return out


def _neighborhood(nb: Neighborhood, src: np.ndarray) -> np.ndarray:
    n = len(src)
    p, g = nb.prefix, math.prod(nb.dims)
    out = np.zeros(n, dtype=bool)
    if src[: min(p, n)].any():
        return np.ones(n, dtype=bool)
    out[: min(p, n)] = True
    cells = np.zeros(g, dtype=bool)
    part = src[p : p + g]
    cells[: len(part)] = part
    state = cells.reshape(nb.dims)
    for axis, length in enumerate(nb.dims):
        moved = np.moveaxis(state, axis, -1)
        state = np.moveaxis(_axis_reach(moved, length, axis_window(nb, axis)), -1, axis)
    flat = state.reshape(-1)
    m = max(0, min(n - p, g))
    out[p : p + m] |= flat[:m]
    return out


def _axis_reach(state: np.ndarray, length: int, window: tuple[int, int, bool, int]) -> np.ndarray:
    """out[..., y] = any x with state[..., x] whose window on this axis holds y (on the last
    axis): a difference of cumulative counts over the queries that read y (`_axis_runs`),
    O(L) per line instead of a product with the L x L relation."""
    first, last, step = _axis_runs(length, window)
    cum = np.zeros(state.shape[:-1] + (length + step,), dtype=np.int32)  # cum[.., x + d]: set of x, x - d, ...
    for r in range(min(step, length)):
        np.cumsum(state[..., r::step], axis=-1, out=cum[..., r + step :: step])
    return cum[..., last + step] > cum[..., first]


def _axis_relation(length: int, window: tuple[int, int, bool, int]) -> np.ndarray:
    """rel[x, y]: query coordinate x's window on the axis holds key coordinate y."""
    x = np.arange(length)[:, None]
    return np.asarray(axis_neighbour(x, x.T, length, *window), dtype=bool)


@lru_cache(maxsize=256)
def _axis_runs(length: int, window: tuple[int, int, bool, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Per key coordinate y, the queries whose windows hold y: first, first + d, ..., last (d
    the dilation; last < first when there are none). They are such a progression because a
    window's ends never decrease with x in its dilation group; checked against the relation."""
    rel = _axis_relation(length, window)
    step = window[1]
    x = np.arange(length)[:, None]
    has = rel.any(axis=0)
    first = np.where(has, rel.argmax(axis=0), 0)
    last = np.where(has, length - 1 - rel[::-1].argmax(axis=0), -step)
    count = np.where(has, (last - first) // step + 1, 0)
    if (rel & ((x - x.T) % step != 0)).any() or (rel.sum(axis=0) != count).any():
        raise AssertionError(f"the queries reading a key are not a progression: axis {length}, window {window}")
    first.setflags(write=False)
    last.setflags(write=False)
    return first, last, step


def _enumerate(term: Term, src: np.ndarray) -> np.ndarray:
    n = len(src)
    if n > MAX_ENUMERATED_N:
        raise Unsupported(f"term {term} needs row enumeration; use N <= {MAX_ENUMERATED_N}")
    qs = np.flatnonzero(src)
    k = np.arange(n, dtype=np.int64)[None, :]
    out = np.zeros(n, dtype=bool)
    for s in range(0, len(qs), 256):
        q = qs[s : s + 256, None]
        out |= np.asarray(term.holds(q, k), dtype=bool).any(axis=0)
    return out


def step(pattern: Pattern, src: np.ndarray) -> np.ndarray:
    """One layer: the positions in src plus every key they may attend to (residual stream)."""
    out = src.copy()
    for term in pattern.terms:
        out |= reach(term, src)
    return out


# ---------------------------------------------------------------- over layers


@dataclass(frozen=True)
class LayerReach:
    layer: int  # after this many layers
    earliest: int  # the smallest position the last token depends on
    back: int  # N - 1 - earliest: how far back it sees
    covered: int  # how many positions it depends on
    unreachable: int  # N - covered
    gaps: tuple[tuple[int, int], ...]  # the first unreachable ranges [a, b)
    span: int = 0  # how far back the unbroken run of positions ending at N - 1 reaches

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "earliest": self.earliest,
            "back": self.back,
            "span": self.span,
            "covered": self.covered,
            "unreachable": self.unreachable,
            "gaps": [list(g) for g in self.gaps],
        }


@dataclass(frozen=True)
class ReceptiveField:
    n: int
    layers: int
    rows: tuple[LayerReach, ...]
    full_at: int | None  # layers needed to depend on every position; None: never
    full_note: str  # how full_at was found
    closed_form: str | None = None  # the formula the rows follow, when the pattern has a known shape
    uniform: bool = True
    requested_n: int | None = None  # set when N was lowered for enumeration
    unreachable_final: tuple[tuple[int, int], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "layers": self.layers,
            "rows": [r.to_dict() for r in self.rows],
            "full_at": self.full_at,
            "full_note": self.full_note,
            "closed_form": self.closed_form,
            "uniform": self.uniform,
            "requested_n": self.requested_n,
            "unreachable_final": [list(g) for g in self.unreachable_final],
        }


def _gaps(reached: np.ndarray, limit: int = 8) -> tuple[tuple[int, int], ...]:
    edges = np.flatnonzero(np.diff(np.concatenate(([1], reached.astype(np.int8), [1]))))
    pairs = list(zip(edges[::2], edges[1::2]))
    return tuple((int(a), int(b)) for a, b in pairs[:limit])


def _row(layer: int, reached: np.ndarray) -> LayerReach:
    n = len(reached)
    earliest = int(np.argmax(reached))
    covered = int(reached.sum())
    holes = np.flatnonzero(~reached)
    span = n - 1 if len(holes) == 0 else n - 2 - int(holes[-1])
    return LayerReach(layer, earliest, n - 1 - earliest, covered, n - covered, _gaps(reached), span)


def layer_patterns(program: Program, layers: int | None = None) -> list[Pattern]:
    """The union of the heads' patterns in each layer (a selecting head's reach: its static part
    and its selection's context); a uniform program is repeated `layers` times."""
    table = program.group_table()
    per_layer = [
        simplify(Pattern(tuple({t for g in set(row) for t in program.groups[g].reach.terms}))) for row in table
    ]
    if layers is None:
        return per_layer
    if all(p == per_layer[0] for p in per_layer):
        return [per_layer[0]] * layers
    if layers > len(per_layer):
        raise ValueError(
            f"the pattern differs by layer and the model has {len(per_layer)} layers; "
            f"got --layers {layers}: use at most {len(per_layer)}"
        )
    return per_layer[:layers]


def receptive_field(patterns: Sequence[Pattern], n: int) -> ReceptiveField:
    """The last token's receptive field after each of the layers (patterns[0] is layer 1)."""
    requested = None
    try:
        return _receptive(patterns, n)
    except Unsupported:
        requested, n = n, min(n, 4096)
    rf = _receptive(patterns, n)
    return ReceptiveField(**{**rf.__dict__, "requested_n": requested})


def _receptive(patterns: Sequence[Pattern], n: int, use_closed: bool = True) -> ReceptiveField:
    layers = len(patterns)
    uniform = all(p == patterns[0] for p in patterns)
    start = np.zeros(n, dtype=bool)
    start[n - 1] = True
    rows: list[LayerReach] = []
    full_at, note = None, ""
    closed = closed_form(patterns[0], n) if uniform and use_closed else None
    if uniform:
        reached, l, fixed = start, 0, False
        extra = 0 if closed is not None else MAX_EXTRA_LAYERS
        deadline = time.monotonic() + EXTRA_SECONDS
        while l < layers or (full_at is None and not fixed and l < layers + extra and time.monotonic() < deadline):
            nxt = reached if fixed else step(patterns[0], reached)
            l += 1
            if full_at is None and nxt.all():
                full_at = l
            fixed = fixed or bool((nxt == reached).all())
            if l <= layers:  # a fixed point repeats the last row
                rows.append(replace(rows[-1], layer=l) if fixed and rows else _row(l, nxt))
            reached = nxt
        if closed is not None:
            full_at = closed[2]
            note = "closed form" if full_at is not None else "never (closed form)"
        elif full_at is not None:
            note = "reached"
        elif fixed:
            note = "never: the reachable set stops growing"
        else:
            note = f"not within {l} layers"
        final = rows[-1] if rows else None
    else:
        for l in range(1, layers + 1):
            reached = start
            for p in reversed(patterns[:l]):
                reached = step(p, reached)
                if reached.all():
                    break
            rows.append(_row(l, reached))
            if full_at is None and reached.all():
                full_at = l
        note = "reached" if full_at is not None else f"never within the model's {layers} layers"
        final = rows[-1] if rows else None
    if closed is not None and any(closed[1](r.layer) != (r.earliest, r.covered) for r in rows):
        # a closed form that disagrees with the exact vectors is a bug: never show it
        rf = _receptive(patterns, n, use_closed=False)
        return ReceptiveField(
            **{
                **rf.__dict__,
                "full_note": rf.full_note + "; the closed form disagreed "
                "with the exact sets (a bug: please report the pattern)",
            }
        )
    return ReceptiveField(
        n,
        layers,
        tuple(rows),
        full_at,
        note,
        None if closed is None else closed[0],
        uniform,
        None,
        final.gaps if final else (),
    )


# ---------------------------------------------------------------- closed forms


def closed_form(pattern: Pattern, n: int):
    """(description, layer -> (earliest, covered), layers to full coverage or None) for the
    shapes with a known answer, else None."""
    terms = pattern.terms
    bands, sinks, powers, chunks = [], [], [], []
    for t in terms:
        c, size = t.conj, len(t.lits)
        if any(lit.negated for lit in t.lits):
            return None
        if size == 1 and c == Conj(d_lo=0, d_hi=c.d_hi):
            bands.append(c.d_hi)
        elif size == 2 and c == Conj(d_lo=0, k_lo=c.k_lo, k_hi=c.k_hi):
            if c.k_lo not in (None, 0) or c.k_hi is None:
                return None
            sinks.append(c.k_hi + 1)
        elif size == 2 and c == Conj(d_lo=0, powers=c.powers):
            powers.append(c.powers[0].block)
        elif size == 2 and c == Conj(d_lo=0, chunks=c.chunks):
            chunks.append(c.chunks[0].size)
        else:
            return None
    if not terms:
        return "nothing is attended: only the token itself", lambda l: (n - 1, 1), 1 if n == 1 else None
    if any(not t.lits for t in terms):
        return "full: every position from layer 1", lambda l: (0, n), 1
    if None in bands:
        return "causal: every earlier position from layer 1", lambda l: (0, n), 1
    if powers and not bands and not sinks and not chunks and len(powers) == 1:
        return _power_closed(powers[0], n)
    if chunks and len(terms) == 1:
        c = chunks[0]
        first = c * ((n - 1) // c)
        return (
            f"chunk({c}): only the last chunk, positions {span(first, n)}",
            lambda l: (first, n - first),
            1 if first == 0 else None,
        )
    if bands and len(bands) == len(terms) - len(sinks) and len(sinks) <= 1 and not powers and not chunks:
        h = max(bands)
        s = min(sinks[0], n) if sinks else 0

        def at(l: int) -> tuple[int, int]:
            lo = max(0, n - 1 - l * h)
            covered = (n - lo) + max(0, min(s, lo))
            return (0 if s and l >= 1 else lo), covered

        text = f"window: back(l) = min(N - 1, {h} * l)"
        if s:
            text += f"; sink: positions {span(0, s)} from layer 1"
        gap = n - 1 - s  # positions the window chain must cover
        full = 1 if gap <= 0 else (-(-gap // h) if h > 0 else None)
        return text, at, full
    return None


def _power_closed(b: int, n: int):
    nb = -(-n // b)
    last = n - (nb - 1) * b  # positions of the last (partial) block, all reached at layer 1

    def at(l: int) -> tuple[int, int]:
        deltas = [d for d in range(1, nb) if bin(d).count("1") <= l]
        earliest = (nb - 1 - max(deltas)) * b if deltas else (nb - 1) * b
        return earliest, last + b * len(deltas)

    full = max(1, nb.bit_length() - 1) if nb > 1 else 1
    return (
        (f"power({b}): block distances with at most l bits set after l layers (every distance < 2^l blocks)"),
        at,
        full,
    )


def graph_receptive_field(patterns: Sequence[Pattern], n: int) -> list[set[int]]:
    """The reference: networkx descendants of (L, N - 1) in the layered dependency graph, per l."""
    import networkx as nx

    out = []
    for l in range(1, len(patterns) + 1):
        g = nx.DiGraph()
        for layer in range(l, 0, -1):
            mask = patterns[layer - 1].mask(n)
            for q in range(n):
                g.add_edge((layer, q), (layer - 1, q))
                for k in np.flatnonzero(mask[q]):
                    g.add_edge((layer, q), (layer - 1, int(k)))
        reached = nx.descendants(g, (l, n - 1)) | {(l, n - 1)}
        out.append({pos for layer, pos in reached if layer == 0})
    return out
