"""Quality of compiled patterns inside a real model: passkey retrieval and streaming perplexity.

Each task runs every pattern, dense included, on the same seeded inputs, and reports quality
beside the KV memory the pattern's cache holds (attnc's cache keeps exactly the keys a future
query can attend, so its size is the pattern's real memory). `dense` is the untouched model
(its own attention and DynamicCache); every other pattern runs through `runtime.hf`.

- passkey: a 5-digit key hidden at `depths` evenly spaced depths (0 to 100%) in filler text,
  plain completion ("... What is the pass key? The pass key is"), no chat template, greedy,
  exact match on the first five digits generated. KV memory is what the cache holds after the
  prompt, as a fraction of a dense cache of the same length; `pairs` the share of the prompt's
  causal (query, key) pairs its forward computed (selection patterns choose them at run time).
- perplexity: a long real text streamed through the model in chunks, each chunk attending
  only to what the pattern's cache kept; perplexity per window of positions, with the cache
  size reached in each window (constant for a bounded pattern, growing for dense). The text
  is CPython's own reference documentation, `pydoc_data.topics` (shipped with every Python;
  topics in sorted order), so it needs no download.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable

import torch

from . import hf

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and "
    "memorize it. I will quiz you about the important information there.\n"
)
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\nWhat is the pass key? The pass key is"


# ----------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    key: str
    depth: float
    needle: tuple[int, int]  # token span [start, end) of the needle sentence


def _tok(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def passkey_prompt(tok: Any, length: int, depth: float, key: str, filler: str = FILLER) -> Prompt:
    """About `length` tokens: intro, filler with the needle at `depth` (0..1), the question."""
    intro, needle, question = _tok(tok, INTRO), _tok(tok, NEEDLE.format(key=key)), _tok(tok, QUESTION)
    unit = _tok(tok, filler)
    room = max(length - len(intro) - len(needle) - len(question), 0)
    body = (unit * (room // len(unit) + 1))[:room]
    cut = int(round(depth * room))
    if cut < room:  # place the needle on a sentence boundary of the filler
        stops = [i + 1 for i, t in enumerate(body) if tok.decode([t]).strip().endswith(".")]
        cut = min(stops, key=lambda s: abs(s - cut)) if stops else cut
    start = len(intro) + cut
    ids = intro + body[:cut] + needle + body[cut:] + question
    return Prompt(ids, key, depth, (start, start + len(needle)))


def depths_of(count: int) -> list[float]:
    return [i / (count - 1) for i in range(count)] if count > 1 else [0.5]


def random_key(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


def answer_of(text: str) -> str:
    digits = "".join(ch for ch in text.strip().split(".")[0] if ch.isdigit())
    return digits[:5]


# ----------------------------------------------------------------------------- running patterns


@dataclass
class Candidate:
    """A pattern to evaluate: `dense` (the model as it is) or something `hf.apply` accepts."""

    label: str
    pattern: Any = None  # None for dense
    positions: str | None = None
    headsets: str | None = None
    defines: dict[str, int] = field(default_factory=dict)
    per_length: dict[int, dict[str, int]] = field(default_factory=dict)  # passkey: params per prompt length

    @property
    def dense(self) -> bool:
        return self.pattern is None

    def at_length(self, length: int) -> "Candidate":
        """This candidate with the params given for prompt length `length` (-D NAME=V@LENGTH)."""
        if length not in self.per_length:
            return self
        return replace(self, defines={**self.defines, **self.per_length[length]}, per_length={})


def candidate(
    spec: str,
    *,
    headsets: str | None = None,
    defines: dict[str, int] | None = None,
    per_length: dict[int, dict[str, int]] | None = None,
) -> Candidate:
    """`dense`, or an `.attn` path with an optional `:rerotate` / `:original` suffix."""
    if spec == "dense":
        return Candidate("dense")
    positions = None
    path = spec
    for suffix in hf.POSITIONS:
        if spec.endswith(":" + suffix):
            path, positions = spec[: -len(suffix) - 1], suffix
    from pathlib import Path

    label = Path(path).stem + (f" ({positions})" if positions else "")
    return Candidate(
        label, path, positions, headsets, dict(defines or {}), {n: dict(d) for n, d in (per_length or {}).items()}
    )


class Runner:
    """Applies one candidate at a time to a model and undoes it afterwards."""

    def __init__(self, model: Any, backend: str = "reference"):
        self.model, self.backend = model, backend

    def session(self, cand: Candidate):
        import contextlib

        if cand.dense:
            return contextlib.nullcontext(None)
        return hf.apply(
            self.model,
            cand.pattern,
            backend=self.backend,
            positions=cand.positions,
            headsets=cand.headsets,
            defines=cand.defines,
        )


def _greedy(model: Any, ids: list[int], new_tokens: int, cache: Any) -> tuple[list[int], tuple[int, int], float]:
    """Prompt forward then token-by-token greedy decoding; returns the tokens, the (held,
    dense) KV tokens right after the prompt, and the share of the prompt's causal pairs its
    forward attended (1 for dense)."""
    x = torch.tensor([ids])
    out_tokens: list[int] = []
    with torch.no_grad():
        out = model(x, cache=cache, use_cache=True, logits_to_keep=1)
        cache = out.cache
        mem = _cache_tokens(model, cache)
        shape = hf.model_shape(model.config)
        causal = len(ids) * (len(ids) + 1) // 2 * shape.layers * shape.heads
        pairs = getattr(getattr(cache, "store", None), "pairs", causal) / causal
        for _ in range(new_tokens):
            nxt = int(out.logits[0, -1].argmax())
            out_tokens.append(nxt)
            out = model(torch.tensor([[nxt]]), cache=cache, use_cache=True)
    return out_tokens, mem, pairs


def _cache_tokens(model: Any, cache: Any) -> tuple[int, int]:
    """(tokens held, dense tokens) summed over layers and KV heads."""
    if hasattr(cache, "store"):
        m = cache.store.memory()
        return int(m["tokens"]), int(m["dense_tokens"])
    shape = hf.model_shape(model.config)
    n = cache.get_seq_length()
    return n * shape.layers * shape.kv_heads, n * shape.layers * shape.kv_heads


# ----------------------------------------------------------------------------- passkey


@dataclass
class PasskeyResult:
    pattern: str
    length: int
    correct: int
    trials: int
    kv_ratio: float
    answers: list[dict[str, Any]]
    defines: dict[str, int] = field(default_factory=dict)  # the params the pattern ran with
    pairs: float = 1.0  # share of the prompts' causal (query, key) pairs attended in their forward

    @property
    def accuracy(self) -> float:
        return self.correct / self.trials if self.trials else 0.0


def passkey(
    model: Any,
    tok: Any,
    candidates: list[Candidate],
    lengths: Iterable[int],
    *,
    depths: int = 6,
    seed: int = 0,
    backend: str = "reference",
    progress: Callable[[str], None] | None = None,
) -> list[PasskeyResult]:
    """Passkey accuracy and KV memory per (candidate, length)."""
    lengths = list(lengths)
    rng = random.Random(seed)
    trials = {n: [passkey_prompt(tok, n, d, random_key(rng)) for d in depths_of(depths)] for n in lengths}
    runner = Runner(model, backend)
    results = []
    for cand in candidates:
        for n in lengths:
            at = cand.at_length(n)
            with runner.session(at) as handle:
                correct, ratios, shares, answers = 0, [], [], []
                for p in trials[n]:
                    cache = handle.new_cache() if handle is not None else None
                    toks, (held, dense), pairs = _greedy(model, p.ids, 7, cache)
                    got = answer_of(tok.decode(toks))
                    correct += got == p.key
                    ratios.append(held / dense if dense else 1.0)
                    shares.append(pairs)
                    answers.append(
                        {"depth": p.depth, "key": p.key, "answer": got, "tokens": len(p.ids), "pairs": pairs}
                    )
                    if progress:
                        progress(f"{cand.label} @ {n}")
                results.append(
                    PasskeyResult(
                        cand.label,
                        n,
                        correct,
                        len(trials[n]),
                        sum(ratios) / len(ratios),
                        answers,
                        dict(at.defines),
                        sum(shares) / len(shares),
                    )
                )
    return results


# ----------------------------------------------------------------------------- perplexity


def long_text() -> str:
    """CPython's reference documentation topics, concatenated in sorted order."""
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics))


