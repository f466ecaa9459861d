"""The paged cache (codegen/support/paged.py) and decode-time selection.

- Every causal case of tests/cases.py whose cache keeps its keys (no eviction policy, no
  selection): the paged cache decodes like the packed one, step by step.
- Selection: the chosen pages (tokens) equal the torch reference's, which scores the keys
  themselves with block_scores (not the summaries kept on append) at every step, with ties
  (integer-valued keys and queries); the paged kernel equals its torch reference.
- The pool: random appends across rows of different lengths sharing one pool, and releases:
  no page lost, leaked or shared by mistake (hypothesis).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cases import cases, sampled
from test_decode_support import causal, checked_steps, module, program, rand, sink, window

from attnc.codegen.decode_plan import DecodePlanError, plan_decode
from attnc.spec.resolve import resolve_text
from attnc.compiler.lower import lower

M = "model { layers = 1, heads = 4, kv_heads = 2, head_dim = 16 }\n"


def _lossless(case):
    """(program, its module) when the case decodes and keeps its keys without a policy."""
    prog = case.program
    plan = plan_decode(prog)
    if plan is None or any(h.policy is not None or h.select is not None for row in plan.heads for h in row):
        return None
    return prog


LOSSLESS = [c for c in cases(causal=True, grid=False) if _lossless(c) is not None]


@pytest.mark.parametrize("case", sampled(LOSSLESS, 6), ids=str)
def test_paged_decodes_like_packed(case):
    prog = case.program
    _, mod = module(prog)
    m = prog.model
    D = m.head_dim or 16
    B, N, pre = 2, 21, 6
    layers = sorted({0, m.layers - 1})
    q = rand(B, m.heads, N, D, seed=1)
    k = rand(B, m.kv_heads, N, D, seed=2)
    v = rand(B, m.kv_heads, N, D, seed=3)
    packed = mod.Cache(B, dtype=torch.float32, head_dim=D)
    paged = mod.PagedCache(B, dtype=torch.float32, head_dim=D, pages=4 * m.kv_heads * B)
    for layer in layers:
        for c in (packed, paged):
            c.append(layer, k[:, :, :pre], v[:, :, :pre])
    checked = checked_steps(pre, N)  # page 1 begins at 16
    for t in range(pre, N):
        for layer in layers:
            for c in (packed, paged):
                c.append(layer, k[:, :, t : t + 1], v[:, :, t : t + 1])
            if t not in checked:
                continue
            qs = q[:, :, t : t + 1]
            want = mod.decode_reference(qs, packed.view(layer))
            torch.testing.assert_close(paged.decode(layer, qs), want, atol=1e-5, rtol=0)
            torch.testing.assert_close(paged.decode_reference(layer, qs), want, atol=1e-5, rtol=0)
            for b in range(B):  # stripes: both hold a few dead keys (masked), not the same ones
                for h in range(m.kv_heads):
                    if not paged._layers[layer].rules[h].sres:
                        assert paged.kept(layer, b, h) == packed.kept(layer, b, h)
    for layer in layers:  # one memoised launch per geometry, not one per step
        assert 1 <= len(paged._layers[layer].attend) <= 2


def _select_module(rule: str, heads=4, kv_heads=2, max_step=1):
    text = f"model {{ layers = 1, heads = {heads}, kv_heads = {kv_heads}, head_dim = 16 }}\n"
    text += f"pattern p = causal\ncache {{ {rule} }}\n"
    prog = lower(resolve_text(text, "sel.attn"))
    return module(prog, max_step=max_step)[1]


def _ints(*shape, seed):
    """Small integers as floats: every score is exact, so ties are real ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, shape, generator=g).float()


