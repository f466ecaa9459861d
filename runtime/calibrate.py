"""Retrieval-head calibration: which KV heads must keep the whole context.

The criterion is the retrieval score of Wu et al. (2024), "Retrieval Head Mechanistically
Explains Long-Context Factuality": the model reads synthetic passkey prompts that this module
makes itself (seeded: random 5-digit keys at random depths in random filler sentences, so no
tuning touches the evaluation's filler), with the answer appended (teacher forcing). For each
answer token, a query head scores a hit when its strongest attention from the position that
predicts that token lands on the same token inside the needle, that is, when the head copies
the needle. A head's score is its hit rate over all answer tokens of all prompts; a KV head
scores the best of the query heads that read it, since keeping a KV head's keys is what
costs memory. The top-scoring KV heads form the `retrieval` set, the rest `streaming`:

    {"retrieval": {"0": [..], "1": [..], ...}, "streaming": {"0": [..], ...}}

with layers as strings and KV-head indices, for `.attn` files (`kv_heads @retrieval: causal`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import evaluate as ev
from . import hf

WORDS = (
    "river mountain lantern copper meadow harbor violin pepper orbit garden canyon marble "
    "thunder pillow quartz saddle tunnel velvet walnut anchor basket candle feather glacier "
    "hammer island jacket kettle ladder magnet needle ocean pencil rocket silver timber"
).split()


def random_filler(rng: random.Random, sentences: int = 40) -> str:
    """Seeded nonsense sentences, unlike the evaluation's fixed filler."""
    out = []
    for _ in range(sentences):
        w = rng.sample(WORDS, 4)
        out.append(f"The {w[0]} near the {w[1]} is {w[2]} and {w[3]}.")
    return " ".join(out) + " "


@dataclass
class Scores:
    """Per [layer][query head] and per [layer][KV head] scores, and the dense model's accuracy.

    `retrieval`: the retrieval (copy) score; `far`: the attention mass that the probed queries
    put on keys a streaming head (sink | window) would drop, DuoAttention's notion of a head
    that needs the whole context.
    """

    retrieval: torch.Tensor
    far: torch.Tensor
    rep: int
    samples: int
    dense_correct: int

    def kv(self, criterion: str = "far") -> torch.Tensor:
        """[layer][KV head]: the best of the query heads that read each KV head."""
        per_q = {"retrieval": self.retrieval, "far": self.far}[criterion]
        L, H = per_q.shape
        return per_q.view(L, H // self.rep, self.rep).amax(-1)

    def ranking(self, criterion: str = "far") -> list[tuple[int, int, float]]:
        """(layer, kv head, score), best first."""
        kv = self.kv(criterion)
        L, G = kv.shape
        items = [(l, g, float(kv[l, g])) for l in range(L) for g in range(G)]
        return sorted(items, key=lambda x: (-x[2], x[0], x[1]))


class _Probe:
    """An attention function that also records, for chosen query rows, each head's argmax key
    and the attention mass it puts on keys that sink(S) | window(W) would drop."""

    def __init__(self, rows: torch.Tensor, far_rows: torch.Tensor, sink: int, window: int):
        self.rows, self.far_rows = rows, far_rows  # query positions to probe
        self.sink, self.window = sink, window
        self.argmax: dict[int, torch.Tensor] = {}  # layer -> (H, len(rows))
        self.far: dict[int, torch.Tensor] = {}  # layer -> (H,) mean mass outside sink | window

    def __call__(
        self,
        module: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: Any,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kw: Any,
    ):
        rep = q.shape[1] // k.shape[1]
        kk = k.repeat_interleave(rep, 1)
        vv = v.repeat_interleave(rep, 1)
        out = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, is_causal=True, scale=scaling)
        keys = torch.arange(k.shape[2])
        scale = scaling or q.shape[-1] ** -0.5
        for rows, kind in ((self.rows, "argmax"), (self.far_rows, "far")):
            s = torch.einsum("hrd,hkd->hrk", q[0, :, rows], kk[0]) * scale
            s = s.masked_fill(keys[None, None, :] > rows[None, :, None], float("-inf"))
            if kind == "argmax":
                self.argmax[module.layer_idx] = s.argmax(-1)
            else:
                dropped = (keys[None, :] >= self.sink) & (rows[:, None] - keys[None, :] >= self.window)
                self.far[module.layer_idx] = (s.softmax(-1) * dropped).sum(-1).mean(-1)
        return out.transpose(1, 2), None


