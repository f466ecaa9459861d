"""The largest sizes an `.attn` file may give, checked when the file is resolved.

Every size that reaches the analyses or a kernel has a maximum, so that a one-line file
cannot make `attnc check`, `analyze` or `compile` run out of memory or time, and so that
every value that passes `check` fits the kernels' int32 index arithmetic: positions and
position constants stay below 2**30, so that sums and differences of two of them (q - k,
k + size) cannot overflow. docs/language.md (section 14) lists these limits for users.
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_POSITION = 2**30
"""Largest sequence length, token-grid size and position constant (window, sink, chunk,
stride, band bounds, power block, dilated span, cache budgets and keep sizes)."""

MAX_MODEL = {"layers": 1024, "heads": 1024, "kv_heads": 1024, "head_dim": 1024}
"""Largest value of each model field (8 times the largest models of 2025). Sections and
caches are resolved per (layer, head) pair, so layers x heads bounds the work of `check`."""


MAX_PAIRS = 2**16
"""Largest layers x heads (four times Llama 3.1 405B's 126 x 128): sections and caches are
resolved per (layer, head) pair."""


def position_problem(value: int, what: str) -> str | None:
    """Why `value` cannot be a position constant (its magnitude is above MAX_POSITION), or None."""
    if abs(value) > MAX_POSITION:
        return f"{what} is {value}, larger than the limit of 2**30 = {MAX_POSITION:,} positions"
    return None


def model_problem(name: str, value: int) -> str | None:
    """Why `value` cannot be the model's field `name`, or None."""
    limit = MAX_MODEL.get(name)
    if limit is not None and value > limit:
        return f"the model's {name} is {value}, more than the limit of {limit:,}"
    return None


def pairs_problem(layers: int, heads: int) -> str | None:
    """Why a model of `layers` x `heads` is too large, or None."""
    if layers * heads > MAX_PAIRS:
        return f"the model has {layers} layers x {heads} heads = {layers * heads:,} (layer, head) pairs, more than the limit of {MAX_PAIRS:,}"
    return None


def limits_table(fields: Mapping[str, int] = MAX_MODEL) -> str:
    """`layers <= 1024, heads <= 1024, ..., layers x heads <= 65536`, for hints."""
    return ", ".join(f"{name} <= {limit}" for name, limit in fields.items()) + f", layers x heads <= {MAX_PAIRS}"
