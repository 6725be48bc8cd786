"""Threshold-grid cache kept on a PyTorch device, filled with torch operations.

Responses stay on their device: each batch is binned with
``torch.searchsorted`` and counted with ``torch.bincount`` there, and only
the results that a user asks for are copied to the host. The numbers equal
those of the numpy path (``LayerStats``) because the same grid, converted to
the data's dtype by ``native_thresholds``, decides every comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .grid import native_thresholds


def import_torch():
    """Import torch or raise an ImportError naming the extra to install."""
    try:
        import torch
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Accumulating statistics on a PyTorch device needs torch: "
            'pip install "iua-widgets[torch]"'
        ) from error
    return torch


@dataclass
class TorchBatchContribution:
    """Contribution of one batch to one layer, as tensors on the device."""

    inputs: int
    unit_hist: Any  # (thresholds + 2, units) int64
    input_counts: Any  # (inputs, thresholds) int64
    nonfinite: Any  # 0-d int64


def as_device_units(tensor, unit: str, channel_axis: int, device):
    """Reshape one response batch to ``(inputs, units)`` float32/float64 on ``device``.

    float16 and bfloat16 become float32 and integers and bool become float64,
    all exactly; channel units take the NaN-propagating max magnitude.
    """
    torch = import_torch()
    if not isinstance(tensor, torch.Tensor):
        tensor = torch.as_tensor(np.ascontiguousarray(tensor))
    tensor = tensor.detach().to(device)
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    elif not tensor.is_floating_point():
        tensor = tensor.double()
    inputs = tensor.shape[0]
    if unit == "element" or tensor.dim() == 1:
        return tensor.reshape(inputs, -1)
    moved = torch.movedim(tensor.abs(), channel_axis, 1)
    return moved.reshape(inputs, moved.shape[1], -1).amax(dim=2)


class TorchLayerStats:
    """Device-side twin of ``LayerStats``, with the same reading interface."""

    def __init__(self, name, unit_shape, grid, start_index, per_input, device):
        torch = import_torch()
        self._torch = torch
        self.name = name
        self.unit_shape = tuple(unit_shape)
        self.units = int(np.prod(self.unit_shape, dtype=np.int64))
        self.grid = grid
        self.start_index = start_index
        self.per_input = per_input
        self.device = torch.device(device)
        self.inputs = 0
        self._nonfinite = torch.zeros((), dtype=torch.int64, device=self.device)
        self._cumulative = torch.zeros((len(grid), self.units), dtype=torch.int64, device=self.device)
        self._sums = torch.zeros(len(grid), dtype=torch.int64, device=self.device)
        self._square_sums = torch.zeros(len(grid), dtype=torch.int64, device=self.device)
        self._input_counts: list = []
        self._thresholds: dict = {}

    def thresholds_for(self, dtype):
        """Return the grid in ``dtype`` (float32 or float64) on this layer's device."""
        if dtype not in self._thresholds:
            numpy_dtype = np.float32 if dtype == self._torch.float32 else np.float64
            native = native_thresholds(self.grid, numpy_dtype)
            self._thresholds[dtype] = self._torch.as_tensor(native, device=self.device)
        return self._thresholds[dtype]

    def compute(self, magnitudes) -> TorchBatchContribution:
        """Bin one ``(inputs, units)`` batch on the device; nothing is stored yet."""
        torch = self._torch
        thresholds = self.thresholds_for(magnitudes.dtype)
        count = len(self.grid)
        bins = count + 2
        inputs, units = magnitudes.shape
        absolute = magnitudes.abs()
        # right=False gives the number of thresholds strictly below |x|, the bin.
        k = torch.searchsorted(thresholds, absolute.contiguous(), right=False)
        k = torch.where(torch.isfinite(absolute), k, torch.full_like(k, bins - 1))
        unit_index = k * units + torch.arange(units, device=self.device)
        unit_hist = torch.bincount(unit_index.reshape(-1), minlength=bins * units)
        input_index = torch.arange(inputs, device=self.device)[:, None] * bins + k
        input_hist = torch.bincount(input_index.reshape(-1), minlength=inputs * bins)
        input_hist = input_hist.reshape(inputs, bins)
        return TorchBatchContribution(
            inputs=inputs,
            unit_hist=unit_hist.reshape(bins, units),
            input_counts=torch.cumsum(input_hist[:, :count], dim=1),
            nonfinite=input_hist[:, -1].sum(),
        )

    def apply(self, part: TorchBatchContribution) -> None:
        """Add one computed batch to the device-side statistics."""
        torch = self._torch
        count = len(self.grid)
        if self.units * self.units * max(part.inputs, 1) >= 2**62:
            raise OverflowError(
                f"Layer {self.name!r} has {self.units} units: squared per-input counts of a "
                f"batch of {part.inputs} could overflow int64 on the device. Use smaller "
                "batches or the host engine (torch_device=None)."
            )
        self._cumulative += torch.cumsum(part.unit_hist[:count], dim=0)
        counts = part.input_counts
        self._sums += counts.sum(dim=0)
        self._square_sums += (counts * counts).sum(dim=0)
        if self.per_input == "grid":
            self._input_counts.append(counts.to(torch.int32 if self.units < 2**31 else torch.int64))
        elif self.per_input == "start":
            self._input_counts.append(counts[:, self.start_index].clone())
        self._nonfinite += part.nonfinite
        self.inputs += part.inputs

    # -- the reading interface of LayerStats, copied to the host on demand --

    @property
    def cumulative(self) -> np.ndarray:
        return self._cumulative.cpu().numpy()

    @property
    def count_sums(self) -> list[int]:
        return [int(v) for v in self._sums.cpu().tolist()]

    @property
    def count_square_sums(self) -> list[int]:
        return [int(v) for v in self._square_sums.cpu().tolist()]

    @property
    def nonfinite(self) -> int:
        return int(self._nonfinite.item())

    def inactive_at(self, index: int) -> np.ndarray | None:
        torch = self._torch
        if self.per_input == "grid":
            if not self._input_counts:
                return np.zeros(0, dtype=np.int64)
            return torch.cat([c[:, index] for c in self._input_counts]).cpu().numpy().astype(np.int64)
        if self.per_input == "start" and index == self.start_index:
            if not self._input_counts:
                return np.zeros(0, dtype=np.int64)
            return torch.cat(self._input_counts).cpu().numpy().astype(np.int64)
        return None

    def unit_counts_at(self, index: int) -> np.ndarray:
        return self._cumulative[index].cpu().numpy().astype(np.int64).reshape(self.unit_shape)

    def nbytes(self) -> int:
        detail = sum(c.numel() * c.element_size() for c in self._input_counts)
        return int(self._cumulative.numel() * 8 + detail)
