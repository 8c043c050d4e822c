"""Suite-wide isolation from the user's machine state.

Every training run writes its measured step time to the step-time cache that plans read
(:mod:`fiji_emseg.engine.training.step_probe`). Pointed at the home folder, the suite would fill a
developer's cache with its tiny networks and read whatever an earlier suite or a real run left
there. One private cache per session (subprocesses inherit it) starts every suite from nothing;
within the session, probes are shared as before. Tests that check the cache itself give
themselves their own folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_step_time_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    before = os.environ.get("EMSEG_CACHE_DIR")
    os.environ["EMSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("emseg_cache"))
    yield
    if before is None:
        os.environ.pop("EMSEG_CACHE_DIR", None)
    else:
        os.environ["EMSEG_CACHE_DIR"] = before
