"""The progress bar of IUA.introspect."""

from __future__ import annotations

import numpy as np
import pytest

from iua_widgets import IUA, StreamingIUA
from iua_widgets.widgets.progress import IntrospectProgress, in_notebook_kernel


def test_progress_reaches_total_when_finished():
    engine = StreamingIUA()
    engine.expected_inputs = 6
    bar = IntrospectProgress(engine)
    engine.update({"a": np.zeros((2, 2))})
    engine.update({"a": np.zeros((4, 2))})
    bar.close()
    assert bar.bar.value == 1.0
    assert bar.label.value.startswith("6 / 6 inputs · finished")
    assert bar.bar.bar_style == "success"


def test_progress_shows_failure_and_unobserves():
    engine = StreamingIUA()
    bar = IntrospectProgress(engine)
    engine.update({"a": np.zeros((3, 2))})
    bar.close(RuntimeError("producer broke"))
    assert "3 inputs · failed: RuntimeError" == bar.label.value
    assert bar.bar.bar_style == "danger"
    engine.update({"a": np.zeros((1, 2))})
    assert bar.label.value.startswith("3 inputs")


def test_introspect_progress_on_request():
    def producer():
        yield {"a": np.zeros((2, 2))}
        raise OSError("gone")

    with pytest.raises(OSError):
        IUA.introspect(producer(), progress=True)
    iua = IUA.introspect({"a": np.zeros((5, 2))}, progress=True)
    assert iua.results["a"].inputs == 5


def test_no_kernel_outside_jupyter():
    assert in_notebook_kernel() is False
