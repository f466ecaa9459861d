"""The decode step with its own keys and values, `Cache.decode(layer, q, k, v)`: a lossless
layer appends them inside the decode kernel. Against append-then-decode on a twin cache (the
same outputs, the same store afterwards) and against attention with the full mask, for every
case of the shared matrix that decodes (tests/cases.py), at the default split and at small
splits (several splits per head, the new key in the last); left-padded batches, fixed
capacities (the grid of the capacities, programs past a row's keys), several tokens per step,
and lossy layers (which take append, then decode)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_decode_patterns import _program
from test_codegen_support import have_ptxas
from test_decode_support import causal, chunk, full_mask_attention, module, policy, program, rand, sink, stride, window

from attnc.codegen.decode_plan import plan_decode
from cases import CASES, sampled

N, PREFILL = 68, 61
SPLITS = (None, 16, 8)  # per step, in turn: the default, then two or more splits per head


def _store(cache, layer):
    """The layer's store as decode reads it: (slots read per head, their keys, values,
    positions), the lengths and the rows' positions."""
    view = cache.view(layer)
    lens = view.lens.tolist()
    L = cache._layers[layer]
    out = []
    for b in range(view.k.shape[0]):
        for h, (off, _) in enumerate(view.slots):
            assert lens[b][h] <= L.heads[h].cap  # the kernel wrote within the head's region
            sl = slice(off, off + lens[b][h])
            out.append((view.k[b, sl], view.v[b, sl], view.pos[b, sl]))
    return out, view.lens, view.npos


def _assert_same_store(a, b, layer):
    (sa, la, na), (sb, lb, nb) = _store(a, layer), _store(b, layer)
    assert torch.equal(la, lb) and torch.equal(na, nb)
    for x, y in zip(sa, sb):
        for u, w in zip(x, y):
            assert torch.equal(u, w)
    assert a.tokens() == b.tokens() and a.seen(layer) == b.seen(layer)


def _steps(mod, prog, layers, q, k, v, *, batch=1, max_len=None, T=1, lengths=None, end=N):
    """Decode tokens PREFILL .. end - 1, T per step, fused and append-then-decode on twin caches;
    returns the fused outputs per layer (B, H, end - PREFILL, D), checked against the twin's."""
    D = q.shape[-1]
    fused, twin = (mod.Cache(batch, dtype=torch.float32, head_dim=D, max_len=max_len) for _ in range(2))
    for cache in (fused, twin):
        for layer in layers:
            cache.append(layer, k[:, :, :PREFILL], v[:, :, :PREFILL], lengths=lengths)
    outs = {layer: [] for layer in layers}
    for i, t in enumerate(range(PREFILL, end, T)):
        qs, ks, vs = (x[:, :, t : t + T].contiguous() for x in (q, k, v))  # contiguous: the memo serves
        split = SPLITS[i % len(SPLITS)]
        for layer in layers:
            got = fused.decode(layer, qs, ks, vs, split=split)
            twin.append(layer, ks, vs)
            want = twin.decode(layer, qs, split=split)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            _assert_same_store(fused, twin, layer)
            outs[layer].append(got)
    return {layer: torch.cat(o, 2) for layer, o in outs.items()}


@pytest.mark.parametrize("case", sampled([c for c in CASES if c.causal or c.path is not None], 6), ids=str)
def test_fused_step_matches_append_then_decode(case):
    prog = _program(case)
    plan = plan_decode(prog)
    if plan is None:  # encoders, grids and selecting patterns: no decode
        return
    if any(h.policy is not None for row in plan.heads for h in row):  # their lossless store
        prog = dataclasses.replace(prog, cache=())
    plan, mod = module(prog)
    layers = [0] + [1] * (prog.model.layers > 1 and plan.heads[1] != plan.heads[0])
    H, Hk, D = prog.model.heads, prog.model.kv_heads, prog.model.head_dim or 32
    q, k, v = rand(1, H, N, D, seed=1), rand(1, Hk, N, D, seed=2), rand(1, Hk, N, D, seed=3)
    outs = _steps(mod, prog, layers, q, k, v)
    for layer in layers:
        ref = full_mask_attention(prog, layer, q, k, v)[:, :, PREFILL:]
        torch.testing.assert_close(outs[layer].double(), ref, atol=1e-5, rtol=0)


