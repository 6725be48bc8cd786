"""Record the outputs of chosen PyTorch modules as a producer of named responses."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .layers import LayerSpec, select_layers, warn_non_relu

logger = logging.getLogger(__name__)

#: Floating dtypes that numpy supports as they are; others (bfloat16, float8) become float32.
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


@dataclass(frozen=True)
class ResponseBatch:
    """One batch of responses shaped like a DNIKit ``Batch``.

    Attributes
    ----------
    fields
        Response name to array (or tensor) with one row per input.
    """

    fields: Mapping[str, Any]


def responses(
    model: nn.Module,
    data: Iterable[Any],
    layers: LayerSpec | Iterable[LayerSpec] | None = None,
    *,
    device: str | torch.device | None = None,
    as_numpy: bool = True,
) -> Responses:
    """Create a producer of the responses of ``layers`` while ``model`` runs over ``data``.

    The result feeds ``IUA.introspect`` and ``StreamingIUA.consume`` directly.

    Parameters
    ----------
    model
        The model. It is run in eval mode under ``torch.no_grad()``. The training
        flag of every submodule is restored after each batch, even when the
        forward pass raises, so BatchNorm running statistics never change.
    data
        Iterable of input batches, such as a ``torch.utils.data.DataLoader``.
        Each batch is a tensor (or numpy array), a mapping passed to the model
        as keyword arguments, or a tuple or list whose first element is the
        input, as in ``(input, target)``. If that first element is itself a
        tuple or list, its items are passed as positional arguments. ``data``
        is iterated once per pass over the producer, so a generator gives one pass.
    layers
        Module names as in ``model.named_modules()`` and/or module types such as
        ``torch.nn.ReLU`` (a type selects every submodule of that type).
        ``None`` selects every ``torch.nn.ReLU``.
    device
        Device the inputs are moved to. ``None`` uses the device of the model's
        first parameter or buffer (CPU for a model with neither). The model
        itself is never moved.
    as_numpy
        ``True`` yields numpy arrays, with bfloat16 and float8 converted to
        float32 (exact). ``False`` yields detached tensors on the model's device
        in their own dtype.

    Returns
    -------
    Responses
        Iterating it yields one dict of response name to array per batch of
        ``data``. Calling it with a ``batch_size`` yields :class:`ResponseBatch`
        objects (the DNIKit producer protocol).

    Notes
    -----
    Each response is a copy taken inside the forward hook, so a later
    in-place operation (``ReLU(inplace=True)``) cannot change it. A module
    that returns a tuple (namedtuple included) or list contributes its first
    element, and one that returns a mapping (``dict``, Hugging Face
    ``ModelOutput``) contributes its first value, recursively until a tensor is
    found. A module called ``k > 1`` times per forward pass gives ``k``
    responses named ``name#0`` ... ``name#{k-1}`` in call order.

    Raises
    ------
    ValueError
        For an unknown layer name (with close matches) or a type the model lacks.
    TypeError
        When ``model`` is not a ``torch.nn.Module`` or ``data`` is one tensor.
    RuntimeError
        While iterating: when a selected layer does not run on a batch, or runs a
        different number of times than on the first batch.

    Warns
    -----
    UserWarning
        Once, when a selected layer is an activation other than ReLU, ReLU6 or
        Hardsigmoid (GELU, SiLU, Tanh, ...): "inactive" then only means "within
        atol of zero", not "dead".
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if isinstance(data, torch.Tensor | np.ndarray):
        raise TypeError(
            "data is a single array, and iterating it would run the model on one row at a "
            "time. Pass an iterable of batches instead: [tensor] for one batch, or "
            "torch.utils.data.DataLoader(TensorDataset(tensor), batch_size=...)."
        )
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data must be an iterable of input batches (a DataLoader), got {type(data).__name__}."
        )
    selected = select_layers(model, layers)
    warn_non_relu(selected)
    target = torch.device(device) if device is not None else _model_device(model)
    return Responses(model, data, selected, device=target, as_numpy=as_numpy)


