"""Every atom through every method of the protocol (compiler/atoms.py), against brute force.

`CASES` must hold at least one instance of every class in ATOM_TYPES: a new atom without
rows here fails `test_every_atom_has_cases`, and one that misses a method cannot be built.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnc.compiler.atoms import ATOM_TYPES, Atom, Conj, PeriodicAtom, Select, crt
from attnc.compiler.ir import Band, Chunk, DiffMod, KMod, KRange, Lit, Neighborhood, Power, QRange, Status, Term

CASES: list[Atom] = [
    Band(0, None),
    Band(0, 7),
    Band(-3, 5),
    Band(None, -2),
    Band(4, 4),
    KRange(None, 3),
    KRange(5, 20),
    KRange(2, None),
    QRange(None, 4),
    QRange(10, 30),
    QRange(7, None),
    DiffMod(1, 0),
    DiffMod(3, 1),
    DiffMod(8, 0),
    DiffMod(20, 5),
    KMod(1, 0),
    KMod(4, 3),
    KMod(17, 2),
    Chunk(1),
    Chunk(5),
    Chunk(16),
    Power(1),
    Power(3),
    Power(8),
    Neighborhood((6, 7), (3, 5), (1, 1), (False, False)),
    Neighborhood((5, 8), (2, 3), (2, 2), (True, False), 3),
    Neighborhood((3, 4, 5), (3, 1, 4), (1, 3, 1), (False, True, False), 1),
]
N = 64
IDS = [repr(a) for a in CASES]


def _grid(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n, dtype=np.int64)[:, None], np.arange(n, dtype=np.int64)[None, :]


def _mask(atom: Atom, n: int = N) -> np.ndarray:
    q, k = _grid(n)
    return np.broadcast_to(np.asarray(atom.holds(q, k), dtype=bool), (n, n))


def test_every_atom_has_cases():
    """Every positional atom is run through brute force here; the data-dependent one (Select,
    whose membership only the inputs decide) through its refusals in tests/test_selection.py."""
    assert {type(a) for a in CASES} | {Select} == set(ATOM_TYPES)
    for kind in ATOM_TYPES:
        assert not kind.__abstractmethods__, f"{kind.__name__} lacks {sorted(kind.__abstractmethods__)}"
        assert kind.depends in ("q", "k", "d", "qk") or kind is Select


def test_every_primitive_has_a_meaning():
    """Each primitive the language accepts lowers to atoms, and nothing else does."""
    from attnc.compiler.lower import PRIMITIVES as MEANINGS
    from attnc.spec.primitives import PRIMITIVES

    assert set(PRIMITIVES) == set(MEANINGS)


def test_a_missing_method_cannot_be_built():
    class Half(Atom):
        depends = "d"

        def holds(self, q, k):
            return q == k

    with pytest.raises(TypeError, match="abstract"):
        Half()


@pytest.mark.parametrize("atom", CASES, ids=IDS)
def test_tile_is_exact(atom):
    mask = _mask(atom)
    rng = np.random.default_rng(0)
    for _ in range(40):
        q0, k0 = rng.integers(0, N, 2)
        q1, k1 = q0 + rng.integers(0, 12), k0 + rng.integers(0, 12)
        q1, k1 = min(q1, N - 1), min(k1, N - 1)
        block = mask[q0 : q1 + 1, k0 : k1 + 1]
        want = Status.ALL if block.all() else Status.SOME if block.any() else Status.NONE
        assert int(atom.tile(np.int64(q0), np.int64(q1), np.int64(k0), np.int64(k1))) == want, (q0, q1, k0, k1)


@pytest.mark.parametrize("atom", CASES, ids=IDS)
def test_tile_is_exact_over_a_grid_of_tiles(atom):
    """As block maps call it: query tiles' ends a column, key tiles' ends a row (uneven sides)."""
    mask, rng = _mask(atom), np.random.default_rng(1)
    for _ in range(8):
        q_cuts, k_cuts = (np.unique(np.r_[0, rng.integers(1, N, 12), N]) for _ in range(2))
        q0, q1, k0, k1 = q_cuts[:-1, None], q_cuts[1:, None] - 1, k_cuts[None, :-1], k_cuts[None, 1:] - 1
        got = np.broadcast_to(atom.tile(q0, q1, k0, k1), (len(q_cuts) - 1, len(k_cuts) - 1))
        for (i, j), s in np.ndenumerate(got):
            block = mask[q0[i, 0] : q1[i, 0] + 1, k0[0, j] : k1[0, j] + 1]
            assert s == (Status.ALL if block.all() else Status.SOME if block.any() else Status.NONE), (i, j)


def _check_bounds(mask: np.ndarray, hull, full, first: str, last: str, size: int) -> None:
    """The contract of key_bounds (rows of `mask` are the blocks' side): for blocks of `size`
    rows, the hull holds every column some row reaches, and no row reaches one while it is
    inactive; every column of the full interval is reached by every row of the block."""
    start = np.arange(0, N, size, dtype=np.int64)
    env = {first: start, last: np.minimum(start + size, N) - 1}
    lo, hi, on = hull.at(env, N)
    for i, s in enumerate(start):
        seen = np.flatnonzero(mask[s : env[last][i] + 1].any(axis=0))
        if not on[i]:
            assert seen.size == 0
        elif seen.size:
            assert lo[i] <= seen.min() and seen.max() <= hi[i]
    if full is not None:
        flo, fhi, fon = (full & hull).at(env, N)
        for i, s in enumerate(start):
            if fon[i] and flo[i] <= fhi[i]:
                assert mask[s : env[last][i] + 1, flo[i] : fhi[i] + 1].all()


@pytest.mark.parametrize("atom", CASES, ids=IDS)
@pytest.mark.parametrize("size", [1, 5, 16])
def test_key_bounds_hold_every_allowed_key(atom, size):
    """The row view: the keys of a query block."""
    _check_bounds(_mask(atom), *atom.key_bounds(), "q0", "q_last", size)


@pytest.mark.parametrize("atom", CASES, ids=IDS)
@pytest.mark.parametrize("size", [1, 5, 16])
def test_query_bounds_hold_every_attending_query(atom, size):
    """The column view: the same contract on the transposed mask."""
    _check_bounds(_mask(atom).T, *atom.query_bounds(), "k0", "k_last", size)


@pytest.mark.parametrize("atom", CASES, ids=IDS)
@pytest.mark.parametrize("negated", [False, True])
def test_render_is_holds(atom, negated):
    """The rendered text, evaluated by torch with other tile names, is the membership."""
    lit = Lit(atom, negated)
    text = " & ".join(lit.render_parts("qq", "kk"))
    qq = torch.arange(N, dtype=torch.int64)[:, None]
    kk = torch.arange(N, dtype=torch.int64)[None, :]
    got = eval(text, {"__builtins__": {}}, {"qq": qq, "kk": kk})  # noqa: S307 (our own text)
    want = _mask(atom) != negated
    assert np.array_equal(np.broadcast_to(got.numpy(), (N, N)), want)


def _conj_holds(c: Conj, q, k):
    """Membership of a Conj from its fields alone (an independent reading of the normal form)."""
    ok = np.ones(np.broadcast(q, k).shape, dtype=bool)
    for x, lo, hi in ((q - k, c.d_lo, c.d_hi), (q + 0 * k, c.q_lo, c.q_hi), (k + 0 * q, c.k_lo, c.k_hi)):
        if lo is not None:
            ok &= x >= lo
        if hi is not None:
            ok &= x <= hi
    for m, r in c.dmods:
        ok &= (q - k) % m == r
    for m, r in c.kmods:
        ok &= (k + 0 * q) % m == r
    for a in c.chunks + c.powers + c.grids:
        ok &= np.asarray(a.holds(q, k), dtype=bool)
    return ok


@pytest.mark.parametrize("seed", range(12))
def test_constrain_builds_the_conjunction(seed):
    rng = np.random.default_rng(seed)
    atoms = [CASES[i] for i in rng.choice(len(CASES), size=rng.integers(1, 4), replace=False)]
    c = Conj.of(atoms)
    q, k = _grid()
    want = np.ones((N, N), dtype=bool)
    for a in atoms:
        want &= np.broadcast_to(np.asarray(a.holds(q, k), dtype=bool), (N, N))
    assert np.array_equal(_conj_holds(c, q, k), want)
    if c.empty:
        assert not want.any()
    assert np.array_equal(_conj_holds(Term(tuple(Lit(a) for a in atoms)).conj, q, k), want)


@pytest.mark.parametrize("atom", CASES, ids=IDS)
def test_complement(atom):
    parts = atom.complement()
    if parts is None:
        return
    union = np.zeros((N, N), dtype=bool)
    for p in parts:
        union |= _mask(p)
    assert np.array_equal(union, ~_mask(atom))


@pytest.mark.parametrize("atom", CASES, ids=IDS)
def test_depends_says_what_the_atom_reads(atom):
    mask = _mask(atom)
    if atom.depends == "q":
        assert (mask == mask[:, :1]).all()
    elif atom.depends == "k":
        assert (mask == mask[:1, :]).all()
    elif atom.depends == "d":
        assert np.array_equal(mask[1:, 1:], mask[:-1, :-1])
    assert isinstance(atom.scale(), int) and atom.scale() >= 0


@pytest.mark.parametrize("atom", [a for a in CASES if isinstance(a, PeriodicAtom)], ids=repr)
def test_periodic_hooks(atom):
    """diagonal_windows, window_ok and block_distances agree with holds."""
    mask = _mask(atom)
    p = atom.period
    d = np.arange(-(N - 1), N, dtype=np.int64)
    for r in range(p):
        ok = atom.window_ok(d, r)
        for i, dd in enumerate(d):
            qs = [q for q in range(max(dd, 0), N) if q % p == r and 0 <= q - dd < N]
            if qs:
                assert all(mask[q, q - dd] == ok[i] for q in qs), (r, dd)
    dist = set(atom.block_distances(N - 1))
    q, k = _grid()
    allowed = q // p - k // p
    assert np.array_equal(mask, np.isin(allowed, sorted(dist)))


def test_crt():
    assert crt([(4, 1), (6, 3)]) == (12, 9)
    assert crt([(4, 1), (6, 2)]) is None
    assert crt([]) == (1, 0)
