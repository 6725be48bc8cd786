"""The torch-device engine gives the numbers of the numpy engine."""

from __future__ import annotations

import numpy as np
import pytest

from iua_widgets import StreamingIUA

torch = pytest.importorskip("torch", reason='needs torch: pip install "iua-widgets[torch]"')


def random_batches(seed: int):
    rng = np.random.default_rng(seed)
    batches = []
    for inputs in (5, 1, 8):
        conv = np.maximum(rng.standard_normal((inputs, 3, 4, 4)), 0)
        conv[conv < 0.3] = rng.choice([1e-9, 2e-8, -1e-8, 0.0, -0.0], size=(conv < 0.3).sum())
        dense = rng.standard_normal((inputs, 7)).astype(np.float32)
        dense[0, :3] = [np.nan, np.inf, 1e-8]
        batches.append({"conv": conv, "dense": dense})
    return batches


@pytest.mark.parametrize("unit", ["element", "channel"])
@pytest.mark.parametrize("as_tensor", [True, False])
def test_device_engine_equals_numpy_engine(unit, as_tensor):
    host = StreamingIUA(unit=unit)
    device = StreamingIUA(unit=unit, torch_device="cpu")
    for batch in random_batches(0):
        host.update(batch)
        fed = {k: torch.from_numpy(v) for k, v in batch.items()} if as_tensor else batch
        device.update(fed)
    for atol in host.grid:
        want = host.results_at(atol=float(atol))
        got = device.results_at(atol=float(atol))
        for name in want:
            np.testing.assert_array_equal(got[name].unit_inactive_count, want[name].unit_inactive_count)
            np.testing.assert_array_equal(got[name].inactive, want[name].inactive)
            assert got[name].std_inactive == want[name].std_inactive
            assert got[name].nonfinite == want[name].nonfinite


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int32", "bool"])
def test_device_engine_narrow_dtypes(dtype):
    values = torch.tensor([[0.0, 1e-8, 3e-8, 1.0, -2e-8, 5.0]] * 3)
    tensor = values.to(getattr(torch, dtype))
    host = StreamingIUA(atol=2e-8)
    device = StreamingIUA(atol=2e-8, torch_device="cpu")
    host.update({"a": tensor})
    device.update({"a": tensor})
    for atol in (0.0, 1e-8, 2e-8, 5e-8, 1.0):
        np.testing.assert_array_equal(
            device.results_at(atol=atol)["a"].unit_inactive_count,
            host.results_at(atol=atol)["a"].unit_inactive_count,
        )
