"""Save and load of analyses: exact round trips, atomic writes and rejected files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from iua_widgets import IUA, StreamingIUA
from iua_widgets.engine import persist
from iua_widgets.engine.grid import threshold_grid
from iua_widgets.engine.persist import AnalysisFileError, encode_state, write_members
from iua_widgets.engine.state import AnalysisState, LayerState, capture, restore
from tests.analysis_compare import assert_same_analysis, feed, make_batches, run
from tests.reference import brute_force


@pytest.mark.parametrize("per_input", ["grid", "start", "none"])
@pytest.mark.parametrize("unit", ["element", "channel"])
def test_round_trip_every_threshold(tmp_path, unit, per_input):
    batches = make_batches(1, [7, 16, 1, 9])
    original = IUA(run(batches, unit=unit, per_input=per_input, atol=3e-7))

    path = original.save(tmp_path / "analysis.npz")
    loaded = IUA.load(path)

    assert isinstance(loaded, IUA)
    assert_same_analysis(loaded, original)
    assert loaded.engine.batches_seen == original.engine.batches_seen


def test_round_trip_matches_brute_force(tmp_path):
    batches = make_batches(2, [5, 8], dtype=np.float64)
    run(batches).save(tmp_path / "a.npz")
    loaded = StreamingIUA.load(tmp_path / "a.npz")

    for atol in (0.0, 1e-8, 5e-3, 1.0):
        reference = brute_force(batches, atol)
        results = loaded.results_at(atol=atol)
        for name, expected in reference.items():
            np.testing.assert_array_equal(results[name].inactive, expected["inactive"])
            np.testing.assert_array_equal(results[name].unit_inactive_count, expected["unit"])
            assert results[name].std_inactive == np.std(expected["inactive"])


def test_running_engine_resumes_after_load(tmp_path):
    batches = make_batches(3, [4, 6, 5, 3])
    engine = run(batches[:2], per_input="grid")
    engine.save(tmp_path / "partial.npz")

    resumed = feed(StreamingIUA.load(tmp_path / "partial.npz"), batches[2:])

    assert_same_analysis(resumed, run(batches))


def test_layer_in_some_batches_keeps_own_inputs(tmp_path):
    batches = make_batches(4, [3, 5])
    batches[1]["late"] = np.zeros((5, 2), dtype=np.float32)
    engine = run(batches)
    engine.save(tmp_path / "a.npz")
    loaded = StreamingIUA.load(tmp_path / "a.npz")

    assert loaded.results["late"].inputs == 5
    assert loaded.results["conv"].inputs == 8
    assert loaded.layer_names == ["conv", "fc", "late"]
    assert_same_analysis(loaded, engine)


def test_device_engine_round_trip(tmp_path):
    batches = make_batches(18, [4, 5])
    device_engine = run(batches, torch_device="cpu", per_input="grid")

    loaded = StreamingIUA.load(device_engine.save(tmp_path / "device.npz"))

    assert loaded.torch_device is None
    assert_same_analysis(loaded, run(batches, per_input="grid"))


def test_empty_engine_round_trip(tmp_path):
    StreamingIUA(atol=0.25).save(tmp_path / "empty.npz")
    loaded = StreamingIUA.load(tmp_path / "empty.npz")

    assert loaded.layer_names == []
    assert loaded.atol == 0.25
    assert loaded.inputs_seen == 0


def huge_state(per_input: str = "none") -> AnalysisState:
    """A consistent state whose sums of squares exceed int64: every unit always inactive."""
    grid = threshold_grid()
    inputs, units = 10**13, 1000
    layer = LayerState(
        name="wide",
        unit_shape=(units,),
        inputs=inputs,
        nonfinite=0,
        cumulative=np.full((len(grid), units), inputs, dtype=np.int64),
        count_sums=[inputs * units] * len(grid),
        count_square_sums=[inputs * units * units] * len(grid),
        inactive=None,
    )
    return AnalysisState(
        rtol=1e-5, atol=1e-8, grid=grid, unit="element", channel_axis=1,
        per_input=per_input, inputs_seen=inputs, batches_seen=1, layers=[layer],
    )


def test_sums_beyond_int64_exact(tmp_path):
    state = huge_state()
    assert state.layers[0].count_square_sums[0] > 2**63
    persist.save_state(state, tmp_path / "huge.npz")

    loaded = capture(StreamingIUA.load(tmp_path / "huge.npz"))

    assert loaded.layers[0].count_square_sums == state.layers[0].count_square_sums
    assert loaded.layers[0].count_sums == state.layers[0].count_sums
    assert loaded.layers[0].cumulative.dtype == np.int64
    result = restore(loaded).results["wide"]
    assert result.mean_inactive == 1000.0
    assert result.std_inactive == 0.0
    assert result.dead_units == 1000


def test_file_layout_is_documented_format(tmp_path):
    batches = make_batches(5, [4])
    run(batches, per_input="start").save(tmp_path / "a.npz")

    with np.load(tmp_path / "a.npz", allow_pickle=False) as archive:
        members = {name: archive[name] for name in archive.files}
    metadata = json.loads(members.pop("metadata").tobytes())

    assert metadata["format"] == "iua-widgets-analysis"
    assert metadata["version"] == 1
    assert [layer["name"] for layer in metadata["layers"]] == ["conv", "fc"]
    assert metadata["layers"][0]["unit_shape"] == [3, 4, 4]
    assert metadata["grid"] == threshold_grid(1e-8).tolist()
    assert all(isinstance(s, str) for s in metadata["layers"][0]["count_square_sums"])
    assert set(members) == {
        "layer0.cumulative", "layer0.inactive", "layer1.cumulative", "layer1.inactive",
    }
    assert all(array.dtype.kind in "iu" for array in members.values())
    assert members["layer0.cumulative"].shape == (len(metadata["grid"]), 48)
    assert members["layer0.inactive"].shape == (4,)


def test_custom_grid_loads_and_resumes(tmp_path):
    batches = make_batches(6, [5, 4], dtype=np.float64)
    state = capture(run(batches[:1]))
    keep = np.isin(state.grid, [0.0, 1e-8, 1e-3, 1.0])
    state.grid = state.grid[keep]
    for layer in state.layers:
        layer.cumulative = layer.cumulative[keep]
        layer.count_sums = [s for s, k in zip(layer.count_sums, keep) if k]
        layer.count_square_sums = [s for s, k in zip(layer.count_square_sums, keep) if k]
        layer.inactive = layer.inactive[:, keep]
    persist.save_state(state, tmp_path / "coarse.npz")

    loaded = feed(StreamingIUA.load(tmp_path / "coarse.npz"), batches[1:])

    np.testing.assert_array_equal(loaded.grid, [0.0, 1e-8, 1e-3, 1.0])
    full = run(batches)
    for atol in loaded.grid:
        for name, result in full.results_at(atol=atol).items():
            got = loaded.results_at(atol=atol)[name]
            np.testing.assert_array_equal(got.inactive, result.inactive)
            np.testing.assert_array_equal(got.unit_inactive_count, result.unit_inactive_count)


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    run(make_batches(7, [3])).save(path)
    before = path.read_bytes()

    def broken_write(stream, members):
        stream.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(persist, "write_npz", broken_write)
    with pytest.raises(OSError, match="disk full"):
        run(make_batches(8, [9])).save(path)

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_crash_mid_write_never_truncates(tmp_path):
    path = tmp_path / "a.npz"
    run(make_batches(9, [3])).save(path)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os
        from iua_widgets.engine import persist
        from tests.analysis_compare import make_batches, run

        def crash(stream, members):
            stream.write(b"PK\\x03\\x04 half an archive")
            stream.flush()
            os._exit(3)

        persist.write_npz = crash
        run(make_batches(10, [5])).save({str(path)!r})
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    finished = subprocess.run([sys.executable, "-c", script], cwd=root)

    assert finished.returncode == 3
    assert path.read_bytes() == before
    assert_same_analysis(StreamingIUA.load(path), run(make_batches(9, [3])))


def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / "a.npz"
    run(make_batches(11, [3])).save(path)
    second = run(make_batches(12, [6]))
    second.save(path)

    assert_same_analysis(StreamingIUA.load(path), second)


# -- rejected files -----------------------------------------------------------


def valid_file(tmp_path, per_input="grid"):
    path = tmp_path / "valid.npz"
    run(make_batches(13, [4, 3]), per_input=per_input).save(path)
    return path


def assert_rejected(path, match):
    with pytest.raises(AnalysisFileError, match=match) as caught:
        StreamingIUA.load(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_reject_empty_file(tmp_path):
    (tmp_path / "e.npz").write_bytes(b"")
    assert_rejected(tmp_path / "e.npz", "empty")


def test_reject_text_file(tmp_path):
    (tmp_path / "t.npz").write_text("conv,fc\n1,2\n")
    assert_rejected(tmp_path / "t.npz", "not an .npz")


def test_reject_plain_npy(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(3))
    assert_rejected(tmp_path / "a.npy", "not an .npz")


def test_reject_foreign_npz(tmp_path):
    np.savez(tmp_path / "f.npz", weights=np.ones(3))
    assert_rejected(tmp_path / "f.npz", "no 'metadata' member")


def test_reject_foreign_format_name(tmp_path):
    metadata, arrays = encode_state(capture(run(make_batches(14, [2]))))
    metadata["format"] = "something-else"
    write_members(tmp_path / "f.npz", metadata, arrays)
    assert_rejected(tmp_path / "f.npz", "not an iua_widgets analysis file")


def test_reject_newer_version(tmp_path):
    metadata, arrays = encode_state(capture(run(make_batches(15, [2]))))
    metadata["version"] = 2
    write_members(tmp_path / "n.npz", metadata, arrays)
    assert_rejected(tmp_path / "n.npz", "newer than version 1")


def test_reject_truncated_file(tmp_path):
    data = valid_file(tmp_path).read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        assert_rejected(tmp_path / "cut.npz", "unreadable|damaged|corrupt|npy header")


def test_reject_changed_count_by_digest(tmp_path):
    path = valid_file(tmp_path)
    with np.load(path, allow_pickle=False) as archive:
        members = {name: archive[name] for name in archive.files}
    members["layer0.cumulative"][5, 0] += 1
    np.savez(tmp_path / "edited.npz", **members)
    assert_rejected(tmp_path / "edited.npz", "sha256")


def test_reject_inconsistent_counts(tmp_path):
    metadata, arrays = encode_state(capture(run(make_batches(16, [5]))))
    arrays["layer1.cumulative"][-1, 0] = 0  # a count that decreases along the grid
    write_members(tmp_path / "bad.npz", metadata, arrays)
    assert_rejected(tmp_path / "bad.npz", "'fc'")


def test_reject_object_array_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    metadata, arrays = encode_state(capture(run(make_batches(17, [2]))))
    write_members(tmp_path / "a.npz", metadata, arrays)
    payload = np.empty(1, dtype=object)
    payload[0] = SideEffect(str(marker))
    with zipfile.ZipFile(tmp_path / "a.npz") as source:
        kept = {n: source.read(n) for n in source.namelist() if n != "layer0.cumulative.npy"}
    with zipfile.ZipFile(tmp_path / "pickled.npz", "w") as target:
        for name, data in kept.items():
            target.writestr(name, data)
        with target.open("layer0.cumulative.npy", "w") as member:
            np.lib.format.write_array(member, payload, allow_pickle=True)

    assert_rejected(tmp_path / "pickled.npz", "layer0.cumulative")
    assert not marker.exists()


class SideEffect:
    """Creates a file when unpickled, so a test can tell whether the loader unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        StreamingIUA.load(tmp_path / "absent.npz")