# rings with stripes, a sink and a chunk: the stores whose append moves slots around
_KINDS = [causal(sink(2), window(5)), causal(sink(1), window(4), stride(6, 0)), causal(chunk(7)), causal()]
MIXED = [p for p in _KINDS for _ in range(2)]  # two query heads per KV head


@pytest.mark.parametrize("max_len", [None, N + 8])
def test_fused_step_padded_batch(max_len):
    """Rows of a left-padded batch number their own tokens; with max_len the grid is that of
    the capacities, so most programs hold no keys (and must still count in)."""
    prog = program(MIXED, heads=8, kv_heads=4)
    _, mod = module(prog)
    B, D = 3, 16
    q, k, v = rand(B, 8, N, D, seed=4), rand(B, 4, N, D, seed=5), rand(B, 4, N, D, seed=6)
    lengths = torch.tensor([PREFILL, PREFILL - 7, 1])
    end = PREFILL + len(SPLITS)  # one step per split setting
    outs = _steps(mod, prog, [0], q, k, v, batch=B, max_len=max_len, lengths=lengths, end=end)
    for b, n_pad in enumerate((PREFILL - lengths).tolist()):  # each row alone: its tokens after its padding
        sl = slice(n_pad, end)
        ref = full_mask_attention(prog, 0, q[b : b + 1, :, sl], k[b : b + 1, :, sl], v[b : b + 1, :, sl])
        torch.testing.assert_close(outs[0][b : b + 1].double(), ref[:, :, -(end - PREFILL) :], atol=1e-5, rtol=0)


def test_fused_step_several_tokens():
    """max_step = 2: two tokens per step, masked causally between them; a ring that wraps
    within one step and a chunk boundary inside one."""
    prog = program(MIXED, heads=8, kv_heads=4)
    _, mod = module(prog, max_step=2)
    q, k, v = rand(1, 8, N, 16, seed=7), rand(1, 4, N, 16, seed=8), rand(1, 4, N, 16, seed=9)
    outs = _steps(mod, prog, [0], q, k, v, T=2)
    ref = full_mask_attention(prog, 0, q, k, v)[:, :, PREFILL:]
    torch.testing.assert_close(outs[0].double(), ref, atol=1e-5, rtol=0)


def test_lossy_layer_takes_append_then_decode():
    """A layer with a lossy head appends (its policy scores with this step's queries), then
    decodes: the same as calling both."""
    prog = program(causal(), heads=4, kv_heads=2, cache=[policy(8, score="h2o")])
    _, mod = module(prog)
    q, k, v = rand(1, 4, N, 16, seed=10), rand(1, 2, N, 16, seed=11), rand(1, 2, N, 16, seed=12)
    a, b = mod.Cache(1, dtype=torch.float32), mod.Cache(1, dtype=torch.float32)
    for c in (a, b):
        c.append(0, k[:, :, :PREFILL], v[:, :, :PREFILL], q[:, :, :PREFILL])
    for t in range(PREFILL, PREFILL + 3):
        sl = slice(t, t + 1)
        got = a.decode(0, q[:, :, sl], k[:, :, sl], v[:, :, sl])
        b.append(0, k[:, :, sl], v[:, :, sl], q[:, :, sl])
        torch.testing.assert_close(got, b.decode(0, q[:, :, sl]), atol=0, rtol=0)
    assert a.tokens() == b.tokens()


