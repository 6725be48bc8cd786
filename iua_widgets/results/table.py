"""Conversion of per-layer results to a pandas DataFrame."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..engine import Result

#: Columns of the layer table, in display order.
COLUMNS = [
    "response",
    "units",
    "inputs",
    "mean inactive",
    "std inactive",
    "mean inactive %",
    "dead units",
    "dead %",
    "nonfinite",
]


def layer_row(name: str, result: Result) -> dict:
    """Build one table row: the DNIKit columns plus size-independent fractions."""
    return {
        "response": name,
        "units": result.units,
        "inputs": result.inputs,
        "mean inactive": result.mean_inactive,
        "std inactive": result.std_inactive,
        "mean inactive %": 100.0 * result.mean_inactive_fraction,
        "dead units": result.dead_units,
        "dead %": 100.0 * result.dead_fraction,
        "nonfinite": result.nonfinite,
    }


def results_frame(results: Mapping[str, Result]) -> pd.DataFrame:
    """Return one row per response, sorted by response name, index reset."""
    rows = [layer_row(name, result) for name, result in results.items()]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values("response", kind="stable").reset_index(drop=True)
