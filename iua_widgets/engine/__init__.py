"""Pure numpy engine: consumes batches, owns the threshold cache, returns results."""

from .grid import threshold_grid
from .result import Result
from .streaming import StreamingIUA

__all__ = ["Result", "StreamingIUA", "threshold_grid"]
