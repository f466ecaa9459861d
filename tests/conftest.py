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

from tests.interpreter_speed import speed_up_the_interpreter  # noqa: E402

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


speed_up_the_interpreter()

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
