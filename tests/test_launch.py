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


class _CLaunch:
    """Triton's compiled C launch (a builtin: no Python code of its own): records its calls."""

    def __init__(self, calls: list):
        self.calls = calls

    def __call__(self, *args):
        self.calls.append(args)


def _c_launch_stand_in(calls: list) -> _CLaunch:
    return _CLaunch(calls)


def test_the_raw_launch_hands_the_c_launch_what_tritons_launcher_would(monkeypatch, device):
    # Triton's own wrapper (wrap_handle_tensordesc) around a recording C launch, with a stand-in
    # for the CUDA encoding of a descriptor: the raw launch must pass the same arguments, but
    # tensors as their addresses and each descriptor encoded once per (address, shape, strides)
    from triton.backends.nvidia import driver as nv
    from triton.tools.tensor_descriptor import TensorDescriptor

    encoded = []

    def encode(desc, meta):
        encoded.append(desc.base.data_ptr())
        return [("CUtensorMap", desc.base.data_ptr(), meta["swizzle"]), *desc.shape, *desc.strides]

    monkeypatch.setattr(nv, "make_tensordesc_arg", encode)
    monkeypatch.setattr(L, "_encode_descriptor", encode)
    calls: list = []
    signature = {0: "*fp32", 1: "tensordesc<bf16[16, 16]>", 2: "i32", 3: "*fp32", 4: "constexpr"}
    wrapped = nv.wrap_handle_tensordesc(_c_launch_stand_in(calls), signature, [{"swizzle": 128}])

    class Run:
        launch, global_scratch_size, profile_scratch_size = staticmethod(wrapped), 0, 0
        launch_cooperative_grid, launch_pdl = False, True

    class Compiled:
        function, packed_metadata, run = "fn-handle", (4, 1, 0), Run()

    x, y = torch.zeros(8), torch.ones(8)
    base, other = torch.zeros(32, 16, dtype=torch.bfloat16), torch.zeros(32, 16, dtype=torch.bfloat16)
    desc = lambda t: TensorDescriptor.from_tensor(t, [16, 16])  # noqa: E731
    args = (x, desc(base), 7, None, 64)
    raw = L.RawLaunch.of(Compiled, args)
    assert raw is not None and raw.pointers == (0,)
    wrapped(3, 1, 1, 77, "fn-handle", False, True, None, None, (4, 1, 0), None, None, None, *args)  # Triton's way
    raw((3, 1, 1), 77, Compiled, args)
    tritons, ours = calls
    assert tritons[:13] == ours[:13] and tritons[14:] == ours[14:]  # launch flags, metadata, the rest
    assert tritons[13] is x and ours[13] == x.data_ptr()
    assert encoded == [base.data_ptr(), base.data_ptr()]  # Triton's call, then ours
    raw((3, 1, 1), 77, Compiled, (y, desc(base), 7, x, 64))  # same descriptor: not encoded again
    raw((3, 1, 1), 77, Compiled, (y, desc(other), 7, x, 64))  # another address: encoded
    assert encoded[2:] == [other.data_ptr()] and calls[2][13] == y.data_ptr()
    assert calls[2][20] is x  # None when bound: a tensor there goes as it is (Triton's launcher reads it)
    # the bare tensor in the descriptor's place: described as the first launch's descriptor
    raw((3, 1, 1), 77, Compiled, (y, other, 7, x, 64))
    raw((3, 1, 1), 77, Compiled, (y, other, 7, x, 64))
    assert encoded[3:] == [other.data_ptr()] and calls[-1][14:19] == calls[3][14:19]
    dressed = raw.dressed((y, other, 7, x, 64))
    assert isinstance(dressed[1], TensorDescriptor) and dressed[1].base is other and dressed[0] is y
    assert (list(dressed[1].shape), list(dressed[1].strides), dressed[1].block_shape) == ([32, 16], [16, 1], [16, 16])
    # a partial launch (FastLaunch.bound): the free places take new tensors, a bare one in the
    # descriptor's place encoded per address as the raw launch encodes it; the rest fixed now
    go = raw.partial((3, 1, 1), Compiled, (y, other, 7, x, 64), (0, 1))
    raw((3, 1, 1), 77, Compiled, (x, base, 7, x, 64))
    go(77, x, base)
    assert calls[-1] == calls[-2] and calls[-1][13] == x.data_ptr()
    fixed = raw.partial((3, 1, 1), Compiled, (y, desc(other), 7, x, 64), (0,))  # a descriptor fixed: encoded now
    fixed(77, x)
    assert calls[-1][14:19] == calls[3][14:19]
    # where Triton's launcher is not laid out as expected, or the kernel needs scratch: none
    Run.global_scratch_size = 64
    assert L.RawLaunch.of(Compiled, args) is None


