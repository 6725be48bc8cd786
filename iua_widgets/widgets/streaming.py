"""Feeding an engine from a background thread, and throttling redraws while it runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..engine import StreamingIUA
from ..sources import expected_inputs, iter_batches

logger = logging.getLogger(__name__)

#: States of a stream that has ended.
END_STATES = ("finished", "cancelled", "failed")


class Throttle:
    """Run ``callback`` at most once per ``interval`` seconds, except on :meth:`flush`.

    A request inside the interval is not dropped: one call runs when the
    interval ends, from a timer thread, so the latest state gets drawn.

    Parameters
    ----------
    callback
        Called without arguments.
    interval
        Minimum seconds between two calls (0.1 for about 10 Hz).
    clock
        Monotonic clock in seconds; tests pass a fake one.
    start_timer
        ``start_timer(delay, function)`` schedules ``function`` after
        ``delay`` seconds and returns an object with ``cancel()``; the
        default uses ``threading.Timer``. Tests pass one they fire by hand.
    """

    def __init__(
        self,
        callback: Callable[[], None],
        interval: float = 0.1,
        *,
        clock: Callable[[], float] = time.monotonic,
        start_timer: Callable[[float, Callable[[], None]], Any] | None = None,
    ) -> None:
        self.callback = callback
        self.interval = interval
        self.clock = clock
        self.start_timer = start_timer or _start_daemon_timer
        self.calls = 0
        self._last: float | None = None
        self._timer: Any = None
        self._token = 0
        self._lock = threading.Lock()

    def request(self) -> None:
        """Run the callback now if the interval has passed, else once when it does."""
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.interval:
                if self._timer is None:
                    delay = self.interval - (now - self._last)
                    self._schedule(delay)
                return
            self._cancel_timer()
            self._last = now
        self._run()

    def flush(self) -> None:
        """Run the callback now, cancelling any scheduled call."""
        with self._lock:
            self._cancel_timer()
            self._last = self.clock()
        self._run()

    def _schedule(self, delay: float) -> None:
        self._token += 1
        token = self._token
        self._timer = self.start_timer(delay, lambda: self._fire(token))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._token += 1

    def _fire(self, token: int) -> None:
        with self._lock:
            if token != self._token:
                return  # cancelled, or replaced by a newer timer
            self._timer = None
            self._last = self.clock()
        self._run()

    def _run(self) -> None:
        self.calls += 1
        self.callback()


def _start_daemon_timer(delay: float, function: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(max(delay, 0.0), function)
    timer.daemon = True
    timer.start()
    return timer


def stream_total(producer: Any, total: int | None) -> int | None:
    """Return the inputs a stream will feed: ``total``, else the producer's count if known."""
    if total is None:
        return expected_inputs(producer)
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total must be a non-negative int or None, got {total!r}.")
    return total


