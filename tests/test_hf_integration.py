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


def tiny_llama(vocab: int, positions: int):
    """A 2-layer Llama (4 query heads, 2 KV heads, D = 16) with seeded random weights."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=positions,
        pad_token_id=None,
        eos_token_id=None,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_llama(96, 256)


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
        parts = [logits(model, ids[:, s : s + 13], cache=cache) for s in range(0, ids.shape[1], 13)]
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
            out = logits(model, ids[:, s : s + 25], cache=cache)
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
    writer = pytest.importorskip("attnc.codegen.writer")
    from attnc.loader import load_program

    program = duo(model)
    dec = writer.load_decode_module(decode_plan.plan_decode(program), tmp_path)
    module = types.SimpleNamespace(
        prefill=load_program(program).prefill,
        Cache=dec.Cache,
        decode=dec.decode,
        _DEC_MAX_STEP=getattr(dec, "_DEC_MAX_STEP", 1),
    )
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


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (make test)")
def test_left_padded_batch_runs_each_row_as_alone(model):
    """A left-padded batch (B = 2) through the generated prefill, cache and decode: logits at
    each row's tokens equal the dense model's on the padded batch (causal) and attnc's on the
    row alone (sinks and windows count each row's tokens from 0); generate continues each row
    as the row alone does."""
    pytest.importorskip("jinja2")
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(4))
    pad = [0, 7]
    mask = torch.ones_like(ids)
    mask[1, : pad[1]] = 0
    dense = logits(model, ids, attention_mask=mask)
    with hf.apply(model, hf.uniform_program("causal", shape(model), CAUSAL), backend="interpret") as h:
        got = logits(model, ids, attention_mask=mask)
        assert isinstance(h.active, hf.KernelStore) and h.active.lengths.tolist() == [24, 17]
    for b in range(2):
        assert rel(got[b, pad[b] :], dense[b, pad[b] :]) < 1e-4
    program = duo(model)
    with hf.apply(model, program, backend="reference"):
        alone = [logits(model, ids[b : b + 1, pad[b] :])[0] for b in range(2)]
        alone_gen = [model.generate(ids[b : b + 1, pad[b] :], max_new_tokens=3, do_sample=False) for b in range(2)]
    with hf.apply(model, program, backend="interpret"):
        got = logits(model, ids, attention_mask=mask)
        got_gen = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    for b in range(2):
        assert rel(got[b, pad[b] :], alone[b]) < 1e-4
        assert torch.equal(got_gen[b, pad[b] :], alone_gen[b][0])


def test_padding_the_kernels_cannot_take_is_refused(model, ids):
    right = torch.ones_like(ids)
    right[1, -3:] = 0
    with hf.apply(model, duo(model)):  # the reference backend keeps absolute positions
        with pytest.raises(hf.IntegrationError, match="padded batches run on the generated kernels"):
            logits(model, ids, attention_mask=right.flip(-1))
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.importorskip("jinja2")
        with hf.apply(model, duo(model), backend="interpret"):
            with pytest.raises(hf.IntegrationError, match="only left padding"):
                logits(model, ids, attention_mask=right)


# ----------------------------------------------------------------------------- lossy caches (SnapKV)

SNAPKV_ATTN = """
model { layers = 2, heads = 4, kv_heads = 2, head_dim = 16 }
param B = 12
pattern p = causal
cache {
  budget = B
  keep sink(2)
  keep recent(3)
  evict snapkv(window = 4, pool = POOL, kernel = 3) at prefill
  aggregate = AGG
  layers 0 { kv_heads 1 { budget = full } }
}
"""


def _record_qk(model, ids):
    """Rotated q and k of every layer of the dense model (its own attention, recorded)."""
    from transformers import AttentionInterface

    seen = {}

    def probe(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kw):
        seen[module.layer_idx] = (q.detach().clone(), k.detach().clone(), scaling)
        rep = q.shape[1] // k.shape[1]
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=True, scale=scaling
        )
        return out.transpose(1, 2), None

    name = "attnc_test_probe"
    AttentionInterface.register(name, probe)
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        with torch.no_grad():
            model(ids)
    finally:
        model.config._attn_implementation = previous
        AttentionInterface._global_mapping.pop(name, None)
    return seen


def _brute_force_snapkv(q, k, scale, budget, sink, protected, window, kernel, pool, agg):
    """Kept positions per KV head, written out independently of runtime/hf.py: softmax of the
    last `window` queries over all causal keys, mean over them, pooled over `kernel`
    neighbours, aggregated over the GQA group, protected keys forced in, top (budget) kept."""
    T = q.shape[2]
    rep = q.shape[1] // k.shape[1]
    kept = []
    for g in range(k.shape[1]):
        per_head = []
        for i in range(rep):
            qh = q[0, g * rep + i]  # (T, D)
            att = []
            for t in range(T - window, T):
                s = (qh[t] @ k[0, g, : t + 1].T) * scale
                a = torch.zeros(T, dtype=q.dtype)
                a[: t + 1] = torch.softmax(s, -1)
                att.append(a)
            mean = torch.stack(att).mean(0)
            pooled = torch.empty(T, dtype=q.dtype)
            for j in range(T):
                nb = mean[max(0, j - kernel // 2) : j + kernel // 2 + 1]
                pooled[j] = nb.max() if pool == "max" else nb.sum() / kernel
            per_head.append(pooled)
        stacked = torch.stack(per_head)
        score = {"mean": stacked.mean(0), "max": stacked.amax(0), "sum": stacked.sum(0)}[agg]
        pos = torch.arange(T)
        forced = (pos < sink) | (pos >= T - protected)
        free = [int(j) for j in torch.argsort(score, descending=True) if not forced[j]]
        chosen = set(pos[forced].tolist()) | set(free[: budget - int(forced.sum())])
        kept.append(sorted(chosen))
    return kept


@pytest.mark.parametrize("pool,agg", [("max", "mean"), ("avg", "max")])
def test_snapkv_reference_store_keeps_the_brute_force_top_k(model, tmp_path, pool, agg):
    m64 = model.double()
    try:
        ids = torch.randint(0, 96, (1, 40), generator=torch.Generator().manual_seed(5))
        path = tmp_path / "snap.attn"
        path.write_text(SNAPKV_ATTN.replace("POOL", pool).replace("AGG", agg))
        seen = _record_qk(m64, ids)
        with hf.apply(m64, str(path)) as h:
            cache = h.new_cache()
            with torch.no_grad():
                out = m64(ids, cache=cache, use_cache=True)
            store = cache.store
            for layer in range(2):
                q, k, scale = seen[layer]
                want = _brute_force_snapkv(q, k, scale, 12, 2, 4, 4, 3, pool, agg)
                for g in range(2):
                    got = store.pos[layer][g].tolist()
                    if (layer, g) == (0, 1):
                        assert got == list(range(40))  # budget = full
                    else:
                        assert got == want[g], (layer, g)
                        # the kept keys are the recorded ones (stored rotated, original positions)
                        assert torch.equal(store.k[layer][g][0], k[0, g, got])
            mem = h.memory()
            assert mem["tokens"] == 3 * 12 + 40 and mem["dense_tokens"] == 4 * 40
            # prefill timing: decoding appends without evicting, and reads only what was kept
            with torch.no_grad():
                m64(out.logits[:, -1:].argmax(-1), cache=cache, use_cache=True)
            assert h.memory()["tokens"] == 3 * 13 + 41
    finally:
        model.float()


def test_snapkv_decoding_reads_only_the_kept_keys(model, tmp_path):
    """The first decoded token's logits equal a dense model whose mask hides the evicted keys."""
    ids = torch.randint(0, 96, (1, 40), generator=torch.Generator().manual_seed(6))
    path = tmp_path / "snap.attn"
    path.write_text(
        SNAPKV_ATTN.replace("POOL", "max")
        .replace("AGG", "mean")
        .replace("layers 0 { kv_heads 1 { budget = full } }", "")
    )
    nxt = torch.tensor([[7]])
    with hf.apply(model, str(path)) as h:
        cache = h.new_cache()
        with torch.no_grad():
            model(ids, cache=cache, use_cache=True)
            got = model(nxt, cache=cache, use_cache=True).logits[0, -1]
        kept = [[cache.store.pos[l][g].tolist() for g in range(2)] for l in range(2)]
    # 12 kept from the prompt, then the decoded token (prefill timing: no eviction while decoding)
    assert all(len(kept[l][g]) == 13 and kept[l][g][-1] == 40 for l in range(2) for g in range(2))
    assert any(kept[l][g] != kept[0][0] for l in range(2) for g in range(2))  # heads keep different keys
    from transformers import AttentionInterface

    def masked(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kw):
        T, N = q.shape[2], k.shape[2]
        assert T == N == 41
        rep = q.shape[1] // k.shape[1]
        allow = torch.ones(k.shape[1], T, N, dtype=torch.bool).tril()
        for g in range(k.shape[1]):  # the last query (the decoded token) sees only the kept keys
            allow[g, -1] = False
            allow[g, -1, kept[module.layer_idx][g]] = True
        allow = allow.repeat_interleave(rep, 0)[None]
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=allow, scale=scaling
        )
        return out.transpose(1, 2), None

    AttentionInterface.register("attnc_test_masked", masked)
    previous = model.config._attn_implementation
    model.config._attn_implementation = "attnc_test_masked"
    try:
        with torch.no_grad():
            full = torch.cat([ids, nxt], 1)
            want = model(full).logits[0, -1]
    finally:
        model.config._attn_implementation = previous
        AttentionInterface._global_mapping.pop("attnc_test_masked", None)
    assert rel(got, want) < 1e-5


