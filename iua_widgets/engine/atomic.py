"""Critical sections that a KeyboardInterrupt cannot cut in half."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back SIGINT until the block ends, then raise ``KeyboardInterrupt``.

    Applying a batch to several layers must happen entirely or not at all;
    Ctrl-C (or Jupyter's interrupt button) in the middle would leave some
    layers with the batch and others without. Only the main thread receives
    signals, so elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple] = []

    def hold(signum, frame):
        received.append((signum, frame))

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except ValueError:  # pragma: no cover - no signal support in this interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(*received[0])
            else:
                raise KeyboardInterrupt
