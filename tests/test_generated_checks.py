"""Argument checks of every generated function (decode, decode_reference, Cache, prefill,
mask): each bad argument is a Python error that names it, raised before a kernel touches
memory; and the checks are one helper (codegen/support/checks.py), tested directly here."""

from __future__ import annotations

import pytest
import torch

from test_decode_support import causal, module, program, rand, sink, window

from attnc.codegen.support import checks
from tests.strategies import op, prim
from tests.test_codegen_support import load, single

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROG = program(causal(sink(2), window(4)))  # 4 query heads, 2 KV heads, head_dim 16
B, H, HK, D = 1, 4, 2, 16


@pytest.fixture(scope="module")
def mod():
    return module(PROG)[1]


@pytest.fixture()
def filled(mod):
    """A cache of one layer holding 6 tokens, and the queries of the newest one."""
    cache = mod.Cache(B, dtype=torch.float32)
    k = rand(B, HK, 6, D)
    cache.append(0, k, k)
    return cache, rand(B, H, 1, D, seed=1)


# ------------------------------------------------------------------ decode


def test_decode_refuses_a_too_small_out_before_writing(mod, filled):
    cache, q = filled
    big = torch.full((B * H * D,), 7.0)
    out = big[: B * H * D // 2].view(B, H // 2, 1, D)  # half of what decode writes
    with pytest.raises(ValueError, match=r"decode: out must be \(B=1, H=4, T=1, D=16\)"):
        mod.decode(q, cache.view(0), out=out)
    assert bool((big == 7.0).all())  # nothing written, not even past the end of out


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda q: q.new_empty(q.shape, dtype=torch.float16), "out is torch.float16"),
        (lambda q: q.new_empty((B, H, 1, 2 * D))[..., ::2], "out must be contiguous"),
        (lambda q: q.numpy(), "out must be a torch.Tensor"),
    ],
)
def test_decode_checks_out(mod, filled, bad, message):
    cache, q = filled
    with pytest.raises((TypeError, ValueError), match=message):
        mod.decode(q, cache.view(0), out=bad(q))


def test_decode_writes_into_a_good_out(mod, filled):
    cache, q = filled
    out = torch.empty_like(q)
    assert mod.decode(q, cache.view(0), out=out) is out
    torch.testing.assert_close(out, mod.decode_reference(q, cache.view(0)))


@pytest.mark.parametrize("fn", ["decode", "decode_reference"])
def test_rank_3_q_names_the_argument(mod, filled, fn):
    cache, q = filled
    with pytest.raises(ValueError, match=rf"{fn}: q must have rank 4 \(B, H, T, D\); got q.shape=\(4, 1, 16\)"):
        getattr(mod, fn)(q[0], cache.view(0))


@pytest.mark.parametrize("fn", ["decode", "decode_reference"])
@pytest.mark.parametrize(
    "scale, error", [(-1.0, ValueError), (float("nan"), ValueError), (0.0, ValueError), ("x", TypeError)]
)
def test_sm_scale(mod, filled, fn, scale, error):
    cache, q = filled
    with pytest.raises(error, match="sm_scale"):
        getattr(mod, fn)(q, cache.view(0), sm_scale=scale)


def test_decode_checks_q_against_the_cache(mod, filled):
    cache, q = filled
    with pytest.raises(ValueError, match=r"q must be \(B=1, H, T, D=16\).*D=32"):
        mod.decode(rand(B, H, 1, 32), cache.view(0))
    with pytest.raises(ValueError, match=r"q must be \(B=1.*B=2"):
        mod.decode(rand(2, H, 1, D), cache.view(0))
    with pytest.raises(TypeError, match="q is torch.float64"):
        mod.decode(q.double(), cache.view(0))
    with pytest.raises(ValueError, match="q is on meta"):
        mod.decode(q.to("meta"), cache.view(0))


def test_decode_checks_view_split_and_config(mod, filled):
    cache, q = filled
    with pytest.raises(TypeError, match="view must be the CacheView"):
        mod.decode(q, tuple(cache.view(0)))
    with pytest.raises(ValueError, match=r"split must be an int >= 1; got split=0"):
        mod.decode(q, cache.view(0), split=0)
    with pytest.raises(TypeError, match="config must be a DecodeConfig"):
        mod.decode(q, cache.view(0), config={"block_n": 16})


def test_decode_on_the_cpu_without_the_interpreter_says_what_to_do(mod, filled, monkeypatch):
    cache, q = filled
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"TRITON_INTERPRET=1.*decode_reference\(\) runs anywhere"):
        mod.decode(q, cache.view(0))


