"""The shared matrix of lossy cache policies: every row runs the same sequence of appends
(prefill-sized and decode-sized) through the generated cache and through a plain-Python
model of the policy, and after every append each (layer, batch row, KV head) must hold the
same tokens with the same scores. Adding a policy adds a row to POLICIES.

The model below is written from docs/caches.md, independently of the generated code: one
list of tokens per head, float64 numpy, loops instead of batched tensor ops.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from test_decode_support import causal, module, policy, program, rand, sink, window

B, H, HK, D, LAYERS, MAX_STEP = 2, 4, 2, 16, 2, 2
G = H // HK
STEPS = [10, 1, 2, 1, 1, 2, 5, 1, 2, 1]  # > MAX_STEP: a prefill-sized append

POLICIES = {
    "h2o": [policy(8, sink=1, recent=2, score="h2o")],
    "h2o_max": [policy(7, recent=1, score="h2o", aggregate="max")],
    "tova_sum": [policy(6, sink=1, recent=1, score="tova", aggregate="sum")],
    "snapkv_prefill": [policy(8, sink=1, score="snapkv", window=3, pool="max", kernel=3)],
    "snapkv_decode_avg": [policy(9, sink=1, score="snapkv", timing="decode", window=2, pool="avg", kernel=3)],
    "key_norm": [policy(7, sink=1, recent=1, score="key_norm")],
    "key_norm_decode": [policy(6, score="key_norm", timing="decode")],
    "fifo_streaming": [policy(6, sink=2, recent=4)],
    "pyramid_linear": [policy(("linear", 10, 6), sink=1, score="snapkv", window=2, kernel=3)],
    "list_h2o": [policy(("list", [9, 6]), recent=2, score="h2o")],
    "cake": [policy(("adaptive", 8), sink=1, score="snapkv", window=4, kernel=3)],
    "duo_mix": [policy("full", kv_heads=[0]), policy(6, sink=1, recent=2, score="h2o", kv_heads=[1])],
    "per_layer": [policy(7, recent=1, score="tova", layers=[0]), policy(8, sink=2, score="key_norm", layers=[1])],
    "rerotate_tova": [policy(6, sink=1, recent=1, score="tova", positions="rerotate")],
}
PATTERNS = {"h2o_masked": causal(sink(1), window(12))}  # rows whose heads use another pattern
POLICIES["h2o_masked"] = [policy(8, sink=1, recent=1, score="h2o")]
# rows whose caches write through the Triton append kernel (a lossy class alone, beside a full
# head, per layer; prefill-sized and decode-sized appends); the others use its torch twin
# (backend="torch", equal to the kernel by test_triton_append_equals_torch_reference), since
# the policies differ only in the torch code that scores and evicts after the write
TRITON_ROWS = {"h2o", "duo_mix", "per_layer"}


# ------------------------------------------------------------------ the plain-Python model


def _rules(prog, layer, kv):
    """The policy of (layer, kv head) as the model reads it: dict or None (lossless)."""
    pol = None
    for c in prog.cache:
        if (c.layers is None or layer in c.layers) and (c.kv_heads is None or kv in c.kv_heads):
            pol = c
    if pol is None or pol.budget.kind == "full":
        return None
    b = pol.budget
    budget = {
        "tokens": lambda: b.tokens,
        "list": lambda: b.per_layer[layer],
        "linear": lambda: round(b.first + (b.last - b.first) * layer / (LAYERS - 1)),
        "adaptive": lambda: None,
    }[b.kind]()
    ev = pol.evict
    score = ev.score if ev else None
    opts = dict(ev.options) if ev else {}
    window_ = opts.get("window", 0) if score == "snapkv" else 0
    return dict(
        budget=budget,
        mean=b.tokens if b.kind == "adaptive" else None,
        sink=pol.sink,
        recent=max(pol.recent, window_),
        score=score,
        timing=ev.timing if ev else "decode",
        agg=pol.aggregate,
        window=opts.get("window", 0),
        pool=opts.get("pool"),
        kernel=opts.get("kernel"),
    )


def _agg(xs, how):
    xs = np.asarray(xs)
    return xs.max(0) if how == "max" else xs.sum(0) if how == "sum" else xs.mean(0)


class Model:
    """Tokens per (layer, b, kv head): a list of dicts {pos, k, v, score}."""

    def __init__(self, prog):
        self.prog = prog
        self.table = prog.group_table()
        self.heads = {(l, b, h): [] for l in range(LAYERS) for b in range(B) for h in range(HK)}
        self.rules = {(l, h): _rules(prog, l, h) for l in range(LAYERS) for h in range(HK)}
        self.budget = {k: (r["budget"] if r else None) for k, r in self.rules.items()}
        self.n = [0] * LAYERS
        self.pref = {}
        self.pending = {}  # layer -> (q, n, T) of its last decode step

    def probs(self, layer, h, b, toks, q, n, rows):
        """p[g][j][i]: attention of query j (position n + j, j in rows) of query head
        h*G+g over the candidate tokens, with the pattern's mask."""
        out = []
        for g in range(G):
            pat = self.prog.groups[self.table[layer][h * G + g]].pattern
            per_q = []
            for j in rows:
                logits = []
                for t in toks:
                    if pat.holds(np.int64(n + j), np.int64(t["pos"])):
                        logits.append(float(np.dot(q[b, h * G + g, j], t["k"])) / math.sqrt(D))
                    else:
                        logits.append(-math.inf)
                m = max(logits)
                e = (
                    [math.exp(x - m) if x != -math.inf else 0.0 for x in logits]
                    if m != -math.inf
                    else [0.0] * len(toks)
                )
                s = sum(e)
                per_q.append([x / s if s else 0.0 for x in e])
            out.append(per_q)
        return np.asarray(out)  # (G, len(rows), E)

    def after_read(self, r):
        """A decode step of this policy evicts after the step's queries read the cache (at the
        start of the next append): decode-timed scores that read the step's attention."""
        return r is not None and r["timing"] == "decode" and r["score"] in ("h2o", "tova", "snapkv")

    def append(self, layer, k, v, q):
        n, T = self.n[layer], k.shape[2]
        big = T > MAX_STEP
        if self.pending.get(layer) is not None:  # the last decode step's eviction, after its read
            qp, np_, tp = self.pending.pop(layer)
            for h in range(HK):
                r = self.rules[(layer, h)]
                if self.after_read(r):
                    for b in range(B):
                        self.rescore(layer, h, b, self.heads[(layer, b, h)], qp, np_, tp, r)
                        self.evict(layer, b, h, np_ + tp, r)
        for h in range(HK):
            r = self.rules[(layer, h)]
            for b in range(B):
                toks = self.heads[(layer, b, h)]
                new = [dict(pos=n + j, k=k[b, h, j], v=v[b, h, j], score=0.0) for j in range(T)]
                toks += new
                if r is None or (not big and self.after_read(r)):
                    continue
                if big or r["timing"] == "decode":
                    self.rescore(layer, h, b, toks, q, n, T, r)
                elif r["score"] == "key_norm":
                    for t in new:
                        t["score"] = -float(np.linalg.norm(t["k"]))
        if big:
            for h in range(HK):
                r = self.rules[(layer, h)]
                if r is not None and r["mean"] is not None:
                    self.cake(layer, h, q, n, T, r)
        for h in range(HK):
            r = self.rules[(layer, h)]
            if big or not self.after_read(r):
                if r is not None and (big or r["timing"] == "decode") and self.budget[(layer, h)] is not None:
                    for b in range(B):
                        self.evict(layer, b, h, n + T, r)
        if not big:
            self.pending[layer] = (q, n, T)
        self.n[layer] = n + T

    def rescore(self, layer, h, b, toks, q, n, T, r):
        s = r["score"]
        if s == "h2o":
            p = self.probs(layer, h, b, toks, q, n, range(T)).sum(1)  # (G, E)
            for i, t in enumerate(toks):
                t["score"] += float(_agg(p[:, i], r["agg"]))
        elif s == "tova":
            p = self.probs(layer, h, b, toks, q, n, [T - 1])[:, 0]
            for i, t in enumerate(toks):
                t["score"] = float(_agg(p[:, i], r["agg"]))
        elif s == "snapkv":
            toks.sort(key=lambda t: t["pos"])
            w = min(r["window"], T)
            a = self.probs(layer, h, b, toks, q, n, range(T - w, T)).mean(1)  # (G, E)
            kk, E = r["kernel"], len(toks)
            pooled = np.zeros_like(a)
            for i in range(E):
                lo, hi = i - kk // 2, i + kk // 2
                vals = a[:, max(lo, 0) : min(hi, E - 1) + 1]
                pooled[:, i] = vals.max(1) if r["pool"] == "max" else vals.sum(1) / kk
            for i, t in enumerate(toks):
                t["score"] = float(_agg(pooled[:, i], r["agg"]))
        elif s == "key_norm":
            for t in toks:
                t["score"] = -float(np.linalg.norm(t["k"]))
        # no score (FIFO): scores stay 0 and the oldest unprotected token goes first

    def evict(self, layer, b, h, end, r):
        toks = self.heads[(layer, b, h)]
        budget = self.budget[(layer, h)]
        m = len(toks) - budget
        if m <= 0:
            return

        def prio(t):
            protected = t["pos"] < r["sink"] or t["pos"] >= end - r["recent"]
            return (math.inf if protected else t["score"], t["pos"])

        gone = {id(t) for t in sorted(toks, key=prio)[:m]}
        self.heads[(layer, b, h)] = [t for t in toks if id(t) not in gone]

    def cake(self, layer, h, q, n, T, r):
        """CAKE (docs/caches.md): preference from the window attention, then the cascade."""
        if h != min(hh for hh in range(HK) if self.rules[(layer, hh)] is not None):
            return  # one preference per layer (all its adaptive heads together)
        ents, vars_ = [], []
        w = min(r["window"], T)
        for hh in range(HK):
            if self.rules[(layer, hh)] is None:
                continue
            for b in range(B):
                toks = sorted(self.heads[(layer, b, hh)], key=lambda t: t["pos"])
                p = self.probs(layer, hh, b, toks, q, n, range(T - w, T))  # (G, w, E)
                for g in range(G):
                    a = p[g].mean(0)
                    ents.append(-sum(x * math.log(max(x, 1e-30)) for x in a))
                    vars_.append(p[g].var(0).sum() if w > 1 else 0.0)
        self.pref[layer] = max(np.mean(ents), 0) ** 1.0 * max(np.mean(vars_), 0) ** 1.0
        seen = sorted(self.pref)
        total = r["mean"] * LAYERS
        tot_pref = sum(self.pref[l] for l in seen)
        for l in seen:
            share = self.pref[l] / tot_pref if tot_pref > 0 else 1 / len(seen)
            bud = max(int(share * total), max(r["sink"] + r["recent"], 1))
            for hh in range(HK):
                if self.rules[(l, hh)] is None:
                    continue
                old = self.budget[(l, hh)]
                self.budget[(l, hh)] = bud if old is None else min(old, bud)
                if l != layer:
                    for b in range(B):
                        self.evict(l, b, hh, self.n[l], self.rules[(l, hh)])