@pytest.mark.parametrize(
    "rule",
    sampled(
        [
            "select quest(48, page = 16)",
            "select quest(32, page = 16, bits = 8) keep sink(4) keep recent(20) aggregate = max",
            "select mean(32, page = 16) keep recent(3)",
            "select tokens(9) keep sink(2) keep recent(4) aggregate = sum",
            "kv_heads 1 { select quest(16, page = 16) }",
            "kv_heads 0 { select tokens(5) keep recent(2) }",
            "select quest(32, page = 16) keep recent(17) | 2",
        ],
        3,
    ),
)
def test_selection_matches_reference_step_by_step(rule):
    """A rule ending in `| T` decodes T tokens per step (max_step = T); selecting heads beside
    heads that do not select share the kernel's launch."""
    rule, _, step = rule.partition(" | ")
    T = int(step or 1)
    mod = _select_module(rule, max_step=T)
    B, H, Hk, D, N = 2, 4, 2, 16, 68  # steps 40 .. 67: pages 3 and 4 begin at 48 and 64
    q, k, v = _ints(B, H, N, D, seed=1), _ints(B, Hk, N, D, seed=2), rand(B, Hk, N, D, seed=3)
    cache = mod.PagedCache(B, dtype=torch.float32)
    cache.append(0, k[:, :, :40], v[:, :, :40])
    checked = checked_steps(40, N - T + 1, step=T)  # across both page boundaries
    for t in range(40, N - T + 1, T):
        cache.append(0, k[:, :, t : t + T], v[:, :, t : t + T])
        if t not in checked:
            continue
        qs = q[:, :, t : t + T]
        out = cache.decode(0, qs)
        got = cache.selected(0)
        ref = cache.decode_reference(0, qs)
        want = cache.selected(0)  # decode_reference chose again, from the keys
        assert got.keys() == want.keys() and got
        for h in got:
            assert torch.equal(got[h], want[h]), (t, h, got[h], want[h])
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_selection_ties_go_to_the_lowest_page():
    """Equal keys everywhere: every page scores the same, the first pages are chosen."""
    mod = _select_module("select quest(32, page = 16)")
    B, Hk, D = 1, 2, 16
    cache = mod.PagedCache(B, dtype=torch.float32)
    ones = torch.ones(B, Hk, 100, D)
    cache.append(0, ones, ones)
    cache.decode(0, torch.ones(B, 4, 1, D))
    assert cache.selected(0)[0].tolist() == [[0, 1]]  # pages 0, 1 of 0..5; page 6 is the newest


def test_selection_steps_of_different_lengths_share_one_cache():
    """Steps of 2 and then 5 tokens (4 query heads a KV head: 8 and 20 rows to score): each
    scores every row of its own step. Only the 5-token step's last rows (query head 3) look for
    page 1, so a step scored with the 2-token step's 16 rows would choose page 0 (all ties)."""
    mod = _select_module("select quest(16, page = 16)", heads=4, kv_heads=1, max_step=5)
    D = 16
    k = torch.zeros(1, 1, 69, D)
    k[0, 0, 20, 0] = 50.0  # page 1
    cache = mod.PagedCache(1, dtype=torch.float32)
    cache.append(0, k[:, :, :62], k[:, :, :62])
    cache.append(0, k[:, :, 62:64], k[:, :, 62:64])
    cache.decode(0, torch.zeros(1, 4, 2, D))
    cache.append(0, k[:, :, 64:69], k[:, :, 64:69])
    q = torch.zeros(1, 4, 5, D)
    q[0, 3, 1:, 0] = 1.0
    cache.decode(0, q)
    got = cache.selected(0)[0].tolist()
    cache.decode_reference(0, q)
    assert got == cache.selected(0)[0].tolist() == [[1]]


def test_mean_keys_are_scored_in_the_cache_dtype():
    """A bf16 cache scores a page by its mean key rounded to bf16: page 2's mean, 1 + 2^-11 in
    float32, rounds to page 1's 1.0, so the tie goes to page 1 (float32 means would choose
    page 2), in the kernel and in the torch reference alike."""
    mod = _select_module("select mean(16, page = 16)", heads=1, kv_heads=1)
    D = 16
    k = torch.zeros(1, 1, 64, D, dtype=torch.bfloat16)
    k[0, 0, 16:48] = 1.0  # pages 1 and 2
    k[0, 0, 40] = 1.0 + 2.0**-7  # one key of page 2 a bf16 step above 1
    cache = mod.PagedCache(1, dtype=torch.bfloat16)
    cache.append(0, k, k)
    q = torch.ones(1, 1, 1, D, dtype=torch.bfloat16)
    cache.decode(0, q)
    got = cache.selected(0)[0].tolist()
    cache.decode_reference(0, q)
    assert got == cache.selected(0)[0].tolist() == [[1]]


