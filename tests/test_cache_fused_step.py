"""H2O and TOVA decode steps through the decode kernel's logits (StepLogits) and one
_kv_update_kernel launch (fold the step's attention into the scores, the lowest (priority,
position), the move, the new token) against the torch path (backend="torch", which
recomputes the step's attention from its queries), step by step: the same tokens kept in
the same slots, the same scores, the same decode outputs; ties included."""

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


def _steps(mod, q, k, v, pre, N, decode_kw, check_fused):
    """Run both caches over the same steps (append, then decode) and compare after each."""
    B = q.shape[0]
    fused, ref = mod.Cache(B, dtype=torch.float32), mod.Cache(B, dtype=torch.float32, backend="torch")
    for c in (fused, ref):
        c.append(0, k[:, :, :pre], v[:, :, :pre], q[:, :, :pre])
    if check_fused:  # every step after the first folds the decode's logits: no torch eviction
        fused._finish = lambda *a: pytest.fail("the fused cache evicted in torch ops")
    for t in range(pre, N):
        sl = slice(t, t + 1)
        outs = []
        for c in (fused, ref):
            c.append(0, k[:, :, sl], v[:, :, sl], q[:, :, sl])
            outs.append(c.decode(0, q[:, :, sl], **decode_kw))
        a, b = fused.view(0), ref.view(0)
        assert a.slots == b.slots
        assert torch.equal(a.pos, b.pos), t
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
        torch.testing.assert_close(fused._layers[0].score, ref._layers[0].score, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
        assert a.logits.read == fused.seen(0)
    return fused


@pytest.mark.parametrize("name", sampled(list(ROWS), 2))
@pytest.mark.parametrize("ties", [False, True])
def test_fused_step_equals_torch_path(name, ties):
    pattern, pol = ROWS[name]
    heads = 8 if name.endswith("gqa4") else 4
    _, mod = module(program(pattern, heads=heads, kv_heads=2, head_dim=16, cache=[pol], name=name))
    q, k, v = _inputs(2, heads, 18, 1, ties)  # 9 steps past budgets of 6 to 8: every one evicts
    fused = _steps(mod, q, k, v, 9, 18, {}, check_fused=True)
    assert fused.tokens()[0][0] == pol.budget.tokens + 1  # the last step's token, its eviction pending


def test_appends_without_decode_evict_in_torch():
    """No decode between appends (no logits to fold): the step's attention is recomputed in
    torch ops from its queries; the cache still equals the torch path."""
    pattern, pol = ROWS["h2o"]
    _, mod = module(program(pattern, heads=4, kv_heads=2, head_dim=16, cache=[pol], name="h2o"))
    B, N, pre = 2, 20, 9
    q, k, v = _inputs(B, 4, N, 7, True)
    fused, ref = mod.Cache(B, dtype=torch.float32), mod.Cache(B, dtype=torch.float32, backend="torch")
    for c in (fused, ref):
        c.append(0, k[:, :, :pre], v[:, :, :pre], q[:, :, :pre])
    for t in range(pre, N):
        for c in (fused, ref):
            c.append(0, k[:, :, t : t + 1], v[:, :, t : t + 1], q[:, :, t : t + 1])
            if t % 3 == 0:
                c.decode(0, q[:, :, t : t + 1])
        assert torch.equal(fused.view(0).pos, ref.view(0).pos), t
        torch.testing.assert_close(fused._layers[0].score, ref._layers[0].score, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "score, aggregate, decode_kw",
    [("h2o", "mean", {"split": 16}), ("tova", "max", {}), ("h2o", "sum", {"split": 16, "fused_reduce": False})],
)
def test_fused_step_splits_equal_torch_path(score, aggregate, decode_kw, monkeypatch):
    """Budgets over several splits of the update (tiles of 16 keys, 3 splits of a head) and of
    the decode (its split merge writes the log-sum-exp; a separate reduce is merged in the kernel
    instead): the last split of the update to finish evicts the lowest of all splits."""
    prog = program(causal(), heads=8, kv_heads=2, head_dim=16,
                   cache=[policy(40, sink=1, recent=2, score=score, aggregate=aggregate)], name=f"split_{score}")  # fmt: skip
    _, mod = module(prog)
    monkeypatch.setattr(mod, "_KV_UPD_BLOCK", 16)
    monkeypatch.setattr(mod, "_KV_UPD_PER_SM", 64)
    if "fused_reduce" in decode_kw:
        decode_kw = {"split": 16, "config": mod.DecodeConfig(fused_reduce=False)}
    q, k, v = _inputs(2, 8, 45, 4, score == "h2o")  # 3 steps below the budget, 5 that evict
    fused = _steps(mod, q, k, v, 37, 45, decode_kw, check_fused=True)
    assert max(key[0] for key in fused._layers[0].classes[0].update) == 3


def test_update_splits_are_one_tile_where_it_fits():
    """Each split of the update is one tile of keys (a power of two from _KV_UPD_BLOCK up)
    where the tile stays within _KV_UPD_TILE logits: 4096 held keys of 8 rows x 8 KV heads of 4
    query heads on 132 SMs take 8 splits of one tile of 512 keys (4097, a step past a budget of
    4096: 9); 8 query heads a KV head cap the tile at 512 keys (8192 keys: a loop of two a
    split); few keys take the least tile."""
    from attnc.codegen.support.cache import _kv_update_geometry as geometry

    assert geometry(4096, 8, 8, 4, 132) == (512, 8, 512)
    assert geometry(4097, 8, 8, 4, 132) == (512, 9, 512)
    assert geometry(8192, 8, 8, 8, 132) == (1024, 8, 512)
    assert geometry(3000, 8, 8, 4, 132) == (256, 12, 256)
    assert geometry(100, 8, 8, 4, 132) == (256, 1, 256)


@pytest.mark.parametrize("tile", [4096, 64])
def test_fused_step_one_tile_a_split_equals_torch_path(tile, monkeypatch):
    """Splits of 32 keys run as one tile of 32 (least tile 16), or, the tile capped at 64
    logits (16 keys of 4 query heads), as a loop of two tiles: the same cache as the torch
    path either way."""
    prog = program(causal(), heads=8, kv_heads=2, head_dim=16,
                   cache=[policy(40, sink=1, recent=2, score="h2o")], name="tile_h2o")  # fmt: skip
    _, mod = module(prog)
    monkeypatch.setattr(mod, "_KV_UPD_BLOCK", 16)
    monkeypatch.setattr(mod, "_KV_UPD_TILE", tile)
    monkeypatch.setattr(mod, "_dec_sms", lambda device: 2)
    monkeypatch.setattr(mod, "_KV_UPD_PER_SM", 4)  # 4 programs per SM: 2 splits of a head
    q, k, v = _inputs(2, 8, 43, 5, True)
    fused = _steps(mod, q, k, v, 39, 43, {}, check_fused=True)
    c = fused._layers[0].classes[0]
    assert c.geo[40] == (32, 2, 32 if tile == 4096 else 16)
    assert {key[:2] for key in c.update} >= {(2, c.geo[40][2])}


def update_launches(monkeypatch, mod) -> list:
    """The arguments of every later _kv_update_kernel launch of `mod` (tensors as their
    addresses; not the token's k and v, which change every step)."""
    seen = []
    call = mod.FastLaunch.__call__

    def record(self, *args):
        if self.kernel is mod._kv_update_kernel:
            seen.append(tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args[2:]))
        return call(self, *args)

    monkeypatch.setattr(mod.FastLaunch, "__call__", record)
    return seen


