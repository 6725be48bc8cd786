// Sortable table for iua_widgets. Plain DOM, no build step.
// Every value from Python is written with textContent or setAttribute, never
// innerHTML, so a layer named "<img src=x onerror=alert(1)>" shows as text.

function isMissing(value) {
  return value === null || value === undefined || (typeof value === "number" && Number.isNaN(value));
}

// Same order as SortableTable.sorted_rows in table.py: missing values last in
// both directions, numbers by value, text by code unit, ties keep row order.
function compareValues(a, b, ascending) {
  const aMissing = isMissing(a);
  const bMissing = isMissing(b);
  if (aMissing && bMissing) {
    return 0;
  }
  if (aMissing || bMissing) {
    return aMissing ? 1 : -1;
  }
  let order = 0;
  if (typeof a === "number" && typeof b === "number") {
    order = a - b;
  } else {
    const textA = String(a);
    const textB = String(b);
    if (textA < textB) {
      order = -1;
    } else if (textA > textB) {
      order = 1;
    }
  }
  return ascending ? order : -order;
}

function formatValue(value, column) {
  if (isMissing(value)) {
    return "";
  }
  if (typeof value === "boolean") {
    return value ? "yes" : "";
  }
  if (typeof value === "number" && column.digits !== undefined && column.digits !== null) {
    return value.toFixed(column.digits);
  }
  return String(value);
}

function sortedRows(model) {
  const rows = model.get("rows").slice();
  const columnKey = model.get("sort_column");
  const column = model.get("columns").find((c) => c.key === columnKey);
  if (!column) {
    return rows;
  }
  const field = column.sort_by || column.key;
  const ascending = model.get("sort_ascending");
  return rows
    .map((row, position) => ({ row, position }))
    .sort((x, y) => compareValues(x.row[field], y.row[field], ascending) || x.position - y.position)
    .map((entry) => entry.row);
}

function render({ model, el }) {
  el.classList.add("iua-table");
  const caption = document.createElement("div");
  caption.className = "iua-table-caption";
  const scroller = document.createElement("div");
  scroller.className = "iua-table-scroll";
  const table = document.createElement("table");
  const head = document.createElement("thead");
  const body = document.createElement("tbody");
  table.append(head, body);
  scroller.append(table);
  el.append(caption, scroller);

  function onHeaderClick(key) {
    if (model.get("sort_column") === key) {
      model.set("sort_ascending", !model.get("sort_ascending"));
    } else {
      model.set("sort_column", key);
      const column = model.get("columns").find((c) => c.key === key);
      model.set("sort_ascending", column ? column.kind === "text" : true);
    }
    model.save_changes();
  }

  function onRowClick(rowId) {
    model.set("selected", rowId);
    model.save_changes();
  }

  function draw() {
    const columns = model.get("columns");
    const keyField = model.get("row_key");
    const sortColumn = model.get("sort_column");
    const ascending = model.get("sort_ascending");
    const selected = model.get("selected");
    const flagged = new Set(model.get("flagged"));
    const notes = model.get("flag_notes");
    caption.textContent = model.get("caption");

    const headerRow = document.createElement("tr");
    for (const column of columns) {
      const cell = document.createElement("th");
      cell.setAttribute("data-column", column.key);
      cell.setAttribute("scope", "col");
      cell.textContent = column.label;
      if (column.key === sortColumn) {
        cell.classList.add(ascending ? "sorted-asc" : "sorted-desc");
        cell.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      }
      if (column.title) {
        cell.title = column.title;
      }
      cell.addEventListener("click", () => onHeaderClick(column.key));
      headerRow.append(cell);
    }
    head.replaceChildren(headerRow);

    const rowElements = [];
    for (const row of sortedRows(model)) {
      const rowId = String(row[keyField]);
      const line = document.createElement("tr");
      line.setAttribute("data-row", rowId);
      if (rowId === selected) {
        line.classList.add("selected");
      }
      if (flagged.has(rowId)) {
        line.classList.add("flagged");
        if (notes[rowId]) {
          line.title = notes[rowId];
        }
      }
      for (const column of columns) {
        const cell = document.createElement("td");
        cell.setAttribute("data-column", column.key);
        cell.textContent = formatValue(row[column.key], column);
        if (column.kind !== "text") {
          cell.classList.add("numeric");
        }
        line.append(cell);
      }
      line.addEventListener("click", () => onRowClick(rowId));
      rowElements.push(line);
    }
    body.replaceChildren(...rowElements);
  }

  const events = [
    "change:columns", "change:rows", "change:row_key", "change:sort_column",
    "change:sort_ascending", "change:selected", "change:flagged",
    "change:flag_notes", "change:caption",
  ];
  for (const name of events) {
    model.on(name, draw);
  }
  draw();
  return () => {
    for (const name of events) {
      model.off(name, draw);
    }
  };
}

export default { render };