def test_selection_reads_the_keep_rules_and_the_chosen_pages():
    """A query that matches one page only: the output is that page's values (and the newest
    page's), never an unread page's."""
    mod = _select_module("select quest(16, page = 16)", heads=1, kv_heads=1)
    D = 16
    k = torch.zeros(1, 1, 64, D)
    v = torch.zeros(1, 1, 64, D)
    k[0, 0, 20, 0] = 50.0  # page 1
    v[0, 0, 20] = 1.0
    cache = mod.PagedCache(1, dtype=torch.float32)
    cache.append(0, k, v)
    q = torch.zeros(1, 1, 1, D)
    q[..., 0] = 1.0
    out = cache.decode(0, q)
    assert cache.selected(0)[0].tolist() == [[1]]
    assert out[0, 0, 0, 0] > 0.99


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.floats(-1000, 1000, width=32), min_size=12, max_size=12),
    st.sampled_from([1e-9, 1e-3, 1.0, 1e3]),
)
def test_fp8_bounds_round_outward_by_at_most_one_step(values, mult):
    """Quest's stored summaries: lo8 * scale <= lo and hi8 * scale >= hi (the bound stays an
    upper bound), each within one float8 e4m3 step (1/8 of the value, or the smallest
    subnormal step 2^-9 times the scale); zeros, tiny and large values; the scaled values fit."""
    from attnc.codegen.support.paged import fp8_bounds

    x = torch.tensor(values).view(2, 6) * mult
    lo, hi = torch.minimum(x, -x.flip(-1)), torch.maximum(x, x.flip(-1))
    lo[0, 0] = hi[0, 0] = 0.0
    lo8, hi8, scale = fp8_bounds(lo, hi)
    assert lo8.dtype == torch.float8_e4m3fn and scale.shape == (2,)
    low, high = lo8.float() * scale[:, None], hi8.float() * scale[:, None]
    assert (low <= lo).all() and (high >= hi).all()
    step = torch.maximum(torch.maximum(lo.abs(), hi.abs()) / 8, 2.0**-9 * scale[:, None])
    assert (lo - low <= step).all() and (high - hi <= step).all()
    assert (lo8.float().abs() <= 256).all() and (hi8.float().abs() <= 256).all()


def test_quest_summaries_are_page_bounds_of_the_held_keys():
    """The summaries kept on append (pages filled over several appends, rows of different
    lengths, partial pages) are page_bounds of each head's keys in position order: the rule
    the torch reference scores with."""
    mod = _select_module("select quest(32, page = 16, bits = 8)")
    B, Hk, D = 2, 2, 16
    k = rand(B, Hk, 70, D, seed=7).to(torch.bfloat16) * 5
    cache = mod.PagedCache(B, dtype=torch.bfloat16)
    cache.append(0, k[:, :, :21], k[:, :, :21])
    cache.append(0, k[1:, :, 21:50], k[1:, :, 21:50], rows=[1])
    cache.append(0, k[:, :, 50:53], k[:, :, 50:53])
    L = cache._layers[0]
    for b, n in ((0, 24), (1, 53)):
        keys = torch.cat([k[b, :, :21], k[b, :, 50:53]], 1) if b == 0 else k[b, :, :53]
        for h in range(Hk):
            pages = torch.tensor(list(L.tables[b][h].values()))
            lo, hi = mod.page_bounds(keys[h], 16, 8)
            assert len(pages) == -(-n // 16)
            assert torch.equal(L.smin[pages].float() * L.sscale[pages, None], lo)
            assert torch.equal(L.smax[pages].float() * L.sscale[pages, None], hi)


@pytest.mark.parametrize("bits,tile", [(8, None), (16, None), (16, (4, 4, 3, 2))])
def test_selection_on_random_keys_matches_reference(bits, tile):
    """bf16 keys and queries with no ties: the step chooses the pages the torch reference
    chooses from the keys (page_bounds' rounding applied alike), and decodes like it; also
    with the score kernel's programs looping over several blocks of units (`tile`)."""
    mod = _select_module(f"select quest(48, page = 16, bits = {bits}) keep sink(4)", heads=8, kv_heads=2)
    B, H, Hk, D, N = 2, 8, 2, 16, 150
    q, k, v = (
        rand(*s, seed=i, dtype=torch.bfloat16) for i, s in ((8, (B, H, N, D)), (9, (B, Hk, N, D)), (10, (B, Hk, N, D)))
    )
    cache = mod.PagedCache(B, dtype=torch.bfloat16)
    cache.score_tile = tile or cache.score_tile
    cache.append(0, k[:, :, :140], v[:, :, :140])
    for t in range(140, 143):
        cache.append(0, k[:, :, t : t + 1], v[:, :, t : t + 1])
        out = cache.decode(0, q[:, :, t : t + 1])
        got = cache.selected(0)
        ref = cache.decode_reference(0, q[:, :, t : t + 1])
        for h, want in cache.selected(0).items():
            assert torch.equal(got[h], want), (t, h, got[h], want)
        torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=0)


