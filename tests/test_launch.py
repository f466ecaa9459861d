"""FastLaunch (codegen/support/launch.py) with stand-ins for a Triton kernel and its compiled
kernel: the first call takes triton.jit's dispatch, later calls hand the compiled kernel the
arguments in the order the dispatch binds them (positional ones, then every other parameter
from the constants or its default), and anything unusual goes back to the dispatch.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from attnc.codegen.support import launch as L


def body(X, Y, n, BLOCK: int, FLAG=False, SCALE=2.0):
    """The stand-in kernel's parameters (as a triton.jit function's `fn`)."""


class Compiled:
    """A compiled kernel: `run` records the direct launches."""

    function, packed_metadata = "fn-handle", ("meta",)

    def __init__(self):
        self.runs = []

    def run(self, *args):
        self.runs.append(args)


class Kernel:
    """kernel[grid](*args, **constants) records the dispatch and returns the compiled kernel."""

    fn = staticmethod(body)

    def __init__(self, compiled=True):
        self.compiled = Compiled() if compiled else None
        self.dispatches = []

    def __getitem__(self, grid):
        def dispatch(*args, **kw):
            self.dispatches.append((grid, args, kw))
            return self.compiled

        return dispatch


@pytest.fixture
def device(monkeypatch):
    """The current device (index 0 unless changed) and its stream (77), as Triton would read them."""
    state = {"index": 0}
    monkeypatch.setattr(L, "_current_stream", lambda: (state["index"], 77))
    monkeypatch.setattr(L, "_hooks_set", lambda: state.get("hooks", False))
    return state


def test_later_calls_launch_the_compiled_kernel_with_the_dispatchs_arguments(device):
    kernel = Kernel()
    constants = {"BLOCK": 64, "SCALE": 0.5, "num_warps": 4}
    launch = L.FastLaunch(kernel, (3, 2), constants)
    x, y = torch.zeros(4), torch.ones(4)
    assert launch(x, y, 5) is kernel.compiled
    assert kernel.dispatches == [((3, 2), (x, y, 5), constants)]
    launch(y, x, 6)
    ((*head, a, b, n, block, flag, scale),) = kernel.compiled.runs
    assert head == [3, 2, 1, 77, "fn-handle", ("meta",), None, None, None] and a is y and b is x
    bound = inspect.signature(body).bind(y, x, 6, BLOCK=64, SCALE=0.5)
    bound.apply_defaults()
    assert [a, b, n, block, flag, scale] == list(bound.arguments.values())  # num_warps: an option
    assert len(kernel.dispatches) == 1


def test_the_dispatch_serves_other_devices_hooks_and_interpreters(device):
    kernel = Kernel()
    launch = L.FastLaunch(kernel, (1,), {"BLOCK": 16})
    launch(1, 2, 3)
    device["index"] = 1  # another current device: its own compiled kernel
    launch(1, 2, 3)
    device["index"], device["hooks"] = 0, True  # a profiler's launch hooks need the dispatch's metadata
    launch(1, 2, 3)
    assert len(kernel.dispatches) == 3 and not kernel.compiled.runs
    device["hooks"] = False
    launch(1, 2, 3)
    assert len(kernel.compiled.runs) == 1
    interpreted = Kernel(compiled=False)  # the interpreter returns no compiled kernel
    launch = L.FastLaunch(interpreted, (1,), {"BLOCK": 16})
    launch(1, 2, 3)
    launch(1, 2, 3)
    assert len(interpreted.dispatches) == 2


def test_a_launcher_that_refuses_the_arguments_falls_back_for_good(device):
    kernel = Kernel()

    def refuse(*args):
        raise TypeError("launcher wants other arguments")

    kernel.compiled.run = refuse
    launch = L.FastLaunch(kernel, (1,), {"BLOCK": 16})
    for _ in range(3):
        launch(1, 2, 3)
    assert len(kernel.dispatches) == 3
    missing = L.FastLaunch(Kernel(), (1,), {})  # BLOCK has no value: cannot be bound
    missing(1, 2, 3)
    missing(1, 2, 3)
    assert not missing.kernel.compiled.runs


def test_to_device_copies_host_tables():
    t = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
    got = L.to_device(t, "cpu")
    assert torch.equal(got, t) and got.dtype == torch.int32


def test_kernels_with_global_scratch_get_the_scratch_allocator_for_their_launches_only(device):
    # a kernel that builds TMA descriptors on the device asks Triton's allocator for scratch at
    # every launch: FastLaunch sets `scratch` around its launches (the dispatch's too), and
    # leaves whatever the caller had set (Triton's null allocator here) outside them
    seen = []

    class Meta:
        global_scratch_size = 512

    class Scratching(Kernel):
        def __getitem__(self, grid):
            seen.append(L._TRITON_ALLOCATOR.get())
            return super().__getitem__(grid)

    kernel = Scratching()
    kernel.compiled.metadata = Meta()
    kernel.compiled.run = lambda *args: seen.append(L._TRITON_ALLOCATOR.get())
    outside = L._TRITON_ALLOCATOR.get()
    launch = L.FastLaunch(kernel, (1,), {"BLOCK": 16})
    launch(1, 2, 3)  # the dispatch
    launch(1, 2, 3)  # the compiled kernel
    assert seen == [L.scratch, L.scratch] and L._TRITON_ALLOCATOR.get() is outside
    plain = Kernel()  # no scratch: the direct launch leaves the allocator alone
    plain.compiled.run = lambda *args: seen.append(L._TRITON_ALLOCATOR.get())
    launch = L.FastLaunch(plain, (1,), {"BLOCK": 16})
    launch(1, 2, 3)
    launch(1, 2, 3)
    assert seen[-1] is outside


def test_scratch_is_one_buffer_per_device_and_stream(monkeypatch):
    # CPU stand-ins for the CUDA calls: the buffer is reused on its stream, grown when a launch
    # asks for more, separate per stream, and a fresh tensor while a graph is being captured
    made = []
    monkeypatch.setattr(L, "_SCRATCH", {})
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 0, raising=False)
    capturing = {"on": False}
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing["on"])
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda size, device, dtype: made.append(size) or empty(size, dtype=dtype))
    a = L.scratch(1024, 128, 7)
    assert L.scratch(4096, 128, 7) == a and made == [1 << 16]  # reused, as an address (an int)
    b = L.scratch(1 << 17, 128, 7)
    assert made == [1 << 16, 1 << 17] and L._SCRATCH[(0, 7)][0].numel() == 1 << 17 and b == L._SCRATCH[(0, 7)][1]
    L.scratch(1024, 128, 8)  # another stream: its own buffer
    assert len(L._SCRATCH) == 2
    capturing["on"] = True
    fresh = L.scratch(1024, 128, 7)
    assert isinstance(fresh, torch.Tensor) and fresh.numel() == 1024 and made[-1] == 1024
