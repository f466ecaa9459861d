"""Grid patterns in tile order: the separable tiled block map against the permuted dense
mask, the kernel's tile count (compiler/tiling.py) against the non-empty tiles, the numbers
`attnc analyze` reports for grids, and the pattern files of issue 8."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnc.compiler.grid_blocks import brute_tiled_block_map, tiled_block_map
from attnc.compiler.ir import Neighborhood, Status
from attnc.compiler.lower import lower
from attnc.compiler.tiling import GridTiling, anchored, choose_tiling, grid_terms, visited_tiles
from attnc.spec.resolve import load, resolve_text
from tests.strategies import examples
from tests.test_grids_spec import brute_pairs, grids, on_grid, source

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"


def pattern_of(text: str):
    (group,) = lower(resolve_text(text, "t.attn")).groups
    return group.pattern


def tilings(dims, prefix):
    return st.tuples(
        st.tuples(*(st.integers(1, min(L, 5) + 1) for L in dims)),
        st.tuples(*(st.integers(1, min(L, 5) + 1) for L in dims)),
    ).map(lambda t: GridTiling(tuple(dims), prefix, t[0], t[1]))


OTHERS = [
    "NB",
    "NB | global(3)",
    "NB & causal",
    "NB | window(4)",
    "causal & (NB | sink(2))",
    "full - NB",
    "NB - window(left = 2, right = 2)",
]


@examples(60)
@given(grids(max_tokens=150), st.data())
def test_tiled_block_map_equals_the_permuted_mask(g, data):
    dims, prefix = g[0], g[4]
    expr = data.draw(st.sampled_from(OTHERS + ["UNION"]))
    if expr == "UNION":  # two or three neighbourhoods over one grid, as Radial Attention
        more = data.draw(st.lists(on_grid(dims, prefix), min_size=1, max_size=2))
        expr = " | ".join(["NB"] + [source(h).split("pattern p = ")[1].strip() for h in more])
    pattern = pattern_of(source(g, expr))
    tiling = data.draw(tilings(dims, prefix))
    fast, brute = tiled_block_map(pattern, tiling), brute_tiled_block_map(pattern, tiling)
    assert (fast.status == brute.status).all()
    assert fast.prefix_pairs == brute.prefix_pairs


@examples(60)
@given(grids(max_tokens=200), st.data())
def test_kernel_tile_count_bounds_the_non_empty_tiles(g, data):
    """visited_tiles (the terms' per-axis boxes, what the kernel visits) never misses a tile.
    With dilation 1 on every axis, a query tile's windows are contiguous on each axis, so a
    single term's box is exactly its non-empty tiles. Where a query tile's rows share one
    window (`anchored`), the kernel's boxes start at it and are at most the tiles it meets
    (tests/test_grids_kernel.py checks which keys those boxes visit)."""
    dims, prefix = g[0], g[4]
    tiling = data.draw(tilings(dims, prefix))
    more = data.draw(st.lists(on_grid(dims, prefix), max_size=2))
    pattern = pattern_of(source(g, " | ".join(["NB"] + [source(h).split("pattern p = ")[1].strip() for h in more])))
    gt = grid_terms(pattern)
    assert gt is not None
    visited = tiled_block_map(pattern, tiling).visited
    boxes = visited_tiles(gt, tiling.q_tile, tiling.k_tile)
    shared = [anchored(gt, a, t) for a, t in enumerate(tiling.q_tile)]
    if all(shared):
        # boxes from the window a query tile's rows share: never more than the tiles it meets
        assert boxes <= visited
        return
    if any(shared):
        return  # fewer boxes on the shared axes, whole tiles on the others: no order (the kernel
        # tests check every key such a launch visits)
    assert boxes >= visited
    if not more and all(d == 1 for d in g[2]):
        assert boxes == visited


def test_padding_is_never_allowed():
    """A 5 x 5 grid in 2 x 2 tiles: the tiles on the last row and column hang over it."""
    pattern = pattern_of("grid(5, 5)\npattern p = full")
    tiling = GridTiling((5, 5), 0, (2, 2), (2, 2))
    m = tiled_block_map(pattern, tiling)
    padded = (tiling.q_positions().reshape(-1, 4) < 0).any(axis=1)
    assert (m.status[~padded][:, ~padded] == Status.ALL).all()
    assert (m.status[padded] == Status.SOME).all() and (m.status[:, padded] == Status.SOME).all()


def test_prefix_stays_out_of_the_map_but_is_counted():
    pattern = pattern_of("grid(4, 4) prefix = 3\npattern p = neighborhood(kernel = 3)")
    m = tiled_block_map(pattern, GridTiling((4, 4), 3, (2, 2), (2, 2)))
    assert m.status.shape == (4, 4)
    assert m.prefix_pairs == 3 * 19 + 16 * 3
    assert m.prefix_pairs + 16 * 9 == brute_pairs((4, 4), (3, 3), (1, 1), (False, False), 3).sum()


@pytest.mark.parametrize(
    "dims, kernel, bm, bn",
    [
        ((128, 128), (13, 13), 128, 64),
        ((128, 128), (13, 13), 128, 128),
        ((16, 48, 80), (3, 11, 11), 128, 64),
    ],
)
def test_bench_sizes_are_separable_and_match_the_kernel_count(dims, kernel, bm, bn, predicate_pairs):
    """At the benchmark's sizes a single neighbourhood's tiled map comes from per-axis tables:
    the pattern's predicate is never evaluated on a pair (no enumeration of N x N)."""
    nb = Neighborhood(dims, kernel, (1,) * len(dims), (False,) * len(dims))
    pattern = pattern_of(
        f"grid({', '.join(map(str, dims))})\npattern p = neighborhood(kernel = ({', '.join(map(str, kernel))}))"
    )
    assert pattern.terms[0].lits[0].atom == nb
    tiling = choose_tiling(grid_terms(pattern), bm, bn)
    m = tiled_block_map(pattern, tiling)
    assert predicate_pairs.count == 0
    assert m.visited == visited_tiles(grid_terms(pattern), tiling.q_tile, tiling.k_tile)
    useful = math.prod(dims) * math.prod(kernel) / (m.visited * bm * bn)
    assert 0.1 < useful <= 1.0


def test_natten_image_densities_in_docs():
    """docs/grids.md: 128 x 128, kernel 13 x 13, 128 x 64 tiles: ~24% useful pairs per visited
    tile in tile order against ~10% in row-major order."""
    from attnc.compiler.blocks import block_map

    pattern = lower(load(PATTERNS / "natten_image.attn")).groups[0].pattern
    tiling = choose_tiling(grid_terms(pattern), 128, 64)
    pairs = 128 * 128 * 169
    tiled = pairs / (tiled_block_map(pattern, tiling).visited * 128 * 64)
    natural = block_map(pattern, 128 * 128, 128, 64)
    row_major = pairs / ((natural.status != Status.NONE).sum() * 128 * 64)
    assert round(tiled, 2) == 0.24 and round(row_major, 2) == 0.10


def test_gna_image_tiles_are_its_windows():
    """docs/grids.md: patterns/gna_image.attn (stride 8 x 8) at 64 x 64 tiles: each 8 x 8 query
    tile is one stride group, its keys one 13 x 13 window, read as 2 x 2 boxes of 8 x 8 from the
    window's start: 1,024 boxes, 66% useful pairs (natten_image: 2,116 tiles, 32%)."""
    from attnc.compiler.count import count_pairs
    from attnc.compiler.tiling import tile_visits, unmasked_boxes

    useful = {}
    for name in ("gna_image", "natten_image"):
        pattern = lower(load(PATTERNS / f"{name}.attn")).groups[0].pattern
        gt = grid_terms(pattern)
        tiling = choose_tiling(gt, 64, 64)
        pairs = count_pairs(pattern, 128 * 128)
        assert pairs == 128 * 128 * 169  # a shared window still holds 169 keys for every query
        visits = tile_visits(gt, tiling.q_tile, tiling.k_tile)
        useful[name] = (tiling.q_tile, int(visits.sum()), round(pairs / (visits.sum() * 64 * 64), 2))
    assert useful == {"gna_image": ((8, 8), 1024, 0.66), "natten_image": ((8, 8), 2116, 0.32)}
    gt = grid_terms(lower(load(PATTERNS / "gna_image.attn")).groups[0].pattern)
    assert unmasked_boxes(gt, (8, 8), (8, 8)) == 1


@pytest.mark.parametrize("name", ["natten_image", "natten_video", "radial_attention", "freeswim"])
def test_grid_pattern_files_tile_as_the_kernel_counts(name, predicate_pairs):
    """The tiled maps of the grid files, with the work bounded: the predicate is evaluated on
    at most 1/1000 of the grid's N x N pairs (the few ambiguous tiles that are enumerated)."""
    pattern = lower(load(PATTERNS / f"{name}.attn")).groups[0].pattern
    gt = grid_terms(pattern)
    assert gt is not None
    n = gt.prefix + math.prod(gt.dims)
    for bm, bn in ((128, 64), (128, 128)):
        predicate_pairs.count = 0
        tiling = choose_tiling(gt, bm, bn)
        m = tiled_block_map(pattern, tiling)
        assert predicate_pairs.count <= n * n // 1000, predicate_pairs.count
        boxes = visited_tiles(gt, tiling.q_tile, tiling.k_tile)
        if any(anchored(gt, a, t) for a, t in enumerate(tiling.q_tile)):
            # boxes from a window every query tile shares (FreeSwim's 1-row query tiles): fewer
            # than the key tiles those windows meet
            assert boxes <= m.visited
            continue
        assert boxes >= m.visited
        if len(gt.terms) == 1:  # exact here (natten_video's dilation 2 is below its key tiles)
            assert boxes == m.visited


def test_analyze_reports_the_grid_tiling(tmp_path, capsys):
    from attnc.cli import main

    path = tmp_path / "g.attn"
    path.write_text("grid(32, 32) prefix = 2\npattern g = neighborhood(kernel = (5, 5)) | global(2)\n")
    assert main(["analyze", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    orders = report["groups"][0]["grid_order"]
    assert [o["block"] for o in orders] == [[128, 64], [128, 128]]
    pattern = pattern_of(path.read_text())
    mask = pattern.mask(2 + 32 * 32)
    for o in orders:
        tiling = GridTiling((32, 32), 2, tuple(o["q_tile"]), tuple(o["k_tile"]))
        visited = int((brute_tiled_block_map(pattern, tiling).status != Status.NONE).sum())
        bm, bn = o["block"]
        assert o["tile_order"]["visited"] == visited and o["tile_order"]["kernel_visits"] is None
        assert o["prefix"] == 2 and o["prefix_pairs"] == int(mask[:2].sum() + mask[2:, :2].sum())
        grid_pairs = int(mask[2:, 2:].sum())
        assert o["tile_order"]["useful_pair_density"] == pytest.approx(grid_pairs / (visited * bm * bn))
        assert o["row_major"]["visited_share"] > o["tile_order"]["visited_share"]
    assert main(["analyze", str(path)]) == 0
    text = capsys.readouterr().out
    assert "grid order, 128x64 tiles (query tile" in text and "row-major order:" in text


def test_analyze_leaves_other_patterns_and_other_lengths_alone():
    from attnc.compiler.report import analyze

    program = lower(resolve_text("pattern p = causal & window(64)", "t.attn"))
    assert analyze(program, 1024, with_receptive=False).groups[0].grid == []
    program = lower(resolve_text("grid(16, 16)\npattern p = neighborhood(kernel = 3)", "t.attn"))
    assert analyze(program, 200, with_receptive=False).groups[0].grid == []
    assert len(analyze(program, 256, with_receptive=False).groups[0].grid) == 2


# ---------------------------------------------------------------- row-major map and counts by boxes

BOX_FORMS = [
    "U",
    "U & causal",
    "U | global(3)",
    "full - U | window(4)",
    "U - NB",
    "U & window(left = 5, right = 3)",
    "(U) & sink(4) | NB",
]


@examples(60)
@given(grids(max_tokens=120), st.data())
def test_row_major_map_and_count_of_neighbourhood_unions_equal_brute_force(g, data):
    """compiler/blocks.py and compiler/count.py count neighbourhoods by per-axis boxes, unions and
    intersections by inclusion-exclusion: against the dense mask, with dilation, causal axes, a
    prefix, tiles that do not divide N, and N (and the key count) shorter or longer than the grid."""
    from attnc.compiler.blocks import block_map, brute_block_map
    from attnc.compiler.count import count_pairs

    dims, prefix = g[0], g[4]
    nb = lambda h: source(h).split("pattern p = ")[1].strip()  # noqa: E731
    parts = [nb(g)]
    for h in data.draw(st.lists(on_grid(dims, prefix), max_size=3)):
        if data.draw(st.booleans()):
            parts.append(nb(h))
        else:  # an intersection inside the union
            parts[-1] = f"({parts[-1]} & {nb(h)})"
    union = " | ".join(parts)
    form = data.draw(st.sampled_from(BOX_FORMS))
    expr = form.replace("U", union).replace("NB", nb(data.draw(on_grid(dims, prefix)))) if form != "U" else union
    pattern = pattern_of(
        f"grid({', '.join(map(str, dims))})" + (f" prefix = {prefix}" if prefix else "") + f"\npattern p = {expr}\n"
    )
    grid = prefix + math.prod(dims)
    n = data.draw(
        st.sampled_from([grid, max(1, grid - data.draw(st.integers(1, 9))), grid + data.draw(st.integers(1, 9))])
    )
    n_k = data.draw(st.sampled_from([n, max(1, n - 5), n + 7]))
    bm, bn = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    assert count_pairs(pattern, n) == int(pattern.mask(n).sum())
    assert (block_map(pattern, n, bm, bn, n_k).status == brute_block_map(pattern, n, bm, bn, n_k).status).all()


def test_box_counts_of_runs_of_queries_equal_enumeration():
    """The per-tile counts themselves (not only the statuses they give), on tiles that cut
    grid rows and frames, with dilation and causal axes, counted or summed from finer tiles."""
    from attnc.compiler.blocks import box_tile_counts

    a = Neighborhood((4, 5, 6), (3, 2, 3), (1, 2, 2), (True, False, False), 3)
    b = Neighborhood((4, 5, 6), (2, 5, 2), (2, 1, 1), (False, False, True), 3)
    c = Neighborhood((4, 5, 6), (4, 1, 6), (1, 1, 1), (False, True, False), 3)
    pattern = pattern_of(
        "grid(4, 5, 6) prefix = 3\npattern p = neighborhood(kernel = (3, 2, 3), dilation = (1, 2, 2), "
        "causal = (true, false, false)) | neighborhood(kernel = (2, 5, 2), dilation = (2, 1, 1), "
        "causal = (false, false, true)) & neighborhood(kernel = (4, 1, 6), "
        "causal = (false, true, false))"
    )
    # (123, 28, 55) and (123, 14, 22) are summed from (123, 7, 11)'s counts (the first with short last groups)
    for n, bm, bn in ((123, 7, 11), (123, 28, 55), (123, 14, 22), (130, 13, 5), (100, 128, 3)):
        counts = box_tile_counts(((a,), (b, c)), n, n, bm, bn)
        mask = pattern.mask(n)
        want = np.add.reduceat(np.add.reduceat(mask, np.arange(0, n, bm), axis=0), np.arange(0, n, bn), axis=1)
        assert (counts == want).all()


@pytest.mark.parametrize("name, pairs", [("radial_attention", 1_065_369_600), ("freeswim", 131040 * 21 * 31 * 53)])
def test_large_grid_files_count_and_map_by_boxes_and_exactly(name, pairs, predicate_pairs):
    """Radial Attention (61,440 tokens, four neighbourhoods) and FreeSwim (131,040 tokens, 34,503
    keys per query): pairs and the 128 x 128 map by per-axis boxes, the predicate evaluated on at
    most 1/1000 of the N x N pairs; sampled query blocks enumerated."""
    from attnc.compiler.blocks import block_map
    from attnc.compiler.count import count_pairs

    pattern = lower(load(PATTERNS / f"{name}.attn")).groups[0].pattern
    n = 61440 if name == "radial_attention" else 131040
    assert count_pairs(pattern, n) == pairs
    bmap = block_map(pattern, n, 128, 128)
    assert predicate_pairs.count <= n * n // 1000, predicate_pairs.count
    for i in np.random.default_rng(3).integers(0, bmap.status.shape[0], 2):
        m = pattern.holds(np.arange(i * 128, min(i * 128 + 128, n))[:, None], np.arange(n)[None, :])
        cols = np.add.reduceat(m, np.arange(0, n, 128), axis=1)
        full = np.add.reduceat(np.ones_like(m), np.arange(0, n, 128), axis=1)
        want = np.where(cols.sum(0) == full.sum(0), Status.ALL, np.where(cols.sum(0) > 0, Status.SOME, Status.NONE))
        assert (bmap.status[i] == want).all()
