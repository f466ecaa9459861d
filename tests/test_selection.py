"""Selection by score at run time (`select`): the language, the atom's protocol, the torch
reference of every rule against brute force, and the generated kernels against the reference
under TRITON_INTERPRET=1 (GQA, lengths that are no multiple of a tile, ties, random
compositions of selection and static parts through hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnc.codegen.support import block_scores, selection
from attnc.compiler.atoms import DataDependent, Select
from attnc.compiler.ir import HeadGroup, ModelShape, Program, split_selection
from attnc.compiler.lower import lower, lower_expr
from attnc.compiler.status import Status
from attnc.spec.errors import AttnError
from attnc.spec.resolve import resolve_text
from tests.strategies import causal_expressions, examples, op, prim
from tests.test_codegen_support import assert_close, dense_reference, have_ptxas, load

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SCORES = ("mean", "quest", "antidiagonal", "vslash")


def program(text: str, name: str = "sel"):
    return lower(resolve_text(text, f"{name}.attn"))


def text_of(expr: str, heads: int = 4, kv_heads: int = 2, name: str = "sel") -> str:
    return f"model {{ layers = 1, heads = {heads}, kv_heads = {kv_heads} }}\npattern {name} = {expr}\n"


# ---------------------------------------------------------------- language


@pytest.mark.parametrize(
    "expr, message, at",
    [
        ("causal - select(mean, top = 2)", "cannot be subtracted", "select"),
        ("causal & (select(mean, top = 2) | select(quest, top = 2))", "only one selection", "select(quest"),
        ("causal & select(maen, top = 2)", "did you mean 'mean'", "maen"),
        ("causal & select(mean, top = 2, block = 48)", "power of two", "block"),
        ("causal & select(mean, mass = 0)", "1 to 100", "mass"),
        ("causal & select(antidiagonal, top = 2, block = 32, stride = 4)", "at least 16 rows", "stride"),
        ("causal & select(2, top = 3)", "must be a name", "2"),
        ("causal & select(mean)", "needs mass or top", "select"),
    ],
)
def test_errors_point_at_the_selection(expr, message, at):
    """file:line:col at the offending part, the line, a caret, the usage as a hint."""
    with pytest.raises(AttnError) as err:
        resolve_text(f"pattern p = {expr}\n", "p.attn")
    text = str(err.value)
    assert message in text
    assert f"p.attn:1:{len('pattern p = ') + expr.index(at) + 1}:" in text
    assert "^" in text and "hint:" in text


def test_same_selection_twice_is_one():
    p = program("pattern p = causal & (select(mean, top = 2) | window(4) | select(mean, top = 2))\n")
    assert p.groups[0].selection is not None


def test_lowering_splits_static_and_selection():
    g = program(text_of("causal & (sink(4) | window(20) | select(mean, top = 2, block = 16))")).groups[0]
    assert str(g.pattern) == "(0 <= q-k <= 19) | (0 <= q-k and k <= 3)"
    assert g.selection.atom == Select("mean", 2, 0, 16)
    assert str(g.selection.context) == "(0 <= q-k)"
    static, none = split_selection(g.pattern)
    assert none is None and static == g.pattern


# ---------------------------------------------------------------- the atom: data dependent, never silent


def test_select_atom_protocol():
    a = Select("quest", 0, 90, 32)
    q, k = np.arange(8)[:, None], np.arange(8)[None, :]
    for call in (lambda: a.holds(q, k), lambda: a.render_parts("q", "k"), a.complement):
        with pytest.raises(DataDependent, match="run time"):
            call()
    tiles = a.tile(np.array([0, 32]), np.array([31, 63]), np.array([0, 0]), np.array([31, 31]))
    assert (tiles == Status.SOME).all()
    hull, full = a.key_bounds()
    assert hull.lo == hull.hi == () and full is None
    assert a.query_bounds()[1] is None
    from attnc.compiler.atoms import Conj

    assert Conj.of([a]).selects == (a,)
    assert a.depends == "data" and a.budget_keys is None and Select("mean", 4, 0, 16).budget_keys == 64


# ---------------------------------------------------------------- the torch reference against brute force


def brute_choose(scores: np.ndarray, cand: np.ndarray, top: int, mass: int) -> list[list[int]]:
    """Per row: the chosen blocks by plain Python sorting (ties to the lowest index)."""
    out = []
    for row, ok in zip(scores, cand):
        items = sorted((-s, j) for j, (s, c) in enumerate(zip(row, ok)) if c and np.isfinite(s))
        if top:
            keep = [j for _, j in items[:top]]
        else:
            vals = np.array([-s for s, _ in items], dtype=np.float64)
            p = np.exp(vals - vals.max()) / np.exp(vals - vals.max()).sum() if len(vals) else vals
            keep, acc = [], 0.0
            for (_, j), pj in zip(items, p):
                if acc >= mass / 100 - 1e-9:
                    break
                keep.append(j)
                acc += pj
        out.append(sorted(keep))
    return out


@pytest.mark.parametrize("top, mass", [(3, 0), (0, 70), (0, 100)])
def test_choose_matches_brute_force_with_ties(top, mass):
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(-3, 3, (6, 9), generator=gen).float()  # many ties
    cand = torch.rand(6, 9, generator=gen) > 0.3
    idx, cnt = selection.choose(scores, cand, top, mass)
    want = brute_choose(scores.numpy(), cand.numpy(), top, mass)
    for row, c, w in zip(idx.tolist(), cnt.tolist(), want):
        assert row[:c] == w and all(x == -1 for x in row[c:])


def test_scores_against_brute_force():
    gen = torch.Generator().manual_seed(2)
    n, d, blk, g = 40, 4, 16, 2
    q, k = torch.randn(g, n, d, generator=gen), torch.randn(n, d, generator=gen)
    nb = -(-n // blk)
    pooled = torch.stack([q[:, i * blk : (i + 1) * blk].mean((0, 1)) for i in range(nb)])
    means = torch.stack([k[j * blk : (j + 1) * blk].mean(0) for j in range(nb)])
    torch.testing.assert_close(selection.pooled_queries(q[None], 1, blk)[0, 0], pooled)
    torch.testing.assert_close(block_scores.mean_score(pooled, block_scores.block_mean(k, blk)), pooled @ means.T)
    # antidiagonal: entry (a, b) is the mean of q[a*s + s-1-t] . k[b*s + t]; a block's score their logsumexp
    s = 4
    want = torch.full((nb, nb), float("-inf"))
    for i in range(nb):
        for j in range(nb):
            vals = [
                sum(q[h, a * s + s - 1 - t] @ k[b * s + t] for t in range(s)) / s * 0.5
                for h in range(g)
                for a in range(i * blk // s, min((i + 1) * blk, n) // s)
                for b in range(j * blk // s, min((j + 1) * blk, n) // s)
            ]
            if vals:
                want[i, j] = torch.logsumexp(torch.stack(vals), 0)
    torch.testing.assert_close(block_scores.antidiagonal_score(q, k, blk, s, 0.5), want, rtol=1e-4, atol=1e-4)
    # vslash: vertical mass of key block j plus slash mass of distances [(i-j)*blk, (i-j+1)*blk)
    last = 5
    p = torch.zeros(n)
    slash = torch.zeros(n)
    for h in range(g):
        for r in range(n - last, n):
            w = torch.softmax((q[h, r] @ k[: r + 1].T) * 0.5, 0)
            p[: r + 1] += w
            for key in range(r + 1):
                slash[r - key] += w[key]
    want = torch.empty(nb, nb)
    for i in range(nb):
        for j in range(nb):
            lines = slash[(i - j) * blk : (i - j + 1) * blk].sum() if i >= j else 0.0
            want[i, j] = torch.log(p[j * blk : (j + 1) * blk].sum() + lines)
    got = block_scores.vslash_score(q[:, n - last :], k, blk, nb, 0.5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- kernels against the reference


def exact_inputs(b, h, h_kv, n, d, seed):
    """Small integers: every score of `mean` and `quest` is exact in float32, so the kernel and the
    reference must rank identically, ties included."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-2, 3, (b, h, n, d), generator=gen).float()
    k = torch.randint(-2, 3, (b, h_kv, n, d), generator=gen).float()
    v = torch.randn(b, h_kv, n, d, generator=gen)
    return q, k, v


