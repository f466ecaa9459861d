"""Every causal case of the shared matrix (tests/cases.py), the files of patterns/ among them,
decoded token by token through its generated cache and decode kernel, gives prefill attention
with the full mask; where the store is exact its size is compiler.liveness's. The files'
parameters are shrunk (every `param` of 16 or more becomes 8) so that windows wrap within a
short sequence; files whose cache block is lossy are decoded with the pattern's lossless store
(their policies are the matrix in test_cache_policies.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from test_decode_support import full_mask_attention, liveness_tokens, module, rand

from attnc.codegen.decode_plan import plan_decode
from attnc.compiler.ir import ModelShape
from cases import CASES, sampled

N, PREFILL = 72, 62


def _program(case):
    """The case's program; a model of 4 query heads over 2 KV heads where it names none."""
    prog = case.program
    if prog.model.heads is None:
        prog = dataclasses.replace(prog, model=ModelShape(layers=1, heads=4, kv_heads=2, head_dim=32))
    return prog


@pytest.mark.parametrize("case", sampled([c for c in CASES if c.causal or c.path is not None], 20), ids=str)
def test_case_decodes_like_prefill(case):
    prog = _program(case)
    plan = plan_decode(prog)
    if plan is None:  # encoders, grid (image, video) and selecting patterns: no decode
        assert case.grid or not all(g.pattern.is_causal for g in prog.groups) or any(g.selection for g in prog.groups)
        return
    if any(h.policy is not None for row in plan.heads for h in row):
        prog = dataclasses.replace(prog, cache=())
    plan, mod = module(prog)
    layers, seen = [], set()
    for layer in range(prog.model.layers):  # one layer per distinct (stores, patterns) row
        key = (plan.heads[layer], plan.gid[layer])
        if key not in seen:
            seen.add(key)
            layers.append(layer)
    layers = layers[:2]
    H, Hk, D = prog.model.heads, prog.model.kv_heads, prog.model.head_dim or 32
    q, k, v = rand(1, H, N, D, seed=1), rand(1, Hk, N, D, seed=2), rand(1, Hk, N, D, seed=3)
    cache = mod.Cache(1, dtype=torch.float32, head_dim=D)
    for layer in layers:
        cache.append(layer, k[:, :, :PREFILL], v[:, :, :PREFILL])
    outs = {layer: [] for layer in layers}
    for t in range(PREFILL, N):
        for layer in layers:
            cache.append(layer, k[:, :, t : t + 1], v[:, :, t : t + 1])
            outs[layer].append(cache.decode(layer, q[:, :, t : t + 1]))
            for h, hp in enumerate(plan.heads[layer]):
                if hp.layout.exact:
                    assert cache.tokens()[layer][h] == liveness_tokens(prog, layer, h, t + 1)
    for layer in layers:
        ref = full_mask_attention(prog, layer, q, k, v)[:, :, PREFILL:]
        torch.testing.assert_close(torch.cat(outs[layer], 2).double(), ref, atol=1e-5, rtol=0)
