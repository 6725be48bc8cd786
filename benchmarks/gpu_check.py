"""Check the torch-device engine on a GPU against the numpy engine, and time both.

Run on a machine with CUDA: ``python benchmarks/gpu_check.py``. It exits with
status 1 on any mismatch and 2 when no CUDA device is present.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from iua_widgets import StreamingIUA


def main() -> int:
    if not torch.cuda.is_available():
        print("No CUDA device: nothing to check.")
        return 2
    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    batches = []
    for _ in range(8):
        conv = torch.relu(torch.randn(256, 64, 16, 16, device=device, generator=generator))
        conv[:, 0, 0, 0] = 1e-8
        dense = torch.relu(torch.randn(256, 8192, device=device, generator=generator)).half()
        dense[0, :2] = float("nan")
        batches.append({"conv": conv, "dense": dense})
    mismatches = 0
    for unit in ("element", "channel"):
        on_gpu = StreamingIUA(unit=unit, torch_device=device)
        on_host = StreamingIUA(unit=unit)
        gpu_times, host_times = [], []
        for batch in batches:
            torch.cuda.synchronize()
            start = time.perf_counter()
            on_gpu.update(batch)
            torch.cuda.synchronize()
            gpu_times.append(time.perf_counter() - start)
            host_batch = {k: v.cpu() for k, v in batch.items()}
            start = time.perf_counter()
            on_host.update(host_batch)
            host_times.append(time.perf_counter() - start)
        for atol in on_host.grid:
            want = on_host.results_at(atol=float(atol))
            got = on_gpu.results_at(atol=float(atol))
            for name in want:
                same = (
                    np.array_equal(got[name].unit_inactive_count, want[name].unit_inactive_count)
                    and np.array_equal(got[name].inactive, want[name].inactive)
                    and got[name].std_inactive == want[name].std_inactive
                    and got[name].nonfinite == want[name].nonfinite
                )
                if not same:
                    mismatches += 1
                    print(f"MISMATCH unit={unit} layer={name} atol={atol:g}")
        print(
            f"unit={unit}: median batch {statistics.median(gpu_times) * 1e3:.1f} ms on "
            f"{torch.cuda.get_device_name()}, {statistics.median(host_times) * 1e3:.1f} ms "
            "on the host (after copying to host)"
        )
    print("all grid thresholds equal" if mismatches == 0 else f"{mismatches} mismatches")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
