"""H2O and TOVA heads on the paged cache (codegen/support/paged.py): step by step, a PagedCache
whose rows have different prompt lengths keeps the same positions in the same slots, with the
same scores, and decodes like one packed Cache per row (ties included; GQA; keep rules; a
file whose other heads are lossless); its pages stay within the capacity and return to the
pool (hypothesis, with tests/test_paged_cache.py's audit)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from test_cache_fused_step import update_launches
from test_decode_support import causal, module, policy, program, rand
from test_paged_cache import _audit

POLICIES = {
    "h2o": [policy(20, sink=1, recent=2, score="h2o")],
    "h2o_tova": [  # two classes (two launches a step), two capacities
        policy(20, sink=1, recent=2, score="h2o", kv_heads=[0]),
        policy(14, sink=2, recent=1, score="tova", aggregate="max", kv_heads=[1]),
    ],
    "h2o_mixed": [policy(20, sink=1, recent=3, score="h2o", aggregate="sum", kv_heads=[1])],  # head 0 dense
}


def _module(name):
    return module(program(causal(), heads=8, kv_heads=2, head_dim=16, cache=POLICIES[name], name=f"pg_{name}"))[1]


def _inputs(B, N, seed):
    """q, k, v with groups of equal keys (equal logits and scores: ties go to the oldest)."""
    q, k, v = rand(B, 8, N, 16, seed=seed), rand(B, 2, N, 16, seed=seed + 1) * 2, rand(B, 2, N, 16, seed=seed + 2)
    k[:, :, 1::3] = k[:, :, 1:2]
    k[:, :, 2::4] = 0.0
    return q, k, v


def _slots(paged, b, h):
    """(positions, scores) of the held slots of one head of a paged row, in slot order: the
    positions from its pages, which a lossy head's copy beside its scores equals."""
    L = paged._layers[0]
    lossy = L.rules[h].kind == "lossy"
    n = L.held[b][h] if lossy else paged.seen(0)[b]
    pos = L.pos[paged._slots(L, b, [h], n)[0]]
    if not lossy:
        return pos, None
    c = next(c for c in L.classes if h in c.heads)
    r = paged._held(c, n)[c.heads.index(h)]
    assert torch.equal(L.hpos[b, r], pos), (b, h, L.hpos[b, r], pos)
    return pos, L.score[b, r]


def _poison(paged):
    """What lies past each lossy head's held slots (its logits, scores and held positions) set
    to what would be evicted first were it read: the update must not use it."""
    L = paged._layers[0]
    for c in L.classes:
        for b, held in enumerate(L.held):
            for i in range(len(c.heads)):
                rows = slice(c.logits_row + i * c.slots + held[c.heads[0]], c.logits_row + (i + 1) * c.slots)
                L.score[b, rows], L.hpos[b, rows], L.logits.lg[b, :, rows] = -1.0, 3, -1e4  # (3: no sink)


