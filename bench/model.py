"""attnc inside a model: time to first token, decode tokens per second, memory.

A Llama-3.1-8B-shaped model in plain torch (32 layers, 4096 hidden, 32 query heads, 8 KV
heads, D = 128, SwiGLU 14336, vocabulary 128256, random bf16 weights: speed does not depend
on them; RoPE without Llama 3.1's frequency scaling), equal layer for layer to Hugging
Face's LlamaForCausalLM (tests/test_model.py checks it on the CPU), with pluggable attention:

- `sdpa`: scaled_dot_product_attention (Hugging Face's default): causal prefill, decode over
  a static cache of max_len slots with a key mask (what a static cache does in transformers);
- `flex`: FlexAttention (torch.compile'd flex_attention; unfused on the CPU): causal block
  mask at prefill, a key-mask mask_mod over the static cache at decode;
- `flex_window`: FlexAttention with the `streaming` pattern's mask, causal & (sink(4) |
  window(1020)), as Hugging Face's flex backend runs a sliding-window model: the block mask
  skips the blocks outside the sink and the window at prefill; at decode the mask_mod keeps
  the sink and the window of the static cache;
- attnc modules (generated from patterns/*.attn for this model's shape): `causal`
  (dense_causal), `streaming` (streaming_llm: sink 4 + window 1020), `duo` (duo_attention:
  a quarter of the KV heads full, the rest sink 64 + window 256), `power`
  (power_attention). Prefill runs the generated `prefill`, decode the generated `Cache` and
  `decode`: the fused step (`Cache.decode(layer, q, k, v)`: the decode kernel appends the
  token; one launch per layer); `<module>+append` (e.g. `causal+append`) runs the step as
  append, then decode, for comparison; `<module>+contiguous` copies q, k, v to (B, H, T, D)
  order before the prefill (the projections leave them strided). StreamingLLM's `positions = rerotate` is not applied
  (keys are rotated with their original positions): the same work, other numbers.

Batches are left-padded (`lengths`: each row's tokens are its last ones). Each row's
positions, the caches' lengths and the write index live on the device, so that one decode
step of the whole model is captured in a CUDA graph and replayed.

    python bench/model.py generate                  # here (needs attnc): bench/generated/model_*.py
    python3 bench/model.py run                      # GPU machine (torch and triton only)
    TRITON_INTERPRET=1 python bench/model.py run --smoke    # CPU, tiny config (a test runs it)

`run` measures, per attention: time to first token (B = 1) at 1K, 32K and 128K tokens (the
median of 3 passes up to 8K, each with a fresh cache, after a pass at the same length; the
kernels for that length compiled before the timed pass);
decode tokens/s from CUDA-graph replays of one step (and eager) at 32K and 128K for B = 1,
the goal's batch (8 at 32K, 2 at 128K) and the largest batch that fits; peak GPU memory; the
largest batch whose cache fits next to the weights at 128K; it checks the graph replay
against eager steps. Prints a markdown table, writes $OUT/model.json and $OUT/model.md
(default ./out/). `--profile`: a torch.profiler table of one 1K-token pass per attention
(device time, host time, synchronisations), also in $OUT/model_profile.txt; `--profile-at N`
profiles an N-token pass instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GEN = HERE / "generated"


@dataclass(frozen=True)
class Config:
    vocab: int = 128256
    hidden: int = 4096
    inter: int = 14336
    layers: int = 32
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 500000.0
    eps: float = 1e-5

    def model(self) -> dict:
        """The `model` block of the attnc patterns compiled for this shape."""
        return {"layers": self.layers, "heads": self.heads, "kv_heads": self.kv_heads, "head_dim": self.head_dim}


LLAMA_8B = Config()
TINY = Config(vocab=128, hidden=64, inter=128, layers=2, heads=4, kv_heads=2, head_dim=16, rope_theta=10000.0)
PATTERNS = {"causal": "dense_causal", "streaming": "streaming_llm", "duo": "duo_attention", "power": "power_attention"}


# ------------------------------------------------------------------ the model (Hugging Face's Llama, in plain torch)
class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.q_proj = nn.Linear(c.hidden, c.heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.hidden, bias=False)


class MLP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden, c.inter, bias=False)
        self.up_proj = nn.Linear(c.hidden, c.inter, bias=False)
        self.down_proj = nn.Linear(c.inter, c.hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden, c.eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden, c.eps)
        self.mlp = MLP(c)


class Body(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab, c.hidden)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.layers))
        self.norm = RMSNorm(c.hidden, c.eps)


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Llama(nn.Module):
    """LlamaForCausalLM's computation (parameter names included, so that its state_dict loads),
    with the attention handed to `attn` (a backend below). `forward(ids, attn, pos, lengths)`:
    ids (B, T), pos (B, T) RoPE positions; T > 1 is a prefill (left-padded when `lengths` is
    given), T == 1 a decode step. Returns the logits of the last token, or of all with
    last_only=False; `trace` (a list) collects each layer's output."""

    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.model = Body(c)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.int64).float() / c.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def rope(self, pos, dtype):
        f = pos[..., None].float() * self.inv_freq
        emb = torch.cat((f, f), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # (B, 1, T, D)

    def forward(self, ids, attn, pos, lengths=None, last_only=True, trace=None, chunk=8192):
        c = self.config
        B, T = ids.shape
        x = self.model.embed_tokens(ids)
        cos, sin = self.rope(pos, x.dtype)
        for i, layer in enumerate(self.model.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(B, T, c.heads, c.head_dim).transpose(1, 2)
            k = a.k_proj(h).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
            del h
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            o = attn.prefill(i, q, k, v, lengths) if T > 1 else attn.decode(i, q, k, v)
            del q, k, v
            x = x + a.o_proj(o.transpose(1, 2).reshape(B, T, c.heads * c.head_dim))
            del o
            for s in range(0, T, chunk):  # the MLP in chunks of rows: its activations are the largest
                part = x[:, s : s + chunk]
                part += layer.mlp(layer.post_attention_layernorm(part))
            if trace is not None:
                trace.append(x)
        x = x[:, -1:] if last_only else x
        return self.lm_head(self.model.norm(x))


def random_model(c: Config, device, dtype, seed: int = 0) -> Llama:
    """The model with random weights (normal, std 0.02; norms at 1), built on `device` in
    `dtype` directly (no float32 copy of the weights)."""
    with torch.device("meta"):
        m = Llama(c)
    m = m.to(dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    # RoPE frequencies stay float32, as in transformers
    m.inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, device=device).float() / c.head_dim))
    return m


