"""Layout of a layer's per-unit inactive proportions as a 2-D grid of at most 256 x 256 cells.

Pure numpy; the widgets in :mod:`.heatmap` draw what this module computes.

Rules, by unit shape (the same rules are stated in each plot title):

- ``()`` (a 1-D response, one unit) and ``(U,)`` (dense layers, channel
  units): units in row-major order. Up to ``ROW_UNITS`` units form one row.
  More are folded into rows of the smallest width from ``ceil(sqrt(cells))``
  to ``sqrt(2 * cells)`` that divides the cell count, so the grid is full
  and at most twice as wide as high. When no width in that range divides
  it, rows are ``ceil(sqrt(cells))`` wide, and the cells after the last unit
  (fewer than one row) are padding: 0 in ``values``, drawn in grey
  (``PADDING_COLOR``). Above ``MAX_SIDE**2`` units each cell is the mean of
  ``k = ceil(U / MAX_SIDE**2)`` consecutive units (the last cell may hold fewer).
- ``(H, W)``: one cell per unit, or above ``MAX_SIDE`` rows or columns the
  mean of ``k x k`` blocks with ``k = ceil(max(H, W) / MAX_SIDE)``. Blocks at
  the bottom and right edges may be smaller, and each is the mean of the
  units it contains.
- ``(C, H, W)`` and more dimensions (conv element units): all axes before the
  last two count as channels. The grid shows one channel, or the mean over
  all channels at each spatial position; then the ``(H, W)`` rule applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Largest number of rows or columns of cells.
MAX_SIDE = 256
#: Largest 1-D layer shown as a single row.
ROW_UNITS = 32
#: Colour stops of the 0-1 scale (viridis at 0, 1/8, ..., 1), shared by bqplot and the PNG writer.
COLORS = (
    "#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c",
    "#28ae80", "#5ec962", "#addc30", "#fde725",
)
#: Colour of padding cells, which contain no unit. Grey is not on the colour scale, so it
#: reads as no value.
PADDING_COLOR = "#bdbdbd"
#: Channel selection meaning "mean over all channels".
MEAN_OVER_CHANNELS = -1


@dataclass(frozen=True)
class HeatmapGrid:
    """Cells of one layer's heatmap and the map from cells back to units.

    Attributes
    ----------
    values
        ``(rows, cols)`` float32 cell values in [0, 1]; padding cells are 0.
    unit_shape
        The layer's unit shape.
    rule
        Downsampling rule in words, for the plot title.
    kind
        ``"flat"`` (units in row-major order folded into rows) or ``"grid"``
        (the last two axes of the unit shape).
    block
        Units per cell along each side (``"grid"``) or per cell (``"flat"``).
    width
        Cells per row of a ``"flat"`` layout.
    channel
        Channel shown (index into the flattened leading axes), or
        ``MEAN_OVER_CHANNELS``; ``None`` for layouts without channels.
    padding
        Cells after the last unit, at the end of the last row (``"flat"`` only).
    """

    values: np.ndarray
    unit_shape: tuple[int, ...]
    rule: str
    kind: str
    block: int
    width: int = 0
    channel: int | None = None
    padding: int = 0

    @property
    def units(self) -> int:
        return int(np.prod(self.unit_shape, dtype=np.int64))

    def padding_mask(self) -> np.ndarray:
        """Return a ``(rows, cols)`` bool array, true on the padding cells."""
        mask = np.zeros(self.values.shape, dtype=bool)
        if self.padding:
            mask[-1, mask.shape[1] - self.padding :] = True
        return mask

    def describe_cell(self, row: int, col: int) -> str:
        """Name the unit(s) under cell ``(row, col)`` in the layer's own shape, with the value."""
        rows, cols = self.values.shape
        if not (0 <= row < rows and 0 <= col < cols):
            return ""
        value = float(self.values[row, col])
        if self.kind == "flat":
            return self._describe_flat(row * self.width + col, value)
        return self._describe_grid(row, col, value)

    def _describe_flat(self, cell: int, value: float) -> str:
        first = cell * self.block
        last = min(first + self.block, self.units)
        if first >= self.units:
            return "padding cell (no unit)"
        if self.unit_shape == ():
            return f"unit (): inactive proportion {value:.4g}"
        if last - first == 1:
            return f"unit ({first},): inactive proportion {value:.4g}"
        return f"units ({first}:{last},): mean inactive proportion {value:.4g}"

    def _describe_grid(self, row: int, col: int, value: float) -> str:
        height, width = self.unit_shape[-2:]
        top, left = row * self.block, col * self.block
        bottom, right = min(top + self.block, height), min(left + self.block, width)
        spatial = [_span(top, bottom), _span(left, right)]
        single = bottom - top == 1 and right - left == 1
        leading = self.unit_shape[:-2]
        if not leading:
            index = spatial
        elif self.channel == MEAN_OVER_CHANNELS:
            index = [":"] * len(leading) + spatial
            single = False
        else:
            index = [str(int(i)) for i in np.unravel_index(self.channel, leading)] + spatial
        text = f"({', '.join(index)})"
        if single:
            return f"unit {text}: inactive proportion {value:.4g}"
        return f"units {text}: mean inactive proportion {value:.4g}"


