"""Invariants of the generated cache under random sequences of appends (hypothesis), and the
errors that bad use gets."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from test_decode_support import causal, module, policy, program, rand, sink, window

from attnc.codegen.decode_plan import DecodePlanError, plan_decode
from attnc.compiler.lower import lower_expr
from strategies import examples, op, prim

LOSSY = {
    "h2o": policy(6, sink=1, recent=2, score="h2o"),
    "tova": policy(5, sink=2, recent=1, score="tova", aggregate="max"),
    "snapkv_prefill": policy(6, sink=1, score="snapkv", window=2, kernel=3),
    "snapkv_decode": policy(7, score="snapkv", timing="decode", window=1, kernel=3, pool="avg"),
    "key_norm_decode": policy(5, recent=1, score="key_norm", timing="decode"),
    "fifo": policy(5, sink=2, recent=3),
}
MAX_STEP = 2
# rows that write through the Triton append kernel; the others through its torch twin (equal by
# tests/test_decode_lossless.py), since the invariants hold or break in the eviction code
TRITON_ROWS = {"h2o", "fifo"}

appends = st.lists(
    st.one_of(st.integers(1, MAX_STEP), st.integers(1, MAX_STEP), st.integers(3, 9)), min_size=1, max_size=9
)


def _program(name):
    # kv head 0: full budget (dense, lossless); kv head 1: the lossy policy
    return program(causal(), cache=[policy("full", kv_heads=[0]), policy(**_kw(LOSSY[name]), kv_heads=[1])], name=name)


def _kw(p):
    b = p.budget.tokens
    kw = dict(sink=p.sink, recent=p.recent, aggregate=p.aggregate)
    if p.evict is not None:
        kw.update(score=p.evict.score, timing=p.evict.timing, **p.evict.options)
    return dict(budget=b, **kw)


@pytest.mark.parametrize("name", list(LOSSY))
@examples(6)
@given(steps=appends, seed=st.integers(0, 2**16))
def test_invariants_under_random_appends(name, steps, seed):
    plan, mod = module(_program(name), max_step=MAX_STEP)
    rec = LOSSY[name]  # the policy as written (keep-only ones become a ring store, no policy)
    budget, sink_ = rec.budget.tokens, rec.sink
    recent = max(rec.recent, rec.evict.options["window"] if rec.evict and rec.evict.score == "snapkv" else 0)
    timing = rec.evict.timing if rec.evict else "decode"
    after_read = (
        timing == "decode" and rec.evict is not None and rec.evict.score in ("h2o", "tova", "snapkv")
    )  # evicts at the next append
    B, D = 2, 16
    N = sum(steps)
    q, k = rand(B, 4, N, D, seed=seed), rand(B, 2, N, D, seed=seed + 1)
    cache = mod.Cache(B, dtype=torch.float32, backend="triton" if name in TRITON_ROWS else "torch")
    n = 0
    since_prefill = None  # tokens appended since the last prefill-sized append
    for T in steps:
        cache.append(0, k[:, :, n : n + T], k[:, :, n : n + T], q[:, :, n : n + T])
        n += T
        if T > MAX_STEP:
            since_prefill = 0
        elif since_prefill is not None:
            since_prefill += T
        view = cache.view(0)
        assert view.lens.tolist() == [[s[1] for s in view.slots]] * B
        assert cache.kept(0, 0, 0) == list(range(n))  # the full head loses nothing
        for b in range(B):
            kept = cache.kept(0, b, 1)
            assert len(set(kept)) == len(kept) and all(0 <= p < n for p in kept)
            if timing == "decode":  # never over budget (but for a step's own tokens, before its read)
                assert len(kept) <= budget + (T if after_read and T <= MAX_STEP else 0)
            elif since_prefill is not None:
                assert len(kept) <= budget + since_prefill
            must = set(range(min(sink_, n))) | set(range(max(n - recent, 0), n))
            assert must <= set(kept)  # kept tokens are never evicted
    if N >= 1 and steps[-1] <= MAX_STEP:
        qs = q[:, :, N - steps[-1] : N]
        torch.testing.assert_close(cache.decode(0, qs), mod.decode_reference(qs, cache.view(0)), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ errors

SW = causal(sink(2), window(4))


def test_bad_appends_are_named():
    plan, mod = module(program(SW))
    cache = mod.Cache(2, dtype=torch.float32, max_len=8)
    k = rand(2, 2, 3, 16)
    with pytest.raises(mod.CacheError, match=r"expected \(B=2, H_KV=2"):
        cache.append(0, rand(2, 3, 3, 16), rand(2, 3, 3, 16))
    with pytest.raises(mod.CacheError, match="differ"):
        cache.append(0, k, rand(2, 2, 4, 16))
    with pytest.raises(mod.CacheError, match="float16 but the cache is torch.float32"):
        cache.append(0, k.half(), k.half())
    with pytest.raises(mod.CacheError, match="layer must be an int in 0..0"):
        cache.append(1, k, k)
    with pytest.raises(mod.CacheError, match="no tokens yet"):
        cache.view(0)
    cache.append(0, k, k)
    with pytest.raises(mod.CacheError, match="head_dim 32 but this cache holds head_dim 16"):
        cache.append(0, rand(2, 2, 1, 32), rand(2, 2, 1, 32))
    cache.append(0, rand(2, 2, 5, 16), rand(2, 2, 5, 16))
    with pytest.raises(mod.CacheError, match="passes the fixed capacity max_len = 8"):
        cache.append(0, rand(2, 2, 1, 16), rand(2, 2, 1, 16))
    with pytest.raises(ValueError, match="at most max_step = 1"):
        cache.decode(0, rand(2, 4, 2, 16))
    with pytest.raises(ValueError, match="q has 3 heads"):
        cache.decode(0, rand(2, 3, 1, 16))


def test_scores_that_need_queries_say_so():
    plan, mod = module(program(causal(), cache=[policy(6, recent=1, score="h2o")]))
    cache = mod.Cache(1, dtype=torch.float32)
    with pytest.raises(mod.CacheError, match=r"evict by h2o at decode, which needs this step's queries"):
        cache.append(0, rand(1, 2, 1, 16), rand(1, 2, 1, 16))


def test_budget_below_keep_rules_is_a_plan_error():
    with pytest.raises(
        DecodePlanError, match=r"budget 5 at layer 0 is below its keep rules sink\(2\) \+ recent\(4\) = 6"
    ):
        plan_decode(program(causal(), cache=[policy(5, sink=2, recent=4, score="h2o")]))
    with pytest.raises(DecodePlanError, match=r"recent\(8\) = 9"):  # snapkv's window is kept too
        plan_decode(program(causal(), cache=[policy(6, sink=1, score="snapkv", window=8)]))
    with pytest.raises(DecodePlanError, match="below max_step = 4"):
        plan_decode(program(causal(), cache=[policy(3, score="h2o")]), max_step=4)
    with pytest.raises(DecodePlanError, match="one budget per layer"):
        plan_decode(program(causal(), layers=2, cache=[policy(("list", [4, 4, 4]), score="h2o")]))
    with pytest.raises(DecodePlanError, match="kernel must be odd"):
        plan_decode(program(causal(), cache=[policy(8, score="snapkv", window=2, kernel=4)]))


def test_non_causal_patterns_have_no_decode():
    assert plan_decode(program(lower_expr(prim("window", left=2, right=2)))) is None
    assert plan_decode(program(lower_expr(op("|", prim("causal"), prim("sink", size=2))))) is None
    assert plan_decode(program(causal(window(3)))) is not None
