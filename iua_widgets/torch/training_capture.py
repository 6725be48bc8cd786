"""Feed the responses of training forward passes to an analysis, through forward hooks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..engine import StreamingIUA
from .capture import _first_tensor
from .layers import LayerSpec, select_layers, warn_non_relu

logger = logging.getLogger(__name__)


class TrainingCapture:
    """Analyse the tracked layers on every forward pass made in training mode.

    Each selected module gets a forward hook that copies its output, and the
    model itself gets one that, after the whole forward pass, feeds the
    copies as one batch to the current window's engine. Forward passes made
    in eval mode (validation, the tracker's own probe runs) are ignored.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec | Iterable[LayerSpec] | None,
        new_engine: Callable[[], StreamingIUA],
    ) -> None:
        self.model = model
        self.layers = select_layers(model, layers)
        warn_non_relu(self.layers, stacklevel=4)
        self._new_engine = new_engine
        self._engine = new_engine()
        self._pending: dict[str, list[torch.Tensor]] = {name: [] for name in self.layers}
        self._handles: list[Any] = []
        self._lock = threading.Lock()

    def attach(self) -> None:
        """Register the forward hooks (once)."""
        if self._handles:
            return
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._recorder(name)))
        self._handles.append(self.model.register_forward_hook(self._flush))

    def detach(self) -> None:
        """Remove the hooks and drop responses of an unfinished forward pass."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for outputs in self._pending.values():
            outputs.clear()

    def inputs_pending(self) -> int:
        """Inputs analysed since the last :meth:`take_window`."""
        with self._lock:
            return self._engine.inputs_seen

    def take_window(self) -> StreamingIUA:
        """Return the analysis of the window so far and start a new window."""
        with self._lock:
            engine, self._engine = self._engine, self._new_engine()
        return engine

    def _recorder(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        store = self._pending[name]

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.model.training:
                # Copy now: a later in-place operation may overwrite the output.
                store.append(_first_tensor(output, name).detach().clone())

        return hook

    def _flush(self, model: nn.Module, args: Any, output: Any) -> None:
        if not self.model.training:
            return
        fields: dict[str, torch.Tensor] = {}
        for name, outputs in self._pending.items():
            for call, tensor in enumerate(outputs):
                fields[name if len(outputs) == 1 else f"{name}#{call}"] = tensor
            outputs.clear()
        if fields:
            with self._lock:
                self._engine.update(fields)