def budget(score: str, top: int, mass: int) -> str:
    opts = (
        ", block = 32, stride = 2"
        if score == "antidiagonal"
        else ", block = 16, last = 8"
        if score == "vslash"
        else ", block = 16"
    )
    return f"select({score}, {'top = ' + str(top) if top else 'mass = ' + str(mass)}{opts})"


def check_selection(mod, q, k, v, layer=None):
    """select() equals select_reference(); prefill with those indices equals reference()."""
    idx, cnt = mod.select(q, k, layer=layer)
    ridx, rcnt = mod.select_reference(q, k, layer=layer)
    assert torch.equal(cnt, rcnt) and torch.equal(idx, ridx)
    out, lse = mod.prefill(q, k, v, indices=(idx, cnt), return_lse=True, layer=layer)
    ref, rlse = mod.reference(q, k, v, indices=(idx, cnt), return_lse=True, layer=layer)
    assert_close(out, ref, torch.float32)
    return idx, cnt


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("top, mass", [(2, 0), (0, 80)])
def test_kernels_match_reference(score, top, mass):
    """GQA (4 query heads over 2 KV heads), N = 77 (no multiple of the 16-row tiles)."""
    expr = f"causal & (sink(4) | window(12) | {budget(score, top, mass)})"
    mod = load(program(text_of(expr), f"sel_{score}_{top}_{mass}"))
    exact = score in ("mean", "quest")
    q, k, v = exact_inputs(1, 4, 2, 77, 16, 3) if exact else (t for t in _randn(1, 4, 2, 77, 16, 3))
    idx, cnt = check_selection(mod, q, k, v)
    assert (cnt > 0).any()


