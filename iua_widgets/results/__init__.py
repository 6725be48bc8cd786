"""The ``IUA`` facade, its results and their DataFrame form."""

from .iua import IUA
from .table import results_frame

__all__ = ["IUA", "results_frame"]
