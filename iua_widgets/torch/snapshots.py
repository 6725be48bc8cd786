"""Compact per-step summaries of an analysis, from which a training timeline is rebuilt.

A :class:`Snapshot` keeps, for every layer and every threshold of the grid,
the number of dead units and the mean number of inactive units per input.
That is ``2 * layers * len(grid)`` numbers (about 1.4 KB for two layers on
the default 44-value grid), so a timeline of thousands of snapshots can be
redrawn at any grid ``atol`` without running the model again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..engine import StreamingIUA

#: Columns of :func:`timeline_frame`, in order.
TIMELINE_COLUMNS = [
    "step",
    "epoch",
    "layer",
    "units",
    "inputs",
    "dead units",
    "dead %",
    "mean inactive %",
    "atol",
]


@dataclass(frozen=True)
class Snapshot:
    """Inactive Unit Analysis of every tracked layer at one training step.

    Attributes
    ----------
    step, epoch
        Training step (optimizer steps done) and epoch when it was taken;
        ``epoch`` is ``None`` when the training loop did not report one.
    layers
        Response names, in the order of the rows of the arrays below.
    units, inputs
        ``(layers,)`` int64: units per input and inputs analysed, per layer.
    dead_units
        ``(layers, len(grid))`` int64: units inactive on every input at each
        grid threshold.
    mean_inactive
        ``(layers, len(grid))`` float64: mean number of inactive units per
        input at each grid threshold, as ``Result.mean_inactive`` gives it.
    seconds
        Wall-clock time the snapshot took, model run included.
    engine
        The full analysis, kept for the latest snapshot only unless the
        tracker was asked to keep all; ``None`` otherwise.
    """

    step: int
    epoch: int | None
    layers: tuple[str, ...]
    units: np.ndarray
    inputs: np.ndarray
    dead_units: np.ndarray
    mean_inactive: np.ndarray
    seconds: float
    engine: StreamingIUA | None = None

    @classmethod
    def from_engine(
        cls,
        engine: StreamingIUA,
        *,
        step: int,
        epoch: int | None,
        seconds: float,
        keep_engine: bool = True,
    ) -> Snapshot:
        """Summarise ``engine`` at every threshold of its grid.

        Every value comes from ``engine.results_at``, so a timeline point is
        the same number a fresh analysis reports at that threshold.
        """
        layers = tuple(engine.layer_names)
        thresholds = len(engine.grid)
        dead = np.zeros((len(layers), thresholds), dtype=np.int64)
        mean = np.zeros((len(layers), thresholds), dtype=np.float64)
        units = np.zeros(len(layers), dtype=np.int64)
        inputs = np.zeros(len(layers), dtype=np.int64)
        for column, atol in enumerate(engine.grid):
            results = engine.results_at(atol=float(atol))
            for row, name in enumerate(layers):
                result = results[name]
                dead[row, column] = result.dead_units
                mean[row, column] = result.mean_inactive
                units[row] = result.units
                inputs[row] = result.inputs
        return cls(
            step=int(step),
            epoch=None if epoch is None else int(epoch),
            layers=layers,
            units=units,
            inputs=inputs,
            dead_units=dead,
            mean_inactive=mean,
            seconds=float(seconds),
            engine=engine if keep_engine else None,
        )

    def nbytes(self) -> int:
        """Bytes of the summary arrays (the engine, if kept, is not counted)."""
        arrays = (self.units, self.inputs, self.dead_units, self.mean_inactive)
        return int(sum(array.nbytes for array in arrays))


@dataclass(frozen=True)
class TimelineCurves:
    """Timeline of every layer at one grid ``atol``, ready to plot.

    Attributes
    ----------
    steps, epochs
        ``(snapshots,)``: the step of each snapshot, and its epoch as float64
        (NaN where none was reported).
    layers
        Response names, one per row of the percentage arrays.
    dead_percent, mean_inactive_percent
        ``(layers, snapshots)`` float64: dead units and mean inactive units
        as a percentage of the layer's units (NaN where a snapshot lacks the layer).
    atol
        The grid threshold of these curves.
    """

    steps: np.ndarray
    epochs: np.ndarray
    layers: tuple[str, ...]
    dead_percent: np.ndarray
    mean_inactive_percent: np.ndarray
    atol: float


def timeline_curves(
    snapshots: Sequence[Snapshot], grid: np.ndarray, index: int
) -> TimelineCurves:
    """Build the curves at ``grid[index]`` from ``snapshots`` alone."""
    layers: dict[str, None] = {}
    for snapshot in snapshots:
        layers.update(dict.fromkeys(snapshot.layers))
    names = tuple(layers)
    row_of = {name: row for row, name in enumerate(names)}
    dead = np.full((len(names), len(snapshots)), np.nan)
    inactive = np.full((len(names), len(snapshots)), np.nan)
    for column, snapshot in enumerate(snapshots):
        for position, name in enumerate(snapshot.layers):
            units = int(snapshot.units[position])
            if units == 0:
                continue
            row = row_of[name]
            dead[row, column] = 100.0 * (int(snapshot.dead_units[position, index]) / units)
            mean = float(snapshot.mean_inactive[position, index])
            inactive[row, column] = 100.0 * (mean / units)
    steps = np.array([snapshot.step for snapshot in snapshots], dtype=np.int64)
    epochs = np.array(
        [np.nan if s.epoch is None else float(s.epoch) for s in snapshots], dtype=np.float64
    )
    return TimelineCurves(steps, epochs, names, dead, inactive, float(grid[index]))


def timeline_frame(snapshots: Sequence[Snapshot], grid: np.ndarray, index: int) -> pd.DataFrame:
    """Return one row per snapshot and layer at ``grid[index]``, in snapshot order.

    The percentages are computed as ``results_frame`` computes its ``dead %``
    and ``mean inactive %`` columns, so they equal a fresh analysis's table.
    """
    atol = float(grid[index])
    rows = []
    for snapshot in snapshots:
        for position, name in enumerate(snapshot.layers):
            units = int(snapshot.units[position])
            dead = int(snapshot.dead_units[position, index])
            mean = float(snapshot.mean_inactive[position, index])
            rows.append(
                {
                    "step": snapshot.step,
                    "epoch": snapshot.epoch,
                    "layer": name,
                    "units": units,
                    "inputs": int(snapshot.inputs[position]),
                    "dead units": dead,
                    "dead %": 100.0 * (dead / units) if units else np.nan,
                    "mean inactive %": 100.0 * (mean / units) if units else np.nan,
                    "atol": atol,
                }
            )
    frame = pd.DataFrame(rows, columns=TIMELINE_COLUMNS)
    # Keep "epoch" an integer column when every snapshot has one; nullable otherwise.
    frame["epoch"] = frame["epoch"].astype("Int64")
    return frame
