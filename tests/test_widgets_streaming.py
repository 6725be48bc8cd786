"""Live updates, throttling, background streaming and error display of the dashboard."""

from __future__ import annotations

import functools
import threading
import time

import numpy as np
import pytest

from iua_widgets import IUA, StreamingIUA
from iua_widgets.widgets import dashboard_stream
from iua_widgets.widgets.dashboard import Dashboard
from iua_widgets.widgets.streaming import StreamHandle, Throttle

from .widget_recorder import install


class FakeClock:
    """Clock advanced by hand that reads whole milliseconds, so differences stay exact.

    Throttles driven by it take their interval in milliseconds too.
    """

    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms


class ManualTimers:
    """Timers that fire only when the test calls ``fire_all``."""

    def __init__(self) -> None:
        self.pending: list[list] = []

    def __call__(self, delay, function):
        timer = [delay, function, False]
        self.pending.append(timer)

        class Handle:
            def cancel(self_inner) -> None:
                timer[2] = True

        return Handle()

    def fire_all(self) -> int:
        fired = 0
        while self.pending:
            _, function, cancelled = self.pending.pop(0)
            if not cancelled:
                function()
                fired += 1
        return fired


def batch(rng, inputs: int = 4) -> dict:
    return {"fc": np.maximum(rng.normal(size=(inputs, 8)), 0), "conv": np.maximum(rng.normal(size=(inputs, 2, 3, 3)), 0)}


def test_throttle_ten_per_second_fake_clock():
    clock, timers, calls = FakeClock(), ManualTimers(), []
    throttle = Throttle(lambda: calls.append(clock.ms), 100, clock=clock, start_timer=timers)
    for _ in range(1000):  # 1,000 requests, 1 ms apart: one second
        throttle.request()
        clock.ms += 1
    assert calls == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
    # Requests after the last call are not lost: the trailing timer draws them.
    assert timers.fire_all() == 1
    assert len(calls) == 11


def test_live_updates_throttled_while_feeding():
    rng = np.random.default_rng(0)
    engine = StreamingIUA()
    dash = Dashboard(engine)
    clock, timers = FakeClock(), ManualTimers()
    dash.throttle = Throttle(dash.refresh, 100, clock=clock, start_timer=timers)
    for _ in range(1000):
        engine.update(batch(rng, 1))
        clock.ms += 1
        if clock.ms == 250:
            # Between redraws the table still shows the last redraw (batch 200).
            assert dash.table_frame()["inputs"].tolist() == [201, 201]
    assert dash.throttle.calls == 10
    assert dash.table_frame()["inputs"].tolist() == [901, 901]
    timers.fire_all()
    assert dash.table_frame()["inputs"].tolist() == [1000, 1000]
    assert dash.progress.label.value == "1,000 inputs"


def test_comm_message_rate_for_fast_producer(monkeypatch):
    recorder = install(monkeypatch)
    rng = np.random.default_rng(1)
    batches = [batch(rng, 1) for _ in range(1000)]
    dash = Dashboard(StreamingIUA())
    recorder.clear()

    def producer():
        # About 1,000 small batches per second.
        for item in batches:
            time.sleep(0.001)
            yield item

    started = time.monotonic()
    dash.stream(producer(), total=1000)
    assert dash.wait(timeout=120).state == "finished"
    elapsed = time.monotonic() - started
    updates = recorder.updates()
    rate = len(updates) / elapsed
    redraws = dash.throttle.calls
    print(f"\n1000 batches in {elapsed:.2f} s: {redraws} redraws, {len(updates)} comm messages, {rate:.0f} messages/s")
    # About 10 redraws per second plus the final one, far below the ~1000 messages/s
    # at which Jupyter Server starts dropping widget messages.
    assert redraws <= 10 * elapsed + 2
    assert len(updates) / max(redraws, 1) < 40
    assert rate < 500


def test_background_stream_reaches_full_progress(monkeypatch):
    rng = np.random.default_rng(2)
    data = {"fc": np.maximum(rng.normal(size=(2048, 8)), 0)}
    dash = Dashboard(StreamingIUA())
    handle = dash.stream(data, batch_size=64)
    assert handle.join(timeout=120)
    assert handle.state == "finished"
    assert dash.progress.bar.value == 1.0
    assert dash.progress.bar.bar_style == "success"
    assert dash.progress.label.value.startswith("2,048 / 2,048 inputs")
    assert dash.table_frame()["inputs"].tolist() == [2048]
    assert dash.progress.pause_button.disabled
    assert dash.progress.cancel_button.disabled
    with pytest.raises(ValueError, match="total must be"):
        dash.stream(data, total=-1)


