"""Lossless patterns: decoding token by token through the generated cache and decode kernel
gives prefill attention with the full mask (so liveness keeps every key a query needs),
the store holds exactly the layout's tokens, and the Triton append equals its torch twin."""

from __future__ import annotations

import pytest
import torch

from cases import sampled
from test_decode_support import (
    causal,
    chunk,
    full_mask_attention,
    liveness_tokens,
    module,
    program,
    prim,
    rand,
    sink,
    stride,
    window,
)
from strategies import op

from attnc.compiler.lower import lower_expr

SW = causal(sink(2), window(5))
CASES = {
    "dense_gqa": (program(causal()), 14),
    "sink_window": (program(SW), 22),
    "stripes_window": (program(causal(stride(4, 1), window(3))), 22),
    "chunk": (program(causal(chunk(5))), 17),
    "duo_mix": (program([causal()] * 2 + [causal(sink(2), window(4))] * 2), 20),
    "mixed_in_group": (program([causal(window(3)), causal(sink(1), window(6))] * 2), 18),
    "global": (program(lower_expr(op("&", prim("causal"), prim("global", size=3)))), 16),
    "dilated": (program(lower_expr(op("&", prim("causal"), prim("dilated", size=3, dilation=2)))), 16),
    "power": (program(lower_expr(op("&", prim("causal"), prim("power", block=2)))), 14),
    "per_layer": (program([[causal()] * 4, [causal(window(4))] * 4], layers=2), 14),
    "mqa": (program(SW, heads=4, kv_heads=1), 16),
}


def _decode_all(prog, mod, N, steps, dtype=torch.float32, config=None, prefill=0, seed=0, B=2):
    """Append and decode the sequence in steps of the given sizes, B sequences at once; returns
    outputs (B, H, N, D) for the decoded positions (NaN elsewhere) per layer, and the cache."""
    H, Hk, D = prog.model.heads, prog.model.kv_heads, prog.model.head_dim
    q = rand(B, H, N, D, dtype=dtype, seed=seed)
    k = rand(B, Hk, N, D, dtype=dtype, seed=seed + 1)
    v = rand(B, Hk, N, D, dtype=dtype, seed=seed + 2)
    cache = mod.Cache(B, dtype=dtype)
    outs = [torch.full((B, H, N, D), float("nan"), dtype=torch.float64) for _ in range(prog.model.layers)]
    t = 0
    kw = {} if config is None else {"config": config}
    if prefill:
        for layer in range(prog.model.layers):
            cache.append(layer, k[:, :, :prefill], v[:, :, :prefill])
        t = prefill
    i = 0
    while t < N:
        T = min(steps[i % len(steps)], N - t)
        i += 1
        for layer in range(prog.model.layers):
            cache.append(layer, k[:, :, t : t + T], v[:, :, t : t + T])
            qs = q[:, :, t : t + T]
            o = cache.decode(layer, qs, **kw)
            r = mod.decode_reference(qs, cache.view(layer))
            torch.testing.assert_close(o.double(), r.double(), atol=2e-2 if dtype != torch.float32 else 1e-5, rtol=0)
            outs[layer][:, :, t : t + T] = o.double()
        t += T
    return q, k, v, outs, cache


@pytest.mark.parametrize("name", sampled(list(CASES), 6))
def test_token_by_token_equals_full_mask(name):
    """One sequence, two for duo_mix (so do the tests below): the kernels' batch indexing
    does not depend on the layout."""
    prog, N = CASES[name]
    plan, mod = module(prog)
    B = 2 if name == "duo_mix" else 1
    q, k, v, outs, cache = _decode_all(prog, mod, N, [1], B=B)
    for layer in range(prog.model.layers):
        ref = full_mask_attention(prog, layer, q, k, v)
        torch.testing.assert_close(outs[layer], ref, atol=1e-5, rtol=0)
        for h, hp in enumerate(plan.heads[layer]):
            assert cache.tokens()[layer][h] == hp.layout.tokens(N)
            assert cache.kept(layer, B - 1, h) == hp.layout.held(N)


