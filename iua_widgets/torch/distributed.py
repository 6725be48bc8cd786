"""Combine the analyses of all ranks of a ``torch.distributed`` process group, exactly.

Each rank analyses its own shard of the inputs. ``all_reduce`` then gives
every rank the analysis of all shards, equal to one run over the shards in
rank order.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..engine.merge import check_compatible
from ..engine.persist import encode_state
from ..engine.persist_checks import decode_layer, decode_settings
from ..engine.state import (
    AnalysisState,
    LayerState,
    capture,
    cumulative_dtype,
    engine_of,
    restore,
)
from ..engine.streaming import StreamingIUA
from ..results import IUA

logger = logging.getLogger(__name__)

_INT64_MAX = 2**63 - 1


def all_reduce(analysis: IUA | StreamingIUA, group: Any = None) -> IUA | StreamingIUA:
    """Return the analysis of the inputs of every rank in ``group``, on every rank.

    A collective call: every rank of ``group`` (the default process group
    when ``None``) must call it. The result is exact. Cumulative counts are
    summed in int64. The per-threshold sums and sums of squares travel as
    decimal text and add up as Python ints, which cannot overflow. Per-input
    detail is gathered and concatenated in rank order. So the result equals, bit for bit, one run over the shards of rank 0, 1, ... in
    that order. Layers seen by only some ranks keep their own input counts.

    With the NCCL backend the tensors travel on the current CUDA device
    (set it with ``torch.cuda.set_device(local_rank)``); other backends use
    the CPU.

    Parameters
    ----------
    analysis
        This rank's ``IUA`` or ``StreamingIUA``; it is left unchanged.
    group
        A process group from ``torch.distributed.new_group``, or ``None``.

    Returns
    -------
    IUA or StreamingIUA
        A new object of the same kind as ``analysis``.

    Raises
    ------
    RuntimeError
        If ``torch.distributed`` is not initialised.
    ValueError
        On every rank, if the ranks' analyses differ in settings, grid or
        the unit shape of a layer.
    OverflowError
        On every rank, if a layer saw more than 2**63 - 1 inputs in total.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "iua_widgets.torch.all_reduce needs an initialised process group; call "
            "torch.distributed.init_process_group(...) first (torchrun sets the "
            "environment it reads)."
        )
    engine = engine_of(analysis)
    state = capture(engine)
    device = _device(group)
    world = dist.get_world_size(group)
    logger.info(
        "Reducing the analysis of %d inputs across %d ranks", state.inputs_seen, world
    )
    header, _ = encode_state(state)
    payloads = _all_gather_bytes(json.dumps(header).encode("utf-8"), group, device)
    # Every decision below depends only on the gathered headers, which are the
    # same on every rank, so all ranks raise together or run the same collectives.
    ranks = [_decode_header(payload) for payload in payloads]
    for position, other in enumerate(ranks[1:], start=1):
        check_compatible(ranks[0], other, f"rank {position}", "rank 0")
    layout = _layer_layout(ranks)
    local = {layer.name: layer for layer in state.layers}
    merged = AnalysisState(
        rtol=ranks[0].rtol,
        atol=ranks[0].atol,
        grid=ranks[0].grid,
        unit=ranks[0].unit,
        channel_axis=ranks[0].channel_axis,
        per_input=ranks[0].per_input,
        inputs_seen=sum(rank.inputs_seen for rank in ranks),
        batches_seen=sum(rank.batches_seen for rank in ranks),
    )
    expected = [rank.expected_inputs for rank in ranks]
    merged.expected_inputs = None if None in expected else sum(expected)
    for name, parts in layout.items():
        merged.layers.append(_reduce_layer(name, parts, local.get(name), merged, group, device))
    reduced = restore(merged, max_cache_bytes=engine.max_cache_bytes)
    logger.info("Reduced analysis contains %d inputs", reduced.inputs_seen)
    return IUA(reduced) if isinstance(analysis, IUA) else reduced