def _span(start: int, stop: int) -> str:
    return str(start) if stop - start == 1 else f"{start}:{stop}"


def channel_count(unit_shape: tuple[int, ...]) -> int:
    """Number of channels (product of all axes before the last two); 0 below three axes."""
    if len(unit_shape) < 3:
        return 0
    return int(np.prod(unit_shape[:-2], dtype=np.int64))


def block_mean(values: np.ndarray, block: int) -> np.ndarray:
    """Mean of ``block x block`` tiles of a 2-D array; edge tiles average the cells they hold."""
    if block == 1:
        return values.astype(np.float64, copy=False)
    height, width = values.shape
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    padded = np.zeros((rows * block, cols * block), dtype=np.float64)
    padded[:height, :width] = values
    counts = np.zeros_like(padded)
    counts[:height, :width] = 1.0
    sums = padded.reshape(rows, block, cols, block).sum(axis=(1, 3))
    sizes = counts.reshape(rows, block, cols, block).sum(axis=(1, 3))
    return sums / sizes


def run_mean(values: np.ndarray, block: int) -> np.ndarray:
    """Mean of runs of ``block`` consecutive values; the last run may be shorter."""
    if block == 1:
        return values.astype(np.float64, copy=False)
    cells = math.ceil(len(values) / block)
    padded = np.zeros(cells * block, dtype=np.float64)
    padded[: len(values)] = values
    sizes = np.full(cells, float(block))
    sizes[-1] = len(values) - (cells - 1) * block
    return padded.reshape(cells, block).sum(axis=1) / sizes


def heatmap_grid(
    proportion: np.ndarray, *, channel: int | None = MEAN_OVER_CHANNELS
) -> HeatmapGrid:
    """Lay out ``unit_inactive_proportion`` of any unit shape in at most ``MAX_SIDE**2`` cells.

    NaN (a layer with no inputs yet) becomes 0. ``channel`` picks one channel
    of a layout with channels, or ``MEAN_OVER_CHANNELS``; other layouts
    ignore it.

    Raises
    ------
    ValueError
        When ``channel`` is not a channel of the layer.
    """
    proportion = np.nan_to_num(np.asarray(proportion, dtype=np.float64), nan=0.0)
    shape = tuple(proportion.shape)
    if len(shape) <= 1:
        return _flat_grid(proportion.reshape(-1), shape)
    if len(shape) == 2:
        return _spatial_grid(proportion, shape, None, "")
    channels = channel_count(shape)
    stacked = proportion.reshape(channels, *shape[-2:])
    if channel is None or channel == MEAN_OVER_CHANNELS:
        return _spatial_grid(
            stacked.mean(axis=0), shape, MEAN_OVER_CHANNELS, f"mean over {channels:,} channels, "
        )
    if not 0 <= channel < channels:
        raise ValueError(
            f"Channel {channel} does not exist in a layer of unit shape {shape}; "
            f"pick 0 to {channels - 1} or MEAN_OVER_CHANNELS ({MEAN_OVER_CHANNELS})."
        )
    return _spatial_grid(
        stacked[channel], shape, channel, f"{channel_label(channel, shape[:-2])}, "
    )


