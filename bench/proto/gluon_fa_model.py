"""CPU model of gluon_fa.py's synchronisation: random interleavings of its barrier protocol.

    python3 bench/proto/gluon_fa_model.py      # ~1 min; prints "ok" or the first deadlock / race

Gluon kernels cannot run in the interpreter, so this replays the kernels' index and phase
arithmetic (ring stage = counter % STAGES, parity = (counter // STAGES) & 1, "empty" waits on
parity ^ 1, count-2 barriers, the ping-pong turns, the persistent kernel's Q double buffer and
tile slots, the plain kernel's CTA barrier before its loads) with mbarriers, TMA copies and
wgmmas as asynchronous events completing in random order. It fails on a deadlock, on a wgmma
reading a stage that holds the wrong tile, and on a TMA (or Q load) overwriting a buffer that an
in-flight wgmma reads. It mirrors gluon_fa.py by hand: change both together.
"""

from __future__ import annotations

import random


class MBar:
    """An mbarrier: `count` arrivals (plus expected transaction bytes) complete a phase."""

    def __init__(self, count: int):
        self.count, self.pending, self.phase, self.tx = count, count, 0, 0

    def arrive(self, tx: int = 0):  # tx > 0: arrive.expect_tx
        self.tx += tx
        self.pending -= 1
        self._maybe()

    def complete_tx(self, tx: int):
        self.tx -= tx
        self._maybe()

    def _maybe(self):
        assert self.pending >= 0, "more arrivals than the count"
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.count

    def passed(self, parity: int) -> bool:  # try_wait.parity: the phase of that parity completed
        return (self.phase & 1) != parity


class World:
    def __init__(self, stages: int):
        self.S = stages
        self.buf = {"K": [None] * stages, "V": [None] * stages, "Q": [None, None]}
        self.readers: dict = {}
        self.events: list = []  # pending asynchronous completions
        self.slot = [None, None]

    def load(self, bar: MBar, kind: str, stage: int, tile):
        """TMA: expect-tx now, data and completion later."""
        assert self.readers.get((kind, stage), 0) == 0, f"TMA overwrites {kind}{stage} while a wgmma reads it"
        bar.arrive(tx=1)

        def done():
            self.buf[kind][stage] = tile
            bar.complete_tx(1)
        self.events.append(done)


class Warpgroup:
    """In-order asynchronous wgmmas; each holds its shared-memory operand until it completes."""

    def __init__(self, w: World):
        self.w, self.q = w, []

    def issue(self, kind: str, stage: int, tile):
        w = self.w
        assert w.buf[kind][stage] == tile, f"wgmma reads {kind}{stage} = {w.buf[kind][stage]}, wants {tile}"
        w.readers[(kind, stage)] = w.readers.get((kind, stage), 0) + 1
        op = (kind, stage)
        self.q.append(op)

        def done():
            if self.q[0] is not op:
                return False
            self.q.pop(0)
            w.readers[op] -= 1
        w.events.append(done)


