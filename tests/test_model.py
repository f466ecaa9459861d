"""bench/model.py's plain-torch Llama on the CPU (tiny config, random weights):

- it equals Hugging Face's LlamaForCausalLM layer for layer (same weights, float32);
- with a left-padded batch of different lengths, the model path with attnc's generated
  `causal` module (prefill kernel and cache + decode kernel, through the Triton interpreter)
  gives the logits of dense attention (SDPA with a key mask), at the prompt and at decode
  steps, and those of each sequence run alone;
- `bench/model.py run --smoke` runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import model as bm  # noqa: E402

import attnc  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
C = bm.TINY


def test_model_equals_hugging_face_layer_for_layer():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=C.vocab,
        hidden_size=C.hidden,
        intermediate_size=C.inter,
        num_hidden_layers=C.layers,
        num_attention_heads=C.heads,
        num_key_value_heads=C.kv_heads,
        head_dim=C.head_dim,
        rms_norm_eps=C.eps,
        rope_theta=C.rope_theta,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    ours = bm.Llama(C).eval()
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=False)
    assert not missing and all("rotary" in k for k in unexpected), (missing, unexpected)
    ids = torch.randint(0, C.vocab, (2, 11))
    seen = []
    hooks = [layer.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
             for layer in hf.model.layers]  # fmt: skip
    with torch.no_grad():
        want = hf(ids).logits
        trace = []
        attn = bm.Sdpa(C, 2, 16, "cpu", torch.float32)
        got = ours(ids, attn, bm.positions(torch.tensor([11, 11]), 11, "cpu"), last_only=False, trace=trace)
    for h in hooks:
        h.remove()
    assert len(seen) == len(trace) == C.layers
    for i, (a, b) in enumerate(zip(trace, seen)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"layer {i}")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def causal_module():
    return attnc.load("dense_causal", model=C.model())


def _run(model, attn, ids, lengths, steps):
    gen = bm.Generator(model, attn)
    out = [gen.prefill(ids, lengths)]
    for t in steps:
        out.append(gen.step(t))
    return out


def test_padded_batch_attnc_causal_equals_dense(causal_module):
    torch.manual_seed(1)
    model = bm.random_model(C, "cpu", torch.float32)
    B, T = 3, 13
    lengths = torch.tensor([13, 8, 2])
    ids = torch.randint(0, C.vocab, (B, T))
    steps = [torch.randint(0, C.vocab, (B, 1)) for _ in range(3)]
    dense = _run(model, bm.Sdpa(C, B, T + 8, "cpu", torch.float32), ids, lengths, steps)
    ours = _run(model, bm.Attnc(causal_module, "causal", C, B, T + 8, "cpu", torch.float32), ids, lengths, steps)
    for i, (a, b) in enumerate(zip(ours, dense)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"step {i}")
    for b, n in enumerate(lengths.tolist()):  # and each sequence alone
        alone = _run(model, bm.Sdpa(C, 1, T + 8, "cpu", torch.float32), ids[b : b + 1, T - n :], None,
                     [t[b : b + 1] for t in steps])  # fmt: skip
        for i, (a, w) in enumerate(zip(ours, alone)):
            torch.testing.assert_close(a[b : b + 1], w, atol=1e-4, rtol=1e-4, msg=f"row {b}, step {i}")


@pytest.mark.exhaustive
def test_bench_model_smoke(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", OUT=str(tmp_path))
    for step in (["generate", "--smoke"], ["run", "--smoke", "--attention", "sdpa", "streaming"]):
        subprocess.run([sys.executable, str(ROOT / "bench" / "model.py"), *step], check=True, env=env, cwd=ROOT)
    text = (tmp_path / "model.md").read_text()
    assert "| sdpa |" in text and "| streaming |" in text


@pytest.mark.exhaustive
def test_bench_host_smoke(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", OUT=str(tmp_path))
    for step in (["generate"], ["run", "--smoke", "--modules", "host_streaming"]):
        subprocess.run([sys.executable, str(ROOT / "bench" / "host.py"), *step], check=True, env=env, cwd=ROOT)
    rows = json.loads((tmp_path / "host.json").read_text())["modules"]["host_streaming"]
    assert {"prefill", "update", "decode", "step", "step_fused", "prefill_python_only", "step_python_only",
            "step_fused_python_only"} <= set(rows)  # fmt: skip
    for check in rows["fused_check"].values():  # the fused step against append-then-decode
        assert check["same_store"] and check["max_abs_diff"] < 1e-5


@pytest.mark.exhaustive
def test_bench_prefill_host_smoke(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", OUT=str(tmp_path))
    subprocess.run([sys.executable, str(ROOT / "bench" / "host.py"), "generate"], check=True, env=env, cwd=ROOT)
    subprocess.run([sys.executable, str(ROOT / "bench" / "prefill_host.py"), "--smoke"], check=True, env=env, cwd=ROOT)
    rows = json.loads((tmp_path / "prefill_host.json").read_text())["rows"]
    checked = [r for r in rows if "max_abs_diff_vs_sdpa" in r]
    assert {r["variant"] for r in checked} == {"host descriptors", "device descriptors"}
    assert all(r["max_abs_diff_vs_sdpa"] < 1e-5 for r in checked)
    assert all(r["bitwise_equal_variants"] for r in checked if "bitwise_equal_variants" in r)
    assert sum("python_us" in r for r in rows) == 4  # attnc's Python, per module and variant


def test_flex_backends_equal_their_dense_masks():
    """FlexAttention (unfused on the CPU): `flex` equals SDPA, and `flex_window` equals attnc's
    streaming pattern with the same sink and window, at the prompt and at decode steps, one
    sequence and a left-padded batch (each row's sink is its own first tokens)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    streaming = attnc.load(ROOT / "patterns" / "streaming_llm.attn", model=C.model(), defines={"S": 2, "W": 5})
    torch.manual_seed(2)
    model = bm.random_model(C, "cpu", torch.float32)
    T = 13
    for B, lengths in ((1, None), (2, torch.tensor([13, 9]))):
        ids = torch.randint(0, C.vocab, (B, T))
        steps = [torch.randint(0, C.vocab, (B, 1)) for _ in range(3)]
        dense = _run(model, bm.Sdpa(C, B, T + 8, "cpu", torch.float32), ids, lengths, steps)
        flex = _run(model, bm.Flex(C, B, T + 8, "cpu", torch.float32), ids, lengths, steps)
        window = bm.FlexWindow(C, B, T + 8, "cpu", torch.float32, sink=2, window=5)
        ours = _run(model, window, ids, lengths, steps)
        want = _run(model, bm.Attnc(streaming, "streaming", C, B, T + 8, "cpu", torch.float32), ids, lengths, steps)
        for i in range(len(steps) + 1):
            torch.testing.assert_close(flex[i], dense[i], atol=1e-4, rtol=1e-4, msg=f"flex, B={B}, step {i}")
            torch.testing.assert_close(ours[i], want[i], atol=1e-4, rtol=1e-4, msg=f"flex_window, B={B}, step {i}")
        assert (ours[-1] - dense[-1]).abs().max() > 1e-3  # the window matters at this length
