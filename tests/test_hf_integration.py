"""attnc inside a Hugging Face Llama model (runtime/hf.py), on a tiny random LlamaConfig.

Every test here runs in seconds on the CPU; they skip when transformers is not installed
(it is the optional `eval` extra). The interpreter case needs TRITON_INTERPRET=1 (make test).
"""

from __future__ import annotations

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnc.compiler.ir import Band, KRange, Lit, Pattern, Term  # noqa: E402
from attnc.runtime import hf  # noqa: E402

CAUSAL = Pattern((Term((Lit(Band(0, None)),)),))


def streaming(window: int, sink: int) -> Pattern:
    """causal & (sink(S) | window(W)) in the IR's normal form."""
    return Pattern((Term((Lit(Band(0, window - 1)),)), Term((Lit(Band(0, None)), Lit(KRange(None, sink - 1))))))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=256, pad_token_id=None, eos_token_id=None)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 96, (2, 48), generator=torch.Generator().manual_seed(1))


def shape(model):
    return hf.model_shape(model.config)


def logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


def rel(a, b):
    return float((a - b).norm() / b.norm())


def duo(model, window=8, sink=2):
    """Streaming heads everywhere except full causal KV head 1 of layer 0 (DuoAttention-style)."""
    return hf.uniform_program("duo", shape(model), streaming(window, sink), {(0, 1): CAUSAL})


def masked_reference(model, ids, program):
    """The model with its own SDPA attention and a 4-D mask built from the pattern's IR:
    an independent evaluation of what the integration must compute (one pattern per layer)."""
    n = ids.shape[1]
    layout = hf.Layout.from_program(program)
    outs = []
    for layer in range(model.config.num_hidden_layers):
        pats = set(layout.table[layer])
        assert len(pats) == 1
    mask = torch.from_numpy(layout.table[0][0].mask(n))
    bias = torch.zeros(n, n).masked_fill(~mask, float("-inf"))[None, None].expand(ids.shape[0], 1, n, n)
    outs = logits(model, ids, attention_mask=bias)
    return outs


def test_causal_pattern_equals_dense_model(model, ids):
    dense = logits(model, ids)
    with hf.apply(model, hf.uniform_program("causal", shape(model), CAUSAL)):
        got = logits(model, ids)
    assert rel(got, dense) < 1e-5


def test_streaming_pattern_matches_masked_sdpa(model, ids):
    program = hf.uniform_program("stream", shape(model), streaming(8, 2))
    want = masked_reference(model, ids, program)
    with hf.apply(model, program):
        got = logits(model, ids)
    assert rel(got, want) < 1e-5


def test_apply_generate_undo_restores_the_model(model, ids):
    before = logits(model, ids)
    impl = model.config._attn_implementation
    with hf.apply(model, duo(model)) as h:
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
        assert out.shape == (2, 52)
        mem = h.memory()
        # streaming KV heads keep 2 sinks + 7 recent keys, the full one every token
        assert mem["tokens"] == (2 + 7) * 3 + out.shape[1] - 1
        assert mem["dense_tokens"] == 4 * (out.shape[1] - 1)
    assert model.config._attn_implementation == impl
    assert h.name not in transformers.AttentionInterface._global_mapping
    assert torch.equal(logits(model, ids), before)