def test_fast_launch_takes_the_raw_launch_once_bound(monkeypatch, device):
    calls: list = []

    class Run:
        launch, global_scratch_size, profile_scratch_size = staticmethod(_c_launch_stand_in(calls)), 0, 0
        launch_cooperative_grid, launch_pdl = False, False

        def __call__(self, *args):
            raise AssertionError("Triton's launcher is not called once the raw launch is bound")

    kernel = Kernel()
    kernel.compiled.run = Run()
    launch = L.FastLaunch(kernel, (2,), {"BLOCK": 16})
    x = torch.zeros(4)
    launch(x, 1, 2)  # the dispatch
    launch(x, 1, 3)
    ((*head, a, b, n, block, flag, scale),) = calls
    assert head == [2, 1, 1, 77, "fn-handle", False, False, None, None, ("meta",), None, None, None]
    assert (a, b, n, block, flag, scale) == (x.data_ptr(), 1, 3, 16, False, 2.0)
    launch(None, 1, 4)  # None where a tensor was bound (another specialisation): the dispatch, for good
    assert kernel.dispatches[-1][1] == (None, 1, 4) and len(calls) == 1
    launch(x, 1, 5)
    assert len(kernel.dispatches) == 3 and len(calls) == 1
    monkeypatch.setattr(L, "DIRECT", False)  # bound without it: Triton's launcher
    kernel.compiled.run = lambda *args: calls.append(("triton",) + args)
    launch = L.FastLaunch(kernel, (2,), {"BLOCK": 16})
    launch(x, 1, 2)
    launch(x, 1, 3)
    assert calls[-1][0] == "triton" and calls[-1][10] is x


def test_the_dispatch_gets_descriptors_where_callers_pass_bare_tensors(monkeypatch, device):
    # once bound to a raw launch that describes bare tensors (`describes`), a caller passes the
    # tensor in the descriptor's place; a call that takes the dispatch (another device here)
    # must still hand triton.jit a descriptor, described as the first launch's
    from triton.backends.nvidia import driver as nv
    from triton.tools.tensor_descriptor import TensorDescriptor

    monkeypatch.setattr(L, "_encode_descriptor", lambda d, meta: [("CUtensorMap", d.base.data_ptr())])

    def desc_body(D, n):
        """The stand-in kernel's parameters: a descriptor and an int."""

    calls: list = []
    kernel = Kernel()
    kernel.fn = desc_body
    kernel.compiled.run = type("Run", (), {
        "launch": staticmethod(nv.wrap_handle_tensordesc(_c_launch_stand_in(calls), {0: "tensordesc", 1: "i32"},
                                                         [{"swizzle": 128}])),
        "global_scratch_size": 0, "profile_scratch_size": 0, "launch_cooperative_grid": False, "launch_pdl": False,
    })()  # fmt: skip
    launch = L.FastLaunch(kernel, (1,), {})
    t = torch.zeros(32, 16, dtype=torch.bfloat16)
    assert not launch.describes
    launch(TensorDescriptor.from_tensor(t, [16, 16]), 5)  # the dispatch binds the raw launch
    assert launch.describes
    launch(t, 6)  # the raw launch, the bare tensor described
    assert calls[-1][13:] == (("CUtensorMap", t.data_ptr()), 6)
    device["index"] = 1
    launch(t, 7)
    (_, (d, n), _) = kernel.dispatches[-1]
    assert isinstance(d, TensorDescriptor) and d.base is t and d.block_shape == [16, 16] and n == 7


