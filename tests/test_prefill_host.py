"""The host side of prefill (codegen/support/prefill.py) as an ordinary module, with a stand-in
kernel that records its launches: the per-shape memo plans a launch once and replays it with
each call's tensors, a call that differs in anything the checks read is checked again (and
refused when wrong) before any launch, and padded batches launch the pointer kernel.
"""

from __future__ import annotations

import pytest
import torch

from attnc.codegen.support import prefill as P
from attnc.compiler import configs

PATTERN = {"name": "p", "model": {"layers": 1, "heads": 4}, "varies_by_layer": False, "varies_by_head": False}
TUNING = [{"block_cap": None, "rows_cap": None, "narrow": 0, "grows": True, "residue": 0, "grid": False}]


class Kernel:
    """kernel[grid](*args, **kw) records (grid, args, kw)."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.launches.append((grid, args, kw))


@pytest.fixture
def plans(monkeypatch):
    """Counts the plans made (P._plan calls)."""
    made = []
    plan = P._plan

    def counting(*args, **kw):
        made.append(1)
        return plan(*args, **kw)

    monkeypatch.setattr(P, "_plan", counting)
    return made


def _spec(kernel):
    return P.PrefillSpec(PATTERN, [[0] * 4], TUNING, kernel, (None,), None, None, configs.choose_config,
                         configs.CONFIGS, configs.GRID_CONFIGS, configs.CPU_CONFIG, {})  # fmt: skip


def _qkv(n=40, dtype=torch.float32):
    return torch.randn(2, 4, n, 16, dtype=dtype), torch.randn(2, 2, n, 16, dtype=dtype), torch.randn(2, 2, n, 16)


def test_a_shape_is_planned_once_and_launched_with_each_calls_tensors(plans):
    kernel = Kernel()
    spec = _spec(kernel)
    q, k, v = _qkv()
    o1, _ = P.forward(spec, q, k, v, None, False, None)
    q2, k2, v2 = _qkv()
    o2, _ = P.forward(spec, q2, k2, v2, None, False, None)
    assert len(plans) == 1 and len(kernel.launches) == 2
    (grid, a1, kw1), (_, a2, kw2) = kernel.launches
    assert grid == (2, 2 * 4) and kw1 == kw2 and kw1["PADDED"] is False  # 40 rows in 32-row blocks, B * H
    assert a1[4] is q and a1[7] is o1 and a2[4] is q2 and a2[7] is o2  # descriptors' tensors, then pointers
    P.forward(spec, q, k, v, 0.5, False, None)  # another scale: another plan
    assert len(plans) == 2


def test_prefill_fast_replays_only_a_call_like_a_checked_one(plans):
    kernel = Kernel()
    spec = _spec(kernel)
    q, k, v = _qkv()
    assert P.prefill_fast(spec, q, k, v, None, False, None, None) is None  # nothing remembered yet
    P.forward(spec, q, k, v, 0.25, False, None)  # prefill's full path: checks, then the plan
    q2, k2, v2 = _qkv()
    o = P.prefill_fast(spec, q2, k2, v2, None, False, None, None)  # the default scale is 1/sqrt(16)
    assert len(plans) == 1 and len(kernel.launches) == 2 and kernel.launches[1][1][4] is q2
    assert o.shape == q2.shape and o.is_contiguous()
    misses = [
        (q2, k2.to(torch.float16), v2, 0.25, None),  # another dtype
        (q2[:, :, :39], k2[:, :, :39], v2[:, :, :39], 0.25, None),  # another length
        (q2, k2, v2, 0.5, None),  # another scale
        (q2, k2, v2, 0.25, 0),  # a layer
        (q2.requires_grad_(), k2, v2, 0.25, None),  # autograd: the custom op
        (torch.randn(2, 4, 40, 17)[..., 1:], k2, v2, 0.25, None),  # not 16-byte aligned
    ]
    for a, b, c, scale, layer in misses:
        assert P.prefill_fast(spec, a, b, c, scale, False, layer, None) is None
    assert P.prefill_fast(spec, q, k, v, 0.25, True, None, None) is None  # return_lse: another plan
    assert len(kernel.launches) == 2


def test_a_call_that_differs_is_checked_again_before_any_launch():
    kernel = Kernel()
    spec = _spec(kernel)
    q, k, v = _qkv()
    P.forward(spec, q, k, v, None, False, None)
    with pytest.raises(TypeError, match="dtype"):
        P.forward(spec, q, k.to(torch.float16), v, None, False, None)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        P.forward(spec, q.transpose(-1, -2).contiguous().transpose(-1, -2), k, v, None, False, None)
    with pytest.raises(ValueError, match="multiple"):
        P.forward(spec, torch.randn(2, 3, 40, 16), k, v, None, False, None)
    with pytest.raises(ValueError, match="layer"):
        P.forward(spec, q, k, v, None, False, 1)
    with pytest.raises(TypeError, match="scale"):
        P.forward(spec, q, k, v, "x", False, None)
    assert len(kernel.launches) == 1


def test_padded_batches_launch_the_pointer_kernel_with_the_lengths():
    kernel = Kernel()
    spec = _spec(kernel)
    q, k, v = _qkv()
    lengths = torch.tensor([40, 3])
    out, lse = P.forward(spec, q, k, v, None, True, None, lengths=lengths)
    ((_, args, kw),) = kernel.launches
    assert kw["PADDED"] is True and kw["USE_TMA"] == 0 and args[11] is lengths
    assert (out == 0).all() and torch.isneginf(lse).all()  # the kernel writes the rows; padding stays as set


def test_launches_and_views_of_grid_groups():
    spec = _spec(Kernel())._replace(grid_shape=[((4, 8), 2, 32)])
    t = torch.randn(2, 3, 34, 16)
    base, shape, strides = P.grid_view(spec, 0, t)
    assert base.shape[2] == 32 and shape == [6, 4, 8, 16] and strides == [t.stride(1), 8 * 16, 16, 1]
    assert P.launches_of(spec, "cpu", None, 4) == [(0, 4, None)]


class _CLaunch:
    """A compiled kernel's C launch (an object without Python code of its own): records."""

    def __init__(self, calls: list):
        self.calls = calls

    def __call__(self, *args):
        self.calls.append(args)


