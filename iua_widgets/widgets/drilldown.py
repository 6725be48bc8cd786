"""Per-unit drill-down of one layer: a table of the most often inactive units and a histogram."""

from __future__ import annotations

import bqplot
import ipywidgets as widgets
import numpy as np

from ..engine import Result
from .table import SortableTable, column

#: Units listed in the unit table.
TOP_UNITS = 200
#: Histogram bins of non-dead units: [0, 10) %, [10, 20) %, ... [90, 100) % of inputs.
HISTOGRAM_BINS = 10
HISTOGRAM_LABELS = [f"{10 * i}–{10 * (i + 1)}" for i in range(HISTOGRAM_BINS)] + ["dead"]
#: Bar height drawn for an empty bin: the log scale has no 0.
EMPTY_BIN_HEIGHT = 0.5

UNIT_COLUMNS = [
    column("unit", "unit", "text", sort_by="flat_index", title="Index in the layer's unit shape"),
    column("inactive", "inactive inputs", "int"),
    column("proportion", "proportion", "float", digits=4),
    column("dead", "dead", "bool", title="Inactive on every input"),
]


def top_units(counts: np.ndarray, limit: int = TOP_UNITS) -> np.ndarray:
    """Flat indices of the ``limit`` units with the largest counts, largest first, ties by index."""
    flat = np.asarray(counts).reshape(-1)
    if flat.size <= limit:
        chosen = np.arange(flat.size)
    else:
        # Partition first so a million units cost O(units), then sort only the chosen ones.
        threshold = np.partition(flat, flat.size - limit)[flat.size - limit]
        above = np.flatnonzero(flat > threshold)
        equal = np.flatnonzero(flat == threshold)[: limit - above.size]
        chosen = np.concatenate([above, equal])
    return chosen[np.lexsort((chosen, -flat[chosen]))]


def unit_index_text(flat_index: int, unit_shape: tuple[int, ...]) -> str:
    """Index of a unit in the layer's own shape, as ``(3, 4, 5)``."""
    if not unit_shape:
        return "()"
    index = np.unravel_index(flat_index, unit_shape)
    if len(index) == 1:
        return f"({int(index[0])},)"
    return "(" + ", ".join(str(int(i)) for i in index) + ")"


def unit_rows(result: Result, limit: int = TOP_UNITS) -> list[dict]:
    """Rows of the unit table: the ``limit`` most often inactive units of ``result``."""
    counts = result.unit_inactive_count.reshape(-1)
    proportions = result.unit_inactive_proportion.reshape(-1)
    rows = []
    for flat_index in top_units(counts, limit):
        count = int(counts[flat_index])
        rows.append(
            {
                "unit": unit_index_text(int(flat_index), result.unit_shape),
                "flat_index": int(flat_index),
                "inactive": count,
                "proportion": float(proportions[flat_index]),
                "dead": bool(result.inputs > 0 and count == result.inputs),
            }
        )
    return rows


def activity_histogram(result: Result) -> np.ndarray:
    """Units per bin: ``HISTOGRAM_BINS`` bins of inactive proportion for non-dead units, then dead.

    A non-dead unit inactive on ``c`` of ``n`` inputs falls in bin
    ``(10 * c) // n``, computed in integers so bin edges are exact.
    """
    counts = result.unit_inactive_count.reshape(-1).astype(np.int64)
    histogram = np.zeros(HISTOGRAM_BINS + 1, dtype=np.int64)
    if result.inputs == 0:
        return histogram
    dead = counts == result.inputs
    bins = (HISTOGRAM_BINS * counts[~dead]) // result.inputs
    histogram[:HISTOGRAM_BINS] = np.bincount(bins, minlength=HISTOGRAM_BINS)
    histogram[HISTOGRAM_BINS] = int(np.count_nonzero(dead))
    return histogram


def log_ticks(largest: int) -> np.ndarray:
    """Ticks 1, 2, 5, 10, 20, 50, ... (powers of 10 alone above 1000), none above ``largest``."""
    steps = (1,) if largest > 1000 else (1, 2, 5)
    ticks = []
    decade = 1
    while decade <= max(largest, 1):
        ticks.extend(decade * step for step in steps if decade * step <= max(largest, 1))
        decade *= 10
    return np.array(ticks, dtype=np.float64)


class UnitDrilldown(widgets.VBox):
    """Unit table (top ``TOP_UNITS``, largest first) and log-scale histogram of one layer."""

    def __init__(self, limit: int = TOP_UNITS) -> None:
        self.limit = limit
        self.table = SortableTable(
            UNIT_COLUMNS, row_key="unit", sort_column="inactive", sort_ascending=False
        )
        self.table.add_class("iua-unit-table")
        self.x_scale = bqplot.OrdinalScale()
        self.y_scale = bqplot.LogScale(min=EMPTY_BIN_HEIGHT)
        self.bars = bqplot.Bars(
            x=HISTOGRAM_LABELS,
            y=np.full(len(HISTOGRAM_LABELS), EMPTY_BIN_HEIGHT),
            base=EMPTY_BIN_HEIGHT,
            scales={"x": self.x_scale, "y": self.y_scale},
            colors=["#3b528b"],
        )
        self.y_axis = bqplot.Axis(
            scale=self.y_scale, side="left", label="units (log scale)", tick_format="d",
            tick_values=log_ticks(1),
        )
        self.histogram = bqplot.Figure(
            marks=[self.bars],
            axes=[
                bqplot.Axis(scale=self.x_scale, label="inactive on % of inputs"),
                self.y_axis,
            ],
            title="Units by inactive proportion",
            fig_margin={"top": 40, "bottom": 60, "left": 60, "right": 20},
            layout=widgets.Layout(width="100%", min_width="440px", height="300px"),
            title_style={"font-size": "13px"},
            display_toolbar=False,
        )
        self.histogram.add_class("iua-unit-histogram")
        self.counts = np.zeros(len(HISTOGRAM_LABELS), dtype=np.int64)
        super().__init__(
            children=[self.table, self.histogram],
            layout=widgets.Layout(flex="1 1 480px", min_width="480px"),
        )
        self.add_class("iua-unit-drilldown")

    def show(self, name: str, result: Result) -> None:
        """Fill the table and the histogram from ``result`` of layer ``name``."""
        rows = unit_rows(result, self.limit)
        self.counts = activity_histogram(result)
        heights = np.where(self.counts > 0, self.counts, EMPTY_BIN_HEIGHT).astype(np.float64)
        shown = min(self.limit, result.units)
        with self.table.hold_sync():
            self.table.caption = (
                f"{name}: top {shown:,} of {result.units:,} units by inactive inputs "
                f"(of {result.inputs:,}), largest first"
            )
            self.table.set_rows(rows)
        with self.histogram.hold_sync(), self.bars.hold_sync(), self.y_axis.hold_sync():
            self.bars.y = heights
            self.y_axis.tick_values = log_ticks(int(self.counts.max()))
            self.histogram.title = (
                f"{name}: units by inactive proportion ({int(self.counts[-1]):,} dead)"
            )