class StreamHandle:
    """A run feeding ``producer`` into ``engine`` batch by batch, in a thread or inline.

    Between batches it honours :meth:`pause`, :meth:`resume` and
    :meth:`cancel`. An exception from the producer or from the engine stops
    the run, and the batches applied before it stay in the engine.
    ``error_message`` names the failed batch, and its layer when the
    exception message names one.

    Parameters
    ----------
    engine
        The engine to feed.
    producer
        Any producer form ``IUA.introspect`` accepts.
    batch_size
        Inputs per batch requested from the producer.
    on_change
        Called with the handle after each state change (not after batches:
        the engine's observers see those).
    clock
        Monotonic clock in seconds that times the batches. Tests pass a fake one.
    """

    def __init__(
        self,
        engine: StreamingIUA,
        producer: Any,
        *,
        batch_size: int = 32,
        on_change: Callable[[StreamHandle], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.engine = engine
        self.producer = producer
        self.batch_size = batch_size
        self.on_change = on_change
        self.clock = clock
        self.state = "running"
        self.batches = 0
        #: Inputs this stream has applied to the engine.
        self.inputs = 0
        #: Seconds spent producing and applying batches; time spent paused is not counted.
        self.active_seconds = 0.0
        self.error: BaseException | None = None
        self.error_message: str | None = None
        #: Set by a viewer once it has shown ``error_message``.
        self.error_reported = False
        self._resume = threading.Event()
        self._resume.set()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    # -- control ---------------------------------------------------------

    def start(self, background: bool = True) -> StreamHandle:
        """Start feeding: in a daemon thread, or in the calling thread (blocking)."""
        if background:
            self._thread = threading.Thread(target=self._run, name="iua-stream", daemon=True)
            self._thread.start()
        else:
            self._run()
        return self

    def pause(self) -> None:
        """Stop after the current batch until :meth:`resume` or :meth:`cancel`."""
        if self.state == "running":
            self._resume.clear()
            self._set_state("paused")

    def resume(self) -> None:
        """Continue a paused run."""
        if self.state == "paused":
            self._set_state("running")
            self._resume.set()

    def cancel(self) -> None:
        """Stop after the current batch; batches already applied are kept."""
        if self.state in ("running", "paused"):
            self._cancel.set()
            self._resume.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the run ends; return ``True`` if it has ended."""
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        """Whether the run has ended (finished, cancelled or failed)."""
        return self._done.is_set()

    @property
    def inputs_per_second(self) -> float:
        """Inputs applied per active (not paused) second of this stream, 0.0 before any batch."""
        seconds = self.active_seconds
        return self.inputs / seconds if seconds > 0 else 0.0

    # -- feeding ---------------------------------------------------------

    def _run(self) -> None:
        logger.info("Stream started (batch_size=%d)", self.batch_size)
        state = "finished"
        interrupted: KeyboardInterrupt | None = None
        try:
            batches = iter_batches(self.producer, batch_size=self.batch_size)
            while True:
                self._resume.wait()
                if self._cancel.is_set():
                    state = "cancelled"
                    break
                started = self.clock()
                batch = self._next_batch(batches)
                if batch is None:
                    break
                seen = self.engine.inputs_seen
                self._apply(batch)
                self.inputs += self.engine.inputs_seen - seen
                self.active_seconds += self.clock() - started
                self.batches += 1
        except _StreamError:
            state = "failed"
        except KeyboardInterrupt as interrupt:
            # Only an inline (background=False) run can receive Ctrl-C: stop like cancel().
            state, interrupted = "cancelled", interrupt
        except Exception as error:
            self._fail(error, f"The stream failed before batch {self.batches}")
            state = "failed"
        logger.info(
            "Stream %s after %d batches, %d inputs seen", state, self.batches,
            self.engine.inputs_seen,
        )
        self.state = state
        try:
            self._notify()  # before join() returns, so waiters see the final redraw
        finally:
            self._done.set()
        if interrupted is not None:
            raise interrupted

    def _next_batch(self, batches) -> Mapping[str, Any] | None:
        try:
            return next(batches)
        except StopIteration:
            return None
        except Exception as error:
            self._fail(error, f"The producer failed while producing batch {self.batches}")
            raise _StreamError from error

    def _apply(self, batch: Mapping[str, Any]) -> None:
        try:
            self.engine.update(batch)
        except Exception as error:
            layer = next((name for name in batch if repr(name) in str(error)), None)
            where = f"batch {self.batches}" + (f", layer {layer!r}," if layer else "")
            self._fail(error, f"Applying {where} failed")
            raise _StreamError from error

    def _fail(self, error: BaseException, context: str) -> None:
        self.error = error
        self.error_message = (
            f"{context}: {type(error).__name__}: {error}\n"
            f"The {self.batches} batches applied before it ({self.engine.inputs_seen} inputs) "
            "are kept, and the results so far stay usable."
        )
        logger.error("%s", self.error_message, exc_info=error)

    def _set_state(self, state: str) -> None:
        self.state = state
        self._notify()

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change(self)


class _StreamError(Exception):
    """Internal: a failure already recorded in the handle."""