def channel_label(channel: int, leading: tuple[int, ...]) -> str:
    """Name a channel: ``channel 2``, or ``channel (1, 0)`` when several axes lead."""
    index = [str(int(i)) for i in np.unravel_index(channel, leading)]
    if len(index) == 1:
        return f"channel {index[0]}"
    return f"channel ({', '.join(index)})"


def row_width(cells: int) -> int:
    """Cells per row of a flat layout of ``cells`` cells (the rule in the module docstring)."""
    if cells <= ROW_UNITS:
        return max(cells, 1)
    side = math.ceil(math.sqrt(cells))
    widest = min(math.isqrt(2 * cells), MAX_SIDE)
    for width in range(side, widest + 1):
        if cells % width == 0:
            return width
    return side


def _flat_grid(flat: np.ndarray, shape: tuple[int, ...]) -> HeatmapGrid:
    units = len(flat)
    block = max(1, math.ceil(units / MAX_SIDE**2))
    cells = run_mean(flat, block)
    count = len(cells)
    width = row_width(count)
    rows = math.ceil(count / width)
    values = np.zeros(rows * width, dtype=np.float64)
    values[:count] = cells
    padding = rows * width - count
    rule = f"rows of {width:,}, "
    rule += "1 unit per cell" if block == 1 else f"mean of {block:,} consecutive units per cell"
    if padding:
        rule += f", {padding} padding cell{'s' if padding > 1 else ''} in grey"
    return HeatmapGrid(
        values.reshape(rows, width).astype(np.float32), shape, rule, "flat", block, width,
        padding=padding,
    )


def _spatial_grid(
    plane: np.ndarray, shape: tuple[int, ...], channel: int | None, prefix: str
) -> HeatmapGrid:
    block = max(1, math.ceil(max(plane.shape) / MAX_SIDE))
    values = block_mean(plane, block)
    rule = "1 unit per cell" if block == 1 else f"mean of {block}x{block} blocks"
    return HeatmapGrid(values.astype(np.float32), shape, prefix + rule, "grid", block, 0, channel)


def color_table(colors: tuple[str, ...] = COLORS) -> np.ndarray:
    """Return the colour stops as a ``(stops, 3)`` float64 array of 0-255 sRGB values."""
    return np.array(
        [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in colors], dtype=np.float64
    )


def to_rgb(values: np.ndarray, colors: tuple[str, ...] = COLORS) -> np.ndarray:
    """Map values in [0, 1] to uint8 RGB like bqplot's ``ColorScale(colors=..., min=0, max=1)``.

    bqplot (d3 ``scaleLinear`` with evenly spaced stops, clamped, ``interpolateRgb``)
    interpolates linearly in sRGB between neighbouring stops and rounds.
    """
    stops = color_table(colors)
    position = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(stops) - 1)
    lower = np.minimum(np.floor(position).astype(np.int64), len(stops) - 2)
    fraction = (position - lower)[..., None]
    rgb = stops[lower] * (1.0 - fraction) + stops[lower + 1] * fraction
    return np.rint(rgb).astype(np.uint8)


def grid_rgb(grid: HeatmapGrid) -> np.ndarray:
    """Return the cells of ``grid`` as uint8 RGB as the figure draws them, padding in grey."""
    rgb = to_rgb(grid.values)
    rgb[grid.padding_mask()] = color_table((PADDING_COLOR,))[0].astype(np.uint8)
    return rgb