def _device(group: Any) -> torch.device:
    # NOTE: the NCCL branch has not run in the test suite, which uses gloo on CPU.
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_bytes(payload: bytes, group: Any, device: torch.device) -> list[bytes]:
    """Gather one byte string from every rank, in rank order."""
    world = dist.get_world_size(group)
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    lengths = [int(s.item()) for s in sizes]
    buffer = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    buffer[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    gathered = [torch.zeros_like(buffer) for _ in range(world)]
    dist.all_gather(gathered, buffer, group=group)
    return [bytes(g[:n].cpu().numpy()) for g, n in zip(gathered, lengths, strict=True)]


def _decode_header(payload: bytes) -> AnalysisState:
    metadata = json.loads(payload.decode("utf-8"))
    state = decode_settings(metadata)
    for position, entry in enumerate(metadata["layers"]):
        state.layers.append(decode_layer(entry, position, state))
    return state


def _layer_layout(ranks: list[AnalysisState]) -> dict[str, list[LayerState | None]]:
    """Map each layer, in order of first appearance, to its header on every rank (or None)."""
    layout: dict[str, list[LayerState | None]] = {}
    for position, rank in enumerate(ranks):
        for layer in rank.layers:
            parts = layout.setdefault(layer.name, [None] * len(ranks))
            known = next((p for p in parts if p is not None), None)
            if known is not None and known.unit_shape != layer.unit_shape:
                raise ValueError(
                    f"Cannot reduce response {layer.name!r}: rank {position} has unit shape "
                    f"{layer.unit_shape} but another rank has {known.unit_shape}. A layer "
                    "must have the same shape after the input axis on every rank."
                )
            parts[position] = layer
    return layout


def _reduce_layer(
    name: str,
    parts: list[LayerState | None],
    mine: LayerState | None,
    merged: AnalysisState,
    group: Any,
    device: torch.device,
) -> LayerState:
    present = [part for part in parts if part is not None]
    first = present[0]
    units, grid_size = first.units, len(merged.grid)
    inputs = sum(part.inputs for part in present)
    if inputs > _INT64_MAX:
        raise OverflowError(
            f"Response {name!r} saw {inputs} inputs across ranks, more than int64 "
            "cumulative counts hold; reduce fewer or smaller shards at a time."
        )
    if mine is not None:
        local = torch.from_numpy(mine.cumulative.astype(np.int64))
    else:
        local = torch.zeros((grid_size, units), dtype=torch.int64)
    cumulative = local.to(device)
    dist.all_reduce(cumulative, op=dist.ReduceOp.SUM, group=group)
    counts = [0 if part is None else part.inputs for part in parts]
    detail = None
    if merged.per_input != "none":
        detail = _gather_detail(mine, counts, units, merged, group, device)
    return LayerState(
        name=name,
        unit_shape=first.unit_shape,
        inputs=inputs,
        nonfinite=sum(part.nonfinite for part in present),
        cumulative=cumulative.cpu().numpy().astype(cumulative_dtype(inputs), copy=False),
        count_sums=[sum(column) for column in zip(*(p.count_sums for p in present))],
        count_square_sums=[sum(column) for column in zip(*(p.count_square_sums for p in present))],
        inactive=detail,
    )


def _gather_detail(
    mine: LayerState | None,
    counts: list[int],
    units: int,
    merged: AnalysisState,
    group: Any,
    device: torch.device,
) -> np.ndarray:
    """Gather per-input counts of every rank, padded to the longest, trimmed, in rank order."""
    dtype = np.int32 if merged.per_input == "grid" and units < 2**31 else np.int64
    tail = (len(merged.grid),) if merged.per_input == "grid" else ()
    padded = np.zeros((max(counts), *tail), dtype=dtype)
    if mine is not None and mine.inactive is not None:
        padded[: len(mine.inactive)] = mine.inactive
    local = torch.from_numpy(padded).to(device)
    gathered = [torch.zeros_like(local) for _ in counts]
    dist.all_gather(gathered, local, group=group)
    pieces = [g[:n].cpu().numpy() for g, n in zip(gathered, counts, strict=True)]
    return np.concatenate(pieces)