@pytest.mark.parametrize("name", ["sink_window", "stripes_window", "chunk", "duo_mix"])
def test_multi_token_steps(name):
    """max_step = 3: the ring keeps window + 2 keys and the kernel masks causally among the
    new tokens; prefill with a big append first, then steps of 1..3 tokens."""
    prog, N = CASES[name]
    plan, mod = module(prog, max_step=3)
    q, k, v, outs, cache = _decode_all(prog, mod, N + 4, [2, 3, 1], prefill=7)
    ref = full_mask_attention(prog, 0, q, k, v)
    torch.testing.assert_close(outs[0][:, :, 7:], ref[:, :, 7:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype,fused", [(torch.float16, True), (torch.bfloat16, False)])
def test_half_precision_with_splits(dtype, fused):
    """16-bit caches, and the two-pass paths (several splits per head; the merge in the
    last split's program, or in a second kernel)."""
    prog, N = CASES["duo_mix"]
    plan, mod = module(prog)
    cfg = mod.DecodeConfig(block_n=16, min_split=16, fused_reduce=fused)
    q, k, v, outs, cache = _decode_all(prog, mod, 35, [1], dtype=dtype, config=cfg, prefill=30)
    ref = full_mask_attention(prog, 0, q.double(), k.double(), v.double())
    torch.testing.assert_close(outs[0][:, :, 30:], ref[:, :, 30:], atol=3e-2, rtol=0)
    view = cache.view(0)
    assert mod.decode_split(view, 2, cfg) == 16  # the 2-pass path really ran


def test_prefill_append_keeps_only_survivors():
    """One big append into a ring: only the tokens that stay alive are written."""
    prog, _ = CASES["stripes_window"]
    plan, mod = module(prog)
    q, k, v, outs, cache = _decode_all(prog, mod, 40, [1], prefill=33)
    ref = full_mask_attention(prog, 0, q, k, v)
    torch.testing.assert_close(outs[0][:, :, 33:], ref[:, :, 33:], atol=1e-5, rtol=0)
    for h, hp in enumerate(plan.heads[0]):
        assert cache.kept(0, 0, h) == hp.layout.held(40)


@pytest.mark.parametrize("name", ["sink_window", "stripes_window", "chunk", "dense_gqa"])
def test_triton_append_equals_torch_reference(name):
    prog, N = CASES[name]
    plan, mod = module(prog, max_step=2)
    B, Hk, D = 2, prog.model.kv_heads, prog.model.head_dim
    k, v = rand(B, Hk, N, D, seed=5), rand(B, Hk, N, D, seed=6)
    a = mod.Cache(B, dtype=torch.float32, backend="triton")
    b = mod.Cache(B, dtype=torch.float32, backend="torch")
    t = 0
    for T in [9, 1, 2, 1, 2, 2, 1] * 3:
        if t + T > N:
            break
        for c in (a, b):
            c.append(0, k[:, :, t : t + T], v[:, :, t : t + T])
        t += T
        va, vb = a.view(0), b.view(0)
        assert va.slots == vb.slots
        assert torch.equal(va.lens, vb.lens)
        for off, n in va.slots:
            assert torch.equal(va.pos[:, off : off + n], vb.pos[:, off : off + n])
            assert torch.equal(va.k[:, off : off + n], vb.k[:, off : off + n])
            assert torch.equal(va.v[:, off : off + n], vb.v[:, off : off + n])


@pytest.mark.parametrize("name", ["sink_window", "stripes_window", "dense_gqa"])
def test_long_prompt_append_equals_torch_reference(name):
    """A prompt of several token blocks (the append kernel splits it over programs; the last
    program of each head writes its length), then single steps: slots, lengths, positions,
    keys and values equal the torch reference's, and the next append sees the new length."""
    prog, _ = CASES[name]
    plan, mod = module(prog)
    B, Hk, D = 2, prog.model.kv_heads, prog.model.head_dim
    k, v = rand(B, Hk, 140, D, seed=7), rand(B, Hk, 140, D, seed=8)
    a = mod.Cache(B, dtype=torch.float32, backend="triton")
    b = mod.Cache(B, dtype=torch.float32, backend="torch")
    t = 0
    for T in (130, 1, 1, 8):  # 130 tokens: three blocks of 64
        for c in (a, b):
            c.append(0, k[:, :, t : t + T], v[:, :, t : t + T])
        t += T
        va, vb = a.view(0), b.view(0)
        assert va.slots == vb.slots
        assert torch.equal(va.lens, vb.lens) and torch.equal(va.npos, vb.npos)
        for off, n in va.slots:
            assert torch.equal(va.pos[:, off : off + n], vb.pos[:, off : off + n])
            assert torch.equal(va.k[:, off : off + n], vb.k[:, off : off + n])
            assert torch.equal(va.v[:, off : off + n], vb.v[:, off : off + n])
    assert not a._layers[0].done.any()  # the program count is back at zero for the next call


@pytest.mark.parametrize("name", list(CASES))
def test_tokens_equal_liveness_analysis(name):
    """cache.tokens() (and memory()) is compiler.liveness's size, wherever the layout is exact."""
    prog, _ = CASES[name]
    plan, mod = module(prog)
    cache = mod.Cache(1, dtype=torch.float32)
    k = rand(1, prog.model.kv_heads, 60, prog.model.head_dim)
    n = 0
    for T in (1, 1, 3, 1, 9, 1, 17, 1, 2, 24):
        for layer in range(prog.model.layers):
            cache.append(layer, k[:, :, n : n + T], k[:, :, n : n + T])
        n += T
        for layer in range(prog.model.layers):
            for h, hp in enumerate(plan.heads[layer]):
                assert cache.tokens()[layer][h] == hp.layout.tokens(n)
                if hp.layout.exact:
                    assert cache.tokens()[layer][h] == liveness_tokens(prog, layer, h, n), (name, n, h)
    exact = [hp.layout.exact for row in plan.heads for hp in row]
    assert all(exact) or name in ("power",), exact  # power: every key stays, and liveness says so


def test_memory_matches_layout_formula():
    prog, _ = CASES["duo_mix"]
    plan, mod = module(prog)
    B, D = 2, prog.model.head_dim
    cache = mod.Cache(B, dtype=torch.float16, max_len=64)
    k = rand(B, 2, 64, D, dtype=torch.float16)
    for n in (1, 5, 13, 40, 64):
        cache.append(0, k[:, :, cache.seen(0) : n], k[:, :, cache.seen(0) : n])
        mem = cache.memory()[0]
        assert mem == [hp.layout.tokens(n) * 2 * D * 2 for hp in plan.heads[0]]
    assert mem == [64 * 2 * D * 2, 6 * 2 * D * 2]  # full head, sink 2 + ring 4


def test_dense_store_grows_by_doubling():
    prog, _ = CASES["duo_mix"]
    plan, mod = module(prog)
    cache = mod.Cache(1, dtype=torch.float32)
    k = rand(1, 2, 300, 16)
    cache.append(0, k[:, :, :10], k[:, :, :10])
    first = cache.allocated()[0]
    for t in range(10, 300, 37):
        cache.append(0, k[:, :, t : t + 37], k[:, :, t : t + 37])
    assert cache.allocated()[0] > first
    assert cache.kept(0, 0, 0) == list(range(300))
    assert cache.kept(0, 0, 1) == [0, 1, 296, 297, 298, 299]


def test_rerotate_positions():
    """positions = rerotate: each slot's RoPE position is its rank among the held keys, and
    the query's the number of held keys before it (StreamingLLM)."""
    from test_decode_support import policy

    prog = program(SW, cache=[policy(positions="rerotate")])
    plan, mod = module(prog)
    cache = mod.Cache(1, dtype=torch.float32)
    k = rand(1, 2, 12, 16)
    for t in range(12):
        cache.append(0, k[:, :, t : t + 1], k[:, :, t : t + 1])
    pos = cache.positions(0)[0]
    view = cache.view(0)
    for off, n in view.slots:
        orig = view.pos[0, off : off + n].tolist()
        ranks = pos[off : off + n].tolist()
        assert sorted(ranks) == list(range(n))
        assert [o for _, o in sorted(zip(ranks, orig))] == sorted(orig)
    assert cache.query_positions(0).tolist() == [[[6], [6]]]  # 7 held keys, the newest at rank 6


def test_kernel_masks_wherever_the_store_holds_invisible_keys():
    """The mask-free fast path only where every stored key is visible (checked at the
    patterns' own scale: power(64) and strided(128) differ from causal only far away)."""
    from attnc.codegen.decode_plan import plan_decode

    far = [
        lower_expr(op("&", prim("causal"), prim("power", block=64))),
        lower_expr(op("&", prim("causal"), op("|", prim("window", size=128), prim("strided", stride=128)))),
        causal(chunk(8192)),
        causal(stride(64, 3), window(16)),
    ]
    for p in far:
        assert plan_decode(program(p)).masked == (True,), str(p)
    for p in (causal(), causal(sink(4), window(4092)), causal(window(7))):
        assert plan_decode(program(p)).masked == (False,), str(p)
