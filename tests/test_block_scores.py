"""The block scores of selection by score (codegen/support/block_scores.py) against brute force."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from attnc.codegen.support import block_scores as bs


@given(n=st.integers(1, 40), size=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_summaries_match_a_loop_over_blocks(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(2, n, 3, generator=g)
    mean, (lo, hi) = bs.block_mean(k, size), bs.block_min_max(k, size)
    for b, start in enumerate(range(0, n, size)):
        block = k[:, start : start + size]
        torch.testing.assert_close(mean[:, b], block.mean(1))
        torch.testing.assert_close(lo[:, b], block.amin(1))
        torch.testing.assert_close(hi[:, b], block.amax(1))


@given(n=st.integers(1, 30), size=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_quest_bound_bounds_every_key_of_its_block(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(4, 5, generator=g), torch.randn(n, 5, generator=g)
    bound = bs.quest_bound(q, *bs.block_min_max(k, size))
    exact = (q @ k.T).reshape(4, -1)
    for b, start in enumerate(range(0, n, size)):
        assert (exact[:, start : start + size].amax(1) <= bound[:, b] + 1e-5).all()
    torch.testing.assert_close(bs.mean_score(q, bs.block_mean(k, size)), q @ bs.block_mean(k, size).T)


def test_top_blocks_breaks_ties_to_the_lowest_index_and_pads():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [float("-inf")] * 4 + [2.0]])
    assert bs.top_blocks(scores, 2).tolist() == [[1, 2], [4, -1]]
    assert bs.top_blocks(scores, 9).tolist() == [[0, 1, 2, 3, 4], [4, -1, -1, -1, -1]]