# ------------------------------------------------------------------ the matrix


def _program(name):
    pat = PATTERNS.get(name, causal())
    return program(pat, layers=LAYERS, heads=H, kv_heads=HK, head_dim=D, cache=POLICIES[name], name=name)


def _compare(name, prog, cache, dtype, decode=False, rtol=1e-9, atol=1e-12):
    """Run STEPS through the cache and the model (decoding each decode-sized step when asked)
    and compare after every append."""
    model = Model(prog)
    N = sum(STEPS)
    seed = sum(map(ord, name))
    q = rand(B, H, N, D, dtype=torch.float64, seed=seed)
    k = rand(B, HK, N, D, dtype=torch.float64, seed=seed + 1) * 1.5
    v = rand(B, HK, N, D, dtype=torch.float64, seed=seed + 2)
    q, k, v = q.to(dtype).double(), k.to(dtype).double(), v.to(dtype).double()  # the model sees the cache's values
    t = 0
    for T in STEPS:
        for layer in range(LAYERS):
            sl = slice(t, t + T)
            cache.append(layer, k[:, :, sl].to(dtype), v[:, :, sl].to(dtype), q[:, :, sl].to(dtype))
            model.append(layer, k[:, :, sl].numpy(), v[:, :, sl].numpy(), q[:, :, sl].numpy())
            if decode and T <= MAX_STEP:
                cache.decode(layer, q[:, :, sl].to(dtype))
        t += T
        for layer in range(LAYERS):
            view = cache.view(layer)
            for h in range(HK):
                off, n = view.slots[h]
                for b in range(B):
                    want = sorted(model.heads[(layer, b, h)], key=lambda x: x["pos"])
                    pos = view.pos[b, off : off + n].tolist()
                    assert sorted(pos) == [x["pos"] for x in want], (name, t, layer, b, h)
                    order = np.argsort(pos)
                    kk = view.k[b, off : off + n][order].double().numpy()
                    assert np.array_equal(kk, np.stack([x["k"] for x in want]))
                    vv = view.v[b, off : off + n][order].double().numpy()
                    assert np.array_equal(vv, np.stack([x["v"] for x in want]))
                    if model.rules[(layer, h)] is not None and model.rules[(layer, h)]["score"] is not None:
                        got = cache._layers[layer].score[b, off : off + n][order].double().numpy()
                        np.testing.assert_allclose(got, [x["score"] for x in want], rtol=rtol, atol=atol)
    return q, k, v


