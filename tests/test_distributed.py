"""Attention over several ranks: the compiler's plans against brute force, and the runtime on
the CPU with gloo (torch.multiprocessing, 2 and 4 processes).

Plans: for every pattern file (small parameters) the keys each rank needs, the pairs of its
rows, the transfers and the attention calls are compared with the dense mask evaluated pair
by pair. Runtime: one spawn per world size runs every pattern file through context_attention,
with the module's torch `reference` as the per-part attention (the interpreter is too slow for
all files; at 4 ranks a selection), plus a few patterns through the Triton kernel (`prefill_at`,
TRITON_INTERPRET=1) and a head-parallel DuoAttention mix; the outputs must equal the
single-process reference and the bytes each rank moved must equal the plan's. Patterns that
select key blocks run too (every selecting file, and a layer mixing a selecting head group
with a static one, context- and head-parallel): what their scores move must equal the plan's,
and the chosen blocks' keys moved stay within its bound. The same spawn
runs loss.backward() through the kernels for a representative set (causal, sink + window,
chunked, dilated, power, both layouts, two head groups): every rank's gradients must equal
single-process autograd's and the bytes moved backward the forward's, reversed. prefill_at
and backward_at themselves (queries at an offset, a key range, a subset of heads) are checked
against the reference and its autograd under the interpreter.
"""

from __future__ import annotations

import math
import tempfile

import numpy as np
import pytest
import torch

from attnc.compiler.distributed import (
    assign_heads,
    head_costs,
    key_bytes,
    merge_ranges,
    plan_context,
    program_contexts,
    segments_of,
    subtract_ranges,
    summary_blocks,
)
from attnc.compiler.lower import lower
from attnc.compiler.simulate import Shape
from attnc.spec.resolve import load, resolve_text
from hypothesis import given
from hypothesis import strategies as st

from tests.cases import FILE_CASES
from tests.strategies import causal_expressions, examples, expressions

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ALIGN = 32  # the CPU tests' key tile (BLOCK_N = 32)
DUO = (
    "model { layers = 1, heads = 8, kv_heads = 4, head_dim = 16 }\n"
    "pattern duo { heads 0..2: causal\n  rest: causal & (sink(4) | window(24)) }\n"
)
# a selecting group beside a static one (two plans for one layer), GQA, head-parallel too
SELECT_DUO = DUO.replace("duo {", "sduo {").replace(
    "sink(4) | window(24)", "window(8) | select(quest, top = 2, block = 32)"
)
SELECT_PARAMS = {"moba": {"LB": 5}}  # blocks of 32: several per rank at these lengths


def _runs(mask: np.ndarray) -> tuple:
    idx = np.flatnonzero(mask)
    return merge_ranges((int(i), int(i) + 1) for i in idx)


def _check_plan(pattern, n: int, plan) -> None:
    """Every field of a context plan against the dense mask."""
    dense = pattern.mask(n, n)
    assert merge_ranges(s for segs in plan.segments for s in segs) == ((0, n),)
    for r, segs in enumerate(plan.segments):
        rows = np.zeros(n, dtype=bool)
        for a, b in segs:
            rows[a:b] = True
        assert plan.work[r] == int(dense[rows].sum())
        assert plan.needs[r] == _runs(dense[rows].any(axis=0))
        got = merge_ranges((a, b) for s, d, a, b in plan.transfers if d == r)
        assert got == subtract_ranges(plan.needs[r], segs)
        for s, _, a, b in plan.transfers:  # each from the rank that owns it
            assert any(x <= a and b <= y for x, y in plan.segments[s])
        covered = np.zeros((n, n), dtype=bool)
        for qa, qb, ka, kb in plan.pieces[r]:
            assert not covered[qa:qb, ka:kb].any(), "attention calls overlap"
            covered[qa:qb, ka:kb] = True
        assert not (dense & ~covered)[rows].any(), "an allowed pair no call computes"


@pytest.mark.parametrize("case", [c for c in FILE_CASES], ids=str)
def test_context_plans_match_the_mask(case):
    """Both layouts and the chosen one, at 2, 3 and 4 ranks, for every head group of a file."""
    n = 96
    for group in case.program.groups:
        for ranks in (2, 3, 4):
            for layout in ("contiguous", "zigzag", None):
                _check_plan(group.pattern, n, plan_context(group.pattern, n, ranks, layout, align=8))


