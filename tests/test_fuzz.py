"""Fuzzed input files: a clean EmsegError or a correct result, never anything else (issue 14).

Hypothesis draws the mutations (fixed seed, bounded number of examples, so CI is reproducible
and takes well under a minute); each case runs in a worker process (``fuzz_harness.Runner``) so
that a hang is seen as a hang and a crashing C library cannot take the test run with it. A
failing case is shrunk by hypothesis to a small mutation and printed with the worker's traceback.
``benchmarks/fuzz_long.py`` runs the same harness on 10 000 cases.
"""

from __future__ import annotations

from collections.abc import Iterator

import fuzz_harness as fh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

EXAMPLES_PER_KIND = 100


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[fh.Runner, dict[str, fh.Seed]]]:
    folder = tmp_path_factory.mktemp("fuzz")
    seeds = fh.make_seeds(folder)
    runner = fh.Runner(folder, timeout=60.0)
    try:
        fh.warm_up(runner, seeds)  # the oracle: every clean seed reads and predicts correctly
        yield runner, seeds
    finally:
        runner.close()


class _DrawChooser:
    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def int(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", fh.KINDS)
def test_mutated_files_give_a_clean_error_or_the_right_shape(fuzz_env: tuple[fh.Runner, dict[str, fh.Seed]],
                                                             kind: str) -> None:
    runner, seeds = fuzz_env
    seed_file = seeds[kind]
    count = {"n": 0}

    @hypothesis_seed(14)
    @settings(max_examples=EXAMPLES_PER_KIND, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data: st.DataObject) -> None:
        mutated = fh.mutate(seed_file, _DrawChooser(data))
        count["n"] += 1
        outcome, detail = runner.run(seed_file, mutated, predict=count["n"] % 4 == 0)
        assert outcome in ("clean", "correct"), f"{kind}: {outcome}: {detail}"

    check()