def test_undo_also_when_the_body_raises(model, ids):
    before = logits(model, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with hf.apply(model, duo(model), positions="rerotate"):
            raise RuntimeError("boom")
    assert torch.equal(logits(model, ids), before)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_chunked_streaming_equals_one_forward(model, ids):
    program = duo(model)
    with hf.apply(model, program) as h:
        whole = logits(model, ids)
        cache = h.new_cache()
        parts = [logits(model, ids[:, s:s + 13], cache=cache) for s in range(0, ids.shape[1], 13)]
        assert cache.store.tokens() == (2 + 7) * 3 + ids.shape[1]
    assert rel(torch.cat(parts, 1), whole) < 1e-5


def test_generate_equals_dense_for_causal(model, ids):
    want = model.generate(ids, max_new_tokens=5, do_sample=False)
    with hf.apply(model, hf.uniform_program("causal", shape(model), CAUSAL)):
        got = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(got, want)


def test_rerotate_keeps_memory_constant(model):
    ids = torch.randint(0, 96, (1, 200), generator=torch.Generator().manual_seed(2))
    program = hf.uniform_program("stream", shape(model), streaming(16, 4))
    dense = logits(model, ids[:, :20])
    with hf.apply(model, program, positions="rerotate") as h:
        # nothing evicted yet: slots are positions, so the first 20 tokens match dense
        assert rel(logits(model, ids[:, :20]), dense) < 1e-5
        cache = h.new_cache()
        held = []
        for s in range(0, 200, 25):
            out = logits(model, ids[:, s:s + 25], cache=cache)
            assert torch.isfinite(out).all()
            held.append(cache.store.tokens())
    assert held[2:] == [2 * 2 * (4 + 15)] * (len(held) - 2)


def test_errors_name_the_problem(model, ids):
    wrong = hf.uniform_program("x", hf.ModelShape(layers=3, heads=4, kv_heads=2), CAUSAL)
    with pytest.raises(hf.IntegrationError, match="layers=3"):
        hf.apply(model, wrong)
    with pytest.raises(hf.IntegrationError, match="backend"):
        hf.apply(model, duo(model), backend="cuda")
    with hf.apply(model, duo(model)):
        full = transformers.DynamicCache(config=model.config)
        full.update(torch.zeros(2, 2, 3, 16), torch.zeros(2, 2, 3, 16), 0)
        with pytest.raises(hf.IntegrationError, match="non-empty DynamicCache"):
            logits(model, ids, cache=full)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (make test)")
def test_interpreter_backend_prefill_and_decode(model):
    pytest.importorskip("jinja2")
    ids = torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(3))
    program = duo(model)
    with hf.apply(model, program, backend="reference"):
        want = logits(model, ids)
        want_gen = model.generate(ids, max_new_tokens=3, do_sample=False)
    with hf.apply(model, program, backend="interpret") as h:
        got = logits(model, ids)
        got_gen = model.generate(ids, max_new_tokens=3, do_sample=False)
        assert h.active.kernel_calls > 0
    assert rel(got, want) < 1e-4
    assert torch.equal(got_gen, want_gen)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (make test)")
@pytest.mark.parametrize("positions", ["original", "rerotate"])
def test_interpreter_backend_with_the_generated_cache(model, positions, tmp_path):
    """Prefill kernel, generated Cache and decode kernel together (the cache and decode come
    from codegen's standalone decode module until the main module includes them)."""
    import types

    decode_plan = pytest.importorskip("attnc.codegen.decode_plan")
    from attnc.loader import load_program

    program = duo(model)
    dec = decode_plan.load_decode_module(decode_plan.plan_decode(program), tmp_path)
    module = types.SimpleNamespace(prefill=load_program(program).prefill, Cache=dec.Cache, decode=dec.decode,
                                   _DEC_MAX_STEP=getattr(dec, "_DEC_MAX_STEP", 1))
    ids = torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(3))
    with hf.apply(model, program, positions=positions):
        want = logits(model, ids)
        want_gen = model.generate(ids, max_new_tokens=4, do_sample=False)  # 28 > sink + window: evicts
    with hf.apply(model, hf.Layout.from_program(program, module), backend="interpret", positions=positions) as h:
        got = logits(model, ids)
        got_gen = model.generate(ids, max_new_tokens=4, do_sample=False)
        assert isinstance(h.active, hf.KernelStore) and h.active.kernel_calls == 2 * 4
    assert rel(got, want) < 1e-4
    assert torch.equal(got_gen, want_gen)
