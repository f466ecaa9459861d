"""Kernel launches and small host-to-device copies with little host time.

`kernel[grid](*args, **constants)` goes through triton.jit's dispatch on every call: it
specialises each argument (dtypes, 16-byte alignment of pointers, ints equal to 1 or
divisible by 16), hashes the specialisation, finds the compiled kernel and launches it; for a
kernel of fifty arguments that is tens of microseconds. A `FastLaunch` does that once, then
calls the compiled kernel directly. It is correct where the caller's memo key fixes every
specialisation its arguments can take (tensors' dtypes and alignment, the values of ints):
the callers make one per memoised plan.

Below the compiled kernel, Triton's launcher still costs microseconds per call: Python that
allocates scratch and expands every host-side TMA descriptor into a freshly encoded
CUtensorMap, then C that asks the driver about every tensor's pointer. `RawLaunch` calls the
C launch itself with tensors as their addresses (an int is taken as it is) and descriptors
encoded once per (address, shape, strides).
A kernel that declares `PDL` (a decode step's) launches as a programmatic dependent on Hopper:
the GPU prepares its launch while the kernel before it runs; its programs wait for that
kernel's writes first (`wait_previous`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import interpreting

try:
    from triton.knobs import runtime as _TRITON_RUNTIME
except ImportError:  # another triton layout: no launch hooks to honour
    _TRITON_RUNTIME = None
try:
    from triton.runtime._allocation import _allocator as _TRITON_ALLOCATOR
except ImportError:  # another triton layout: kernels with global scratch use the process's allocator
    _TRITON_ALLOCATOR = None
try:
    from triton.backends.nvidia.driver import make_tensordesc_arg as _encode_descriptor
except ImportError:  # another triton layout: launches with host-side descriptors keep Triton's launcher
    _encode_descriptor = None

DIRECT = True  # FastLaunch calls the C launch itself (RawLaunch); False: Triton's launcher (benchmarks)


@triton.jit
def wait_previous(PDL: tl.constexpr):
    """The first statement of a kernel that declares PDL: with PDL true (a programmatic
    dependent), wait until the kernel before it on the stream has finished and its writes are
    visible. No early trigger (gdc_launch_dependents): the next kernel still starts when this
    one ends; earlier starts made the steps slower in CUDA graphs (docs/codegen.md)."""
    if PDL:
        tl.extra.cuda.gdc_wait()


def dependent_constants(kernel) -> dict:
    """{"PDL": True, "launch_pdl": True} where `kernel` declares PDL and the current CUDA device
    is Hopper or later (the interpreter runs no inline PTX); otherwise {}."""
    if "PDL" not in getattr(kernel, "arg_names", ()) or interpreting() or not torch.cuda.is_available():
        return {}
    return {"PDL": True, "launch_pdl": True} if torch.cuda.get_device_capability()[0] >= 9 else {}


def int_specialisation(ints: tuple) -> tuple:
    """What triton.jit specialises an int argument on (equal to 1, divisible by 16), for each of
    `ints`: with it in a FastLaunch's memo key, the memoised launch is the one the dispatch
    would pick (the divisibility lets kernels load and store rows in wide vectors)."""
    return tuple((x == 1, x % 16 == 0) for x in ints)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of ints on the host (triton.cdiv is a jit function: microseconds a call)."""
    return -(-a // b)


def pow2_at_least(x: int) -> int:
    """The least power of two >= x (x >= 1) on the host (triton.next_power_of_2 is a
    constexpr function: microseconds a call)."""
    return 1 << (x - 1).bit_length()


def _current_stream():
    """(device index, raw stream) where Triton would launch: the current CUDA device's stream
    (torch.cuda.current_device without its lazy-init check: a bound kernel has run on CUDA)."""
    device = torch._C._cuda_getDevice()
    return device, torch._C._cuda_getCurrentRawStream(device)


_SCRATCH: dict = {}


def scratch(size: int, alignment: int, stream):
    """Triton's allocator for a launch's global scratch (where kernels build their TMA
    descriptors: 128 bytes per descriptor and program). One buffer per (device, stream), grown
    as needed and reused by every launch on that stream, which the stream runs one after
    another; given as its address (an int, which Triton's launcher takes without asking the
    driver about the pointer). A fresh tensor while a CUDA graph is being captured (the
    graph's pool keeps its memory for the replays)."""
    if torch.cuda.is_current_stream_capturing():
        return torch.empty(size, device="cuda", dtype=torch.int8)
    key = (torch._C._cuda_getDevice(), stream)
    got = _SCRATCH.get(key)
    if got is None or got[0].numel() < size:  # torch's blocks are 512-byte aligned, Triton asks for 128
        buf = torch.empty(max(size, 1 << 16), device="cuda", dtype=torch.int8)
        got = _SCRATCH[key] = (buf, buf.data_ptr())
    return got[1]


def _hooks_set() -> bool:
    """Triton's launch hooks (profilers) are set: they need the dispatch's launch metadata."""
    rt = _TRITON_RUNTIME
    if rt is None:
        return False
    enter, leave = rt.launch_enter_hook, rt.launch_exit_hook
    return bool(getattr(enter, "calls", enter)) or bool(getattr(leave, "calls", leave))


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A small host table on `device` without waiting for the GPU: a copy from pageable host
    memory first waits for the stream's queued work (a CUDA rule), which in a model's prefill
    would drain the GPU at every layer's first append; a copy from pinned memory does not (the
    pinned block stays allocated until the copy has run: torch's caching host allocator)."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def table(values, dtype, device) -> torch.Tensor:
    """A small table of Python values (a list, nested lists) on `device`, through to_device."""
    return to_device(torch.tensor(values, dtype=dtype), device)


class RawLaunch:
    """Triton's C launch of one compiled kernel, called without the Python around it: the
    tensors among the arguments go as their addresses (the launcher takes an int as it is,
    without asking the driver about the pointer), and each host-side descriptor expands to
    its encoded CUtensorMap, shape and strides as Triton's wrapper would expand it, encoded
    once per (position, address, shape, strides) (a descriptor is a function of those and of
    the compiled kernel's block and swizzle). In a descriptor's place a caller may pass the
    bare tensor: it is described as the descriptor of the first launch (`dressed`), whose
    shape and strides the caller's memo key fixes. `of` returns None where Triton's launcher
    is not laid out as expected, or the kernel needs scratch: the caller keeps Triton's."""

    __slots__ = ("launch", "flags", "pointers", "addresses", "tail", "descriptors", "encoded")
    ENCODED_MAX = 256  # descriptors remembered per launch (the caching allocator reuses addresses)

    def __init__(self, launch, flags: tuple, pointers: tuple, n_args: int, tail: tuple, descriptors: tuple):
        self.launch = launch
        self.flags = flags  # (cooperative grid, programmatic dependent launch)
        self.pointers = pointers  # positions of the tensor arguments
        self.addresses = _addresses(n_args, pointers, tail)
        self.tail = tail  # the values of the parameters after the positional arguments
        self.descriptors = descriptors  # ((position, Triton's metadata, first descriptor), ...), last first
        self.encoded: dict = {}

    @classmethod
    def of(cls, compiled, args: tuple, tail: tuple = ()):
        """The raw launch of `compiled` for positional arguments laid out as `args`, then the
        parameters' values `tail`. A tensor's position stays a tensor at every call: a None
        there is a constant to Triton, another specialisation, another compiled kernel."""
        run = compiled.run
        fn = getattr(run, "launch", None)
        if fn is None or getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1):
            return None
        code = getattr(fn, "__code__", None)
        if code is None:  # the C launch itself: no descriptor among the arguments
            launch, metas = fn, {}
        else:  # Triton's wrapper that expands descriptors: its launch and where they are
            cells = dict(zip(code.co_freevars, (c.cell_contents for c in fn.__closure__ or ())))
            launch, where, meta = cells.get("launcher"), cells.get("tensordesc_indices"), cells.get("tensordesc_meta")
            if launch is None or where is None or not meta or None in meta or _encode_descriptor is None:
                return None
            metas = dict(zip(sorted(where), meta))
        full = (*args, *tail)
        pointers = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and i not in metas)
        flags = (run.launch_cooperative_grid, run.launch_pdl)
        descriptors = tuple((i, m, full[i]) for i, m in sorted(metas.items(), reverse=True))
        return cls(launch, flags, pointers, len(args), tail, descriptors)

    def dressed(self, args: tuple) -> tuple:
        """args with every bare tensor in a descriptor's place described as the first launch's."""
        a = list(args)
        for i, _, first in self.descriptors:
            if isinstance(a[i], torch.Tensor):
                a[i] = _rebased(first, a[i])
        return tuple(a)

    def __call__(self, grid: tuple, stream, compiled, args: tuple) -> None:
        a = self.addresses(args)
        if self.descriptors:
            a = self._encode(list(a))
        g = grid
        self.launch(g[0], g[1], g[2], stream, compiled.function, *self.flags, None, None, compiled.packed_metadata,
                    None, None, None, *a)  # fmt: skip

    def partial(self, grid: tuple, compiled, args: tuple, free: tuple):
        """go(stream, *values): this launch of `compiled` over `grid` with `args`, but the
        arguments at positions `free` replaced by `values` (tensors there go as their addresses
        at each call; a bare tensor in a descriptor's place as its encoding, remembered per
        address as __call__ does). Every other tensor goes as its address now, every other
        descriptor as its encoding now: the caller guarantees that those very tensors (kept
        alive here) are what each call would pass. One compiled expression."""
        env = {"launch": self.launch, "function": compiled.function, "meta": compiled.packed_metadata,
               "keep": args, "tail": self.tail}  # fmt: skip
        items, names = [], [f"x{j}" for j in range(len(free))]
        described = {i: (meta, first) for i, meta, first in self.descriptors}
        for i, a in enumerate(args):
            if i in described and i in free:  # encoded per address at each call
                env[f"e{i}"] = lambda t, i=i, m=described[i]: self._encoding(i, m[0], m[1], t)  # noqa: E731
                items.append(f"*e{i}({names[free.index(i)]})")
            elif i in described:  # encoded now
                env[f"c{i}"] = self._encoding(i, *described[i], a)
                items.append(f"*c{i}")
            elif i in free:
                name = names[free.index(i)]
                items.append(f"{name}.data_ptr()" if i in self.pointers else name)
            elif i in self.pointers:
                items.append(str(a.data_ptr()))
            else:
                env[f"c{i}"] = a
                items.append(f"c{i}")
        head = f"{grid[0]}, {grid[1]}, {grid[2]}, stream, function, {self.flags[0]}, {self.flags[1]}, None, None, meta"
        body = f"launch({head}, None, None, None, {', '.join(items)}{', ' if items else ''}*tail)"
        return eval(f"lambda stream, {', '.join(names)}: {body}", env)  # noqa: S307

    def _encode(self, a: list) -> list:
        """a with each descriptor (or bare tensor in its place) expanded to its encoding."""
        for i, meta, first in self.descriptors:
            a[i : i + 1] = self._encoding(i, meta, first, a[i])
        return a

    def _encoding(self, i: int, meta, first, d) -> list:
        """The encoding of descriptor d at position i (a bare tensor: described as `first`),
        remembered per (position, address, shape, strides)."""
        bare = type(d) is torch.Tensor
        key = (i, d.data_ptr()) if bare else (i, d.base.data_ptr(), *d.shape, *d.strides)
        enc = self.encoded.get(key)
        if enc is None:
            if len(self.encoded) >= self.ENCODED_MAX:
                self.encoded.clear()
            enc = self.encoded[key] = _encode_descriptor(_rebased(first, d) if bare else d, meta)
        return enc