def positions(lengths, T: int, device):
    """RoPE positions (B, T) of a left-padded batch: each row counts its own tokens from 0."""
    idx = torch.arange(T, device=device)[None, :]
    return (idx - (T - lengths.to(device)[:, None])).clamp_min(0)


# ------------------------------------------------------------------ attention backends
class Sdpa:
    """Dense attention over a static cache of max_len slots (a row's slot = its index in the
    padded batch; `valid` masks the padding and the slots not yet written; `idx`, the next
    slot, is a device tensor)."""

    name = "sdpa"

    def __init__(self, c: Config, batch: int, max_len: int, device, dtype):
        shape = (c.layers, batch, c.kv_heads, max_len, c.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros((batch, max_len), device=device, dtype=torch.bool)
        self.idx = torch.zeros(1, device=device, dtype=torch.int64)

    def prefill(self, layer, q, k, v, lengths):
        T = q.shape[2]
        self.k[layer, :, :, :T] = k
        self.v[layer, :, :, :T] = v
        if layer == 0:
            self.valid[:, :T] = _key_mask(lengths, q.shape[0], T, q.device)
            self.idx.fill_(T)
        if lengths is None:
            return self._attend_prefill(q, k, v)
        mask = self._allowed(T, lengths, q.device)[:, None] & self.valid[:, None, None, :T]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).nan_to_num(0.0)

    def _allowed(self, T: int, lengths, device):
        """(B, T, T): may query i attend key j of a left-padded prompt (each row's positions)."""
        return torch.ones(T, T, device=device, dtype=torch.bool).tril().expand(len(lengths), T, T)

    def _attend_prefill(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def decode(self, layer, q, k, v):
        self.k[layer].index_copy_(2, self.idx, k)
        self.v[layer].index_copy_(2, self.idx, v)
        if layer == 0:
            self.valid.index_fill_(1, self.idx, True)
        if layer == len(self.k) - 1:
            self.idx += 1
        return self._attend_decode(layer, q)

    def _attend_decode(self, layer, q):
        """The G query heads of a KV head as G query rows (no GQA expansion: SDPA's
        memory-efficient kernel with the key mask, over the whole static cache)."""
        B, H, _, D = q.shape
        k, v = self.k[layer], self.v[layer]
        rows = q.reshape(B, k.shape[1], H // k.shape[1], D)
        o = F.scaled_dot_product_attention(rows, k, v, attn_mask=self.valid[:, None, None, :])
        return o.reshape(B, H, 1, D)


def _key_mask(lengths, B: int, T: int, device):
    if lengths is None:
        return torch.ones((B, T), device=device, dtype=torch.bool)
    return torch.arange(T, device=device)[None, :] >= (T - lengths.to(device)[:, None])


class Flex(Sdpa):
    """FlexAttention: a causal block mask at prefill (no padding), a key mask over the static
    cache at decode (every block partial, so that the mask_mod reads `valid` at run time)."""

    name = "flex"
    _compiled = None  # prefill: one compile per sequence length
    _compiled_decode = None  # decode: one compile per (batch, cache length)
    masks: dict = {}  # causal block masks per (length, device)

    def __init__(self, c: Config, batch: int, max_len: int, device, dtype):
        super().__init__(c, batch, max_len, device, dtype)
        from torch.nn.attention.flex_attention import BlockMask, flex_attention

        self.eager = torch.device(device).type != "cuda"  # the CPU smoke run: flex_attention unfused
        if Flex._compiled is None:
            import torch._dynamo as dynamo

            for knob in ("cache_size_limit", "recompile_limit"):  # one compile per shape, not eager past 8
                if hasattr(dynamo.config, knob):
                    setattr(dynamo.config, knob, 64)
            Flex._compiled = torch.compile(flex_attention, dynamic=False)
            Flex._compiled_decode = torch.compile(flex_attention, dynamic=False)
        self.flex = flex_attention if self.eager else Flex._compiled
        self.flex_decode = flex_attention if self.eager else Flex._compiled_decode
        blocks = -(-max_len // 128)
        self.decode_mask = BlockMask.from_kv_blocks(
            torch.full((1, 1, 1), blocks, device=device, dtype=torch.int32),
            torch.arange(blocks, device=device, dtype=torch.int32).view(1, 1, 1, blocks),
            BLOCK_SIZE=128,
            mask_mod=self._decode_mod(),
            seq_lengths=(1, max_len),
        )

    def _decode_mod(self):
        """The decode step's mask_mod over the static cache: the slots written so far."""
        valid = self.valid

        def key_mask(b, h, q_idx, kv_idx):
            return valid[b, kv_idx]

        return key_mask

    def _prefill_mod(self):
        """The prompt's mask_mod (no padding): causal."""
        return lambda b, h, qi, ki: ki <= qi

    def _attend_prefill(self, q, k, v):
        from torch.nn.attention.flex_attention import create_block_mask

        T = q.shape[2]
        key = (self.name, T, q.device)
        if key not in Flex.masks:
            Flex.masks[key] = create_block_mask(
                self._prefill_mod(), None, None, T, T, device=q.device, _compile=q.is_cuda
            )
        return self.flex(q, k, v, block_mask=Flex.masks[key], enable_gqa=True)

    def warm(self, n: int, c: Config, device, dtype) -> None:
        """Compile the prefill attention for n tokens (outside the timed forward pass)."""
        q = torch.randn(1, c.heads, n, c.head_dim, device=device, dtype=dtype)
        k = torch.randn(1, c.kv_heads, n, c.head_dim, device=device, dtype=dtype)
        self._attend_prefill(q, k, k)

    def _attend_decode(self, layer, q):
        return self.flex_decode(q, self.k[layer], self.v[layer], block_mask=self.decode_mask, enable_gqa=True)


class FlexWindow(Flex):
    """FlexAttention with the `streaming` pattern's mask, causal & (sink(S) | window(W)), as
    Hugging Face's flex backend runs a sliding-window model: a block mask at prefill (blocks
    outside the sink and the window skipped), at decode the written slots within the sink or
    the window of the static cache (each row's positions: slot - its padding)."""

    name = "flex_window"

    def __init__(self, c: Config, batch: int, max_len: int, device, dtype, sink: int = 4, window: int = 1020):
        self.sink, self.window = sink, window
        self.pad = torch.zeros(batch, device=device, dtype=torch.int64)  # each row's padding
        self.slot = torch.zeros(1, device=device, dtype=torch.int64)  # the decode step's query slot
        super().__init__(c, batch, max_len, device, dtype)

    def prefill(self, layer, q, k, v, lengths):
        if layer == 0 and lengths is not None:
            self.pad.copy_(q.shape[2] - lengths.to(self.pad))
        return super().prefill(layer, q, k, v, lengths)

    def decode(self, layer, q, k, v):
        if layer == 0:  # idx moves on at the last layer, before its attention
            self.slot.copy_(self.idx)
        return super().decode(layer, q, k, v)

    def _allowed(self, T: int, lengths, device):
        pos = torch.arange(T, device=device)[None, :] - (T - lengths.to(device)[:, None])  # (B, T)
        d = pos[:, :, None] - pos[:, None, :]
        return (d >= 0) & ((pos[:, None, :] < self.sink) | (d < self.window))

    def _prefill_mod(self):
        S, W = self.sink, self.window
        return lambda b, h, qi, ki: (ki <= qi) & ((ki < S) | (qi - ki < W))

    def _decode_mod(self):
        valid, slot, pad, S, W = self.valid, self.slot, self.pad, self.sink, self.window

        def window_mask(b, h, q_idx, kv_idx):
            return valid[b, kv_idx] & ((kv_idx - pad[b] < S) | (slot[0] - kv_idx < W))

        return window_mask


class Attnc:
    """A generated module: `prefill` for the prompt, its `Cache` and `decode` for the steps."""

    def __init__(self, mod, name: str, c: Config, batch: int, max_len: int, device, dtype):
        self.mod = mod
        self.name = name
        self.cache = mod.Cache(batch, device=device, dtype=dtype, max_len=max_len)
        self.per_layer = mod.PATTERN["varies_by_layer"]

    def prefill(self, layer, q, k, v, lengths):
        o = self.mod.prefill(q, k, v, layer=layer if self.per_layer else None, lengths=lengths)
        self.cache.append(layer, k, v, q, lengths=lengths)
        return o

    def decode(self, layer, q, k, v):  # lossless layers: the decode kernel appends k, v (one launch)
        return self.cache.decode(layer, q, k, v)

    def warm(self, n: int, c: Config, device, dtype) -> None:
        """Compile the prefill and the prompt's append for n tokens (Triton specialises on the
        sizes) outside the timed forward pass, as a server that has seen such a prompt has."""
        q = torch.randn(1, c.heads, n, c.head_dim, device=device, dtype=dtype)
        k = torch.randn(1, c.kv_heads, n, c.head_dim, device=device, dtype=dtype)
        cache = self.mod.Cache(1, device=device, dtype=dtype, max_len=n + 16)
        for layer in range(c.layers) if self.per_layer else [0]:
            self.mod.prefill(q, k, k, layer=layer if self.per_layer else None)
            cache.append(layer, k, k, q)
        torch.cuda.synchronize(device) if device.type == "cuda" else None


class AttncAppend(Attnc):
    """`<module>+append`: the decode step as append, then decode (two launches per layer), for
    comparison with the fused step."""

    def decode(self, layer, q, k, v):
        self.cache.append(layer, k, v, q)
        return self.cache.decode(layer, q)


class AttncContiguous(Attnc):
    """`<module>+contiguous`: the prefill given q, k, v copied to (B, H, T, D) order first (the
    model's projections leave them as (B, T, H, D) viewed), to measure what the layout costs."""

    def prefill(self, layer, q, k, v, lengths):
        return super().prefill(layer, q.contiguous(), k.contiguous(), v.contiguous(), lengths)


def make_backend(name: str, mods: dict, c: Config, batch: int, max_len: int, device, dtype):
    if name == "sdpa":
        return Sdpa(c, batch, max_len, device, dtype)
    if name == "flex":
        return Flex(c, batch, max_len, device, dtype)
    if name == "flex_window":
        return FlexWindow(c, batch, max_len, device, dtype)
    if name.endswith("+append"):
        return AttncAppend(mods[name[: -len("+append")]], name, c, batch, max_len, device, dtype)
    if name.endswith("+contiguous"):
        return AttncContiguous(mods[name[: -len("+contiguous")]], name, c, batch, max_len, device, dtype)
    return Attnc(mods[name], name, c, batch, max_len, device, dtype)


# ------------------------------------------------------------------ generation steps
class Generator:
    """Prefill then decode steps of one batch, with each row's next position on the device."""

    def __init__(self, model: Llama, attn):
        self.model, self.attn = model, attn
        self.pos = None

    @torch.no_grad()
    def prefill(self, ids, lengths=None):
        B, T = ids.shape
        lens = lengths if lengths is not None else torch.full((B,), T, device=ids.device)
        logits = self.model(ids, self.attn, positions(lens, T, ids.device), lengths)
        self.pos = lens.to(ids.device, torch.int64).clone()[:, None]
        return logits

    @torch.no_grad()
    def step(self, ids):
        """One decode step: ids (B, 1) -> logits (B, 1, vocab); no host synchronisation."""
        logits = self.model(ids, self.attn, self.pos)
        self.pos += 1
        return logits


def graph_step(gen: Generator, ids):
    """(replay, static ids, static logits): one decode step captured in a CUDA graph (the
    warm-up before the capture is a real step)."""
    static_ids = ids.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        gen.step(static_ids)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        logits = gen.step(static_ids)
    return g.replay, static_ids, logits


# ------------------------------------------------------------------ generate (here)
def generate(smoke: bool = False) -> None:
    """Compile the patterns for the model's shape (and the tiny one) into bench/generated/."""
    sys.path.insert(0, str(ROOT))
    from attnc.codegen.loader import compile_file

    sys.path.insert(0, str(HERE))
    from host import _compile  # the DuoAttention head sets (a quarter of the KV heads full)

    GEN.mkdir(parents=True, exist_ok=True)
    for size, c in (("tiny", TINY),) if smoke else (("8b", LLAMA_8B), ("tiny", TINY)):
        for name, pattern in PATTERNS.items():
            path = _compile(compile_file, pattern, c.model(), GEN / f"model_{size}_{name}", {})
            target = GEN / f"model_{size}_{name}.py"
            path.replace(target)
            print(f"wrote {target}")


def load_modules(size: str, names) -> dict:
    sys.path.insert(0, str(ROOT))
    from codegen.importing import import_module_from_path  # the standard library only

    return {n: import_module_from_path(GEN / f"model_{size}_{n}.py", f"attnc_model_{size}_{n}") for n in names}


# ------------------------------------------------------------------ run (GPU machine)
def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _seconds(fn, dev, reps: int = 1) -> float:
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(dev)
    return (time.perf_counter() - t0) / reps


def ttft(model, name, mods, c, n: int, dev, dtype, reps: int = 1) -> dict:
    """Time to first token at B = 1: the prompt's forward pass with the cache filled (the
    median of `reps` passes, each with a fresh cache), and the peak memory of that pass."""
    times = []
    for _ in range(reps):
        attn = make_backend(name, mods, c, 1, n + 16, dev, dtype)
        if hasattr(attn, "warm"):
            attn.warm(n, c, dev, dtype)
        ids = torch.randint(0, c.vocab, (1, n), device=dev)
        gen = Generator(model, attn)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times.append(_seconds(lambda: gen.prefill(ids), dev))
        peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else 0
        del attn, gen
    return {"s": sorted(times)[len(times) // 2], "all_s": times, "peak_gib": peak / 2**30}


def profile_ttft(model, name, mods, c, n: int, dev, dtype, top: int = 12) -> str:
    """torch.profiler over one time-to-first-token pass (after a warm one): the operators
    with the most device time and the most host time, and the host-device synchronisations
    and copies (each one drains the GPU's queue: the host then waits for it)."""
    from torch.profiler import ProfilerActivity, profile

    ttft(model, name, mods, c, n, dev, dtype)
    attn = make_backend(name, mods, c, 1, n + 16, dev, dtype)
    if hasattr(attn, "warm"):
        attn.warm(n, c, dev, dtype)
    ids = torch.randint(0, c.vocab, (1, n), device=dev)
    gen = Generator(model, attn)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    _sync(dev)
    with profile(activities=acts) as prof:
        gen.prefill(ids)
        _sync(dev)
    ev = prof.key_averages()
    device_key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    syncs = [e for e in ev if "Synchronize" in e.key or "Memcpy" in e.key or "item" in e.key]
    lines = [f"{name}, TTFT {n} tokens:", ev.table(sort_by=device_key, row_limit=top),
             ev.table(sort_by="self_cpu_time_total", row_limit=top),
             "synchronisations and copies: " + (", ".join(f"{e.key} x{e.count}" for e in syncs) or "none")]  # fmt: skip
    del attn, gen
    return "\n".join(lines)


def fill(gen: Generator, c: Config, B: int, n: int, dev, dtype, chunk: int = 16384) -> None:
    """Put n random tokens' keys and values in every layer's cache (what a prefill leaves,
    without computing it) and set the positions."""
    attn = gen.attn
    g = torch.Generator(device=dev).manual_seed(n)
    for layer in range(c.layers):
        if isinstance(attn, Sdpa):
            attn.k[layer, :, :, :n].normal_(generator=g)
            attn.v[layer, :, :, :n].normal_(generator=g)
            continue
        for s in range(0, n, chunk):
            T = min(chunk, n - s)
            k = torch.randn(B, c.kv_heads, T, c.head_dim, device=dev, dtype=dtype, generator=g)
            attn.cache.append(layer, k, k)
    if isinstance(attn, Sdpa):
        attn.valid[:, :n] = True
        attn.idx.fill_(n)
    gen.pos = torch.full((B, 1), n, device=dev, dtype=torch.int64)


def cache_bytes(name, mods, c, n: int, dev, dtype) -> int:
    """Bytes one sequence's cache holds at n tokens (allocated, all layers)."""
    if name in ("sdpa", "flex", "flex_window"):
        return 2 * c.layers * c.kv_heads * n * c.head_dim * torch.finfo(dtype).bits // 8 + n
    attn = make_backend(name, mods, c, 1, n + 64, dev, dtype)
    fill(Generator(None, attn), c, 1, min(n, 4096) if dev.type == "cpu" else n, dev, dtype)
    return sum(attn.cache.allocated())


def decode_rate(model, name, mods, c, B: int, n: int, dev, dtype, steps: int, graph: bool) -> dict:
    """Decode tokens/s at batch B after n tokens: eager steps, and CUDA-graph replays."""
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    attn = make_backend(name, mods, c, B, n + 2 * steps + 8, dev, dtype)
    gen = Generator(model, attn)
    fill(gen, c, B, n, dev, dtype)
    ids = torch.randint(0, c.vocab, (B, 1), device=dev)
    gen.step(ids)  # compiles what it must
    eager = _seconds(lambda: gen.step(ids), dev, steps)
    out = {"B": B, "eager_s": eager, "eager_tok_s": B / eager}
    if graph:
        replay, _, _ = graph_step(gen, ids)
        t = _seconds(replay, dev, steps)
        out.update(graph_s=t, graph_tok_s=B / t)
    if dev.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del attn, gen
    return out


def check_graph(model, name, mods, c, dev, dtype, n: int = 512, B: int = 2) -> float:
    """Largest |logit difference| between CUDA-graph replays and eager steps from the same
    padded prompt (rows of different lengths)."""
    lengths = torch.tensor([n, n // 2 + 3][:B], device=dev)
    ids = torch.randint(0, c.vocab, (B, n), device=dev)
    a = Generator(model, make_backend(name, mods, c, B, n + 16, dev, dtype))
    b = Generator(model, make_backend(name, mods, c, B, n + 16, dev, dtype))
    a.prefill(ids, lengths)
    b.prefill(ids, lengths)
    toks = torch.randint(0, c.vocab, (4, B, 1), device=dev)
    a.step(toks[0])
    replay, static_ids, logits = graph_step(b, toks[0])  # its warm-up is the first step
    worst = 0.0
    for t in toks[1:]:
        want = a.step(t)
        static_ids.copy_(t)
        replay()
        worst = max(worst, float((logits.float() - want.float()).abs().max()))
    return worst


def run(args) -> dict:
    smoke = args.smoke
    dev = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    c = TINY if smoke else replace(LLAMA_8B, layers=args.layers)
    names = args.attention
    mods = load_modules("tiny" if smoke else "8b", sorted({n.removesuffix("+append") for n in names} & set(PATTERNS)))
    short, contexts = (16, (48, 96)) if smoke else (1024, (32768, 131072))
    goal_batch = {contexts[0]: 2 if smoke else 8, contexts[1]: 2}
    steps = 2 if smoke else 10
    max_batch = 2 if smoke else args.max_batch
    timed = [n for n in contexts if smoke or n in args.contexts]  # the long contexts this run times
    t_start = time.time()
    res = {"device": torch.cuda.get_device_name() if not smoke else "cpu", "torch": torch.__version__,
           "layers": c.layers, "rows": {}}  # fmt: skip
    model = random_model(c, dev, dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    total = torch.cuda.get_device_properties(dev).total_memory if not smoke else 8 << 30
    res["weights_gib"] = weights / 2**30
    reserve = (4 << 30) if not smoke else 0  # decode workspace, allocator slack
    for name in names:
        row = res["rows"].setdefault(name, {"ttft": {}, "decode": {}, "max_batch": {}, "errors": []})
        try:
            row["graph_check_max_abs"] = check_graph(model, name, mods, c, dev, dtype) if not smoke else None
            if args.profile:
                row["profile"] = profile_ttft(model, name, mods, c, args.profile_at or short, dev, dtype)
                print(row["profile"], flush=True)
            for n in (short, *timed):
                if time.time() - t_start > args.budget:
                    row["errors"].append(f"ttft {n}: skipped (time budget)")
                    continue
                ttft(model, name, mods, c, min(n, short), dev, dtype)  # compile at a short length
                if short < n <= 32768:  # and at n: launch choices that depend on N (the grid order) compile here
                    ttft(model, name, mods, c, n, dev, dtype)
                row["ttft"][n] = ttft(model, name, mods, c, n, dev, dtype, reps=3 if n <= 8192 else 1)
                print(f"{name} ttft N={n}: {row['ttft'][n]['s'] * 1e3:.1f} ms", flush=True)
            for n in timed:
                per_seq = cache_bytes(name, mods, c, n, dev, dtype)
                fits = max(0, int((total - weights - reserve) // max(per_seq, 1)))
                row["max_batch"][n] = {"cache_gib_per_seq": per_seq / 2**30, "fits": fits}
                for B in sorted({1, goal_batch[n], min(max(fits, 1), max_batch)}):
                    if B > fits or time.time() - t_start > args.budget:
                        row["errors"].append(f"decode {n}/{B}: skipped ({'fits ' + str(fits) if B > fits else 'time'})")
                        continue
                    try:
                        r = decode_rate(model, name, mods, c, B, n, dev, dtype, steps, graph=not smoke)
                    except Exception as e:  # noqa: BLE001  (out of memory at the largest batch, say)
                        row["errors"].append(f"decode {n}/{B}: {e!r}"[:300])
                        if dev.type == "cuda":
                            torch.cuda.empty_cache()
                        continue
                    row["decode"][f"{n}/{B}"] = r
                    print(f"{name} decode N={n} B={B}: {r.get('graph_tok_s', r['eager_tok_s']):.1f} tok/s", flush=True)
        except Exception as e:  # noqa: BLE001  (one backend failing must not lose the others)
            row["errors"].append(repr(e))
            print(f"{name}: {e!r}", flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    res["seconds"] = time.time() - t_start
    text = render(res, contexts, short, (goal_batch[contexts[0]], goal_batch[contexts[1]]))
    print(text)
    out = Path(os.environ.get("OUT", ROOT / "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "model.md").write_text(text + "\n")
    if args.profile:
        (out / "model_profile.txt").write_text("\n\n".join(r.get("profile", "") for r in res["rows"].values()))
    return res


def render(res: dict, contexts, short: int, goal=(8, 2)) -> str:
    n1, n2 = contexts
    g1, g2 = goal
    lines = [
        f"Llama-3.1-8B shape ({res['layers']} layers, 32/8 heads, D=128, bf16), {res['device']}, torch {res['torch']}",
        "",
        f"| attention | TTFT {short} | TTFT {n1} | TTFT {n2} | peak GiB ({n2} prefill) | tok/s {n1} B=1 | "
        f"tok/s {n1} B={g1} | tok/s {n1} B=max | tok/s {n2} B=1 | tok/s {n2} B={g2} | tok/s {n2} B=max | "
        f"cache GiB/seq at {n2} | fits at {n2} | graph check |",
        "|---|" + "---:|" * 13,
    ]

    def ms(row, n):
        r = row["ttft"].get(n)
        return f"{r['s'] * 1e3:.0f} ms" if r else "-"

    def rate(row, n, which):
        dec = {int(k.split("/")[1]): v for k, v in row["decode"].items() if int(k.split("/")[0]) == n}
        if not dec:
            return "-"
        B = max(dec) if which == "max" else which
        r = dec.get(B)
        if r is None:
            return "-"
        v = r.get("graph_tok_s", r["eager_tok_s"])
        return f"{v:.0f}" + (f" (B={B})" if which == "max" else "")

    for name, row in res["rows"].items():
        mb = row["max_batch"].get(n2, {})
        peak = row["ttft"].get(n2, {}).get("peak_gib")
        check = row.get("graph_check_max_abs")
        lines.append(
            f"| {name} | {ms(row, short)} | {ms(row, n1)} | {ms(row, n2)} | "
            f"{'-' if peak is None else f'{peak:.1f}'} | {rate(row, n1, 1)} | {rate(row, n1, g1)} | "
            f"{rate(row, n1, 'max')} | {rate(row, n2, 1)} | {rate(row, n2, g2)} | {rate(row, n2, 'max')} | "
            f"{mb.get('cache_gib_per_seq', float('nan')):.2f} | {mb.get('fits', '-')} | "
            f"{'-' if check is None else f'{check:.2g}'} |"
        )
    errors = [f"- {n}: {e}" for n, row in res["rows"].items() for e in row["errors"]]
    return "\n".join(lines + ([""] + errors if errors else []) + [f"\n{res['seconds']:.0f} s"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("generate", "run"))
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny config (TRITON_INTERPRET=1)")
    ap.add_argument("--attention", nargs="*",
                    default=["sdpa", "causal", "streaming", "duo", "power", "flex", "flex_window"])  # fmt: skip
    ap.add_argument("--profile", action="store_true", help="profile one time-to-first-token pass per attention")
    ap.add_argument("--profile-at", type=int, default=0, help="tokens of the profiled pass (default: the short prompt)")
    ap.add_argument("--layers", type=int, default=32, help="layers of the timed model (default 32)")
    ap.add_argument("--max-batch", type=int, default=64, help="cap of the largest batch timed")
    ap.add_argument("--budget", type=float, default=420, help="seconds: skip timings past it")
    ap.add_argument("--contexts", type=lambda s: {int(x) for x in s.split(",") if x}, default={32768, 131072},
                    help="the long contexts to time, of 32768,131072 (empty: the short prompt only)")  # fmt: skip
    args = ap.parse_args(argv)  # FlexAttention last: its compiles (one per shape) are the slowest part
    generate(args.smoke) if args.step == "generate" else run(args)


if __name__ == "__main__":
    main()
