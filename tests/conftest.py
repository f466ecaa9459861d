"""Suite-wide settings: hypothesis profiles, the `exhaustive` marker, one module cache per session.

Hypothesis profiles (choose with `pytest --hypothesis-profile=NAME`):
  ci        the default: the example counts that the tests declare through
            `tests.strategies.examples(n)`, sized to keep `make test` cheap.
  thorough  ten times as many examples everywhere; `make test-all` uses it.

Tests marked `@pytest.mark.exhaustive` (large sweeps, the full-size pattern files) are
deselected by pyproject's addopts; `make test-all` runs them (`-m ""`).
"""

from __future__ import annotations

import os
import tempfile

# One thread per process for numpy's BLAS and torch's pools, set before either is imported: the
# tests' tensors are tiny, and `make test` runs two xdist workers on two cores, where a pool's
# threads spin-waiting beside the other worker slow it far more than they ever help.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _patch_the_language_once_per_launch() -> None:
    """Triton's interpreter patches the language modules a @triton.jit function sees (a scan of
    all their members) at every call of a helper inside a kernel, tl.sum and tl.zeros among
    them, and never undoes those patches (only the launch's own, when it ends): the kernels
    here call helpers in their inner loops. This patches each module once per launch and
    skips the repeats, which would find every builtin patched already; what the kernels
    compute is unchanged. A Triton without these internals is left alone."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    patch, empty = getattr(interpreter, "_patch_lang", None), getattr(interpreter, "_LangPatchScope", None)
    if patch is None or empty is None or getattr(patch, "once_per_launch", False):
        return
    launches: list[set] = []  # the language modules patched within each running launch

    def patch_lang(fn):
        seen = {id(v) for v in fn.__globals__.values() if isinstance(v, type(tl)) and v in (tl, tl.core)}
        if launches and seen and seen <= launches[-1]:
            return empty()  # a helper of the running launch: its modules are patched already
        scope = patch(fn)
        if launches:  # a helper that sees another module: patched as Triton does, for good
            launches[-1] |= seen
            return scope
        restore = scope.restore

        def restore_and_end():
            launches.pop()
            restore()

        scope.restore = restore_and_end
        launches.append(seen)
        return scope

    patch_lang.once_per_launch = True
    interpreter._patch_lang = patch_lang


_patch_the_language_once_per_launch()


def _skip_overflow_conditions_nobody_checks() -> None:
    """With `sanitize_overflow` on (the interpreter's default), every 32-bit integer +, - and *
    of a kernel is computed again in 64 bits and compared with the type's range, and the
    condition goes to tl.device_assert, which drops it unless the options' `debug` is on: the
    interpreter's never is. That dead work is about a third of the interpreter's time on the
    kernels here; with `debug` off it is switched off, which leaves every result and every
    check as they were. A Triton without these internals, or with `debug` on, is left alone."""
    import dataclasses

    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if not dataclasses.is_dataclass(options) or getattr(options, "debug", True):
        return
    if getattr(options, "sanitize_overflow", False):
        builder.options = dataclasses.replace(options, sanitize_overflow=False)


_skip_overflow_conditions_nobody_checks()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _draw_constants_from_the_project_alone() -> None:
    """Hypothesis draws some integers from the constants of the "local" modules in
    sys.modules, which it finds by parsing each new one's source before a test's draws. The
    tests import a few hundred generated modules (about 250 KB of text each) from temporary
    folders; parsing them all costs about a minute of CPU per suite. This keeps the modules of
    this repository (the compiler's own constants) and leaves the generated ones out; what
    the tests check is unchanged. A Hypothesis without these internals is left alone."""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:
        return
    is_local = getattr(providers, "is_local_module_file", None)
    if is_local is None or getattr(is_local, "project_alone", False):
        return

    def in_the_project(path: str) -> bool:
        return os.path.abspath(path).startswith(ROOT + os.sep) and is_local(path)

    in_the_project.project_alone = True
    providers.is_local_module_file = in_the_project


_draw_constants_from_the_project_alone()

# Modules that the tests compile through attnc.load / write_module without a folder of their
# own land in one cache per session (and per xdist worker), shared by every test of it, never
# in the user's cache.
os.environ["ATTNC_CACHE"] = tempfile.mkdtemp(prefix="attnc-test-cache-")


@pytest.fixture
def predicate_pairs(monkeypatch):
    """A counter of the (query, key) pairs on which any term of any pattern is evaluated
    while the test runs (`predicate_pairs.count`): a measure of an analysis' work that does
    not depend on the machine, for tests that guard that it stays far from enumerating N x N."""
    from attnc.compiler.ir import Term

    class Counter:
        count = 0

    counter = Counter()
    holds = Term.holds

    def counting(self, q, k):
        counter.count += int(np.prod(np.broadcast_shapes(np.shape(q), np.shape(k)), dtype=np.int64))
        return holds(self, q, k)

    monkeypatch.setattr(Term, "holds", counting)
    return counter
