"""The simulator's model: tile counts against brute force, the schedule against a naive one,
sanity and monotonicity of predictions, profiles, the fit, and the GPU-side import path."""

from __future__ import annotations

import heapq
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnc.codegen.importing import import_module_from_path
from attnc.compiler import simulate as sim
from attnc.compiler.blocks import block_map, brute_block_map
from attnc.compiler.ir import Status
from attnc.compiler.lower import lower_expr
from tests.strategies import causal_expressions, examples, expressions, lowered, op, prim
from tests.test_codegen_support import single

ROOT = Path(__file__).resolve().parents[1]
SW = op("&", prim("causal"), op("|", prim("sink", size=4), prim("window", size=1024)))


def brute_counts(pattern, n, bm, bn):
    s = brute_block_map(pattern, n, bm, bn).status
    return (s == Status.ALL).sum(1), (s == Status.SOME).sum(1)


# ------------------------------------------------------------------------------- tile counts
@examples(60)
@given(lowered(), st.integers(1, 9), st.integers(1, 9))
def test_block_tiles_equal_brute_force(case, bm, bn):
    pattern, n = case
    tiles = sim.block_tiles(pattern, n, bm, bn)
    full, masked = brute_counts(pattern, n, bm, bn)
    assert (tiles.full == full).all() and (tiles.masked == masked).all() and not tiles.narrow.any()


@examples(50)
@given(st.booleans(), st.integers(1, 300), st.integers(1, 40), st.integers(1, 40))
def test_dense_tiles_equal_brute_force(causal, n, bm, bn):
    pattern = lower_expr(prim("causal" if causal else "full"))
    tiles = sim.dense_tiles(n, causal, bm, bn)
    full, masked = brute_counts(pattern, n, bm, bn)
    assert (tiles.full == full).all() and (tiles.masked == masked).all()


@examples(50)
@given(
    lowered(most=90),
    st.sampled_from([(1, 1), (1, 2), (2, 1), (2, 2), (4, 2), (3, 5)]),
    st.integers(1, 6),
    st.integers(1, 6),
)
def test_coarsened_block_map_is_the_coarse_block_map(case, factor, bm, bn):
    pattern, n = case
    fine = block_map(pattern, n, bm, bn).status
    coarse = brute_block_map(pattern, n, bm * factor[0], bn * factor[1]).status
    assert (sim.coarsen(fine, *factor) == coarse).all()


@examples(15)
@given(lowered(4), st.integers(1, 400), st.sampled_from([None, (64, 32), (128, 64), (128, 128)]))
def test_flex_tiles_are_its_exact_block_mask(case, n, fine):
    pattern = case[0]
    tiles = sim.flex_tiles(pattern, n, fine)
    full, masked = brute_counts(pattern, n, 128, 128)
    assert (tiles.full == full).all() and (tiles.masked == masked).all()


