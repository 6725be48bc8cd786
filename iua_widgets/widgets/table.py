"""A sortable table widget with row selection, as a small anywidget.

Why not ipydatagrid: its last release (1.4.0) dates from 2024-12, and there
are open reports of grids rendering blank in JupyterLab 4 and of selections
not reaching Python. This table is about 150 lines of plain JavaScript loaded
from ``table.js`` without a build step, so it runs wherever anywidget does
(JupyterLab, Notebook 7, VS Code, Colab), and both sorting and selection are
ordinary synced traits.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

logger = logging.getLogger(__name__)

_HERE = Path(__file__).parent

#: Kinds of column: ``"text"`` sorts naturally (see :func:`natural_key`), the others numerically.
COLUMN_KINDS = ("text", "int", "float", "bool")

_CHUNKS = re.compile(r"[0-9]+|[^0-9]+")


def column(
    key: str,
    label: str,
    kind: str = "float",
    *,
    digits: int | None = None,
    sort_by: str | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Describe one column: row field ``key``, header ``label``, display ``digits`` for floats.

    ``sort_by`` names another row field to sort by (e.g. a flat unit index
    behind an index shown as text); ``title`` is the header's hover text.
    """
    if kind not in COLUMN_KINDS:
        raise ValueError(f"Column {key!r} has kind {kind!r}; expected one of {COLUMN_KINDS}.")
    spec: dict[str, Any] = {"key": key, "label": label, "kind": kind}
    if digits is not None:
        spec["digits"] = int(digits)
    if sort_by is not None:
        spec["sort_by"] = sort_by
    if title is not None:
        spec["title"] = title
    return spec


def json_value(value: Any) -> Any:
    """Convert numpy scalars to Python ones and NaN/inf to ``None`` so messages stay valid JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def natural_key(text: str) -> tuple:
    """Sort key that orders ``layer2`` before ``layer10``: runs of ASCII digits compare as numbers.

    The text is split into maximal runs of digits and of other characters.
    Runs compare in turn: digit runs by numeric value (of any length), other
    runs by code point, and a digit run against another run by their first
    characters. When all runs are equal (``layer01`` and ``layer1``) the
    whole text decides, by code point, so the order is total. ``table.js``
    implements the same order.
    """
    chunks = []
    for chunk in _CHUNKS.findall(text):
        if "0" <= chunk[0] <= "9":
            digits = chunk.lstrip("0")
            chunks.append((1, len(digits), digits))
        else:
            chunks.append((0 if chunk[0] < "0" else 2, chunk))
    return (tuple(chunks), text)


def _sort_key(value: Any) -> tuple:
    # Missing values sort last in both directions (see sorted_rows).
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (1, 0)
    return (0, value)


class SortableTable(anywidget.AnyWidget):
    """Table whose header cells sort and whose rows select, synced both ways.

    DOM contract, which browser tests rely on: header cells
    ``th[data-column="<key>"]``, rows ``tr[data-row="<row id>"]`` and cells
    ``td[data-column="<key>"]``. The selected row has class ``selected``,
    flagged rows have class ``flagged`` (with the note as hover text), and
    the sorted header has ``sorted-asc`` or ``sorted-desc``.
    """

    _esm = _HERE / "table.js"
    _css = _HERE / "table.css"

    columns = traitlets.List(traitlets.Dict()).tag(sync=True)
    """Column descriptions from :func:`column`, in display order."""
    rows = traitlets.List(traitlets.Dict()).tag(sync=True)
    """Row dicts keyed by column key, in the current sort order."""
    row_key = traitlets.Unicode("id").tag(sync=True)
    """Field whose text identifies a row (``data-row`` and ``selected``)."""
    sort_column = traitlets.Unicode("").tag(sync=True)
    """Key of the column the rows are sorted by; empty for the given order."""
    sort_ascending = traitlets.Bool(True).tag(sync=True)
    """Sort direction."""
    selected = traitlets.Unicode(None, allow_none=True).tag(sync=True)
    """Id of the selected row, or ``None``. An id of no row is ignored (the selection stays)."""
    flagged = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Ids of rows drawn as flagged."""
    flag_notes = traitlets.Dict().tag(sync=True)
    """Hover text per flagged row id."""
    caption = traitlets.Unicode("").tag(sync=True)
    """Text shown above the table."""

    def __init__(self, columns: Sequence[Mapping[str, Any]], **kwargs: Any) -> None:
        super().__init__(columns=[dict(c) for c in columns], **kwargs)
        self._valid_selection = self.selected
        self.observe(self._resort, names=["sort_column", "sort_ascending"])
        self.observe(self._remember_selection, names="selected")

    @traitlets.validate("sort_column")
    def _check_sort_column(self, proposal: dict) -> str:
        key = proposal["value"]
        known = [c["key"] for c in self.columns]
        if key and key not in known:
            raise traitlets.TraitError(f"Unknown sort column {key!r}; columns are {known}.")
        return key

    @traitlets.validate("selected")
    def _check_selected(self, proposal: dict) -> str | None:
        # Reverting instead of raising also covers a stale click from the
        # browser: ipywidgets sends the kept value back to it.
        row_id = proposal["value"]
        if row_id is None or row_id in self.row_ids():
            return row_id
        # self.selected may already be the rejected id: a browser update sets it
        # before validating (traitlets' hold_trait_notifications).
        kept = getattr(self, "_valid_selection", None)
        logger.warning(
            "Ignored the selection of row %r: no row has that id; the selection stays %r.",
            row_id, kept,
        )
        return kept

    def _remember_selection(self, change: dict) -> None:
        self._valid_selection = change["new"]

    def set_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the rows, converted to JSON values and sorted by the current sort column.

        The selection is cleared when its row is gone.
        """
        clean = [{k: json_value(v) for k, v in row.items()} for row in rows]
        self.rows = self.sorted_rows(clean)
        if self.selected is not None and self.selected not in self.row_ids():
            self.selected = None

    def sorted_rows(self, rows: Sequence[Mapping[str, Any]] | None = None) -> list[dict]:
        """Return ``rows`` (default: the current rows) in the order the browser shows them.

        Missing values come last in both directions; ties keep their order.
        Text values sort naturally (:func:`natural_key`), numbers by value.
        """
        rows = list(self.rows if rows is None else rows)
        spec = next((c for c in self.columns if c["key"] == self.sort_column), None)
        if spec is None:
            return [dict(r) for r in rows]
        field = spec.get("sort_by", spec["key"])
        present = [r for r in rows if _sort_key(r.get(field))[0] == 0]
        missing = [r for r in rows if _sort_key(r.get(field))[0] == 1]

        def key(row: Mapping[str, Any]) -> Any:
            value = row[field]
            return natural_key(value) if isinstance(value, str) else value

        # sorted() is stable with reverse=True too, so ties keep their order either way.
        present = sorted(present, key=key, reverse=not self.sort_ascending)
        return [dict(r) for r in present + missing]

    def row_ids(self) -> list[str]:
        """Ids of the rows in display order."""
        return [str(r[self.row_key]) for r in self.rows]

    def _resort(self, change: dict) -> None:
        self.rows = self.sorted_rows()
