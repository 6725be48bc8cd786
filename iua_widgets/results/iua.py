"""DNIKit-compatible facade: ``IUA.introspect``, ``IUA.show`` and ``IUA.Result``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ..engine import Result, StreamingIUA
from ..engine.streaming import DEFAULT_MAX_CACHE_BYTES
from .table import results_frame

logger = logging.getLogger(__name__)


class IUA:
    """Inactive Unit Analysis of a model's responses.

    Create one with :meth:`IUA.introspect`. Switching from
    ``dnikit.introspectors.IUA`` needs only the import changed.
    """

    Result = Result

    class VisType:
        """Visualisation kinds for :meth:`IUA.show`."""

        CHART: Final = "chart"
        """Heatmap widget of each unit's inactive proportion, one per response."""

        TABLE: Final = "table"
        """``pandas.DataFrame`` with one row per response."""

    def __init__(self, engine: StreamingIUA) -> None:
        self._engine = engine

    @staticmethod
    def introspect(
        producer: Any,
        *,
        batch_size: int = 32,
        rtol: float = 1e-05,
        atol: float = 1e-08,
        unit: str = "element",
        channel_axis: int = 1,
        per_input: str = "grid",
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
        torch_device: Any = None,
        grid: Any = None,
        progress: bool | None = None,
    ) -> IUA:
        """Count inactive units of every response of ``producer``.

        Parameters
        ----------
        producer
            A DNIKit-style producer (a callable taking ``batch_size`` and
            yielding objects with ``.fields``), a mapping of response name to
            whole-dataset array, or an iterable of mappings, one per batch.
        batch_size
            Inputs per batch requested from a producer or mapping.
        rtol, atol
            Tolerances of ``numpy.isclose(x, 0)``; only ``atol`` matters against zero.
        unit, channel_axis, per_input, max_cache_bytes, torch_device, grid
            See :class:`StreamingIUA`.
        progress
            Show a progress bar widget while batches arrive. ``None`` (default)
            shows it when running in a Jupyter kernel, ``False`` never.

        Raises
        ------
        ValueError
            For invalid tolerances or when ``producer`` yields no inputs.
        """
        engine = StreamingIUA(
            rtol=rtol, atol=atol, unit=unit, channel_axis=channel_axis, per_input=per_input,
            max_cache_bytes=max_cache_bytes, torch_device=torch_device, grid=grid,
        )
        bar = None
        if progress or progress is None and _in_notebook_kernel():
            from ..widgets.progress import IntrospectProgress

            bar = IntrospectProgress(engine)
        try:
            engine.consume(producer, batch_size=batch_size)
        except BaseException as error:
            if bar is not None:
                bar.close(error)
            raise
        if bar is not None:
            bar.close()
        if engine.inputs_seen == 0:
            raise ValueError(
                "The producer yielded no inputs, so there is nothing to analyse. "
                "Check that the data source is not empty or already exhausted."
            )
        logger.info(
            "IUA of %d inputs over %d responses done", engine.inputs_seen, len(engine.layer_names)
        )
        return IUA(engine)

    @property
    def engine(self) -> StreamingIUA:
        """The streaming engine holding the cached statistics."""
        return self._engine

    @property
    def results(self) -> Mapping[str, Result]:
        """Per-response results at the tolerances given to :meth:`introspect`."""
        return self._engine.results

    def results_at(
        self, atol: float | None = None, rtol: float | None = None, *, snap: bool = False
    ) -> Mapping[str, Result]:
        """Per-response results at another grid ``atol``, from the cache alone."""
        return self._engine.results_at(atol=atol, rtol=rtol, snap=snap)

    def save(self, path: Any) -> Any:
        """Write the analysis to ``path`` atomically; returns the ``pathlib.Path`` written."""
        return self._engine.save(path)

    @staticmethod
    def load(path: Any) -> IUA:
        """Read a file written by :meth:`save` (or ``StreamingIUA.save``).

        Raises ``iua_widgets.engine.persist.AnalysisFileError`` (a ``ValueError``)
        for a corrupt, truncated, foreign or newer-version file.
        """
        return IUA(StreamingIUA.load(path))

    def merge(self, *others: IUA | StreamingIUA) -> IUA:
        """Return the analysis of the union of the inputs, exactly, as a new ``IUA``.

        Call as ``IUA.merge(a, b, ...)`` or ``a.merge(b, ...)``; see
        ``StreamingIUA.merge``; the first part may also be a ``StreamingIUA``.
        """
        return IUA(StreamingIUA.merge(self, *others))

    @staticmethod
    def show(
        iua: IUA | StreamingIUA,
        *,
        vis_type: str = VisType.TABLE,
        response_names: Sequence[str] | None = None,
    ) -> Any:
        """Show results as a table (``pandas.DataFrame``) or as heatmap widgets.

        Raises
        ------
        ValueError
            For an unknown ``vis_type``, an unknown response name or an empty selection.
        """
        results = iua.results
        names = select_responses(results, response_names)
        if vis_type == IUA.VisType.TABLE:
            return results_frame({name: results[name] for name in names})
        if vis_type == IUA.VisType.CHART:
            from ..widgets.heatmap import heatmap_panel

            return heatmap_panel({name: results[name] for name in names})
        raise ValueError(
            f"Unknown vis_type {vis_type!r}; expected IUA.VisType.TABLE ('table') "
            "or IUA.VisType.CHART ('chart')."
        )


def _in_notebook_kernel() -> bool:
    # Checked without importing ipywidgets, which plain scripts do not need.
    if "ipykernel" not in sys.modules:
        return False
    from ..widgets.progress import in_notebook_kernel

    return in_notebook_kernel()


def select_responses(
    results: Mapping[str, Result], response_names: Sequence[str] | None
) -> list[str]:
    """Validate ``response_names`` against ``results`` and return them sorted."""
    if response_names is None:
        names = list(results)
    else:
        if isinstance(response_names, str):
            response_names = [response_names]
        unknown = [name for name in response_names if name not in results]
        if unknown:
            raise ValueError(
                f"Unknown response name(s) {unknown}; known responses: {sorted(results)}."
            )
        names = list(response_names)
    if not names:
        raise ValueError(
            "The selection of responses is empty. Pass response_names=None to show all."
        )
    return sorted(names)
