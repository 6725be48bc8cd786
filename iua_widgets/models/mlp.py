"""A small MLP for scikit-learn's 8x8 digits, and the seeded training loop around it.

The teaching notebooks and their tests call these functions, so a claim a
notebook makes (a too-high learning rate kills ReLU units) is checked on
the same code. Data and split are those of :mod:`iua_widgets.models.digits`,
with each image flattened to 64 features in [0, 1]. Training takes about a
second on one CPU core.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .digits import digits_arrays

logger = logging.getLogger(__name__)

#: Names of the activation modules, the layers the notebooks analyse.
HIDDEN_LAYERS = ("act1", "act2")

#: Learning rates of the dying-ReLU lesson: plain SGD with momentum 0.9,
#: batches of 32. At the high rate most first-layer ReLU units die within a
#: few epochs while accuracy stays high enough to hide it.
SENSIBLE_LR = 0.05
HIGH_LR = 0.2

#: Slope of LeakyReLU on the negative side. PyTorch's default 0.01 lets
#: pushed-down units recover too slowly to matter in ten epochs here.
LEAKY_SLOPE = 0.1

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}

INITS = ("default", "he")


#: Snapshot period of the lessons, in optimizer steps (45 steps make one epoch).
SNAPSHOT_EVERY = 5


def digits_tensors(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Return one split of the digits as ``(N, 64)`` float32 inputs and int64 labels."""
    images, labels = digits_arrays(split)
    inputs = torch.from_numpy(images.reshape(len(images), -1))
    return inputs, torch.from_numpy(labels)


def build_digits_mlp(
    activation: str = "relu",
    *,
    hidden: tuple[int, ...] = (128, 128),
    init: str = "default",
    bias: float = 0.0,
    batchnorm: bool = False,
    seed: int = 0,
) -> nn.Sequential:
    """Build an untrained MLP ``64 -> hidden... -> 10`` with seeded weights.

    Modules are named ``fc1, [bn1,] act1, fc2, [bn2,] act2, ..., fc{n+1}``.

    Parameters
    ----------
    activation
        One of :data:`ACTIVATIONS`.
    hidden
        Units of each hidden layer.
    init
        ``"default"``: PyTorch's ``nn.Linear`` initialisation. ``"he"``:
        Kaiming-normal weights for ReLU (``fan_in`` mode) and every hidden
        bias set to ``bias``.
    bias
        Starting bias of the hidden layers with ``init="he"``.
    batchnorm
        Put ``BatchNorm1d`` between each hidden ``Linear`` and its activation.
    seed
        Seed of the weights. The global RNG is left as it was.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}.")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}.")
    modules: list[tuple[str, nn.Module]] = []
    width = 64
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for number, units in enumerate(hidden, start=1):
            linear = nn.Linear(width, units)
            if init == "he":
                nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
                nn.init.constant_(linear.bias, bias)
            modules.append((f"fc{number}", linear))
            if batchnorm:
                modules.append((f"bn{number}", nn.BatchNorm1d(units)))
            modules.append((f"act{number}", ACTIVATIONS[activation]()))
            width = units
        modules.append((f"fc{len(hidden) + 1}", nn.Linear(width, 10)))
    return nn.Sequential(OrderedDict(modules))


def digits_tracker(model: nn.Module, *, every: int | str = SNAPSHOT_EVERY, **settings: Any) -> Any:
    """Return a ``TrainingTracker`` of the hidden activations of ``model`` on the test split.

    The probe set is the 360 test images; ``settings`` go to ``TrainingTracker``
    (``atol``, ``keep_engines``, ...).
    """
    from ..torch.tracking import TrainingTracker

    probe, _ = digits_tensors("test")
    return TrainingTracker(model, probe, layers=list(HIDDEN_LAYERS), every=every, **settings)


@dataclass
class TrainingLog:
    """Record of one :func:`train_digits_mlp` run.

    Attributes
    ----------
    losses
        Training loss of every step.
    test_accuracy
        Accuracy on the test split after training.
    steps
        Optimizer steps taken.
    """

    losses: list[float] = field(default_factory=list)
    test_accuracy: float = math.nan
    steps: int = 0


def train_digits_mlp(
    model: nn.Module,
    *,
    lr: float,
    epochs: int = 10,
    batch_size: int = 32,
    momentum: float = 0.9,
    seed: int = 0,
    max_grad_norm: float | None = None,
    tracker: Any = None,
) -> TrainingLog:
    """Train ``model`` on the digits train split with SGD and cross-entropy.

    Batches are reshuffled every epoch from a generator seeded with ``seed``,
    so a run repeats exactly on the same machine and thread count.

    Parameters
    ----------
    model
        An MLP from :func:`build_digits_mlp`; trained in place, left in eval mode.
    lr, momentum
        SGD settings.
    epochs, batch_size
        Passes over the 1,437 training images, and images per step.
    seed
        Seed of the batch order.
    max_grad_norm
        If given, gradients are clipped to this total L2 norm before each
        step (``torch.nn.utils.clip_grad_norm_``).
    tracker
        A :class:`~iua_widgets.torch.tracking.TrainingTracker` (or ``None``).
        It is started before the first step, closed after the last, and its
        ``step`` and ``epoch_end`` are called after every step and epoch.
    """
    inputs, labels = digits_tensors("train")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    log = TrainingLog()
    if tracker is not None:
        tracker.start()
    try:
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(labels), batch_size):
                batch = order[start : start + batch_size]
                loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                if max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                log.losses.append(float(loss.detach()))
                log.steps += 1
                if tracker is not None:
                    tracker.step(epoch=epoch)
            if tracker is not None:
                tracker.epoch_end(epoch)
    finally:
        model.eval()
        if tracker is not None:
            tracker.close()
    log.test_accuracy = accuracy(model, *digits_tensors("test"))
    logger.info("Trained %d steps at lr=%g: test accuracy %.3f", log.steps, lr, log.test_accuracy)
    return log


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``inputs`` classified as ``labels`` (model run in eval mode, no grad)."""
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            predicted = model(inputs).argmax(dim=1)
    finally:
        model.train(training)
    return float((predicted == labels).double().mean())


def total_dead_percent(frame: Any) -> np.ndarray:
    """Percentage of all tracked units that are dead, per step of a tracker timeline.

    ``frame`` is a ``TrainingTracker.timeline`` DataFrame; rows of one step
    are summed over layers. Returns ``(steps, percent)`` pairs as an
    ``(n, 2)`` float64 array in step order.
    """
    grouped = frame.groupby("step", sort=True)[["dead units", "units"]].sum()
    percent = 100.0 * grouped["dead units"].to_numpy() / grouped["units"].to_numpy()
    return np.column_stack([grouped.index.to_numpy(dtype=np.float64), percent])