@examples(8)
@given(
    st.one_of(expressions(5), causal_expressions(4)), st.integers(8, 130), st.integers(2, 4), st.sampled_from([1, 8])
)
def test_random_context_plans_match_the_mask(expr, n, ranks, align):
    """Random patterns, lengths, rank counts and segment alignments (1: any boundary)."""
    from tests.test_codegen_support import single

    pattern = single(expr).groups[0].pattern
    _check_plan(pattern, n, plan_context(pattern, n, ranks, align=align))


def test_exact_ranges_of_known_patterns():
    """sink + window needs the sinks and the previous rank's last W - 1 keys; a chunked pattern
    whose chunks align with the segments needs nothing; causal picks zigzag."""
    sw = lower(resolve_text("pattern p = causal & (sink(4) | window(64))", "p.attn")).groups[0].pattern
    plan = plan_context(sw, 1024, 4)
    assert plan.layout == "contiguous"
    assert [t for t in plan.transfers if t[1] == 2] == [(0, 2, 0, 4), (1, 2, 449, 512)]
    ch = lower(resolve_text("pattern p = causal & chunk(128)", "p.attn")).groups[0].pattern
    assert plan_context(ch, 1024, 4).transfers == ()
    causal = lower(resolve_text("pattern p = causal", "p.attn")).groups[0].pattern
    plan = plan_context(causal, 1024, 4)
    assert plan.layout == "zigzag" and len(set(plan.work)) == 1
    assert plan.received_keys(3) == 384  # keys 384..640 are its own, later ones no query of it reads
    assert plan.received_keys(0) == plan.ring_received_keys(0)  # the last segment reads every key
    assert segments_of("zigzag", 1000, 2, 8) == (((0, 248), (752, 1000)), ((248, 752),))


