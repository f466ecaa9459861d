"""Quest's page choice with float8 summaries (bits = 8) against exact ones, on synthetic keys.

Keys with channel outliers (a tenth of the channels biased 16x more), rotary-like structure
and noise; 4 query heads of one KV head; 16384 tokens, pages of 16. For budgets of 3 % and
10 % of the pages: the share of the attention mass (softmax of q . k / sqrt(D), averaged over
the heads) that the chosen pages hold with exact summaries and with float8 ones, and the
share of chosen pages both choose. CPU, a few seconds:
    python bench/proto/quest_fp8_quality.py   (attnc installed: make venv)
"""

import torch

from attnc.codegen.support.block_scores import quest_bound, top_blocks
from attnc.codegen.support.paged import page_bounds

N, D, G, P = 16384, 128, 4, 16


def keys(g):
    bias = torch.randn(D, generator=g) * torch.where(torch.rand(D, generator=g) < 0.1, 8.0, 0.5)
    ang = torch.arange(N).float()[:, None] / (10000 ** (torch.arange(D // 2).float() / (D // 2)))
    amp = torch.randn(D // 2, generator=g).abs() * 2
    k = bias + torch.cat([amp * torch.cos(ang), amp * torch.sin(ang)], 1) + torch.randn(N, D, generator=g)
    return k.bfloat16().float(), bias


def main():
    g = torch.Generator().manual_seed(0)
    for trial in range(6):
        k, bias = keys(g)
        q = (torch.randn(G, D, generator=g) + bias * 0.3).bfloat16().float()
        mass = torch.softmax(q @ k.T / D**0.5, -1).mean(0).view(-1, P).sum(-1)
        exact = quest_bound(q, *page_bounds(k, P, 16)).mean(0)
        fp8 = quest_bound(q, *page_bounds(k, P, 8)).mean(0)
        for share in (0.03, 0.1):
            n = int(N // P * share)
            a, b = top_blocks(exact, n), top_blocks(fp8, n)
            same = len(set(a.tolist()) & set(b.tolist())) / n
            print(f"trial {trial} budget {share:.0%}: mass exact {float(mass[a].sum()):.4f} "
                  f"fp8 {float(mass[b].sum()):.4f}, same pages {same:.2f}")


if __name__ == "__main__":
    main()