# ------------------------------------------------------------------ the pool


RING = program(causal(sink(2), window(5)), heads=2, kv_heads=2)
MIXED = program([causal()] * 2 + [causal(sink(1), window(7))] * 2)


def _audit(cache, layer):
    """No page lost, leaked or shared: every pool page is free or held by exactly the one
    (row, head) whose table names it."""
    L = cache._layers[layer]
    pool = L.pool
    held = [(pg, (b, h)) for b, row in enumerate(L.tables) for h, t in enumerate(row) for pg in t.values()]
    pages = [pg for pg, _ in held]
    assert len(pages) == len(set(pages)), "a page is in two tables"
    assert dict(held) == pool.owner, "the pool's owners differ from the tables"
    free = pool._free
    assert len(free) == len(set(free)) and not set(free) & set(pages), "a free page is held"
    assert len(free) + len(pages) == pool.capacity, "a page is lost"
    for b, row in enumerate(L.tables):
        n = L.n[b]
        for h, t in enumerate(row):
            if L.rules[h].kind == "lossy":  # H2O, TOVA: pages in slot order, within the capacity
                cap = -(-(next(c for c in L.classes if h in c.heads).budget + 1) // cache.page)
                assert list(t) == list(range(len(t))) and -(-L.held[b][h] // cache.page) <= len(t) <= cap
                assert not t or L.list[b, h, : len(t)].tolist() == list(t.values())
                continue
            sink_, lo = L.bounds(h, n)
            P = cache.page
            live = {p // P for p in range(n) if p < sink_ or p >= lo}
            first = -(-n // P)  # pages from here on are reserved ahead (quiet steps open them), not read
            ahead = set(range(first, first + cache._ahead(L, b, h)))
            lingering = set(t) - live - ahead  # a window's page that died since a page last opened
            assert live <= set(t) and len(lingering) <= 1, (b, h, sorted(t), sorted(live))
            assert all(lp * P >= sink_ and (lp + 1) * P <= lo for lp in lingering)
            assert L.list is not None or not t
            assert L.list is None or L.list[b, h, : len(t)].tolist() == list(t.values())
            assert L.list is None or L.llen[b, h].item() == len(t) - len(ahead)
            assert L.lo is None or L.lo[b, h].item() == lo  # the device bounds (a quiet step moves them there)
    assert L.ntok is None or L.ntok.tolist() == L.n


def _full_pool_kept_no_reserve(cache, appended: dict) -> bool:
    """After a fixed pool ran out: no table holds a page reserved ahead past what the failed
    append was placing (appended: row -> its tokens), which the pool could have taken back."""
    L, P = cache._layers[0], cache.page
    for b, tabs in enumerate(L.tables):
        end = (L.n[b] + appended.get(b, 0) - 1) // P
        if any(t and next(reversed(t)) > end and next(reversed(t)) * P >= L.n[b] for t in tabs):
            return False
    return True


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([RING, MIXED]),
    st.sampled_from([None, 12, 40]),
    st.lists(
        st.tuples(
            st.sampled_from(["append", "release", "steps"]), st.sets(st.integers(0, 2), min_size=1), st.integers(1, 40)
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_pool_random_appends(prog, pages, ops):
    # a fixed pool (pages) may run out: then it must have taken back every page reserved ahead
    # (reserves never make an append fail), and the example ends there
    _, mod = module(prog)
    cache = mod.PagedCache(3, dtype=torch.float32, head_dim=16, pages=pages)
    for op, rows, T in ops:
        rows = sorted(rows)
        try:
            if op == "release":
                cache.release(rows[0])
            elif op == "steps":  # one-token steps of every row: quiet where they can be
                x = torch.zeros(3, 2, 1, 16)
                for _ in range(T):
                    rows = [0, 1, 2]
                    cache.append(0, x, x)
                    _audit(cache, 0)
            else:
                x = torch.zeros(len(rows), 2, T, 16)
                cache.append(0, x, x, rows=rows)
        except mod.CacheError as e:
            assert pages is not None and "pages are all held" in str(e)
            assert _full_pool_kept_no_reserve(cache, dict.fromkeys(rows, 1 if op == "steps" else T))
            return
        _audit(cache, 0)


def _held(cache, layer, b, h):
    """{position: (key, value)} of what one head of one row holds (its pages, less its masks)."""
    L, P = cache._layers[layer], cache.page
    keep = set(cache.kept(layer, b, h))
    out = {}
    for page in L.tables[b][h].values():
        for slot in range(page * P, (page + 1) * P):
            if L.pos[slot].item() in keep:
                out[L.pos[slot].item()] = (L.k[slot].tolist(), L.v[slot].tolist())
    return out


@pytest.mark.parametrize("prog, quiet_steps, came_round", [(MIXED, 50, 1), (RING, 58, 3)])
def test_quiet_steps_write_where_the_full_path_would(prog, quiet_steps, came_round):
    # one-token steps of every row take the quiet path (one kernel on the device state; pages
    # open from the reserve, and a window's dead page moves to the reserve's end); twin caches,
    # one forced through the full path, hold the same tokens and device bounds after every
    # step and decode alike, across page boundaries and window deaths (pages of 16, windows of
    # 7 or 5, prompts of 3 and 20 tokens; 60 steps: the windows' pages come round again; with
    # dense heads beside them, a step that finds their reserve used up takes the full path; a
    # reserve never grows the pool, so a step may also find none while the pool is small)
    _, mod = module(prog)
    quiet, full = (mod.PagedCache(2, dtype=torch.float32, head_dim=16) for _ in range(2))
    for c in (quiet, full):
        c.append(0, rand(1, 2, 3, 16, seed=1), rand(1, 2, 3, 16, seed=2), rows=[0])
        c.append(0, rand(1, 2, 20, 16, seed=3), rand(1, 2, 20, 16, seed=4), rows=[1])
    taken = moved = 0
    for t in range(60):
        k, v = rand(2, 2, 1, 16, seed=10 + t), rand(2, 2, 1, 16, seed=100 + t)
        full._layers[0].fast = None  # disarmed: the full path
        a, b = quiet._layers[0], full._layers[0]
        state, lp0 = a.fast, [list(r) for r in getattr(a, "lp0", [])]
        quiet.append(0, k, v)
        full.append(0, k, v)
        taken += state is not None and a.fast is state  # a quiet step keeps its state
        moved += state is not None and a.fast is state and a.lp0 != lp0  # a window's page came round
        assert a.n == b.n
        for r in range(2):
            for h in range(2):
                assert _held(quiet, 0, r, h) == _held(full, 0, r, h), (t, r, h)
        for name in ("ntok", "lo"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (t, name)
        assert torch.equal(a.fast[0], a.ntok[:, None].expand(-1, 2))  # each head's next position
        _audit(quiet, 0)
        q = rand(2, quiet.spec.cache.decode.heads, 1, 16, seed=200 + t)
        torch.testing.assert_close(quiet.decode(0, q), full.decode_reference(0, q), atol=1e-5, rtol=0)
    assert taken >= quiet_steps and moved >= came_round  # counts of paths taken (no timing): quiet steps, reused pages


def test_rows_of_different_lengths_decode_like_the_reference():
    _, mod = module(MIXED)
    cache = mod.PagedCache(2, dtype=torch.float32, head_dim=16)
    cache.append(0, rand(2, 2, 9, 16, seed=1), rand(2, 2, 9, 16, seed=2))
    cache.append(0, rand(1, 2, 30, 16, seed=3), rand(1, 2, 30, 16, seed=4), rows=[1])
    q = rand(2, 4, 1, 16, seed=5)
    assert cache.seen(0) == [9, 39]
    torch.testing.assert_close(cache.decode(0, q), cache.decode_reference(0, q), atol=1e-5, rtol=0)


def test_fixed_pool_full_is_an_error():
    _, mod = module(MIXED)
    cache = mod.PagedCache(1, dtype=torch.float32, head_dim=16, pages=2)
    x = torch.zeros(1, 2, 16, 16)
    cache.append(0, x, x)
    with pytest.raises(mod.CacheError, match="pages are all held"):
        cache.append(0, x, x)


@pytest.mark.parametrize(
    "body, message",
    [
        ("pattern p = causal & window(8)\ncache { select quest(64) }", "select reads pages of a whole cache"),
        (
            "pattern p = causal\ncache { kv_heads 0 { select quest(64) } kv_heads 1 { select mean(64, page = 32) } }",
            "share one page size",
        ),
        (
            "pattern p = causal\ncache { kv_heads 0 { select quest(64) } kv_heads 1 { select quest(64, bits = 8) } }",
            "share one summary precision",
        ),
    ],
)
def test_selection_plan_errors(body, message):
    prog = lower(resolve_text(M + body, "bad.attn"))
    with pytest.raises(DecodePlanError, match=message):
        plan_decode(prog).context()


# ------------------------------------------------------------------ the step's kernels


@pytest.mark.parametrize(
    "rule, topk_block",
    [
        ("select quest(48, page = 16, bits = 8) keep sink(3)", None),  # GQA 4, several splits, float8 summaries
        pytest.param(  # token selection, top-k over blocks of 16 units (multi-block top-k: the other two cases)
            "select tokens(21) keep recent(5) aggregate = max", 16, marks=pytest.mark.exhaustive
        ),
        ("select quest(32, page = 16) keep recent(17) | 2", 2),  # two tokens a step, blocks of 2 pages
    ],
)
def test_selection_split_kernel_matches_reference(rule, topk_block, monkeypatch):
    """The step's three launches against the torch reference, with many small splits (block_n
    16: most splits end inside a page, the last page of a row is partial at most steps), 4
    query heads per KV head, rows of different lengths, and the top-k's multi-block path."""
    rule, _, step = rule.partition(" | ")
    T = int(step or 1)
    mod = _select_module(rule, heads=8, kv_heads=2, max_step=T)
    if topk_block:
        monkeypatch.setattr(mod, "_PG_TOPK_BLOCK", topk_block)
    config = mod.DecodeConfig(block_n=16, min_split=16, programs_per_sm=64)
    B, H, Hk, D, N = 2, 8, 2, 16, 60
    q, k, v = _ints(B, H, N, D, seed=4), _ints(B, Hk, N, D, seed=5), rand(B, Hk, N, D, seed=6)
    cache = mod.PagedCache(B, dtype=torch.float32)
    cache.append(0, k[:, :, :40], v[:, :, :40])
    cache.append(0, k[1:, :, 40:43], v[1:, :, 40:43], rows=[1])  # row 1 runs 3 tokens ahead
    checked = checked_steps(40, N - T - 2, step=T, margin=3)  # row 1 reaches page 3 at t = 45, row 0 at 48
    for t in range(40, N - T - 2, T):
        kk = torch.cat([k[:1, :, t : t + T], k[1:, :, t + 3 : t + 3 + T]])
        vv = torch.cat([v[:1, :, t : t + T], v[1:, :, t + 3 : t + 3 + T]])
        cache.append(0, kk, vv)
        if t not in checked:
            continue
        qs = q[:, :, t : t + T]
        out = cache.decode(0, qs, config=config)
        got = cache.selected(0)
        ref = cache.decode_reference(0, qs)
        want = cache.selected(0)
        for h in got:
            assert torch.equal(got[h], want[h]), (t, h, got[h], want[h])
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_topk_kernel_ties_and_short_rows():
    """_pg_topk_kernel alone on hand-made score rows: ties go to the lowest unit, -inf and NaN
    are never chosen, a row with fewer finite scores than the budget takes all of them, -0.0
    ties +0.0; against block_scores.top_blocks."""
    mod = _select_module("select quest(64, page = 16)", heads=2, kv_heads=1)
    cache = mod.PagedCache(2, dtype=torch.float32)
    x = torch.zeros(2, 1, 16 * 12, 16)
    cache.append(0, x, x)
    L = cache._layers[0]
    inf = float("inf")
    rows = torch.tensor(
        [
            [1.0, 3.0, 3.0, -0.0, 0.0, 3.0, 0.0, -inf, 2.0, 3.0, -inf, -inf],
            [-inf, 5.0, float("nan"), -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf],
        ]
    )[:, None, :]
    for block in (16, 4):
        mod._PG_TOPK_BLOCK, old = block, mod._PG_TOPK_BLOCK
        try:
            cache._top(L, rows.clone(), 1, 0)
        finally:
            mod._PG_TOPK_BLOCK = old
        want = mod.top_blocks(torch.where(torch.isnan(rows), -inf, rows), 4)
        assert torch.equal(L.chosen_t[0], want), (block, L.chosen_t[0], want)
        assert L.chosen_t[0].tolist() == [[[1, 2, 5, 9]], [[1, -1, -1, -1]]]
        # the keep rules (the newest page, 11) come first, then the chosen pages' pool pages
        for b, n in ((0, 4), (1, 1)):
            assert int(L.slen[b, 0]) == 1 + n
            lst = L.list[b, 0].tolist()
            assert L.sel[b, 0, : 1 + n].tolist() == [lst[11]] + [lst[u] for u in want[b, 0, :n].tolist()]


@pytest.mark.skipif(not __import__("test_codegen_support").have_ptxas(), reason="no ptxas in the triton install")
def test_paged_kernels_compile_for_sm90():
    """The step's kernels (and the H2O / TOVA step's) compile for Hopper through Triton's own
    ptxas (the interpreter accepts code the GPU compiler rejects) at the benchmark's shape
    (bf16, D = 128, 4 query heads per KV head), without spilling registers."""
    import json
    import os
    import subprocess
    import sys

    text = "model { layers = 1, heads = 32, kv_heads = 8, head_dim = 128 }\npattern p = causal\n"
    prog = lower(resolve_text(text + "cache { select quest(4096, page = 16) }\n", "q.attn"))
    path = module(prog)[1].__file__
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(__file__), "decode_step_sm90.py")
    res = subprocess.run([sys.executable, script, path], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    usage = json.loads(res.stdout.strip().splitlines()[-1])
    for name, (shared, regs, stack) in usage.items():
        assert stack == 0 and shared <= 232448, (name, shared, regs, stack)


DEPENDENT_KERNELS = ("_kv_append_kernel", "_kv_update_kernel", "_dec_fwd_kernel", "_dec_reduce_kernel",
                     "_pg_score_kernel", "_pg_topk_kernel", "_pg_fwd_kernel", "_pg_append_kernel")  # fmt: skip


def test_decode_step_kernels_wait_for_the_kernel_before_them_first():
    """On Hopper the decode step's kernels launch as programmatic dependents: their programs may
    start while the kernel before them on the stream still runs. Each one's first statement
    (after its docstring) waits for it, so that none reads or writes memory early; so does
    every other kernel of a generated module that declares PDL."""
    import ast
    import inspect
    import textwrap

    text = "model { layers = 1, heads = 4, kv_heads = 2, head_dim = 16 }\npattern p = causal\n"
    mod = module(lower(resolve_text(text + "cache { select quest(64, page = 16) }\n", "q.attn")))[1]
    kernels = {n: k for n, k in vars(mod).items() if "PDL" in getattr(k, "arg_names", ()) and n != "wait_previous"}
    assert set(DEPENDENT_KERNELS) <= set(kernels)
    for name, kernel in kernels.items():
        body = ast.parse(textwrap.dedent(inspect.getsource(kernel.fn))).body[0].body
        first = body[1] if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body[0]
        assert ast.unparse(first) == "wait_previous(PDL)", f"{name} starts with {ast.unparse(first)}"


def test_programs_one_sm_holds():
    """The attention's splits stop at what one SM holds at once (one wave of programs): an
    H100's limits, from registers, shared memory and warps."""
    from types import SimpleNamespace

    from attnc.codegen.support.paged import _resident

    assert _resident(164, 22528, 4) == 3  # 164 registers: 5376 per warp, 3 x 4 warps fit 65536
    assert _resident(122, 13312, 4) == 4
    assert _resident(32, 100_000, 4) == 2  # shared memory
    assert _resident(32, 0, 16) == 4  # warps
    assert _resident(164, 0, 4, SimpleNamespace(regs_per_multiprocessor=32768)) == 1


@settings(max_examples=12, deadline=None)
@given(
    st.lists(st.sampled_from([float("-inf"), -1.5, -0.0, 0.0, 1.0, 2.0, 2.5]), min_size=24, max_size=24),
    st.integers(1, 6),
    st.sampled_from([4, 8192]),
)
def test_topk_kernel_is_top_blocks(values, units, block):
    """_pg_topk_kernel's choice is block_scores.top_blocks' on random rows with many ties."""
    mod = _select_module(f"select quest({16 * units}, page = 16)", heads=2, kv_heads=1)
    cache = mod.PagedCache(2, dtype=torch.float32)
    x = torch.zeros(2, 1, 16 * 12, 16)
    cache.append(0, x, x)
    L = cache._layers[0]
    rows = torch.tensor(values).view(2, 1, 12)
    mod._PG_TOPK_BLOCK, old = block, mod._PG_TOPK_BLOCK
    try:
        cache._top(L, rows.clone(), 1, 0)
    finally:
        mod._PG_TOPK_BLOCK = old
    assert torch.equal(L.chosen_t[0], mod.top_blocks(rows, units))


def _stress_rows(kind: str, nu: int, seed: int) -> torch.Tensor:
    """Two score rows of nu units that stress the top-k's radix search: many ties at the
    threshold, all equal, mostly -inf (fewer candidates than the budget), signed zeros and
    subnormals, neighbouring floats (keys that differ in their last bits: every pass runs),
    magnitudes from 2^-60 to 2^60 of both signs, magnitudes above 2^120 among -inf and NaN."""
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":
        pick = torch.tensor([-1.5, -0.0, 0.0, 1.0, 2.0, 2.5])
        return pick[torch.randint(0, 6, (2, nu), generator=g)]
    if kind == "equal":
        return torch.full((2, nu), 1.25)
    if kind == "sparse":
        row = torch.randn(2, nu, generator=g)
        return torch.where(torch.rand(2, nu, generator=g) < 0.2, row, float("-inf"))
    if kind == "zeros":
        pick = torch.tensor([-0.0, 0.0, 1e-45, -1e-45, 2e-45])
        return pick[torch.randint(0, 5, (2, nu), generator=g)]
    if kind == "close":
        bits = torch.tensor([1.0, -3.0]).view(torch.int32)[:, None] + torch.randint(0, 6, (2, nu), generator=g)
        return bits.to(torch.int32).view(torch.float32)
    if kind == "huge":  # near the ends of the keys' range, among -inf and NaN (no candidates)
        row = torch.rand(2, nu, generator=g) + 1.0
        pick = torch.tensor([2.0**120, -(2.0**120), 1.5e38, float("-inf"), float("nan")])
        return row * pick[torch.randint(0, 5, (2, nu), generator=g)]
    return torch.randn(2, nu, generator=g) * 2.0 ** torch.randint(-60, 61, (2, nu), generator=g).float()


@pytest.mark.parametrize("radix", [4, 5, 8])
@pytest.mark.parametrize("block", [8, 64])
def test_topk_kernel_radix_stress(radix, block, monkeypatch):
    """_pg_topk_kernel against block_scores.top_blocks on rows that stress its radix search
    (_stress_rows), at 4, 5 and 8 bits a pass, a row of 40 units in blocks of 8 (the multi-block
    path; 40 is no multiple of 16) and held in registers (one block of 64): the chosen units,
    -1 padded, and the read lists' lengths."""
    nu = 40
    for units in (5, 16):
        mod = _select_module(f"select quest({16 * units}, page = 16)", heads=2, kv_heads=1)
        monkeypatch.setattr(mod, "_PG_RADIX", radix)
        monkeypatch.setattr(mod, "_PG_TOPK_BLOCK", block)
        cache = mod.PagedCache(2, dtype=torch.float32)
        x = torch.zeros(2, 1, 16 * nu, 16)
        cache.append(0, x, x)
        L = cache._layers[0]
        for seed, kind in enumerate(("ties", "equal", "sparse", "zeros", "close", "wide", "huge")):
            rows = _stress_rows(kind, nu, seed)[:, None, :]
            cache._top(L, rows.clone(), 1, 0)
            want = mod.top_blocks(torch.where(rows.isnan(), float("-inf"), rows), units)
            assert torch.equal(L.chosen_t[0], want), (kind, units, L.chosen_t[0], want)
            assert L.slen[:, 0].tolist() == [1 + int((w >= 0).sum()) for w in want[:, 0]], kind


def test_a_fixed_pool_takes_back_reserved_pages_before_it_runs_short():
    # row 0 holds pages reserved ahead (6 of the pool's 10); row 1's prompt needs 5 of the 4
    # left: a reserved page goes back to the pool (no error), and both rows step on
    _, mod = module(MIXED)
    cache = mod.PagedCache(2, dtype=torch.float32, head_dim=16, pages=10)
    x = rand(1, 2, 16, 16, seed=1)
    cache.append(0, x, x, rows=[0])
    assert cache.pages_held(0) == [[3, 3], [0, 0]]  # 1 page each, 2 ahead
    y = rand(1, 2, 48, 16, seed=2)
    cache.append(0, y, y, rows=[1])
    _audit(cache, 0)
    assert cache.pages_held(0)[1] == [3, 2]  # causal: 3 pages; sink(1) + window(7): pages 0 and 2
    for t in range(3):
        z = rand(1, 2, 1, 16, seed=3 + t)
        cache.append(0, z, z, rows=[0])
        _audit(cache, 0)
    q = rand(2, 4, 1, 16, seed=9)
    torch.testing.assert_close(cache.decode(0, q), cache.decode_reference(0, q), atol=1e-5, rtol=0)
