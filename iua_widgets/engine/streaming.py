"""The streaming engine: feed batches of responses, ask for results at any grid threshold."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .atomic import deferred_interrupt
from .grid import (
    custom_grid,
    grid_index,
    native_thresholds,
    threshold_grid,
    validate_tolerance,
)
from .layer import (
    PER_INPUT_POLICIES,
    UNITS,
    LayerStats,
    as_units,
    cache_bytes_per_unit,
    channel_unit_shape,
    check_dtype,
    detail_dtype,
)
from .result import Result, layer_result
from .torch_stats import TorchLayerStats, as_device_units, import_torch

logger = logging.getLogger(__name__)

#: Default limit on the threshold cache of all layers together, in bytes.
DEFAULT_MAX_CACHE_BYTES = 4 * 2**30


def _size(nbytes: int) -> str:
    """Format a byte count for messages, in the largest binary unit that keeps it at 1 or more."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit} ({nbytes:,} bytes)"
    return f"{nbytes:,} bytes"


def to_numpy(value: Any, name: str) -> np.ndarray:
    """Convert one response (numpy array, PyTorch tensor, nested list) to a numpy array."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        tensor = value.detach()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()  # exact: bfloat16 is a truncated float32
        value = tensor.cpu().numpy()
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"Response {name!r} is a masked array, and the analysis has no notion of masked "
            "elements. Pass value.filled(0) to count them as inactive, or drop them first."
        )
    array = np.asarray(value)
    if array.ndim == 0:
        raise ValueError(
            f"Response {name!r} is a scalar; expected an array whose first axis "
            "is the input (batch) axis."
        )
    return array


class StreamingIUA:
    """Inactive Unit Analysis fed batch by batch, with results at any grid threshold.

    Parameters
    ----------
    rtol, atol
        Tolerances of ``numpy.isclose(x, 0, rtol, atol)``. Against zero this is
        ``|x| <= atol``, so ``rtol`` has no effect; it is kept for DNIKit
        compatibility. ``atol`` is added to the threshold grid.
    unit
        ``"element"`` (every element of a response is a unit) or ``"channel"``
        (one unit per index of ``channel_axis``, inactive when all its
        elements are).
    channel_axis
        Axis of the full response array holding channels: 1 for NCHW, -1 for NHWC.
    per_input
        Per-input detail kept: ``"grid"`` (every threshold, 2 bytes per input,
        layer and threshold, 4 from 65,536 units), ``"start"`` (``atol`` only, 8 bytes per input and
        layer) or ``"none"``.
    max_cache_bytes
        Limit on the threshold cache of all layers; a layer that would pass it
        raises ``MemoryError`` before anything is allocated.
    torch_device
        ``None`` (default) keeps the cache in numpy on the host. A PyTorch
        device (``"cuda"``, ``"cpu"``, a ``torch.device``) keeps it on that
        device and bins every batch there with torch operations, so responses
        captured on a GPU are never copied to the host. Results are the same.
    grid
        Thresholds at which results are cached (0 and ``atol`` are always
        added). ``None`` uses 0 and the 1-2-5 steps of every decade from
        1e-12 to 1e2; a coarser grid, such as one value per decade, needs
        proportionally less memory.

    Thread safety: ``update`` and every read take one lock, so a dashboard may
    read while another thread feeds batches.
    """

    def __init__(
        self,
        *,
        rtol: float = 1e-05,
        atol: float = 1e-08,
        unit: str = "element",
        channel_axis: int = 1,
        per_input: str = "grid",
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
        torch_device: Any = None,
        grid: Any = None,
    ) -> None:
        self.rtol = validate_tolerance("rtol", rtol)
        self.atol = validate_tolerance("atol", atol)
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}.")
        if per_input not in PER_INPUT_POLICIES:
            raise ValueError(f"per_input must be one of {PER_INPUT_POLICIES}, got {per_input!r}.")
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, int | np.integer):
            raise TypeError(f"channel_axis must be an int, got {channel_axis!r}.")
        self.unit = unit
        self.channel_axis = int(channel_axis)
        self.per_input = per_input
        if isinstance(max_cache_bytes, bool) or not isinstance(max_cache_bytes, int | np.integer):
            raise TypeError(f"max_cache_bytes must be an int, got {max_cache_bytes!r}.")
        if max_cache_bytes <= 0:
            raise ValueError(f"max_cache_bytes must be positive, got {max_cache_bytes!r}.")
        self.max_cache_bytes = int(max_cache_bytes)
        self.torch_device = torch_device
        if torch_device is not None:
            import_torch()
        self.grid = threshold_grid(self.atol) if grid is None else custom_grid(grid, self.atol)
        self.start_index = grid_index(self.grid, self.atol)
        self._thresholds = {
            np.dtype(np.float32): native_thresholds(self.grid, np.float32),
            np.dtype(np.float64): self.grid,
        }
        self._layers: dict[str, LayerStats] = {}
        # Per-layer kernel buffers, reused from batch to batch and outside
        # max_cache_bytes: per-input counts and, for integer and float16
        # responses, the batch converted to float.
        self._scratch: dict[str, dict] = {}
        self._observers: list[Callable[[StreamingIUA], None]] = []
        self._lock = threading.RLock()
        self.inputs_seen = 0
        self.batches_seen = 0
        self.expected_inputs: int | None = None
        #: File this engine was read from by ``load``, or ``None``.
        self.loaded_from: Any = None
        self._started: float | None = None
        self._last_update: float | None = None

    # -- feeding ---------------------------------------------------------

    def update(self, batch: Mapping[str, Any]) -> None:
        """Add one batch: a mapping from response name to an array of shape ``(inputs, ...)``.

        The batch is applied to every layer or, if any check fails, to none.
        A batch with zero inputs is ignored.
        """
        arrays = self._validate(batch)
        if not arrays:
            return
        inputs = next(iter(arrays.values())).shape[0]
        if inputs == 0:
            return
        if self.torch_device is not None:
            self._update_on_device(arrays, inputs)
            return
        with self._lock:
            # Computing under the lock too, because each layer's kernel buffers
            # are reused from batch to batch.
            prepared: dict[str, tuple[LayerStats, Any]] = {}
            new_layers: dict[str, LayerStats] = {}
            try:
                for name, array in arrays.items():
                    scratch = self._scratch.setdefault(name, {})
                    magnitudes = as_units(
                        array, self.unit, self.channel_axis, name, float(self.grid[-1]), scratch
                    )
                    thresholds = self._thresholds[magnitudes.dtype]
                    layer = self._layers.get(name)
                    if layer is None:
                        layer = LayerStats(
                            name, self._unit_shape(array, name), self.grid, self.start_index,
                            self.per_input,
                        )
                        new_layers[name] = layer
                    part = layer.compute(magnitudes, thresholds, scratch)
                    prepared[name] = (layer, part)
                    if part.nonfinite and magnitudes.shape[1:] != array.shape[1:]:
                        # A channel's max only shows that some element is NaN or inf,
                        # so count the values themselves.
                        part.nonfinite = int(np.count_nonzero(~np.isfinite(array)))
                self._apply_prepared(prepared, new_layers)
            except BaseException:
                # Computing may already have stored unit counts (see LayerStats.compute).
                with deferred_interrupt():
                    for layer, part in prepared.values():
                        layer.discard(part)
                raise
            self._count_batch(arrays, inputs)
        self._finish_update()

    def _apply_prepared(
        self, prepared: dict[str, tuple[LayerStats, Any]], new_layers: dict[str, LayerStats]
    ) -> None:
        """Apply every computed part, or restore the layers applied so far and raise."""
        states = []
        with deferred_interrupt():
            try:
                for layer, part in prepared.values():
                    states.append((layer, part, layer.snapshot()))
                    layer.apply(part)
            except BaseException:
                for layer, part, state in states:
                    layer.restore(state, part)
                raise
            self._layers.update(new_layers)

    def _count_batch(self, arrays: dict[str, Any], inputs: int) -> None:
        now = time.perf_counter()
        if self._started is None:
            self._started = now
            logger.info("Streaming IUA started with %d layers", len(arrays))
        self._last_update = now
        self.inputs_seen += inputs
        self.batches_seen += 1

    def _finish_update(self) -> None:
        self._warn_nonfinite()
        for observer in list(self._observers):
            try:
                observer(self)
            except Exception as error:
                # The batch is applied; a failing view must not stop the stream.
                logger.exception("Observer %r failed after batch %d", observer, self.batches_seen)
                warnings.warn(
                    f"Observer {observer!r} raised {error!r} after batch {self.batches_seen}; "
                    "the batch was applied and streaming goes on.",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def _warn_nonfinite(self) -> None:
        # One warning per layer, when its first NaN or inf arrives.
        warned = self.__dict__.setdefault("_nonfinite_warned", set())
        for name, layer in list(self._layers.items()):
            # NOTE: device-side layers are not checked here, because reading their
            # count would synchronise the device on every batch; Result.nonfinite
            # still reports it.
            if isinstance(layer, TorchLayerStats):
                continue
            if name not in warned and layer.nonfinite:
                warned.add(name)
                warnings.warn(
                    f"Response {name!r} contains {layer.nonfinite} NaN or infinite values. "
                    "They count as active (numpy.isclose returns False for them) and are "
                    "reported in Result.nonfinite; check the model for overflow or divergence.",
                    RuntimeWarning,
                    stacklevel=4,
                )

    def _update_on_device(self, arrays: dict[str, Any], inputs: int) -> None:
        prepared = {}
        with self._lock:
            for name, tensor in arrays.items():
                layer = self._layers.get(name)
                if layer is None:
                    layer = TorchLayerStats(
                        name, self._unit_shape(tensor, name), self.grid, self.start_index,
                        self.per_input, self.torch_device,
                    )
                magnitudes = as_device_units(tensor, self.unit, self.channel_axis, layer.device)
                part = layer.compute(magnitudes)
                if self.unit == "channel" and tensor.ndim > 2:
                    # A channel's max only shows that some element is NaN or inf.
                    import torch

                    values = torch.as_tensor(tensor, device=layer.device)
                    if values.is_floating_point():
                        part.nonfinite = (~torch.isfinite(values)).sum()
                prepared[name] = (layer, part)
            with deferred_interrupt():
                for name, (layer, part) in prepared.items():
                    self._layers.setdefault(name, layer)
                    layer.apply(part)
                self._count_batch(arrays, inputs)
        self._finish_update()

    def _unit_shape(self, array: np.ndarray, name: str) -> tuple[int, ...]:
        if self.unit == "channel":
            return channel_unit_shape(array.shape, self.channel_axis, name)
        return tuple(array.shape[1:])

    def _validate(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"A batch must be a mapping from response name to array, got {type(batch).__name__}."
            )
        arrays: dict[str, np.ndarray] = {}
        for name, value in batch.items():
            if not isinstance(name, str):
                raise TypeError(
                    f"Response names must be strings, got {name!r} ({type(name).__name__}). "
                    "Convert the keys with str() before feeding the batch."
                )
            if self.torch_device is not None and hasattr(value, "detach"):
                if value.dim() == 0:
                    to_numpy(value, name)  # raises the scalar error
                arrays[name] = value  # stays on its device
            else:
                arrays[name] = to_numpy(value, name)
                check_dtype(arrays[name].dtype, name)
        sizes = {name: a.shape[0] for name, a in arrays.items()}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{n!r}: {s}" for n, s in sizes.items())
            raise ValueError(
                f"The responses of one batch disagree on the number of inputs ({listed}); "
                "every response must have one row per input."
            )
        inputs = next(iter(sizes.values()), 0)
        added_bytes = 0
        with self._lock:
            for name, array in arrays.items():
                shape = self._unit_shape(array, name)
                layer = self._layers.get(name)
                if layer is not None and layer.unit_shape != shape:
                    raise ValueError(
                        f"Response {name!r} changed its unit shape from {layer.unit_shape} "
                        f"to {shape}; every batch of a layer must have the same shape after "
                        "the input axis. The statistics gathered so far are kept."
                    )
                units = int(np.prod(shape, dtype=np.int64))
                if layer is None and inputs:
                    added_bytes += cache_bytes_per_unit(len(self.grid)) * units
                added_bytes += inputs * self._detail_bytes_per_input(units)
            if inputs:
                self._check_budget(added_bytes, set(arrays) - set(self._layers))
        return arrays

    def _detail_bytes_per_input(self, units: int) -> int:
        if self.per_input == "grid":
            return detail_dtype(units).itemsize * len(self.grid)
        return 8 if self.per_input == "start" else 0

    def _check_budget(self, added_bytes: int, new_layers: set[str]) -> None:
        current = sum(layer.nbytes() for layer in self._layers.values())
        if current + added_bytes <= self.max_cache_bytes:
            return
        raise MemoryError(
            f"The analysis would need {_size(current + added_bytes)} "
            f"(now {_size(current)}; new layers {sorted(new_layers)}), above "
            f"max_cache_bytes={_size(self.max_cache_bytes)}. Use unit='channel', "
            "analyse fewer layers, use a coarser grid (grid=[1e-8, 1e-6, 1e-4]), "
            "keep less per-input detail (per_input='start' or "
            "'none'), or raise max_cache_bytes. Nothing of this batch was applied."
        )

    def consume(self, producer: Any, *, batch_size: int = 32) -> StreamingIUA:
        """Feed every batch of ``producer`` (any form ``IUA.introspect`` takes)."""
        from ..sources import expected_inputs, iter_batches

        batches = iter_batches(producer, batch_size=batch_size)
        expected = expected_inputs(producer)
        if expected is not None:
            self.expected_inputs = self.inputs_seen + expected
        elif self.expected_inputs is not None and self.expected_inputs <= self.inputs_seen:
            self.expected_inputs = None  # the total of an earlier, finished producer
        index = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as error:
                error.add_note(
                    f"Raised by the producer while reading batch {index}; the "
                    f"{index} batches before it are applied and kept."
                )
                raise
            try:
                self.update(batch)
            except Exception as error:
                error.add_note(f"Raised while applying batch {index}; it was not applied.")
                raise
            index += 1
        logger.info("Consumed %d batches, %d inputs in all", index, self.inputs_seen)
        return self

    # -- observing -------------------------------------------------------

    def observe(self, callback: Callable[[StreamingIUA], None]) -> None:
        """Call ``callback(engine)`` after every applied batch."""
        if callback not in self._observers:
            self._observers.append(callback)

    def unobserve(self, callback: Callable[[StreamingIUA], None]) -> None:
        """Stop calling ``callback``."""
        if callback in self._observers:
            self._observers.remove(callback)

    # -- progress --------------------------------------------------------

    @property
    def layer_names(self) -> list[str]:
        """Response names in the order they first arrived."""
        with self._lock:
            return list(self._layers)

    @property
    def elapsed(self) -> float:
        """Seconds from the first to the latest applied batch."""
        if self._started is None or self._last_update is None:
            return 0.0
        return self._last_update - self._started

    @property
    def inputs_per_second(self) -> float:
        """Mean throughput so far; 0.0 before two batches have arrived."""
        elapsed = self.elapsed
        return self.inputs_seen / elapsed if elapsed > 0 else 0.0

    def nbytes(self) -> int:
        """Bytes held by the caches of all layers, per-input detail included."""
        with self._lock:
            return sum(layer.nbytes() for layer in self._layers.values())

    # -- results ---------------------------------------------------------

    def threshold_index(self, atol: float | None = None, *, snap: bool = False) -> int:
        """Grid index of ``atol`` (the starting ``atol`` when ``None``)."""
        if atol is None:
            return self.start_index
        return grid_index(self.grid, atol, snap=snap)

    @property
    def results(self) -> dict[str, Result]:
        """Results at the starting ``(rtol, atol)``."""
        return self.results_at()

    def results_at(
        self, atol: float | None = None, rtol: float | None = None, *, snap: bool = False
    ) -> dict[str, Result]:
        """Results at a grid ``atol``, computed from the cache alone.

        An ``atol`` off the grid raises ``ValueError`` naming the nearest grid
        values, or with ``snap=True`` is replaced by the nearest one (the
        returned results carry the ``atol`` used).
        """
        rtol = self.rtol if rtol is None else validate_tolerance("rtol", rtol)
        index = self.threshold_index(atol, snap=snap)
        with self._lock:
            return {
                name: layer_result(layer, self.grid, index, rtol)
                for name, layer in self._layers.items()
            }

    def layer_result(self, name: str, atol: float | None = None, *, snap: bool = False) -> Result:
        """Result of one layer at a grid ``atol``."""
        index = self.threshold_index(atol, snap=snap)
        with self._lock:
            if name not in self._layers:
                raise KeyError(f"No response named {name!r}; known: {list(self._layers)}.")
            return layer_result(self._layers[name], self.grid, index, self.rtol)

    def layer_stats(self, name: str) -> LayerStats:
        """Return the cache of one layer, for reading only."""
        return self._layers[name]

    # -- scale-out (logic in persist.py and merge.py) ------------------------

    def save(self, path: Any) -> Any:
        """Write the cache to ``path`` atomically; returns the ``pathlib.Path`` written.

        The format is described in ``iua_widgets.engine.persist``.
        """
        from .persist import save

        return save(self, path)

    @classmethod
    def load(cls, path: Any, *, max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES) -> StreamingIUA:
        """Read a file written by ``save`` into a new engine that accepts further batches.

        Raises ``iua_widgets.engine.persist.AnalysisFileError`` (a ``ValueError``)
        for a corrupt, truncated, foreign or newer-version file.
        """
        from .persist import load

        return load(path, max_cache_bytes=max_cache_bytes)

    def merge(self, *others: Any) -> StreamingIUA:
        """Return a new engine holding the analysis of the union of the inputs, exactly.

        Call as ``StreamingIUA.merge(a, b, ...)`` or ``a.merge(b, ...)``; parts
        may be ``StreamingIUA`` or ``IUA`` objects and are left unchanged.
        Per-input detail is concatenated in part order. Raises ``ValueError``
        if the parts differ in settings, grid or a shared layer's unit shape.
        """
        from .merge import merge_engines

        return merge_engines([self, *others])