# ------------------------------------------------------------------ Cache


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtype=torch.int32), "dtype must be one of float16, bfloat16, float32, float64"),
        (dict(head_dim=24), r"head_dim must be one of \(16, 32, 64, 128, 256\)"),
        (dict(device="nonsense"), "device must be a torch.device"),
        (dict(max_len=0), "max_len must be a positive int"),
        (dict(backend="cuda"), "backend is 'triton' or 'torch'"),
    ],
)
def test_cache_is_checked_when_built(mod, kwargs, message):
    with pytest.raises(mod.CacheError, match=message):
        mod.Cache(B, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cache_on_cuda_without_cuda(mod):
    with pytest.raises(mod.CacheError, match="CUDA is not available"):
        mod.Cache(B, device="cuda")


def test_cache_on_the_cpu_without_the_interpreter_says_what_to_do(mod, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(mod.CacheError, match=r"TRITON_INTERPRET=1.*backend='torch'"):
        mod.Cache(B, dtype=torch.float32)
    mod.Cache(B, dtype=torch.float32, backend="torch")  # the torch backend runs anywhere


def test_cache_append_checks(mod):
    cache = mod.Cache(B, dtype=torch.float32)
    k = rand(B, HK, 3, D)
    with pytest.raises(mod.CacheError, match=r"append: q must be \(B=1, H=4, T=3, D=16\)"):
        cache.append(0, k, k, q=rand(B, H, 2, D))
    with pytest.raises(mod.CacheError, match="append: k must have rank 4"):
        cache.append(0, k[0], k)
    with pytest.raises(ValueError, match="sm_scale must be a positive number"):
        cache.append(0, k, k, sm_scale=-2.0)
    with pytest.raises(mod.CacheError, match="k is on meta"):
        cache.append(0, k.to("meta"), k.to("meta"))
    assert cache.seen(0) == 0  # nothing was stored by the refused appends
    with pytest.raises(mod.CacheError, match="layer must be an int"):
        cache.append(True, k, k)
    with pytest.raises(mod.CacheError, match="T must be an int in 1..0"):
        cache.query_positions(0, 1)


# ------------------------------------------------------------------ prefill and mask


SW = op("&", prim("causal"), op("|", prim("sink", size=4), prim("window", size=8)))


@pytest.fixture(scope="module")
def pre():
    return load(single(SW, "gen_checks"))


@pytest.mark.parametrize("fn", ["prefill", "reference"])
@pytest.mark.parametrize("scale", [-1.0, float("inf")])
def test_prefill_scale(pre, fn, scale):
    q = rand(1, 2, 8, 16)
    with pytest.raises(ValueError, match=rf"{fn}: scale must be a positive number"):
        getattr(pre, fn)(q, q, q, scale=scale)


def test_reference_names_itself(pre):
    q = rand(1, 2, 8, 16)
    with pytest.raises(ValueError, match=r"reference: q must have rank 4"):
        pre.reference(q[0], q, q)


def test_mask_checks(pre):
    with pytest.raises(ValueError, match="mask: n must be an int >= 0; got n=-1"):
        pre.mask(-1)
    with pytest.raises(ValueError, match=r"mask: layer must be an int in \[0, 1\); got layer=3"):
        pre.mask(4, layer=3)
    assert pre.mask(4, heads=2).shape == (2, 4, 4)


# ------------------------------------------------------------------ the helper itself


def test_check_tensor_messages():
    t = torch.zeros(2, 3)
    assert checks.check_tensor("f", "x", t, dims="A, B", shape=(2, None)) is t
    with pytest.raises(ValueError, match=r"f: x must be \(A=2, B=4\); got x.shape=\(2, 3\) \(B=3, expected 4\)"):
        checks.check_tensor("f", "x", t, dims="A, B", shape=(2, 4))
    with pytest.raises(TypeError, match="x must be one of float16, bfloat16"):
        checks.check_tensor("f", "x", t, dims="A, B", dtypes=checks.KERNEL_DTYPES[:2])
    with pytest.raises(KeyError):
        checks.check_tensor("f", "x", t, dims="A", error=KeyError)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        checks.check_tensor("f", "x", t.t(), dims="A, B", last_contiguous=True)


def test_check_scale_and_int():
    assert checks.check_scale("f", None, 16) == 0.25
    assert checks.check_scale("f", 2, 16) == 2.0
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            checks.check_scale("f", bad, 16)
    for bad in (True, 1.0, -1, 5):
        with pytest.raises(ValueError):
            checks.check_int("f", "n", bad, 0, 5)
