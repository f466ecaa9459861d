"""Grids and neighbourhoods from `.attn` text to IR, against an independent brute force of
NATTEN's definition (NATTEN's reference backend, src/natten/backends/flex.py `get_na_flex_mask`).

The brute force below is written from the definition, not from compiler/ir.py: per axis it
lists each query's window explicitly. A non-causal axis of length L with kernel K and
dilation d splits into d dilation groups (the coordinates congruent modulo d); in the
group of the query, of all the runs of K consecutive group members that contain the query,
the window is the one whose start is closest to "K // 2 members before the query" (left
extent K // 2, right extent K - 1 - K // 2, as NATTEN does for odd and even K): in the
middle the query sits at the centre, at a border the run is shifted inward, so every
query sees exactly K coordinates. A causal axis takes the K group members ending at the
query (fewer near the start). A grid pair is allowed when every axis allows it; the
`prefix` text tokens attend to and from everything.

With a stride s (GNA; NATTEN's `stride`, its flex backend's `get_na_flex_mask` and its
CUTLASS kernels' `get_win_start`), the group members are cut into runs of s consecutive
members and each query takes the window of its run's leader: the centre member
(run start + s // 2) for a non-causal axis, the last member for a causal one, never past
the group's last member. A causal query's window starts at its leader's start but still
ends at the query itself.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnc.compiler.lower import lower
from attnc.spec.errors import AttnError
from attnc.spec.resolve import resolve_text
from tests.strategies import examples


# ---------------------------------------------------------------- the brute force


def axis_window(x: int, length: int, kernel: int, dilation: int, causal: bool, stride: int = 1) -> list[int]:
    """The key coordinates that query coordinate x sees on one axis, listed explicitly."""
    members = list(range(x % dilation, length, dilation))  # x's dilation group, in order
    i = members.index(x)
    run = list(range(i - i % stride, min(i - i % stride + stride, len(members))))  # x's stride group
    lead = min(run[0] + (stride - 1 if causal else stride // 2), len(members) - 1)
    if causal:
        return members[max(0, lead - kernel + 1) : i + 1]
    starts = [s for s in range(len(members) - kernel + 1) if s <= lead < s + kernel]  # runs that hold the leader
    assert starts, "kernel * dilation <= length leaves every group at least kernel members"
    best = min(starts, key=lambda s: abs(s - (lead - kernel // 2)))
    return members[best : best + kernel]


def brute_pairs(dims, kernel, dilation, causal, prefix, stride=None) -> np.ndarray:
    """The dense mask of NATTEN's neighbourhood over a row-major grid after `prefix` tokens."""
    n = prefix + math.prod(dims)
    mask = np.zeros((n, n), dtype=bool)
    mask[:prefix, :] = True
    mask[:, :prefix] = True
    coords = list(itertools.product(*(range(d) for d in dims)))  # row-major: the last axis fastest
    index = {c: prefix + i for i, c in enumerate(coords)}
    for c in coords:
        windows = [
            axis_window(x, L, k, d, ca, st)
            for x, L, k, d, ca, st in zip(c, dims, kernel, dilation, causal, stride or (1,) * len(dims))
        ]
        for key in itertools.product(*windows):
            mask[index[c], index[key]] = True
    return mask


def table_mask(name: str, args: dict, n: int) -> np.ndarray:
    """DESIGN.md's table for the 1-D primitives composed with neighbourhoods here."""
    q = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    d = q - k
    return {
        "causal": lambda: k <= q + 0 * k,
        "global": lambda: (q < args["size"]) | (k < args["size"]),
        "window": lambda: (0 <= d) & (d < args["size"]),
        "sink": lambda: (k < args["size"]) | (q < 0),
    }[name]()


# ---------------------------------------------------------------- random grids as text


