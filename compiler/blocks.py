"""Block sparsity: which (BM x BN) tiles of the attention matrix are empty, partial or full.

Exact, and cheap at long N: every atom classifies a whole grid of tiles at once with
interval arithmetic (`Atom.tile`). A term is full on a tile exactly when all its literals
are, and empty when one of them is; the pattern is full when a term is, empty when all
terms are. What interval arithmetic cannot decide alone (a term with two partial literals
that might be jointly empty, or several partial terms whose union might cover the tile) is
settled cheaply where possible: the tile's corners and 60 fixed pseudo-random points are
probed, and one allowed plus one forbidden probe proves the tile partial. Only the rest are
enumerated pair by pair, which happens on few tiles at the edges of bands. Grid
neighbourhoods are classified from exact allowed-pair counts per tile (below: per-axis
boxes, summed over runs of queries); terms that differ only in their neighbourhoods are
grouped, (N1 and R) or (N2 and R) = (N1 or N2) and R, so a union of neighbourhoods is one
exact literal rather than several partial terms to probe.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .ir import Lit, Neighborhood, Pattern, Status, axis_high, axis_low, axis_window, status_of

_BRUTE_BATCH = 64


@dataclass(frozen=True)
class BlockMap:
    """Tile statuses of a pattern for n_q queries and n_k keys with tiles (bm, bn).

    `status[i, j]` is a Status for query block i (queries i*bm .. min((i+1)*bm, n_q) - 1)
    and key block j. Pairs outside the matrix do not count: a last, short tile is full
    when all of its real pairs are allowed.
    """

    n_q: int
    n_k: int
    bm: int
    bn: int
    status: np.ndarray

    def count(self, status: Status) -> int:
        return int((self.status == status).sum())

    @property
    def density(self) -> float:
        """Fraction of tiles that a kernel must visit."""
        return float((self.status != Status.NONE).mean()) if self.status.size else 0.0

    def ranges(self, qb: int) -> list[tuple[int, int]]:
        """The half-open key-block ranges that query block qb must visit, in order."""
        row = self.status[qb] != Status.NONE
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
        return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]

    def render(self, max_cols: int = 64) -> str:
        """A terminal picture: '#' full, '+' partial, '.' empty (rows are query blocks)."""
        glyph = np.array([".", "+", "#"])
        rows = self.status[:max_cols, :max_cols]
        return "\n".join("".join(glyph[r]) for r in rows)


def _tile_bounds(n: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    start = np.arange(0, n, b, dtype=np.int64)
    return start, np.minimum(start + b, n) - 1


_PROBES = 60
_RNG_SEED = 20240607


def block_map(pattern: Pattern, n_q: int, bm: int, bn: int, n_k: int | None = None) -> BlockMap:
    """Classify every tile exactly (see the module docstring)."""
    n_k = n_q if n_k is None else n_k
    q0, q1 = _tile_bounds(n_q, bm)
    k0, k1 = _tile_bounds(n_k, bn)
    shape = (len(q0), len(k0))
    groups = nb_groups(pattern.terms)
    if len(groups) == 1 and groups[0][0] is not None and not groups[0][1]:  # a union of neighbourhoods alone
        return BlockMap(n_q, n_k, bm, bn, box_union_tiles(groups[0][0], n_q, n_k, bm, bn).copy())
    any_all = np.zeros(shape, dtype=bool)
    live_terms = np.zeros(shape, dtype=np.int32)
    exact_some = np.zeros(shape, dtype=bool)
    for conjs, rest in groups:
        n_some = np.zeros(shape, dtype=np.int32)
        none = np.zeros(shape, dtype=bool)
        negs = tuple(l.atom for l in rest if l.negated and isinstance(l.atom, Neighborhood))
        nb_part = _nb_part_tiles(conjs, negs, n_q, n_k, bm, bn)
        if nb_part is not None:  # the neighbourhoods, negated ones included, as one exact literal
            statuses = [nb_part]
            rest = tuple(l for l in rest if not (l.negated and isinstance(l.atom, Neighborhood)))
        else:
            statuses = [] if conjs is None else [box_union_tiles(conjs, n_q, n_k, bm, bn)]
        statuses += [lit_tile(lit, n_q, n_k, bm, bn) for lit in rest]
        for s in statuses:
            s = np.broadcast_to(s, shape)
            none |= s == Status.NONE
            n_some += s == Status.SOME
        live = ~none
        any_all |= live & (n_some == 0)
        live_terms += live
        exact_some |= live & (n_some == 1)
    status = np.full(shape, Status.SOME, dtype=np.int8)
    status[live_terms == 0] = Status.NONE
    status[any_all] = Status.ALL
    ambiguous = ~any_all & (live_terms > 0) & ~((live_terms == 1) & exact_some)
    if ambiguous.any():
        ambiguous &= ~_probe_partial(pattern, ambiguous, q0, q1, k0, k1)
        _settle_by_enumeration(pattern, status, ambiguous, q0, q1, k0, k1, bm, bn)
    return BlockMap(n_q, n_k, bm, bn, status)


def _nb_part_tiles(conjs, negs: tuple[Neighborhood, ...], n_q: int, n_k: int, bm: int, bn: int) -> np.ndarray | None:
    """Exact statuses of (the union of conjs, or every pair when None) and none of negs, from
    counts: |U and not (M1 or M2 ...)| = |U| - |union of (C and Mi)| over U's conjunctions C."""
    if not negs:
        return None
    base = conjs if conjs is not None else ((),)
    cut = tuple(dict.fromkeys(c + (m,) for c in base for m in negs))
    if len(cut) > MAX_BOX_TERMS or len({(a.dims, a.prefix) for c in cut for a in c}) != 1:
        return None
    nqb, nkb = -(-n_q // bm), -(-n_k // bn)
    rows = np.minimum(np.arange(nqb) * bm + bm, n_q) - np.arange(nqb) * bm
    cols = np.minimum(np.arange(nkb) * bn + bn, n_k) - np.arange(nkb) * bn
    area = rows[:, None] * cols[None, :]
    whole = area if conjs is None else box_tile_counts(conjs, n_q, n_k, bm, bn)
    counts = whole - box_tile_counts(cut, n_q, n_k, bm, bn)
    return status_of(counts == area, counts > 0)


def nb_groups(terms) -> list[tuple[tuple | None, tuple[Lit, ...]]]:
    """The terms grouped by their literals other than positive neighbourhoods: (N1 and R) or
    (N2 and R) is (N1 or N2) and R, whose first factor is exact by boxes. A group is
    (conjunctions of neighbourhoods or None, the other literals)."""
    groups: dict[tuple[Lit, ...], list] = {}
    plain = []
    for term in terms:
        nbs = tuple(l.atom for l in term.lits if not l.negated and isinstance(l.atom, Neighborhood))
        rest = tuple(l for l in term.lits if l.negated or not isinstance(l.atom, Neighborhood))
        if nbs:
            groups.setdefault(rest, []).append(nbs)
        else:
            plain.append((None, term.lits))
    out = []
    for rest, conjs in groups.items():
        ok = len({(a.dims, a.prefix) for c in conjs for a in c}) == 1 and len(conjs) <= MAX_BOX_TERMS
        if ok:
            out.append((tuple(conjs), rest))
        else:
            out += [(None, tuple(Lit(a) for a in c) + rest) for c in conjs]
    return out + plain


_LIT_TILES: dict = {}  # (lit, n_q, n_k, bm, bn) -> lit_tile's statuses, at most _LIT_TILE_BYTES
_LIT_TILE_BYTES = 64 << 20


def lit_tile(lit: Lit, n_q: int, n_k: int, bm: int, bn: int) -> np.ndarray:
    """The status of one literal on every bm x bn tile of an n_q x n_k relation (an array that
    broadcasts to the tile grid). Memoised up to 64 MiB in all, so read-only: the head groups
    of one pattern often share literals (a causal mask, a window)."""
    key = (lit, n_q, n_k, bm, bn)
    s = _LIT_TILES.get(key)
    if s is None:
        s = _lit_statuses(lit, n_q, n_k, bm, bn)
        if sum(a.nbytes for a in _LIT_TILES.values()) + s.nbytes > _LIT_TILE_BYTES:
            _LIT_TILES.clear()
        _LIT_TILES[key] = s
    return s


def _lit_statuses(lit: Lit, n_q: int, n_k: int, bm: int, bn: int) -> np.ndarray:
    if isinstance(lit.atom, Neighborhood):
        s = box_union_tiles(((lit.atom,),), n_q, n_k, bm, bn)
        s = (2 - s).astype(np.int8) if lit.negated else s.copy()
    else:
        q0, q1 = _tile_bounds(n_q, bm)
        k0, k1 = _tile_bounds(n_k, bn)
        s = np.asarray(lit.tile(q0[:, None], q1[:, None], k0[None, :], k1[None, :]))
    s.flags.writeable = False
    return s


def _probe_partial(pattern: Pattern, ambiguous: np.ndarray, q0, q1, k0, k1) -> np.ndarray:
    """Ambiguous tiles where some probe is allowed and another forbidden: certainly partial. The
    corners and 4 probes go first, all probes only to the tiles left (the same tiles are found)."""
    out = np.zeros(ambiguous.shape, dtype=bool)
    rng = random.Random(_RNG_SEED)  # the standard library's: numpy.random costs 20 ms to import
    fq = np.array([[0.0, 0.0, 1.0, 1.0] + [rng.random() for _ in range(_PROBES)]])
    fk = np.array([[0.0, 1.0, 0.0, 1.0] + [rng.random() for _ in range(_PROBES)]])
    for probes in (8, fq.shape[1]):
        qi, kj = np.nonzero(ambiguous & ~out)
        for s in range(0, len(qi), 4096):
            i, j = qi[s : s + 4096], kj[s : s + 4096]
            rows = (q1[i] - q0[i])[:, None]
            cols = (k1[j] - k0[j])[:, None]
            q = q0[i][:, None] + np.rint(fq[:, :probes] * rows).astype(np.int64)
            k = k0[j][:, None] + np.rint(fk[:, :probes] * cols).astype(np.int64)
            allowed = np.asarray(pattern.holds(q, k), dtype=bool)
            out[i, j] = allowed.any(axis=1) & ~allowed.all(axis=1)
    return out


# ---------------------------------------------------------------- neighbourhoods as boxes
#
# On one axis the keys of query coordinate x under a neighbourhood are an arithmetic
# progression low, low + d, ..., high cut to [0, L) (ir.axis_low, ir.axis_high: with a
# stride the leader's window, ending at x on a causal axis), every member congruent to x
# modulo d. The keys of a conjunction of neighbourhoods over one grid are
# then, per axis, {y in [lo, hi] : y = x (mod lcm of the dilations)} with lo the largest first
# member and hi the smallest last: a box of progressions, one per axis. How many of query q's
# keys have a grid index below x (row-major) is a lexicographic count over x's digits:
#     F(q, x) = sum_a [x_b in S_b(q_b) for b < a] * |{y in S_a(q_a) : y < x_a}| * prod_{b > a} |S_b(q_b)|,
# a product of per-axis factors for each a. Summed over a box of queries (a run of
# consecutive row-major queries is a few boxes) it is a sum of products of per-axis sums,
# read from cumulative tables of L x L entries. A union of conjunctions is counted by
# inclusion-exclusion over its conjunctions' subsets (intersections are boxes again).

MAX_BOX_TERMS = 10  # unions of more conjunctions than this fall back to the general path
_CELLS = 1 << 18  # (query boxes x key bounds) evaluated at once: small enough to stay in the CPU caches


@lru_cache(maxsize=1024)
def _axis_sums(length: int, windows: tuple[tuple[int, int, bool, int], ...]):
    """Cumulative per-axis tables over query coordinates (a leading zero row) for the
    intersection of the windows (kernel, dilation, causal, stride): sizes |S(x)|, counts
    below v |{y in S(x): y < v}| for v in 0..L, and membership [v in S(x)] for v in 0..L-1."""
    x = np.arange(length, dtype=np.int64)
    lo, hi, step = _axis_bounds(length, windows)
    r = (x % step)[:, None]
    v = np.arange(length + 1, dtype=np.int64)[None, :]
    top = np.minimum(hi[:, None], v - 1)
    below = np.where(top >= lo[:, None], (top - r) // step - (lo[:, None] - 1 - r) // step, 0)
    vm = v[:, :length]
    member = (vm >= lo[:, None]) & (vm <= hi[:, None]) & ((vm - r) % step == 0)
    zero = lambda a: np.concatenate([np.zeros((1,) + a.shape[1:], dtype=np.int64), a.cumsum(axis=0)])
    out = zero(below[:, length]), zero(below), zero(member.astype(np.int64))
    for a in out:
        a.setflags(write=False)
    return out


def _box_windows(conj: tuple[Neighborhood, ...]) -> tuple[tuple[tuple[int, int, bool, int], ...], ...]:
    dims = conj[0].dims
    return tuple(tuple(sorted({axis_window(nb, a) for nb in conj})) for a in range(len(dims)))


def _inclusion_exclusion(conjs) -> dict[tuple, int]:
    """The boxes (per-axis windows) of every non-empty subset's intersection, with their signs
    summed (boxes that coincide merge)."""
    dims = conjs[0][0].dims
    coef: dict[tuple, int] = {}
    boxes = [_box_windows(c) for c in conjs]
    first: dict[tuple, tuple] = {}  # boxes of equal per-axis bounds count as one (their sums agree)
    for r in range(1, len(boxes) + 1):
        for subset in itertools.combinations(boxes, r):
            key = tuple(tuple(sorted(set().union(*(b[a] for b in subset)))) for a in range(len(dims)))
            key = first.setdefault(tuple(_bounds_key(n, w) for n, w in zip(dims, key)), key)
            coef[key] = coef.get(key, 0) + (1 if r % 2 else -1)
    return {k: c for k, c in coef.items() if c}


@lru_cache(maxsize=1024)
def _axis_bounds(length: int, windows: tuple[tuple[int, int, bool, int], ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """Per query coordinate of an axis, the first and last key of the intersection of the
    windows (kernel, dilation, causal, stride), and the step of its progression (read-only)."""
    x = np.arange(length, dtype=np.int64)
    lo, hi, step = np.zeros(length, dtype=np.int64), np.full(length, length - 1, dtype=np.int64), 1
    for kernel, dilation, causal, stride in windows:
        lo = np.maximum(lo, axis_low(x, length, kernel, dilation, causal, stride))
        hi = np.minimum(hi, axis_high(x, length, kernel, dilation, causal, stride))
        step = math.lcm(step, dilation)
    lo.setflags(write=False)
    hi.setflags(write=False)
    return lo, hi, step


@lru_cache(maxsize=1024)
def _bounds_key(length: int, windows: tuple[tuple[int, int, bool, int], ...]) -> tuple[bytes, bytes, int]:
    """What an axis's windows select, as a hashable key: equal keys give equal box sums."""
    lo, hi, step = _axis_bounds(length, windows)
    return lo.tobytes(), hi.tobytes(), step


def _range_boxes(a: int, e: int, dims: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The grid indices a..e-1 (row-major) as boxes [start, stop) per axis."""
    if a >= e:
        return []
    if len(dims) == 1:
        return [((a,), (e,))]
    inner = math.prod(dims[1:])
    a0, e0 = a // inner, e // inner
    if a0 == e0:
        return [((a0,) + s, (a0 + 1,) + t) for s, t in _range_boxes(a % inner, e % inner, dims[1:])]
    out = []
    if a % inner:
        out += [((a0,) + s, (a0 + 1,) + t) for s, t in _range_boxes(a % inner, inner, dims[1:])]
        a0 += 1
    if e0 > a0:
        out.append(((a0,) + (0,) * (len(dims) - 1), (e0,) + tuple(dims[1:])))
    if e % inner:
        out += [((e0,) + s, (e0 + 1,) + t) for s, t in _range_boxes(0, e % inner, dims[1:])]
    return out


def _box_sums(
    dims: tuple[int, ...], windows, starts: np.ndarray, stops: np.ndarray, xs: np.ndarray, dtype: type
) -> np.ndarray:
    """sum over the queries of each box of F(q, x), for every grid bound x in xs (0..grid size):
    (boxes, bounds). In Horner form from the last axis, F = T_0 + P_0 (T_1 + P_1 (T_2 + ...)),
    with T_a the axis's count below x's digit times the later axes' sizes and P_a its membership.
    Every value is at most the box's queries times the grid size: `dtype` must hold that."""
    g = math.prod(dims)
    inside = np.minimum(xs, g - 1)
    tables = [_axis_sums(length, w) for length, w in zip(dims, windows)]
    out, suffix, stride = None, np.ones(len(starts), dtype=np.int64), 1
    for a in reversed(range(len(dims))):
        length, (sizes, below, member) = dims[a], tables[a]
        digit = (inside // stride) % length
        s, t = starts[:, a], stops[:, a]
        # per box the small (box, digit value) table first, then one gather of the digits of xs
        term = ((below[t] - below[s]) * suffix[:, None]).astype(dtype)[:, digit]
        if out is not None:
            out *= (member[t] - member[s]).astype(dtype)[:, digit]
            out += term
        else:
            out = term
        suffix = suffix * (sizes[t] - sizes[s])
        stride *= length
    out[:, xs >= g] = suffix[:, None]
    return out


def _union_sums(conjs, starts, stops, xs) -> np.ndarray:
    """sum over the queries of each box of the union's F(q, x), by inclusion-exclusion; in
    int32 (half the memory traffic of int64) when no partial sum can reach 2^31."""
    dims = conjs[0][0].dims
    signs = _inclusion_exclusion(conjs)
    bound = int(np.prod(stops - starts, axis=1).max()) * math.prod(dims) * sum(abs(c) for c in signs.values())
    dtype = np.int32 if bound < 2**31 else np.int64
    out = np.zeros((len(starts), len(xs)), dtype=dtype)
    for i, (windows, c) in enumerate(signs.items()):
        sums = _box_sums(dims, windows, starts, stops, xs, dtype)
        if c != 1:
            sums *= c
        out = sums if i == 0 else out + sums
    return out


def box_pair_count(conjs, n: int) -> int:
    """Allowed pairs of a union of conjunctions of neighbourhoods over one grid (tuples of
    Neighborhood atoms, as nb_groups makes them) for n queries and n keys, exactly."""
    nb = conjs[0][0]
    p, g = nb.prefix, math.prod(nb.dims)
    n_text = min(p, n)
    total = n_text * n + (n - n_text) * n_text  # text rows see all keys; text columns seen by all
    g_n = max(0, min(n - p, g))
    boxes = _range_boxes(0, g_n, nb.dims)
    if not boxes:
        return total
    starts, stops = (np.array(b, dtype=np.int64) for b in zip(*boxes))
    return total + int(_union_sums(conjs, starts, stops, np.array([g_n], dtype=np.int64)).sum())


_RECENT_COUNTS: dict[tuple, np.ndarray] = {}  # the last few box_tile_counts, by their arguments


def box_tile_counts(conjs, n_q: int, n_k: int, bm: int, bn: int) -> np.ndarray:
    """Allowed pairs per (bm x bn) tile of a union of conjunctions of neighbourhoods, exactly:
    a read-only array (query blocks, key blocks). Counts add up, so those of tiles that a
    recent call's tiles divide are summed from it instead of counted again."""
    key = (conjs, n_q, n_k, bm, bn)
    if key not in _RECENT_COUNTS:
        finer = [(k, c) for k, c in _RECENT_COUNTS.items() if k[:3] == key[:3] and bm % k[3] == 0 and bn % k[4] == 0]
        if finer:
            (_, _, _, fm, fn), counts = finer[0]
            out = _sum_groups(_sum_groups(counts, bm // fm), bn // fn, axis=1)
            out.setflags(write=False)
        else:
            out = _count_box_tiles(conjs, n_q, n_k, bm, bn)
        if len(_RECENT_COUNTS) >= 4:
            del _RECENT_COUNTS[next(iter(_RECENT_COUNTS))]
        _RECENT_COUNTS[key] = out
    return _RECENT_COUNTS[key]


def _sum_groups(a: np.ndarray, size: int, axis: int = 0) -> np.ndarray:
    """Sums of consecutive groups of `size` entries along an axis (the last group may be short):
    `size` strided adds, much faster than np.add.reduceat over many short groups."""
    if size == 1:
        return a
    a = np.moveaxis(a, axis, 0)
    out = a[::size].copy()
    for k in range(1, size):
        part = a[k::size]
        out[: len(part)] += part
    return np.moveaxis(out, 0, axis)


def _count_box_tiles(conjs, n_q: int, n_k: int, bm: int, bn: int) -> np.ndarray:
    nb = conjs[0][0]
    nqb, nkb = -(-n_q // bm), -(-n_k // bn)
    rows = np.minimum(np.arange(nqb) * bm + bm, n_q) - np.arange(nqb) * bm
    cols = np.minimum(np.arange(nkb) * bn + bn, n_k) - np.arange(nkb) * bn
    p, g = nb.prefix, math.prod(nb.dims)
    # text rows read every key; every row reads the text keys
    text_rows = np.bincount(np.arange(min(p, n_q)) // bm, minlength=nqb).astype(np.int64)
    text_cols = np.bincount(np.arange(min(p, n_k)) // bn, minlength=nkb).astype(np.int64)
    counts = text_rows[:, None] * cols[None, :] + (rows - text_rows)[:, None] * text_cols[None, :]
    g_q, g_k = max(0, min(n_q - p, g)), max(0, min(n_k - p, g))
    if not g_q or not g_k:
        counts.setflags(write=False)
        return counts
    xs = np.clip(np.minimum(np.arange(nkb + 1, dtype=np.int64) * bn, n_k) - p, 0, g_k)
    first, last = p // bm, (p + g_q - 1) // bm  # query blocks holding grid rows
    per_chunk = max(1, _CELLS // (len(xs) * (2 * len(nb.dims) - 1)))
    for c0 in range(first, last + 1, per_chunk):
        blocks, rank, boxes = [], [], []  # per box: its query block, and its rank among the block's boxes
        for i in range(c0, min(c0 + per_chunk, last + 1)):
            bs = _range_boxes(max(i * bm - p, 0), min((i + 1) * bm - p, g_q), nb.dims)
            boxes += bs
            blocks += [i] * len(bs)
            rank += range(len(bs))
        if not boxes:
            continue
        starts, stops = (np.array(b, dtype=np.int64) for b in zip(*boxes))
        sums = np.diff(_union_sums(conjs, starts, stops, xs), axis=1)
        blocks, rank = np.array(blocks), np.array(rank)
        for r in range(int(rank.max()) + 1):  # a block appears once per rank: fancy += is safe
            sel = rank == r  # (faster than np.add.reduceat over the boxes, which strides badly)
            counts[blocks[sel]] += sums[sel]
    counts.setflags(write=False)
    return counts


@lru_cache(maxsize=8)
def box_union_tiles(conjs, n_q: int, n_k: int, bm: int, bn: int) -> np.ndarray:
    """Exact tile statuses of a union of conjunctions of neighbourhoods (read-only)."""
    counts = box_tile_counts(conjs, n_q, n_k, bm, bn)
    rows = np.minimum(np.arange(counts.shape[0]) * bm + bm, n_q) - np.arange(counts.shape[0]) * bm
    cols = np.minimum(np.arange(counts.shape[1]) * bn + bn, n_k) - np.arange(counts.shape[1]) * bn
    out = status_of(counts == rows[:, None] * cols[None, :], counts > 0)
    out.setflags(write=False)
    return out


def _settle_by_enumeration(
    pattern: Pattern,
    status: np.ndarray,
    ambiguous: np.ndarray,
    q0: np.ndarray,
    q1: np.ndarray,
    k0: np.ndarray,
    k1: np.ndarray,
    bm: int,
    bn: int,
) -> None:
    """Enumerate the pairs of the ambiguous tiles, in batches, and set their exact status."""
    qi, kj = np.nonzero(ambiguous)
    dq = np.arange(bm, dtype=np.int64)[None, :, None]
    dk = np.arange(bn, dtype=np.int64)[None, None, :]
    for s in range(0, len(qi), _BRUTE_BATCH):
        i, j = qi[s : s + _BRUTE_BATCH], kj[s : s + _BRUTE_BATCH]
        q = q0[i][:, None, None] + dq
        k = k0[j][:, None, None] + dk
        real = (q <= q1[i][:, None, None]) & (k <= k1[j][:, None, None])
        allowed = np.asarray(pattern.holds(q, k), dtype=bool) & real
        n_allowed = allowed.sum(axis=(1, 2))
        n_real = real.sum(axis=(1, 2))
        status[i, j] = np.where(n_allowed == n_real, Status.ALL, np.where(n_allowed > 0, Status.SOME, Status.NONE))


def brute_block_map(pattern: Pattern, n_q: int, bm: int, bn: int, n_k: int | None = None) -> BlockMap:
    """The same classification from the dense mask: the reference the tests compare with."""
    n_k = n_q if n_k is None else n_k
    mask = pattern.mask(n_q, n_k)
    nqb, nkb = -(-n_q // bm), -(-n_k // bn)
    status = np.zeros((nqb, nkb), dtype=np.int8)
    for i in range(nqb):
        for j in range(nkb):
            t = mask[i * bm : (i + 1) * bm, j * bn : (j + 1) * bn]
            status[i, j] = Status.ALL if t.all() else (Status.SOME if t.any() else Status.NONE)
    return BlockMap(n_q, n_k, bm, bn, status)
