"""``iua_widgets.torch.all_reduce`` across two CPU processes (gloo) against one process."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from iua_widgets import IUA, StreamingIUA
from iua_widgets.engine.merge import merge_states
from iua_widgets.engine.state import capture, restore
from iua_widgets.torch.distributed import all_reduce
from tests.analysis_compare import assert_same_analysis, make_batches, run
from tests.test_persist import huge_state

WORLD = 2


def shards(scenario: str) -> tuple[list[list[dict]], list[dict]]:
    """The batches of each rank and the engine settings of each rank."""
    if scenario == "element-grid":
        batches = make_batches(51, [5, 8, 3, 1, 6])
        return [batches[:3], batches[3:]], [{"per_input": "grid"}] * 2
    if scenario == "channel-start":
        batches = make_batches(52, [4, 9, 2])
        return [batches[:1], batches[1:]], [{"unit": "channel", "per_input": "start"}] * 2
    if scenario == "none-partial-layer":
        first = make_batches(53, [6])
        second = make_batches(54, [3, 4], layers={"fc": (6,), "head": (5,)})
        return [first, second], [{"per_input": "none", "atol": 2e-3}] * 2
    if scenario == "empty-rank":
        return [make_batches(55, [7, 2]), []], [{}] * 2
    if scenario == "mismatch":
        batches = make_batches(56, [3, 3])
        return [batches[:1], batches[1:]], [{}, {"atol": 1e-6}]
    raise ValueError(scenario)


SCENARIOS = ["element-grid", "channel-start", "none-partial-layer", "empty-rank", "mismatch"]


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    # The timeout turns a collective that never completes into an error instead of a hang.
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(minutes=5))
    try:
        for scenario in SCENARIOS:
            batches, settings = shards(scenario)
            local = IUA(run(batches[rank], **settings[rank]))
            try:
                reduced = all_reduce(local)
            except ValueError as error:
                Path(folder, f"{scenario}-{rank}.error").write_text(str(error))
                continue
            assert isinstance(reduced, IUA)
            reduced.save(Path(folder, f"{scenario}-{rank}.npz"))
        engine = restore(huge_state())
        all_reduce(engine).save(Path(folder, f"huge-{rank}.npz"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def reduced_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(free_port(), str(folder)), nprocs=WORLD, join=True)
    return folder


@pytest.mark.parametrize("scenario", ["element-grid", "channel-start", "none-partial-layer", "empty-rank"])
def test_reduce_equals_single_process(reduced_files, scenario):
    batches, settings = shards(scenario)
    single = run([batch for shard in batches for batch in shard], **settings[0])

    for rank in range(WORLD):
        assert_same_analysis(IUA.load(reduced_files / f"{scenario}-{rank}.npz"), single)


def test_layer_on_one_rank_keeps_own_inputs(reduced_files):
    reduced = StreamingIUA.load(reduced_files / "none-partial-layer-0.npz")

    assert reduced.layer_names == ["conv", "fc", "head"]
    assert reduced.results["conv"].inputs == 6
    assert reduced.results["fc"].inputs == 13
    assert reduced.results["head"].inputs == 7


def test_mismatch_raises_on_every_rank(reduced_files):
    for rank in range(WORLD):
        message = (reduced_files / f"mismatch-{rank}.error").read_text()
        assert "rank 1 has atol=1e-06 but rank 0 has atol=1e-08" in message
        assert not (reduced_files / f"mismatch-{rank}.npz").exists()


def test_sums_beyond_int64_exact(reduced_files):
    expected = merge_states([huge_state(), huge_state()])
    assert expected.layers[0].count_square_sums[0] > 2**64

    for rank in range(WORLD):
        reduced = capture(StreamingIUA.load(reduced_files / f"huge-{rank}.npz"))
        layer = reduced.layers[0]
        assert layer.count_square_sums == expected.layers[0].count_square_sums
        assert layer.count_sums == expected.layers[0].count_sums
        assert layer.inputs == 2 * 10**13
        np.testing.assert_array_equal(layer.cumulative, expected.layers[0].cumulative)


def test_uninitialised_group_raises():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        all_reduce(StreamingIUA())