@pytest.mark.parametrize(
    "name, splits, poison",
    [("h2o", False, False), ("h2o_tova", False, False), ("h2o_mixed", False, False), ("h2o", True, False),
     ("h2o_tova", True, True)],
)  # fmt: skip
def test_paged_steps_equal_packed_per_row(name, splits, poison, monkeypatch):
    """`splits`: the update over several splits of 16 keys (the lowest of all splits goes), the
    decodes over splits of 16 keys (the log-sum-exp merged across them). `poison`: before every
    step, what lies past the held slots (_poison)."""
    mod = _module(name)
    kw, pkw = {}, {}
    if splits:
        monkeypatch.setattr(mod, "_KV_UPD_BLOCK", 16)
        monkeypatch.setattr(mod, "_KV_UPD_PER_SM", 64)
        kw, pkw = {"split": 16}, {"config": mod.DecodeConfig(block_n=16, min_split=16, programs_per_sm=64)}
    prompts, N = (13, 26, 17), 32 - 2 * splits  # row 0 takes its second page at a fused step
    B = len(prompts)
    q, k, v = _inputs(B, N, 3)
    paged = mod.PagedCache(B, dtype=torch.float32)
    packed = [mod.Cache(1, dtype=torch.float32) for _ in prompts]
    for b, p in enumerate(prompts):
        paged.append(0, k[b : b + 1, :, :p], v[b : b + 1, :, :p], q[b : b + 1, :, :p], rows=[b])
        packed[b].append(0, k[b : b + 1, :, :p], v[b : b + 1, :, :p], q[b : b + 1, :, :p])
    for step in range(N - max(prompts)):
        ts = [p + step for p in prompts]
        kk, vv, qq = (torch.cat([x[b : b + 1, :, t : t + 1] for b, t in enumerate(ts)]) for x in (k, v, q))
        if poison and step > 0:
            _poison(paged)
        paged.append(0, kk, vv, qq)
        if step == 0:  # from now on every step folds the decode's logits in one launch: no torch
            paged._lossy_torch = lambda *a: pytest.fail("the paged cache took the torch path")
        out = paged.decode(0, qq, **pkw)
        ref = paged.decode_reference(0, qq)
        for b, c in enumerate(packed):
            c.append(0, kk[b : b + 1], vv[b : b + 1], qq[b : b + 1])
            want = c.decode(0, qq[b : b + 1], **kw)
            torch.testing.assert_close(out[b : b + 1], want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ref[b : b + 1], want, atol=1e-5, rtol=1e-5)
            L = c._layers[0]
            for h, head in enumerate(L.heads):
                pos, score = _slots(paged, b, h)
                sl = slice(head.offset, head.offset + int(L.lens[0, h]))
                assert torch.equal(pos, L.pos[0, sl]), (step, b, h, pos, L.pos[0, sl])
                if score is not None:
                    torch.testing.assert_close(score, L.score[0, sl], atol=1e-6, rtol=1e-5)
    L = paged._layers[0]
    for c in L.classes:
        cap = c.budget + 1  # the packed capacity: budget + max_step, in whole pages
        for b in range(B):
            for h in c.heads:
                assert L.held[b][h] == min(paged.seen(0)[b], cap)
                assert len(L.tables[b][h]) == -(-L.held[b][h] // paged.page) <= -(-cap // paged.page)
    if splits:
        assert max(key[0] for key in L.classes[0].update) > 1


def test_fused_step_with_rows_not_pending_equals_packed(monkeypatch):
    """A fused step (one update launch a class) where one row's last append was several
    tokens (nothing to fold: it only writes its token) and the others fold, one below its
    budget and one evicting, rows of different lengths over several splits of 16 keys (a
    split past a row's length folds nothing): each row as its own packed Cache."""
    mod = _module("h2o_tova")
    monkeypatch.setattr(mod, "_KV_UPD_BLOCK", 16)
    monkeypatch.setattr(mod, "_KV_UPD_PER_SM", 64)
    launches, launch = [], mod._kv_update_launch

    def record(spec, c, L, k, v, fold, evict, paged=None):
        if paged is not None:  # not the packed caches' launches
            launches.append((fold, evict, paged[3].tolist()))
        launch(spec, c, L, k, v, fold, evict, paged)

    monkeypatch.setattr(mod, "_kv_update_launch", record)
    prompts, extra, N = (6, 12, 24), 9, 40
    B = len(prompts)
    q, k, v = _inputs(B, N, 11)
    paged = mod.PagedCache(B, dtype=torch.float32)
    packed = [mod.Cache(1, dtype=torch.float32) for _ in prompts]
    ts = [0] * B

    def add(rows, T):
        parts = [[x[b : b + 1, :, ts[b] : ts[b] + T] for x in (k, v, q)] for b in rows]
        for b, (kk, vv, qq) in zip(rows, parts):
            packed[b].append(0, kk, vv, qq)
            ts[b] += T
        return [torch.cat([p[i] for p in parts]) for i in range(3)]

    def decode(qq):
        out = paged.decode(0, qq)
        for b, c in enumerate(packed):
            torch.testing.assert_close(out[b : b + 1], c.decode(0, qq[b : b + 1]), atol=1e-5, rtol=1e-5)

    for b in range(B):
        paged.append(0, *add([b], prompts[b]), rows=[b])
    for step in range(5):
        kk, vv, qq = add(range(B), 1)
        n = len(launches)
        paged.append(0, kk, vv, qq)
        if step == 2:  # row 1 takes several tokens without a decode: the others stay pending
            paged.append(0, *add([1], extra), rows=[1])
            decode(torch.cat([q[b : b + 1, :, ts[b] - 1 : ts[b]] for b in range(B)]))
        if step == 3:  # the fused step: rows 0 and 2 fold (row 2 evicts), row 1 does not
            assert launches[n:] == [(True, True, [1, 0, 1])] * 2
        decode(qq)
        L = paged._layers[0]
        for b, c in enumerate(packed):
            for h, head in enumerate(c._layers[0].heads):
                pos, score = _slots(paged, b, h)
                sl = slice(head.offset, head.offset + int(c._layers[0].lens[0, h]))
                assert torch.equal(pos, c._layers[0].pos[0, sl]), (step, b, h)
                torch.testing.assert_close(score, c._layers[0].score[0, sl], atol=1e-6, rtol=1e-5)
        _audit(paged, 0)
    assert L.held[1][0] > L.held[0][0]


def test_rows_join_and_steps_without_decode_equal_packed():
    """The torch paths: a row released and refilled while the others decode (each row against
    its own packed Cache, a new one for the refilled row), and steps with no decode between
    them (no logits: the eviction recomputes the step's attention, as the packed cache does)."""
    mod = _module("h2o")
    B, N = 2, 40
    q, k, v = _inputs(B, N, 5)
    paged = mod.PagedCache(B, dtype=torch.float32)
    packed = [mod.Cache(1, dtype=torch.float32) for _ in range(B)]
    lens = [0, 0]

    def add(b, T, rows):
        t = lens[b]
        packed[b].append(0, k[b : b + 1, :, t : t + T], v[b : b + 1, :, t : t + T], q[b : b + 1, :, t : t + T])
        lens[b] += T
        return [x[b : b + 1, :, t : t + T] for x in (k, v, q)]

    for b, T in ((0, 22), (1, 12)):
        paged.append(0, *add(b, T, [b]), rows=[b])
    for step in range(8):
        if step == 3:  # row 1 ends; a new sequence takes its row (the same tokens, from 0)
            paged.release(1)
            packed[1], lens[1] = mod.Cache(1, dtype=torch.float32), 0
            paged.append(0, *add(1, 23, [1]), rows=[1])
        parts = [add(b, 1, None) for b in range(B)]
        paged.append(0, *(torch.cat([p[i] for p in parts]) for i in range(3)))
        qq = torch.cat([p[2] for p in parts])
        if step % 3 != 1:  # otherwise no decode: the next append recomputes the attention
            out = paged.decode(0, qq)
            for b in range(B):
                torch.testing.assert_close(out[b : b + 1], packed[b].decode(0, qq[b : b + 1]), atol=1e-5, rtol=1e-5)
        for b in range(B):
            L = packed[b]._layers[0]
            for h, head in enumerate(L.heads):
                pos, score = _slots(paged, b, h)
                sl = slice(head.offset, head.offset + int(L.lens[0, h]))
                assert torch.equal(pos, L.pos[0, sl]), (step, b, h, pos, L.pos[0, sl])
                torch.testing.assert_close(score, L.score[0, sl], atol=1e-6, rtol=1e-5)
        _audit(paged, 0)


@settings(max_examples=10, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["prompt", "step", "step", "release"]), st.integers(0, 2), st.integers(2, 40)),
        min_size=1,
        max_size=8,
    ),
)
def test_pool_random_appends_evictions_releases(ops):
    """Prompts of random rows, steps of every row (decoded or not), releases, across rows that
    share one pool with an H2O head and a dense one: no page lost, leaked or shared, and each
    H2O head within its capacity's pages (the audit); every page returns once all rows end."""
    mod = _module("h2o_mixed")
    cache = mod.PagedCache(3, dtype=torch.float32)
    for i, (op, row, T) in enumerate(ops):
        if op == "release":
            cache.release(row)
        elif op == "prompt":
            x = rand(1, 8, T, 16, seed=i)
            cache.append(0, x[:, :2], x[:, 2:4], x, rows=[row])
        else:
            x = rand(3, 8, 1, 16, seed=i)
            cache.append(0, x[:, :2], x[:, 2:4], x)
            if T % 2:
                cache.decode(0, x)
        _audit(cache, 0)
    for row in range(3):
        cache.release(row)
    L = cache._layers[0]
    assert L.pool.free_pages == L.pool.capacity and not L.pool.owner


