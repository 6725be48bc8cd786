"""Brute-force references the engine is checked against."""

from __future__ import annotations

import numpy as np


def inactive_mask(array: np.ndarray, atol: float, unit: str = "element", channel_axis: int = 1):
    """Boolean ``(inputs, units...)`` mask of inactive units, straight from the definition."""
    values = np.asarray(array).astype(np.float64)
    mask = np.isclose(values, 0.0, rtol=1e-5, atol=atol)
    if unit == "element" or values.ndim == 1:
        return mask
    moved = np.moveaxis(mask, channel_axis, 1)
    elements = int(np.prod(moved.shape[2:]))
    return moved.reshape(moved.shape[0], moved.shape[1], elements).all(axis=2)


def brute_force(batches: list[dict[str, np.ndarray]], atol: float, unit="element", channel_axis=1):
    """Per layer: per-input inactive counts, per-unit counts and inputs, from whole masks."""
    out: dict[str, dict] = {}
    for batch in batches:
        for name, array in batch.items():
            if len(array) == 0:
                continue
            mask = inactive_mask(array, atol, unit, channel_axis)
            entry = out.setdefault(name, {"inactive": [], "unit": 0, "inputs": 0})
            entry["inactive"].extend(mask.reshape(len(mask), -1).sum(axis=1).tolist())
            entry["unit"] = entry["unit"] + mask.sum(axis=0).astype(np.int64)
            entry["inputs"] += len(mask)
    return out


def dnikit_producer(batches: list[dict[str, np.ndarray]]):
    """A DNIKit producer that yields ``batches`` as DNIKit ``Batch`` objects."""
    from dnikit.base import Batch

    def producer(batch_size: int):
        for batch in batches:
            yield Batch(dict(batch))

    return producer


def split(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Split whole-dataset arrays into batches of ``batch_size`` inputs."""
    total = len(next(iter(arrays.values())))
    return [
        {name: array[s : s + batch_size] for name, array in arrays.items()}
        for s in range(0, total, batch_size)
    ]