@pytest.mark.parametrize("name", ["h2o", "tova_sum", "h2o_masked", "duo_mix"])
def test_fused_steps_match_plain_python_model(name):
    """float32 caches decoded after every step: one-token steps fold the decode's logits in the
    update kernel (two-token steps and appends without a decode take the torch path)."""
    prog = _program(name)
    _, mod = module(prog, max_step=MAX_STEP)
    cache = mod.Cache(B, dtype=torch.float32)
    _compare(name, prog, cache, torch.float32, decode=True, rtol=1e-4, atol=1e-6)
    assert all(L.logits is not None and L.logits.read == L.n for L in cache._layers)


@pytest.mark.parametrize("name", list(POLICIES))
def test_policy_matches_plain_python_model(name):
    prog = _program(name)
    plan, mod = module(prog, max_step=MAX_STEP)
    backend = "triton" if name in TRITON_ROWS else "torch"
    cache = mod.Cache(B, dtype=torch.float64, backend=backend)
    q, k, v = _compare(name, prog, cache, torch.float64)
    # the decode kernel over the compacted (float32) cache equals its reference
    c32 = mod.Cache(B, dtype=torch.float32, backend=backend)
    for layer in range(LAYERS):
        c32.append(layer, k[:, :, :12].float(), v[:, :, :12].float(), q[:, :, :12].float())
        c32.append(layer, k[:, :, 12:13].float(), v[:, :, 12:13].float(), q[:, :, 12:13].float())
        qs = q[:, :, 12:13].float()
        torch.testing.assert_close(c32.decode(layer, qs), mod.decode_reference(qs, c32.view(layer)), atol=1e-5, rtol=0)


def test_budgets_per_layer_and_head():
    """PyramidKV's linear schedule, explicit lists and DuoAttention's full heads."""
    plan, _ = module(_program("pyramid_linear"), max_step=MAX_STEP)
    assert [row[0].policy.budget for row in plan.heads] == [10, 6]
    plan, _ = module(_program("list_h2o"), max_step=MAX_STEP)
    assert [row[1].policy.budget for row in plan.heads] == [9, 6]
    plan, _ = module(_program("duo_mix"), max_step=MAX_STEP)
    assert [h.policy is None for h in plan.heads[0]] == [True, False]


def test_cake_budgets_sum_to_the_pool():
    prog = _program("cake")
    plan, mod = module(prog, max_step=MAX_STEP)
    cache = mod.Cache(B, dtype=torch.float64)
    q, k = rand(B, H, 40, D, dtype=torch.float64), rand(B, HK, 40, D, dtype=torch.float64, seed=3)
    for layer in range(LAYERS):
        cache.append(layer, k, k, q)
    held = [cache.tokens()[l][0] for l in range(LAYERS)]
    assert sum(held) <= 8 * LAYERS and min(held) >= 5  # sink 1 + window 4
