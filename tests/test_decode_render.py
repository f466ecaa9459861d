"""The decode templates as text: they render with StrictUndefined for every kind of plan, the
result is valid Python that needs only torch and triton, and the two includes work inside the
module template (module.py.j2) the way the codegen will include them."""

from __future__ import annotations

import ast

import torch

from test_decode_support import causal, chunk, policy, program, rand, sink, stride, window

from attnc.codegen.decode_plan import decode_context, plan_decode
from attnc.codegen import support
from attnc.codegen.importing import import_module_from_path
from attnc.codegen.writer import render_decode_module
from attnc.compiler.lower import lower_expr
from strategies import prim

PROGRAMS = [
    program(causal()),
    program(causal(sink(4), window(8)), cache=[policy(positions="rerotate")]),
    program([causal(stride(4, 1), window(3)), causal(chunk(6))] * 2),
    program(
        causal(),
        layers=3,
        cache=[
            policy(("linear", 16, 8), sink=1, score="snapkv", window=4, kernel=3),
            policy(("adaptive", 12), sink=1, score="snapkv", window=4, layers=[2]),
            policy(9, recent=2, score="h2o", kv_heads=[1], layers=[0]),
            policy(9, score="tova", aggregate="max", layers=[1]),
            policy(9, score="key_norm", timing="decode", layers=[1], kv_heads=[0]),
        ],
    ),
]


def test_rendered_modules_are_python_with_torch_and_triton_only():
    for prog in PROGRAMS:
        text = render_decode_module(plan_decode(prog))
        tree = ast.parse(text)
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert imported <= support.IMPORTS, imported
        assert "attnc" not in imported


def test_one_registry_of_eviction_scores():
    """The scores the language accepts (spec/cache.py) are the registry's (codegen/support/
    policies.py), which the generated module inlines and the plan checks against."""
    from attnc.codegen.support.policies import SCORERS
    from attnc.spec.cache import SCORES

    assert set(SCORES) == set(SCORERS)
    text = render_decode_module(plan_decode(PROGRAMS[3]))
    assert text.count("SCORERS: dict = {") == 1
    for name in SCORERS:
        assert f"def score_{name}(" in text


def test_no_decode_for_non_causal_patterns():
    assert decode_context(program(lower_expr(prim("window", left=2, right=2)))) == {"dp": None}


def test_module_template_includes_decode_and_cache(tmp_path):
    """module.py.j2 includes decode.py.j2 and cache.py.j2 when the pattern can decode."""
    from attnc.codegen import writer

    prog = PROGRAMS[1]
    text = writer.render_module(prog)
    assert "def decode_reference(" in text and "class Cache" in text
    path = tmp_path / "with_decode.py"
    path.write_text(text)
    mod = import_module_from_path(path, f"attnc_with_decode_{prog.digest()}")
    assert callable(mod.prefill) and callable(mod.decode)
    cache = mod.Cache(1, dtype=torch.float32)
    k, q = rand(1, 2, 14, 16), rand(1, 4, 14, 16, seed=1)
    cache.append(0, k, k)
    torch.testing.assert_close(cache.decode(0, q[:, :, 13:]), mod.decode_reference(q[:, :, 13:], cache.view(0)))
    # the prefill kernel over the same keys agrees on the last row (one pattern, two kernels)
    full = mod.prefill(q, k, k)
    torch.testing.assert_close(cache.decode(0, q[:, :, 13:]), full[:, :, 13:], atol=1e-5, rtol=0)