@st.composite
def grids(draw, max_dim: int = 12, max_tokens: int = 400, strided: bool = True):
    """A random grid neighbourhood: (dims, kernel, dilation, causal, prefix, stride), NATTEN-valid."""
    axes = draw(st.integers(1, 3))
    dims = []
    for _ in range(axes):
        budget = max(1, min(max_dim, max_tokens // max(1, math.prod(dims))))
        dims.append(draw(st.integers(1, budget)))
    dilation = [draw(st.integers(1, L)) for L in dims]
    kernel = [draw(st.integers(1, L // d)) for L, d in zip(dims, dilation)]
    causal = [draw(st.booleans()) for _ in dims]
    prefix = draw(st.integers(0, 3))
    stride = [draw(st.integers(1, k)) if strided else 1 for k in kernel]
    return tuple(dims), tuple(kernel), tuple(dilation), tuple(causal), prefix, tuple(stride)


def _tuple(values, style: int) -> str:
    """An argument as one value (when all are equal and style says so) or a tuple."""
    words = [str(v).lower() for v in values]
    if style == 1 and len(set(words)) == 1:
        return words[0]
    return "(" + ", ".join(words) + ("," if len(words) == 1 else "") + ")"


def source(g, expr: str = "NB", style: int = 0, keywords: bool = True) -> str:
    dims, kernel, dilation, causal, prefix, stride = g
    args = [_tuple(kernel, style), _tuple(dilation, style), _tuple(causal, style), _tuple(stride, style)]
    if keywords:
        call = f"neighborhood(kernel = {args[0]}, dilation = {args[1]}, causal = {args[2]}"
        call += f", stride = {args[3]})" if any(v != 1 for v in stride) or style else ")"
    else:
        call = f"neighborhood({', '.join(args)})"
    head = f"grid({', '.join(map(str, dims))})" + (f" prefix = {prefix}" if prefix or style else "")
    return f"{head}\npattern p = {expr.replace('NB', call)}\n"


def lowered_mask(text: str, n: int) -> np.ndarray:
    (group,) = lower(resolve_text(text, "t.attn")).groups
    return group.pattern.mask(n)


@examples(100)
@given(grids(), st.integers(0, 1), st.booleans())
def test_neighbourhood_text_means_natten(g, style, keywords):
    dims, kernel, dilation, causal, prefix, stride = g
    n = prefix + math.prod(dims)
    assert (lowered_mask(source(g, style=style, keywords=keywords), n) == brute_pairs(*g)).all()


@examples(50)
@given(grids())
def test_every_query_sees_exactly_the_kernel_on_non_causal_axes(g):
    """The point of shifting inward (NATTEN, FreeSwim): no query sees fewer keys at a border."""
    dims, kernel, dilation, causal, prefix, stride = g
    g = (dims, kernel, dilation, (False,) * len(dims), prefix, stride)
    n = prefix + math.prod(dims)
    m = lowered_mask(source(g), n)[prefix:, prefix:]
    assert (m.sum(axis=1) == math.prod(kernel)).all()
    assert m.diagonal().all()  # a stride group's shared window holds every member (stride <= kernel)


@examples(75)
@given(
    grids(max_tokens=200),
    st.sampled_from(["global", "causal", "window", "sink"]),
    st.integers(1, 9),
    st.sampled_from(["|", "&", "-"]),
)
def test_neighbourhood_composes_with_one_dimensional_primitives(g, name, size, op):
    dims, kernel, dilation, causal, prefix, stride = g
    n = prefix + math.prod(dims)
    other = {"causal": "causal", "global": f"global({size})", "window": f"window({size})", "sink": f"sink({size})"}[
        name
    ]
    nb = brute_pairs(*g)
    rhs = table_mask(name, {"size": size}, n)
    want = {"|": nb | rhs, "&": nb & rhs, "-": nb & ~rhs}[op]
    assert (lowered_mask(source(g, f"NB {op} {other}"), n) == want).all()


def on_grid(dims, prefix):
    """A random neighbourhood over the given grid."""
    dilation = st.tuples(*(st.integers(1, L) for L in dims))
    kernels = dilation.flatmap(
        lambda d: st.tuples(st.just(d), st.tuples(*(st.integers(1, L // x) for L, x in zip(dims, d))))
    )
    return kernels.flatmap(
        lambda dk: st.tuples(
            st.just(tuple(dims)),
            st.just(dk[1]),
            st.just(dk[0]),
            st.tuples(*(st.booleans() for _ in dims)),
            st.just(prefix),
            st.tuples(*(st.integers(1, k) for k in dk[1])),
        )
    )


@examples(40)
@given(grids(max_tokens=150), st.data(), st.sampled_from(["|", "&", "-"]))
def test_unions_and_intersections_of_neighbourhoods(g, data, op):
    """Two neighbourhoods over one grid (Radial Attention is a union of such)."""
    dims, prefix = g[0], g[4]
    h = data.draw(on_grid(dims, prefix))
    n = prefix + math.prod(dims)
    second = source(h).split("pattern p = ")[1].strip()
    a, b = brute_pairs(*g), brute_pairs(*h)
    want = {"|": a | b, "&": a & b, "-": a & ~b}[op]
    assert (lowered_mask(source(g, f"NB {op} {second}"), n) == want).all()


# ---------------------------------------------------------------- the brute force itself


def test_brute_force_on_hand_examples():
    # length 7, kernel 3: the border queries shift inward, the middle ones centre
    assert [axis_window(x, 7, 3, 1, False) for x in range(7)] == [
        [0, 1, 2],
        [0, 1, 2],
        [1, 2, 3],
        [2, 3, 4],
        [3, 4, 5],
        [4, 5, 6],
        [4, 5, 6],
    ]
    # even kernel 4: K // 2 = 2 before the query, 1 after it (NATTEN's left/right extents)
    assert [axis_window(x, 6, 4, 1, False) for x in range(6)] == [
        [0, 1, 2, 3],
        [0, 1, 2, 3],
        [0, 1, 2, 3],
        [1, 2, 3, 4],
        [2, 3, 4, 5],
        [2, 3, 4, 5],
    ]
    # dilation 2 on length 7: groups {0, 2, 4, 6} and {1, 3, 5}
    assert axis_window(0, 7, 3, 2, False) == [0, 2, 4]
    assert axis_window(6, 7, 3, 2, False) == [2, 4, 6]
    assert axis_window(5, 7, 3, 2, False) == [1, 3, 5]
    # causal: the kernel positions ending at the query, fewer at the start
    assert axis_window(0, 7, 3, 1, True) == [0]
    assert axis_window(5, 7, 3, 1, True) == [3, 4, 5]
    assert axis_window(5, 7, 3, 2, True) == [1, 3, 5]
    # stride 4, kernel 5 on length 8: runs {0..3} and {4..7} take their centres' (2, 6) windows
    assert [axis_window(x, 8, 5, 1, False, 4) for x in range(8)] == [[0, 1, 2, 3, 4]] * 4 + [[3, 4, 5, 6, 7]] * 4
    # a last partial run ({6} of length 7, stride 3) is led by the axis' last member
    assert [axis_window(x, 7, 3, 1, False, 3) for x in range(7)] == [[0, 1, 2]] * 3 + [[3, 4, 5]] * 3 + [[4, 5, 6]]
    # an even stride leads with the right one of the two centres
    assert [axis_window(x, 8, 4, 1, False, 2)[0] for x in range(8)] == [0, 0, 1, 1, 3, 3, 4, 4]
    # causal with a stride: the leader is the run's last member; the window still ends at the query
    assert [axis_window(x, 8, 3, 1, True, 2) for x in range(4)] == [[0], [0, 1], [1, 2], [1, 2, 3]]
    assert axis_window(4, 5, 3, 1, True, 2) == [2, 3, 4]
    # stride runs are counted within the dilation group: group {0, 2, 4, 6, 8}, runs {0, 2}, {4, 6}, {8}
    assert axis_window(4, 9, 2, 2, False, 2) == [4, 6]
    assert axis_window(8, 9, 2, 2, False, 2) == [6, 8]
    # a 2 x 3 grid after one text token
    m = brute_pairs((2, 3), (1, 2), (1, 1), (False, False), 1)
    assert m[0].all() and m[:, 0].all()
    assert np.flatnonzero(m[1 + 2]).tolist() == [0, 2, 3]  # (0, 2) sees (0, 1), (0, 2)


def test_full_kernel_is_full_attention_and_causal_kernel_one_is_the_diagonal():
    dense = lowered_mask("grid(3, 4)\npattern p = neighborhood(kernel = (3, 4))", 12)
    assert dense.all()
    diag = lowered_mask("grid(3, 4)\npattern p = neighborhood(kernel = 1, causal = true)", 12)
    assert (diag == np.eye(12, dtype=bool)).all()


def test_a_causal_frame_axis_is_causal_in_the_flattened_order():
    """Causal on the first axis and full on the others: block-causal over whole frames."""
    m = lowered_mask("grid(4, 2, 3)\npattern p = neighborhood(kernel = (4, 2, 3), causal = (true, false, false))", 24)
    frame = np.arange(24) // 6
    assert (m == (frame[None, :] <= frame[:, None])).all()


# ---------------------------------------------------------------- errors


BAD = [
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = (3, 3), dilation = (1, 3))",
        "2:26",
        "neighborhood: kernel 3 x dilation 3 = 9 is larger than grid axis 1 of length 8",
    ),
    (
        "grid(6)\npattern p = neighborhood(kernel = 7)",
        "2:26",
        "neighborhood: kernel 7 is larger than grid axis 0 of length 6",
    ),
    (
        "grid(4, 6, 6)\npattern p = neighborhood(kernel = (5, 3, 3), causal = (true, false, false))",
        "2:26",
        "neighborhood: kernel 5 is larger than grid axis 0 of length 4",
    ),
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = (3, 3, 3))",
        "2:35",
        "neighborhood: kernel has 3 values but the grid has 2 axes",
    ),
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = (3,))",
        "2:35",
        "neighborhood: kernel has 1 value but the grid has 2 axes",
    ),
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = 3, dilation = (1, 2, 2))",
        "2:49",
        "neighborhood: dilation has 3 values but the grid has 2 axes",
    ),
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = 3, causal = (true, false, false))",
        "2:47",
        "neighborhood: causal has 3 values but the grid has 2 axes",
    ),
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = (0, 3))",
        "2:26",
        "neighborhood: kernel must be at least 1 on every axis, got kernel=(0, 3)",
    ),
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = 3, dilation = 0)",
        "2:38",
        "neighborhood: dilation must be at least 1 on every axis, got dilation=(0, 0)",
    ),
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = (3, 5), stride = (2, 6))",
        "2:43",
        "neighborhood: stride 6 is larger than kernel 5 on axis 1 (NATTEN's rule: use a stride of at most 5)",
    ),
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = 3, stride = 0)",
        "2:38",
        "neighborhood: stride must be at least 1 on every axis, got stride=(0, 0)",
    ),
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = 3, stride = (1, 2, 2))",
        "2:47",
        "neighborhood: stride has 3 values but the grid has 2 axes",
    ),
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = 3, causal = 2)",
        "2:47",
        "neighborhood: causal must be true or false, got an integer",
    ),
    ("pattern p = causal | neighborhood(kernel = 3)", "1:22", "neighborhood needs a token grid"),
    ("grid(2, 2, 2, 2)\npattern p = neighborhood(kernel = 1)", "1:1", "a grid has 1 to 3 dimensions, got 4"),
    ("grid(8, 0)\npattern p = causal", "1:9", "a grid dimension must be at least 1, got 0"),
    ("grid(8) prefix = -1\npattern p = causal", "1:18", "the prefix must be at least 0, got -1"),
    ("grid(8)\ngrid(4)\npattern p = causal", "2:1", "only one grid per file"),
]


@pytest.mark.parametrize("text, where, message", BAD)
def test_grid_errors_are_located(text, where, message):
    with pytest.raises(AttnError) as info:
        resolve_text(text, "t.attn")
    d = info.value.diagnostics[0]
    assert (f"{d.loc.line}:{d.loc.col}", d.message) == (where, message)
    assert d.loc.file == "t.attn"
    assert d.render().startswith(f"t.attn:{where}: error: {message}")