def test_fused_step_checks_before_writing():
    """Bad k, v or q raise before the kernel touches the store; the cache is unchanged."""
    prog = program(causal(sink(2), window(5)), heads=4, kv_heads=2)
    _, mod = module(prog)
    q, k, v = rand(1, 4, N, 16, seed=13), rand(1, 2, N, 16, seed=14), rand(1, 2, N, 16, seed=15)
    cache = mod.Cache(1, dtype=torch.float32)
    cache.append(0, k[:, :, :PREFILL], v[:, :, :PREFILL])
    before = _store(cache, 0)
    sl = slice(PREFILL, PREFILL + 1)
    with pytest.raises(mod.CacheError, match="T = 1"):
        cache.decode(0, q[:, :, PREFILL : PREFILL + 2], k[:, :, sl], v[:, :, sl])
    with pytest.raises(mod.CacheError, match="expected"):
        cache.decode(0, q[:, :, sl], k[:, :1, sl], v[:, :1, sl])
    with pytest.raises(ValueError, match="heads"):
        cache.decode(0, q[:, :2, sl], k[:, :, sl], v[:, :, sl])
    after = _store(cache, 0)
    assert cache.seen(0) == PREFILL and torch.equal(before[1], after[1]) and torch.equal(before[2], after[2])
    for x, y in zip(before[0], after[0]):
        assert all(torch.equal(u, w) for u, w in zip(x, y))


def test_fused_step_memo_serves_repeated_steps():
    """With max_len a step like an earlier one takes the layer's memo (its checks' verdict and
    plan): the same outputs and store as append-then-decode; a step that differs (a bad query,
    a non-contiguous key) misses it and is checked in full."""
    prog = program(MIXED, heads=8, kv_heads=4)
    _, mod = module(prog)
    q, k, v = rand(1, 8, N, 16, seed=16), rand(1, 4, N, 16, seed=17), rand(1, 4, N, 16, seed=18)
    fused, twin = (mod.Cache(1, dtype=torch.float32, max_len=N) for _ in range(2))
    for c in (fused, twin):
        c.append(0, k[:, :, :PREFILL], v[:, :, :PREFILL])
    for t in range(PREFILL, PREFILL + 4):
        sl = slice(t, t + 1)
        qs, ks, vs = q[:, :, sl].contiguous(), k[:, :, sl].contiguous(), v[:, :, sl].contiguous()
        got = fused.decode(0, qs, ks, vs, sm_scale=0.3)
        twin.append(0, ks, vs)
        torch.testing.assert_close(got, twin.decode(0, qs, sm_scale=0.3), atol=1e-6, rtol=1e-6)
        _assert_same_store(fused, twin, 0)
    assert len(fused._layers[0].steps) == 1
    with pytest.raises(TypeError, match="float64"):
        fused.decode(0, qs.double(), ks, vs, sm_scale=0.3)
    assert fused.seen(0) == twin.seen(0)
    wide = rand(1, 4, 1, 32, seed=19)[..., ::2]  # non-contiguous: copied, not memoised
    got = fused.decode(0, qs, wide, wide, sm_scale=0.3)
    twin.append(0, wide.contiguous(), wide.contiguous())
    torch.testing.assert_close(got, twin.decode(0, qs, sm_scale=0.3), atol=1e-6, rtol=1e-6)
    _assert_same_store(fused, twin, 0)


@pytest.mark.skipif(not have_ptxas(), reason="no ptxas in the triton install")
def test_fused_kernel_compiles_for_sm90_without_spills():
    """The interpreter accepts code the GPU compiler rejects: compile the decode kernel with and
    without the fused append for Hopper; neither spills, and the append costs the non-fused
    kernel nothing (it is compiled out) and the fused one few registers."""
    _, mod = module(program(_KINDS[0], heads=32, kv_heads=8, head_dim=128))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("decode_fused_sm90.py")
    res = subprocess.run([sys.executable, str(script), mod.__file__], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    usage = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(stack == 0 for _, _, stack in usage.values()), usage
    for reduce in (0, 2):
        plain, fused = usage[f"decode_append_False_reduce_{reduce}"], usage[f"decode_append_True_reduce_{reduce}"]
        assert fused[0] == plain[0] and fused[1] <= plain[1] + 16, usage