class BindingKernel:
    """kernel[grid](*args, **kw) returns a compiled kernel whose C launch records its calls; its
    `fn` takes exactly the launch's positional arguments (so FastLaunch binds a raw launch)."""

    def __init__(self, calls: list):
        self.fn = None
        run = type("Run", (), {"launch": _CLaunch(calls), "global_scratch_size": 0, "profile_scratch_size": 0,
                               "launch_cooperative_grid": False, "launch_pdl": False})()  # fmt: skip
        self.compiled = type("Compiled", (), {"function": "fn-handle", "packed_metadata": (), "run": run})()

    def __getitem__(self, grid):
        def dispatch(*args, **kw):
            scope: dict = {}
            exec(f"def fn({', '.join(f'p{i}' for i in range(len(args)))}):\n    pass", scope)  # noqa: S102
            self.fn = scope["fn"]
            return self.compiled

        return dispatch


def test_a_remembered_call_goes_through_its_bound_launch(monkeypatch):
    # a call like a remembered one launches through the launch bound at its first such call
    # (FastLaunch.bound): the C launch gets what the plan's run would hand it
    from attnc.codegen.support import launch as L

    monkeypatch.setattr(L, "_current_stream", lambda: (0, 77))
    monkeypatch.setattr(L, "_hooks_set", lambda: False)
    calls: list = []
    spec = _spec(BindingKernel(calls))
    q, k, v = _qkv()
    P.forward(spec, q, k, v, 0.25, False, None)  # the full path: the dispatch, the plan remembered
    q2, k2, v2 = _qkv()
    o2 = P.prefill_fast(spec, q2, k2, v2, 0.25, False, None, None)
    hit = spec.memo[P.plan_key(q2, k2, v2, None, 0.25, False, None, None, None)]
    assert hit.bound and len(hit.bound) == len(hit.runs)
    assert calls[-1][17] == q2.data_ptr() and calls[-1][20] == o2.data_ptr()  # after the descriptors' 4 places
    bound = calls[-len(hit.runs) :]
    for run in hit.runs:  # the same call through the plan's runs (the raw launch)
        run(q2, k2, v2, o2, hit.dummy_f32, hit.dummy_i32, None, None)
    assert calls[-len(hit.runs) :] == bound
    monkeypatch.setattr(L, "_current_stream", lambda: (1, 77))  # another device: the runs (the dispatch)
    n = len(calls)
    P.prefill_fast(spec, q2, k2, v2, 0.25, False, None, None)
    assert len(calls) == n
