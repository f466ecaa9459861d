"""Padded batches in the generated cache: a left-padded prompt (append(..., lengths=)) and
the decode steps after it give, row by row, what each sequence gives alone in a cache of
batch 1: the same kept positions per KV head after every append, the same decode output
(the kernel through the Triton interpreter, and decode_reference over the padded view).
Every kind of store (ring, dense, chunk) and lossy policies scored at prefill and at decode.
"""

from __future__ import annotations

import pytest
import torch

from cases import sampled
from test_decode_support import causal, chunk, module, policy, program, rand, sink, window

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

B, H, HK, D = 3, 4, 2, 16
P, STEPS = 12, 3
LENGTHS = [12, 7, 3]

CASES = {
    "ring": (causal(sink(2), window(6)), ()),
    "dense": (causal(), ()),
    "chunk": (causal(chunk(5)), ()),
    "h2o": (causal(), (policy(6, sink=1, recent=2, score="h2o"),)),
    "snapkv": (causal(), (policy(5, sink=1, score="snapkv", window=2, pool="max", kernel=3),)),
    "tova": (causal(), (policy(4, sink=1, recent=1, score="tova"),)),
    "key_norm": (causal(), (policy(5, sink=1, recent=1, score="key_norm"),)),
    "duo_mix": (causal(), (policy("full", kv_heads=[0]), policy(4, sink=1, recent=1, score="h2o", kv_heads=[1]))),
}


def _tokens(seed):
    k = rand(B, HK, P + STEPS, D, seed=seed)
    v = rand(B, HK, P + STEPS, D, seed=seed + 1)
    q = rand(B, H, P + STEPS, D, seed=seed + 2)
    return q, k, v


@pytest.mark.parametrize("max_len", [None, 32])
@pytest.mark.parametrize("name", sampled(sorted(CASES), 4))
def test_padded_cache_equals_each_sequence_alone(name, max_len):
    pattern, cache = CASES[name]
    _, mod = module(program(pattern, heads=H, kv_heads=HK, head_dim=D, cache=cache, name=f"pad_{name}"))
    q, k, v = _tokens(7)
    padded = mod.Cache(B, max_len=max_len, dtype=torch.float32)
    padded.append(0, k[:, :, :P], v[:, :, :P], q[:, :, :P], lengths=torch.tensor(LENGTHS))
    alone = []
    for b, n in enumerate(LENGTHS):
        c = mod.Cache(1, max_len=max_len, dtype=torch.float32)
        c.append(0, k[b : b + 1, :, P - n : P], v[b : b + 1, :, P - n : P], q[b : b + 1, :, P - n : P])
        alone.append(c)
    for step in range(STEPS + 1):
        for b, c in enumerate(alone):
            for h in range(HK):
                assert padded.kept(0, b, h) == c.kept(0, 0, h), (step, b, h)
        if step == STEPS:
            break
        t = slice(P + step, P + step + 1)
        padded.append(0, k[:, :, t], v[:, :, t], q[:, :, t])
        out = padded.decode(0, q[:, :, t])
        ref = mod.decode_reference(q[:, :, t], padded.view(0))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        for b, c in enumerate(alone):
            c.append(0, k[b : b + 1, :, t], v[b : b + 1, :, t], q[b : b + 1, :, t])
            torch.testing.assert_close(out[b : b + 1], c.decode(0, q[b : b + 1, :, t]), atol=1e-5, rtol=1e-5)
        assert padded.query_positions(0)[:, 0, 0].tolist() == [n + step for n in LENGTHS]


def test_padding_rules_are_checked():
    _, mod = module(program(causal(), heads=H, kv_heads=HK, head_dim=D, name="pad_dense"))
    q, k, v = _tokens(1)
    c = mod.Cache(B, dtype=torch.float32)
    with pytest.raises(mod.CacheError, match="lengths"):
        c.append(0, k[:, :, :P], v[:, :, :P], lengths=torch.tensor([1, 2]))
    with pytest.raises(mod.CacheError, match="prefill"):
        c.append(0, k[:, :, :1], v[:, :, :1], lengths=torch.tensor([1, 1, 0]))
    c.append(0, k[:, :, :P], v[:, :, :P], lengths=torch.tensor(LENGTHS))
    with pytest.raises(mod.CacheError, match="first append"):
        c.append(0, k[:, :, :P], v[:, :, :P], lengths=torch.tensor(LENGTHS))