@pytest.mark.parametrize("rules", ["keep sink(2)\n  keep recent(6)", "keep sink(2)\n  keep recent(2)\n  evict tova"])
def test_decode_timed_policies_hold_the_budget_at_every_step(model, tmp_path, rules):
    """Keep rules alone (lossy on a causal pattern) and TOVA (at decode): the store holds the
    budget (8) after the prompt and after every decoded token; keep rules hold exactly the
    sinks and the newest positions."""
    path = tmp_path / "p.attn"
    path.write_text(
        "model { layers = 2, heads = 4, kv_heads = 2, head_dim = 16 }\npattern p = causal\n"
        f"cache {{\n  budget = 8\n  {rules}\n}}\n"
    )
    ids = torch.randint(0, 96, (1, 30), generator=torch.Generator().manual_seed(7))
    with hf.apply(model, str(path)) as h:
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
        store = h.active
        assert (
            out.shape[1] == 33 and store.seen == [32, 32] and store.tokens() == 2 * 2 * 8
        )  # the last token is not fed
        if "tova" not in rules:
            assert all(store.pos[l][g].tolist() == [0, 1, 26, 27, 28, 29, 30, 31] for l in range(2) for g in range(2))
        else:
            assert all(
                store.pos[l][g][:2].tolist() == [0, 1] and store.pos[l][g][-2:].tolist() == [30, 31]
                for l in range(2)
                for g in range(2)
            )


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (make test)")
def test_tova_kernels_equal_the_reference_store(model, tmp_path):
    """TOVA at decode through the generated cache and decode kernel (the decode's logits folded
    into the scores at the next append) and through the reference store (which evicts right
    after the step's attention): the same generated tokens and logits at every step."""
    path = tmp_path / "tova.attn"
    path.write_text(
        "model { layers = 2, heads = 4, kv_heads = 2, head_dim = 16 }\npattern p = causal\n"
        "cache {\n  budget = 8\n  keep sink(1)\n  keep recent(1)\n  evict tova\n}\n"
    )
    ids = torch.randint(0, 96, (1, 20), generator=torch.Generator().manual_seed(5))
    runs = []
    for backend in ("reference", "interpret"):
        with hf.apply(model, str(path), backend=backend):
            out = model.generate(
                ids, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
            runs.append((out.sequences, torch.stack(out.logits)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert rel(runs[1][1], runs[0][1]) < 1e-4


# ----------------------------------------------------------------------------- selection at run time

SELECT_ATTN = "model { layers = 2, heads = 4, kv_heads = 2, head_dim = 16 }\npattern p = causal & (TERM)\n"
SELECTIONS = [
    "chunk(16) | select(mean, top = 1, block = 16)",
    "window(4) | select(quest, top = 2, block = 16)",
    "select(antidiagonal, mass = 80, block = 32, stride = 2)",
    "sink(4) | window(8) | select(vslash, top = 1, block = 16, last = 8)",
]


def _selecting(tmp_path, term: str) -> str:
    path = tmp_path / "sel.attn"
    path.write_text(SELECT_ATTN.replace("TERM", term))
    return str(path)


@pytest.mark.parametrize("term", SELECTIONS)
def test_selection_prefill_equals_the_generated_reference(model, tmp_path, term):
    """The reference backend's prefill equals the model whose attention is the generated
    module's own torch reference (select_reference's choice, dense mask): every score."""
    pytest.importorskip("jinja2")
    from transformers import AttentionInterface

    from attnc.loader import load

    path = _selecting(tmp_path, term)
    module = load(path)
    ids = torch.randint(0, 96, (2, 80), generator=torch.Generator().manual_seed(1))

    def generated(mod, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        return module.reference(query, key, value, scale=scaling, layer=mod.layer_idx).transpose(1, 2), None

    AttentionInterface.register("attnc_test_generated", generated)
    previous = model.config._attn_implementation
    model.config._attn_implementation = "attnc_test_generated"
    try:
        want = logits(model, ids, use_cache=False)
    finally:
        model.config._attn_implementation = previous
        AttentionInterface._global_mapping.pop("attnc_test_generated", None)
    dense = logits(model, ids)
    with hf.apply(model, path) as h:
        got = logits(model, ids)
        pairs = h.memory()["pairs"]
    assert rel(got, want) < 1e-5
    assert rel(got, dense) > 1e-3  # the selection drops pairs: not the dense model
    assert 0 < pairs < 2 * 2 * 4 * 80 * 81 // 2  # batch x layers x heads x causal pairs


def _capture(h):
    """Record (q, output) of every attention call of an applied handle, per layer."""
    seen = {}
    original = h.attention

    def attention(module, q, k, v, scaling, kwargs):
        out = original(module, q, k, v, scaling, kwargs)
        seen[module.layer_idx] = (q, out.transpose(1, 2), scaling)
        return out

    h.attention = attention
    return seen


def _masked(q, k, v, allowed, scale):
    """Softmax attention of q (H, D) over k, v (L, D) of its KV head where allowed (H, L)."""
    s = (q @ k.T * scale).masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, -1) @ v


def _decode_step(model, h, ids):
    """Prefill ids, then one decode step; returns the store and the step's (q, out) per layer."""
    cache = h.new_cache()
    with torch.no_grad():
        out = model(ids, cache=cache, use_cache=True)
        seen = _capture(h)
        model(out.logits[:, -1:].argmax(-1), cache=cache, use_cache=True)
    return cache.store, seen


def test_selection_decode_step_reads_the_best_blocks(model, tmp_path):
    """A decode step of a `mean` selection is a query block of its own: brute force (the
    step's query averaged over the KV head's query heads, dot each earlier block's mean key,
    the best block kept, the own chunk always read) gives the same output."""
    path = _selecting(tmp_path, "chunk(16) | select(mean, top = 1, block = 16)")
    ids = torch.randint(0, 96, (1, 70), generator=torch.Generator().manual_seed(2))
    with hf.apply(model, path) as h:
        store, seen = _decode_step(model, h, ids)
    p = 70  # the step's position: chunk 64..79, earlier blocks 0..3
    for layer in range(2):
        q, out, scale = seen[layer]
        for g in range(2):
            k, v = store.k[layer][g][0], store.v[layer][g][0]
            qg = q[0, 2 * g : 2 * g + 2, 0]  # (G, D)
            means = torch.stack([k[16 * j : 16 * j + 16].mean(0) for j in range(4)])
            best = int(torch.argmax(means @ qg.mean(0)))
            pos = torch.arange(p + 1)
            allowed = (pos >= 64) | (pos // 16 == best)
            want = _masked(qg, k, v, allowed.expand(2, -1), scale)
            assert torch.allclose(out[0, 2 * g : 2 * g + 2, 0], want, atol=1e-5), (layer, g, best)


QUEST_ATTN = """
model { layers = 2, heads = 4, kv_heads = 2, head_dim = 16 }
param B = 32
pattern p = causal
cache { select quest(B, page = 16) }
"""


def test_decode_page_selection_reads_exactly_the_chosen_pages(model, tmp_path):
    """Quest at decode: brute force (Quest's bound per 16-key page, mean over the KV head's
    query heads, the 2 best pages besides the step's own) gives the pages the store read and
    the step's output (a masked softmax over them); prefill stays dense and the cache whole."""
    path = tmp_path / "quest.attn"
    path.write_text(QUEST_ATTN)
    ids = torch.randint(0, 96, (1, 100), generator=torch.Generator().manual_seed(4))
    with hf.apply(model, str(path)) as h:
        store, seen = _decode_step(model, h, ids)
        assert h.memory()["tokens"] == 4 * 101  # every key kept
    pos = torch.arange(101)
    for layer in range(2):
        q, out, scale = seen[layer]
        for g in range(2):
            k, v = store.k[layer][g][0], store.v[layer][g][0]
            qg = q[0, 2 * g : 2 * g + 2, 0]
            bound = torch.stack(
                [
                    torch.maximum(qg * k[j : j + 16].amin(0), qg * k[j : j + 16].amax(0)).sum(-1)
                    for j in range(0, 96, 16)
                ],
                -1,
            ).mean(0)  # pages 0..5; page 6 (96..100) holds the step's token and is always read
            best = set(torch.argsort(bound, descending=True, stable=True)[:2].tolist()) | {6}
            read = torch.tensor([int(x) // 16 in best for x in pos])
            assert torch.equal(store.reads[(layer, g)][0], read), (layer, g)
            want = _masked(qg, k, v, read.expand(2, -1), scale)
            assert torch.allclose(out[0, 2 * g : 2 * g + 2, 0], want, atol=1e-5), (layer, g)


def test_selection_refuses_chunked_prefill(model, tmp_path):
    path = _selecting(tmp_path, SELECTIONS[0])
    ids = torch.randint(0, 96, (1, 40), generator=torch.Generator().manual_seed(5))
    with hf.apply(model, path) as h:
        cache = h.new_cache()
        with torch.no_grad():
            model(ids[:, :20], cache=cache, use_cache=True)
            with pytest.raises(hf.IntegrationError, match="chunked prefill"):
                model(ids[:, 20:], cache=cache, use_cache=True)