def _bound_kernel(calls: list, n_params: int) -> Kernel:
    """A stand-in kernel of n_params parameters (then BLOCK) whose compiled C launch records."""
    names = ", ".join(f"p{i}" for i in range(n_params))
    scope: dict = {}
    exec(f"def many({names}, BLOCK=8):\n    pass", scope)  # noqa: S102
    kernel = Kernel()
    kernel.fn = scope["many"]
    kernel.compiled.run = type("Run", (), {
        "launch": staticmethod(_c_launch_stand_in(calls)), "global_scratch_size": 0, "profile_scratch_size": 0,
        "launch_cooperative_grid": False, "launch_pdl": True,
    })()  # fmt: skip
    return kernel


def test_a_bound_launch_passes_what_the_raw_launch_would_with_the_free_arguments_replaced(device):
    calls: list = []
    launch = L.FastLaunch(_bound_kernel(calls, 5), (4, 2), {"BLOCK": 32})
    a, b, c, d = (torch.zeros(4) for _ in range(4))
    assert launch.bound((a, 1, b, None, 2.5), (0, 1)) is None  # not bound yet (no dispatch so far)
    launch(a, 1, b, None, 2.5)  # the dispatch binds the raw launch
    run = launch.bound((a, 1, b, None, 2.5), (0, 1))
    launch(c, 9, b, None, 2.5)  # the raw launch, for comparison
    assert run(c, 9) is True
    assert calls[0] == calls[1] and calls[1][13:] == (c.data_ptr(), 9, b.data_ptr(), None, 2.5, 32)
    assert calls[1][:13] == (4, 2, 1, 77, "fn-handle", False, True, None, None, ("meta",), None, None, None)
    device["index"] = 1  # another device, or launch hooks set: the caller takes the full path
    assert run(d, 3) is False and len(calls) == 2
    device["index"], device["hooks"] = 0, True
    assert run(d, 3) is False and len(calls) == 2


def test_a_fused_decode_step_binds_q_out_and_the_new_tokens(device):
    # decode_bound's free positions are those of q, out and the step's k and v in the decode
    # kernel's argument list (_dec_args): a bound step launches what decode_run would
    from attnc.codegen.support import decode as dec

    calls: list = []
    t = lambda: torch.zeros(1, 2, 1, 4)  # noqa: E731  (q: B, H, T = 1, D)
    view = dec.CacheView(t(), t(), t(), t(), t(), t(), 5, ((0, 4),), False, t())
    new = (t(), t(), t(), t())
    scalars = (3, 4, 0.5)
    q, out = t(), t()
    n_args = len(dec._dec_args((None, scalars, {}, None, None, t()), q, view, out, new)[1])
    plan = (L.FastLaunch(_bound_kernel(calls, n_args), (2,), {"BLOCK": 8}), scalars, {}, None, None, t())
    dec.decode_run(plan, q, view, out, new)  # the dispatch binds the raw launch
    run = dec.decode_bound(plan, q, view, new)
    q2, out2, k2, v2 = t(), t(), t(), t()
    new2 = (k2, v2, *new[2:])
    dec.decode_run(plan, q2, view, out2, new2)
    assert run(q2, out2, k2, v2) is True and calls[-1] == calls[-2]
    assert dec.decode_bound((*plan[:4], "a reduce launch", plan[5]), q, view, new) is None


class DependentKernel(Kernel):
    """A stand-in kernel that declares PDL (a launch may make it a programmatic dependent)."""

    arg_names = ("X", "PDL")


def test_kernels_that_declare_pdl_launch_as_programmatic_dependents_on_hopper(monkeypatch, device):
    capability = {"major": 9}
    monkeypatch.setattr(L, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (capability["major"], 0))
    kernel = DependentKernel()
    launch = L.FastLaunch(kernel, (4,), {"BLOCK": 8})
    launch(torch.zeros(2))
    assert kernel.dispatches[0][2] == {"BLOCK": 8, "PDL": True, "launch_pdl": True}
    assert L.FastLaunch(Kernel(), (4,), {"BLOCK": 8}).constants == {"BLOCK": 8}  # no PDL parameter
    capability["major"] = 8  # before Hopper: launched plainly
    assert L.FastLaunch(DependentKernel(), (4,), {}).constants == {}
    monkeypatch.setattr(L, "interpreting", lambda: True)
    capability["major"] = 9
    assert L.FastLaunch(DependentKernel(), (4,), {}).constants == {}
