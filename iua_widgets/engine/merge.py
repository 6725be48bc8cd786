"""Exact merge of analyses: the cache of the union of inputs is the sum of the caches.

Per-unit cumulative counts and per-threshold sums add up; per-input detail is
concatenated in the order of the parts. So merging the analyses of
consecutive shards gives, bit for bit, the results of one run over all
inputs in that order, standard deviations included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .state import (
    AnalysisState,
    LayerState,
    capture,
    cumulative_dtype,
    engine_of,
    restore,
)
from .streaming import StreamingIUA

#: Settings that every part of a merge must share.
_SHARED_SETTINGS = ("rtol", "atol", "unit", "channel_axis", "per_input")


def check_compatible(
    first: AnalysisState, other: AnalysisState, label: str, first_label: str = "the first part"
) -> None:
    """Raise ``ValueError`` unless ``other`` can be merged into ``first``.

    ``label`` and ``first_label`` name the two in the message (for example
    ``"part 2"`` and ``"the first part"``).
    """
    for setting in _SHARED_SETTINGS:
        mine, theirs = getattr(first, setting), getattr(other, setting)
        if mine != theirs:
            raise ValueError(
                f"Cannot merge: {label} has {setting}={theirs!r} but {first_label} has "
                f"{setting}={mine!r}. Only analyses run with the same settings merge; "
                "rerun one of them with matching settings."
            )
    if not np.array_equal(first.grid, other.grid):
        raise ValueError(
            f"Cannot merge: {label} has a threshold grid of {len(other.grid)} values that "
            f"differs from the grid of {first_label} ({len(first.grid)} values), so their "
            "cached counts do not describe the same thresholds. Merge only analyses "
            "made by the same iua_widgets version and atol."
        )


def merge_states(states: Sequence[AnalysisState]) -> AnalysisState:
    """Merge snapshots in order; the first part's layers come first.

    Raises
    ------
    ValueError
        If the parts differ in a setting, in the grid, or in the unit shape
        of a layer they share.
    """
    if not states:
        raise ValueError("Nothing to merge: pass at least one analysis.")
    first = states[0]
    for position, state in enumerate(states[1:], start=2):
        check_compatible(first, state, f"part {position}")
    order: dict[str, list[LayerState]] = {}
    for position, state in enumerate(states, start=1):
        for layer in state.layers:
            parts = order.setdefault(layer.name, [])
            if parts and parts[0].unit_shape != layer.unit_shape:
                raise ValueError(
                    f"Cannot merge response {layer.name!r}: part {position} has unit shape "
                    f"{layer.unit_shape} but an earlier part has {parts[0].unit_shape}. "
                    "A layer must have the same shape after the input axis in every part."
                )
            parts.append(layer)
    expected = [state.expected_inputs for state in states]
    return AnalysisState(
        rtol=first.rtol,
        atol=first.atol,
        grid=first.grid.copy(),
        unit=first.unit,
        channel_axis=first.channel_axis,
        per_input=first.per_input,
        inputs_seen=sum(state.inputs_seen for state in states),
        batches_seen=sum(state.batches_seen for state in states),
        expected_inputs=None if None in expected else sum(expected),
        layers=[merge_layers(parts) for parts in order.values()],
    )


def merge_layers(parts: Sequence[LayerState]) -> LayerState:
    """Merge the caches of one layer; the parts must share the name and unit shape."""
    first = parts[0]
    inputs = sum(part.inputs for part in parts)
    cumulative = parts[0].cumulative.astype(np.int64)
    for part in parts[1:]:
        cumulative += part.cumulative
    details = [part.inactive for part in parts]
    inactive = None if details[0] is None else np.concatenate(details)
    return LayerState(
        name=first.name,
        unit_shape=first.unit_shape,
        inputs=inputs,
        nonfinite=sum(part.nonfinite for part in parts),
        cumulative=cumulative.astype(cumulative_dtype(inputs), copy=False),
        count_sums=[sum(column) for column in zip(*(p.count_sums for p in parts))],
        count_square_sums=[sum(column) for column in zip(*(p.count_square_sums for p in parts))],
        inactive=inactive,
    )


def merge_engines(parts: Sequence[object]) -> StreamingIUA:
    """Merge ``IUA`` or ``StreamingIUA`` objects into a new ``StreamingIUA``.

    The parts are left unchanged; the new engine keeps the first part's
    ``max_cache_bytes``.
    """
    engines = [engine_of(part) for part in parts]
    if not engines:
        raise ValueError("Nothing to merge: pass at least one analysis.")
    merged = merge_states([capture(engine) for engine in engines])
    return restore(merged, max_cache_bytes=engines[0].max_cache_bytes)