def test_step_at_the_budget_repeats(monkeypatch):
    """Once every row holds its budget, a step takes no page, rebuilds no list and launches the
    update with the same arguments (lengths, positions, pending rows on the device): a captured
    step replays right; the positions still advance on the device."""
    mod = _module("h2o")
    seen = update_launches(monkeypatch, mod)
    q, k, v = _inputs(2, 28, 9)
    cache = mod.PagedCache(2, dtype=torch.float32)
    cache.append(0, k[:, :, :24], v[:, :, :24], q[:, :, :24])
    for t in range(24, 28):
        if t == 26:
            cache._update_lists = lambda *a, **kw: pytest.fail("a step at the budget rebuilt the page lists")
        cache.append(0, k[:, :, t : t + 1], v[:, :, t : t + 1], q[:, :, t : t + 1])
        cache.decode(0, q[:, :, t : t + 1])
    assert len(seen) == 3 and len(set(seen)) == 1  # the first step after the prompt: in torch
    assert cache._layers[0].ntok.tolist() == [28, 28] and max(cache.kept(0, 1, 0)) == 27


def test_other_policies_and_appends_without_queries_are_errors():
    snap = program(causal(), heads=8, kv_heads=2, head_dim=16, cache=[policy(40, score="snapkv")], name="pg_snap")
    with pytest.raises(module(snap)[1].CacheError, match="serves h2o and tova at decode"):
        module(snap)[1].PagedCache(1, dtype=torch.float32)
    mod = _module("h2o")
    cache = mod.PagedCache(1, dtype=torch.float32)
    x = torch.zeros(1, 2, 4, 16)
    with pytest.raises(mod.CacheError, match="needs the step's queries"):
        cache.append(0, x, x)
    assert cache.seen(0) == [0]
