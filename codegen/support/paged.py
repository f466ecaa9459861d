"""The paged KV cache of generated modules, and decode-time selection over its pages.

Every layer has one pool of fixed-size pages (`page` tokens each: k, v, positions, and per
page summaries for selection) shared by every sequence (batch row) and KV head. A page table
per (row, KV head) maps the head's logical pages (positions p // page) to pool pages, so a
head grows a page at a time, without copying, and rows of different lengths share the pool.
`PagePool` and the page tables are plain Python (the allocator's bookkeeping); the device
sees, per layer, `list` (B, H_KV, width): the pool pages each head holds, in position order.

Lossless heads follow their layout (cache.HeadRule): a page whose every position is dead
(older than a ring's window and past its sinks, or before a chunk's start) returns to the
pool; the kernel reads the rest and masks what the head does not hold (`sink`, `lo`) and
what the pattern forbids. Selecting heads (`select` in the cache block) keep every token;
each decode step scores their pages (or tokens) against the step's queries, keeps the best
(`block_scores.top_blocks`: ties to the lowest index) and reads them with the keep rules.

What varies per pattern is a `PagedSpec` (the CacheSpec, the page size, the selections, the
pattern's paged kernel `_pg_fwd_kernel` in paged.py.j2).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl

from .block_scores import block_mean, block_min_max, mean_score, quest_bound, top_blocks
from .cache import CACHE_DTYPES, CacheError, CacheSpec, _cache_device
from .checks import HEAD_DIMS, check_scale, check_tensor, dtype_names, interpreting
from .decode import _DEC_LOG2E, DecodeConfig, _dec_buffers, _dec_sms
from .policies import AGGREGATES, aggregate
from .records import Select


class PagedSpec(NamedTuple):
    """What a pattern's PagedCache needs from its generated module."""

    cache: CacheSpec
    page: int  # tokens per page
    select: tuple  # [layer][kv head] -> Select or None
    kernel: Callable  # the pattern's _pg_fwd_kernel


# ------------------------------------------------------------------ the allocator


class PagePool:
    """Page ids 0 .. capacity - 1 of one pool: which are free and who owns the others.
    `alloc` hands out the lowest free id; `free` takes a page back from its owner."""

    def __init__(self, capacity: int = 0):
        self.capacity = 0
        self._free: list[int] = []  # a stack, lowest id on top
        self.owner: dict[int, object] = {}
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        """Add ids up to `capacity` (the pool's tensors grew to hold them)."""
        if capacity > self.capacity:
            self._free = list(range(capacity - 1, self.capacity - 1, -1)) + self._free
            self.capacity = capacity

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def alloc(self, owner: object) -> int:
        if not self._free:
            raise CacheError(f"page pool full ({self.capacity} pages)")
        page = self._free.pop()
        self.owner[page] = owner
        return page

    def free(self, page: int, owner: object) -> None:
        if self.owner.get(page) != owner:
            raise CacheError(f"page {page} is not held by {owner!r} (held by {self.owner.get(page)!r})")
        del self.owner[page]
        self._free.append(page)
        if len(self._free) > 1 and self._free[-2] < page:
            self._free.sort(reverse=True)


# ------------------------------------------------------------------ the selection's scores


