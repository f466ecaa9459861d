"""Input checks of generated modules: one bad input per test, each a clear Python error."""

from __future__ import annotations

import pytest

from tests.strategies import op, prim
import torch

from tests.test_codegen_support import assert_close, grouped, inputs, load, single

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SW = op("&", prim("causal"), op("|", prim("sink", size=4), prim("window", size=8)))


@pytest.fixture(scope="module")
def mod():
    return load(single(SW, "checks"))


@pytest.fixture(scope="module")
def per_head():
    a, b = prim("causal"), op("&", prim("causal"), prim("window", size=4))
    return load(grouped([[a, b, a, b], [b, b, a, a]], "per_head", kv_heads=2))


def qkv(**kw):
    return inputs(**{**dict(b=1, h=2, h_kv=1, n=20, d=16), **kw})


def test_rank(mod):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"rank 4 .*q.shape=\(2, 20, 16\)"):
        mod.prefill(q[0], k, v)


def test_not_a_tensor(mod):
    q, k, v = qkv()
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        mod.prefill(q, k.numpy(), v)


def test_unsupported_dtype(mod):
    q, k, v = qkv()
    with pytest.raises(TypeError, match="float16, bfloat16, float32"):
        mod.prefill(q.double(), k.double(), v.double())


def test_mixed_dtypes(mod):
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"k.dtype=torch.float16"):
        mod.prefill(q, k.half(), v)


def test_device(mod, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = qkv()
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        mod.prefill(q, k, v)


def test_meta_device_mismatch(mod):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="one device"):
        mod.prefill(q, k.to("meta"), v)


def test_sequence_lengths_differ(mod):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"seq=20"):
        mod.prefill(q, k[:, :, :10], v[:, :, :10])


def test_k_v_shapes_differ(mod):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        mod.prefill(q, k, v[..., :8])


def test_batch_differs(mod):
    q, k, v = qkv(b=2)
    with pytest.raises(ValueError, match="batch=2"):
        mod.prefill(q, k[:1], v[:1])


def test_gqa_heads_do_not_divide(mod):
    q, k, v = qkv(h=3, h_kv=2)
    with pytest.raises(ValueError, match="H=3 query heads and H_KV=2"):
        mod.prefill(q, k, v)


def test_head_dim(mod):
    q, k, v = qkv(d=24)
    with pytest.raises(ValueError, match=r"head_dim must be one of .* D=24"):
        mod.prefill(q, k, v)


def test_last_dim_stride(mod):
    q, k, v = qkv()
    qt = q.transpose(-1, -2).contiguous().transpose(-1, -2)
    with pytest.raises(ValueError, match=r"q must have a contiguous last dimension .*contiguous\(\)"):
        mod.prefill(qt, k, v)


def test_head_count_of_per_head_pattern(per_head):
    q, k, v = qkv(h=2, h_kv=1)
    with pytest.raises(ValueError, match="4 query heads; got H=2"):
        per_head.prefill(q, k, v, layer=0)


def test_layer_required(per_head):
    q, k, v = qkv(h=4, h_kv=2)
    with pytest.raises(ValueError, match=r"differs between layers: pass layer="):
        per_head.prefill(q, k, v)


def test_layer_out_of_range(per_head):
    q, k, v = qkv(h=4, h_kv=2)
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 2\); got layer=2"):
        per_head.prefill(q, k, v, layer=2)


def test_layer_out_of_range_for_uniform_pattern(mod):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"got layer=-1"):
        mod.prefill(q, k, v, layer=-1)


def test_reference_checks_too(mod):
    q, k, v = qkv(h=3, h_kv=2)
    with pytest.raises(ValueError, match="H_KV=2"):
        mod.reference(q, k, v)


def test_a_call_like_an_earlier_one_takes_the_memo_and_is_still_checked(mod, monkeypatch):
    # the first call plans and remembers; a second one with the same shapes, strides, dtypes and
    # devices launches the remembered plan (no new plan); one that differs in anything the
    # checks read is refused as on a first call, before any launch
    q, k, v = qkv(n=24)
    mod.prefill(q, k, v)
    launches = []
    launch = mod.FastLaunch.__call__
    monkeypatch.setattr(mod.FastLaunch, "__call__", lambda self, *a: launches.append(1) or launch(self, *a))
    monkeypatch.setattr(mod, "_plan", lambda *a, **kw: pytest.fail("a call like an earlier one was planned again"))
    q2, k2, v2 = inputs(1, 2, 1, 24, 16, seed=1)
    out = mod.prefill_fast(mod._PREFILL, q2, k2, v2, None, False, None, None)  # the memo's path itself
    assert out is not None and len(launches) == 1
    assert_close(out, mod.reference(q2, k2, v2), torch.float32)
    assert_close(mod.prefill(q2, k2, v2), out, torch.float32)
    bad = [
        ((q2, k2.half(), v2), TypeError, r"k.dtype=torch.float16"),
        ((q2.double(), k2.double(), v2.double()), TypeError, "float16, bfloat16, float32"),
        ((q2, k2.to("meta"), v2), ValueError, "one device"),
        ((q2, k2[:, :, :20], v2[:, :, :20]), ValueError, r"seq=24"),
        ((q2, k2.transpose(-1, -2).contiguous().transpose(-1, -2), v2), ValueError, "contiguous last dimension"),
        ((q2, k2.numpy(), v2), TypeError, "k must be a torch.Tensor"),
        ((q2[0], k2, v2), ValueError, "rank 4"),
    ]
    for args, error, message in bad:
        with pytest.raises(error, match=message):
            mod.prefill(*args)
    assert len(launches) == 2