def score_heads(
    model: Any,
    tok: Any,
    *,
    samples: int = 24,
    seed: int = 0,
    length: int = 1536,
    sink: int = 4,
    window: int = 64,
    tail: int = 32,
    progress: Callable[[], None] | None = None,
) -> Scores:
    """Scores of every head over `samples` seeded passkey prompts of ~`length` tokens.

    The far-mass score is measured over the last `tail` prompt positions and the answer's,
    against `sink(sink) | window(window)`.
    """
    from transformers import AttentionInterface

    shape = hf.model_shape(model.config)
    rep = shape.heads // shape.kv_heads
    rng = random.Random(seed)
    hits = torch.zeros(shape.layers, shape.heads)
    far = torch.zeros(shape.layers, shape.heads)
    total, correct = 0, 0
    name = f"attnc_probe_{id(model)}"
    previous = model.config._attn_implementation
    try:
        for _ in range(samples):
            key = ev.random_key(rng)
            p = ev.passkey_prompt(tok, rng.randint(length // 2, length), rng.random(), key, filler=random_filler(rng))
            answer = ev._tok(tok, " " + key)
            ids = torch.tensor([p.ids + answer])
            n0 = len(p.ids)
            rows = torch.arange(n0 - 1, n0 - 1 + len(answer))  # the positions that predict each answer token
            probe = _Probe(rows, torch.arange(n0 - tail, n0 - 1 + len(answer)), sink, window)
            AttentionInterface.register(name, probe)
            hf._set_impl(model, name)
            with torch.no_grad():
                logits = model(ids, use_cache=False).logits[0, rows]
            hf._set_impl(model, previous)
            correct += bool((logits.argmax(-1) == torch.tensor(answer)).all())
            needle = torch.arange(*p.needle)
            needle_tokens = torch.tensor(p.ids)[needle]
            for t, target in enumerate(answer):
                if not tok.decode([target]).strip():
                    continue  # the space before the digits is not copied from the needle
                total += 1
                where = needle[needle_tokens == target]
                for layer, am in probe.argmax.items():
                    hits[layer] += torch.isin(am[:, t], where).float()
            for layer, mass in probe.far.items():
                far[layer] += mass / samples
            if progress:
                progress()
    finally:
        hf._set_impl(model, previous)
        AttentionInterface._global_mapping.pop(name, None)
    return Scores(hits / max(total, 1), far, rep, samples, correct)


class _Gate:
    """Attention as DuoAttention trains it: per KV head, a gate alpha mixes full causal attention
    with streaming attention (sink | window): out = alpha * full + (1 - alpha) * streaming."""

    def __init__(self, alpha: torch.Tensor, sink: int, window: int):
        self.alpha, self.sink, self.window = alpha, sink, window
        self._mask: torch.Tensor | None = None

    def streaming_mask(self, n: int) -> torch.Tensor:
        if self._mask is None or self._mask.shape[0] != n:
            q = torch.arange(n)[:, None]
            k = torch.arange(n)[None, :]
            self._mask = (k <= q) & ((q - k < self.window) | (k < self.sink))
        return self._mask

    def __call__(
        self,
        module: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: Any,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kw: Any,
    ):
        rep = q.shape[1] // k.shape[1]
        kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        full = sdpa(q, kk, vv, is_causal=True, scale=scaling)
        stream = sdpa(q, kk, vv, attn_mask=self.streaming_mask(q.shape[2]), scale=scaling)
        a = self.alpha[module.layer_idx].repeat_interleave(rep)[None, :, None, None]
        return (a * full + (1 - a) * stream).transpose(1, 2), None


def duo_scores(
    model: Any,
    tok: Any,
    *,
    top: int,
    rounds: int = 3,
    samples: int = 4,
    seed: int = 0,
    length: int = 1024,
    sink: int = 4,
    window: int = 64,
    progress: Callable[[], None] | None = None,
) -> torch.Tensor:
    """DuoAttention's criterion by greedy first-order steps: which KV heads the answer needs
    full attention in, when every other head is streaming (sink | window).

    DuoAttention learns a gate alpha per KV head that mixes full and streaming attention, on
    synthetic passkey data, and keeps full the heads whose gate stays high. Here the gates
    start at 0 (every head streaming, the regime the pattern will run in); each of `rounds`
    rounds takes d loss / d alpha of the answer's cross-entropy over `samples` seeded
    prompts (one backward pass each), opens the top / rounds heads that most lower the loss,
    and goes on from there, so heads that only help together with others are still found.
    Returns a score per [layer][KV head]: opened heads first, in the order opened, then the
    rest by the last round's gradient.
    """
    from transformers import AttentionInterface

    shape = hf.model_shape(model.config)
    alpha = torch.zeros(shape.layers, shape.kv_heads, requires_grad=True)
    gate = _Gate(alpha, sink, window)
    rng = random.Random(seed)
    prompts = []
    for _ in range(samples):
        key = ev.random_key(rng)
        p = ev.passkey_prompt(tok, rng.randint(length // 2, length), rng.random(), key, filler=random_filler(rng))
        prompts.append((p, ev._tok(tok, " " + key)))
    score = torch.zeros(shape.layers, shape.kv_heads)
    opened: list[tuple[int, int]] = []
    name = f"attnc_gate_{id(model)}"
    previous = model.config._attn_implementation
    flags = [p.requires_grad for p in model.parameters()]
    AttentionInterface.register(name, gate)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        hf._set_impl(model, name)
        per_round = [top // rounds + (i < top % rounds) for i in range(rounds)]
        for _round, take in enumerate(per_round):
            grad = torch.zeros_like(score)
            for p, answer in prompts:
                ids = torch.tensor([p.ids + answer])
                n0 = len(p.ids)
                logits = model(ids, use_cache=False).logits[0, n0 - 1 : n0 - 1 + len(answer)]
                loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(answer))
                grad += torch.autograd.grad(loss, alpha)[0] / samples
                if progress:
                    progress()
            gain = -grad
            for l, g in opened:
                gain[l, g] = float("-inf")
            flat = torch.argsort(gain.flatten(), descending=True)[:take]
            with torch.no_grad():
                for i in flat.tolist():
                    l, g = divmod(i, shape.kv_heads)
                    opened.append((l, g))
                    alpha[l, g] = 1.0
            rest = gain.clamp(min=-1e9)
            score = rest / (rest.abs().max() + 1e-9)  # in [-1, 1] for heads not opened
        for i, (l, g) in enumerate(opened):
            score[l, g] = 2.0 + len(opened) - i
    finally:
        hf._set_impl(model, previous)
        AttentionInterface._global_mapping.pop(name, None)
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    return score


def head_sets(kv_scores: torch.Tensor, top: int) -> dict[str, dict[str, list[int]]]:
    """The `top` best KV heads of a [layer][KV head] score as `retrieval`, the rest `streaming`."""
    L, G = kv_scores.shape
    order = sorted(((float(kv_scores[l, g]), -l, -g) for l in range(L) for g in range(G)), reverse=True)
    chosen = {(-l, -g) for _, l, g in order[:top]}
    return {
        "retrieval": {str(l): [g for g in range(G) if (l, g) in chosen] for l in range(L)},
        "streaming": {str(l): [g for g in range(G) if (l, g) not in chosen] for l in range(L)},
    }


def write(path: str, sets: dict[str, Any], kv_scores: torch.Tensor, meta: dict[str, Any]) -> str:
    """Write the head sets to `path` and the scores beside it (`<path stem>.scores.json`)."""
    with open(path, "w") as f:
        json.dump(sets, f, indent=1)
        f.write("\n")
    side = (path[:-5] if path.endswith(".json") else path) + ".scores.json"
    with open(side, "w") as f:
        json.dump({**meta, "kv_scores": [[round(float(x), 5) for x in row] for row in kv_scores]}, f, indent=1)
        f.write("\n")
    return side