@dataclass
class PerplexityResult:
    pattern: str
    windows: list[tuple[int, int]]
    perplexity: list[float]
    kv_tokens: list[int]  # the most the cache held (per layer and KV head) inside each window
    tokens: int


def perplexity(
    model: Any,
    tok: Any,
    candidates: list[Candidate],
    *,
    tokens: int = 32768,
    window: int = 4096,
    chunk: int = 512,
    backend: str = "reference",
    limits: dict[str, int] | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> list[PerplexityResult]:
    """Stream `tokens` tokens of `long_text()` through each candidate, `chunk` tokens per forward.

    `limits` caps the tokens streamed for some candidates by label (dense attention past 16K
    tokens costs many CPU minutes); their later windows are reported as missing.
    """
    ids = _tok(tok, long_text())
    if len(ids) < tokens + 1:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than tokens={tokens} + 1")
    ids = torch.tensor([ids[: tokens + 1]])
    shape = hf.model_shape(model.config)
    per_head = shape.layers * shape.kv_heads
    runner = Runner(model, backend)
    results = []
    for cand in candidates:
        n_tok = min(tokens, (limits or {}).get(cand.label, tokens))
        nll = torch.zeros(n_tok, dtype=torch.float64)
        held = torch.zeros(n_tok, dtype=torch.long)
        with runner.session(cand) as handle:
            cache = handle.new_cache() if handle is not None else None
            with torch.no_grad():
                for s in range(0, n_tok, chunk):
                    e = min(s + chunk, n_tok)
                    out = model(ids[:, s:e], cache=cache, use_cache=True)
                    cache = out.cache
                    logp = torch.log_softmax(out.logits[0].double(), -1)
                    nll[s:e] = -logp.gather(1, ids[0, s + 1 : e + 1, None])[:, 0]
                    used, _ = _cache_tokens(model, cache)
                    held[s:e] = used // per_head
                    if progress:
                        progress(cand.label, e - s)
        wins, ppl, kv = [], [], []
        for w in range(0, tokens, window):
            wins.append((w, min(w + window, tokens)))
            if w >= n_tok:
                ppl.append(float("nan"))
                kv.append(0)
                continue
            we = min(w + window, n_tok)
            ppl.append(math.exp(float(nll[w:we].mean())))
            kv.append(int(held[w:we].max()))
        results.append(PerplexityResult(cand.label, wins, ppl, kv, n_tok))
    return results


# ----------------------------------------------------------------------------- reporting


def passkey_table(results: list[PasskeyResult]):
    from rich.table import Table

    lengths = sorted({r.length for r in results})
    table = Table(
        title="passkey retrieval (exact match), share of the prompt's causal pairs attended, KV memory held after it"
    )
    table.add_column("pattern")
    for n in lengths:
        table.add_column(f"{n} acc", justify="right")
        table.add_column(f"{n} pairs", justify="right")
        table.add_column(f"{n} KV", justify="right")
    for label in dict.fromkeys(r.pattern for r in results):
        row = [label]
        for n in lengths:
            r = next((x for x in results if x.pattern == label and x.length == n), None)
            row += (
                [f"{r.correct}/{r.trials}", f"{100 * r.pairs:.1f}%", f"{100 * r.kv_ratio:.1f}%"] if r else ["", "", ""]
            )
        table.add_row(*row)
    return table


def perplexity_table(results: list[PerplexityResult]):
    from rich.table import Table

    table = Table(title="perplexity per window of positions (KV tokens per layer and KV head held)")
    table.add_column("window")
    for r in results:
        table.add_column(f"{r.pattern} ppl", justify="right")
        table.add_column("KV", justify="right")
    for i, (a, b) in enumerate(results[0].windows):
        row = [f"{a // 1024}K-{b // 1024}K"]
        for r in results:
            p = r.perplexity[i]
            row += ["-" if math.isnan(p) else f"{p:.2f}", "-" if math.isnan(p) else str(r.kv_tokens[i])]
        table.add_row(*row)
    return table


def to_json(results: list[Any]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)