def test_head_assignment_balances_costs():
    """Whole GQA groups, equal counts per rank, every head once, the two heavy groups apart;
    and the simulator's cost of a full head exceeds a window head's."""
    plan = assign_heads([10, 10, 10, 10, 1, 1, 1, 1, 1, 1, 1, 1], 2, 2)
    assert sorted(plan.order) == list(range(12)) and all(len(h) == 6 for h in plan.heads)
    assert all(h // 2 in plan.kv_heads[r] for r, hs in enumerate(plan.heads) for h in hs)
    assert plan.times == (24.0, 24.0) and plan.imbalance == 0
    with pytest.raises(ValueError):
        assign_heads([1.0] * 6, 2, 2)
    program = lower(resolve_text(DUO, "duo.attn"))
    costs = head_costs(program, Shape(8192, 1, 8, 4, 64))
    assert costs[0] == costs[1] > 2 * costs[2] and costs[2] == costs[7]
    assert plan.tp_plan()["layers.*.self_attn.o_proj"] == "rowwise"


@pytest.mark.parametrize(
    "text, q_offset, nq, k_range, heads",
    [
        ("pattern p = causal & (sink(4) | window(40))", 64, 64, None, None),
        ("pattern p = causal & (sink(4) | window(40))", 70, 20, (0, 64), None),
        ("pattern p = causal & (sink(4) | window(40))", 96, 32, (32, 96), None),
        ("pattern p = causal & dilated(8, 3)", 32, 64, (32, 128), None),
        ("pattern p = causal & power(8)", 100, 28, (0, 32), None),
        ("pattern p = causal & (window(12) | stride(5, 4))", 40, 60, (32, 96), None),  # a stripe loop
        ("pattern p = window(left = 6, right = 6) | stride(4, 3)", 0, 128, (64, 128), None),
        (DUO, 40, 50, (32, 96), [2, 3, 6, 7]),
        (DUO, 0, 128, None, [0, 1]),
    ],
)
def test_prefill_at_matches_reference(text, q_offset, nq, k_range, heads):
    """The kernel on a part of the problem (TRITON_INTERPRET=1): out and lse as the reference's,
    lse -inf exactly where no key in range is allowed."""
    from attnc.codegen.loader import load_program

    mod = load_program(lower(resolve_text(text, "p.attn")))
    torch.manual_seed(0)
    h = 8 if heads is None else len(heads)
    q = torch.randn(1, h, nq, 16)
    k, v = torch.randn(1, h // 2, 128, 16), torch.randn(1, h // 2, 128, 16)
    kw = dict(q_offset=q_offset, k_range=k_range, heads=heads)
    out, lse = mod.prefill_at(q, k, v, config=dict(BLOCK_M=32, BLOCK_N=32), **kw)
    ref, ref_lse = mod.reference(q, k, v, return_lse=True, **kw)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    torch.testing.assert_close(lse.nan_to_num(neginf=0), ref_lse.nan_to_num(neginf=0), atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="key tile"):
        mod.prefill_at(q, k, v, q_offset=q_offset, k_range=(16, 128), heads=heads, config=dict(BLOCK_N=32))


@pytest.mark.parametrize(
    "text, q_offset, nq, cuts, heads",
    [
        ("pattern p = causal & (sink(4) | window(40))", 70, 20, (32,), None),
        ("pattern p = causal & dilated(8, 3)", 32, 64, (32, 96), None),
        ("pattern p = causal & power(8)", 100, 28, (32,), None),
        ("pattern p = causal & (window(12) | stride(5, 4))", 40, 60, (64,), None),  # a stripe loop forward
        (DUO, 40, 50, (32,), [2, 3, 6, 7]),
    ],
)
def test_backward_at_matches_autograd(text, q_offset, nq, cuts, heads):
    """The backward kernels on a part (TRITON_INTERPRET=1): given the rows' whole out and lse,
    the dQ shares of the key ranges between `cuts` sum to autograd's dQ of those rows, and each
    range's dK, dV are autograd's for the gradient of those rows alone."""
    from attnc.codegen.loader import load_program

    mod = load_program(lower(resolve_text(text, "p.attn")))
    torch.manual_seed(0)
    h, n = (2 if heads is None else len(heads)), 128
    leaves = [torch.randn(1, x, n, 16).requires_grad_() for x in (h, h // 2, h // 2)]
    out, lse = mod.reference(*leaves, return_lse=True, heads=heads)
    rows = slice(q_offset, q_offset + nq)
    g, gl = torch.zeros_like(out), torch.zeros_like(lse)
    g[:, :, rows], gl[:, :, rows] = torch.randn(1, h, nq, 16), torch.randn(1, h, nq)
    ((out * g).sum() + (lse * gl).sum()).backward()
    q, k, v = (t.detach() for t in leaves)
    args = (g[:, :, rows], q[:, :, rows], k, v, out.detach()[:, :, rows], lse.detach()[:, :, rows])
    dq = 0
    for lo, hi in zip((0, *cuts), (*cuts, n)):
        part_q, part_k, part_v = mod.backward_at(
            *args, q_offset=q_offset, k_range=(lo, hi), heads=heads, dlse=gl[:, :, rows]
        )
        dq = dq + part_q
        torch.testing.assert_close(part_k, leaves[1].grad[:, :, lo:hi], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(part_v, leaves[2].grad[:, :, lo:hi], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dq, leaves[0].grad[:, :, rows], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="key tile"):
        mod.backward_at(*args, q_offset=q_offset, k_range=(16, 128), heads=heads)
    with pytest.raises(ValueError, match="q's shape"):
        mod.backward_at(args[0], *args[1:5], lse, q_offset=q_offset, heads=heads)


SELECTING = "pattern p = causal & (window(8) | select({score}, top = 2, block = 32{opts}))"


@pytest.mark.parametrize("score, opts", [("mean", ""), ("quest", ""), ("vslash", ", last = 16")])
def test_parts_of_a_selecting_pattern_add_up(score, opts):
    """select_at of a part chooses what select chooses for those query blocks (from the key
    block summaries alone, for mean and quest), and prefill_at of a part (TRITON_INTERPRET=1)
    is its static part in k_range plus, with indices, the chosen blocks' pairs: merged, the
    whole prefill's rows. The reference of a part agrees; unaligned parts are refused."""
    from attnc.codegen.loader import load_program
    from attnc.runtime.distributed import merge

    mod = load_program(lower(resolve_text(SELECTING.format(score=score, opts=opts), "p.attn")))
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 128, 16), torch.randn(1, 2, 128, 16), torch.randn(1, 2, 128, 16)
    whole, whole_lse = mod.reference(q, k, v, return_lse=True)
    idx, cnt = mod.select(q, k)
    summary, cfg = mod.block_summary(k), dict(BLOCK_M=32, BLOCK_N=32)
    for qa, qb in ((0, 64), (32, 128)):
        part = q[:, :, qa:qb]
        got = mod.select_at(part, k, q_offset=qa, summary=summary, q_last=q[:, :, -16:])
        assert torch.equal(got[1], cnt[:, :, qa // 32 : qb // 32])
        assert torch.equal(got[0][..., : idx.shape[-1]], idx[:, :, qa // 32 : qb // 32])
        static = mod.prefill_at(part, k, v, q_offset=qa, config=cfg)
        chosen = mod.prefill_at(part, k, v, q_offset=qa, k_range=(0, 0), indices=got, config=cfg)
        ref = mod.reference(part, k, v, q_offset=qa, k_range=(0, 0), indices=got, return_lse=True)
        torch.testing.assert_close(chosen[0], ref[0], atol=2e-5, rtol=1e-4)
        out, lse = merge(*static, *chosen)
        torch.testing.assert_close(out, whole[:, :, qa:qb], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(lse, whole_lse[:, :, qa:qb], atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="multiple of the selection block"):
        mod.prefill_at(q[:, :, 16:], k, v, q_offset=16, indices=(idx[:, :, :4], cnt[:, :, :4]), config=cfg)
    with pytest.raises(ValueError, match="multiple of the selection block"):
        mod.select_at(q[:, :, 16:], k, q_offset=16)
    plain = load_program(lower(resolve_text("pattern p = causal", "p.attn")))
    with pytest.raises(ValueError, match="do not combine"):
        plain.reference(q, k, v, k_range=(0, 32), lengths=torch.full((1,), 64))


def test_selecting_plans_and_refusals():
    """A selecting group's plan against the module's own candidates: the mean route moves no
    key before the choice and bounds the chosen keys by min(top, candidates) blocks per query
    block within the candidates not held; the antidiagonal route moves exactly the candidate
    blocks' keys not held. Too short a sequence, and a backward, are refused."""
    from attnc.codegen.loader import load_program
    from attnc.runtime.distributed import context_attention

    for text, n in ((SELECTING.format(score="mean", opts=""), 256),
                    ("pattern p = causal & (sink(4) | select(antidiagonal, top = 2, block = 32, stride = 2))", 256)):  # fmt: skip
        program = lower(resolve_text(text, "p.attn"))
        mod = load_program(program)
        cand = mod._candidates(0, n).numpy()
        for ranks in (2, 3):
            (plan,) = program_contexts(program, n, ranks, align=ALIGN)
            sel = plan.selection
            for r, segs in enumerate(plan.segments):
                rows = [i for a, b in segs for i in range(a // 32, -(-b // 32))]
                keys = np.zeros(n, dtype=bool)
                for j in np.flatnonzero(cand[rows].any(0)):
                    keys[j * 32 : (j + 1) * 32] = True
                for a, b in [*segs, *((a, b) for _, d, a, b in plan.transfers if d == r)]:
                    keys[a:b] = False
                if sel["route"] == "summaries":
                    assert sel["reach"][r] == keys.sum() and sel["transfers"] == ()
                    assert sel["bound"][r] == min(keys.sum(), np.minimum(cand[rows].sum(1), 2).sum() * 32)
                    assert summary_blocks(plan, r) == (len(rows) * (ranks - 1), n // 32 - len(rows))
                else:
                    got = merge_ranges((a, b) for _, d, a, b in sel["transfers"] if d == r)
                    assert got == _runs(keys) and sel["bound"][r] == 0
    with pytest.raises(ValueError, match="too short"):
        program_contexts(lower(resolve_text(SELECTING.format(score="mean", opts=""), "p.attn")), 64, 4, align=ALIGN)
    q = torch.randn(1, 2, 64, 16, requires_grad=True)
    with pytest.raises(NotImplementedError, match="no backward"):
        context_attention(mod, q, q.detach()[:, :1], q.detach()[:, :1], plan, rank=0)


def test_analyze_ranks(capsys):
    """`attnc analyze --ranks`: the table (text) and the plans (JSON); a bad R is an error, exit 2,
    with no report printed."""
    import json

    from attnc.cli import main

    path = str(FILE_CASES[0].path.parent / "streaming_llm.attn")
    assert main(["analyze", path, "--seq", "4096", "--ranks", "2"]) == 0
    text = capsys.readouterr().out
    assert "context parallel over 2 ranks" in text and "contiguous layout" in text
    assert "a backward pass moves the same bytes in reverse" in text
    assert "0: 0..4, 1029..2048" in text  # rank 1 receives the sinks and the last 1019 keys of rank 0
    assert main(["analyze", path, "--seq", "4096", "--ranks", "2", "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["context_parallel"]
    assert group["transfers"] == [[0, 1, 0, 4], [0, 1, 1029, 2048]]
    assert group["ranks_table"][1]["received_bytes"] == 1023 * 2 * 128 * 2
    assert group["ranks_table"][1]["backward_sent_bytes"] == 1023 * 2 * 128 * 2  # the dK, dV of those keys
    assert group["ranks_table"][0]["backward_received_bytes"] == group["ranks_table"][0]["sent_bytes"]
    assert main(["analyze", path, "--ranks", "0"]) == 2
    captured = capsys.readouterr()
    assert "--ranks" in captured.err and captured.out == ""
    moba = str(FILE_CASES[0].path.parent / "moba.attn")  # blocks of 512, top 2, causal & chunk(512)
    assert main(["analyze", moba, "--seq", "4096", "--ranks", "2"]) == 0
    text = capsys.readouterr().out
    assert "selected part: select(mean, top 2, block = 512)" in text and "no backward pass" in text
    assert main(["analyze", moba, "--seq", "4096", "--ranks", "2", "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["context_parallel"]
    row = group["ranks_table"][1]["selection"]
    assert group["transfers"] == [] and row["estimate_received_bytes"] == 0
    assert row["score_received_bytes"] == 4 * 128 * 4  # rank 0's 4 mean keys, float32
    assert row["chosen_max_received_bytes"] == 2048 * 2 * 128 * 2  # every earlier block: 4 blocks x min(2, ...)
    assert main(["analyze", moba, "--seq", "1024", "--ranks", "4"]) == 2
    assert "too short" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- gloo
FOUR_RANKS = {"streaming_llm", "dense_causal", "llama4_chunked", "longnet_dilated", "power_attention", "natten_image"}
FOUR_RANKS |= {"nsa_selection", "quest_prefill", "minference_vslash", "xattention"}  # the selecting files


def _cases_for(world: int):
    """(name, program, n, layers, kernel): at 2 ranks every pattern file through the reference
    and two through the kernel; at 4 ranks (make test-all) a few files through the reference
    and a selecting one through the kernel."""
    kernel = {"streaming_llm", "llama4_chunked"} if world == 2 else {"nsa_selection"}
    out = []
    for case in FILE_CASES if world == 2 else [c for c in FILE_CASES if c.name in FOUR_RANKS]:
        program = case.program
        if case.name in SELECT_PARAMS:
            program = lower(load(case.path, SELECT_PARAMS[case.name]))
        blocks = [g.selection.atom.block for g in program.groups if g.selection is not None]
        n = max(64 * world, world * math.lcm(ALIGN, *blocks))  # a selection's blocks are never cut
        rows = {}
        for layer, row in enumerate(program.group_table()):
            rows.setdefault(tuple(row), layer)
        layers = list(rows.values())[:2] if program.varies_by_layer else [None]
        out.append((case.name, program, n, layers, case.name in kernel))
    return out


def _worker(rank: int, world: int, folder: str, jobs: list) -> None:
    """One rank: every job's context attention (and the head-parallel one), saved for the parent."""
    import torch.distributed as dist

    from attnc.codegen.loader import import_file
    from attnc.runtime.distributed import context_attention_layer, head_attention, shard
    from tests.interpreter_speed import speed_up_the_interpreter

    speed_up_the_interpreter()  # as in the suite's own processes (tests/conftest.py)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    results = {}
    for job in jobs:
        mod = import_file(job["module"], f"dist_{job['name']}_{world}_{rank}")
        plans = job["plans"]
        if job.get("grad"):
            results[(job["name"], job["layers"][0], "grad")] = _grad_job(mod, job, rank)
            continue
        q, k, v = torch.load(job["inputs"])
        for layer in job["layers"]:
            for kernel in (False, True) if job["kernel"] else (False,):
                stats = {}
                kw = dict(config=dict(BLOCK_M=32, BLOCK_N=32)) if kernel else dict(attend=mod.reference)
                out, lse = context_attention_layer(
                    mod,
                    shard(q, plans[0], rank),
                    shard(k, plans[0], rank),
                    shard(v, plans[0], rank),
                    plans,
                    layer=layer,
                    stats=stats,
                    **kw,
                )
                results[(job["name"], layer, kernel)] = (out, lse, stats)
        if "head_plan" in job:
            hp = job["head_plan"]
            heads, kv = list(hp["heads"][rank]), list(hp["kv_heads"][rank])
            out = head_attention(mod, q[:, heads], k[:, kv], v[:, kv], hp, config=dict(BLOCK_M=32, BLOCK_N=32))
            results[(job["name"], "heads")] = out
    torch.save(results, f"{folder}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _grad_job(mod, job: dict, rank: int) -> tuple:
    """One rank's gradients of its tokens for a loss of out and lse, and its stats."""
    from attnc.runtime.distributed import context_attention_layer, shard

    plans, layer = job["plans"], job["layers"][0]
    q, k, v, g, gl = (shard(t, plans[0], rank) for t in torch.load(job["inputs"]))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    stats: dict = {}
    out, lse = context_attention_layer(
        mod, *leaves, plans, layer=layer, stats=stats, config=dict(BLOCK_M=32, BLOCK_N=32)
    )
    ((out * g).sum() + (lse.nan_to_num(neginf=0) * gl).sum()).backward()
    return [t.grad for t in leaves], stats


def _run(world: int, jobs: list, folder: str) -> list[dict]:
    torch.multiprocessing.spawn(_worker, args=(world, folder, jobs), nprocs=world, join=True)
    return [torch.load(f"{folder}/rank{r}.pt") for r in range(world)]


def _layer_groups(program, plans, layer, h: int, h_kv: int) -> list:
    """(plan, query heads, KV heads) of each head group the layer uses: each group's own KV
    heads when the layer's heads differ, else all h_kv."""
    groups = [(p, {x for l, x in g.members if l == (layer or 0)}) for p, g in zip(plans, program.groups)]
    groups = [(p, heads) for p, heads in groups if heads]
    if len(groups) == 1:
        return [(groups[0][0], h, h_kv)]
    return [(p, len(heads), len({x // (h // h_kv) for x in heads})) for p, heads in groups]


def _check_selection_bytes(program, plans, layer, h: int, h_kv: int, rank: int, stats: dict, key) -> None:
    """What a selection moved: block summaries and last queries exactly as planned, the chosen
    blocks' keys within the plan's bound (float32, head_dim 16)."""
    sent = received = bound = 0
    for plan, heads, kv in _layer_groups(program, plans, layer, h, h_kv):
        if plan.selection is None:
            continue
        out, into = summary_blocks(plan, rank)
        per_block, per_query = plan.selection["slots"] * kv * 16 * 4, heads * 16 * 4
        rows = [(src, b - a) for src, a, b in plan.selection["q_last"]]
        sent += out * per_block + sum(m * (plan.ranks - 1) for src, m in rows if src == rank) * per_query
        received += into * per_block + sum(m for src, m in rows if src != rank) * per_query
        bound += plan.selection["bound"][rank] * key_bytes(kv, 16, 4)
    assert (stats.get("score_sent_bytes", 0), stats.get("score_received_bytes", 0)) == (sent, received), key
    assert stats.get("select_received_bytes", 0) <= bound, key


def _expected_bytes(program, plans, layer, h: int, h_kv: int, rank: int, d: int) -> tuple[int, int]:
    """(sent, received) float32 bytes of a rank by the plans of the layer's head groups (a
    selection's estimate ranges included)."""
    sent = received = 0
    for plan, _, kv in _layer_groups(program, plans, layer, h, h_kv):
        sent += plan.sent_keys(rank) * key_bytes(kv, d, 4)
        received += plan.received_keys(rank) * key_bytes(kv, d, 4)
    return sent, received


_WRITTEN: dict[str, str] = {}


def _module(program) -> str:
    """The program's generated module, written once for both world sizes."""
    from attnc.codegen.writer import write_module

    key = program.digest()
    if key not in _WRITTEN:
        _WRITTEN[key] = str(write_module(program, tempfile.mkdtemp(prefix="attnc-dist-")))
    return _WRITTEN[key]


# (file, layout or None for the planner's choice, params): gradients through the kernels; the
# chunks and dilated chunks of 24 cross the segments, so that every case moves keys
GRAD_CASES = {
    2: [
        ("dense_causal", None, {}),
        ("streaming_llm", None, {}),
        ("streaming_llm", "zigzag", {}),
        ("llama4_chunked", None, {"C": 24}),
        ("longnet_dilated", None, {"W": 24}),
        ("power_attention", None, {}),
    ],
    4: [
        ("dense_causal", None, {}),
        ("dense_causal", "contiguous", {}),
        ("streaming_llm", None, {}),
        ("llama4_chunked", "zigzag", {"C": 24}),
        ("longnet_dilated", "zigzag", {"W": 24}),
        ("power_attention", None, {}),
    ],
}


def _forward_jobs(world: int, folder) -> tuple[list, dict]:
    """The forward jobs: every file of _cases_for, and the DuoAttention mix head-parallel too."""
    d = 16
    jobs, expect = [], {}
    cases = _cases_for(world)
    duo = lower(resolve_text(DUO, "duo.attn"))
    cases.append(("duo", duo, 64 * world, [None], world == 2))
    cases.append(("sduo", lower(resolve_text(SELECT_DUO, "sduo.attn")), 64 * world, [None], False))
    for name, program, n, layers, kernel in cases:
        per_head = len(program.groups) > 1
        h, h_kv = (program.model.heads, program.model.kv_heads) if per_head else (2, 1)
        q, k, v = torch.randn(1, h, n, d), torch.randn(1, h_kv, n, d), torch.randn(1, h_kv, n, d)
        torch.save((q, k, v), folder / f"{name}.pt")
        plans = program_contexts(program, n, world, align=ALIGN)
        job = dict(
            name=name,
            module=_module(program),
            inputs=str(folder / f"{name}.pt"),
            plans=[p.to_dict() for p in plans],
            layers=layers,
            kernel=kernel,
        )
        if name in ("duo", "sduo"):
            job["head_plan"] = assign_heads([4.0, 4.0, 1, 1, 1, 1, 1, 1], 2, world).__dict__
        jobs.append(job)
        expect[name] = (program, plans, q, k, v)
    return jobs, expect


def _grad_jobs(world: int, folder) -> tuple[list, dict]:
    """The gradient jobs: GRAD_CASES, and a DuoAttention mix of 4 heads (two head groups, each
    with its own plan)."""
    d, n = 16, 64 * world
    files = {c.name: c for c in FILE_CASES}
    cases = [
        (f, layout, lower(load(files[f].path, params)) if params else files[f].program)
        for f, layout, params in GRAD_CASES[world]
    ]
    cases.append(
        ("duo", None, lower(resolve_text(DUO.replace("heads = 8, kv_heads = 4", "heads = 4, kv_heads = 2"), "d.attn")))
    )
    jobs, expect = [], {}
    for file, layout, program in cases:
        name = f"grad_{file}_{layout}"
        layer = 0 if program.varies_by_layer else None  # llama4_chunked: a chunked layer
        by_head = len(set(program.group_table()[0])) > 1
        h, h_kv = (program.model.heads, program.model.kv_heads) if by_head else (2, 1)
        q, k, v = torch.randn(1, h, n, d), torch.randn(1, h_kv, n, d), torch.randn(1, h_kv, n, d)
        g, gl = torch.randn(1, h, n, d), torch.randn(1, h, n)  # the loss's gradients of out and lse
        torch.save((q, k, v, g, gl), folder / f"{name}.pt")
        plans = program_contexts(program, n, world, layout, align=ALIGN)
        plan_dicts = [p.to_dict() for p in plans]
        jobs.append(dict(name=name, module=_module(program), inputs=str(folder / f"{name}.pt"), plans=plan_dicts,
                         layers=[layer], grad=True))  # fmt: skip
        expect[name] = (program, plans, q, k, v, g, gl, layer)
    return jobs, expect


@pytest.fixture(scope="module", params=[2, pytest.param(4, marks=pytest.mark.exhaustive)])
def gloo(request, tmp_path_factory):
    """One spawn per world size runs the jobs of the forward and the gradient tests:
    (world, results per rank, forward jobs and expectations, gradient jobs and expectations)."""
    world = request.param
    folder = tmp_path_factory.mktemp(f"gloo{world}")
    torch.manual_seed(world)
    forward, expect = _forward_jobs(world, folder)
    grads, grad_expect = _grad_jobs(world, folder)
    results = _run(world, forward + grads, str(folder))
    return world, results, (forward, expect), (grads, grad_expect)


def test_context_and_head_parallel_on_gloo(gloo):
    from attnc.runtime.distributed import unshard

    from attnc.codegen.loader import import_file

    world, results, (jobs, expect), _ = gloo
    d = 16
    fetched = {}  # bytes of chosen blocks moved, per selecting job
    for job in jobs:
        program, plans, q, k, v = expect[job["name"]]
        mod = import_file(job["module"], f"dist_parent_{job['name']}_{world}")
        for layer in job["layers"]:
            ref, ref_lse = mod.reference(q, k, v, layer=layer, return_lse=True)
            for kernel in (False, True) if job["kernel"] else (False,):
                key = (job["name"], layer, kernel)
                out = unshard([r[key][0] for r in results], plans[0])
                lse = unshard([r[key][1] for r in results], plans[0])
                torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4, msg=f"{key}")
                torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=1e-4, msg=f"{key} lse")
                for rank, r in enumerate(results):
                    stats = r[key][2]
                    want = _expected_bytes(program, plans, layer, q.shape[1], k.shape[1], rank, d)
                    assert (stats["sent_bytes"], stats["received_bytes"]) == want, key
                    _check_selection_bytes(program, plans, layer, q.shape[1], k.shape[1], rank, stats, key)
                if any(p.selection and p.selection["route"] == "summaries" for p in plans):
                    moved = [sum(r[key][2].get(f"select_{x}_bytes", 0) for r in results) for x in ("sent", "received")]
                    assert moved[0] == moved[1], key
                    fetched[key] = moved[0]
        if "head_plan" in job:
            ref = mod.reference(q, k, v)
            for rank, r in enumerate(results):
                heads = list(job["head_plan"]["heads"][rank])
                torch.testing.assert_close(r[(job["name"], "heads")], ref[:, heads], atol=2e-5, rtol=1e-4)
    assert sum(fetched.values()) > 0, fetched  # chosen blocks did move: the bound is not vacuous


def test_context_backward_on_gloo(gloo):
    """loss.backward() through context_attention_layer (the kernels, TRITON_INTERPRET=1): each
    rank's dQ, dK, dV equal the single-process autograd reference's rows of its tokens, for a
    loss of out and lse; the bytes it moved backward equal the plan's, the forward's reversed."""
    from attnc.codegen.loader import import_file
    from attnc.runtime.distributed import shard

    world, results, _, (jobs, expect) = gloo
    moved = {}
    for job in jobs:
        program, plans, q, k, v, g, gl, layer = expect[job["name"]]
        mod = import_file(job["module"], f"dist_parent_{job['name']}_{world}")
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, lse = mod.reference(*leaves, layer=layer, return_lse=True)
        ((out * g).sum() + (lse.nan_to_num(neginf=0) * gl).sum()).backward()
        for rank, r in enumerate(results):
            got, stats = r[(job["name"], layer, "grad")]
            for name, mine, leaf in zip("qkv", got, leaves):
                want = shard(leaf.grad, plans[0], rank)
                torch.testing.assert_close(mine, want, atol=5e-5, rtol=1e-4, msg=f"{job['name']} rank {rank} d{name}")
            sent, received = _expected_bytes(program, plans, layer, q.shape[1], k.shape[1], rank, 16)
            assert (stats["backward_sent_bytes"], stats["backward_received_bytes"]) == (received, sent), job["name"]
        moved[job["name"]] = sum(r[(job["name"], layer, "grad")][1]["backward_sent_bytes"] for r in results)
    assert all(moved.values()), moved  # the test is not vacuous
