"""Turn what users have into batches of named responses."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping
from typing import Any


def _fields(item: Any, index: int) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    fields = getattr(item, "fields", None)
    if isinstance(fields, Mapping):
        return fields
    raise TypeError(
        f"Batch {index} is a {type(item).__name__}; expected a mapping from response "
        "name to array, or an object with a `.fields` mapping (a DNIKit Batch)."
    )


def split_dataset(responses: Mapping[str, Any], batch_size: int) -> Iterator[dict[str, Any]]:
    """Yield ``batch_size`` slices of whole-dataset arrays along the input axis."""
    sizes = {name: len(array) for name, array in responses.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{n!r}: {s}" for n, s in sizes.items())
        raise ValueError(
            f"The whole-dataset responses disagree on the number of inputs ({listed})."
        )
    total = next(iter(sizes.values()), 0)
    for start in range(0, total, batch_size):
        yield {name: array[start : start + batch_size] for name, array in responses.items()}


def iter_batches(producer: Any, *, batch_size: int = 32) -> Iterator[Mapping[str, Any]]:
    """Yield one mapping of response name to array per batch.

    ``producer`` may be a mapping of whole-dataset arrays (split into
    ``batch_size`` slices), a DNIKit-style producer (a callable taking
    ``batch_size`` and yielding objects with ``.fields``), or an iterable of
    mappings, one per batch.
    """
    try:
        batch_size = operator.index(batch_size)
    except TypeError:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.") from None
    if isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if isinstance(producer, Mapping):
        yield from split_dataset(producer, batch_size)
        return
    if callable(producer):
        items: Iterable[Any] = producer(batch_size)
        if not isinstance(items, Iterable):
            raise TypeError(
                f"The producer {producer!r} returned a {type(items).__name__}; a DNIKit-style "
                "producer must return an iterable of batches when called with batch_size."
            )
    elif isinstance(producer, Iterable) and not isinstance(producer, str | bytes):
        items = producer
    else:
        raise TypeError(
            f"Cannot read responses from a {type(producer).__name__}. Pass a mapping of "
            "name to whole-dataset array, an iterable of per-batch mappings, or a "
            "DNIKit-style producer (a callable taking batch_size)."
        )
    for index, item in enumerate(items):
        yield _fields(item, index)


def expected_inputs(producer: Any) -> int | None:
    """Number of inputs ``producer`` will yield, when it can be known without reading it.

    Known for a mapping of whole-dataset arrays and for producers with an
    ``expected_inputs`` attribute (PyTorch captures over a sized loader).
    """
    if isinstance(producer, Mapping):
        return len(next(iter(producer.values()))) if producer else 0
    value = getattr(producer, "expected_inputs", None)
    return int(value) if isinstance(value, int) else None