class Responses:
    """Producer of the responses of chosen modules, one mapping per batch of data.

    Create it with :func:`responses`. Hooks are attached and eval mode is set
    only while one batch runs through the model, so between batches (and after
    an interrupted iteration) the model is exactly as the caller left it.

    NOTE: two iterations running at once on one model, such as in two threads,
    would record each other's module calls; run one at a time.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Iterable[Any],
        selected: dict[str, nn.Module],
        *,
        device: torch.device,
        as_numpy: bool,
    ) -> None:
        self.model = model
        self.data = data
        self.layers = dict(selected)
        self.device = device
        self.as_numpy = bool(as_numpy)

    def __repr__(self) -> str:
        return (
            f"Responses(model={type(self.model).__name__}, layers={list(self.layers)}, "
            f"device={str(self.device)!r}, as_numpy={self.as_numpy})"
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Yield one dict of response name to array (or tensor) per batch of ``data``."""
        first_counts: dict[str, int] | None = None
        batches = inputs = 0
        logger.info("Capturing layers %s of %s", list(self.layers), type(self.model).__name__)
        try:
            for index, batch in enumerate(self.data):
                records = self.capture_batch(batch, index)
                counts = {name: len(outputs) for name, outputs in records.items()}
                _check_calls(counts, first_counts, index)
                if first_counts is None:
                    first_counts = counts
                fields = _name_streams(records, self.as_numpy)
                batches += 1
                inputs += _batch_inputs(fields)
                yield fields
        finally:
            logger.info("Captured %d batches (%d inputs)", batches, inputs)

    def __call__(self, batch_size: int) -> Iterator[ResponseBatch]:
        """Yield :class:`ResponseBatch` objects, as a DNIKit producer does.

        ``batch_size`` is ignored: the batching of ``data`` (the DataLoader's
        ``batch_size``) is kept, because re-batching would change the model's
        inputs, for example for layers that depend on the whole batch.
        """
        for fields in self:
            yield ResponseBatch(fields)

    @property
    def expected_inputs(self) -> int | None:
        """Number of inputs one pass yields if ``data`` has a known size, else ``None``.

        Known for a ``DataLoader`` with a sized sampler and for a list or tuple
        of tensor batches.
        """
        data = self.data
        if isinstance(data, torch.utils.data.DataLoader):
            if data.batch_size is None or not hasattr(data.sampler, "__len__"):
                return None
            total = len(data.sampler)
            return total - total % data.batch_size if data.drop_last else total
        if isinstance(data, list | tuple) and all(
            isinstance(batch, torch.Tensor) and batch.ndim > 0 for batch in data
        ):
            return sum(len(batch) for batch in data)
        return None

    def capture_batch(self, batch: Any, index: int = 0) -> dict[str, list[torch.Tensor]]:
        """Run one batch through the model and return copies of each layer's outputs.

        Outputs are listed in call order. The hooks added here are removed and
        every training flag is restored before this returns or raises,
        KeyboardInterrupt included.
        """
        args, kwargs = _model_inputs(batch, index)
        args = _to_device(args, self.device)
        kwargs = _to_device(kwargs, self.device)
        records: dict[str, list[torch.Tensor]] = {name: [] for name in self.layers}
        training = [(module, module.training) for module in self.model.modules()]
        handles = []
        try:
            for name, module in self.layers.items():
                hook = _recording_hook(name, records[name], self.as_numpy)
                handles.append(module.register_forward_hook(hook))
            self.model.eval()
            with torch.no_grad():
                self.model(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
            for module, flag in training:
                module.training = flag
        return records


def _recording_hook(
    name: str, store: list[torch.Tensor], as_numpy: bool
) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        # Copy now: a later in-place operation may overwrite the output tensor.
        store.append(_copy_output(_first_tensor(output, name), as_numpy))

    return hook


def _first_tensor(output: Any, name: str) -> torch.Tensor:
    value = output
    while not isinstance(value, torch.Tensor):
        if isinstance(value, tuple | list) and value:
            value = value[0]
        elif isinstance(value, Mapping) and value:
            value = next(iter(value.values()))
        else:
            raise TypeError(
                f"Layer {name!r} returned a {type(output).__name__} with no tensor at its "
                f"first position (reached {type(value).__name__}). Expected a tensor, a "
                "tuple or list whose first element is one, or a mapping whose first value "
                "is one. Select a submodule that returns a tensor."
            )
    return value


def _copy_output(tensor: torch.Tensor, as_numpy: bool) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.is_quantized:
        return tensor.dequantize()
    if as_numpy and tensor.is_floating_point() and tensor.dtype not in _NUMPY_FLOATS:
        return tensor.float()  # a new tensor, and exact for bfloat16 and float8
    return tensor.clone()


def _check_calls(counts: dict[str, int], first: dict[str, int] | None, index: int) -> None:
    missing = [name for name, count in counts.items() if count == 0]
    if missing:
        raise RuntimeError(
            f"Selected layer(s) {', '.join(map(repr, missing))} did not run in the forward "
            f"pass of batch {index}, so they have no response. The model bypasses them on "
            "this input; remove them from layers or select modules the forward pass calls."
        )
    if first is None:
        return
    changed = [name for name in counts if counts[name] != first[name]]
    if changed:
        listed = ", ".join(
            f"{name!r} ran {counts[name]} times on batch {index} but {first[name]} on batch 0"
            for name in changed
        )
        raise RuntimeError(
            f"{listed}. A layer must run the same number of times on every batch, "
            "because each call is a separate response; select layers the model calls "
            "a fixed number of times."
        )


def _name_streams(records: dict[str, list[torch.Tensor]], as_numpy: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, outputs in records.items():
        for call, tensor in enumerate(outputs):
            key = name if len(outputs) == 1 else f"{name}#{call}"
            # The tensor is a private copy, so on the CPU numpy may share its memory.
            fields[key] = tensor.cpu().numpy() if as_numpy else tensor
    return fields


def _batch_inputs(fields: dict[str, Any]) -> int:
    first = next(iter(fields.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim > 0 else 0


def _model_inputs(batch: Any, index: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, tuple | list):
        if not batch:
            raise ValueError(f"Batch {index} of data is an empty {type(batch).__name__}.")
        first = batch[0]
        if isinstance(first, Mapping):
            return (), dict(first)
        if isinstance(first, tuple | list):
            return tuple(first), {}
        return (first,), {}
    if isinstance(batch, torch.Tensor | np.ndarray):
        return (batch,), {}
    raise TypeError(
        f"Batch {index} of data is a {type(batch).__name__}; expected a tensor, a mapping "
        "of keyword arguments, or a tuple or list such as (input, target)."
    )


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value).to(device)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_to_device(item, device) for item in value))
    if isinstance(value, tuple | list):
        return type(value)(_to_device(item, device) for item in value)
    return value


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
