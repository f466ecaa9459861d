"""The render table (codegen/masks.py) evaluated by torch against the IR's own predicate."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnc.codegen.masks import render_pattern
from attnc.compiler.ir import Lit, Neighborhood, Pattern, Term
from attnc.compiler.lower import lower_expr
from tests.strategies import examples, expressions
from tests.test_codegen_support import EXPRS, as_pattern
from tests.test_grids_spec import brute_pairs, grids


def _evaluate(pattern, n: int) -> np.ndarray:
    text = render_pattern(pattern)
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    expr = " & ".join(text.common) if text.common else "(k >= 0)"
    if text.terms:
        expr = f"({expr}) & ({' | '.join(text.terms)})"
    return torch.broadcast_to(eval(expr, {"q": q, "k": k}), (n, n)).numpy()


def test_fixed_cases():
    for name, expr in EXPRS.items():
        pattern = as_pattern(expr)
        assert (_evaluate(pattern, 90) == pattern.mask(90)).all(), name


@examples(75)
@given(expressions(), st.integers(1, 60))
def test_random_patterns(expr, n):
    pattern = lower_expr(expr)
    assert (_evaluate(pattern, n) == pattern.mask(n)).all()


def test_shared_bounds_are_factored_out():
    text = render_pattern(as_pattern(EXPRS["sink_window"]))
    assert text.common == ("(k <= q)",) and text.terms == ("(k >= q - 19)", "(k <= 3)")


@examples(40)
@given(grids(max_tokens=150))
def test_neighbourhoods_render_natten_with_strides(g):
    """The generic kernel's neighbourhood text (strides, dilations, causal axes) against the
    independent brute force of NATTEN's definition."""
    dims, kernel, dilation, causal, prefix, stride = g
    pattern = Pattern((Term((Lit(Neighborhood(dims, kernel, dilation, causal, prefix, stride)),)),))
    n = prefix + math.prod(dims)
    assert (_evaluate(pattern, n) == brute_pairs(*g)).all()
