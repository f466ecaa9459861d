"""Padded batches: a left-padded batch gives, row by row, what each sequence gives alone.

prefill(..., lengths=) (the generated kernel, through the Triton interpreter) and
reference(..., lengths=) are checked against runs of each row's own tokens at B = 1; the
padding rows must be zeros (lse -inf). Patterns with absolute positions (sinks, chunks,
global keys, power blocks) fail if the padding were numbered as tokens.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_codegen_support import EXPRS, grouped, load, single

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

B, H, HK, N, D = 3, 2, 1, 37, 16
LENGTHS = [37, 19, 0]


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, D, generator=g)
    k = torch.randn(B, HK, N, D, generator=g)
    v = torch.randn(B, HK, N, D, generator=g)
    return q, k, v


def _check_rows(mod, out, lse, q, k, v, lengths, layer=None):
    for b, n in enumerate(lengths):
        pad = N - n
        assert (out[b, :, :pad] == 0).all() and torch.isneginf(lse[b, :, :pad]).all()
        if n == 0:
            continue
        rows = (slice(b, b + 1), slice(None), slice(pad, N))
        want, want_lse = mod.prefill(q[rows], k[rows], v[rows], return_lse=True, layer=layer)
        torch.testing.assert_close(out[rows], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[rows], want_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["causal", "sink_window", "dilated", "strided", "power", "chunk", "global"])
def test_padded_prefill_equals_each_sequence_alone(name):
    mod = load(single(EXPRS[name], name))
    q, k, v = _inputs()
    lengths = torch.tensor(LENGTHS)
    out, lse = mod.prefill(q, k, v, lengths=lengths, return_lse=True)
    _check_rows(mod, out, lse, q, k, v, LENGTHS)
    ref, ref_lse = mod.reference(q, k, v, lengths=lengths, return_lse=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_padded_prefill_with_head_groups_and_int32_lengths():
    mod = load(grouped([[EXPRS["causal"], EXPRS["sink_window"]]], "padmix", kv_heads=1))
    q, k, v = _inputs(1)
    lengths = torch.tensor([5, 37, 30], dtype=torch.int32)
    out, lse = mod.prefill(q, k, v, lengths=lengths, return_lse=True)
    _check_rows(mod, out, lse, q, k, v, lengths.tolist())


def test_lengths_are_clamped_to_the_sequence():
    mod = load(single(EXPRS["causal"], "causal"))
    q, k, v = _inputs(2)
    out = mod.prefill(q, k, v, lengths=torch.tensor([99, -3, 37]))
    torch.testing.assert_close(out, mod.prefill(q, k, v, lengths=torch.tensor([37, 0, 37])))


def test_bad_lengths_are_refused_before_the_kernel():
    mod = load(single(EXPRS["causal"], "causal"))
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="lengths"):
        mod.prefill(q, k, v, lengths=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="lengths"):
        mod.prefill(q, k, v, lengths=torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(TypeError, match="lengths"):
        mod.prefill(q, k, v, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match="backward"):
        mod.prefill(q.requires_grad_(), k, v, lengths=torch.tensor(LENGTHS))
