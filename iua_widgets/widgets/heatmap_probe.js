// Reports which heatmap cell the mouse is over, for a label updated on hover.
// bqplot's HeatMap paints a canvas into one <image>, so its own tooltip has
// no per-cell data. This probe listens on the enclosing .iua-heatmap-view
// box, maps the mouse to a cell from the image's on-screen box and the
// grid shape (row 0 at the top), and syncs "hover_cell" only when the cell
// changes. Python writes the description into "text".
// The figure may hold a second, smaller HeatMap image over the padding
// cells, so the grid is the largest image.

function render({ model, el }) {
  el.classList.add("iua-heatmap-hover-text");
  const output = document.createElement("span");
  el.append(output);
  let last = "";

  function gridBox(view) {
    let largest = null;
    for (const image of view.querySelectorAll(".iua-heatmap image.heatmap")) {
      const box = image.getBoundingClientRect();
      if (!largest || box.width * box.height > largest.width * largest.height) {
        largest = box;
      }
    }
    return largest;
  }

  function cellAt(event) {
    const view = el.closest(".iua-heatmap-view");
    const box = view && gridBox(view);
    if (!box || box.width <= 0 || box.height <= 0) {
      return null;
    }
    const x = (event.clientX - box.left) / box.width;
    const y = (event.clientY - box.top) / box.height;
    if (x < 0 || x >= 1 || y < 0 || y >= 1) {
      return null;
    }
    return [Math.floor(y * model.get("rows")), Math.floor(x * model.get("cols"))];
  }

  function send(cell) {
    const key = cell ? cell.join(",") : "";
    if (key !== last) {
      last = key;
      model.set("hover_cell", cell || []);
      model.save_changes();
    }
  }

  const onMove = (event) => send(cellAt(event));
  const onLeave = () => send(null);
  let view = null;

  // The box inserts this view into the page after render() returns, so look
  // for the enclosing box on later frames (about two seconds at most).
  function attach(triesLeft) {
    view = el.closest(".iua-heatmap-view");
    if (view) {
      view.addEventListener("mousemove", onMove);
      view.addEventListener("mouseleave", onLeave);
    } else if (triesLeft > 0) {
      requestAnimationFrame(() => attach(triesLeft - 1));
    }
  }

  function draw() {
    output.textContent = model.get("text");
  }

  model.on("change:text", draw);
  draw();
  requestAnimationFrame(() => attach(120));
  return () => {
    model.off("change:text", draw);
    if (view) {
      view.removeEventListener("mousemove", onMove);
      view.removeEventListener("mouseleave", onLeave);
    }
  };
}

export default { render };
