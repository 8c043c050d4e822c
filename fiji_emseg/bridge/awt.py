"""Running window changes on the AWT event thread.

Fiji runs scripts on a SciJava worker thread; AWT/Swing components must only be created and
changed on the event-dispatch thread, so every "show" in the bridge goes through here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .jvm import jclass

__all__ = ["run_on_edt"]

_log = logging.getLogger(__name__)


def run_on_edt(fn: Callable[[], None], wait: bool = False) -> None:
    """Run ``fn`` on the AWT event thread; with ``wait`` block until it ran and re-raise its error.

    Without ``wait`` an error in ``fn`` is logged (there is nobody to raise it to).
    """
    from jpype import JProxy

    event_queue = jclass("java.awt.EventQueue")
    if event_queue.isDispatchThread():
        fn()
        return
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - must not escape into the AWT thread
            if wait:
                errors.append(exc)
            else:
                _log.exception("error on the AWT event thread")

    runnable = JProxy("java.lang.Runnable", {"run": run})
    if wait:
        event_queue.invokeAndWait(runnable)
        if errors:
            raise errors[0]
    else:
        event_queue.invokeLater(runnable)
