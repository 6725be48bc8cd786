// Sortable table for iua_widgets. Plain DOM, no build step.
// Every value from Python is written with textContent or setAttribute, never
// innerHTML, so a layer named "<img src=x onerror=alert(1)>" shows as text.

function isMissing(value) {
  return value === null || value === undefined || (typeof value === "number" && Number.isNaN(value));
}

// Compare two strings by Unicode code point, as Python compares str (plain
// `<` compares UTF-16 code units, which orders characters above U+FFFF
// before U+E000..U+FFFF).
function compareCodePoints(a, b) {
  const pointsA = Array.from(a);
  const pointsB = Array.from(b);
  const shared = Math.min(pointsA.length, pointsB.length);
  for (let i = 0; i < shared; i += 1) {
    const difference = pointsA[i].codePointAt(0) - pointsB[i].codePointAt(0);
    if (difference !== 0) {
      return difference;
    }
  }
  return pointsA.length - pointsB.length;
}

function isDigit(character) {
  return character >= "0" && character <= "9";
}

// Sort group of a run: 0 for text starting below "0", 1 for digits, 2 for
// text starting above "9" (a digit run against a text run compares by first
// character).
function runGroup(run) {
  if (isDigit(run[0])) {
    return 1;
  }
  return run[0] < "0" ? 0 : 2;
}

function compareRuns(a, b) {
  const groupA = runGroup(a);
  const groupB = runGroup(b);
  if (groupA !== groupB) {
    return groupA - groupB;
  }
  if (groupA !== 1) {
    return compareCodePoints(a, b);
  }
  // Digit runs of any length compare by value: drop leading zeros, then the
  // longer number is larger, and equal lengths compare digit by digit.
  const digitsA = a.replace(/^0+/, "");
  const digitsB = b.replace(/^0+/, "");
  if (digitsA.length !== digitsB.length) {
    return digitsA.length - digitsB.length;
  }
  if (digitsA < digitsB) {
    return -1;
  }
  if (digitsA > digitsB) {
    return 1;
  }
  return 0;
}

// Natural order, the same as natural_key in table.py: "layer2" before
// "layer10"; when all runs are equal ("layer01", "layer1") the whole text
// decides by code point.
function compareNatural(a, b) {
  const runsA = a.match(/[0-9]+|[^0-9]+/g) || [];
  const runsB = b.match(/[0-9]+|[^0-9]+/g) || [];
  const shared = Math.min(runsA.length, runsB.length);
  for (let i = 0; i < shared; i += 1) {
    const order = compareRuns(runsA[i], runsB[i]);
    if (order !== 0) {
      return order;
    }
  }
  if (runsA.length !== runsB.length) {
    return runsA.length - runsB.length;
  }
  return compareCodePoints(a, b);
}

// Same order as SortableTable.sorted_rows in table.py: missing values last in
// both directions, numbers by value, text in natural order, ties keep row order.
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
    order = compareNatural(String(a), String(b));
  }
  return ascending ? order : -order;
}

// Numbers show with thousands separators ("1,000,000"), in en-US style
// whatever the browser's locale, as Python's format(n, ",") writes them.
// Rows keep the raw numbers, so sorting is unaffected.
function formatValue(value, column) {
  if (isMissing(value)) {
    return "";
  }
  if (typeof value === "boolean") {
    return value ? "yes" : "";
  }
  if (typeof value === "number" && column.digits !== undefined && column.digits !== null) {
    return value.toLocaleString("en-US", {
      minimumFractionDigits: column.digits,
      maximumFractionDigits: column.digits,
    });
  }
  if (typeof value === "number" && column.kind === "int") {
    return value.toLocaleString("en-US", { maximumFractionDigits: 0 });
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

// The named exports let tests run the sort order and the formatting outside a browser.
export { compareNatural, compareValues, formatValue };
export default { render };
