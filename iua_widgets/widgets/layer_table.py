"""The dashboard's layer table: columns, rows with alerts, and CSV export that keeps the threshold.

Layer table column keys: ``layer``, ``units``, ``inputs``, ``mean_inactive``,
``std_inactive``, ``mean_inactive_pct``, ``dead_units``, ``dead_pct``,
``nonfinite``.

CSV format written by :func:`write_table_csv`: the table's columns, then
``atol``, ``rtol`` and ``dead_alert``, the same on every row, so a plain
``pandas.read_csv(path)`` (or any spreadsheet) gets the settings with the
numbers. Floats are written with ``repr``, so they read back exactly.
:func:`read_table_csv` reads a file back into the frame ``table_frame``
returned, with the settings in ``frame.attrs``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ..engine import Result
from ..results.table import layer_row
from .table import column

LAYER_COLUMNS = [
    column("layer", "layer", "text"),
    column("units", "units", "int"),
    column("inputs", "inputs", "int"),
    column("mean_inactive", "mean inactive", "float", digits=2),
    column(
        "std_inactive", "std", "float", digits=2,
        title="Population std of inactive units per input",
    ),
    column("mean_inactive_pct", "mean inactive %", "float", digits=2),
    column("dead_units", "dead units", "int"),
    column("dead_pct", "dead %", "float", digits=2),
    column(
        "nonfinite", "nonfinite", "int", title="NaN and inf response values (counted as active)"
    ),
]
#: Layer table key -> column name of ``results_frame`` (``table_frame`` uses these, with "layer").
FRAME_NAMES = {
    "layer": "layer", "units": "units", "inputs": "inputs", "mean_inactive": "mean inactive",
    "std_inactive": "std inactive", "mean_inactive_pct": "mean inactive %",
    "dead_units": "dead units", "dead_pct": "dead %", "nonfinite": "nonfinite",
}
_ROW_KEYS = {
    "response": "layer", "units": "units", "inputs": "inputs", "mean inactive": "mean_inactive",
    "std inactive": "std_inactive", "mean inactive %": "mean_inactive_pct",
    "dead units": "dead_units", "dead %": "dead_pct", "nonfinite": "nonfinite",
}
#: Settings written as the last CSV columns, in this order.
CSV_SETTINGS = ("atol", "rtol", "dead_alert")


def layer_rows(
    results: Mapping[str, Result], dead_alert: float
) -> tuple[list[dict], list[str], dict[str, str]]:
    """Return the table rows, the flagged layer names and a note per flagged layer.

    A layer is flagged when its dead fraction is at least ``dead_alert`` or
    it contains nonfinite values.
    """
    rows, flagged, notes = [], [], {}
    for name, result in results.items():
        frame_row = layer_row(name, result)
        rows.append({_ROW_KEYS[k]: v for k, v in frame_row.items()})
        reasons = []
        if result.units and result.dead_fraction >= dead_alert:
            reasons.append(
                f"{100 * result.dead_fraction:.1f} % dead units "
                f"(alert at {100 * dead_alert:g} %)"
            )
        if result.nonfinite:
            reasons.append(f"{result.nonfinite:,} nonfinite values (NaN or inf), counted as active")
        if reasons:
            flagged.append(name)
            notes[name] = "; ".join(reasons)
    return rows, flagged, notes


def rows_frame(rows: list[dict], flagged: set[str], settings: Mapping[str, float]) -> pd.DataFrame:
    """Return ``rows`` (in their order) as a DataFrame with a ``flagged`` column.

    ``settings`` (``atol``, ``rtol``, ``dead_alert``) go into ``frame.attrs``.
    """
    keys = [c["key"] for c in LAYER_COLUMNS]
    frame = pd.DataFrame(
        [[row[k] for k in keys] + [row["layer"] in flagged] for row in rows],
        columns=[FRAME_NAMES[k] for k in keys] + ["flagged"],
    )
    frame.attrs.update(settings)
    return frame


def write_table_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` with its ``attrs`` settings as extra columns; return the path."""
    path = Path(path)
    missing = [name for name in CSV_SETTINGS if name not in frame.attrs]
    if missing:
        raise ValueError(
            f"frame.attrs lacks {missing}; build the frame with Dashboard.table_frame()."
        )
    # NOTE: a table without rows keeps only the header, so its settings are lost.
    written = frame.assign(**{name: float(frame.attrs[name]) for name in CSV_SETTINGS})
    written.to_csv(path, index=False, lineterminator="\n")
    return path


def read_table_csv(path: str | Path) -> pd.DataFrame:
    """Read a file written by :func:`write_table_csv` back into the frame it was written from.

    The setting columns move to ``frame.attrs``, and layer names stay text
    (``"1"``, ``"NA"`` and ``""`` included).

    Raises
    ------
    ValueError
        When a setting column is missing or differs between rows.
    """
    numeric = [name for name in FRAME_NAMES.values() if name != "layer"]
    frame = pd.read_csv(
        path, dtype={"layer": str}, keep_default_na=False,
        na_values={name: [""] for name in [*numeric, *CSV_SETTINGS]},
    )
    missing = [name for name in CSV_SETTINGS if name not in frame.columns]
    if missing:
        raise ValueError(
            f"{path} has no {missing} columns; it was not written by Dashboard.to_csv."
        )
    settings = {}
    for name in CSV_SETTINGS:
        values = frame[name].unique()
        if len(values) > 1:
            raise ValueError(f"{path}: column {name!r} differs between rows: {list(values)}.")
        settings[name] = float(values[0]) if len(values) else math.nan
    frame = frame.drop(columns=list(CSV_SETTINGS))
    frame.attrs.update(settings)
    return frame
