"""Draws the pictures of docs/grids.md: `.venv/bin/python docs/img/grids_pictures.py`."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from attnc.compiler.blocks import block_map  # noqa: E402
from attnc.compiler.grid_blocks import tiled_block_map  # noqa: E402
from attnc.compiler.ir import Status  # noqa: E402
from attnc.compiler.lower import lower  # noqa: E402
from attnc.compiler.tiling import choose_tiling, grid_terms  # noqa: E402
from attnc.spec.resolve import resolve_text  # noqa: E402

OUT = Path(__file__).resolve().parent
TILES = ListedColormap(["#f4f4f4", "#f0a830", "#1f5fa8"])


def pattern(text: str):
    return lower(resolve_text(text, "pictures.attn")).groups[0].pattern


def neighbourhoods() -> None:
    cases = [
        (
            "kernel 5 x 5: a middle query and a corner query\n(the corner window shifts inward)",
            "neighborhood(kernel = (5, 5))",
            [(6, 6), (0, 1)],
        ),
        ("kernel 3 x 3, dilation 2 x 2", "neighborhood(kernel = (3, 3), dilation = (2, 2))", [(6, 6), (11, 0)]),
        ("kernel 5 x 5, rows causal", "neighborhood(kernel = (5, 5), causal = (true, false))", [(6, 6), (1, 11)]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    for ax, (title, expr, queries) in zip(axes, cases):
        p = pattern(f"grid(12, 12)\npattern p = {expr}")
        img = np.zeros((12, 12))
        for n, (r, c) in enumerate(queries):
            row = p.mask(144)[r * 12 + c].reshape(12, 12)
            img[row] = n + 1
        for n, (r, c) in enumerate(queries):
            img[r, c] = 3 + n
        cmap = ListedColormap(["#f4f4f4", "#9ecae1", "#fdae6b", "#08519c", "#a63603"])
        ax.imshow(img, cmap=cmap, vmin=0, vmax=4)
        ax.set_xticks(np.arange(-0.5, 12, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, 12, 1), minor=True)
        ax.grid(which="minor", color="white", lw=0.8)
        ax.tick_params(which="both", length=0, labelsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle("keys of a few queries (dark) on a 12 x 12 grid", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "grids_neighbourhoods.png", dpi=100)
    plt.close(fig)


def radial() -> None:
    p = pattern(
        "grid(8, 6, 10)\npattern p = neighborhood(kernel = (3, 6, 10)) | neighborhood(kernel = (5, 3, 5))"
        " | neighborhood(kernel = (8, 1, 3))"
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    axes[0].imshow(p.mask(480), cmap="Greys", interpolation="nearest")
    axes[0].set_title(
        "Radial Attention's shape on an 8 x 6 x 10 grid (480 tokens):\n"
        "frames within 1: whole frames; within 2: 3 x 5; all: 1 x 3",
        fontsize=9,
    )
    q = 4 * 60 + 3 * 10 + 5  # frame 4, row 3, column 5
    row = p.mask(480)[q].reshape(8, 6, 10)
    axes[1].imshow(
        np.concatenate([np.pad(f, 1, constant_values=0.5) for f in row.astype(float)], axis=1),
        cmap="Greys",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    axes[1].set_title("the keys of the query at frame 4, row 3, column 5, frame by frame", fontsize=9)
    axes[1].set_yticks([])
    axes[1].set_xticks([])
    fig.tight_layout()
    fig.savefig(OUT / "grids_radial.png", dpi=100)
    plt.close(fig)


def tiled_vs_row_major() -> None:
    p = pattern("grid(64, 64)\npattern p = neighborhood(kernel = (13, 13))")
    g = grid_terms(p)
    tiling = choose_tiling(g, 128, 64)
    natural = block_map(p, 4096, 128, 64).status
    tiled = tiled_block_map(p, tiling).status
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, status, title in (
        (axes[0], natural, "row-major order"),
        (axes[1], tiled, f"tile order: query tiles {tiling.q_tile}, key tiles {tiling.k_tile}"),
    ):
        visited = int((status != Status.NONE).sum())
        ax.imshow(status, cmap=TILES, vmin=0, vmax=2, interpolation="nearest", aspect="auto")
        ax.set_title(f"{title}\n{visited} of {status.size} tiles visited", fontsize=9)
        ax.set_xlabel("key tile (64 tokens)")
        ax.set_ylabel("query tile (128 tokens)")
    fig.suptitle("64 x 64 grid, kernel 13 x 13, 128 x 64 tiles (orange partial, blue full)", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "grids_tiles.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    neighbourhoods()
    radial()
    tiled_vs_row_major()
