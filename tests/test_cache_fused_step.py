"""H2O and TOVA decode steps in one launch of the generated _kv_step_kernel (scores, the
lowest (priority, position), the move) against the torch path (backend="torch"), step by
step: the same tokens kept in the same slots, the same scores."""

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


@pytest.mark.parametrize("name", sampled(list(ROWS), 2))
def test_fused_step_equals_torch_path(name):
    pattern, pol = ROWS[name]
    heads = 8 if name.endswith("gqa4") else 4
    prog = program(pattern, heads=heads, kv_heads=2, head_dim=16, cache=[pol], name=name)
    _, mod = module(prog)
    B, N, pre = 2, 26, 9
    q, k, v = rand(B, heads, N, 16, seed=1), rand(B, 2, N, 16, seed=2) * 2, rand(B, 2, N, 16, seed=3)
    fused, ref = mod.Cache(B, dtype=torch.float32), mod.Cache(B, dtype=torch.float32, backend="torch")
    for c in (fused, ref):
        c.append(0, k[:, :, :pre], v[:, :, :pre], q[:, :, :pre])
    for t in range(pre, N):
        for c in (fused, ref):
            c.append(0, k[:, :, t : t + 1], v[:, :, t : t + 1], q[:, :, t : t + 1])
        a, b = fused.view(0), ref.view(0)
        assert a.slots == b.slots
        assert torch.equal(a.pos, b.pos), t
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
        torch.testing.assert_close(fused._layers[0].score, ref._layers[0].score, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("score, aggregate", [("h2o", "mean"), ("tova", "max")])
def test_fused_step_splits_equal_torch_path(score, aggregate, monkeypatch):
    """Budgets over several splits (tiles of 16 keys, 3 splits of a head): the splits' max and
    sum merge, and the last split to finish evicts the lowest of all splits."""
    prog = program(causal(), heads=8, kv_heads=2, head_dim=16,
                   cache=[policy(40, sink=1, recent=2, score=score, aggregate=aggregate)], name=f"split_{score}")  # fmt: skip
    _, mod = module(prog)
    monkeypatch.setattr(mod, "_KV_STEP_BLOCK", 16)
    monkeypatch.setattr(mod, "_KV_STEP_PER_SM", 64)
    B, N, pre = 2, 48, 37
    q, k, v = rand(B, 8, N, 16, seed=4), rand(B, 2, N, 16, seed=5) * 2, rand(B, 2, N, 16, seed=6)
    fused, ref = mod.Cache(B, dtype=torch.float32), mod.Cache(B, dtype=torch.float32, backend="torch")
    for c in (fused, ref):
        c.append(0, k[:, :, :pre], v[:, :, :pre], q[:, :, :pre])
    for t in range(pre, N):
        for c in (fused, ref):
            c.append(0, k[:, :, t : t + 1], v[:, :, t : t + 1], q[:, :, t : t + 1])
        assert fused._layers[0].classes[0].step_key[1] == 3
        a, b = fused.view(0), ref.view(0)
        assert torch.equal(a.pos, b.pos), t
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
        torch.testing.assert_close(fused._layers[0].score, ref._layers[0].score, atol=1e-6, rtol=1e-5)
