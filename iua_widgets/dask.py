"""Inactive Unit Analysis of Dask arrays, chunk by chunk in parallel.

>>> import dask.array as da
>>> from iua_widgets.dask import introspect
>>> iua = introspect({"relu1": da.from_zarr("relu1.zarr")}, atol=1e-8)

Each chunk of inputs is analysed by one task. The partial caches are merged
in a tree whose nodes combine neighbouring chunks in input order, so the
result equals, bit for bit, one run over all inputs. No task reads more than
one chunk of responses.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

try:
    import dask
    import dask.array as da
except ImportError as error:
    raise ImportError(
        "iua_widgets.dask needs Dask, which is not installed. "
        'Install it with: pip install "iua-widgets[dask]"'
    ) from error

from .engine.merge import merge_states
from .engine.state import AnalysisState, capture, restore
from .engine.streaming import StreamingIUA
from .results import IUA

logger = logging.getLogger(__name__)

__all__ = ["introspect"]


def introspect(
    responses: Mapping[str, da.Array],
    *,
    rtol: float = 1e-05,
    atol: float = 1e-08,
    unit: str = "element",
    channel_axis: int = 1,
    per_input: str = "grid",
    split_every: int = 8,
    scheduler: str | None = None,
) -> IUA:
    """Count inactive units of Dask responses, one task per chunk of inputs.

    Parameters
    ----------
    responses
        Response name to Dask array; axis 0 is the input axis and every
        array has the same number of inputs. Arrays chunked along any other
        axis are rechunked to one chunk there, because a task needs whole
        inputs. Arrays whose input chunks differ from the first array's are
        rechunked to match it. Both rechunks are logged.
    rtol, atol, unit, channel_axis, per_input
        As for ``IUA.introspect``.
    split_every
        Partial caches merged by one task of the tree reduction (at least 2).
    scheduler
        Passed to ``dask.compute`` (``"threads"``, ``"processes"``,
        ``"synchronous"``, or ``None`` for the default or a running
        ``distributed.Client``).

    Returns
    -------
    IUA
        The analysis, equal to ``IUA.introspect`` over the computed arrays.

    Raises
    ------
    TypeError
        If a response is not a Dask array or a name is not a string.
    ValueError
        For invalid settings, no responses, unknown chunk sizes, differing
        numbers of inputs, or no inputs at all.
    """
    template = StreamingIUA(
        rtol=rtol, atol=atol, unit=unit, channel_axis=channel_axis, per_input=per_input
    )
    if isinstance(split_every, bool) or not isinstance(split_every, int) or split_every < 2:
        raise ValueError(f"split_every must be an int >= 2, got {split_every!r}.")
    arrays = _aligned(responses)
    settings = {
        "rtol": template.rtol, "atol": template.atol, "unit": unit,
        "channel_axis": channel_axis, "per_input": per_input,
    }
    names = list(arrays)
    blocks = {name: array.to_delayed().reshape(-1) for name, array in arrays.items()}
    chunks = len(blocks[names[0]])
    level = [
        dask.delayed(_chunk_state, pure=True)(settings, names, *(blocks[n][i] for n in names))
        for i in range(chunks)
    ]
    # Merge neighbours only, so per-input detail stays in input order.
    while len(level) > 1:
        level = [
            dask.delayed(_merge_group, pure=True)(*level[start : start + split_every])
            for start in range(0, len(level), split_every)
        ]
    logger.info(
        "Dask IUA of %d responses over %d chunks started", len(names), chunks
    )
    (state,) = dask.compute(level[0], scheduler=scheduler)
    if state.inputs_seen == 0:
        raise ValueError("The responses have no inputs, so there is nothing to analyse.")
    engine = restore(state, max_cache_bytes=template.max_cache_bytes)
    engine._warn_nonfinite()
    logger.info("Dask IUA of %d inputs done", engine.inputs_seen)
    return IUA(engine)


def _aligned(responses: Mapping[str, Any]) -> dict[str, da.Array]:
    """Check the responses and rechunk them to whole inputs on shared input chunks."""
    if not isinstance(responses, Mapping) or not responses:
        raise ValueError("responses must be a non-empty mapping of response name to Dask array.")
    arrays: dict[str, da.Array] = {}
    for name, array in responses.items():
        if not isinstance(name, str):
            raise TypeError(f"Response names must be strings, got {name!r}.")
        if not isinstance(array, da.Array):
            raise TypeError(
                f"Response {name!r} is a {type(array).__name__}, not a Dask array. Wrap it "
                "with dask.array.from_array(x, chunks=(inputs_per_chunk, ...)), or use "
                "IUA.introspect for in-memory arrays."
            )
        if array.ndim == 0:
            raise ValueError(f"Response {name!r} is a scalar; axis 0 must be the input axis.")
        if any(math.isnan(size) for axis in array.chunks for size in axis):
            raise ValueError(
                f"Response {name!r} has unknown chunk sizes; call "
                "array.compute_chunk_sizes() first."
            )
        if any(len(axis) > 1 for axis in array.chunks[1:]):
            logger.info(
                "Rechunking response %r to whole inputs: it was chunked along a unit axis %s",
                name, array.chunks[1:],
            )
            array = array.rechunk({axis: -1 for axis in range(1, array.ndim)})
        arrays[name] = array
    first_name, first = next(iter(arrays.items()))
    for name, array in arrays.items():
        if array.shape[0] != first.shape[0]:
            raise ValueError(
                f"Response {name!r} has {array.shape[0]} inputs but {first_name!r} has "
                f"{first.shape[0]}; every response needs one row per input."
            )
        if array.chunks[0] != first.chunks[0]:
            logger.info(
                "Rechunking response %r along the input axis to the chunks of %r", name, first_name
            )
            arrays[name] = array.rechunk({0: first.chunks[0]})
    return arrays


def _chunk_state(settings: dict[str, Any], names: list[str], *blocks: Any) -> AnalysisState:
    """Analyse one chunk of inputs of every response."""
    engine = StreamingIUA(**settings)
    # introspect warns about NaN and inf once for the whole analysis. Filters
    # of the warnings module are not thread-safe, so mark every layer as warned.
    engine._nonfinite_warned = set(names)
    engine.update(dict(zip(names, blocks, strict=True)))
    return capture(engine)


def _merge_group(*states: AnalysisState) -> AnalysisState:
    return merge_states(states)
