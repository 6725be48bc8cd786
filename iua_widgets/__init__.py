"""Inactive Unit Analysis of neural networks as live, linked Jupyter widgets."""

from .engine import StreamingIUA
from .results import IUA

__version__ = "0.1.0"

__all__ = ["IUA", "Dashboard", "StreamingIUA", "__version__"]


def __getattr__(name: str):
    # The dashboard pulls in ipywidgets and bqplot, so import it on first use.
    if name == "Dashboard":
        from .widgets.dashboard import Dashboard

        return Dashboard
    raise AttributeError(f"module 'iua_widgets' has no attribute {name!r}")
