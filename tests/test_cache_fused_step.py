"""H2O and TOVA decode steps whose decode kernel folds the step's attention into the scores
and evicts (the last split of each (row, KV head), after its merge: _dec_fold), in one launch
with the step's own token (`cache.decode(layer, q, k, v)`) or after a separate append,
against the torch path (backend="torch", which recomputes the step's attention from its
queries at the next append; here forced right after the step): the same tokens kept in the
same slots, the same scores, the same decode outputs, step by step; ties included."""

from __future__ import annotations

import pytest
import torch

from cases import sampled
from test_decode_support import causal, module, policy, program, rand, sink, window

ROWS = {
    "h2o": (causal(), policy(8, sink=1, recent=2, score="h2o")),
    "tova": (causal(), policy(7, sink=2, recent=1, score="tova")),
    "h2o_masked_max": (causal(sink(1), window(9)), policy(6, sink=1, recent=1, score="h2o", aggregate="max")),
    "tova_sum_gqa4": (causal(), policy(6, recent=1, score="tova", aggregate="sum")),
}


def _inputs(B, heads, N, seed, ties):
    """q, k, v; with `ties`, groups of equal keys (equal logits, equal scores: the oldest goes)."""
    q, k, v = rand(B, heads, N, 16, seed=seed), rand(B, 2, N, 16, seed=seed + 1) * 2, rand(B, 2, N, 16, seed=seed + 2)
    if ties:
        k[:, :, 1::3] = k[:, :, 1:2]
        k[:, :, 2::4] = 0.0
    return q, k, v


def _settle(cache):
    """Run the torch path's pending evictions now (they wait for the next append)."""
    for L in cache._layers:
        for c in L.classes:
            if c.pending is not None:
                cache._finish(L, c)


def _launches(mod, monkeypatch):
    """The kernels launched, in order (a list that grows)."""
    seen = []
    call = mod.FastLaunch.__call__

    def record(self, *args):
        seen.append(self.kernel)
        return call(self, *args)

    monkeypatch.setattr(mod.FastLaunch, "__call__", record)
    return seen


