"""Timing helpers shared by the bench scripts (run as `python3 bench/<script>.py`, so this file
is importable as `timing` from them)."""

from __future__ import annotations

import statistics
import time


def graph_time(fn, torch, calls: int = 20, replays: int = 20) -> float:
    """Median GPU seconds per call of fn, from replays of one CUDA graph of `calls` calls (no
    launch overhead). Raises RuntimeError where fn cannot be captured."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        t0 = time.perf_counter()
        g.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / calls)
    times.sort()
    return times[len(times) // 2]


def interleaved(fns, rounds: int = 3) -> list[float]:
    """The median of each of fns' results (times), the fns called in alternation for `rounds`
    rounds: builds or kernels compared this way do not gain or lose from the card's clocks
    drifting between two back-to-back measurements."""
    times = [[fn() for fn in fns] for _ in range(rounds)]
    return [statistics.median(col) for col in zip(*times)]
