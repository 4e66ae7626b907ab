"""Server-wide bounds on heavy work: how many image decodes, predictions and saliency maps
run at once in this process.

Streamlit serves every browser session from one process (one thread per session), so a
process-wide semaphore bounds the memory and CPU that a class uploading at the same moment
can take. A caller that finds every slot busy is told so (``on_wait``) and waits its turn;
only a wait longer than ``timeout`` gives up, with :class:`ServerBusy` and one sentence.

No Streamlit here: the page passes a callback that shows "waiting for a free slot".
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

SLOTS_VARIABLE = "XRCOMPARE_WORK_SLOTS"
#: Decodes, predictions and saliency maps allowed at once (``$XRCOMPARE_WORK_SLOTS``).
DEFAULT_SLOTS = 2
#: How long a request waits for a slot before it gives up with a sentence.
WAIT_TIMEOUT_S = 300.0


class ServerBusy(RuntimeError):
    """Every work slot stayed busy for longer than the caller would wait."""


def slot_count() -> int:
    """The number of work slots: ``$XRCOMPARE_WORK_SLOTS`` (1–64), default 2."""
    value = os.environ.get(SLOTS_VARIABLE, "").strip()
    try:
        count = int(value) if value else DEFAULT_SLOTS
    except ValueError:
        count = DEFAULT_SLOTS
    return min(64, max(1, count))


class WorkSlots:
    """A counting semaphore that also reports how many slots are in use (for tests and the
    page's waiting note)."""

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots = slots
        self._semaphore = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._busy = 0
        self.peak = 0  # the most slots ever held at once

    @property
    def busy(self) -> int:
        return self._busy

    @contextlib.contextmanager
    def hold(self, on_wait: Callable[[], None] | None = None,
             on_start: Callable[[], None] | None = None,
             timeout: float = WAIT_TIMEOUT_S) -> Iterator[None]:
        """Hold one slot for the ``with`` block.

        ``on_wait()`` is called once if no slot is free at once, ``on_start()`` once a slot
        is held after such a wait. Raises :class:`ServerBusy` after ``timeout`` seconds.
        """
        waited = not self._semaphore.acquire(blocking=False)
        if waited:
            if on_wait is not None:
                on_wait()
            if not self._semaphore.acquire(timeout=timeout):
                raise ServerBusy(f"the server stayed busy for {timeout:.0f} s with other "
                                 "images; please try again in a minute")
        # Held from here: whatever happens next (a callback raising, Streamlit stopping the
        # script for a rerun), the slot is given back.
        try:
            with self._lock:
                self._busy += 1
                self.peak = max(self.peak, self._busy)
            try:
                if waited and on_start is not None:
                    on_start()
                yield
            finally:
                with self._lock:
                    self._busy -= 1
        finally:
            self._semaphore.release()


_SLOTS: WorkSlots | None = None
_SLOTS_LOCK = threading.Lock()


def work_slots() -> WorkSlots:
    """The process-wide slots, made on first use with :func:`slot_count` slots."""
    global _SLOTS
    with _SLOTS_LOCK:
        if _SLOTS is None:
            _SLOTS = WorkSlots(slot_count())
        return _SLOTS


def work_slot(on_wait: Callable[[], None] | None = None,
              on_start: Callable[[], None] | None = None,
              timeout: float = WAIT_TIMEOUT_S):
    """Hold one of the process-wide work slots (see :meth:`WorkSlots.hold`)."""
    return work_slots().hold(on_wait, on_start, timeout)