def test_save_rejects_non_regular_target(tmp_path):
    iua = IUA.introspect({"a": np.zeros((2, 3))})
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        iua.save(fifo)
    assert fifo.is_fifo()
    with pytest.raises(ValueError, match="not a regular file"):
        iua.save(tmp_path)


def test_save_through_symlink_keeps_link(tmp_path):
    iua = IUA.introspect({"a": np.zeros((2, 3))})
    real = tmp_path / "real.npz"
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    iua.save(link)
    assert link.is_symlink()
    loaded = IUA.load(real)
    np.testing.assert_array_equal(
        loaded.results["a"].unit_inactive_count, iua.results["a"].unit_inactive_count
    )


def test_custom_grid_round_trip(tmp_path):
    data = {"a": np.maximum(np.random.default_rng(1).standard_normal((20, 8)), 0)}
    iua = IUA.introspect(data, grid=[1e-6, 0.5])
    loaded = IUA.load(iua.save(tmp_path / "coarse.npz"))
    np.testing.assert_array_equal(loaded.engine.grid, iua.engine.grid)
    for atol in iua.engine.grid:
        np.testing.assert_array_equal(
            loaded.results_at(atol=float(atol))["a"].unit_inactive_count,
            iua.results_at(atol=float(atol))["a"].unit_inactive_count,
        )
