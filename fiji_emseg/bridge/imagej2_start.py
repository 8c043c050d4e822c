"""Tell SciJava's intermittent start-up race apart from a Fiji that cannot start.

``net.imagej.ImageJ()`` builds a SciJava Context, whose ServiceHelper injects each service's
``@Parameter`` fields from ``ClassUtils``' annotation caches. Those caches are plain HashMaps
filled without a common lock (scijava-common issue #347, open since 2018): when another thread
fills them at the same moment, a service can come out with no fields injected, and the start fails
with ``Invalid service: <some service>`` caused by a ``NullContextException`` (seen once in our
CI, for ``LegacyImageDisplayService``, in an interactive start under Xvfb; 0 of 43 such starts
here, idle or with both cores busy) or a ``ConcurrentModificationException`` (the symptom
reported upstream). The same Fiji starts the next time. A JVM cannot be started twice in one
process, so the only mend is a fresh process; this module tells the callers (``emseg fiji
launch``, the test driver of the real ImageJ2) when that is the right advice instead of "check
your Fiji".
"""

from __future__ import annotations

from typing import Any

__all__ = ["START_RACE_ISSUE", "is_start_race"]

START_RACE_ISSUE = "https://github.com/scijava/scijava-common/issues/347"

# The causes that mean "a service's fields were not injected" rather than "a service is broken".
_RACE_CAUSES = frozenset({"org.scijava.NullContextException", "java.util.ConcurrentModificationException"})


def is_start_race(exc: BaseException | Any) -> bool:
    """True when ``exc`` (what ``imagej.init`` raised) is SciJava's start-up race, not a broken Fiji.

    The signature: a Java ``IllegalArgumentException`` "Invalid service: ..." from the Context's
    service loading whose direct cause is one of the race's two symptoms. A broken installation
    fails differently (``ExceptionInInitializerError``, ``NoSuchMethodError``, "No match: ..."),
    so it is never retried.
    """
    get_cause = getattr(exc, "getCause", None)  # only Java exceptions (JPype) have it
    get_class = getattr(exc, "getClass", None)
    if get_cause is None or get_class is None:
        return False
    if str(get_class().getName()) != "java.lang.IllegalArgumentException":
        return False
    if not str(exc.getMessage() or "").startswith("Invalid service: "):
        return False
    cause = get_cause()
    return cause is not None and str(cause.getClass().getName()) in _RACE_CAUSES
