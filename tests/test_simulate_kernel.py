"""The simulator's model of the generated kernel against the kernel itself (TRITON_INTERPRET=1).

`simulate.kernel_segments` evaluates, on numpy arrays, the key-block loops that
templates/prefill.py.j2 renders from compiler/plan.py; the kernel's TRACE mode records the
visits it really makes. They must agree key by key, masked and unmasked, so that the
simulator counts exactly the tiles the kernel runs. `simulate.kernel_config` must pick the
tiles and grid order that the generated module's `config_for` picks.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from attnc.compiler.plan import plan_program  # noqa: E402
from attnc.compiler import simulate as sim  # noqa: E402
from tests.strategies import causal_expressions, examples, op, prim  # noqa: E402
from tests.test_codegen_support import EXPRS, grouped, load, single, visits  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CONFIGS = [(16, 16, 16), (32, 16, 16), (16, 32, 16)]


def predicted_visits(plan, n: int, bm: int, bn: int, bnn: int) -> tuple[np.ndarray, np.ndarray]:
    """(masked, unmasked) visit counts per (query block, key), from the simulator's segments."""
    nqb = -(-n // bm)
    masked = np.zeros((nqb, n), dtype=np.int64)
    unmasked = np.zeros((nqb, n), dtype=np.int64)
    for seg in sim.kernel_segments(plan, n, bm, bn, bnn):
        out = masked if seg[3] else unmasked
        for i in range(nqb):
            np.add.at(out[i], sim.segment_keys(seg, i, n), 1)
    return masked, unmasked


def check(program, n: int, cfg: tuple[int, int, int]) -> None:
    bm, bn, bnn = cfg
    masked, unmasked = visits(program, n, {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_N_NARROW": bnn})
    plan = plan_program(program)[0]
    m, u = predicted_visits(plan, n, bm, bn, bnn)
    assert (m == masked[0]).all(), f"masked visits differ at (block, key) {np.argwhere(m != masked[0])[:5]}"
    assert (u == unmasked[0]).all(), f"unmasked visits differ at (block, key) {np.argwhere(u != unmasked[0])[:5]}"


@pytest.mark.parametrize("name", sorted(EXPRS))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "x".join(map(str, c)))
def test_segments_are_the_kernels_visits(name, cfg):
    for n in (1, 64, 77):  # test_codegen_plan's lengths and configs: the traces are shared
        check(single(EXPRS[name], name), n, cfg)


@examples(6)
@given(causal_expressions(), st.integers(1, 90), st.sampled_from(CONFIGS))
def test_segments_of_random_patterns(expr, n, cfg):
    check(single(expr, "rnd"), n, cfg)


@pytest.mark.parametrize(
    "name", ["causal", "sink_window", "power", "chunk", "strided_long", "global", "dilated", "diagonals"]
)
@pytest.mark.parametrize("dtype,head_dim", [("bfloat16", 128), ("bfloat16", 64), ("float16", 256), ("float32", 128)])
@pytest.mark.parametrize("capability", [(9, 0), (8, 0), None])
def test_config_is_the_modules(monkeypatch, name, dtype, head_dim, capability):
    program = single(EXPRS[name], name)
    mod = load(program)
    if capability is None:
        got = mod.config_for("cpu", getattr(torch, dtype), head_dim)
    else:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        mod._CONFIG_CACHE.clear()
        got = mod.config_for("cuda", getattr(torch, dtype), head_dim)
        mod._CONFIG_CACHE.clear()
    cfg = sim.kernel_config(program, head_dim, dtype, capability)
    assert (cfg.bm, cfg.bn, cfg.bn_narrow) == (got["BLOCK_M"], got["BLOCK_N"], got["BLOCK_N_NARROW"])
    assert cfg.order == ("desc" if got["GRID_ORDER"] == 2 else "asc")
    assert cfg.residue == mod._TUNING[0]["residue"]
    assert [p.tuning for p in sim._plans(program)] == mod._TUNING  # the plans' tuning is the module's


def test_each_group_gets_its_own_config_and_launch(monkeypatch):
    # a chunked group (tiles capped to the chunk) beside a diagonal-loop group (64-row tiles:
    # the sink keeps it from running as split launches)
    diag = op("&", prim("causal"), op("|", prim("sink", size=4), prim("strided", stride=64)))
    program = grouped([[EXPRS["chunk"], diag, diag, EXPRS["causal"]]], "mix", kv_heads=2)
    mod = load(program)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    mod._CONFIG_CACHE.clear()
    for g in range(3):
        got = mod.config_for("cuda", torch.bfloat16, 128, group=g)
        cfg = sim.kernel_config(program, 128, "bfloat16", (9, 0), g)
        assert (cfg.bm, cfg.bn, cfg.bn_narrow) == (got["BLOCK_M"], got["BLOCK_N"], got["BLOCK_N_NARROW"])
    mod._CONFIG_CACHE.clear()
    shape = sim.Shape(2048, heads=4, kv_heads=2, head_dim=128)  # below HOPPER_MIN_N: the generated kernels
    work = sim.prefill_workload(program, shape, (9, 0))
    launches = [l for l, _ in work.launches["attnc"]]
    assert [len(l.heads) for l in launches] == [1, 2, 1]  # one launch per group, over its heads only
    assert [(l.heads[0].bm, l.heads[0].bn) for l in launches] == [(32, 32), (64, 64), (128, 64)]
    pred = sim.time_workload(work)
    parts = [
        sim.launch_time(
            "attnc", l, sim.load_profile().attnc.lookup(128, "bfloat16", l.heads[0].bm, l.heads[0].bn, {}), 0, 132
        )
        for l in launches
    ]
    assert pred.attnc.launch_ms == pytest.approx(3 * sim.load_profile().attnc.launch_us / 1000)
    assert pred.attnc.tiles_full == sum(p.tiles_full for p in parts)
    assert pred.attnc.programs == sum(p.programs for p in parts)


def test_head_groups_use_their_own_plans():
    sw = EXPRS["sink_window"]
    program = grouped([[EXPRS["causal"], sw, sw, EXPRS["causal"]]], "mix", kv_heads=2)
    shape = sim.Shape(300, heads=4, kv_heads=2, head_dim=64)
    plans = plan_program(program)
    per_group = [
        sim.kernel_tiles(p, 300, sim.kernel_config(program, 64, "bfloat16", (9, 0), g)).totals
        for g, p in enumerate(plans)
    ]
    pred = sim.predict_prefill(program, shape)
    assert pred.attnc.tiles_full == 2 * per_group[0][0] + 2 * per_group[1][0]
    assert pred.attnc.tiles_masked == 2 * per_group[0][1] + 2 * per_group[1][1]
    assert pred.attnc.tiles_sink == 2 * per_group[0][2] + 2 * per_group[1][2]


@pytest.mark.parametrize("n", [1, 5, 37, 100, 97])
@pytest.mark.parametrize("name", ["dilated", "dilated_two_sided"])
def test_residue_mode_runs_dense_tiles_per_class(name, n):
    """Residue mode (no TRACE there): each class rho is the residue plan on its subsequence, whose
    visits, as simulated, reach every key the class needs, once; grid of d * cdiv(cdiv(n, d), BM)."""
    program = single(EXPRS[name], name)
    plan = plan_program(program)[0]
    d = plan.residue
    assert d > 1 and plan.residue_plan is not None
    cfg = sim.KernelConfig(16, 16, 16, "asc", d)
    tiles = sim.kernel_tiles(plan, n, cfg)
    per_class = -(-(-(-n // d)) // 16)  # noqa: B002  (cdiv(cdiv(n, d), 16))
    assert len(tiles.full) == d * per_class
    sub = plan.residue_plan
    for rho in range(d):
        n_rho = (n - rho + d - 1) // d
        segs = sim.kernel_segments(sub, n_rho, 16, 16, 16, per_class)
        pattern = program.groups[0].pattern
        for i in range(per_class):
            seen = np.zeros(max(n_rho, 1), dtype=np.int64)
            for seg in segs:
                np.add.at(seen, sim.segment_keys(seg, i, n_rho), 1)
            for qq in range(i * 16, min(i * 16 + 16, n_rho)):
                need = pattern.holds(np.int64(rho + d * qq), rho + d * np.arange(n_rho, dtype=np.int64))
                assert (seen[:n_rho][np.asarray(need, dtype=bool)] == 1).all()
            assert (seen <= 1).all()
    dense = sim.kernel_tiles(plan, n, sim.KernelConfig(16, 16, 16, "asc", 0))
    assert sum(tiles.totals) <= sum(dense.totals) or n < 40


def test_split_launches_count_both_launches():
    # causal & (window(8) | strided(16)): the window's tiles plus, per class q mod 16, the
    # residue band's; at least the ideal tiles of each part, and far fewer than the diagonal loop
    from attnc.compiler.plan import split_pattern

    program = single(op("&", prim("causal"), op("|", prim("window", size=8), prim("strided", stride=16))), "split")
    (plan,) = plan_program(program)
    n, cfg = 600, sim.KernelConfig(16, 16, 16, "asc", 0, 16)
    m, rest, sub = split_pattern(plan.pattern)
    tiles = sim.kernel_tiles(plan, n, cfg)
    ideal = sum(sim.block_tiles(rest, n, 16, 16).totals)
    ideal += sum(sum(sim.block_tiles(sub, (n - rho + m - 1) // m, 16, 16).totals) for rho in range(m))
    assert ideal <= sum(tiles.totals) <= ideal + 2 * m
    assert tiles.full.size == -(-n // 16) + m * -(-(-(-n // m)) // 16)  # noqa: B002  (both launches' programs)
    one = sim.kernel_tiles(plan, n, sim.KernelConfig(16, 16, 16, "asc", 0, 0))
    assert sum(tiles.totals) < sum(one.totals) / 2
    # classes shorter than SPLIT_MIN_ROWS run the one-launch plan, as the generated prefill does
    from attnc.compiler.plan import SPLIT_MIN_ROWS

    at = 16 * SPLIT_MIN_ROWS
    assert [sim.kernel_config(program, 16, "float32", (9, 0), 0, n).split for n in (at - 1, at)] == [0, 16]
