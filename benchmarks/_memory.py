"""Memory of this process, sampled on a thread: the one sampler of benchmarks/ and tests/.

Standard library only, so a test's child process can import it by path
(``sys.path.insert(0, "benchmarks")``) without importing the rest of the benchmarks.

Two quantities, chosen per use:

- ``"anon"``: anonymous resident memory (RssAnon + RssShmem). The number that says whether a
  process *holds* data: pages of a memory-mapped input count in RSS and ``VmHWM`` once touched,
  but they are clean file cache that the kernel drops under pressure.
- ``"rss"``: the whole resident set (VmRSS), what a user sees in ``top``.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Literal, final

__all__ = ["MemoryPeak", "peak_rss_mib", "rss_breakdown_mib"]


def rss_breakdown_mib() -> dict[str, float]:
    """Current RSS split into anonymous and file-backed pages (MiB), from /proc/self/status."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                    out[key] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (``VmHWM``; ``ru_maxrss`` where /proc is absent)."""
    hwm = rss_breakdown_mib().get("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


@final
class MemoryPeak:
    """``with MemoryPeak("anon") as m: ...`` → ``m.start`` and ``m.peak`` in MiB.

    Sampled every *interval* seconds on a daemon thread, and once more on entry and exit, so a
    short block is still measured.
    """

    def __init__(self, kind: Literal["anon", "rss"] = "anon", interval: float = 0.001) -> None:
        if kind not in ("anon", "rss"):
            raise ValueError(f"kind must be 'anon' or 'rss', got {kind!r}")
        self.kind = kind
        self.start = 0.0
        self.peak = 0.0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        b = rss_breakdown_mib()
        if self.kind == "rss":
            return b.get("VmRSS", 0.0)
        return b.get("RssAnon", b.get("VmRSS", 0.0)) + b.get("RssShmem", 0.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self._interval)

    def __enter__(self) -> MemoryPeak:
        self.start = self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())
