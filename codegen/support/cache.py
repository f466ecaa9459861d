"""The KV cache manager of generated modules: one packed store per layer.

k, v (B, slots, D), pos (B, slots) and, where a policy scores tokens, score (B, slots). Every
KV head owns the slots [offset, offset + capacity); lens (B, H_KV) says how many of them the
decode kernel reads. Lossless heads follow their layout (the liveness of the pattern), lossy
heads their cache policy (policies.py); docs/caches.md has the exact rules. Appends are one
Triton launch per layer (lossless heads and the decode-step appends of lossy heads);
evictions are batched torch ops per policy class, except the one-token steps of H2O and
TOVA: one _kv_update_kernel launch per class folds the decode's logits (StepLogits) into the
scores, evicts and writes the token.

What varies per pattern is a `CacheSpec` (the rules of every (layer, KV head), the policies,
the decode of the pattern); a generated module declares `class Cache(CacheBase)` with its spec.
"""

from __future__ import annotations

import math  # noqa: F401  (the generated module, where this file is inlined, uses it)
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .checks import HEAD_DIMS, check_kernel_device, check_scale, check_tensor, dtype_names, verdict_key
from .decode import _DEC_DEFAULT, CacheView, DecodeSpec, StepLogits, _dec_sms, _kv_length, _kv_place
from .decode import decode_bound, decode_launch, decode_prepare, decode_run
from .launch import FastLaunch, cdiv, pow2_at_least, table, wait_previous
from .policies import AGGREGATES, NEEDS_QUERIES, attention_stats, evicts_after_read, lowest, priority, rescore
from .policies import survivors, victim
from .records import HeadRule, Policy

CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_KV_KIND = {"dense": 0, "ring": 1, "chunk": 2, "lossy": 3}
_KV_TAB_W = 8


class CacheError(ValueError):
    """Bad use of a generated cache: wrong shapes or dtypes, past a fixed capacity, ..."""


class CacheSpec(NamedTuple):
    """What a pattern's Cache needs from its generated module."""

    decode: DecodeSpec  # heads, KV heads, max_step, sentinel, the pattern's mask and kernel
    layers: int
    head_dim: int  # the model's
    rules: tuple  # HeadRule, each distinct rule once
    table: tuple  # [layer][kv head] -> index into rules
    policies: tuple  # Policy records
    gid: tuple  # [layer][query head] -> pattern group
    masked: tuple  # per layer: decode must evaluate the pattern at T == 1


# ------------------------------------------------------------------ the append kernel


