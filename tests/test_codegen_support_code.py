"""codegen/support: the plain Python that every generated module inlines, imported and tested
as ordinary modules (policies against brute force), and the inlining itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from attnc.codegen import support, writer
from attnc.codegen.support import policies, prefill
from attnc.codegen.support.policies import Policy

SUPPORT = Path(support.__file__).parent
FILES = sorted(p.stem for p in SUPPORT.glob("*.py") if p.stem != "__init__")


def test_every_file_is_inlined_in_order():
    assert sorted(support.INLINE_ORDER) == FILES


@pytest.mark.parametrize("name", FILES)
def test_support_files_need_torch_and_triton_only(name):
    tree = ast.parse((SUPPORT / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert {a.name.split(".")[0] for a in node.names} <= support.IMPORTS
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            assert node.module.split(".")[0] in {"__future__", "typing", "torch", "triton"}, node.module
        elif isinstance(node, ast.ImportFrom):  # siblings only, inlined earlier
            assert node.level == 1 and support.INLINE_ORDER.index(node.module) < support.INLINE_ORDER.index(name)


@pytest.mark.parametrize("name", FILES)
def test_inlined_text_is_the_file_less_docstring_and_imports(name):
    text = writer.support_source(name)
    assert '"""' + (SUPPORT / f"{name}.py").read_text().split('"""')[1] not in text
    assert "from __future__" not in text and "from ." not in text
    body = [
        l for l in (SUPPORT / f"{name}.py").read_text().splitlines() if l.startswith("def ") or l.startswith("class ")
    ]
    assert all(l in text for l in body)


def _dropped_by_whole_parse(text: str) -> set[int]:
    """The lines support_source drops, from a parse of the whole file (the reference)."""
    drop = set()
    for node in ast.parse(text).body:
        relative = isinstance(node, ast.ImportFrom) and (node.level > 0 or node.module == "__future__")
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node.lineno == 1
        if relative or docstring:
            drop.update(range(node.lineno, node.end_lineno + 1))
    return drop


LATE_IMPORT = '"""Doc."""\nfrom __future__ import annotations\n\ndef f():\n    pass\n\nfrom .x import (\n    y,\n)\n'
DEF_IN_DOCSTRING = '"""Doc:\ndef f(): is not code\n"""\nfrom .x import y\nimport torch\n\n\nclass A:\n    pass\n'


@pytest.mark.parametrize("text", [*((SUPPORT / f"{n}.py").read_text() for n in FILES), LATE_IMPORT, DEF_IN_DOCSTRING])
def test_dropped_lines_from_the_header_are_those_of_the_whole_file(text):
    assert writer._dropped_lines(text) == _dropped_by_whole_parse(text)
    assert _dropped_by_whole_parse(text)  # every case has something to drop


def test_generated_module_defines_each_name_once():
    from test_decode_render import PROGRAMS

    tree = ast.parse(writer.render_module(PROGRAMS[3]))
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


# ------------------------------------------------------------------ keep rules


def pol(**kw):
    base = dict(
        index=0,
        budget=4,
        adaptive_mean=None,
        sink=1,
        recent=2,
        score="tova",
        timing="decode",
        aggregate="mean",
        window=0,
        pool="max",
        kernel=3,
    )
    return Policy(**{**base, **kw})


def test_lowest_evicts_lowest_priority_then_oldest():
    prio = torch.tensor([3.0, 1.0, 1.0, 0.5, 2.0])
    pos = torch.tensor([4, 0, 2, 9, 1])
    assert policies.lowest(prio, pos, 2).tolist() == [False, True, False, True, False]
    assert policies.lowest(prio, pos, 3).tolist() == [False, True, True, True, False]


def test_priority_protects_sinks_and_the_recent_window():
    pos = torch.arange(10)
    p = policies.priority(pol(), torch.zeros(10), pos, end=10)
    assert torch.isinf(p).tolist() == [True] + [False] * 7 + [True, True]
    snap = pol(score="snapkv", window=4)
    assert snap.protected_recent == 4 and snap.protected == 5
    fifo = policies.priority(pol(score=None), torch.arange(10.0), pos, end=10)
    assert fifo[1:8].eq(0).all()  # no score: the oldest unprotected goes first


# ------------------------------------------------------------------ scores against brute force


def brute_attention(q, k, kpos, qpos, mask_fn, scale):
    """(G, T, E) softmax of one batch row, loops and float64."""
    G, T, _ = q.shape
    out = torch.zeros(G, T, k.shape[0], dtype=torch.float64)
    for g in range(G):
        for t in range(T):
            s = torch.tensor(
                [
                    float(q[g, t].double() @ k[e].double()) * scale
                    if mask_fn(int(qpos[t]), int(kpos[e]))
                    else float("-inf")
                    for e in range(k.shape[0])
                ],
                dtype=torch.float64,
            )
            out[g, t] = torch.softmax(s, 0).nan_to_num(0.0)
    return out


@pytest.mark.parametrize("score", ["h2o", "tova", "snapkv", "key_norm"])
@pytest.mark.parametrize("agg", ["mean", "max", "sum"])
def test_scores_match_brute_force(score, agg):
    g = torch.Generator().manual_seed(0)
    G, T, E, D = 2, 5, 9, 4
    q = torch.randn(1, G, T, D, generator=g, dtype=torch.float64)
    k = torch.randn(1, E, D, generator=g, dtype=torch.float64)
    kpos = torch.tensor([[3, 0, 8, 1, 7, 2, 6, 4, 5]])  # candidates out of position order
    qpos = torch.arange(4, 9)

    def mask_fn(qp, kp):
        return kp <= qp and (kp < 1 or qp - kp < 3)

    def allowed(qp, kp):
        return (kp <= qp) & ((kp < 1) | (qp - kp < 3))

    p = pol(score=score, aggregate=agg, window=3, kernel=3)
    stats = policies.attention_stats(q, k, kpos, qpos, allowed, 0.5, p.window)
    old = torch.zeros(1, E, dtype=torch.float64)
    got = policies.rescore(p, old, stats, k, slice(0, E))[0]
    att = brute_attention(q[0], k[0], kpos[0], qpos, mask_fn, 0.5)  # (G, T, E)
    red = {"mean": lambda x: x.mean(0), "max": lambda x: x.amax(0), "sum": lambda x: x.sum(0)}[agg]
    if score == "h2o":
        want = red(att.sum(1))
    elif score == "tova":
        want = red(att[:, -1])
    elif score == "key_norm":
        want = -k[0].norm(dim=-1)
    else:
        order = torch.argsort(kpos[0])
        a = att[:, -3:].mean(1)[:, order]  # position order
        pooled = torch.stack([torch.stack([a[gg, max(0, e - 1) : e + 2].max() for e in range(E)]) for gg in range(G)])
        want = torch.empty(E, dtype=torch.float64)
        want[order] = red(pooled)
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------ prefill host code


def test_head_group_interleaves_heads_whose_keys_fit_in_l2():
    cfg = {"GRID_ORDER": 2}
    assert prefill._head_group(cfg, 1, 8, 1024, 128, 2) == (3, 8)
    assert prefill._head_group(cfg, 1, 8, 1 << 20, 128, 2) == (2, 1)  # too large: plain order
    assert prefill._head_group({"GRID_ORDER": 0}, 1, 8, 1024, 128, 2) == (0, 1)


def test_choose_config_on_the_cpu_applies_caps_and_overrides():
    from attnc.compiler.configs import choose_config

    tune = {"block_cap": 32, "rows_cap": None, "narrow": 0, "grows": False, "grid": False}
    cpu = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 1, "STAGES": 1, "maxnreg": None}
    cap, kind = prefill.device_key("cpu", torch.float32)
    cfg = choose_config(tune, cap, kind, 16, {"num_warps": 2}, [], [], cpu)
    assert (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"], cfg["DOT_PREC"], cfg["USE_TMA"]) == (32, 32, 2, "ieee", 0)


@pytest.mark.parametrize(
    "cap, kind, split_tiles, tiles",
    [
        ((9, 0), "16bit", (64, 32, 4), (128, 64, 8)),
        ((8, 0), "16bit", (128, 64, 4), (128, 64, 4)),
        ((9, 0), "fp32", (32, 16, 4), (32, 16, 4)),
    ],
)
def test_split_groups_take_small_tiles_on_hopper(cap, kind, split_tiles, tiles):
    """A group that runs as split launches (plan tuning `split`) takes 64 x 32 tiles of 4 warps on
    Hopper in 16 bits (measured there); elsewhere, and without a split, the table's row."""
    from attnc.compiler.configs import CONFIGS, CPU_CONFIG, GRID_CONFIGS, choose_config

    tune = {"block_cap": None, "rows_cap": None, "narrow": 0, "grows": True, "grid": False}
    for split, want in ((256, split_tiles), (0, tiles)):
        cfg = choose_config(dict(tune, split=split), cap, kind, 64, None, CONFIGS, GRID_CONFIGS, CPU_CONFIG)
        assert (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"]) == want
    capped = choose_config(dict(tune, split=256, block_cap=16), cap, kind, 64, None, CONFIGS, GRID_CONFIGS, CPU_CONFIG)
    assert capped["BLOCK_N"] == 16  # the plan's caps bound the split tiles too