def test_pause_resume_cancel():
    rng = np.random.default_rng(3)
    dash = Dashboard(StreamingIUA())
    applied = threading.Event()
    dash.engine.observe(lambda engine: applied.set() if engine.batches_seen == 4 else None)

    def producer():
        for index in range(10):
            if index == 3:
                dash.progress.pause_button.click()  # the button, as a user would
            yield batch(rng)

    handle = dash.stream(producer())
    assert applied.wait(timeout=60)
    # Paused after batch 3 was applied: no further batch arrives until resumed.
    assert not handle.join(timeout=0.3)
    assert handle.state == "paused"
    assert dash.engine.batches_seen == 4
    assert dash.progress.label.value.endswith("paused")
    assert not dash.progress.resume_button.disabled
    dash.resume()
    assert handle.join(timeout=60)
    assert handle.state == "finished"
    assert dash.engine.batches_seen == 10

    def cancelled_producer():
        for index in range(10):
            if index == 5:
                dash.cancel()
            yield batch(rng)

    second = dash.stream(cancelled_producer())
    assert second.join(timeout=60)
    assert second.state == "cancelled"
    # Batches 0-5 arrive (batch 5 was produced before the cancel was seen).
    assert dash.engine.batches_seen == 16
    assert dash.progress.bar.bar_style == "warning"


def test_second_stream_while_running_rejected():
    gate = threading.Event()
    dash = Dashboard(StreamingIUA())

    def producer():
        gate.wait(timeout=60)
        yield {"fc": np.zeros((2, 2))}

    dash.stream(producer())
    with pytest.raises(RuntimeError, match="still running"):
        dash.stream(producer())
    gate.set()
    assert dash.wait(timeout=60).state == "finished"


def test_producer_error_shown_and_stats_kept():
    rng = np.random.default_rng(4)
    dash = Dashboard(StreamingIUA())

    def producer():
        for index in range(5):
            if index == 3:
                raise OSError("disk went away")
            yield batch(rng)

    handle = dash.stream(producer())
    assert handle.join(timeout=60)
    assert handle.state == "failed"
    assert isinstance(handle.error, OSError)
    assert len(dash.errors.messages) == 1
    message = dash.errors.messages[0]
    assert "producing batch 3" in message
    assert "OSError: disk went away" in message
    assert "disk went away" in dash.errors.value
    # The three applied batches stay usable everywhere.
    assert dash.engine.batches_seen == 3
    assert dash.table_frame()["inputs"].tolist() == [12, 12]
    dash.atol = 0.5
    assert dash.table_frame().attrs["atol"] == 0.5
    assert dash.progress.bar.bar_style == "danger"


def test_engine_error_names_batch_and_layer():
    rng = np.random.default_rng(5)
    dash = Dashboard(StreamingIUA())
    batches = [batch(rng), batch(rng), {"fc": np.zeros((4, 9)), "conv": np.zeros((4, 2, 3, 3))}]
    handle = dash.stream(iter(batches), background=False)
    assert handle.state == "failed"
    message = dash.errors.messages[0]
    assert "batch 2, layer 'fc'" in message
    assert "changed its unit shape" in message
    assert dash.engine.batches_seen == 2


def test_observer_error_shown_not_raised(monkeypatch):
    rng = np.random.default_rng(6)
    engine = StreamingIUA()
    dash = Dashboard(engine)

    def broken(name, result):
        raise RuntimeError(f"cannot draw {name}")

    monkeypatch.setattr(dash.heatmap, "show", broken)
    engine.update(batch(rng))  # must not raise into the feeding code
    assert engine.batches_seen == 1
    assert any("cannot draw" in m for m in dash.errors.messages)
    assert "cannot draw" in dash.errors.value


def test_interrupt_inline_stream_cancels():
    rng = np.random.default_rng(7)
    dash = Dashboard(StreamingIUA())

    def producer():
        yield batch(rng)
        yield batch(rng)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dash.stream(producer(), background=False)
    assert dash.handle.state == "cancelled"
    assert dash.handle.done
    assert dash.engine.batches_seen == 2
    assert dash.progress.label.value.endswith("cancelled")
    assert dash.errors.messages == []


def recorded_labels(dash: Dashboard) -> list[str]:
    labels: list[str] = []
    dash.progress.label.observe(lambda change: labels.append(change["new"]), names="value")
    return labels


