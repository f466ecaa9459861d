"""The records that describe a generated module's KV cache: plain data, no torch.

`Policy` (the lossy part of one KV head's cache, policies.py), `HeadRule` (the store of one
KV head, cache.py) and `Select` (one KV head's decode-time selection, paged.py) are filled in by the code generator (codegen/decode_plan.py) and read by
the generated module, which inlines this file first; keeping them free of torch lets
`attnc compile` plan a cache without importing torch.
"""

from __future__ import annotations

from typing import NamedTuple


class Policy(NamedTuple):
    """The lossy part of one (layer, KV head)'s cache (resolved from the file's cache block)."""

    index: int  # which cache policy of the program (heads of one index and budget evict together)
    budget: int | None  # tokens; None with an adaptive budget (set at run time)
    adaptive_mean: int | None  # CAKE's mean budget per layer, or None
    sink: int
    recent: int
    score: str | None  # a key of SCORERS; None: evict the oldest unprotected token (FIFO)
    timing: str  # "prefill" | "decode"
    aggregate: str  # over the query heads of a KV head: "mean" | "max" | "sum"
    window: int  # snapkv's observation window (0 for other scores)
    pool: str  # "max" | "avg" (snapkv)
    kernel: int  # snapkv's pooling kernel (odd)
    tau1: float = 1.0  # CAKE's temperatures
    tau2: float = 1.0

    @property
    def protected_recent(self) -> int:
        """The newest positions never evicted: `recent`, and for SnapKV its observation window."""
        return max(self.recent, self.window if self.score == "snapkv" else 0)

    @property
    def protected(self) -> int:
        """Tokens the keep rules protect: the smallest budget that makes sense."""
        return self.sink + self.protected_recent


class HeadRule(NamedTuple):
    """The store of one (layer, KV head) (codegen/decode_plan.py's Layout and policy)."""

    kind: str  # "dense" | "ring" | "chunk" | "lossy"
    sink: int = 0  # keys below this position stay
    span: int = 0  # positions the ring serves
    ring: int = 0  # ring slots
    smod: int = 1  # stripe modulus (1: no stripes)
    sres: tuple = ()  # stripe residues
    chunk: int = 0
    policy: int = -1  # index into CacheSpec.policies, or -1 (lossless)
    rerotate: bool = False  # keys stored before RoPE, rotated to their cache slot


class Select(NamedTuple):
    """Decode-time selection of one (layer, KV head) (the cache block's `select`)."""

    score: str  # "quest" (per-page channel min/max), "mean" (the page's mean key), "tokens" (exact)
    units: int  # pages (quest, mean) or tokens (tokens) chosen per step, besides the keep rules
    sink: int  # keep rules: positions < sink and the newest `recent` are always read
    recent: int
    aggregate: str  # over the query heads of the KV head (and the step's tokens): mean | max | sum
    bits: int = 16  # quest's summaries: the cache's dtype (16), or float8 rounded outward (8)