def _steps(mod, q, k, v, pre, N, decode_kw, fused_step, monkeypatch):
    """Run both caches over the same steps and compare after each: the triton cache in one
    decode launch per step (fused_step) or an append and a decode, never in torch ops."""
    B = q.shape[0]
    fused, ref = mod.Cache(B, dtype=torch.float32), mod.Cache(B, dtype=torch.float32, backend="torch")
    for c in (fused, ref):
        c.append(0, k[:, :, :pre], v[:, :, :pre], q[:, :, :pre])
    fused._finish = lambda *a: pytest.fail("the fused cache evicted in torch ops")
    seen = _launches(mod, monkeypatch)
    for t in range(pre, N):
        sl = slice(t, t + 1)
        del seen[:]
        if fused_step:  # one launch for the step (a separate reduce kernel is asked: append, then decode)
            out = fused.decode(0, q[:, :, sl], k[:, :, sl], v[:, :, sl], **decode_kw)
            assert seen == [mod._dec_fwd_kernel] * (1 if "config" not in decode_kw else 0) or len(seen) == 2, seen
        else:
            fused.append(0, k[:, :, sl], v[:, :, sl], q[:, :, sl])
            out = fused.decode(0, q[:, :, sl], **decode_kw)
        assert seen == [mod._dec_fwd_kernel] or seen == [mod._kv_append_kernel, mod._dec_fwd_kernel], seen
        ref.append(0, k[:, :, sl], v[:, :, sl], q[:, :, sl])
        want = ref.decode(0, q[:, :, sl])
        _settle(ref)
        a, b = fused.view(0), ref.view(0)
        assert torch.equal(a.lens, b.lens), t
        assert torch.equal(a.pos, b.pos), t
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
        torch.testing.assert_close(fused._layers[0].score, ref._layers[0].score, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        assert fused.tokens()[0] == a.lens[0].tolist()  # the host counts follow the kernel
        assert a.logits.read == fused.seen(0)
    return fused


@pytest.mark.parametrize("name", sampled(list(ROWS), 2))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fused_step", [True, False])
def test_decode_evicts_like_the_torch_path(name, ties, fused_step, monkeypatch):
    pattern, pol = ROWS[name]
    heads = 8 if name.endswith("gqa4") else 4
    _, mod = module(program(pattern, heads=heads, kv_heads=2, head_dim=16, cache=[pol], name=name))
    q, k, v = _inputs(2, heads, 24, 1, ties)
    fused = _steps(mod, q, k, v, 9, 24, {}, fused_step, monkeypatch)
    assert fused.tokens()[0][0] == pol.budget.tokens  # the step's eviction ran in its decode


def test_appends_without_decode_evict_in_torch():
    """No decode between appends (no logits to fold): the step's attention is recomputed in
    torch ops from its queries; the cache still equals the torch path. Decoding a step twice,
    or right after a prefill, folds nothing more."""
    pattern, pol = ROWS["h2o"]
    _, mod = module(program(pattern, heads=4, kv_heads=2, head_dim=16, cache=[pol], name="h2o"))
    B, N, pre = 2, 20, 9
    q, k, v = _inputs(B, 4, N, 7, True)
    fused, ref = mod.Cache(B, dtype=torch.float32), mod.Cache(B, dtype=torch.float32, backend="torch")
    for c in (fused, ref):
        c.append(0, k[:, :, :pre], v[:, :, :pre], q[:, :, :pre])
    fused.decode(0, q[:, :, pre - 1 : pre])  # after the prompt: its scores are final
    for t in range(pre, N):
        for c in (fused, ref):
            c.append(0, k[:, :, t : t + 1], v[:, :, t : t + 1], q[:, :, t : t + 1])
            if t % 3 == 0:
                c.decode(0, q[:, :, t : t + 1])
                c.decode(0, q[:, :, t : t + 1])
        for c in (fused, ref):
            _settle(c)
        assert torch.equal(fused.view(0).pos, ref.view(0).pos), t
        torch.testing.assert_close(fused._layers[0].score, ref._layers[0].score, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "score, aggregate, decode_kw",
    [("h2o", "mean", {"split": 16}), ("tova", "max", {}), ("h2o", "sum", {"split": 16, "fused_reduce": False})],
)
@pytest.mark.parametrize("fused_step", [True, False])
def test_fold_over_splits_equals_torch_path(score, aggregate, decode_kw, fused_step, monkeypatch):
    """Budgets over several splits of the decode (the last split to finish merges the
    log-sum-exp and folds the logits every split wrote; with fused_reduce=False the merge is
    still in the kernel) and several tiles of the fold (16 keys): the lowest of all goes."""
    prog = program(causal(), heads=8, kv_heads=2, head_dim=16,
                   cache=[policy(40, sink=1, recent=2, score=score, aggregate=aggregate)], name=f"split_{score}")  # fmt: skip
    _, mod = module(prog)
    monkeypatch.setattr(mod, "_DEC_FOLD_BLOCK", 16)
    if "fused_reduce" in decode_kw:
        decode_kw = {"split": 16, "config": mod.DecodeConfig(fused_reduce=False)}
    q, k, v = _inputs(2, 8, 46, 4, score == "h2o")
    _steps(mod, q, k, v, 37, 46, decode_kw, fused_step, monkeypatch)


def test_step_launch_repeats_at_the_budget(monkeypatch):
    """Once the budget is reached, every fused step launches the decode kernel with the same
    arguments but q, k, v and the output (the token's position, the lengths and the victim are
    on the device), so a captured step replays right; and the positions still advance."""
    pattern, pol = ROWS["tova"]
    _, mod = module(program(pattern, heads=4, kv_heads=2, head_dim=16, cache=[pol], name="tova"))
    seen = []
    call = mod.FastLaunch.__call__

    def record(self, *args):
        if self.kernel is mod._dec_fwd_kernel:  # not q (0), k and v (17, 18), the output (7; also unused buffers)
            seen.append(tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for i, a in enumerate(args)
                              if i not in (0, 17, 18) and a is not args[7]))  # fmt: skip
        return call(self, *args)

    monkeypatch.setattr(mod.FastLaunch, "__call__", record)
    q, k, v = _inputs(1, 4, 16, 3, False)
    cache = mod.Cache(1, dtype=torch.float32, max_len=32)
    cache.append(0, k[:, :, :9], v[:, :, :9], q[:, :, :9])
    for t in range(9, 16):
        cache.decode(0, q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1])
    assert len(seen) == 7 and len(set(seen)) == 1
    assert max(cache.kept(0, 0, 0)) == 15 and cache.view(0).npos.tolist() == [[16, 16]]
    assert len(cache.kept(0, 0, 0)) == pol.budget.tokens