def label_counts(label: str) -> tuple[int, int | None]:
    """Inputs seen and the total of a progress label such as ``"8 / 1,000 inputs · ..."``."""
    counts = label.split(" inputs")[0].replace(",", "")
    if " / " in counts:
        seen, total = counts.split(" / ")
        return int(seen), int(total)
    return int(counts), None


def test_unknown_size_stream_clears_stale_total():
    iua = IUA.introspect({"a": np.zeros((10, 5))})
    dash = Dashboard(iua)
    assert dash.progress.label.value == "10 inputs (analysed)"

    def producer():
        for _ in range(3):
            yield {"a": np.zeros((8, 5))}

    dash.stream(producer())
    assert dash.wait(timeout=60).state == "finished"
    label = dash.progress.label.value
    assert label.startswith("34 inputs")
    assert " / " not in label
    assert label.endswith("finished")
    assert dash.engine.expected_inputs is None
    assert dash.progress.bar.value == 1.0


def test_total_below_inputs_is_dropped():
    dash = Dashboard(StreamingIUA(), redraw_interval=0.0)
    labels = recorded_labels(dash)
    dash.stream({"a": np.ones((50, 3))}, total=10, batch_size=4, background=False)
    assert dash.handle.state == "finished"
    assert "8 / 10 inputs" in [label.split(" · ")[0] for label in labels]
    for label in labels:
        seen, total = label_counts(label)
        assert total is None or seen <= total, label
    assert dash.progress.label.value.startswith("50 inputs · ")
    assert dash.engine.expected_inputs is None
    assert dash.progress.bar.value == 1.0


def wait_for_batches(handle, count: int) -> None:
    """Block until ``handle`` has applied and timed ``count`` batches (or fail after a minute)."""
    deadline = time.monotonic() + 60
    while handle.batches < count:
        assert time.monotonic() < deadline, f"only {handle.batches} of {count} batches applied"
        time.sleep(0.001)


def test_rate_excludes_paused_time(monkeypatch):
    now = [0.0]  # seconds on a clock that only the producer and the test move
    monkeypatch.setattr(
        dashboard_stream, "StreamHandle", functools.partial(StreamHandle, clock=lambda: now[0])
    )
    dash = Dashboard(StreamingIUA(), redraw_interval=0.0)

    def producer():
        for index in range(10):
            if index == 5:
                dash.pause()
            now[0] += 1.0  # producing each batch of 4 inputs takes one second
            yield {"fc": np.ones((4, 3))}

    handle = dash.stream(producer(), total=40)
    wait_for_batches(handle, 6)
    assert handle.state == "paused"
    assert dash.progress.label.value == "24 / 40 inputs · 4 inputs/s · paused"

    now[0] += 600.0  # ten minutes paused
    dash.resume()
    assert handle.join(timeout=60)
    assert handle.state == "finished"
    assert handle.active_seconds == 10.0
    assert handle.inputs == 40
    assert handle.inputs_per_second == 4.0
    assert dash.progress.label.value == "40 / 40 inputs · 4 inputs/s · finished"


def test_handle_rate_counts_its_own_inputs():
    now = [0.0]
    engine = StreamingIUA()
    engine.update({"fc": np.ones((100, 3))})  # inputs from before the stream

    def producer():
        for _ in range(3):
            now[0] += 0.5
            yield {"fc": np.ones((2, 3))}

    handle = StreamHandle(engine, producer(), clock=lambda: now[0]).start(background=False)
    assert handle.inputs == 6
    assert handle.active_seconds == 1.5
    assert handle.inputs_per_second == 4.0
    assert StreamHandle(engine, iter([])).inputs_per_second == 0.0


def test_stream_shows_controls_counts_with_separators():
    iua = IUA.introspect({"a": np.zeros((1_797, 2))})
    dash = Dashboard(iua)
    progress = dash.progress
    # A finished analysis has no stream: a plain count, without the bar and the buttons.
    assert progress.label.value == "1,797 inputs (analysed)"
    for widget in (progress.bar, progress.pause_button, progress.resume_button, progress.cancel_button):
        assert widget.layout.display == "none"
    dash.stream({"a": np.zeros((1_203, 2))}, batch_size=500, background=False)
    for widget in (progress.bar, progress.pause_button, progress.resume_button, progress.cancel_button):
        assert widget.layout.display is None
    assert progress.label.value.startswith("3,000 / 3,000 inputs · ")
    assert progress.label.value.endswith(" inputs/s · finished")
    assert progress.bar.value == 1.0