def _randn(b, h, h_kv, n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, hh, n, d, generator=gen) for hh in (h, h_kv, h_kv))


def test_ties_go_to_the_lowest_block():
    """Identical key blocks tie on every score: the lowest candidates win, in kernel and reference."""
    mod = load(program(text_of("causal & select(mean, top = 2, block = 16)", 2, 1), "sel_ties"))
    gen = torch.Generator().manual_seed(4)
    block = torch.randint(-2, 3, (1, 1, 16, 16), generator=gen).float()
    k = block.repeat(1, 1, 5, 1)[:, :, :70]
    q = torch.randint(-2, 3, (1, 2, 70, 16), generator=gen).float()
    v = torch.randn(1, 1, 70, 16, generator=gen)
    idx, cnt = check_selection(mod, q, k, v)
    # the last block is partial (70 = 4 * 16 + 6): its mean differs; the four whole blocks tie
    whole = [row[:c] for row, c in zip(idx[0, 0].tolist(), cnt[0, 0].tolist())]
    assert whole[0] == [0] and whole[1] == [0, 1] and whole[3] == [0, 1]


@pytest.mark.parametrize(
    "top, mass, n", [(1, 0, 16 * 5), (3, 0, 16 * 33 - 5), (5, 0, 16 * 17), (40, 0, 16 * 9 + 1), (0, 60, 16 * 17 - 5)]
)
def test_choose_kernel_against_choose(top, mass, n):
    """The choose kernel alone, fed estimates full of ties and -inf (as antidiagonal's), against
    choose(): rows of key blocks no power of two (a padded row), budgets no power of two (tl.topk
    keeps a power of two above top) or above the number of candidates, a mass budget."""
    sel = f"select(mean, {'top = ' + str(top) if top else 'mass = ' + str(mass)}, block = 16)"
    mod = load(program(text_of(f"causal & (window(20) | {sel})", 2, 1), f"sel_choose_{top}_{mass}"))
    nb = -(-n // 16)
    gen = torch.Generator().manual_seed(top + mass + n)
    mat = torch.randint(-3, 3, (2, 1, nb, nb), generator=gen).float()
    mat[torch.rand(mat.shape, generator=gen) < 0.1] = float("-inf")
    spec = selection.SelectSpec(*mod._SELECT[0])
    idx, cnt = mod._choose(0, spec, mat, n, mod._select_width(n))
    ridx, rcnt = selection.choose(mat, mod._candidates(0, n), spec.top, spec.mass)
    assert torch.equal(cnt, rcnt) and torch.equal(idx, ridx)
    assert (cnt >= min(top, 3)).any() and (cnt < rcnt.new_tensor(top or nb)).any()


def test_prefill_against_the_independent_reference():
    """The pairs of static | (context & chosen blocks), from the IR (Pattern.mask, Selection.holds),
    in float64: prefill with random index lists, an index the static part covers included."""
    prog = program(
        text_of("(causal & (sink(2) | window(9))) | (causal - window(3)) & select(quest, top = 3, block = 16)")
    )
    mod = load(prog)
    q, k, v = _randn(2, 4, 2, 61, 16, 5)
    nb = 4
    gen = torch.Generator().manual_seed(6)
    idx = torch.full((2, 2, nb, 3), -1, dtype=torch.int32)
    cnt = torch.randint(0, 4, (2, 2, nb), generator=gen).to(torch.int32)
    for b in range(2):
        for h in range(2):
            for i in range(nb):
                c = int(cnt[b, h, i])
                idx[b, h, i, :c] = torch.randperm(nb, generator=gen)[:c].sort().values.to(torch.int32)
    idx[0, 0, 3], cnt[0, 0, 3] = torch.tensor([0, 1, 2], dtype=torch.int32), 3
    out = mod.prefill(q, k, v, indices=(idx, cnt))
    g = prog.groups[0]
    pos = np.arange(61)
    # the lists hold clean runs (visited without the mask) with masked blocks on both sides
    from attnc.codegen.plan_text import SelectText
    from attnc.compiler.plan import plan_program

    clean_py = SelectText(plan_program(prog)[0].select).clean_py
    jk0 = idx[0, 0, 3].long() * 16
    env = dict(q0=48, q_last=60, N=61, zero=0, jk0=jk0, jk_last=jk0 + 15, max=max, min=min)
    assert eval(clean_py, env).tolist() == [False, True, False]
    for b in range(2):
        masks = []
        for h in range(4):
            chosen = np.zeros((nb, nb), dtype=bool)
            for i in range(nb):
                chosen[i, idx[b, h // 2, i, : cnt[b, h // 2, i]].numpy()] = True
            m = g.pattern.holds(pos[:, None], pos[None, :]) | g.selection.holds(pos[:, None], pos[None, :], chosen)
            masks.append(torch.from_numpy(np.asarray(m)))
        ref, _ = dense_reference(q[b : b + 1], k[b : b + 1], v[b : b + 1], torch.stack(masks))
        assert_close(out[b : b + 1], ref.float(), torch.float32)


def test_per_head_sections_and_indices_checks():
    text = (
        "model { layers = 1, heads = 4, kv_heads = 2 }\npattern sel_heads {\n"
        "  kv_heads 0: causal & (window(8) | select(mean, top = 1, block = 16))\n"
        "  rest: causal & (sink(2) | select(quest, mass = 60, block = 16))\n}\n"
    )
    mod = load(program(text, "sel_heads"))
    q, k, v = exact_inputs(1, 4, 2, 50, 16, 7)
    idx, cnt = check_selection(mod, q, k, v)
    assert idx.shape == (1, 2, 4, 4)  # width: every key block for a mass budget
    with pytest.raises(ValueError, match="counted index"):
        mod.prefill(q, k, v, indices=(torch.full_like(idx, 9), cnt.clamp(min=1)))
    with pytest.raises(TypeError, match="pair"):
        mod.prefill(q, k, v, indices=idx)


def test_heads_of_one_kv_head_must_share_the_selection():
    text = (
        "model { layers = 1, heads = 4, kv_heads = 2 }\npattern p {\n"
        "  heads 0: causal & select(mean, top = 1, block = 16)\n  rest: causal\n}\n"
    )
    with pytest.raises(ValueError, match="KV head 0"):
        load(program(text, "sel_split"))


# ---------------------------------------------------------------- random compositions


SELECTS = st.builds(
    lambda score, top, mass: prim(
        "select", score=score, block=16, stride=1, last=8, **({"top": top} if top else {"mass": mass})
    ),
    st.sampled_from(SCORES),
    st.integers(0, 3),
    st.integers(30, 100),
)


@examples(3)
@given(causal_expressions(4), SELECTS, st.sampled_from(["|", "&"]), st.integers(20, 70))
def test_random_compositions(static, sel, how, n):
    """A random static part with a selection by union or intersection; kernels match the reference."""
    expr = (
        op("&", prim("causal"), op(how, static, sel)) if how == "&" else op("|", static, op("&", prim("causal"), sel))
    )
    static_part, selection_part = split_selection(lower_expr(expr))
    prog = Program(
        name="sel_random",
        source="sel_random.attn",
        model=ModelShape(heads=2, kv_heads=1),
        groups=(HeadGroup(static_part, frozenset({(0, 0), (0, 1)}), selection_part),),
    )
    mod = load(prog)
    exact = sel.args["score"] in ("mean", "quest")
    q, k, v = exact_inputs(1, 2, 1, n, 16, n) if exact else _randn(1, 2, 1, n, 16, n)
    if selection_part is None:  # the static part contains everything the selection could add
        assert_close(mod.prefill(q, k, v), mod.reference(q, k, v), torch.float32)
        return
    check_selection(mod, q, k, v)


# ---------------------------------------------------------------- analyses


def composed_plan(static, sel, how: str):
    """(static part, SelectPlan) of `causal & (static how sel)` or `static | (causal & sel)`, one
    head; (static part, None) where the static part contains every pair the selection adds."""
    from attnc.compiler.plan import plan_program

    expr = (
        op("&", prim("causal"), op(how, static, sel)) if how == "&" else op("|", static, op("&", prim("causal"), sel))
    )
    static_part, selection_part = split_selection(lower_expr(expr))
    if selection_part is None:
        return static_part, None
    group = HeadGroup(static_part, frozenset({(0, 0)}), selection_part)
    prog = Program(name="sel_plan", source="sel_plan.attn", model=ModelShape(heads=1, kv_heads=1), groups=(group,))
    return static_part, plan_program(prog)[0].select


@examples(30)
@given(causal_expressions(4), SELECTS, st.sampled_from(["|", "&"]), st.integers(1, 300))
def test_candidate_counts_against_the_block_matrix(static, sel, how, n):
    """The simulator's candidate count per query block (a sweep over runs of key blocks) is the
    count of the query x key block matrix (candidate_matrix, which the Hugging Face reference
    backend selects from), for random static parts and lengths."""
    from attnc.compiler.selection import candidate_counts, candidate_matrix

    static_part, plan = composed_plan(static, sel, how)
    if plan is None:
        return
    assert candidate_counts(plan, n).tolist() == candidate_matrix(plan, n).sum(1).tolist()


@examples(30)
@given(causal_expressions(4), SELECTS, st.sampled_from(["|", "&"]), st.integers(1, 200))
def test_clean_blocks_need_no_mask(static, sel, how, n):
    """A chosen block the attention kernel visits without the mask (SelectText.clean, for a
    tile of rows q0 .. q_last) adds only allowed pairs: context and not static, keys before n,
    for every row (brute force); and the rule finds the plainly clean blocks of causal
    selections at all (it is not empty by construction)."""
    from attnc.codegen.plan_text import SelectText

    static_part, plan = composed_plan(static, sel, how)
    if plan is None:
        return
    adds = plan.context.mask(n) & ~static_part.mask(n)
    b = plan.atom.block
    jk0 = np.arange(-(-n // b)) * b
    for rows in (b, max(b // 2, 1)):
        for q0 in range(0, n, rows):
            q_last = min(q0 + rows, n) - 1
            env = dict(q0=q0, q_last=q_last, N=n, zero=0, jk0=jk0, jk_last=jk0 + b - 1, max=max, min=min)
            clean = np.broadcast_to(eval(SelectText(plan).clean_py, env), jk0.shape)
            for j in np.flatnonzero(clean):
                assert jk0[j] + b <= n and adds[q0 : q_last + 1, jk0[j] : jk0[j] + b].all(), (q0, q_last, j)


def test_clean_run_of_a_moba_like_selection():
    """causal & (sink(4) | window(64) | top 2 of 16): blocks wholly below the window and past
    the sink's block are clean; the sink's block and the window's edge are not."""
    from attnc.codegen.plan_text import SelectText
    from attnc.compiler.plan import plan_program

    prog = program(text_of("causal & (sink(4) | window(64) | select(mean, top = 2, block = 16))", 1, 1))
    text = SelectText(plan_program(prog)[0].select).clean_py
    jk0 = np.arange(16) * 16
    env = dict(q0=192, q_last=207, N=256, zero=0, jk0=jk0, jk_last=jk0 + 15, max=max, min=min)
    assert np.flatnonzero(eval(text, env)).tolist() == list(range(1, 8))  # block 8 meets the window


def test_bounds_hold_for_any_choice_within_budget():
    """Static pairs exact; any choice of at most `top` candidate blocks per query block stays
    within the worst case (brute force over random choices, and the greediest one)."""
    from attnc.compiler.selection import selection_bounds

    prog = program(text_of("causal & (sink(3) | window(10) | select(mean, top = 2, block = 16))"))
    g, n = prog.groups[0], 75
    b = selection_bounds(g, n)
    pos = np.arange(n)
    assert b.static_pairs == b.best_pairs == int(g.pattern.mask(n).sum())
    assert b.reach_pairs == int(g.reach.mask(n).sum()) and b.extra_per_row == 32
    nb = 5
    rng = np.random.default_rng(0)
    for trial in range(20):
        chosen = np.zeros((nb, nb), dtype=bool)
        for i in range(nb):
            picks = np.arange(i + 1) if trial == 0 else rng.choice(i + 1, size=min(2, i + 1), replace=False)
            chosen[i, picks[-2:]] = True
        m = g.pattern.holds(pos[:, None], pos[None, :]) | g.selection.holds(pos[:, None], pos[None, :], chosen)
        assert b.static_pairs <= int(m.sum()) <= b.worst_pairs


def test_reach_is_what_liveness_and_receptive_fields_assume():
    from attnc.compiler.liveness import cache_layout
    from attnc.compiler.receptive import layer_patterns
    from attnc.compiler.report import analyze

    prog = program(text_of("causal & (window(8) | select(quest, top = 1, block = 16))"))
    assert layer_patterns(prog)[0].mask(40).sum() == prog.groups[0].reach.mask(40).sum()
    assert cache_layout(prog.groups[0].reach).exact  # the whole reach: every past key
    a = analyze(prog, 256, with_receptive=False)
    assert a.groups[0].kv.tokens == 256 and a.groups[0].selection.worst_pairs > a.groups[0].cost.pairs.value
    assert "unknowable" in a.groups[0].to_dict()["selection"]


@pytest.mark.parametrize(
    "expr",
    [
        "causal & (sink(4) | window(20) | select(mean, top = 2, block = 16))",
        "causal & (chunk(32) | select(mean, top = 1, block = 32))",
        "(causal - window(5)) & select(vslash, mass = 50, block = 16)",
    ],
)
def test_simulated_candidates_are_the_kernels(expr):
    """The simulator counts candidates with the numpy rule; the module with its rendered one."""
    from attnc.compiler.plan import plan_program
    from attnc.compiler.selection import candidate_counts

    prog = program(text_of(expr), "sel_cands")
    mod = load(prog)
    for n in (1, 40, 77, 128):
        want = mod._candidates(0, n).sum(1).numpy()
        assert candidate_counts(plan_program(prog)[0].select, n).tolist() == want.tolist()


def test_simulator_adds_the_chosen_tiles_and_the_selection():
    from attnc.compiler.simulate import Shape, predict_prefill, prefill_workload

    static = program("pattern p = causal & (sink(4) | window(1024))\n")
    sel = program("pattern p = causal & (sink(4) | window(1024) | select(mean, top = 16, block = 128))\n")
    shape = Shape(32768, 1, 8, 2, 128)
    a, b = predict_prefill(static, shape), predict_prefill(sel, shape)
    assert b.attnc.tiles_masked > a.attnc.tiles_masked and b.attnc.ms > a.attnc.ms
    assert prefill_workload(sel, shape).selection_s > 0 == prefill_workload(static, shape).selection_s


@pytest.mark.skipif(not have_ptxas(), reason="no ptxas in the triton install")
def test_selection_kernels_compile_for_sm90(tmp_path):
    """The interpreter accepts code the GPU compiler rejects: compile the MoBA-like module's
    selection, antidiagonal and attention kernels for sm_90 (tests/selection_sm90.py)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from attnc.codegen.writer import write_module

    text = "pattern sel_gpu = causal & (sink(4) | window(1024) | select(mean, top = 16, block = 128))\n"
    path = write_module(program(text, "sel_gpu"), tmp_path)
    script = Path(__file__).with_name("selection_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    run = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    shared = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(shared) == {"choose_top", "choose_mass", "antidiagonal", "attention"}
    assert all(0 < v <= 227 * 1024 for v in shared.values())


def test_selection_alone_and_its_diagnostics():
    """No static part: the kernel visits only the chosen blocks; analyze warns of no empty pattern,
    and a cache smaller than the reach is lossy (the selection may read any past key)."""
    from attnc.compiler.cache_plan import lossless_rules
    from attnc.compiler.passes import validate

    prog = program(text_of("causal & select(quest, top = 2, block = 16)"), "sel_alone")
    mod = load(prog)
    q, k, v = exact_inputs(1, 4, 2, 50, 16, 9)
    check_selection(mod, q, k, v)
    assert not [d for d in validate(prog, 64) if d.code in ("empty-pattern", "empty-rows")]
    cached = program(
        "pattern p = causal & (window(8) | select(mean, top = 1, block = 16))\ncache {\n  keep recent(8)\n}\n"
    )
    assert lossless_rules(cached) == {0: False}


def test_hugging_face_integration_keeps_the_selection():
    """The integration reads the static part per head and the selection per KV head: it never
    drops a selection (tests/test_hf_integration.py runs it against the generated reference)."""
    from attnc.runtime.hf import Layout

    layout = Layout.from_program(program(text_of("causal & (window(8) | select(mean, top = 1, block = 16))")))
    static, sel = layout.selection(0, 0)
    assert str(sel.atom) == "select(mean, top=1, block=16)" and static == layout.table[0][0]
    assert layout.kv_patterns(0, 0) == (layout.groups[0][0].reach,)  # liveness: the whole reach