@triton.jit(do_not_specialize=["SLOTS"])
def _kv_append_kernel(
    KN,
    VN,
    K,
    V,
    POS,
    LENS,
    NPOS,
    TAB,
    CNT,
    DONE,
    T,
    SLOTS,
    H_KV: tl.constexpr,
    CW: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
    SKIP_LOSSY: tl.constexpr,
    SPLIT_T: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """Write T new tokens (positions n .. n + T - 1, n = NPOS[b, h]: the row's tokens so far,
    kept on the device) of every KV head of one batch row into their slots, and the head's
    new length and NPOS. Negative positions are a left-padded row's padding: not stored.
    One program per (kv head, batch row, BLOCK_T tokens), so that a prompt's append spreads
    over the GPU. Every program reads n and the head's length before any writes them: with
    several token blocks (SPLIT_T), each counts itself in DONE[b, h] once it has read them,
    and the last one writes the new length and NPOS and resets the count (a CUDA graph
    replays it). KN, VN are contiguous (B, H_KV, T, D); K, V (B, SLOTS, D); POS (B, SLOTS)."""
    wait_previous(PDL)
    h = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    t0 = tl.program_id(2) * BLOCK_T
    n = tl.load(NPOS + b * H_KV + h)
    skb = SLOTS.to(tl.int64) * HEAD_DIM
    new_base = (b * H_KV + h) * T * HEAD_DIM
    base = tl.load(LENS + b * H_KV + h)
    if SKIP_LOSSY:
        write = tl.load(TAB + h * 8) != 3
    else:
        write = True
    offs_d = tl.arange(0, HEAD_DIM)
    t = t0 + tl.arange(0, BLOCK_T)
    valid = t < T
    slot64, keep = _kv_place(TAB, CNT, h, n, n + T, base, n + t, CW)
    keep = keep & valid & write
    src = new_base + t[:, None] * HEAD_DIM + offs_d[None, :]
    kn = tl.load(KN + src, mask=valid[:, None], other=0.0)
    vn = tl.load(VN + src, mask=valid[:, None], other=0.0)
    dst = b * skb + slot64[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(K + dst, kn, mask=keep[:, None])
    tl.store(V + dst, vn, mask=keep[:, None])
    tl.store(POS + b * SLOTS + slot64, n + t, mask=keep)
    last = True
    if SPLIT_T:  # the last program of (b, h) to have read n and the length writes them
        last = tl.atomic_add(DONE + b * H_KV + h, 1, sem="acq_rel") == tl.num_programs(2) - 1
        tl.store(DONE + b * H_KV + h, 0, mask=last)
    tl.store(LENS + b * H_KV + h, _kv_length(TAB, CNT, h, n, n + T, base, write, CW), mask=last)
    tl.store(NPOS + b * H_KV + h, n + T, mask=last)


_KV_UPD_BLOCK = 256  # keys per tile of the H2O / TOVA update: at least
_KV_UPD_TILE = 4096  # logits (BLOCK_G x BLOCK_N) of a larger tile: at most
_KV_UPD_PER_SM = 6  # its splits: about this many programs per SM (bench/proto/update_splits.py)
_KV_FUSED = ("h2o", "tova")  # the scores the update kernel folds from the decode's logits


@triton.jit
def _kv_slot(base, tab, offs, mask, PAGE: tl.constexpr):
    """Where held slots `offs` of one head lie (flat slot indices): base + offs in a packed
    region; with pages (PAGE > 0), slot j in pool page tab[j // PAGE], at j % PAGE."""
    if PAGE == 0:  # one branch each: a packed launch passes no LIST (None) to compile the other
        slot = base + offs
    else:
        slot = tl.load(tab + offs // PAGE, mask=mask, other=0).to(tl.int64) * PAGE + offs % PAGE
    return slot


@triton.jit(do_not_specialize=["E", "A", "CAP", "SLOTS", "LGS", "SO0", "SPLIT", "NS", "SINK", "RECENT", "BUDGET", "LW",
                               "H0"])  # fmt: skip
def _kv_update_kernel(KN, VN, K, V, POS, SCORE, HPOS, LENS, NPOS, LG, LSE, PB, CNT, IDX, LIST, PEND, NH, E, A, CAP, SLOTS,
                      LGS, SO0, SPLIT, NS, SINK, RECENT, BUDGET, LW, H0, H_KV: tl.constexpr, G: tl.constexpr,
                      HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_NS: tl.constexpr,
                      SENT: tl.constexpr, TOVA: tl.constexpr, AGG: tl.constexpr, FOLD: tl.constexpr, EVICT: tl.constexpr,
                      ADVANCE: tl.constexpr, PAGE: tl.constexpr, RUN: tl.constexpr, PDL: tl.constexpr = False):  # fmt: skip
    """The append of one token (at position n_q = NPOS[b, h], read on the device: a captured
    step stays right at every replay) to an H2O or TOVA class, after the decode of the
    previous step read its E held keys. One program per split of SPLIT held keys of one KV head
    of one batch row (program (b * NH + i) * NS + split; head i = IDX[i] owns slots A + i * CAP
    ..), in tiles of BLOCK_N keys (one tile where the launch can: SPLIT == BLOCK_N). FOLD: the
    previous step's attention, exp2(LG - LSE) (StepLogits, its rows from SO0 + i * CAP),
    aggregated over the G query heads, is added to (H2O) or replaces (TOVA) the scores. EVICT
    (E > budget): each split's lowest (priority, position), its index and slot go to PB (B *
    NH * NS, 4), and the last split of the head to finish (an atomic count, CNT) moves the
    previous step's token (slot E - 1) into the slot of the lowest of all and writes the new
    one at slot E - 1; otherwise split 0 writes it at slot E (RUN: head i is H0 + i, IDX
    unread). Protected: pos < SINK or pos >= n_q - RECENT (the previous step's keep rules).
    ADVANCE: NPOS becomes n_q + 1 (otherwise the append kernel of the layer's lossless heads,
    launched after, advances it). KN, VN contiguous (B, H_KV, 1, D). SCORE and HPOS (the held
    positions; packed, POS itself) lie at base + j. CacheBase._evict_step (torch) is the reference.
    PAGE > 0 (the paged cache): head h of row b holds LENS[b, h] slots (E: the most of any
    row, for the splits); their keys, values and positions (POS) lie in the pool pages LIST[b,
    h, :] (LW entries a row; _kv_slot), which only the move and the write address. The token's
    position is NPOS[b] (ADVANCE: the row's last head to be written, an atomic count at CNT[B *
    NH + b], advances it); it folds where PEND[b] != 0 and evicts where it folds past BUDGET
    (both in the masks: no load waits on them)."""
    wait_previous(PDL)
    pid = tl.program_id(0)
    bi = pid // NS
    sid = pid % NS
    b = (bi // NH).to(tl.int64)
    i = bi % NH
    if RUN:  # the class's heads are H0, H0 + 1, ..: no load before the page lists' and the logits'
        h = H0 + i
    else:
        h = tl.load(IDX + i).to(tl.int32)
    base = b * SLOTS + A + i * CAP
    tab = LIST
    ev = E > BUDGET  # packed: EVICT says it
    fold = True  # packed: FOLD says it
    if PAGE == 0:
        n_q = tl.load(NPOS + b * H_KV + h)
        hi = tl.minimum(sid * SPLIT + SPLIT, E)  # E: an argument
        lim = E
    else:
        tab = LIST + (b * H_KV + h) * LW
        E = tl.load(LENS + b * H_KV + h)
        n_q = tl.load(NPOS + b)
        fold = tl.load(PEND + b) != 0
        ev = fold & (E > BUDGET)
        hi = sid * SPLIT + SPLIT  # E and fold: loaded, in the masks
        lim = CAP  # the tiles' loads wait on no load: they read up to the head's capacity
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    g_ok = offs_g < G
    best_p = float("inf")
    best_pos = SENT + 1
    best_i = 0
    best_slot = base  # where best_i lies (a pool slot with pages)
    src = (b * H_KV + h) * HEAD_DIM + offs_d
    k_new, v_new = tl.load(KN + src), tl.load(VN + src)
    if FOLD:
        lse = tl.load(LSE + b * (H_KV * G) + h * G + offs_g, mask=g_ok, other=float("inf"))
        lg = LG + b * (G * LGS) + SO0 + i * CAP
        for j in range(sid * SPLIT, hi, BLOCK_N):
            offs = j + tl.arange(0, BLOCK_N)
            # every load of the tile first, so that they go out together (none waits on another);
            # what lies past the held slots is read and never used
            in_row = offs < lim
            s = tl.load(lg + offs_g[:, None] * LGS + offs[None, :], mask=g_ok[:, None] & in_row[None, :], other=0.0)
            new = tl.zeros([BLOCK_N], tl.float32)
            if not TOVA:
                new = tl.load(SCORE + base + offs, mask=in_row, other=0.0, eviction_policy="evict_last")
            if EVICT:
                kp = tl.load(HPOS + base + offs, mask=in_row, other=SENT, eviction_policy="evict_last")
                sl = _kv_slot(base, tab, offs, in_row & (offs < LW * PAGE), PAGE)
            valid = (offs < E) & fold
            s = tl.where(valid[None, :], s, -float("inf"))
            p = tl.math.exp2(s - lse[:, None])
            if AGG == 1:
                a = tl.max(tl.where(g_ok[:, None], p, float("-inf")), 0)
            else:
                a = tl.sum(p, 0)
                if AGG == 0:
                    a = a / G
            new += a  # TOVA: the attention replaces the score
            tl.store(SCORE + base + offs, new, mask=valid, eviction_policy="evict_last")  # (read every step)
            if EVICT:
                prio = tl.where((kp < SINK) | (kp >= n_q - RECENT) | ~valid, float("inf"), new)
                low = tl.min(prio, 0)
                lpos = tl.min(tl.where(valid & (prio == low), kp, SENT + 1), 0)
                better = (low < best_p) | ((low == best_p) & (lpos < best_pos))
                win = valid & (prio == low) & (kp == lpos)  # one key: positions are unique
                best_i = tl.where(better, tl.min(tl.where(win, offs, E), 0), best_i)
                best_slot = tl.where(better, tl.max(tl.where(win, sl, -1), 0), best_slot)
                best_p = tl.where(better, low, best_p)
                best_pos = tl.where(better, lpos, best_pos)
    write = sid == 0
    # the new token's slot: after the held ones, or the last one (an eviction moves the previous
    # step's token out of it); their pages are looked up while the splits meet
    slot = _kv_slot(base, tab, E, E < LW * PAGE, PAGE)
    if EVICT:
        moved = _kv_slot(base, tab, E - 1, ev, PAGE)
        tl.store(PB + pid * 4, best_p.to(tl.int32, bitcast=True))
        tl.store(PB + pid * 4 + 1, best_pos)
        tl.store(PB + pid * 4 + 2, best_i)
        tl.store(PB + pid * 4 + 3, best_slot.to(tl.int32))
        tl.debug_barrier()  # every thread's score stores come before the count
        done = tl.atomic_add(CNT + bi, 1, sem="acq_rel")
        write = done == NS - 1  # the last split: the lowest of all splits goes
        score_moved, pos_moved, dst = tl.full((), 0.0, tl.float32), tl.full((), 0, tl.int32), best_slot
        k_moved, v_moved = tl.zeros([HEAD_DIM], K.dtype.element_ty), tl.zeros([HEAD_DIM], K.dtype.element_ty)
        if write:  # every split's candidate in one load (positions are unique: one (low, pos) wins)
            k_moved = tl.load(K + moved * HEAD_DIM + offs_d, mask=ev)
            v_moved = tl.load(V + moved * HEAD_DIM + offs_d, mask=ev)
            pos_moved = tl.load(HPOS + base + E - 1, mask=ev)
            score_moved = tl.load(SCORE + base + E - 1, mask=ev, cache_modifier=".cg")  # folded by its split
            offs_t = tl.arange(0, BLOCK_NS)
            row = PB + (bi * NS + offs_t) * 4
            t_ok = offs_t < NS
            lows = tl.load(row, mask=t_ok, other=0x7F800000, cache_modifier=".cg").to(tl.float32, bitcast=True)
            lposs = tl.load(row + 1, mask=t_ok, other=SENT + 1, cache_modifier=".cg")
            idxs = tl.load(row + 2, mask=t_ok, other=0, cache_modifier=".cg")  # (not waiting on the others)
            slots = tl.load(row + 3, mask=t_ok, other=0, cache_modifier=".cg")
            best_p = tl.min(lows, 0)
            best_pos = tl.min(tl.where(lows == best_p, lposs, SENT + 1), 0)
            wins = t_ok & (lows == best_p) & (lposs == best_pos)
            best_i = tl.min(tl.where(wins, idxs, E), 0)
            dst = tl.max(tl.where(wins, slots, -1), 0).to(tl.int64)
            tl.store(CNT + bi, 0)
    if write:
        new_len = E + 1
        last_row = False
        if ADVANCE and PAGE > 0:  # the last head of the row to be written advances its position:
            # every split of every head has read n_q (the splits of a head count before its writer)
            last_row = tl.atomic_add(CNT + tl.num_programs(0) // NS + b, 1, sem="relaxed") == NH - 1
        if EVICT:  # the previous step's token moves into the victim's slot
            if ev:
                tl.store(K + dst * HEAD_DIM + offs_d, k_moved)
                tl.store(V + dst * HEAD_DIM + offs_d, v_moved)
                tl.store(HPOS + base + best_i, pos_moved)
                tl.store(SCORE + base + best_i, score_moved)
                if PAGE > 0:
                    tl.store(POS + dst, pos_moved)
                new_len = E
                slot = moved
        tl.store(K + slot * HEAD_DIM + offs_d, k_new)
        tl.store(V + slot * HEAD_DIM + offs_d, v_new)
        tl.store(HPOS + base + new_len - 1, n_q)
        tl.store(SCORE + base + new_len - 1, 0.0)
        if PAGE > 0:
            tl.store(POS + slot, n_q)
        tl.store(LENS + b * H_KV + h, new_len)
        if ADVANCE and PAGE == 0:
            tl.store(NPOS + b * H_KV + h, n_q + 1)
        if last_row:
            tl.store(NPOS + b, n_q + 1)
            tl.store(CNT + tl.num_programs(0) // NS + b, 0)


def _kv_update_geometry(E: int, B: int, nh: int, group: int, sms: int) -> tuple[int, int, int]:
    """(keys per split, splits, keys per tile) of _kv_update_kernel over E held keys of B x nh
    KV heads of `group` query heads on `sms` SMs: about _KV_UPD_PER_SM programs an SM, each one
    tile (a power of two, _KV_UPD_BLOCK up to _KV_UPD_TILE logits) where it fits. Plain ints."""
    per = max(1, _KV_UPD_PER_SM * sms // (B * nh))  # triton.cdiv is a jit function: slow from Python
    keys = -(-max(E, 1) // per)
    bn = min(max(_KV_UPD_BLOCK, pow2_at_least(keys)), max(_KV_UPD_BLOCK, _KV_UPD_TILE // pow2_at_least(group)))
    split = bn * -(-keys // bn)
    return split, max(1, -(-E // split)), bn


def _kv_update_launch(spec: CacheSpec, c, L, k, v, fold: bool, evict: bool, paged=None) -> None:
    """One launch of _kv_update_kernel for a class (_kv_update_geometry); the launch and its
    scratch buffers are memoised on the class per geometry. No argument changes from step to
    step once the budget is reached (CUDA graphs). `paged` (the paged cache): (held (B, H_KV),
    tokens (B,), page lists, pending rows (B,), page size, advance the tokens); c.held is then
    the most any row holds, and head i of the class has the rows c.logits_row + i * c.slots ..
    (c.slots of them) of the logits, of L.score and of L.hpos (B, rows): its held slots'
    scores and positions in slot order."""
    ds, pol, B, nh, E = spec.decode, c.policy, k.shape[0], len(c.heads), c.held
    geo = c.geo.get(E)
    if geo is None:
        geo = c.geo[E] = _kv_update_geometry(E, B, nh, ds.group, _dec_sms(k.device))
    split, ns, bn = geo
    if paged is None:
        lens, npos, lists, pend, page, advance = L.lens, L.npos, None, None, 0, not L.lossless
        a, cap, slots, hpos = c.heads[0].offset, c.heads[0].cap, L.k.shape[1], L.pos
    else:
        lens, npos, lists, pend, page, advance = paged
        a, cap, slots, hpos = c.logits_row, c.slots, L.score.shape[1], L.hpos
    key = (ns, bn, fold, evict, (k.data_ptr() | v.data_ptr()) & 15 == 0, slots, L.logits.lg.shape[2], advance)
    got = c.update.get(key)
    if got is None:
        h0 = c.kv_heads[0]
        run = c.kv_heads == tuple(range(h0, h0 + nh))
        kw = dict(H_KV=ds.kv_heads, G=ds.group, HEAD_DIM=k.shape[3], BLOCK_G=pow2_at_least(ds.group),
                  BLOCK_N=bn, BLOCK_NS=pow2_at_least(ns), SENT=ds.sentinel, TOVA=pol.score == "tova",
                  AGG=AGGREGATES[pol.aggregate], FOLD=fold, EVICT=evict, ADVANCE=advance, PAGE=page, RUN=run,
                  num_warps=4)  # fmt: skip
        pb = torch.empty((B * nh * ns, 4), dtype=torch.int32, device=k.device)
        cnt = torch.zeros((B * nh + (B if page else 0),), dtype=torch.int32, device=k.device)
        got = c.update[key] = (FastLaunch(_kv_update_kernel, (B * nh * ns,), kw), pb, cnt, h0)
    launch, pb, cnt, h0 = got
    sc = L.logits
    launch(k, v, L.k, L.v, L.pos, L.score, hpos, lens, npos, sc.lg, sc.lse, pb, cnt, c.idx, lists, pend, nh, E, a, cap,
           slots, sc.lg.shape[2], c.logits_row, split, ns, pol.sink, pol.protected_recent, c.budget,
           0 if lists is None else lists.shape[2], h0)  # fmt: skip


# ------------------------------------------------------------------ host state


class _KvHead:
    """Host state of one KV head of one layer: its rules, its region and its length."""

    def __init__(self, index: int, rule: HeadRule, policies: tuple):
        self.index, self.kind, self.sink, self.span, self.ring = index, rule.kind, rule.sink, rule.span, rule.ring
        self.smod, self.sres, self.chunk, self.rerotate = rule.smod, tuple(rule.sres), rule.chunk, rule.rerotate
        self.policy = policies[rule.policy] if rule.policy >= 0 else None
        self.cnt = [sum(1 for r in self.sres if r < x) for x in range(self.smod + 1)]
        self.offset = self.cap = self.extent = self.held = 0

    def stripes_before(self, x):
        return (x // self.smod) * len(self.sres) + self.cnt[x % self.smod]

    def after(self, n):
        """(slots to read, tokens held) of a lossless head after n tokens."""
        if self.kind == "dense":
            return n, n
        if self.kind == "chunk":
            e = (n - 1) % self.chunk + 1 if n else 0
            return e, e
        if n <= self.sink:
            return n, n
        if not self.sres:
            e = self.sink + min(n - self.sink, self.ring)
            return e, e
        st = self.stripes_before(n) - self.stripes_before(self.sink)
        # with stripes the ring may still hold keys older than the window: read, masked,
        # not counted (held counts the live keys: the liveness formula)
        lo = max(self.sink, n - self.span)
        held = self.sink + st + (n - lo) - (self.stripes_before(n) - self.stripes_before(lo))
        return self.sink + self.ring + st, held

    def need(self, n):
        """Slots a lossless head needs after n tokens."""
        if self.kind == "dense":
            return n
        if self.kind == "chunk":
            return self.chunk
        st = self.stripes_before(n) - self.stripes_before(self.sink) if n > self.sink else 0
        return self.sink + self.ring + st

    @property
    def grows(self):
        return self.kind == "dense" or (self.kind == "ring" and bool(self.sres))

    def place(self, p, end, base):
        """The slot of the token at position p when the append ends at `end` (None: the
        token is dead before the append returns). The plain-Python twin of the kernel."""
        if self.kind == "dense":
            return p
        if self.kind == "chunk":
            return p % self.chunk if p >= ((end - 1) // self.chunk) * self.chunk else None
        if p < self.sink:
            return p
        sb_s = self.stripes_before(self.sink)
        if self.sres and (p % self.smod) in self.sres:
            return self.sink + self.ring + self.stripes_before(p) - sb_s
        ridx = (p - self.sink) - (self.stripes_before(p) - sb_s)
        total = (end - self.sink) - (self.stripes_before(end) - sb_s)
        if self.ring == 0 or ridx < total - self.ring:
            return None
        return self.sink + ridx % self.ring


def _step_key(q, k, v, sm_scale) -> tuple | None:
    """What the checks and the plan of a fused decode step read of its arguments; last,
    whether its tensors are contiguous and 16-byte aligned (the steps the memo serves)."""
    if type(q) is not torch.Tensor or type(k) is not torch.Tensor or type(v) is not torch.Tensor:
        return None
    fast = q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    fast = fast and not (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15
    return (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, sm_scale, fast)


class _KvClass:
    """The lossy heads of one layer that share a policy and a budget: contiguous regions
    of equal capacity, so that their eviction is one batch of torch ops."""

    def __init__(self, heads, policy: Policy, kv_heads: tuple):
        self.heads = heads  # the packed cache's _KvHead records, the paged cache's KV head indices
        self.kv_heads = kv_heads  # their KV head indices
        self.policy = policy
        self.budget = policy.budget  # None: adaptive, not yet allocated
        self.held = 0
        self.idx = None  # device index tensor of the heads
        self.gid = None  # (nh, G) pattern groups of their query heads
        self.pending = None  # (q, n, T, scale) of a decode step whose eviction follows its read
        self.update = {}  # _kv_update_launch's launches and buffers per geometry
        self.geo = {}  # its splits per held count: E -> (keys per split, splits, keys per tile)
        self.logits_row = 0  # first row of its heads in the layer's StepLogits

    @property
    def grows(self):
        return self.policy.timing == "prefill" or self.budget is None


class _KvLayer:
    def __init__(self, spec: CacheSpec, layer: int, device):
        self.layer = layer
        self.heads = [_KvHead(i, spec.rules[r], spec.policies) for i, r in enumerate(spec.table[layer])]
        self.n = 0
        self.k = self.v = self.pos = self.score = None
        self.lens = self.offsets = self.tab = None
        self.npos = None  # (B, H_KV) int32 on the device: each row's tokens so far (negative: padding to come)
        self.done = None  # (B, H_KV) int32: the append kernel's count of its programs (zero between calls)
        self.pad = None  # (B, 1, 1) int64: a left-padded batch's padding per row (None: no padding)
        self.lossless = [h for h in self.heads if h.kind != "lossy"]
        self.growing = [h for h in self.lossless if h.grows]
        rules = {}
        for h in self.lossless:  # heads with the same rules share their host arithmetic
            rules.setdefault((h.kind, h.sink, h.ring, h.smod, h.sres, h.chunk), []).append(h)
        self.rules = [(hs[0], hs) for hs in rules.values()]
        self.slots = None  # host copy of (offset, len) per head, rebuilt after a change
        self.masked = False  # decode evaluates the pattern (set with slots)
        self.write_kw = {}  # the append kernel's launch per (T, ...)
        self.logits = None  # StepLogits: where decode leaves the attention the next update folds
        self.logits_ok = False  # its rows follow the regions (reset by a repack)
        self.fused = None  # one-token appends run in the update kernel (CacheBase._fusable)
        self.steps = {}  # fused decode steps: _step_key -> (slots, T, decode plan)
        classes = {}
        for h in self.heads:
            if h.kind == "lossy":
                classes.setdefault(h.policy, []).append(h)
        self.classes = [_KvClass(hs, p, tuple(h.index for h in hs)) for p, hs in classes.items()]
        self.order = self.lossless + [h for c in self.classes for h in c.heads]
        cw = max(h.smod for h in self.heads) + 1  # each head's stripe counts, zero-padded to one width
        cnt = [h.cnt + [0] * (cw - len(h.cnt)) for h in self.heads]
        self.cnt = table(cnt, torch.int32, device).view(len(self.heads), cw)
        self.gid = table(spec.gid[layer], torch.int32, device)
        gid_rows = table(spec.gid[layer], torch.int64, device).view(spec.decode.kv_heads, spec.decode.group)
        for c in self.classes:
            c.idx = table([h.index for h in c.heads], torch.int64, device)
            c.gid = gid_rows[c.idx]


def _cache_device(device, backend):
    """The cache's device, checked now (not at the first append)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CacheError(
            f"Cache: device must be a torch.device or a device name such as 'cpu' or 'cuda', got {device=}"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CacheError(
                f"Cache: device {dev} but CUDA is not available here; use device='cpu' "
                "(with TRITON_INTERPRET=1 for the Triton kernels, or backend='torch')"
            )
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    if backend == "triton":
        check_kernel_device(
            "Cache",
            dev,
            "backend='torch' keeps the cache with torch ops on any device (decode_reference reads it).",
            error=CacheError,
        )
    return dev


class CacheBase:
    """The KV cache of a pattern file: one packed store per layer (a subclass sets `spec`).

    Cache(batch, device=..., dtype=..., max_len=None): max_len fixes the capacity of heads
    that grow with the sequence (dense, stripes) and makes appending past it an error;
    without it they double when full. append(layer, k, v, q=None) stores new tokens
    (k, v: (B, H_KV, T, D); q: (B, H, T, D), needed by attention-scored policies); view(layer)
    is what decode reads; decode(layer, q) runs the generated kernel.
    """

    spec: CacheSpec = None

    def __init__(self, batch, *, device="cpu", dtype=torch.float16, max_len=None, head_dim=None, backend="triton"):
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise CacheError(f"Cache: batch must be a positive int, got {batch=}")
        if backend not in ("triton", "torch"):
            raise CacheError(f"Cache: backend is 'triton' or 'torch' (the reference), got {backend=}")
        if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1):
            raise CacheError(f"Cache: max_len must be a positive int or None, got {max_len=}")
        if dtype not in CACHE_DTYPES:
            raise CacheError(f"Cache: dtype must be one of {dtype_names(CACHE_DTYPES)}, got {dtype=}")
        head_dim = self.spec.head_dim if head_dim is None else head_dim
        if head_dim is None:
            raise CacheError(
                "Cache: the head size is unknown: pass head_dim=... here, write head_dim in the "
                "file's model block, or attnc.load(..., model={'head_dim': ...})"
            )
        if backend == "triton" and head_dim not in HEAD_DIMS:
            raise CacheError(f"Cache: head_dim must be one of {HEAD_DIMS} for the Triton kernels, got {head_dim=}")
        if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1:
            raise CacheError(f"Cache: head_dim must be a positive int, got {head_dim=}")
        self.batch = batch
        self.device = _cache_device(device, backend)
        self.dtype = dtype
        self.max_len = max_len
        self.head_dim = head_dim
        self.backend = backend
        self._layers = [_KvLayer(self.spec, l, self.device) for l in range(self.spec.layers)]
        self._checked = {}  # the verdicts of _check
        self._cake = {}  # (policy, layer) -> preference, for adaptive budgets
        self._cake_layers = {}
        for layer in self._layers:
            for c in layer.classes:
                if c.policy.adaptive_mean is not None:
                    self._cake_layers.setdefault(c.policy.index, []).append(layer.layer)
        if max_len is not None:  # fixed capacities: every store now, not inside the first forward pass
            for L in self._layers:
                if not any(c.grows for c in L.classes):
                    self._allocate(L, head_dim, 0, 1)

    # -------------------------------------------------------------- public

    def append(self, layer, k, v, q=None, *, sm_scale=None, lengths=None):
        """Store T new tokens of one layer (positions n .. n + T - 1) and apply its policies.

        `lengths` (B,) int tensor, at a layer's first append only: a left-padded batch, row b's
        tokens are its last lengths[b] (clamped to [0, T]); each row numbers its own tokens
        from 0, and the padding is not stored."""
        L = self._layer(layer)
        n, T, scale, big, fused = self._admit(L, k, v, q, sm_scale, lengths)
        if fused:
            self._update(L, k, v, q, n, scale)
        elif self.backend == "triton":
            self._write_triton(L, k, v, n, T, big)
        else:
            self._write_torch(L, k, v, n, T, big)
        for c in L.classes:
            if big:
                self._compress(L, c, k, v, q, n, T, scale)
            elif not fused:
                c.held += T
                self._step(L, c, k, q, n, T, scale)
            for h in c.heads:
                h.extent = h.held = c.held
        self._advance(L, n + T)

    def _admit(self, L, k, v, q, sm_scale, lengths):
        """(n, T, scale, prefill-sized) of an append of k, v to layer L, checked, with room
        made for it (the store allocated or grown); nothing is written yet."""
        T, D = self._check(L, k, v, q)
        scale = check_scale("append", sm_scale, D, "sm_scale")
        if lengths is not None:
            self._check_lengths(L, lengths, T)
        n = L.n
        end = n + T
        if self.max_len is not None and end > self.max_len:
            raise CacheError(
                f"layer {L.layer}: appending {T} tokens to {n} passes the fixed capacity "
                f"max_len = {self.max_len}; create the Cache with a larger max_len"
            )
        big = T > self.spec.decode.max_step
        for c in L.classes:
            if q is None and self._needs_q(c, big):
                raise CacheError(
                    f"layer {L.layer}: KV heads {[h.index for h in c.heads]} evict by "
                    f"{c.policy.score} at {c.policy.timing}, which needs this step's "
                    f"queries: call append(layer, k, v, q=q) with q of shape (B, H, T, D)"
                )
        if L.k is None:
            self._allocate(L, D, end, T)
        if lengths is not None:  # the layer's first append (_check_lengths)
            L.pad = (T - lengths.to(device=self.device, dtype=torch.int64).clamp(0, T)).view(-1, 1, 1)
            L.npos.copy_((-L.pad).view(-1, 1).expand_as(L.npos))
        fused = T == 1 and self._fusable(L)
        read = fused and L.logits is not None and L.logits.read == n  # the last step was decoded
        for c in L.classes:  # a pending step's eviction runs first (in torch ops, unless fused)
            if c.pending is not None and not read:
                self._finish(L, c)
        # fixed capacities hold max_len; a decode-timed budget's region holds budget + max_step
        if (L.growing and self.max_len is None) or (not big and any(c.grows for c in L.classes)):
            need = {h.index: h.need(end) for h in L.growing}
            if not big:
                for c in L.classes:
                    held = min(c.held, c.budget) if c.pending is not None else c.held
                    for h in c.heads:
                        need[h.index] = held + T
            self._grow(L, need)
        return n, T, scale, big, fused

    def _advance(self, L, end):
        """The host counts of layer L once its tokens up to `end` are written; the view's
        slots are rebuilt where they follow the extents and one changed."""
        moved = bool(L.classes)
        for rep, hs in L.rules:
            e, held = rep.after(end)
            moved = moved or e != rep.extent
            for h in hs:
                h.extent, h.held = e, held
        L.n = end
        if moved and self.max_len is None and L.pad is None:
            L.slots = None

    def view(self, layer):
        """What the decode kernel reads for this layer (a CacheView). With a fixed capacity
        (max_len) the view's slots are the regions' capacities, so that a decode step launches
        the same grid at every length (CUDA graphs); the kernel reads the lengths on the device."""
        L = self._layer(layer)
        if not L.n:
            raise CacheError(f"layer {layer} holds no tokens yet: append(layer, k, v) first")
        if L.slots is None:
            static = self.max_len is not None or L.pad is not None  # extents: those of the longest row
            L.slots = tuple((h.offset, h.cap if static else h.extent) for h in L.heads)
            # padded lossy heads hold empty slots (rows with fewer tokens than the budget): masked
            L.masked = self.spec.masked[L.layer] or (L.pad is not None and bool(L.classes))
        return CacheView(L.k, L.v, L.pos, L.lens, L.offsets, L.gid, L.n, L.slots, L.masked, L.npos, L.logits)

    def decode(self, layer, q, k=None, v=None, *, sm_scale=None, out=None, config=_DEC_DEFAULT, split=None):
        """decode(q, self.view(layer)): attention of the T newest tokens' queries.

        With k, v (B, H_KV, T, D), the step's own keys and values: append(layer, k, v, q) first.
        A layer without lossy heads (Triton backend) appends them inside the decode kernel,
        one launch for the whole step; lossy heads take append, then decode."""
        spec = self.spec.decode
        if k is None and v is None:
            return decode_launch(spec, q, self.view(layer), sm_scale=sm_scale, out=out, config=config, split=split)
        L = self._layer(layer)
        key = _step_key(q, k, v, sm_scale) if out is None and config is _DEC_DEFAULT and split is None else None
        got = L.steps.get(key)
        if got is not None and got[0] is L.slots and (L.n + got[1] <= self.max_len if self.max_len else not L.growing):
            slots, T, plan, bound = got  # a step like an earlier one, with room: its checks' verdict and plan hold
            n = L.n
            if bound is not None:  # the same view (a repack changes L.slots): straight to the launch
                out = torch.empty_like(q)
                if bound(q, out, k, v):
                    self._advance(L, n + T)
                    return out
            view = CacheView(L.k, L.v, L.pos, L.lens, L.offsets, L.gid, n + T, slots, L.masked, L.npos)
            out = decode_run(plan, q, view, None, (k, v, L.tab, L.cnt))
            self._advance(L, n + T)
            return out
        if L.classes or not L.n or self.backend != "triton" or not getattr(config, "fused_reduce", True):
            self.append(layer, k, v, q, sm_scale=sm_scale)
            return decode_launch(spec, q, self.view(layer), sm_scale=sm_scale, out=out, config=config, split=split)
        n, T, _, _, _ = self._admit(L, k, v, None, sm_scale, None)
        if type(q) is not torch.Tensor or q.dim() != 4 or q.shape[2] != T:
            raise CacheError(f"decode: q must be (B, H, T, D) with the T = {T} tokens of k and v; got "
                             f"{tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__}")  # fmt: skip
        new = (k.contiguous(), v.contiguous(), L.tab, L.cnt)
        view = self.view(L.layer)._replace(n=n + T)
        plan, q = decode_prepare(spec, q, view, sm_scale, out, config, split, new)
        out = decode_run(plan, q, view, out, new)
        if key is not None and key[-1]:  # contiguous and aligned: the next such step skips the checks
            L.steps[key] = (view.slots, T, plan, decode_bound(plan, q, view, new))
        self._advance(L, n + T)
        return out

    def seen(self, layer):
        """Tokens appended to this layer so far."""
        return self._layer(layer).n

    def tokens(self):
        """Tokens held per [layer][kv head]."""
        return [[h.held for h in L.heads] for L in self._layers]

    def memory(self):
        """Bytes of K and V held per [layer][kv head]: tokens held * 2 * D * itemsize (the
        liveness formula for lossless heads; slots, positions and scores not counted)."""
        item = torch.empty((), dtype=self.dtype).element_size()
        return [[h.held * 2 * (L.k.shape[2] if L.k is not None else 0) * item for h in L.heads] for L in self._layers]

    def allocated(self):
        """Bytes allocated per layer: k, v, positions, scores and lengths."""
        out = []
        for L in self._layers:
            t = [x for x in (L.k, L.v, L.pos, L.score, L.lens) if x is not None]
            out.append(sum(x.numel() * x.element_size() for x in t))
        return out

    def kept(self, layer, b, kv_head):
        """Sorted original positions held by one KV head of one batch row."""
        L = self._layer(layer)
        if not isinstance(b, int) or not 0 <= b < self.batch:
            raise CacheError(f"kept: batch row must be an int in 0..{self.batch - 1}, got {b!r}")
        if not isinstance(kv_head, int) or not 0 <= kv_head < len(L.heads):
            raise CacheError(f"kept: kv_head must be an int in 0..{len(L.heads) - 1}, got {kv_head!r}")
        h = L.heads[kv_head]
        if L.pos is None:
            return []
        p = L.pos[b, h.offset : h.offset + int(L.lens[b, kv_head])]
        return sorted(int(x) for x in p[p != self.spec.decode.sentinel].tolist())

    def positions(self, layer):
        """(B, slots) int64: the position RoPE must use for each slot's key; -1 where empty.

        Heads with positions = original: the token's original position (its key was stored
        already rotated). Heads with positions = rerotate: its rank among the keys the head
        holds, 0 .. held - 1 in order of original position (keys are stored un-rotated and
        rotated to these cache slots, StreamingLLM)."""
        L = self._layer(layer)
        if not L.n:
            raise CacheError(f"layer {layer} holds no tokens yet: append(layer, k, v) first")
        sent = self.spec.decode.sentinel
        pos = L.pos.to(torch.int64)
        out = torch.where(pos == sent, torch.full_like(pos, -1), pos)
        for h in L.heads:
            if h.rerotate and h.extent:
                r = pos[:, h.offset : h.offset + h.extent]
                valid = r != sent
                rank = torch.argsort(torch.argsort(torch.where(valid, r, torch.full_like(r, 1 << 40)), dim=-1), dim=-1)
                out[:, h.offset : h.offset + h.extent] = torch.where(valid, rank, torch.full_like(rank, -1))
        return out

    def query_positions(self, layer, T=1):
        """(B, H_KV, T) int64: the position RoPE must use for the T newest tokens' queries
        (the last T appended), per KV head: the original position, or with rerotate the
        number of held keys older than the query."""
        L = self._layer(layer)
        if not isinstance(T, int) or isinstance(T, bool) or not 1 <= T <= L.n:
            raise CacheError(f"query_positions: T must be an int in 1..{L.n} (the tokens appended), got {T!r}")
        sent = self.spec.decode.sentinel
        qp = L.npos[:, :1].to(torch.int64) - T + torch.arange(T, device=self.device)  # (B, T): each row's own
        out = qp[:, None, :].expand(self.batch, self.spec.decode.kv_heads, T).clone()
        for h in L.heads:
            if h.rerotate and h.extent:
                r = L.pos[:, h.offset : h.offset + h.extent].to(torch.int64)
                older = (r[:, None, :] < qp[:, :, None]) & (r[:, None, :] != sent)
                out[:, h.index] = older.sum(-1)
        return out

    # -------------------------------------------------------------- checks

    def _layer(self, layer):
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.spec.layers:
            raise CacheError(f"layer must be an int in 0..{self.spec.layers - 1}, got {layer!r}")
        return self._layers[layer]

    def _check(self, L, k, v, q):
        """(T, D) of a well-formed append; otherwise a CacheError that says what is wrong. The
        verdict is memoised on everything it reads (types, shapes, dtypes, devices, head_dim):
        a decode step repeats the same append."""
        D = L.k.shape[2] if L.k is not None else self.head_dim
        key = verdict_key(k, v, q)
        if key is not None:
            got = self._checked.get((key, D))
            if got is None:
                got = self._checked[key, D] = self._check_all(k, v, q, D)
            return got
        return self._check_all(k, v, q, D)

    def _check_all(self, k, v, q, D):
        ds = self.spec.decode
        common = dict(dtype=self.dtype, device=self.device, error=CacheError, owner="the cache is")
        for name, x in (("k", k), ("v", v)):
            check_tensor("append", name, x, dims="B, H_KV, T, D", **common)
        B, Hk, T, Dk = k.shape
        if tuple(v.shape) != tuple(k.shape):
            raise CacheError(f"append: k {tuple(k.shape)} and v {tuple(v.shape)} differ; both are (B, H_KV, T, D)")
        if B != self.batch or Hk != ds.kv_heads or T < 1:
            raise CacheError(
                f"append: k has shape {tuple(k.shape)}, expected (B={self.batch}, H_KV={ds.kv_heads}, T>=1, D)"
            )
        if Dk != D:
            raise CacheError(f"append: head_dim {Dk} but this cache holds head_dim {D}")
        if q is not None:
            check_tensor("append", "q", q, dims="B, H, T, D", shape=(B, ds.heads, T, D), **common)
        return T, D

    def _check_lengths(self, L, lengths, T):
        """`lengths` of a left-padded batch: (B,) ints on the cache's device, at the layer's first
        append, which must be a prefill (more than max_step tokens), with the Triton backend."""
        check_tensor(
            "append",
            "lengths",
            lengths,
            dims="B",
            shape=(self.batch,),
            dtypes=(torch.int32, torch.int64),
            device=self.device,
            error=CacheError,
        )
        if L.n:
            raise CacheError(f"append: lengths= is for a layer's first append; layer {L.layer} holds {L.n} tokens")
        if T <= self.spec.decode.max_step or self.backend != "triton":
            raise CacheError(
                f"append: a padded batch (lengths=) starts with a prefill of more than "
                f"{self.spec.decode.max_step} tokens, with backend='triton'; got T={T}, backend={self.backend!r}"
            )

    def _needs_q(self, c, big):
        s = c.policy.score
        if c.policy.adaptive_mean is not None and big:
            return True
        if s not in NEEDS_QUERIES:
            return False
        return big or c.policy.timing == "decode"

    # -------------------------------------------------------------- storage

    def _cap_for(self, L, h, need, old):
        """Capacity of a region that must hold `need` slots (growth by doubling)."""
        fixed = self.max_len is not None
        max_step = self.spec.decode.max_step
        if h.kind == "lossy":
            c = next(c for c in L.classes if h in c.heads)
            if not c.grows:
                return c.budget + max_step
            base = (c.budget if c.budget is not None else c.policy.adaptive_mean) + max_step
            return max(need, base, 2 * old if need > old else old)
        if not h.grows:
            return h.need(0)
        if fixed:
            return h.need(self.max_len)
        return need if need <= old else max(need, 2 * old, 64 if h.kind == "dense" else need)

    def _allocate(self, L, D, n_end, T):
        caps = {}
        for h in L.heads:
            need = h.need(n_end) if h.kind != "lossy" else T
            caps[h.index] = self._cap_for(L, h, need, 0)
        self._pack(L, D, caps)
        L.lens = torch.zeros((self.batch, len(L.heads)), dtype=torch.int32, device=self.device)
        L.npos = torch.zeros_like(L.lens)
        L.done = torch.zeros_like(L.lens)  # the append kernel's per-head count of programs

    def _grow(self, L, need):
        if all(need[i] <= L.heads[i].cap for i in need):
            return
        caps = {
            h.index: (self._cap_for(L, h, need[h.index], h.cap) if need.get(h.index, 0) > h.cap else h.cap)
            for h in L.heads
        }
        for c in L.classes:  # a class keeps equal capacities (one strided view)
            m = max(caps[h.index] for h in c.heads)
            for h in c.heads:
                caps[h.index] = m
        self._pack(L, L.k.shape[2], caps)

    def _pack(self, L, D, caps):
        """(Re)allocate the layer's store with these capacities, keeping what it holds."""
        total = sum(caps.values())
        B, dev = self.batch, self.device
        k = torch.zeros((B, total, D), dtype=self.dtype, device=dev)
        v = torch.zeros_like(k)
        pos = torch.full((B, total), self.spec.decode.sentinel, dtype=torch.int32, device=dev)
        sdt = torch.float64 if self.dtype == torch.float64 else torch.float32
        score = torch.zeros((B, total), dtype=sdt, device=dev) if L.classes else None
        off = 0
        for h in L.order:
            cap = caps[h.index]
            if L.k is not None and h.cap:
                m = min(h.cap, cap)
                for new, old in ((k, L.k), (v, L.v), (pos, L.pos), (score, L.score)):
                    if new is not None:
                        new[:, off : off + m] = old[:, h.offset : h.offset + m]
            h.offset, h.cap = off, cap
            off += cap
        L.k, L.v, L.pos, L.score = k, v, pos, score
        L.slots = None
        L.logits_ok = False
        L.offsets = table([h.offset for h in L.heads], torch.int32, dev)
        tab = [[_KV_KIND[h.kind], h.offset, h.sink, h.ring, h.smod, len(h.sres), max(h.chunk, 1), 0] for h in L.heads]
        L.tab = table(tab, torch.int32, dev).view(len(L.heads), _KV_TAB_W)

    def _write_triton(self, L, k, v, n, T, skip_lossy):
        if not k.is_contiguous():
            k = k.contiguous()
        if not v.is_contiguous():
            v = v.contiguous()
        key = (T, skip_lossy, L.k.shape[1], k.shape[3], L.cnt.shape[1], (k.data_ptr() | v.data_ptr()) & 15 == 0)
        launch = L.write_kw.get(key)
        if launch is None:
            block_t = min(64, pow2_at_least(T))
            blocks = cdiv(T, block_t)
            kw = dict(
                H_KV=len(L.heads),
                CW=L.cnt.shape[1],
                HEAD_DIM=k.shape[3],
                BLOCK_T=block_t,
                SKIP_LOSSY=skip_lossy,
                SPLIT_T=blocks > 1,
                num_warps=4,
            )
            launch = L.write_kw[key] = FastLaunch(_kv_append_kernel, (len(L.heads), self.batch, blocks), kw)
        launch(k, v, L.k, L.v, L.pos, L.lens, L.npos, L.tab, L.cnt, L.done, T, L.k.shape[1])

    def _write_torch(self, L, k, v, n, T, skip_lossy):
        """The torch reference of _kv_append_kernel (backend='torch')."""
        end = n + T
        for h in L.heads:
            if h.kind == "lossy":
                if skip_lossy:
                    continue
                c = next(c for c in L.classes if h in c.heads)
                slots = [c.held + t for t in range(T)]
                ts = list(range(T))
                new_len = c.held + T
            else:
                pairs = [(t, h.place(n + t, end, 0)) for t in range(T)]
                ts = [t for t, s in pairs if s is not None]
                slots = [s for t, s in pairs if s is not None]
                new_len = h.after(end)[0]
            if ts:
                idx = torch.tensor(slots, dtype=torch.int64, device=self.device) + h.offset
                tt = torch.tensor(ts, dtype=torch.int64, device=self.device)
                L.k.index_copy_(1, idx, k[:, h.index, tt])  # one kernel each (x[:, idx] = y: index_put_)
                L.v.index_copy_(1, idx, v[:, h.index, tt])
                L.pos.index_copy_(1, idx, (tt + n).to(torch.int32)[None, :].expand(self.batch, -1))
            L.lens[:, h.index] = new_len
        L.npos += T

    # -------------------------------------------------------------- lossy policies

    def _region(self, L, c):
        """Strided views (B, nh, cap, ...) of a class's regions: k, v, pos, score."""
        B, nh, cap = self.batch, len(c.heads), c.heads[0].cap
        a = c.heads[0].offset
        D = L.k.shape[2]
        return (
            L.k[:, a : a + nh * cap].view(B, nh, cap, D),
            L.v[:, a : a + nh * cap].view(B, nh, cap, D),
            L.pos[:, a : a + nh * cap].view(B, nh, cap),
            L.score[:, a : a + nh * cap].view(B, nh, cap),
        )

    def _stats(self, L, c, q, kc, pc, n, T, scale):
        """The attention statistics of this append's queries over a class's candidates."""
        if q is None:
            return None
        ds = self.spec.decode
        qc = q.view(self.batch, ds.kv_heads, ds.group, T, q.shape[-1]).index_select(1, c.idx)
        qpos = torch.arange(n, n + T, device=self.device)
        g = c.gid[:, :, None, None]
        pad = 0 if L.pad is None else L.pad[..., None, None]  # each row numbers its own tokens

        def allowed(qp, kp):
            return ds.allowed_torch(qp - pad, kp[..., None, :, :], g)

        return attention_stats(qc, kc, pc, qpos, allowed, scale, c.policy.window, ds.sentinel)

    def _step(self, L, c, k, q, n, T, scale):
        """A decode-sized append (T <= max_step) to a class, after the new tokens were written at
        slots held - T .. held - 1: policies timed at prefill score the new tokens only; those
        whose score reads the step's attention evict after the step's queries read the cache
        (pending until the next append); the others evict now (_evict_step)."""
        pol = c.policy
        E = c.held
        kv, vv, pv, sv = self._region(L, c)
        new = slice(E - T, E)
        if pol.timing != "decode":  # scored at the next prefill; key norms are known now
            if pol.score == "key_norm":
                sv[..., new] = -kv[..., new, :].to(sv.dtype).norm(dim=-1)
            else:
                sv[..., new] = 0
            return
        if evicts_after_read(pol):
            sv[..., new] = 0  # not scored until the step's read
            c.pending = (q, n, T, scale)
            return
        self._evict_step(L, c, q, n, T, scale)

    def _finish(self, L, c):
        """The eviction of a pending decode step in torch ops: the attention of its queries
        (kept from its append) over the tokens held, the step's own last."""
        q, n, T, scale = c.pending
        c.pending = None
        self._evict_step(L, c, q, n, T, scale)

    def _evict_step(self, L, c, q, n, T, scale):
        """Rescore a class after a decode step of T tokens (positions n .. n + T - 1, at slots
        held - T .. held - 1), then evict down to the budget by moving surviving new tokens into
        the evicted slots (O(T) data movement). The reference of _kv_update_kernel."""
        pol = c.policy
        sent = self.spec.decode.sentinel
        E = c.held
        kv, vv, pv, sv = self._region(L, c)
        new = slice(E - T, E)
        kc, pc = kv[..., :E, :], pv[..., :E]
        old = sv[..., :E].clone()
        old[..., new] = 0
        stats = self._stats(L, c, q, kc, pc, n, T, scale)
        sv[..., :E] = rescore(c.policy, old, stats, kc, new)
        if E <= c.budget:
            return
        keep, m = c.budget, E - c.budget
        prio = self._priority(L, pol, sv[..., :E], pc, n + T)
        D = kv.shape[-1]
        if m == 1:  # one token out (a decode step): the lowest (priority, position) goes
            dst = victim(prio, pc, sent)  # (B, nh, 1)
            for t in (kv, vv):
                t.scatter_(2, dst[..., None].expand(-1, -1, -1, D), t[:, :, keep : keep + 1, :].clone())
            for t in (pv, sv):
                t.scatter_(2, dst, t[..., keep : keep + 1].clone())
            pv[..., keep] = sent
            c.held = keep
            L.lens.index_fill_(1, c.idx, keep)
            return
        ev = lowest(prio, pc, m)
        dev = self.device
        ih = torch.arange(keep, device=dev)
        hole = torch.where(ev[..., :keep], ih, keep + E).sort(-1).values[..., :m]
        im = torch.arange(m, device=dev)
        mover = torch.where(~ev[..., keep:E], im, 2 * m).sort(-1).values
        valid = hole < keep
        src = keep + torch.where(valid, mover, torch.zeros_like(mover))
        dst = torch.where(valid, hole, src)
        for t in (kv, vv):
            vals = torch.gather(t, 2, src[..., None].expand(-1, -1, -1, D))
            t.scatter_(2, dst[..., None].expand(-1, -1, -1, D), vals)
        for t in (pv, sv):
            t.scatter_(2, dst, torch.gather(t, 2, src))
        pv[..., keep:E] = sent
        c.held = keep
        L.lens.index_fill_(1, c.idx, keep)

    def _fusable(self, L):
        """Whether the layer's one-token appends run in the update kernel: every lossy class is
        H2O or TOVA at decode with a budget, backend triton, a 16- or 32-bit cache, and the rows
        are not left-padded (their positions differ)."""
        if L.fused is None:
            L.fused = (
                bool(L.classes)
                and self.backend == "triton"
                and self.dtype != torch.float64
                and all(c.policy.score in _KV_FUSED and c.policy.timing == "decode" for c in L.classes)
            )
        return L.fused and L.pad is None and all(c.budget is not None for c in L.classes)

    def _update(self, L, k, v, q, n, scale):
        """A one-token append to a fused layer: one _kv_update_kernel launch per class folds the
        last step's attention (the decode's StepLogits) into the scores, evicts the lowest when
        over budget and writes the token; then the append kernel writes the lossless heads (and
        advances every head's position on the device)."""
        if not k.is_contiguous():
            k = k.contiguous()
        if not v.is_contiguous():
            v = v.contiguous()
        self._step_logits(L)
        for c in L.classes:
            fold = c.pending is not None
            evict = fold and c.held > c.budget
            _kv_update_launch(self.spec, c, L, k, v, fold, evict)
            c.held += 0 if evict else 1
            c.pending = (q, n, 1, scale)
        if L.lossless:
            self._write_triton(L, k, v, n, 1, True)

    def _step_logits(self, L):
        """The layer's StepLogits, (re)made when its scored regions changed size."""
        if L.logits is not None and L.logits_ok:
            return
        rows, soff = 0, [-1] * len(L.heads)
        for c in L.classes:
            c.logits_row = rows
            for h in c.heads:
                soff[h.index], rows = rows, rows + h.cap
        sc = L.logits
        if sc is None or sc.lg.shape[2] != rows or sc.soff.tolist() != soff:
            L.logits = StepLogits(self.batch, self.spec.decode, rows, soff, self.device)
        L.logits_ok = True

    def _priority(self, L, pol, scores, pos, end):
        """The eviction priority (policies.priority) at the end of an append; in a padded
        batch each row's end is its own and empty slots (padding) go first."""
        if L.pad is None:
            return priority(pol, scores, pos, end)
        prio = priority(pol, scores, pos, end - L.pad)
        return prio.masked_fill(pos == self.spec.decode.sentinel, float("-inf"))

    def _compress(self, L, c, k, v, q, n, T, scale):
        """A prefill-sized append (T > max_step), or T == 0 to shrink to a new budget: score
        the held tokens and the new ones together, keep the budget's best, rewrite the
        region in position order."""
        pol = c.policy
        kv, vv, pv, sv = self._region(L, c)
        E0 = c.held
        B = self.batch
        pos_new = torch.arange(n, n + T, device=self.device, dtype=torch.int32)
        if L.pad is not None:  # each row's own positions; its padding is an empty slot
            pos_new = pos_new - L.pad[:, 0]
            pos_new = torch.where(pos_new < 0, self.spec.decode.sentinel, pos_new).to(torch.int32)
        kc = torch.cat([kv[..., :E0, :], k.index_select(1, c.idx)], 2) if T else kv[..., :E0, :].clone()
        vc = torch.cat([vv[..., :E0, :], v.index_select(1, c.idx)], 2) if T else vv[..., :E0, :].clone()
        pc = (
            torch.cat([pv[..., :E0], pos_new.view(-1, 1, T).expand(B, len(c.heads), T)], 2)
            if T
            else pv[..., :E0].clone()
        )
        old = torch.cat([sv[..., :E0], sv.new_zeros((B, len(c.heads), T))], 2) if T else sv[..., :E0].clone()
        E = E0 + T
        new = slice(E0, E)
        if T:
            stats = self._stats(L, c, q, kc, pc, n, T, scale)
            sc = rescore(c.policy, old, stats, kc, new)
            if pol.adaptive_mean is not None:
                self._cake_prefer(L, c, stats("window"))
        else:
            sc = old
        budget = c.budget if c.budget is not None else E
        keep = min(E, budget)
        sel = survivors(self._priority(L, pol, sc, pc, n + T) if keep < E else sc, pc, keep)
        if keep > c.heads[0].cap:
            self._grow(L, {h.index: keep for h in c.heads})
            kv, vv, pv, sv = self._region(L, c)
        D = kc.shape[-1]
        kv[..., :keep, :] = torch.gather(kc, 2, sel[..., None].expand(-1, -1, -1, D))
        vv[..., :keep, :] = torch.gather(vc, 2, sel[..., None].expand(-1, -1, -1, D))
        pv[..., :keep] = torch.gather(pc, 2, sel)
        sv[..., :keep] = torch.gather(sc, 2, sel)
        pv[..., keep:] = self.spec.decode.sentinel
        c.held = keep
        L.lens.index_fill_(1, c.idx, keep)
        for h in c.heads:
            h.extent = h.held = keep

    def _cake_prefer(self, L, c, w):
        """CAKE: this layer's preference P = H^(1/tau1) * V^(1/tau2) from its window
        attention w (B, nh, G, w, E): H the entropy of the window-mean attention, V the sum
        over keys of the attention's variance across the window's queries (means over batch
        rows and heads). Then the cascade: every layer of the policy seen so far gets
        floor(P_l / sum P * mean * layers) tokens (at least its keep rules), never more
        than it had; layers over their new budget shrink now (T == 0 compress)."""
        pol = c.policy
        a = w.mean(3)
        ent = -(a * torch.log(a.clamp_min(1e-30))).sum(-1).mean()
        var = w.var(3, unbiased=False).sum(-1).mean() if w.shape[3] > 1 else torch.zeros((), device=w.device)
        pref = float(ent.clamp_min(0) ** (1 / pol.tau1) * var.clamp_min(0) ** (1 / pol.tau2))
        self._cake[(pol.index, L.layer)] = pref
        layers = self._cake_layers[pol.index]
        seen = [l for l in layers if (pol.index, l) in self._cake]
        prefs = [self._cake[(pol.index, l)] for l in seen]
        total = pol.adaptive_mean * len(layers)
        floor_ = max(pol.sink + pol.protected_recent, 1)
        for l, p in zip(seen, prefs):
            share = p / sum(prefs) if sum(prefs) > 0 else 1.0 / len(seen)
            b = max(int(share * total), floor_)
            for cc in self._layers[l].classes:
                if cc.policy.index != pol.index:
                    continue
                cc.budget = b if cc.budget is None else min(cc.budget, b)
                if cc is not c and cc.held > cc.budget:
                    LL = self._layers[l]
                    if cc.pending is not None:
                        self._finish(LL, cc)
                    self._compress(LL, cc, None, None, None, LL.n, 0, 1.0)