def _rebased(desc, base):
    """A copy of host-side descriptor `desc` over the tensor `base` (same shape, strides, block)."""
    d = object.__new__(type(desc))
    d.__dict__.update(desc.__dict__)
    d.base = base
    return d


def _addresses(n_args: int, pointers: tuple, tail: tuple):
    """args -> (*args with the tensors at `pointers` as their addresses, *tail): one compiled
    expression per layout (a loop over the arguments would cost more than the launch saves)."""
    items = ", ".join(f"a[{i}].data_ptr()" if i in pointers else f"a[{i}]" for i in range(n_args))
    return eval(f"lambda a, tail=tail: ({items}{', ' if n_args else ''}*tail)", {"tail": tail})  # noqa: S307


class FastLaunch:
    """launch(*args): kernel[grid](*args, **constants) the first time, then the compiled kernel
    directly (the positional args first, the constants after them in the kernel's parameter
    order, as triton.jit binds them). Under the interpreter, or with launch hooks set, every
    call takes the dispatch. Returns what the dispatch returned (the compiled kernel). A kernel
    that declares PDL launches as a programmatic dependent (dependent_constants). A kernel
    that needs global scratch (descriptors built on the device) gets it from `scratch`, set
    for its launches only."""

    __slots__ = ("kernel", "grid", "constants", "compiled", "tail", "device", "grid3", "scratch", "raw")

    def __init__(self, kernel, grid: tuple, constants: dict):
        self.kernel = kernel
        self.grid = grid
        self.constants = constants | dependent_constants(kernel)
        self.compiled = None
        self.tail = ()
        self.device = None
        self.grid3 = (*grid, 1, 1)[:3]
        self.scratch = False
        self.raw = None

    @property
    def describes(self) -> bool:
        """Bound to a raw launch that takes bare tensors in its descriptors' places."""
        return self.raw is not None and bool(self.raw.descriptors)

    def __call__(self, *args):
        c = self.compiled
        if c is not None:
            device, stream = _current_stream()
            if device == self.device and not _hooks_set():
                g = self.grid3
                token = _TRITON_ALLOCATOR.set(scratch) if self.scratch else None
                try:
                    if self.raw is not None:
                        self.raw(g, stream, c, args)
                        return c
                    c.run(g[0], g[1], g[2], stream, c.function, c.packed_metadata, None, None, None, *args, *self.tail)
                    return c
                except (TypeError, AttributeError):  # arguments laid out otherwise than bound: the dispatch from now on
                    self.compiled, self.device = None, False
                finally:
                    if token is not None:
                        _TRITON_ALLOCATOR.reset(token)
        if self.raw is not None and self.raw.descriptors:  # the dispatch needs descriptors, not bare tensors
            args = self.raw.dressed(args)
            if self.device is False:
                self.raw = None
        token = _TRITON_ALLOCATOR.set(scratch) if _TRITON_ALLOCATOR is not None else None
        try:
            got = self.kernel[self.grid](*args, **self.constants)
        finally:
            if token is not None:
                _TRITON_ALLOCATOR.reset(token)
        if self.device is None and getattr(got, "function", None) is not None and hasattr(got, "packed_metadata"):
            self._bind(got, args)
        return got

    def bound(self, args: tuple, free: tuple):
        """run(*values) -> bool: this launch with `args`, but the arguments at positions `free`
        replaced by `values`, straight to the C launch (RawLaunch.partial); False where a call
        must take the full path (another device, launch hooks set). None where the launch is
        not bound to a raw launch. The caller's memo must fix every other argument: the very
        tensors (their addresses are taken now) and values; descriptors' places take bare
        tensors (described as at the first launch)."""
        raw = self.raw
        if self.compiled is None or raw is None:
            return None
        go = raw.partial(self.grid3, self.compiled, args, free)
        device = self.device

        def run(*values) -> bool:
            dev, stream = _current_stream()
            if dev != device or _hooks_set():
                return False
            go(stream, *values)
            return True

        return run

    def _bind(self, compiled, args: tuple) -> None:
        """Remember the compiled kernel, the values of the parameters after the positional
        arguments and its raw launch; stay on the dispatch when the parameters cannot be
        bound so."""
        n_args = len(args)
        fn = self.kernel.fn
        code = fn.__code__
        names = code.co_varnames[: code.co_argcount]
        defaults = dict(zip(names[len(names) - len(fn.__defaults__ or ()) :], fn.__defaults__ or ()))
        tail = []
        for name in names[n_args:]:
            if name in self.constants:
                tail.append(self.constants[name])
            elif name in defaults:
                tail.append(defaults[name])
            else:
                self.device = False
                return
        self.tail = tuple(tail)
        self.device = _current_stream()[0]
        needs = getattr(getattr(compiled, "metadata", None), "global_scratch_size", 0)
        self.scratch = bool(needs) and _TRITON_ALLOCATOR is not None
        self.raw = RawLaunch.of(compiled, args, self.tail) if DIRECT and not self.scratch else None
        self.compiled = compiled
