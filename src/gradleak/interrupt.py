"""Ctrl-C at a step boundary: long training loops checkpoint their last completed step, then stop.

Inside :func:`deferred_interrupt` the first SIGINT only sets a flag; the loop checks ``stop.requested`` after
each step, writes its checkpoint and raises ``KeyboardInterrupt`` (the CLI prints ``interrupted`` and exits
130). A second Ctrl-C interrupts at once, as usual. Outside the main thread (where signal handlers cannot be
installed) nothing changes.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Stop:
    """``requested`` becomes True at the first Ctrl-C inside :func:`deferred_interrupt`."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def deferred_interrupt() -> Iterator[Stop]:
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if stop.requested:  # second Ctrl-C: do not wait for the step to end
            raise KeyboardInterrupt
        stop.requested = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
