"""Streaming into a dashboard's engine from a background thread, with progress and controls.

:class:`StreamingMixin` is part of :class:`~iua_widgets.widgets.dashboard.Dashboard`
and relies on its attributes (``engine``, ``handle``, ``progress``,
``errors``, ``throttle``, ``_lock``).
"""

from __future__ import annotations

import logging
from typing import Any

from .controls import guarded
from .streaming import END_STATES, StreamHandle, stream_total

logger = logging.getLogger(__name__)


class StreamingMixin:
    """Stream, pause, resume, cancel and wait, and the progress display.

    Until :meth:`stream` is called the progress row shows only the input
    count and ``source_label`` (``"1,797 inputs (loaded)"``). The rate shown
    while streaming counts the seconds spent producing and applying batches,
    so a pause does not lower it.
    """

    def stream(
        self, producer: Any, *, batch_size: int = 32, total: int | None = None,
        background: bool = True,
    ) -> StreamHandle:
        """Feed ``producer`` into the engine, by default from a background thread.

        ``total`` is the number of inputs expected, and it drives the progress
        bar. When ``None`` it comes from the producer if known in advance (the
        arrays of a mapping, a PyTorch capture over a sized loader); otherwise
        the label shows the inputs seen without a total. A total that the
        stream exceeds is dropped (``"50 inputs"``, never ``"50 / 10"``). With
        ``background=True`` the call returns at once and the controls stay
        usable (ipykernel >= 7.1 handles widget messages from threads); use
        :meth:`wait` or the returned handle's ``join`` to block. An error in
        the producer appears in the error area; the statistics gathered
        before it stay usable.

        Raises
        ------
        RuntimeError
            When a previous stream of this dashboard is still running.
        """
        if self.handle is not None and not self.handle.done:
            raise RuntimeError(
                "A stream is still running; call cancel() and wait() before starting another."
            )
        expected = stream_total(producer, total)
        # An unknown size clears the total of an earlier stream, which would be stale.
        self.engine.expected_inputs = (
            None if expected is None else self.engine.inputs_seen + expected
        )
        self.handle = StreamHandle(
            self.engine, producer, batch_size=batch_size,
            on_change=guarded(self.errors, "Stream state change", self._on_stream_change),
        )
        with self._lock:
            self._show_progress()  # enables the pause and cancel buttons before the first batch
        self.handle.start(background=background)
        return self.handle

    def _on_stream_change(self, handle: StreamHandle) -> None:
        if handle.error_message and not handle.error_reported:
            handle.error_reported = True
            self.errors.report(handle.error_message)
        if handle.state in END_STATES:
            self.throttle.flush()
        else:
            with self._lock:
                self._show_progress()

    def pause(self) -> None:
        """Pause the running stream after its current batch."""
        if self.handle is not None:
            self.handle.pause()

    def resume(self) -> None:
        """Resume a paused stream."""
        if self.handle is not None:
            self.handle.resume()

    def cancel(self) -> None:
        """Stop the stream after its current batch; applied batches are kept."""
        if self.handle is not None:
            self.handle.cancel()

    def wait(self, timeout: float | None = None) -> StreamHandle | None:
        """Block until the current stream ends (or ``timeout`` seconds pass); return its handle."""
        if self.handle is not None:
            self.handle.join(timeout)
        return self.handle

    def _show_progress(self) -> None:
        seen = self.engine.inputs_seen
        if self.handle is None:
            self.progress.show_count(seen, self.source_label)
            return
        expected = self.engine.expected_inputs
        if expected is not None and seen > expected:
            # The total given to stream() (or counted in its producer) was too
            # small, so it is dropped rather than shown as "50 / 10".
            logger.info("Dropped the expected total of %d inputs: %d arrived", expected, seen)
            self.engine.expected_inputs = expected = None
        self.progress.show(seen, expected, self.handle.inputs_per_second, self.handle.state)