@examples(30)
@given(expressions(max_leaves=5), st.integers(1, 120), st.sampled_from([(16, 16, 16), (32, 16, 16), (16, 32, 16)]))
def test_kernel_visits_are_sound(expr, n, cfg):
    """The kernel's visits (as simulated) reach every allowed key once, and skip the mask only
    on keys that every row of the query block may attend."""
    from attnc.compiler.plan import plan_program

    program = single(expr)
    bm = cfg[0]
    mask = program.groups[0].pattern.mask(n)
    seen = np.zeros((-(-n // bm), n), dtype=np.int64)
    unmasked = np.zeros(seen.shape, dtype=bool)
    for seg in sim.kernel_segments(plan_program(program)[0], n, *cfg):
        for i in range(seen.shape[0]):
            keys = sim.segment_keys(seg, i, n)
            np.add.at(seen[i], keys, 1)
            unmasked[i, keys] |= not seg[3]
    for i in range(seen.shape[0]):
        rows = mask[i * bm : (i + 1) * bm]
        assert (seen[i] <= 1).all(), "a key visited twice"
        assert (seen[i][rows.any(0)] == 1).all(), "an allowed key never visited"
        assert rows.all(0)[unmasked[i]].all(), "a key visited without the mask is not allowed for every row"


# -------------------------------------------------------------------------------- scheduling
def naive_schedule(cost, count, slots, order):
    seq = [c for c, m in zip(cost, count) for _ in range(m)]
    if order == "lpt":
        seq.sort(reverse=True)
    heap = [0.0] * slots
    for c in seq:
        heapq.heapreplace(heap, heap[0] + c)
    return max(heap)


@examples(100)
@given(
    st.lists(st.tuples(st.integers(1, 50), st.integers(1, 40)), min_size=1, max_size=12),
    st.integers(1, 9),
    st.sampled_from(["lpt", "asc"]),
)
def test_schedule_is_greedy_list_scheduling(runs, slots, order):
    cost = np.array([c for c, _ in runs], dtype=float)
    count = np.array([m for _, m in runs])
    makespan, per_run = sim.schedule(cost, count, slots, order, track=True)
    assert makespan == pytest.approx(naive_schedule(cost, count, slots, order))
    assert per_run @ cost == pytest.approx(makespan), "the tracked slot is the one that finishes last"
    assert makespan >= max(cost.max(), (cost * count).sum() / slots) - 1e-9


def test_launch_order():
    a = sim.Tiles(1, 1, np.array([1, 2, 3]), np.zeros(3, int), np.zeros(3, int))
    b = sim.Tiles(1, 1, np.array([5, 5, 5]), np.zeros(3, int), np.zeros(3, int))
    feats, count = sim.Launch((a, a, b), batch=2, order="desc").programs()
    assert feats[:, 1].tolist() == [3, 2, 1, 3, 2, 1, 5, 3, 2, 1, 3, 2, 1, 5]
    assert count.tolist() == [1] * 6 + [3] + [1] * 6 + [3]
    feats, count = sim.Launch((a, a, b), batch=2, order="lpt").programs()
    per_cost = {}
    for f, c in zip(feats[:, 1].tolist(), count.tolist()):
        per_cost[f] = per_cost.get(f, 0) + c
    assert per_cost == {1: 4, 2: 4, 3: 4, 5: 6}
    back = sim.Launch.from_dict(json.loads(json.dumps(sim.Launch((a, a, b), 2, "asc").to_dict())))
    assert [t.full.tolist() for t in back.heads] == [[1, 2, 3], [1, 2, 3], [5, 5, 5]]
    assert back.heads[0] is back.heads[1] and back.order == "asc" and back.batch == 2


# -------------------------------------------------------------------------------- predictions
def anchors_profile() -> "sim.Profile":
    """The H100 profile as seeded from DESIGN.md's anchor figures (one 128x128 tile entry and a
    10 us launch): the model's properties are asserted against these fixed costs, so that
    recalibrating the shipped profile on the GPU does not change what these tests check."""
    prof = sim.load_profile("h100")
    seed = tuple(t for t in prof.attnc.tiles if "anchor" in t.source)
    return sim.dataclasses.replace(prof, attnc=sim.KernelCosts(10.0, seed))


def shape(n, **kw):
    return sim.Shape(n, **{"heads": 32, **kw})


def plain_h100() -> "sim.Profile":
    """The shipped H100 profile without its fitted extras (grid, diagonal and stripe costs,
    backward factors): a fit test's synthetic truth then stays what the test says it is,
    whatever the last calibration on the GPU stored."""
    prof = sim.load_profile("h100")
    return sim.dataclasses.replace(prof, grid=None, diag=None, stripe=None, backward={})


def flat_costs(costs: "sim.KernelCosts") -> "sim.KernelCosts":
    """Costs where a masked tile costs a full one and programs and launches are free."""
    tiles = tuple(sim.dataclasses.replace(t, masked_us=t.full_us, program_us=0.0) for t in costs.tiles)
    return sim.KernelCosts(0.0, tiles)


def test_dense_causal_speedup_is_the_rate_ratio():
    """With tile costs alone, causal's speedup over SDPA is the ratio of their tile rates, at the
    tiles of the kernel that runs (on Hopper from 4096 keys on: the Gluon kernel's)."""
    prof = plain_h100()
    flat = {k: flat_costs(prof.kernel(k)) for k in ("attnc", "sdpa", "hopper")}
    prof = sim.dataclasses.replace(prof, **flat)
    sdpa = prof.sdpa.lookup(128, "bfloat16", 128, 128, prof.dtype_scale)
    for n in (2048, 8192, 32768):
        cfg = sim.kernel_config(single(prim("causal")), 128, "bfloat16", prof.capability, n=n)
        assert cfg.hopper is (n >= 4096)
        ours = prof.kernel("hopper" if cfg.hopper else "attnc").lookup(
            128, "bfloat16", cfg.bm, cfg.bn, prof.dtype_scale
        )
        per_sdpa_tile = 128 * 128 / (cfg.bm * cfg.bn)  # the kernel's tiles in one of SDPA's
        p = sim.predict_prefill(single(prim("causal")), shape(n), prof)
        assert p.speedup == pytest.approx(sdpa.full_us / (ours.full_us * per_sdpa_tile), rel=0.1)
        nb = n // cfg.bm  # query block i visits the key blocks up to its last row
        assert p.attnc.tiles_full + p.attnc.tiles_masked == 32 * sum(
            ((i + 1) * cfg.bm - 1) // cfg.bn + 1 for i in range(nb)
        )


@examples(20)
@given(causal_expressions(max_leaves=3), causal_expressions(max_leaves=3), st.sampled_from([1000, 4096]))
def test_denser_pattern_is_not_faster(a, b, n):
    """On the tiles of the exact block map, adding pairs never makes a launch faster, up to the
    masked/full cost ratio (a masked tile may become full, hence cheaper) and the 4/3 bound of
    longest-first list scheduling. (The generated kernel's plan can break this: its visits are a
    superset of the map's, looser for some term structures than for a union that contains them.)"""
    prof = sim.load_profile("h100")
    costs = prof.attnc.lookup(128, "bfloat16", 128, 128, prof.dtype_scale)

    def predicted(expr):
        tiles = sim.block_tiles(lower_expr(expr), n, 128, 128)
        return sim.launch_time("attnc", sim.Launch((tiles,) * 32, 1, "lpt"), costs, 10.0, prof.sms)

    small, big = predicted(a), predicted(op("|", a, b))
    ratio = costs.masked_us / costs.full_us
    assert small.ms <= big.ms * ratio * 4 / 3 + 1e-9
    work = small.ms - small.idle_ms - small.launch_ms
    assert work <= (big.ms - big.idle_ms - big.launch_ms) * ratio + 1e-9


def test_streaming_llm_against_dense():
    sw = single(SW)
    times = [sim.predict_prefill(sw, shape(n), anchors_profile()) for n in (4096, 16384, 65536)]
    assert all(x.speedup > 1 for x in times)
    assert times[0].speedup < times[1].speedup < times[2].speedup, "speedup grows with N for O(N) patterns"
    p = times[-1]
    parts = (
        p.attnc.full_ms
        + p.attnc.masked_ms
        + p.attnc.sink_ms
        + p.attnc.overhead_ms
        + p.attnc.idle_ms
        + p.attnc.launch_ms
    )
    assert parts == pytest.approx(p.attnc.ms)
    assert p.attnc.tiles_sink > 0, "sinks are a narrow loop"
    assert p.flex.note.startswith("estimate")
    assert p.cache_bytes == 32 * (4 + 1024) * 2 * 128 * 2


def test_decode_reads_the_cache_it_keeps():
    sw = single(SW)
    d = [sim.predict_decode(sw, shape(n, batch=8, kv_heads=8)) for n in (32768, 131072)]
    assert d[0].cache_bytes == d[1].cache_bytes == 8 * 8 * (4 + 1024) * 2 * 128 * 2
    assert d[1].dense_cache_bytes == 8 * 8 * 131072 * 2 * 128 * 2
    assert 1 < d[0].speedup < d[1].speedup
    dense = sim.predict_decode(single(prim("causal")), shape(4096, batch=8, kv_heads=8))
    assert dense.cache_bytes == dense.dense_cache_bytes


def test_model_layers_multiply():
    import dataclasses

    from attnc.compiler.ir import HeadGroup, ModelShape

    one = single(SW)
    many = dataclasses.replace(
        one, model=ModelShape(layers=4), groups=(HeadGroup(one.groups[0].pattern, frozenset((l, 0) for l in range(4))),)
    )
    a, b = sim.predict_prefill(one, shape(8192)), sim.predict_prefill(many, shape(8192))
    assert b.layers == 4 and b.attnc.ms == pytest.approx(4 * a.attnc.ms) and b.sdpa.ms == pytest.approx(4 * a.sdpa.ms)
    assert sim.predict_prefill(many, shape(8192), layer=2).attnc.ms == pytest.approx(a.attnc.ms)
    assert b.cache_bytes == 4 * a.cache_bytes


def test_predict_for_the_benchmark():
    program = single(SW)
    case = {"program": program, "n": 32768, "heads": 32, "head_dim": 128, "dtype": "torch.bfloat16"}
    p = sim.predict_prefill(program, shape(32768))
    assert sim.predict(case) == p.attnc.ms
    assert sim.predict(case, "sdpa") == p.sdpa.ms and sim.predict(case, "flex") == p.flex.ms

    class Case:
        pass

    obj = Case()
    obj.__dict__.update(case, decode=True, batch=8, kv_heads=8)
    assert sim.predict(obj) == sim.predict_decode(program, shape(32768, batch=8, kv_heads=8)).attnc.ms


def test_simulation_at_128k_counts_without_enumerating(predicate_pairs):
    """At N = 131072 the simulator counts tiles from the plan and the block map's closed forms:
    the pattern's predicate is evaluated on at most 1/1000 of the 17 G pairs of a dense mask
    (the decode step's one query row and the few tiles that are probed)."""
    program = single(SW)
    sim.predict_prefill(program, shape(131072))
    sim.predict_decode(program, shape(131072))
    assert predicate_pairs.count <= 131072**2 // 1000, predicate_pairs.count


def test_bad_inputs_say_what_to_fix():
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        sim.Shape(1024, heads=6, kv_heads=4)
    with pytest.raises(ValueError, match="dtype"):
        sim.Shape(1024, dtype="int8")
    with pytest.raises(ValueError, match="no device profile 'a100'.*h100"):
        sim.load_profile("a100")


# --------------------------------------------------------------------------------- profiles
def test_profile_round_trips_through_json(tmp_path):
    prof = sim.load_profile("h100")
    again = sim.Profile.from_dict(json.loads(prof.to_json()))
    assert again == prof
    path = tmp_path / "mine.json"
    path.write_text(prof.to_json())
    assert sim.load_profile(path) == prof
    broken = json.loads(prof.to_json())
    del broken["sms"]
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="not a device profile"):
        sim.load_profile(path)


def test_missing_tile_shapes_are_scaled_and_say_so():
    prof = anchors_profile()
    base = prof.attnc.lookup(128, "bfloat16", 128, 128, prof.dtype_scale)
    half = prof.attnc.lookup(64, "bfloat16", 128, 64, prof.dtype_scale)
    assert half.full_us == pytest.approx(base.full_us / 4) and "estimate" in half.source
    fp32 = prof.attnc.lookup(128, "float32", 64, 32, prof.dtype_scale)
    assert fp32.full_us == pytest.approx(base.full_us / 8 * prof.dtype_scale["float32"])


# ------------------------------------------------------------------------------ calibration
def calibrate_module():
    return import_module_from_path(ROOT / "bench" / "calibrate.py", "attnc_bench_calibrate")


def test_fit_recovers_the_costs_that_made_the_times():
    cal = calibrate_module()
    truth = plain_h100()
    t = truth.attnc.tiles[0]
    truth = sim.dataclasses.replace(
        truth,
        attnc=sim.KernelCosts(
            7.0, (sim.dataclasses.replace(t, full_us=2.1, masked_us=3.0, program_us=4.0, sink_us=0.9),)
        ),
    )
    cases = [(c, c.launch()) for c in cal.attnc_cases() if c.kernel == "attnc"]
    measured = {}
    for c, launch in cases:
        costs = truth.attnc.lookup(128, "bfloat16", *cal._tile(launch), truth.dtype_scale)
        measured[c.name] = sim.launch_time("attnc", launch, costs, truth.attnc.launch_us, truth.sms).ms
    fitted = cal.fit_profile(plain_h100(), cases, measured, {"attnc": cal.SETTINGS["attnc"]})
    tile = cal._tile(cases[0][1])  # the tiles the generated kernel runs (128 x 64 on Hopper)
    got = fitted.attnc.lookup(128, "bfloat16", *tile, fitted.dtype_scale)
    want = truth.attnc.lookup(128, "bfloat16", *tile, truth.dtype_scale)
    for name in ("full_us", "masked_us", "program_us", "sink_us"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-3), name
    assert fitted.attnc.launch_us == pytest.approx(7.0, rel=1e-2)
    assert all(abs(r["error"]) < 1e-3 for r in cal.report(fitted, cases, measured))


def test_calibration_runs_without_lark_or_pydantic(tmp_path):
    """The GPU machine has no lark or pydantic: bench/calibrate.py's fit must import without them."""
    cal = calibrate_module()
    cases = [(c, c.launch()) for c in cal.attnc_cases()[:3] + cal.baseline_cases()[:2]]
    rows = [{"case": cal.asdict(c), "launch": launch.to_dict()} for c, launch in cases]
    (tmp_path / "cases.json").write_text(json.dumps({"capability": [9, 0], "cases": rows}))
    work = sim.prefill_workload(single(SW), shape(8192))
    (tmp_path / "workload.json").write_text(json.dumps(work.to_dict()))
    expected = sim.time_workload(work).attnc.ms
    script = f"""
import sys, json
for name in ("lark", "pydantic", "attnc", "jinja2"):
    sys.modules[name] = None
sys.argv = ["calibrate.py"]
import runpy
cal = runpy.run_path({str(ROOT / "bench" / "calibrate.py")!r})
sim = cal["sim"]
spec = json.load(open({str(tmp_path / "cases.json")!r}))
cases = [(cal["Case"](**r["case"]), sim.Launch.from_dict(r["launch"])) for r in spec["cases"]]
measured = {{c.name: 1.0 + i for i, (c, _) in enumerate(cases)}}
prof = cal["fit_profile"](sim.load_profile("h100"), cases, measured)
print("ok", sim.__name__, len(cal["report"](prof, cases, measured)))
print("predicted", repr(sim.predict(json.load(open({str(tmp_path / "workload.json")!r})))))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ok compiler.simulate 5" in out.stdout
    assert f"predicted {expected!r}" in out.stdout, "bench/gpu.py's predictions on the GPU machine"


def test_generate_writes_modules_and_cases(tmp_path):
    cal = calibrate_module()
    cal.generate(tmp_path)
    spec = json.loads((tmp_path / "cases.json").read_text())
    assert spec["capability"] == [9, 0]
    modules = {r["case"]["module"] for r in spec["cases"] if r["case"]["kernel"] == "attnc"}
    assert all((tmp_path / f"{m}.py").is_file() for m in modules) and len(modules) >= 6
    assert "def prefill(" in (tmp_path / "cal_sinkwin1024.py").read_text()
    launch = sim.Launch.from_dict(spec["cases"][0]["launch"])
    assert launch.heads[0].bm == 128 and len(launch.heads) == 32


def test_calibrate_writes_the_fitted_profile(tmp_path, capsys):
    """The --run step end to end, with a fake GPU whose times come from a known profile."""
    cal = calibrate_module()
    base = anchors_profile()
    t = base.attnc.tiles[0]
    truth = sim.dataclasses.replace(
        base,
        attnc=sim.KernelCosts(
            12.0, (sim.dataclasses.replace(t, full_us=2.0, masked_us=2.6, program_us=3.0, sink_us=0.7),)
        ),
    )
    cases = [c for c in cal.attnc_cases() + cal.baseline_cases() if c.kernel != "flex"]
    rows = [{"case": cal.asdict(c), "launch": c.launch().to_dict()} for c in cases]
    (tmp_path / "cases.json").write_text(json.dumps({"capability": [9, 0], "cases": rows}))

    class FakeGPU:
        capability, device, sms, source = (9, 0), "Fake H100", 132, "fake"

        def measure(self, case, launch):
            kc = truth.kernel(case.kernel)
            costs = kc.lookup(128, "bfloat16", *cal._tile(launch), truth.dtype_scale)
            return sim.launch_time(cal.backward_key(case.kernel), launch, costs, kc.launch_us, truth.sms).ms

        def decode(self, start):
            return start

    out = tmp_path / "profile.json"
    assert cal.calibrate(tmp_path, out, "h100", "fake", FakeGPU()) == 0
    prof = sim.load_profile(out)
    assert prof.name == "fake" and prof.device == "Fake H100"
    tile = cal._tile(cases[0].launch())
    got = prof.attnc.lookup(128, "bfloat16", *tile, prof.dtype_scale)
    want = truth.attnc.lookup(128, "bfloat16", *tile, truth.dtype_scale)
    assert got.full_us == pytest.approx(want.full_us, rel=1e-3) and got.sink_us == pytest.approx(want.sink_us, rel=1e-3)
    power = prof.attnc.lookup(128, "bfloat16", 64, 64, prof.dtype_scale)
    assert power.full_us == pytest.approx(2.0 / 4, rel=1e-3) and "one factor" in power.source
    assert all(abs(r["error"]) < 0.02 for r in prof.calibration if r["kernel"] == "attnc")
    assert {r["case"] for r in prof.calibration} == {c.name for c in cases}

    class OtherGPU(FakeGPU):
        capability = (8, 0)

    with pytest.raises(cal.CalibrationError, match="capability"):
        cal.calibrate(tmp_path, out, "h100", "fake", OtherGPU())


def test_error_section_is_filled(tmp_path):
    doc = ROOT / "docs" / "simulate.md"
    rows = [
        {"label": "causal", "n": 8192, "attnc_ms": 1.0, "predicted_ms": 1.1},
        {"label": "power", "n": 32768, "attnc_ms": 1.0, "predicted_ms": 0.5},
        {"label": "x", "n": 1, "skipped": "t"},
    ]
    out = sim.fill_error_section(doc, rows, tmp_path / "simulate.md", source="test GPU")
    text = out.read_text()
    assert "| causal | 8192 | 1.000 | 1.100 | +10.0% |" in text
    assert "1 of 2 cells (50%) are within 15%" in text and "largest error is 50.0% (power, N = 32768)" in text
    assert text.split(sim.ERROR_BEGIN)[0] == doc.read_text().split(sim.ERROR_BEGIN)[0]
    assert text.split(sim.ERROR_END)[1] == doc.read_text().split(sim.ERROR_END)[1]


def test_grid_groups_are_timed_with_the_grid_kernel_costs():
    """At the grid's length a grid group's launch runs the tile-order kernel: its tiles are
    tile_visits' counts and it is charged the profile's `grid` costs (attnc's when the profile
    has none); at another length it runs the generic kernel."""
    import dataclasses

    from attnc.compiler.lower import lower
    from attnc.compiler.tiling import grid_terms, tile_visits
    from attnc.spec.resolve import resolve_text

    program = lower(resolve_text("grid(16, 24)\npattern g = neighborhood(kernel = (5, 7))\n", "g.attn"))
    shape = sim.Shape(16 * 24, 1, 4, None, 128)
    work = sim.prefill_workload(program, shape)
    ((launch, _),) = work.launches["attnc"]
    assert launch.costs == "grid"
    t = launch.heads[0]
    q_tile, k_tile = sim._plans(program)[0].grid.tiles[(t.bm, t.bn)]
    assert t.masked.tolist() == tile_visits(grid_terms(program.groups[0].pattern), q_tile, k_tile).tolist()
    assert t.full.sum() == 0
    assert sim.Launch.from_dict(launch.to_dict()).costs == "grid"
    other = sim.prefill_workload(program, dataclasses.replace(shape, n=16 * 24 + 5))
    assert other.launches["attnc"][0][0].costs == ""

    prof = sim.load_profile("h200")
    assert prof.grid is not None
    slow = dataclasses.replace(
        prof,
        grid=sim.KernelCosts(
            prof.grid.launch_us, tuple(dataclasses.replace(c, masked_us=c.masked_us * 10) for c in prof.grid.tiles)
        ),
    )
    base = sim.time_workload(work, prof).attnc.ms
    assert sim.time_workload(work, slow).attnc.ms > base
    assert sim.time_workload(other, slow).attnc.ms == sim.time_workload(other, prof).attnc.ms
    fallback = dataclasses.replace(prof, grid=None)
    assert fallback.kernel("grid") is fallback.attnc


def test_loop_launches_are_timed_with_their_own_costs():
    """Groups with a diagonal loop or a stripe loop are charged the profile's `diag` or `stripe`
    costs (attnc's while the profile has none, so the shipped predictions stay as they were),
    groups the Gluon kernel runs its `hopper` costs."""
    import dataclasses

    prof = sim.load_profile("h100")
    for text, family in [
        (
            op(
                "&",
                prim("causal"),
                op("|", op("|", prim("sink", size=4), prim("window", size=256)), prim("strided", stride=256)),
            ),
            "diag",
        ),
        (op("&", prim("causal"), op("|", prim("window", size=256), prim("strided", stride=256))), ""),  # split launches
        (op("&", prim("causal"), op("|", prim("window", size=512), prim("stride", stride=4, offset=1))), "stripe"),
        (SW, ""),
        (op("&", prim("causal"), op("|", prim("sink", size=4), prim("window", size=4096))), "hopper"),  # Gluon
    ]:
        work = sim.prefill_workload(single(text), shape(32768))  # long enough for the split's classes
        ((launch, _),) = work.launches["attnc"]
        assert launch.costs == family
        base = sim.time_workload(work, prof).attnc.ms
        slower = sim.KernelCosts(
            prof.attnc.launch_us,
            tuple(dataclasses.replace(t, full_us=3 * t.full_us, masked_us=3 * t.masked_us) for t in prof.attnc.tiles),
        )
        other = sim.time_workload(work, dataclasses.replace(prof, diag=slower, stripe=slower, hopper=slower)).attnc.ms
        assert (other > 1.5 * base) == bool(family), family


def test_profiles_by_device_name():
    assert sim.device_profile_name("NVIDIA H100 80GB HBM3") == "h100" == sim.device_profile_name("H100")
    assert sim.device_profile_name("NVIDIA H200") == "h200"
    assert sim.load_profile("NVIDIA H200").name == sim.load_profile("h200").name == "h200"
    with pytest.raises(ValueError, match="shipped ones"):
        sim.load_profile("NVIDIA B200")


def test_calibrate_fits_the_backward_factor(tmp_path):
    """--run times forward + backward of the causal cases too, and stores per kernel the
    measured backward over backward_time's model, which the training predictions then use."""
    cal = calibrate_module()
    truth = plain_h100()
    factor = {"attnc": 1.7, "sdpa": 0.6}
    cases = [c for c in cal.attnc_cases() + cal.baseline_cases() if c.name in cal.BACKWARD_CASES]
    rows = [{"case": cal.asdict(c), "launch": c.launch().to_dict()} for c in cases]
    (tmp_path / "cases.json").write_text(json.dumps({"capability": [9, 0], "cases": rows}))

    class FakeGPU:
        capability, device, sms, source = (9, 0), "NVIDIA H100 fake", 132, "fake"

        def forward(self, case):
            launch = case.launch()
            kc = truth.kernel(case.kernel)
            costs = kc.lookup(128, "bfloat16", *cal._tile(launch), truth.dtype_scale)
            return sim.launch_time(cal.backward_key(case.kernel), launch, costs, kc.launch_us, truth.sms)

        def measure(self, case, launch):
            return self.forward(case).ms

        def measure_training(self, case):
            fwd = self.forward(case)
            return fwd.ms + sim.backward_time(fwd, factor[cal.backward_key(case.kernel)]).ms

        def decode(self, start):
            return start

    out = tmp_path / "profile.json"
    assert cal.calibrate(tmp_path, out, "h100", "fake", FakeGPU()) == 0
    prof = sim.load_profile(out)
    assert prof.backward["attnc"] == pytest.approx(1.7, rel=0.05) and prof.backward["sdpa"] == pytest.approx(
        0.6, rel=0.05
    )
    backward_rows = [r for r in prof.calibration if r["kernel"].endswith("_backward")]
    assert len(backward_rows) == 4 and all(abs(r["error"]) < 0.05 for r in backward_rows)
    plain = sim.predict(dict(program=single(prim("causal")), n=8192), profile=truth, training=True)
    fitted = sim.predict(dict(program=single(prim("causal")), n=8192), profile=out, training=True)
    assert fitted > plain
