"""Long work outside a page's script thread: one function in a daemon thread, with its
latest progress event and its outcome for the page to poll. No Streamlit here.

A page keeps the :class:`Task` in its session state and redraws from :meth:`Task.snapshot`;
the function gets a ``progress`` callback to report events (dicts), and its result or its
error (as one line) is kept when it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from xrcompare.errors import one_line

LOG = logging.getLogger("xrcompare.background")

#: Errors a task reports as a sentence (anything else is logged with its traceback too).
EXPECTED_ERRORS = (ValueError, OSError, RuntimeError)


class Task:
    """``function(*args, progress=callback, **kwargs)`` in a daemon thread.

    ``state`` is ``"running"``, ``"done"`` or ``"failed"``; ``result`` holds the return
    value, ``error`` one line saying why it failed.
    """

    def __init__(self, function: Callable[..., Any], *args, **kwargs):
        self._function, self._args, self._kwargs = function, args, kwargs
        self._lock = threading.Lock()
        self.state = "running"
        self.result: Any = None
        self.error: str | None = None
        self.event: dict = {}
        self.started = time.time()
        self.finished: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"xrcompare-task-{id(self):x}")

    def start(self) -> Task:
        self._thread.start()
        return self

    def report(self, event: dict) -> None:
        """The progress callback handed to the function: keeps the latest event."""
        with self._lock:
            self.event = dict(event)

    def _run(self) -> None:
        try:
            result = self._function(*self._args, progress=self.report, **self._kwargs)
        except EXPECTED_ERRORS as error:
            self._end("failed", error=one_line(error))
        except Exception as error:  # a bug: a sentence for the page, the traceback in the log
            LOG.exception("background task failed")
            self._end("failed", error=f"unexpected {type(error).__name__}: {one_line(error)}")
        else:
            self._end("done", result=result)

    def _end(self, state: str, *, result: Any = None, error: str | None = None) -> None:
        with self._lock:
            self.state, self.result, self.error = state, result, error
            self.finished = time.time()

    @property
    def done(self) -> bool:
        return self.state != "running"

    def snapshot(self) -> dict:
        """State, latest event, error and seconds so far, read together."""
        with self._lock:
            end = self.finished or time.time()
            return {"state": self.state, "event": dict(self.event), "error": self.error,
                    "seconds": end - self.started}

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
