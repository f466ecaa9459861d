"""Every constant that passes `check` runs: kernels with position constants at the limit (2**30)
against a dense torch reference built from the IR mask, through TRITON_INTERPRET=1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from attnc.compiler.lower import lower
from attnc.loader import import_file
from attnc.codegen.writer import write_module
from attnc.spec.resolve import resolve_text

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Causal sink, global and stride patterns at 2**30 (their decode plans): tests/test_large_constants.py.
BIG = [
    "causal & chunk(2**30)",
    "band(-2**30, 2**30)",
    "window(left = 2**30, right = 2**30)",
    "stride(2**30, 2**30 - 1) | window(3)",
    "causal & power(2**30)",
    "causal & dilated(2, 2**29)",
]


@pytest.mark.parametrize("text", BIG)
def test_constants_at_the_limit_run(text: str, tmp_path: Path) -> None:
    program = lower(resolve_text(f"pattern big = {text}"))
    module = import_file(write_module(program, tmp_path), f"attnc_test_big_{program.digest()}")
    n, d = 40, 16
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, d, generator=gen) for _ in range(3))
    out = module.prefill(q, k, v)
    qi, ki = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    mask = torch.from_numpy(np.asarray(program.groups[0].pattern.holds(qi, ki), dtype=bool))
    scores = (q.double() @ k.double().transpose(-1, -2)) / d**0.5
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
    torch.testing.assert_close(out.double(), weights @ v.double(), atol=1e-4, rtol=1e-4)
