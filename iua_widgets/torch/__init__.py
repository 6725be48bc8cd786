"""Capture the responses of PyTorch modules for Inactive Unit Analysis.

>>> from iua_widgets import IUA
>>> from iua_widgets.torch import responses
>>> iua = IUA.introspect(responses(model, loader, layers=["relu1", "relu2"]))
"""

try:
    import torch  # noqa: F401
except ImportError as error:
    raise ImportError(
        "iua_widgets.torch needs PyTorch, which is not installed. "
        'Install it with: pip install "iua-widgets[torch]"'
    ) from error

from .capture import ResponseBatch, Responses, responses
from .distributed import all_reduce
from .layers import LayerSpec
from .tracking import TrainingTracker

__all__ = ["LayerSpec", "ResponseBatch", "Responses", "TrainingTracker", "all_reduce", "responses"]
