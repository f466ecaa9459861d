"""Patterns whose constants sit at the language's limit (2**30) compile: the cache planning works
on runs of keys and bounded periods, never on every position a store may hold."""

from __future__ import annotations

import pytest

from attnc.codegen.decode_plan import plan_decode
from attnc.codegen.writer import render_module
from attnc.compiler.lower import lower
from attnc.spec.resolve import resolve_text

BIG = 2**30


@pytest.mark.parametrize(
    "expr",
    [f"sink({BIG}) | window(8)", f"global({BIG}) | window(8)", f"window(8) | stride({BIG}, 5)", f"window({BIG})"],
)
def test_limit_constants_compile(expr):
    program = lower(resolve_text(f"pattern p = causal & ({expr})\n"))
    plan = plan_decode(program)
    assert plan is not None
    layout = plan.heads[0][0].layout
    assert layout.tokens(100) <= 100  # the store never holds more than the tokens seen
    assert "def prefill" in render_module(program)
