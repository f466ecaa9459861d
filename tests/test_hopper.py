"""The Hopper causal kernel (codegen/support/hopper.py): which launches it serves, the rows its
TMA descriptors address (against indexing the tensors themselves), and a build for sm_90 through
Triton's own ptxas. Gluon has no interpreter: bench/gpu.py checks the kernel against the torch
reference on the GPU (docs/codegen.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnc.codegen.support import hopper
from attnc.compiler.lower import lower
from attnc.compiler.plan import plan_program
from attnc.spec.resolve import resolve_text
from tests.test_codegen_support import have_ptxas


def plan_of(expr: str):
    return plan_program(lower(resolve_text(f"pattern h = {expr}\n", "h.attn")))[0]


@pytest.mark.parametrize(
    "expr, band",
    [("causal", (0, 0)), ("window(64)", (0, 64)), ("causal & window(64)", (0, 64)),
     ("causal & (sink(4) | window(1024))", (4, 1024)), ("causal & (sink(4) | window(8) | sink(16))", (16, 8)),
     ("causal & (window(8) | window(32))", (0, 32)), ("causal | sink(4)", None), ("causal & sink(4)", None),
     ("causal & (sink(4) | window(8) | strided(16))", None), ("causal & (global(4) | window(16))", None),
     ("window(left = 4, right = 2)", None), ("causal & select(mean, top = 2, block = 16)", None),
     ("causal & (window(64) | select(mean, top = 2, block = 16))", None), ("full", None)],
)  # fmt: skip
def test_causal_sink_window_groups_are_marked(expr, band):
    """The plan marks `causal & (sink(S) | window(W))` groups with (S, W) (W = 0: causal) and
    nothing else; the mark is exact: it allows the very pairs of the pattern."""
    plan = plan_of(expr)
    assert plan.tuning["band"] == band
    if band is not None:
        (sink, window), q, k = band, torch.arange(300)[:, None], torch.arange(300)[None, :]
        expected = (k <= q) & ((k < sink) | (q - k < (window or 10**9)))
        assert torch.equal(torch.as_tensor(plan.pattern.holds(q, k)), expected)


def _model_layout(B, H, N, D):
    """(B, H, N, D) as a model's projection leaves it: (B, N, H, D) viewed with heads second."""
    return torch.randn(B, N, H, D).transpose(1, 2)


@pytest.mark.parametrize("make", [lambda B, H, N, D: torch.randn(B, H, N, D), _model_layout])
@pytest.mark.parametrize("B, H", [(1, 3), (2, 4), (2, 1)])
def test_descriptor_rows_address_each_head(make, B, H):
    """Row b * rows_per_batch + h * rows_per_head + n, columns h * cols_per_head .. + D of the
    2-D view hold t[b, h, n] for every batch, head and position."""
    N, D = 5, 8
    t = make(B, H, N, D)
    view, rb, rh, ch = hopper.hopper_rows(t)
    for b in range(B):
        for h in range(H):
            rows = view[b * rb + h * rh : b * rb + h * rh + N, h * ch : h * ch + D]
            assert torch.equal(rows, t[b, h])


def test_other_layouts_are_left_to_the_generated_kernel():
    t = torch.randn(2, 4, 6, 8)
    assert hopper.hopper_rows(t[:, :, :, :4]) is None  # rows not contiguous in memory
    assert hopper.hopper_rows(t.transpose(0, 1)) is None  # batch inside heads
    assert hopper.hopper_rows(t[:, :, 1:]) is None  # a head's rows followed by another's part (not its start)
    assert not hopper.hopper_ok(torch.randn(1, 1, 8192, 128, dtype=torch.bfloat16), 8192, 4096)  # not on a GPU


@pytest.mark.skipif(not have_ptxas(), reason="no ptxas in the triton install")
def test_hopper_kernel_compiles_for_sm90(tmp_path):
    """The generated module's Hopper kernel builds for sm_90 (bf16 and fp16, D = 128 and 64, GQA,
    a head subset, LSE), in shared memory one H100 block holds, without spills."""
    from attnc.codegen.writer import write_module

    path = write_module(lower(resolve_text("pattern hopper_gpu = causal\n", "hopper_gpu.attn")), tmp_path)
    script = Path(__file__).with_name("hopper_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    run = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    cases = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(cases) == 4
    assert all(0 < c["shared"] <= 227 * 1024 and c["stack"] == 0 for c in cases.values()), cases


@pytest.mark.parametrize(
    "expr, cap, dtype, d, n, runs",
    [("causal", (9, 0), "bfloat16", 128, 4096, True), ("causal", (9, 0), "float16", 64, 131072, True),
     ("causal", (9, 0), "bfloat16", 128, 4095, False), ("causal", (8, 0), "bfloat16", 128, 8192, False),
     ("causal", (10, 0), "bfloat16", 128, 8192, False), ("causal", (9, 0), "float32", 128, 8192, False),
     ("causal", (9, 0), "bfloat16", 256, 8192, False), ("causal & window(4096)", (9, 0), "bfloat16", 128, 8192, True),
     ("causal & (sink(4) | window(1024))", (9, 0), "bfloat16", 128, 32768, False),
     ("causal & (sink(64) | window(3072))", (9, 0), "bfloat16", 128, 32768, True),
     ("causal & (sink(4) | window(64) | strided(256))", (9, 0), "bfloat16", 128, 32768, False),
     ("causal", None, "bfloat16", 128, 8192, False)],
)  # fmt: skip
def test_the_configuration_decides_where_the_kernel_runs(expr, cap, dtype, d, n, runs):
    """One rule (compiler/configs.py's choose_config, which generated modules carry): causal,
    sink and long-window groups (HOPPER_MIN_WINDOW), Hopper, 16-bit, head_dim 64 or 128, from HOPPER_MIN_N keys on; the simulator charges
    such a launch to the profile's `hopper` costs at the kernel's 128 x 128 tiles."""
    from attnc.compiler import simulate

    prog = lower(resolve_text(f"pattern h = {expr}\n", "h.attn"))
    cfg = simulate.kernel_config(prog, d, dtype, cap, 0, n)
    assert cfg.hopper is runs
    if runs:
        assert (cfg.bm, cfg.bn) == (simulate.HOPPER_TILE,) * 2
        assert simulate.cost_family(plan_program(prog)[0], cfg, False) == "hopper"


def test_a_configuration_override_moves_the_window_threshold():
    """config={"HOPPER_WINDOW": w} lets shorter windows take the Gluon kernel; HOPPER = 0 turns it off."""
    from attnc.compiler import simulate

    prog = lower(resolve_text("pattern h = causal & (sink(4) | window(1024))\n", "h.attn"))
    run = lambda **o: simulate.kernel_config(prog, 128, "bfloat16", (9, 0), 0, 32768, o).hopper  # noqa: E731
    assert (run(), run(HOPPER_WINDOW=1024), run(HOPPER_WINDOW=1025), run(HOPPER_WINDOW=1024, HOPPER=0)) == (
        False,
        True,
        False,
        False,
    )
