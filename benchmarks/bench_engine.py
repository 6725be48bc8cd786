"""Engine benchmark: ingest and recompute speed against DNIKit 2.0.0, and memory.

Run with ``python benchmarks/bench_engine.py`` (add ``--quick`` for a short run).
Every figure is a median of repeated runs, and every speed is also given as a
ratio against a baseline measured in the same run, because absolute times on a
shared machine are noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from iua_widgets import IUA, StreamingIUA
from iua_widgets.engine import kernels
from iua_widgets.engine.kernels import use_compiled

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from dnikit.base import Batch
    from dnikit.introspectors import IUA as DNIKitIUA


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dnikit_producer(arrays: dict[str, np.ndarray]):
    def producer(batch_size: int):
        total = len(next(iter(arrays.values())))
        for start in range(0, total, batch_size):
            yield Batch({name: a[start : start + batch_size] for name, a in arrays.items()})

    return producer


def plain_count(arrays: dict[str, np.ndarray], batch_size: int, atol: float) -> None:
    """Single-threshold baseline: |x| <= atol with per-unit and per-input sums."""
    total = len(next(iter(arrays.values())))
    for start in range(0, total, batch_size):
        for array in arrays.values():
            block = array[start : start + batch_size]
            mask = np.abs(block.reshape(len(block), -1)) <= atol
            mask.sum(axis=0)
            mask.sum(axis=1)


def relu_responses(rng, dtype, layers: int, shape: tuple[int, ...], inputs: int):
    arrays = {}
    for index in range(layers):
        values = np.maximum(rng.standard_normal((inputs, *shape), dtype=np.float32), 0)
        if np.issubdtype(dtype, np.integer):
            values = np.round(values * 3)
        arrays[f"layer{index}"] = values.astype(dtype)
    return arrays


def ingest_row(label, arrays, batch_size, repeats, unit="element"):
    contenders = {
        # Both sides end with their results ready.
        "ours": lambda: IUA.introspect(arrays, batch_size=batch_size, unit=unit).results,
        "theirs": lambda: DNIKitIUA.introspect(dnikit_producer(arrays), batch_size=batch_size),
        "plain": lambda: plain_count(arrays, batch_size, 1e-8),
    }
    # One untimed run each, then the repeats in turn. Each ratio is the median
    # of the ratios of neighbouring runs, so that a change in the machine's
    # load during the row affects both sides of a ratio alike.
    times = {name: [] for name in contenders}
    for _ in range(repeats + 1):
        for name, function in contenders.items():
            times[name].append(median_seconds(function, 1))
    ours, theirs, plain = (np.array(t[1:]) for t in times.values())
    values = sum(a.size for a in arrays.values())
    vs_dnikit = float(np.median(theirs / ours))
    vs_plain = float(np.median(plain / ours))
    print(
        f"{label:<34} {values / np.median(ours) / 1e6:9.0f} {values / np.median(theirs) / 1e6:9.0f} "
        f"{values / np.median(plain) / 1e6:9.0f} {vs_dnikit:9.2f}x {vs_plain:9.2f}x"
    )
    return vs_dnikit


def first_call_seconds() -> tuple[float, float]:
    """Time of the first and second update in a fresh process with an empty numba cache."""
    code = (
        "import time, numpy as np\n"
        "from iua_widgets import StreamingIUA\n"
        "x = np.ones((8, 8), np.float32)\n"
        "t = time.perf_counter(); StreamingIUA().update({'a': x}); a = time.perf_counter() - t\n"
        "t = time.perf_counter(); StreamingIUA().update({'a': x}); b = time.perf_counter() - t\n"
        "print(a, b)\n"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True)
        warm = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True)
    return float(cold.stdout.split()[0]), float(warm.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and inputs")
    args = parser.parse_args()
    repeats = 3 if args.quick else 9
    inputs = 512 if args.quick else 2048
    rng = np.random.default_rng(0)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, numpy {np.__version__}, compiled kernel: {use_compiled()}, "
          f"AVX-512 kernel: {kernels.vector_kernel_available()}")
    print("\n== Ingest: full threshold cache vs DNIKit 2.0.0 (one threshold) ==")
    print(f"{'case':<34} {'ours M/s':>9} {'DNIKit':>9} {'plain':>9} {'vs DNIKit':>10} {'vs plain':>10}")
    IUA.introspect(relu_responses(rng, np.float32, 1, (64,), 64), batch_size=32).results  # compile
    headline = ingest_row(
        "float32 2x8192 units, batch 256",
        relu_responses(rng, np.float32, 2, (8192,), inputs), 256, repeats,
    )
    relu = relu_responses(rng, np.float32, 2, (8192,), inputs)
    if kernels.vector_kernel_available():
        # The kernels of CPUs without AVX-512, on this machine.
        os.environ["IUA_WIDGETS_KERNEL"] = "scalar"
        try:
            ingest_row("float32 without AVX-512 kernel", relu, 256, repeats)
        finally:
            del os.environ["IUA_WIDGETS_KERNEL"]
    # No exact zeros, and half of the values on the 1e-3 grid threshold.
    ingest_row("float32 |x| + 1e-3, no zeros", {k: np.abs(v) + 1e-3 for k, v in relu.items()},
               256, repeats)
    mostly_zeros = {k: np.where(rng.random(v.shape) < 0.8, 0, v) for k, v in relu.items()}
    ingest_row("float32 90 % zeros", mostly_zeros, 256, repeats)
    del relu, mostly_zeros
    conv = relu_responses(rng, np.float32, 2, (32, 16, 16), inputs)
    ingest_row("float32 conv, element units", conv, 256, repeats)
    ingest_row("float32 conv, channel units", conv, 256, repeats, unit="channel")
    for dtype in (np.float16, np.float64, np.int32):
        ingest_row(
            f"{np.dtype(dtype).name} 2x8192 units, batch 256",
            relu_responses(rng, dtype, 2, (8192,), inputs), 256, repeats,
        )

    print("\n== Recompute: results_at over 4 x 262,144 units vs a DNIKit re-run of 256 inputs ==")
    big = relu_responses(rng, np.float32, 4, (262_144,), 256)
    engine = StreamingIUA(atol=1e-8)
    engine.consume(big, batch_size=64)
    recompute = median_seconds(lambda: engine.results_at(atol=2e-8), repeats)
    rerun = median_seconds(
        lambda: DNIKitIUA.introspect(dnikit_producer(big), batch_size=64, atol=2e-8), 3
    )
    print(f"results_at: {recompute * 1e3:.1f} ms, DNIKit re-run: {rerun * 1e3:.0f} ms, "
          f"ratio {rerun / recompute:.0f}x")

    print("\n== Memory ==")
    stats = engine.layer_stats("layer0")
    grid = len(engine.grid)
    detail = 2 * grid * 256  # per_input='grid' detail of the 256 inputs
    per_unit = (stats.nbytes() - detail) / stats.units
    print(f"grid thresholds: {grid}")
    print(f"cache per unit (table and heatmap statistics): {per_unit:.0f} B, "
          f"uint16 low and high counts per bin, {grid + 2} bins "
          "(independent of the number of inputs up to about 2**31, then 10 B per bin)")
    print(f"per input per layer, per_input='grid': {2 * grid} B below 65,536 units, "
          f"{4 * grid} B from 65,536; 'start': 8 B; 'none': 0 B")
    print(f"engine.nbytes() for 4 x 262,144 units and 256 inputs: {engine.nbytes() / 2**20:.1f} MiB")

    print("\n== First call ==")
    cold, warm = first_call_seconds()
    print(f"first update in a fresh process: {cold:.2f} s with an empty numba cache, "
          f"{warm:.2f} s with the on-disk cache")
    print(f"\nheadline: ingest {headline:.2f}x DNIKit, recompute {rerun / recompute:.0f}x a re-run")


if __name__ == "__main__":
    main()