@triton.jit
def _pg_score_kernel(
    Q, SA, SB, LIST, NTOK, HI, OUT, T, NU, LW, NH, page,
    H_KV: tl.constexpr, G: tl.constexpr, HEAD_DIM: tl.constexpr, RP: tl.constexpr, USZ: tl.constexpr, MODE: tl.constexpr,
    AGG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_U: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Scores of the units (pages, or tokens) u of one selecting head against its G * T query
    rows, aggregated over the rows: OUT (B, NH, NU) float32, -inf past the row's units (its
    NTOK tokens in units of USZ).
    Unit u is row (LIST[u // RP] * RP + u % RP) of SA (and SB). MODE 0: Quest's bound
    (SA min, SB max); 1: q . (SA / tokens in the page) (the mean key); 2: q . SA (keys)."""
    pid = tl.program_id(0)
    b = (pid // NH).to(tl.int64)
    i = pid % NH
    h = tl.load(HI + i)
    u = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    nub = (tl.load(NTOK + b) + USZ - 1) // USZ
    ok_u = u < nub
    entry = tl.load(LIST + (b * H_KV + h) * LW + u // RP, mask=ok_u, other=0)
    row = entry.to(tl.int64) * RP + u % RP
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < G * T
    q = tl.load(
        Q + ((b * H_KV + h) * G * T + offs_m)[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0
    )
    a = tl.load(SA + row[:, None] * HEAD_DIM + offs_d[None, :], mask=ok_u[:, None], other=0.0)
    if UPCAST:  # the Triton 3.6 interpreter multiplies bf16 wrongly: compute in fp32 there
        q = q.to(tl.float32)
        a = a.to(tl.float32)
    if MODE == 0:
        hi = tl.load(SB + row[:, None] * HEAD_DIM + offs_d[None, :], mask=ok_u[:, None], other=0.0).to(a.dtype)
        s = tl.dot(tl.where(q > 0, q, 0.0).to(a.dtype), tl.trans(hi), input_precision=DOT_PREC)
        s = tl.dot(tl.where(q < 0, q, 0.0).to(a.dtype), tl.trans(a), s, input_precision=DOT_PREC)
    elif MODE == 1:
        cnt = tl.minimum(tl.load(SB + b) - u * page, page)  # SB: the row's tokens
        mean = a.to(tl.float32) / tl.maximum(cnt, 1).to(tl.float32)[:, None]
        s = tl.dot(q.to(tl.float32), tl.trans(mean), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(a), input_precision=DOT_PREC)
    if AGG == 1:
        out = tl.max(tl.where(row_ok[:, None], s, float("-inf")), 0)
    else:
        out = tl.sum(tl.where(row_ok[:, None], s, 0.0), 0)
        if AGG == 0:
            out = out / (G * T)
    out = tl.where(ok_u, out, float("-inf"))
    tl.store(OUT + (b * NH + i) * NU + u, out, mask=u < NU)


# ------------------------------------------------------------------ host state


def keep_units(n, s: Select, unit: int, T: int):
    """(B, W) logical units the keep rules always read, -1 padded (those holding positions
    < sink, and the newest max(recent, T): the step's own tokens), and (B, 1) bounds [lo, hi)
    of the units the selection chooses from, for rows holding n (B,) tokens. Device
    arithmetic only (no sync)."""
    n = n.to(torch.int64)[:, None]
    nu = (n + unit - 1) // unit
    ws = -(-s.sink // unit)
    r = max(s.recent, T)
    first = torch.arange(ws, device=n.device)[None, :]
    first = torch.where(first < nu, first, -1)
    start = ((n - r) // unit).clamp_min(0)
    last = start + torch.arange(-(-r // unit) + 1, device=n.device)[None, :]
    last = torch.where((last < nu) & (last >= ws), last, -1)
    return torch.cat([first.expand(n.shape[0], -1), last], 1), torch.full_like(start, ws), start


def unit_scores(qs, keys, s: Select, page: int):
    """The scores of one KV head's units from its keys (position order) in torch: the step's
    queries qs (G * T, D) against each page's Quest bound or mean key, or each key
    (`tokens`), combined over the queries by `aggregate` (block_scores)."""
    if s.score == "quest":
        sc = quest_bound(qs, *block_min_max(keys, page))
    elif s.score == "mean":
        sc = mean_score(qs, block_mean(keys, page))
    else:
        sc = mean_score(qs, keys)
    return aggregate(sc, s.aggregate, -2)


def best_units(scores, lo, hi, units: int):
    """The `units` best of scores (B, nh, NU) among the units in [lo, hi) (B, 1), -1 padded to
    `units`; equal scores go to the lowest unit (top_blocks)."""
    u = torch.arange(scores.shape[-1], device=scores.device)[None, :]
    chosen = top_blocks(scores.masked_fill(((u < lo) | (u >= hi))[:, None, :], float("-inf")), units)
    if chosen.shape[-1] < units:
        chosen = torch.cat([chosen, chosen.new_full((*chosen.shape[:-1], units - chosen.shape[-1]), -1)], -1)
    return chosen


class _PgLayer:
    """One layer: its pool, its page tables, its lengths, and their device copies."""

    def __init__(self, spec: PagedSpec, layer: int, batch: int):
        cs = spec.cache
        self.layer = layer
        self.rules = [cs.rules[r] for r in cs.table[layer]]
        self.select = spec.select[layer]
        self.tables = [[{} for _ in self.rules] for _ in range(batch)]  # logical -> pool page, in order
        self.n = [0] * batch
        self.pool = PagePool()
        self.k = self.v = self.pos = self.smin = self.smax = self.ssum = None
        self.list = self.llen = self.lo = self.ntok = None
        self.sinks = None
        self.chosen: dict = {}
        groups: dict = {}
        for h, s in enumerate(self.select):
            if s is not None:
                groups.setdefault(s, []).append(h)
        self.groups = [(s, tuple(hs)) for s, hs in groups.items()]

    def bounds(self, h: int, n: int) -> tuple[int, int]:
        """(sink, lo): the head holds positions < sink and >= lo (dead pages are freed)."""
        r = self.rules[h]
        if self.select[h] is None and r.kind == "ring" and not r.sres:
            return r.sink, n - r.ring
        if r.kind == "chunk":
            return 0, ((n - 1) // r.chunk) * r.chunk if n else 0
        return 0, 0


class PagedCacheBase:
    """The paged KV cache of a pattern file (a subclass sets `spec`).

    PagedCache(batch, device=..., dtype=..., pages=None, head_dim=None): `pages` fixes each
    layer's pool (appending past it is an error); without it pools double when full.
    append(layer, k, v, rows=None) stores T new tokens of the given rows (k, v: (R, H_KV, T,
    D)), each row at its own length; release(row) returns a row's pages; decode(layer, q)
    reads the held pages (selecting heads: the keep rules and the best pages)."""

    spec: PagedSpec = None

    def __init__(self, batch, *, device="cpu", dtype=torch.float16, pages=None, head_dim=None):
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise CacheError(f"PagedCache: batch must be a positive int, got {batch=}")
        if dtype not in CACHE_DTYPES[:3]:
            raise CacheError(f"PagedCache: dtype must be one of {dtype_names(CACHE_DTYPES[:3])}, got {dtype=}")
        if pages is not None and (not isinstance(pages, int) or isinstance(pages, bool) or pages < 1):
            raise CacheError(f"PagedCache: pages must be a positive int or None, got {pages=}")
        cs = self.spec.cache
        if any(r.kind == "lossy" for r in cs.rules):
            raise CacheError("PagedCache: this file's cache evicts by a policy; the packed Cache serves it")
        head_dim = cs.head_dim if head_dim is None else head_dim
        if head_dim not in HEAD_DIMS:
            raise CacheError(f"PagedCache: head_dim must be one of {HEAD_DIMS}, got {head_dim=}")
        self.batch, self.dtype, self.head_dim, self.pages = batch, dtype, head_dim, pages
        self.device = _cache_device(device, "triton")
        self.page = self.spec.page
        self._layers = [_PgLayer(self.spec, l, batch) for l in range(cs.layers)]

    # -------------------------------------------------------------- appending

    def append(self, layer, k, v, rows=None):
        """Store T new tokens (positions n_b .. n_b + T - 1) of each row b in `rows` (default:
        every row, in order); k, v: (len(rows), H_KV, T, D)."""
        L = self._layer(layer)
        rows = list(range(self.batch)) if rows is None else [int(r) for r in rows]
        if len(set(rows)) != len(rows) or not all(0 <= r < self.batch for r in rows):
            raise CacheError(f"append: rows must be distinct batch rows in 0..{self.batch - 1}, got {rows}")
        Hk, D, P = len(L.rules), self.head_dim, self.page
        for name, x in (("k", k), ("v", v)):
            check_tensor("append", name, x, dims="R, H_KV, T, D", shape=(len(rows), Hk, None, D), dtype=self.dtype,
                         device=self.device, error=CacheError)  # fmt: skip
        T = k.shape[2]
        if tuple(v.shape) != tuple(k.shape) or T < 1:
            raise CacheError(f"append: k {tuple(k.shape)} and v {tuple(v.shape)} must match, with T >= 1")
        if L.k is None:
            self._allocate(L, self.pages or max(4, 2 * len(rows) * Hk * -(-T // P)))
        span = max((L.n[b] + T - 1) // P - L.n[b] // P + 1 for b in rows)
        phys = [[[0] * span for _ in range(Hk)] for _ in rows]  # pool page of each new logical page
        new, appended = [], []
        for i, b in enumerate(rows):
            n0 = L.n[b]
            for h in range(Hk):
                tab, row = L.tables[b][h], phys[i][h]
                for j, lp in enumerate(range(n0 // P, (n0 + T - 1) // P + 1)):
                    if lp not in tab:
                        tab[lp] = self._alloc(L, (b, h))
                        new.append(tab[lp])
                        appended.append((b, h, len(tab) - 1, tab[lp]))
                    row[j] = tab[lp]
        phys = torch.tensor(phys, dtype=torch.int64)
        dev = self.device
        if new:
            pg = torch.tensor(new, dtype=torch.int64, device=dev)
            L.pos.view(-1, P)[pg] = self.spec.cache.decode.sentinel
            for s, fill in ((L.smin, float("inf")), (L.smax, float("-inf")), (L.ssum, 0.0)):
                if s is not None:
                    s[pg] = fill
        n0s = torch.tensor([L.n[b] for b in rows], dtype=torch.int64, device=dev)
        p = n0s[:, None] + torch.arange(T, device=dev)[None, :]  # (R, T)
        pages = torch.gather(phys.to(dev), 2, (p // P - n0s[:, None] // P)[:, None, :].expand(-1, Hk, -1))
        slots = (pages * P + (p % P)[:, None, :]).reshape(-1)
        L.k[slots] = k.reshape(-1, D)
        L.v[slots] = v.reshape(-1, D)
        L.pos[slots] = p[:, None, :].expand(-1, Hk, -1).reshape(-1).to(torch.int32)
        pages = pages.reshape(-1)
        if L.smin is not None:
            idx = pages[:, None].expand(-1, D)
            L.smin.scatter_reduce_(0, idx, k.reshape(-1, D), "amin")
            L.smax.scatter_reduce_(0, idx, k.reshape(-1, D), "amax")
        if L.ssum is not None:
            L.ssum.index_add_(0, pages, k.reshape(-1, D).float())
        for b in rows:
            L.n[b] += T
        self._update_lists(L, rows, appended)

    def release(self, row):
        """End the sequence of a batch row: its pages return to every layer's pool."""
        if not isinstance(row, int) or not 0 <= row < self.batch:
            raise CacheError(f"release: row must be an int in 0..{self.batch - 1}, got {row!r}")
        for L in self._layers:
            for h, tab in enumerate(L.tables[row]):
                for page in tab.values():
                    L.pool.free(page, (row, h))
                tab.clear()
            L.n[row] = 0
            if L.list is not None:
                self._update_lists(L, [row], [], rebuild=True)

    def _alloc(self, L, owner):
        if not L.pool.free_pages:
            if self.pages is not None:
                raise CacheError(
                    f"layer {L.layer}: the pool's {self.pages} pages are all held; create the PagedCache with "
                    "more pages, or release finished rows"
                )
            self._allocate(L, 2 * L.pool.capacity)
        return L.pool.alloc(owner)

    def _allocate(self, L, pages):
        """(Re)allocate the layer's pool with `pages` pages, keeping what it holds (page ids stay)."""
        P, D, dev, old = self.page, self.head_dim, self.device, L.pool.capacity
        sel = {s.score for s in L.select if s is not None}

        def grown(x, shape, dtype, fill):
            y = torch.full(shape, fill, dtype=dtype, device=dev)
            if x is not None:
                y[: x.shape[0]] = x
            return y

        L.k = grown(L.k, (pages * P, D), self.dtype, 0)
        L.v = grown(L.v, (pages * P, D), self.dtype, 0)
        L.pos = grown(L.pos, (pages * P,), torch.int32, self.spec.cache.decode.sentinel)
        if "quest" in sel:
            L.smin = grown(L.smin, (pages, D), self.dtype, 0)
            L.smax = grown(L.smax, (pages, D), self.dtype, 0)
        if "mean" in sel:
            L.ssum = grown(L.ssum, (pages, D), torch.float32, 0)
        L.pool.grow(pages)
        if old == 0:
            Hk = len(L.rules)
            L.heads_of = {tuple(hs): torch.tensor(hs, dtype=torch.int64, device=dev) for _, hs in L.groups}
            units = [1 if s is not None and s.score == "tokens" else P for s in L.select]
            L.units = torch.tensor(units, dtype=torch.int32, device=dev)
            L.sinks = torch.zeros(Hk, dtype=torch.int32, device=dev)
            L.list = torch.full((self.batch, Hk, 16), -1, dtype=torch.int32, device=dev)
            L.llen_host = [[0] * Hk for _ in range(self.batch)]

    def _update_lists(self, L, rows, appended, rebuild=False):
        """Free dead pages, then bring the device page lists, lengths and bounds up to date."""
        P, Hk, dev = self.page, len(L.rules), self.device
        changed = set()
        for b in rows:
            for h in range(Hk):
                sink, lo = L.bounds(h, L.n[b])
                tab = L.tables[b][h]
                dead = [lp for lp in tab if lp * P >= sink and (lp + 1) * P <= lo] if lo > 0 else []
                for lp in dead:
                    L.pool.free(tab.pop(lp), (b, h))
                if dead or rebuild:
                    changed.add((b, h))
                L.llen_host[b][h] = len(tab)
        width = max(max(r) for r in L.llen_host)
        if width > L.list.shape[2]:
            grown = torch.full((self.batch, Hk, max(width, 2 * L.list.shape[2])), -1, dtype=torch.int32, device=dev)
            grown[:, :, : L.list.shape[2]] = L.list
            L.list = grown
        fresh = [(b, h, i, pg) for b, h, i, pg in appended if (b, h) not in changed]
        if fresh:
            idx = torch.tensor(fresh, dtype=torch.int64).T
            L.list[idx[0], idx[1], idx[2]] = idx[3].to(torch.int32).to(dev)
        for b, h in sorted(changed):
            row = list(L.tables[b][h].values())
            L.list[b, h] = -1
            if row:
                L.list[b, h, : len(row)] = torch.tensor(row, dtype=torch.int32, device=dev)
        L.llen = torch.tensor(L.llen_host, dtype=torch.int32, device=dev)
        bounds = [[L.bounds(h, L.n[b]) for h in range(Hk)] for b in range(self.batch)]
        L.lo = torch.tensor([[lo for _, lo in r] for r in bounds], dtype=torch.int32, device=dev)
        L.sinks = torch.tensor([bounds[0][h][0] for h in range(Hk)], dtype=torch.int32, device=dev)
        L.ntok = torch.tensor(L.n, dtype=torch.int32, device=dev)

    # -------------------------------------------------------------- selection

    def _choose(self, L, q, s: Select, heads, reference=False):
        """The chosen logical units (B, len(heads), s.units) of one selection, -1 padded: the
        best scores among the units the keep rules do not read already."""
        unit = 1 if s.score == "tokens" else self.page
        static, lo, hi = keep_units(L.ntok, s, unit, q.shape[2])
        NU = max(-(-max(L.n) // unit), 1)
        scores = self._scores_ref(L, q, s, heads, NU) if reference else self._scores(L, q, s, heads, NU)
        return best_units(scores, lo, hi, s.units), static

    def _scores(self, L, q, s: Select, heads, NU):
        """The scores (B, nh, NU) of every unit of the selecting heads, by _pg_score_kernel."""
        B, H, T, D = q.shape
        G = H // len(L.rules)
        dev = self.device
        hi = L.heads_of[heads]
        out = torch.empty((B, len(heads), NU), dtype=torch.float32, device=dev)
        mode = {"quest": 0, "mean": 1, "tokens": 2}[s.score]
        sa, sb = {0: (L.smin, L.smax), 1: (L.ssum, L.ntok), 2: (L.k, L.k)}[mode]
        block_u = 64 if mode == 0 else 32
        _pg_score_kernel[(B * len(heads), triton.cdiv(NU, block_u))](
            q, sa, sb, L.list, L.ntok, hi, out, T, NU, L.list.shape[2], len(heads), self.page,
            H_KV=len(L.rules), G=G, HEAD_DIM=D, RP=self.page if mode == 2 else 1, USZ=1 if mode == 2 else self.page, MODE=mode,
            AGG=AGGREGATES[s.aggregate], BLOCK_M=max(16, triton.next_power_of_2(G * T)), BLOCK_U=block_u,
            DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32", UPCAST=q.dtype == torch.bfloat16 and interpreting(),
        )  # fmt: skip
        return out

    def _scores_ref(self, L, q, s: Select, heads, NU):
        """_scores in torch, from the keys themselves (block_scores), not the kept summaries."""
        B, H, T, D = q.shape
        G = H // len(L.rules)
        out = torch.full((B, len(heads), NU), float("-inf"), dtype=torch.float32, device=self.device)
        for b in range(B):
            for i, h in enumerate(heads):
                keys = self._keys(L, b, h)
                if not len(keys):
                    continue
                agg = unit_scores(q[b, h * G : (h + 1) * G].reshape(G * T, D), keys, s, self.page)
                out[b, i, : agg.shape[-1]] = agg
        return out

    def _keys(self, L, b, h):
        """The keys of one head of one row in position order (selecting heads hold them all)."""
        P = self.page
        n = L.n[b]
        pages = torch.tensor(list(L.tables[b][h].values()), dtype=torch.int64, device=self.device)
        slots = (pages[:, None] * P + torch.arange(P, device=self.device)).reshape(-1)[:n]
        return L.k[slots]

    def _lists(self, L, q, reference=False):
        """(list, lengths, units per head, most tokens read by a head) for the kernel: the held
        pages; for selecting heads, the keep rules' units and the chosen ones."""
        tokens = (
            max([n for row in L.llen_host for h, n in enumerate(row) if L.select[h] is None], default=0) * self.page
        )
        if not L.groups:
            return L.list, L.llen, L.units, tokens
        parts = []
        for s, heads in L.groups:
            chosen, static = self._choose(L, q, s, heads, reference)
            L.chosen.update({h: chosen[:, i] for i, h in enumerate(heads)})
            logical = torch.cat([static[:, None, :].expand(-1, len(heads), -1), chosen.to(torch.int64)], -1)
            hi = L.heads_of[heads]
            held = L.list.index_select(1, hi).to(torch.int64)
            if s.score == "tokens":
                page = torch.gather(held, 2, (logical.clamp_min(0) // self.page))
                phys = page * self.page + logical.clamp_min(0) % self.page
            else:
                phys = torch.gather(held, 2, logical.clamp_min(0))
            parts.append((hi, torch.where(logical >= 0, phys, -1).to(torch.int32)))
            tokens = max(tokens, logical.shape[-1] * (1 if s.score == "tokens" else self.page))
        width = max(L.list.shape[2], *(p.shape[-1] for _, p in parts))
        lst = torch.full((self.batch, len(L.rules), width), -1, dtype=torch.int32, device=self.device)
        lst[:, :, : L.list.shape[2]] = L.list
        llen = L.llen.clone()
        for hi, p in parts:
            lst.index_fill_(1, hi, -1)  # index_fill_: no host tensor, so a CUDA graph can capture it
            lst[:, hi, : p.shape[-1]] = p
            llen.index_fill_(1, hi, p.shape[-1])
        return lst, llen, L.units, tokens

    def selected(self, layer):
        """{kv head: (B, units) logical pages (tokens for `tokens`) the last decode chose, -1 padded}."""
        return dict(self._layer(layer).chosen)

    # -------------------------------------------------------------- decoding

    def decode(self, layer, q, *, sm_scale=None, config=DecodeConfig()):
        """Attention of the T newest tokens' queries q (B, H, T, D) of every row over the layer's
        pages (selecting heads: the keep rules' pages and the best ones); (B, H, T, D)."""
        L, T, D, scale = self._check_query(layer, q, "decode", sm_scale)
        q = q.contiguous()
        lst, llen, units, tokens = self._lists(L, q)
        ds = self.spec.cache.decode
        B = self.batch
        split = max(config.block_n, config.min_split)
        while split < tokens and B * ds.kv_heads * -(-tokens // split) > config.programs_per_sm * _dec_sms(q.device):
            split *= 2
        ns = max(1, -(-tokens // split))
        block_m = max(16, triton.next_power_of_2(ds.group * T))
        pm, pl, pacc, cnt = _dec_buffers(ds, q.device, B, ns, block_m, D)
        out = torch.empty_like(q)
        self.spec.kernel[(B * ds.kv_heads * ns,)](
            q, L.k, L.v, L.pos, lst, llen, units, L.sinks, L.lo, L.ntok, self._gid(L), out, pm, pl, pacc, cnt,
            T, split, ns, pm.shape[2], lst.shape[2], scale * _DEC_LOG2E, H_KV=ds.kv_heads, G=ds.group, HEAD_DIM=D,
            BLOCK_M=block_m, BLOCK_N=config.block_n, DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
            UPCAST=q.dtype == torch.bfloat16 and interpreting(), num_warps=config.num_warps,
        )  # fmt: skip
        return out

    def decode_reference(self, layer, q, *, sm_scale=None):
        """decode in torch, with the selection's torch reference (scores from the keys by
        block_scores): a masked softmax over each head's read tokens (float32)."""
        L, T, D, scale = self._check_query(layer, q, "decode_reference", sm_scale)
        lst, llen, units, _ = self._lists(L, q, reference=True)
        ds = self.spec.cache.decode
        G = ds.group
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        gid = self._gid(L).to(torch.int64)
        for b in range(self.batch):
            qp = torch.arange(L.n[b] - T, L.n[b], device=q.device, dtype=torch.int64)[:, None]
            for h in range(ds.kv_heads):
                u = int(units[h])
                e = lst[b, h, : int(llen[b, h])].to(torch.int64)
                e = e[e >= 0]
                slots = (e[:, None] * u + torch.arange(u, device=q.device)).reshape(-1)
                kp = L.pos[slots].to(torch.int64)[None, :]
                sink, lo = L.bounds(h, L.n[b])
                held = (kp != ds.sentinel) & ((kp < sink) | (kp >= lo))
                for g in range(G):
                    hq = h * G + g
                    sc = q[b, hq].float() @ L.k[slots].float().T * scale
                    ok = held & ds.allowed_torch(qp, kp, gid[hq])
                    p = torch.softmax(sc.masked_fill(~ok, float("-inf")), -1).nan_to_num(0.0)
                    out[b, hq] = p @ L.v[slots].float()
        return out.to(q.dtype)

    def _check_query(self, layer, q, where, sm_scale):
        L = self._layer(layer)
        ds = self.spec.cache.decode
        D = self.head_dim
        check_tensor(where, "q", q, dims="B, H, T, D", shape=(self.batch, ds.heads, None, D), dtype=self.dtype,
                     device=self.device, error=CacheError)  # fmt: skip
        T = q.shape[2]
        if not 1 <= T <= ds.max_step or T > min(L.n):
            raise CacheError(
                f"{where}: {T} query tokens; each row must hold them (fewest held: {min(L.n)}) and "
                f"T <= max_step = {ds.max_step}"
            )
        return L, T, D, check_scale(where, sm_scale, D, "sm_scale")

    def _gid(self, L):
        if not hasattr(L, "gid"):
            L.gid = torch.tensor(self.spec.cache.gid[L.layer], dtype=torch.int32, device=self.device)
        return L.gid

    # -------------------------------------------------------------- inspection

    def _layer(self, layer):
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < len(self._layers):
            raise CacheError(f"layer must be an int in 0..{len(self._layers) - 1}, got {layer!r}")
        return self._layers[layer]

    def seen(self, layer):
        """Tokens appended per row."""
        return list(self._layer(layer).n)

    def kept(self, layer, b, kv_head):
        """Sorted positions one KV head of one row holds (its pages, less what it masks)."""
        L = self._layer(layer)
        sink, lo = L.bounds(kv_head, L.n[b])
        out = []
        for page in L.tables[b][kv_head].values():
            p = L.pos[page * self.page : (page + 1) * self.page].tolist()
            out += [x for x in p if x != self.spec.cache.decode.sentinel and (x < sink or x >= lo)]
        return sorted(out)

    def pages_held(self, layer):
        """Pool pages held per [row][kv head]."""
        return [[len(t) for t in row] for row in self._layer(layer).tables]
