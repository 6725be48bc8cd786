"""Cells of the notebooks that the dashboard browser tests write and run.

``SYNTHETIC_SOURCE`` runs both in the notebook's kernel and in the test
process, so a test computes the expected table numbers with brute-force numpy
on the very same responses the dashboard streamed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SYNTHETIC_SOURCE = '''\
import numpy as np

# A layer name that would run a script if any view wrote it as HTML.
XSS_LAYER = "<img src=x onerror=alert(1)>"
INPUTS = 360
UNITS = 64
# Fraction of responses that are exactly zero in each layer. The other values
# are log-uniform in [1e-9, 10], so any change of atol within that range
# changes the counts.
ZERO_FRACTIONS = {"dense": 0.1, XSS_LAYER: 0.5, "sparse": 0.9}
# The first units of "sparse" are zero on every input: dead at any atol.
DEAD_UNITS = 16
# Units of "padded": a prime, so the heatmap rows of 12 end in 5 padding cells.
PADDED_UNITS = 127


def synthetic_responses(inputs=INPUTS, seed=0):
    """Return whole-dataset responses of the synthetic layers.

    Each is (inputs, UNITS), except (inputs, PADDED_UNITS) for "padded".
    """
    rng = np.random.default_rng(seed)
    layers = {}
    for name, zero_fraction in ZERO_FRACTIONS.items():
        values = 10.0 ** rng.uniform(-9.0, 1.0, size=(inputs, UNITS))
        values[rng.random((inputs, UNITS)) < zero_fraction] = 0.0
        layers[name] = values
    layers["sparse"][:, :DEAD_UNITS] = 0.0
    padded = 10.0 ** rng.uniform(-9.0, 1.0, size=(inputs, PADDED_UNITS))
    padded[rng.random((inputs, PADDED_UNITS)) < 0.5] = 0.0
    layers["padded"] = padded
    return layers
'''

# Streams the synthetic layers next to the ReLU responses of the digits CNN
# (360 test images), or alone when PyTorch or the model is not installed.
LINKED_CONTROLS_NOTEBOOK = [
    SYNTHETIC_SOURCE,
    '''\
from iua_widgets import Dashboard, StreamingIUA

synthetic = synthetic_responses()
try:
    import torch

    from iua_widgets.models.digits import digits_loader, load_digits_cnn
    from iua_widgets.torch import responses
except ImportError as error:
    print(f"Digits model not available, streaming synthetic layers only: {error}")
    model_batches = None
else:
    loader = digits_loader(batch_size=32, split="test")
    model_batches = responses(load_digits_cnn(), loader, layers=[torch.nn.ReLU])


def batches(batch_size=32):
    """Yield batches of the synthetic layers, with the model's responses when available."""
    if model_batches is None:
        for start in range(0, INPUTS, batch_size):
            yield {name: values[start:start + batch_size] for name, values in synthetic.items()}
        return
    start = 0
    for model_batch in model_batches:
        size = len(next(iter(model_batch.values())))
        synthetic_batch = {name: values[start:start + size] for name, values in synthetic.items()}
        start += size
        yield {**model_batch, **synthetic_batch}
    assert start == INPUTS, f"the digits test split has {start} images, expected {INPUTS}"''',
    '''\
engine = StreamingIUA(atol=1e-8)
dash = Dashboard(engine)
dash''',
    "handle = dash.stream(batches(), total=INPUTS)",
]

# Inputs per batch of the stream-controls notebook, and the batch count after
# which its failing producer raises.
STREAM_BATCH_SIZE = 8
FAILING_AFTER = 3
# Seconds the slow producer sleeps before each batch.
SLOW_BATCH_DELAY = 0.25

# Two dashboards: one fed slowly, for the pause, resume and cancel buttons,
# and one whose producer raises after FAILING_AFTER batches.
STREAM_CONTROLS_NOTEBOOK = [
    SYNTHETIC_SOURCE,
    f'''\
import time

from IPython.display import display

from iua_widgets import Dashboard, StreamingIUA

synthetic = synthetic_responses()
BATCH_SIZE = {STREAM_BATCH_SIZE}
FAILING_AFTER = {FAILING_AFTER}


def slow_batches(delay={SLOW_BATCH_DELAY}):
    for start in range(0, INPUTS, BATCH_SIZE):
        time.sleep(delay)
        yield {{name: values[start:start + BATCH_SIZE] for name, values in synthetic.items()}}


def failing_batches():
    for start in range(0, FAILING_AFTER * BATCH_SIZE, BATCH_SIZE):
        yield {{name: values[start:start + BATCH_SIZE] for name, values in synthetic.items()}}
    raise RuntimeError(f"synthetic producer failure after {{FAILING_AFTER}} batches")''',
    '''\
controlled = Dashboard(StreamingIUA())
controlled.add_class("probe-controlled")
failing = Dashboard(StreamingIUA())
failing.add_class("probe-failing")
display(controlled)
display(failing)''',
    '''\
controlled.stream(slow_batches(), total=INPUTS)
failing.stream(failing_batches(), total=INPUTS)''',
]


def synthetic_layers() -> dict[str, np.ndarray]:
    """Return the synthetic responses exactly as the test notebooks build them."""
    namespace: dict[str, Any] = {}
    exec(SYNTHETIC_SOURCE, namespace)
    return namespace["synthetic_responses"]()


def synthetic_constants() -> dict[str, Any]:
    """Return the constants (``XSS_LAYER``, ``INPUTS``, ``DEAD_UNITS``, ...) of ``SYNTHETIC_SOURCE``."""
    namespace: dict[str, Any] = {}
    exec(SYNTHETIC_SOURCE, namespace)
    return {key: value for key, value in namespace.items() if key.isupper()}


def expected_layer_row(values: np.ndarray, atol: float) -> dict[str, float]:
    """Return the layer table's numbers for one layer at ``atol``, by brute force.

    ``values`` is ``(inputs, units)``; a value is inactive when
    ``numpy.isclose(x, 0, atol=atol)``, which against zero is ``|x| <= atol``.
    """
    inactive = np.isclose(values, 0.0, rtol=1e-5, atol=atol)
    per_input = inactive.sum(axis=1)
    units = values.shape[1]
    return {
        "units": units,
        "inputs": values.shape[0],
        "mean_inactive": float(per_input.mean()),
        "std_inactive": float(per_input.std()),
        "mean_inactive_pct": float(100.0 * per_input.mean() / units),
        "dead_units": int(inactive.all(axis=0).sum()),
        "dead_pct": float(100.0 * inactive.all(axis=0).sum() / units),
    }
