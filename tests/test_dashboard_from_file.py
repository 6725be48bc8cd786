"""The dashboard opened on a saved analysis shows what the original analysis showed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import iua_widgets
from iua_widgets import IUA
from iua_widgets.results.table import results_frame


def original_analysis() -> IUA:
    rng = np.random.default_rng(71)
    conv = np.maximum(rng.normal(size=(24, 3, 5, 4)), 0)
    conv[:, 1] = 0.0  # channel 1 is dead
    dense = np.maximum(rng.normal(size=(24, 10)), 0) * rng.choice([0, 1e-9, 1e-6, 1], size=(24, 10))
    return IUA.introspect({"conv": conv, "dense": dense}, batch_size=8)


@pytest.mark.parametrize("atol", [0.0, 1e-8, 2e-6, 0.5])
def test_dashboard_of_loaded_file(tmp_path, atol):
    original = original_analysis()
    path = original.save(tmp_path / "run.npz")

    dashboard = iua_widgets.Dashboard(IUA.load(path))
    dashboard.atol = atol
    frame = dashboard.table_frame().drop(columns="flagged")

    want = results_frame(original.results_at(atol=atol)).rename(columns={"response": "layer"})
    want = want.sort_values("layer", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, want, check_dtype=False)
    assert list(dashboard.layer_select.options) == ["conv", "dense"]
    assert dashboard.progress.label.value == "24 inputs (loaded)"
    dashboard.close()
