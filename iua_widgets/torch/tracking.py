"""Track Inactive Unit Analysis while a PyTorch model trains.

>>> tracker = TrainingTracker(model, probe_images, layers=["relu1", "relu2"], every=20)
>>> with tracker:
...     for epoch in range(epochs):
...         for images, labels in loader:
...             ...  # forward, backward, optimizer.step()
...             tracker.step(epoch=epoch)
>>> tracker.timeline(atol=1e-6)   # pandas DataFrame, recomputed from the cached snapshots
>>> Dashboard(tracker.latest)     # the full analysis of the last snapshot
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..engine import StreamingIUA
from .capture import responses
from .layers import LayerSpec
from .snapshots import Snapshot, TimelineCurves, timeline_curves, timeline_frame
from .training_capture import TrainingCapture

logger = logging.getLogger(__name__)

SOURCES = ("probe", "training")


class TrainingTracker:
    """Record snapshots of Inactive Unit Analysis at chosen steps of a training loop.

    Call :meth:`step` after every optimizer step (and :meth:`epoch_end` after
    every epoch when ``every="epoch"``). Use the tracker as a context
    manager, or call :meth:`start` and :meth:`close` yourself.

    Parameters
    ----------
    model
        The model being trained.
    probe
        The fixed inputs analysed at every snapshot (``source="probe"``): a
        tensor or numpy array of inputs, split into batches of ``batch_size``,
        or an iterable of batches in any form ``responses`` accepts (a
        ``DataLoader`` without shuffling or random augmentation, a list of
        tensors or of ``(input, target)`` pairs). Unused for ``source="training"``.
    layers
        Modules to analyse, as for :func:`iua_widgets.torch.responses`
        (names and/or types); ``None`` selects every ``torch.nn.ReLU``.
    every
        A positive int: snapshot after every ``every``-th step. ``"epoch"``:
        snapshot at every :meth:`epoch_end`.
    source
        ``"probe"``: each snapshot runs the probe set through the model in
        eval mode under ``torch.no_grad()``, then restores every module's
        training flag. ``"training"``: no extra forward pass; forward hooks
        record the responses of the training batches themselves (forward
        passes made while the model is in training mode), and each snapshot
        analyses the batches seen since the previous one.
    rtol, atol, unit, channel_axis, per_input
        As for :class:`~iua_widgets.StreamingIUA`. The timeline can be
        recomputed at any value of the resulting threshold grid.
    batch_size
        Batch size used to split a probe given as one tensor.
    keep_engines
        Keep the full analysis of every snapshot (``Snapshot.engine``), not
        only of the latest one.
    device
        Device the probe inputs are moved to; ``None`` uses the model's.

    Notes
    -----
    Cost of one snapshot with ``source="probe"``: one no-grad forward pass over
    the probe set, binning of every tracked response against the threshold
    grid (linear in probe inputs times units), and ``len(grid)`` cache reads to
    summarise it. It keeps ``2 * layers * len(grid)`` numbers for the timeline;
    the latest snapshot's engine keeps ``4 * len(grid)`` bytes per unit plus,
    with ``per_input="grid"``, ``4 * len(grid)`` bytes per probe input, per layer.

    With ``source="training"`` every training forward pass also bins the
    tracked responses, and no extra forward pass is made. Such a snapshot
    mixes weights from the whole window between two snapshots and sees
    different inputs each time, so "dead" means "inactive on every training
    input of the window", and Dropout or BatchNorm in training mode affect it.
    """

    def __init__(
        self,
        model: nn.Module,
        probe: Any = None,
        layers: LayerSpec | Iterable[LayerSpec] | None = None,
        *,
        every: int | str = "epoch",
        source: str = "probe",
        rtol: float = 1e-05,
        atol: float = 1e-08,
        unit: str = "element",
        channel_axis: int = 1,
        per_input: str = "grid",
        batch_size: int = 256,
        keep_engines: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
        self.every = _check_every(every)
        self.source = source
        self.model = model
        self.keep_engines = bool(keep_engines)
        self._settings = dict(
            rtol=rtol, atol=atol, unit=unit, channel_axis=channel_axis, per_input=per_input
        )
        # Validates the settings now and fixes the grid every snapshot shares.
        template = StreamingIUA(**self._settings)
        self._template = template
        self.grid = template.grid
        self.rtol = template.rtol
        self.atol = template.atol
        if source == "probe":
            if probe is None:
                raise ValueError(
                    'source="probe" needs a probe set: pass probe=<tensor of inputs> or a '
                    'DataLoader, or use source="training" to analyse the training batches.'
                )
            batches = _probe_batches(probe, batch_size)
            self._responses = responses(model, batches, layers, device=device)
            self._capture = None
        else:
            self._responses = None
            self._capture = TrainingCapture(model, layers, self._new_engine)
        self.snapshots: list[Snapshot] = []
        self.steps_done = 0
        self.epoch: int | None = None
        self._observers: list[Callable[[TrainingTracker], None]] = []
        self._lock = threading.RLock()
        self._depth = 0

    def __repr__(self) -> str:
        return (
            f"TrainingTracker(model={type(self.model).__name__}, every={self.every!r}, "
            f"source={self.source!r}, snapshots={len(self.snapshots)})"
        )

    # -- life cycle --------------------------------------------------------

    def start(self) -> TrainingTracker:
        """Attach the training hooks, and snapshot the untrained state (probe source only).

        Calls nest: only the outermost :meth:`close` stops tracking, so a
        training function may start and close a tracker its caller already started.
        """
        self._depth += 1
        if self._depth > 1:
            return self
        logger.info("Tracking %s every %r (source=%s)", type(self.model).__name__,
                    self.every, self.source)
        if self._capture is not None:
            self._capture.attach()
        elif not self.snapshots:
            self.snapshot()
        return self

    def close(self, *, final_snapshot: bool = True) -> None:
        """Detach the hooks and, if steps ran since the last snapshot, take a last one."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        try:
            last_step = self.snapshots[-1].step if self.snapshots else None
            if final_snapshot and last_step != self.steps_done and self._window_ready():
                self.snapshot()
        finally:
            if self._capture is not None:
                self._capture.detach()
            logger.info("Tracking stopped after %d steps and %d snapshots",
                        self.steps_done, len(self.snapshots))
            self._notify()

    def __enter__(self) -> TrainingTracker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        # After an exception, skip the final snapshot: the model may be half-updated.
        self.close(final_snapshot=exc_info[0] is None)

    # -- training loop calls -------------------------------------------------

    def step(self, step: int | None = None, epoch: int | None = None) -> Snapshot | None:
        """Count one optimizer step; snapshot if it is an ``every``-th step.

        ``step`` sets the step count instead of adding one, ``epoch`` records
        the epoch in progress. Returns the new snapshot, or ``None``.
        """
        self.steps_done = self.steps_done + 1 if step is None else int(step)
        if epoch is not None:
            self.epoch = int(epoch)
        if isinstance(self.every, int) and self.steps_done % self.every == 0:
            if self._window_ready():
                return self.snapshot()
        return None

    def epoch_end(self, epoch: int | None = None) -> Snapshot | None:
        """Mark the end of an epoch; snapshot if ``every="epoch"``."""
        if epoch is not None:
            self.epoch = int(epoch)
        if self.every == "epoch" and self._window_ready():
            return self.snapshot()
        return None

    def snapshot(self, step: int | None = None, epoch: int | None = None) -> Snapshot:
        """Analyse the model now and append a snapshot, whatever ``every`` says.

        Raises
        ------
        RuntimeError
            With ``source="training"``, when no training forward pass ran
            since the previous snapshot.
        """
        step = self.steps_done if step is None else int(step)
        epoch = self.epoch if epoch is None else int(epoch)
        started = time.perf_counter()
        if self._capture is not None:
            engine = self._capture.take_window()
            if engine.inputs_seen == 0:
                raise RuntimeError(
                    f"No training forward pass ran since the previous snapshot (step {step}), "
                    'so there is nothing to analyse. With source="training" call snapshot() '
                    "only after the model ran in training mode."
                )
        else:
            engine = self._new_engine()
            engine.consume(self._responses)
        snapshot = Snapshot.from_engine(
            engine, step=step, epoch=epoch, seconds=time.perf_counter() - started
        )
        with self._lock:
            if self.snapshots and not self.keep_engines:
                self.snapshots[-1] = dataclasses.replace(self.snapshots[-1], engine=None)
            self.snapshots.append(snapshot)
        logger.debug("Snapshot at step %d took %.3f s", step, snapshot.seconds)
        self._notify()
        return snapshot

    def _window_ready(self) -> bool:
        return self._capture is None or self._capture.inputs_pending() > 0

    def _new_engine(self) -> StreamingIUA:
        return StreamingIUA(**self._settings)

    # -- reading -----------------------------------------------------------

    @property
    def latest(self) -> StreamingIUA | None:
        """The full analysis of the last snapshot (for ``Dashboard``), or ``None``."""
        with self._lock:
            return self.snapshots[-1].engine if self.snapshots else None

    @property
    def layer_names(self) -> list[str]:
        """Tracked response names, in order of first appearance."""
        names: dict[str, None] = {}
        with self._lock:
            for snapshot in self.snapshots:
                names.update(dict.fromkeys(snapshot.layers))
        return list(names)

    def threshold_index(self, atol: float | None = None, *, snap: bool = False) -> int:
        """Grid index of ``atol`` (the tracker's ``atol`` when ``None``)."""
        return self._template.threshold_index(atol, snap=snap)

    def curves(self, atol: float | None = None, *, snap: bool = False) -> TimelineCurves:
        """Dead and mean inactive percentages of every layer at a grid ``atol``, as arrays."""
        index = self.threshold_index(atol, snap=snap)
        with self._lock:
            return timeline_curves(list(self.snapshots), self.grid, index)

    def timeline(self, atol: float | None = None, *, snap: bool = False) -> pd.DataFrame:
        """Return one row per snapshot and layer at a grid ``atol``, from the cache alone.

        Columns: step, epoch, layer, units, inputs, dead units, dead %,
        mean inactive %, atol. An off-grid ``atol`` raises ``ValueError``
        naming its grid neighbours, or is snapped with ``snap=True``.
        """
        index = self.threshold_index(atol, snap=snap)
        with self._lock:
            return timeline_frame(list(self.snapshots), self.grid, index)

    def nbytes(self) -> int:
        """Bytes of the timeline summaries plus every engine still kept."""
        with self._lock:
            total = sum(snapshot.nbytes() for snapshot in self.snapshots)
            total += sum(s.engine.nbytes() for s in self.snapshots if s.engine is not None)
        return int(total)

    # -- observing ---------------------------------------------------------

    def observe(self, callback: Callable[[TrainingTracker], None]) -> None:
        """Call ``callback(tracker)`` after every snapshot and when tracking stops."""
        if callback not in self._observers:
            self._observers.append(callback)

    def unobserve(self, callback: Callable[[TrainingTracker], None]) -> None:
        """Stop calling ``callback``."""
        if callback in self._observers:
            self._observers.remove(callback)

    def _notify(self) -> None:
        for callback in list(self._observers):
            callback(self)


