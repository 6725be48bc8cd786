"""TrainingTracker against brute force: snapshots, timeline at any grid atol, model state."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from torch import nn

from iua_widgets import IUA
from iua_widgets.models.mlp import (
    HIDDEN_LAYERS,
    HIGH_LR,
    SENSIBLE_LR,
    build_digits_mlp,
    digits_tensors,
    digits_tracker,
    total_dead_percent,
    train_digits_mlp,
)
from iua_widgets.results.table import results_frame
from iua_widgets.torch import responses
from iua_widgets.torch.tracking import TrainingTracker

ATOLS = [0.0, 1e-8, 1e-6, 1e-3, 0.1, 1.0]
RTOL = 1e-05


def brute_force(model: nn.Sequential, inputs: torch.Tensor, atol: float) -> dict[str, tuple[int, float]]:
    """Dead units and mean inactive units per input of every hidden activation, in numpy."""
    found = {}
    with torch.no_grad():
        value = inputs
        for name, module in model.named_children():
            value = module(value)
            if name in HIDDEN_LAYERS:
                array = value.numpy().astype(np.float64)
                inactive = np.isclose(array, 0.0, rtol=RTOL, atol=atol)
                found[name] = (int(inactive.all(axis=0).sum()), float(inactive.sum(axis=1).mean()))
    return found


def train_steps(model: nn.Module, tracker: TrainingTracker, steps: int, lr: float = HIGH_LR,
                on_step=None) -> None:
    inputs, labels = digits_tensors("train")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for step in range(steps):
        batch = torch.randint(0, len(labels), (32,), generator=generator)
        loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tracker.step(epoch=step // 10)
        if on_step is not None:
            on_step(step + 1)


def test_snapshots_match_fresh_analysis():
    model = build_digits_mlp(seed=3)
    probe, _ = digits_tensors("test")
    tracker = digits_tracker(model, every=7)
    fresh = {}

    def record(tracker):
        snapshot = tracker.snapshots[-1] if tracker.snapshots else None
        if snapshot is not None and snapshot.step not in fresh:
            fresh[snapshot.step] = (
                IUA.introspect(responses(model, [probe], layers=list(HIDDEN_LAYERS))),
                {atol: brute_force(model, probe, atol) for atol in ATOLS},
            )

    tracker.observe(record)
    with tracker:
        train_steps(model, tracker, 30)
    assert sorted(fresh) == [0, 7, 14, 21, 28, 30]
    for atol in ATOLS:
        timeline = tracker.timeline(atol=atol)
        assert len(timeline) == 2 * len(fresh)
        for step, (iua, numpy_counts) in fresh.items():
            rows = timeline[timeline["step"] == step].set_index("layer")
            want = results_frame(iua.results_at(atol=atol)).set_index("response")
            for layer in HIDDEN_LAYERS:
                assert rows.loc[layer, "dead %"] == want.loc[layer, "dead %"], (step, layer, atol)
                assert rows.loc[layer, "mean inactive %"] == want.loc[layer, "mean inactive %"]
                assert rows.loc[layer, "dead units"] == numpy_counts[atol][layer][0]
                units = rows.loc[layer, "units"]
                assert units == 128
                assert rows.loc[layer, "inputs"] == len(probe)
                assert rows.loc[layer, "mean inactive %"] == pytest.approx(
                    100.0 * numpy_counts[atol][layer][1] / units, rel=1e-12
                )


def test_timeline_columns_and_epochs():
    model = build_digits_mlp(seed=0)
    tracker = digits_tracker(model, every=10)
    with tracker:
        train_steps(model, tracker, 25)
    frame = tracker.timeline()
    assert list(frame.columns) == [
        "step", "epoch", "layer", "units", "inputs", "dead units", "dead %",
        "mean inactive %", "atol",
    ]
    assert list(frame["step"].unique()) == [0, 10, 20, 25]
    assert frame["epoch"].isna().tolist() == [True, True] + [False] * 6
    assert frame["epoch"].dropna().tolist() == [0, 0, 1, 1, 2, 2]
    assert (frame["atol"] == 1e-8).all()


def test_latest_engine_is_last_snapshot():
    model = build_digits_mlp(seed=0)
    probe, _ = digits_tensors("test")
    tracker = digits_tracker(model, every=5)
    with tracker:
        train_steps(model, tracker, 10)
    want = IUA.introspect(responses(model, [probe], layers=list(HIDDEN_LAYERS)))
    got = tracker.latest
    assert got is tracker.snapshots[-1].engine
    assert all(snapshot.engine is None for snapshot in tracker.snapshots[:-1])
    pd.testing.assert_frame_equal(results_frame(got.results), results_frame(want.results))


def test_keep_engines_keeps_every_analysis():
    model = build_digits_mlp(seed=0)
    tracker = digits_tracker(model, every=5, keep_engines=True)
    with tracker:
        train_steps(model, tracker, 10)
    assert all(snapshot.engine is not None for snapshot in tracker.snapshots)
    first = tracker.snapshots[0].engine.results_at(atol=1e-6)
    row = tracker.timeline(atol=1e-6).iloc[0]
    assert row["dead units"] == first[row["layer"]].dead_units


def test_off_grid_atol_rejected_or_snapped():
    model = build_digits_mlp(seed=0)
    tracker = digits_tracker(model)
    tracker.start()
    with pytest.raises(ValueError, match="not on the threshold grid"):
        tracker.timeline(atol=3e-8)
    snapped = tracker.timeline(atol=3e-8, snap=True)
    assert (snapped["atol"] == 2e-8).all()


@pytest.mark.parametrize("training", [True, False])
def test_snapshot_restores_training_flags(training):
    model = build_digits_mlp(seed=0, batchnorm=True)
    model.train(training)
    model.fc1.train(not training)  # a mixed state must come back exactly
    flags = [module.training for module in model.modules()]
    running_mean = model.bn1.running_mean.clone()
    tracker = digits_tracker(model)
    tracker.snapshot()
    assert [module.training for module in model.modules()] == flags
    assert torch.equal(model.bn1.running_mean, running_mean)
    assert model.bn1.num_batches_tracked.item() == 0


def test_probe_snapshot_makes_no_gradient():
    model = build_digits_mlp(seed=0)
    tracker = digits_tracker(model)
    tracker.snapshot()
    assert all(parameter.grad is None for parameter in model.parameters())


def test_every_epoch_snapshots_at_epoch_end():
    model = build_digits_mlp(seed=0)
    tracker = digits_tracker(model, every="epoch")
    log = train_digits_mlp(model, lr=SENSIBLE_LR, epochs=3, tracker=tracker)
    steps = [snapshot.step for snapshot in tracker.snapshots]
    epochs = [snapshot.epoch for snapshot in tracker.snapshots]
    per_epoch = log.steps // 3
    assert steps == [0, per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert epochs == [None, 0, 1, 2]


def test_nested_start_closes_once():
    model = build_digits_mlp(seed=0)
    tracker = digits_tracker(model, every=1000)
    with tracker:
        train_digits_mlp(model, lr=SENSIBLE_LR, epochs=1, tracker=tracker)
        steps_after_first = [snapshot.step for snapshot in tracker.snapshots]
        train_digits_mlp(model, lr=SENSIBLE_LR, epochs=1, tracker=tracker)
    steps = [snapshot.step for snapshot in tracker.snapshots]
    assert steps_after_first == [0]  # the inner close leaves tracking on
    assert steps == [0, 90]


def test_close_after_error_skips_final_snapshot():
    model = build_digits_mlp(seed=0)
    tracker = digits_tracker(model, every=100)
    with pytest.raises(RuntimeError, match="stop"), tracker:
        tracker.step()
        raise RuntimeError("stop")
    assert [snapshot.step for snapshot in tracker.snapshots] == [0]


def test_training_source_matches_recorded_batches():
    model = build_digits_mlp(seed=2)  # no dropout or BatchNorm: train and eval outputs agree
    inputs, _ = digits_tensors("train")
    batches = [inputs[start : start + 50] for start in range(0, 300, 50)]
    tracker = TrainingTracker(model, layers=list(HIDDEN_LAYERS), every=3, source="training")
    with tracker:
        model.train()
        for batch in batches:
            model(batch)
            model.eval()
            model(inputs[:7])  # an eval pass, as in validation: ignored
            model.train()
            tracker.step()
    assert [snapshot.step for snapshot in tracker.snapshots] == [3, 6]
    for snapshot, window in zip(tracker.snapshots, (batches[:3], batches[3:]), strict=True):
        window_inputs = torch.cat(window)
        for atol in ATOLS:
            want = brute_force(model, window_inputs, atol)
            index = tracker.threshold_index(atol)
            for row, layer in enumerate(snapshot.layers):
                assert snapshot.inputs[row] == 150
                assert snapshot.dead_units[row, index] == want[layer][0]
                assert snapshot.mean_inactive[row, index] == pytest.approx(want[layer][1], rel=1e-12)


def test_training_source_hooks_removed_on_close():
    model = build_digits_mlp(seed=0)
    tracker = TrainingTracker(model, layers=list(HIDDEN_LAYERS), every=1, source="training")
    with tracker:
        model.train()
        model(torch.zeros(4, 64))
        tracker.step()
    assert all(not module._forward_hooks for module in model.modules())
    model(torch.zeros(4, 64))
    assert len(tracker.snapshots) == 1


def test_training_source_without_passes_raises():
    model = build_digits_mlp(seed=0)
    tracker = TrainingTracker(model, layers=list(HIDDEN_LAYERS), source="training")
    with pytest.raises(RuntimeError, match="No training forward pass"):
        tracker.snapshot()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": 0}, ValueError, "every must be a positive int"),
        ({"every": "batch"}, ValueError, "every must be a positive int"),
        ({"source": "both"}, ValueError, "source must be one of"),
        ({"probe": None}, ValueError, "needs a probe set"),
        ({"probe": 3}, TypeError, "probe must be a tensor"),
        ({"atol": -1.0}, ValueError, "atol must be finite"),
        ({"layers": ["act9"]}, ValueError, "Unknown layer 'act9'"),
    ],
)
def test_invalid_arguments_rejected(kwargs, error, match):
    model = build_digits_mlp(seed=0)
    settings = {"probe": torch.zeros(4, 64), "layers": list(HIDDEN_LAYERS), **kwargs}
    with pytest.raises(error, match=match):
        TrainingTracker(model, **settings)


def test_probe_from_loader_and_array_agree():
    model = build_digits_mlp(seed=0)
    probe, labels = digits_tensors("test")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(probe, labels), batch_size=50
    )
    from_loader = TrainingTracker(model, loader, layers=list(HIDDEN_LAYERS)).snapshot()
    from_array = TrainingTracker(model, probe.numpy(), layers=list(HIDDEN_LAYERS)).snapshot()
    assert np.array_equal(from_loader.dead_units, from_array.dead_units)
    assert np.array_equal(from_loader.mean_inactive, from_array.mean_inactive)


def test_high_learning_rate_kills_units():
    """The dying-ReLU lesson's claim, on the functions the notebook calls."""
    dead = {}
    for lr in (SENSIBLE_LR, HIGH_LR):
        model = build_digits_mlp(seed=0)
        tracker = digits_tracker(model)
        train_digits_mlp(model, lr=lr, seed=0, tracker=tracker)
        dead[lr] = total_dead_percent(tracker.timeline())[:, 1]
    healthy, high = dead[SENSIBLE_LR], dead[HIGH_LR]
    assert healthy[0] == high[0]  # same seed, same starting weights
    assert high[-1] - high[0] >= 20.0
    assert high[-1] >= 3 * max(healthy[-1], 1.0)
    assert healthy.max() <= healthy[0] + 10.0
    assert healthy[-1] <= 15.0