def test_update_launch_repeats_at_the_budget(monkeypatch):
    """Once the budget is reached, every step's update launch takes the same arguments (the
    token's position and the keep rules are read on the device), so a captured step replays
    right; and the positions still advance."""
    pattern, pol = ROWS["tova"]
    _, mod = module(program(pattern, heads=4, kv_heads=2, head_dim=16, cache=[pol], name="tova"))
    seen = update_launches(monkeypatch, mod)
    q, k, v = _inputs(1, 4, 16, 3, False)
    cache = mod.Cache(1, dtype=torch.float32)
    cache.append(0, k[:, :, :9], v[:, :, :9], q[:, :, :9])
    for t in range(9, 16):
        cache.append(0, k[:, :, t : t + 1], v[:, :, t : t + 1], q[:, :, t : t + 1])
        cache.decode(0, q[:, :, t : t + 1])
    assert len(seen) == 7 and len(set(seen[1:])) == 1  # the first step folds nothing (after the prompt)
    assert max(cache.kept(0, 0, 0)) == 15 and cache.view(0).npos.tolist() == [[16, 16]]


def test_fused_step_of_heads_that_are_not_a_run_equals_torch_path():
    """H2O on KV heads 0 and 2 (head 1 dense): the update reads the class's heads from its index
    (RUN false); a class of heads in a row computes them instead. The same cache as the torch
    path either way."""
    prog = program(causal(), heads=6, kv_heads=3, head_dim=16,
                   cache=[policy(12, sink=1, recent=2, score="h2o", kv_heads=[0, 2])], name="gap_h2o")  # fmt: skip
    _, mod = module(prog)
    q, k, v = rand(2, 6, 20, 16, seed=1), rand(2, 3, 20, 16, seed=2), rand(2, 3, 20, 16, seed=3)
    fused = _steps(mod, q, k, v, 10, 20, {}, check_fused=True)
    launches = [got[0] for c in fused._layers[0].classes for got in c.update.values()]
    assert launches and all(launch.constants["RUN"] is False for launch in launches)