def _check_every(every: int | str) -> int | str:
    if every == "epoch":
        return every
    if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 1:
        raise ValueError(
            f'every must be a positive int (snapshot every that many steps) or "epoch", '
            f"got {every!r}."
        )
    return int(every)


def _probe_batches(probe: Any, batch_size: int) -> Any:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if isinstance(probe, np.ndarray):
        probe = torch.from_numpy(probe)
    if isinstance(probe, torch.Tensor):
        if probe.ndim == 0 or len(probe) == 0:
            raise ValueError(
                f"probe is a tensor of shape {tuple(probe.shape)}; expected at least one "
                "input along the first axis."
            )
        return list(torch.split(probe, batch_size))
    if isinstance(probe, torch.utils.data.DataLoader):
        if isinstance(probe.sampler, torch.utils.data.RandomSampler):
            warnings.warn(
                "The probe DataLoader shuffles. Dead and inactive fractions do not depend "
                "on the order, but per-input results do, and with drop_last=True each "
                "snapshot sees different inputs. Pass shuffle=False for a fixed probe set.",
                UserWarning,
                stacklevel=3,
            )
        return probe
    if isinstance(probe, Iterable) and not isinstance(probe, str | bytes):
        # A generator would be exhausted after the first snapshot, so keep its batches.
        return probe if isinstance(probe, list | tuple) else list(probe)
    raise TypeError(
        f"probe must be a tensor of inputs or an iterable of batches (a DataLoader), "
        f"got {type(probe).__name__}."
    )