def consume(w, wg, b, n, it0, d, bars, turn, first, pingpong, produce=None):
    """_consume: tile n (Q buffer b) over key tiles it0 .. it0 + d - 1 of the ring."""
    S = w.S
    q_ready, k_ready, v_ready, k_empty, v_empty, turns = bars
    yield lambda: q_ready[b].passed((n // 2) & 1)
    assert w.buf["Q"][b] == n
    w.readers[("Q", b)] = w.readers.get(("Q", b), 0) + 1

    def group(issues):
        nonlocal turn
        if pingpong:
            t = turn ^ first
            yield lambda: turns[1 - first].passed(t)
        for kind, stage, tile in issues:
            wg.issue(kind, stage, tile)
        if pingpong:
            turns[first].arrive()
            turn ^= 1

    s0 = it0 % S
    yield lambda: k_ready[s0].passed((it0 // S) & 1)
    yield from group([("K", s0, it0)])
    yield lambda: not wg.q
    if produce is None:
        k_empty[s0].arrive()
    for j in range(1, d):
        sj, sp = (it0 + j) % S, (it0 + j - 1) % S
        if produce is not None:
            yield from produce(j)
        yield lambda: k_ready[sj].passed(((it0 + j) // S) & 1)
        yield lambda: v_ready[sp].passed(((it0 + j - 1) // S) & 1)
        yield from group([("K", sj, it0 + j), ("V", sp, it0 + j - 1)])
        yield lambda: len(wg.q) <= 1
        if produce is None:
            k_empty[sj].arrive()
        yield None  # softmax
        yield lambda: not wg.q
        if produce is None:
            v_empty[sp].arrive()
    sl = (it0 + d - 1) % S
    yield lambda: v_ready[sl].passed(((it0 + d - 1) // S) & 1)
    yield from group([("V", sl, it0 + d - 1)])
    yield lambda: not wg.q
    if produce is None:
        v_empty[sl].arrive()
    w.readers[("Q", b)] -= 1
    return turn


def ws_consumer(w, wg, i, bars, q_empty, pingpong, ds, persistent):
    """_ws_consumer (one tile) or _wsp_consumer (tiles from the slots until the sentinel)."""
    n = it = turn = 0
    if not persistent:
        yield from consume(w, wg, 0, 0, 0, ds[0], bars, 0, 1 - i, pingpong)
        return
    yield lambda: bars[0][0].passed(0)
    while w.slot[n % 2] is not None:
        assert w.slot[n % 2] == n
        turn = yield from consume(w, wg, n % 2, n, it, ds[n], bars, turn, 1 - i, pingpong)
        q_empty[n % 2].arrive()
        it += ds[n]
        n += 1
        yield lambda: bars[0][n % 2].passed((n // 2) & 1)


def ws_producer(w, bars, q_empty, ds, persistent):
    """_ws_producer / _wsp_producer."""
    S = w.S
    q_ready, k_ready, v_ready, k_empty, v_empty, _ = bars
    it = 0
    for n, d in enumerate(ds):
        b = n % 2
        if persistent:
            yield lambda: q_empty[b].passed(((n // 2) & 1) ^ 1)
            w.slot[b] = n
        w.load(q_ready[b], "Q", b, n)
        for t in range(d):
            s, ph = (it + t) % S, ((it + t) // S) & 1
            yield lambda: k_empty[s].passed(ph ^ 1)
            w.load(k_ready[s], "K", s, it + t)
            yield lambda: v_empty[s].passed(ph ^ 1)
            w.load(v_ready[s], "V", s, it + t)
        it += d
    if persistent:
        b = len(ds) % 2
        yield lambda: q_empty[b].passed(((len(ds) // 2) & 1) ^ 1)
        w.slot[b] = None
        q_ready[b].arrive()


def plain_agents(w, bars, d):
    """_fa_plain: two warpgroups of one partition; a CTA barrier, then one thread issues the loads."""
    S = w.S
    q_ready, k_ready, v_ready = bars[:3]
    cta = {"arrived": 0, "gen": 0}

    def issue(t_k, t_v, pk, pv):
        if pk:
            w.load(k_ready[t_k % S], "K", t_k % S, t_k)
        if pv:
            w.load(v_ready[t_v % S], "V", t_v % S, t_v)

    def producer_of(i):
        def produce(j):
            gen = cta["gen"]
            cta["arrived"] += 1
            if cta["arrived"] == 2:
                cta["arrived"], cta["gen"] = 0, gen + 1
            yield lambda: cta["gen"] > gen
            if i == 0:
                issue(j - 1 + S, j - 2 + S, j - 1 + S < d, j >= 2 and j - 2 + S < d)
        return produce

    w.load(q_ready[0], "Q", 0, 0)
    for t in range(S):
        issue(t, t, t < d, t < d)
    return [consume(w, Warpgroup(w), 0, 0, 0, d, bars, 0, 0, False, producer_of(i)) for i in range(2)]


def run(kind: str, S: int, ds: list, pingpong: bool, seed: int):
    rng = random.Random(seed)
    w = World(S)
    bars = ([MBar(1), MBar(1)], [MBar(1) for _ in range(S)], [MBar(1) for _ in range(S)],
            [MBar(2) for _ in range(S)], [MBar(2) for _ in range(S)], [MBar(1), MBar(1)])
    q_empty = [MBar(2), MBar(2)]
    if kind == "plain":
        agents = plain_agents(w, bars, ds[0])
    else:
        agents = [ws_consumer(w, Warpgroup(w), i, bars, q_empty, pingpong, ds, kind == "wsp") for i in range(2)]
        agents.append(ws_producer(w, bars, q_empty, ds, kind == "wsp"))
    conds = [None] * len(agents)
    alive = list(range(len(agents)))
    while alive or w.events:
        runnable = [i for i in alive if conds[i] is None or conds[i]()]
        choices = [("agent", i) for i in runnable] + [("event", i) for i in range(len(w.events))]
        if not choices:
            raise RuntimeError(f"deadlock: {kind} stages={S} tiles={ds} pingpong={pingpong} seed={seed}")
        what, i = rng.choice(choices)
        if what == "event":
            if w.events[i]() is not False:
                w.events.pop(i)
            continue
        try:
            conds[i] = next(agents[i])
        except StopIteration:
            alive.remove(i)


def main() -> int:
    rng = random.Random(0)
    runs = 0
    for S in (2, 3, 4):
        for seed in range(150):
            d = rng.randint(1, 9)
            run("plain", S, [d], False, seed)
            for pp in (False, True):
                run("ws", S, [d], pp, seed)
                run("wsp", S, [rng.randint(1, 6) for _ in range(rng.randint(0, 5))], pp, seed)
                runs += 2
            runs += 1
    print(f"ok: {runs} random interleavings, no deadlock, no stage overwritten while read")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
