"""A small CNN for scikit-learn's 8x8 digits, with trained weights shipped in the package.

The data is ``sklearn.datasets.load_digits`` (1,797 images bundled with
scikit-learn, so nothing is downloaded). Pixels 0..16 are scaled to [0, 1].
The split is fixed by index: image ``i`` is in the test split when
``i % 5 == 0`` (360 images) and in the train split otherwise (1,437 images).
``scripts/train_digits_cnn.py`` trains the shipped weights.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from importlib import resources
from os import PathLike

import numpy as np

try:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
except ImportError as error:
    raise ImportError(
        "iua_widgets.models.digits needs PyTorch, which is not installed. "
        'Install it with: pip install "iua-widgets[torch]"'
    ) from error

logger = logging.getLogger(__name__)

#: File of the trained weights inside this package: a plain npz of state_dict arrays.
WEIGHTS_FILE = "digits_cnn.npz"

#: Names of the model's modules, in forward order.
LAYER_NAMES = ("conv1", "relu1", "conv2", "relu2", "flatten", "fc1", "relu3", "fc2")

SPLITS = ("train", "test", "all")

#: Image ``i`` is in the test split when ``i % TEST_STRIDE == 0``.
TEST_STRIDE = 5

#: Largest pixel value of the digits images; dividing by it scales them to [0, 1].
PIXEL_MAX = 16.0


def build_digits_cnn() -> nn.Sequential:
    """Build the untrained digits CNN.

    Input ``(N, 1, 8, 8)``, output ``(N, 10)`` logits. ``conv1`` (3x3, 16
    channels, padding 1) gives 16x8x8 and ``conv2`` (3x3, 32 channels, stride 2,
    padding 1) gives 32x4x4. After flattening, ``fc1`` maps 512 features to 64
    and ``fc2`` maps 64 to the 10 classes.
    """
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(1, 16, kernel_size=3, padding=1)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1)),
                ("relu2", nn.ReLU()),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(32 * 4 * 4, 64)),
                ("relu3", nn.ReLU()),
                ("fc2", nn.Linear(64, 10)),
            ]
        )
    )


def load_digits_cnn(path: str | PathLike[str] | None = None) -> nn.Sequential:
    """Build the digits CNN, load trained weights and return it in eval mode.

    Parameters
    ----------
    path
        An npz file of state_dict arrays; ``None`` loads the weights shipped in
        the package. The file is read with ``allow_pickle=False``, so it cannot
        run code.

    Raises
    ------
    RuntimeError
        When the file's arrays do not match the model's parameters (from
        ``load_state_dict``).
    """
    model = build_digits_cnn()
    if path is None:
        with resources.as_file(resources.files(__package__) / WEIGHTS_FILE) as shipped:
            state = read_state_dict(shipped)
    else:
        state = read_state_dict(path)
    model.load_state_dict(state, strict=True)
    logger.debug("Loaded digits CNN weights from %s", path or WEIGHTS_FILE)
    return model.eval()


def read_state_dict(path: str | PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state_dict saved by :func:`save_state_dict` (numeric arrays only, no pickle)."""
    with np.load(path, allow_pickle=False) as archive:
        return {key: torch.from_numpy(archive[key].copy()) for key in archive.files}


def save_state_dict(model: nn.Module, path: str | PathLike[str]) -> None:
    """Write ``model.state_dict()`` as a plain npz file, one array per key."""
    arrays = {key: value.detach().cpu().numpy() for key, value in model.state_dict().items()}
    np.savez(path, **arrays)


def digits_arrays(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Return the images ``(N, 1, 8, 8)`` float32 in [0, 1] and int64 labels of one split.

    Raises
    ------
    ValueError
        For a split other than "train", "test" or "all".
    ImportError
        When scikit-learn is missing.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "The digits data comes from scikit-learn, which is not installed. "
            'Install it with: pip install "iua-widgets[torch]"'
        ) from error
    digits = load_digits()
    images = (digits.images / PIXEL_MAX).astype(np.float32)[:, np.newaxis]
    labels = digits.target.astype(np.int64)
    if split == "all":
        return images, labels
    in_test = np.arange(len(labels)) % TEST_STRIDE == 0
    keep = in_test if split == "test" else ~in_test
    return images[keep], labels[keep]


def digits_dataset(split: str = "test") -> TensorDataset:
    """Return one split of the digits as a ``TensorDataset`` of (image, label)."""
    images, labels = digits_arrays(split)
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))


def digits_loader(batch_size: int = 64, split: str = "test") -> DataLoader:
    """Return a ``DataLoader`` over one split of the digits, in dataset order.

    Batches are ``(images, labels)`` with images ``(B, 1, 8, 8)`` float32 in
    [0, 1]. The order is fixed (no shuffling), so analyses repeat exactly.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    return DataLoader(digits_dataset(split), batch_size=batch_size, shuffle=False)
