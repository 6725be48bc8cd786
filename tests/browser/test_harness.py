"""The browser harness itself: a linked slider and label round trip through the kernel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .notebook_ui import (
    RENDER_TIMEOUT_MS,
    cell_errors,
    open_notebook,
    run_all_cells,
    type_into_readout,
    wait_for_stable_text,
    write_notebook,
)
from .servers import isolated_environment

pytestmark = pytest.mark.browser

SLIDER_NOTEBOOK = [
    "import ipywidgets as widgets",
    """\
slider = widgets.IntSlider(value=3, min=0, max=100, description="n")
slider.add_class("probe-slider")
label = widgets.Label(value=f"square: {slider.value ** 2}")
label.add_class("probe-label")


def show_square(change):
    label.value = f"square: {change['new'] ** 2}"


slider.observe(show_square, names="value")
widgets.VBox([slider, label])""",
]


def test_slider_updates_label(server, notebook_dir, page):
    path = write_notebook(notebook_dir / "slider.ipynb", SLIDER_NOTEBOOK)
    open_notebook(page, server, path)
    run_all_cells(page)

    slider = page.locator(".probe-slider")
    label = page.locator(".probe-label")
    slider.wait_for(timeout=RENDER_TIMEOUT_MS)
    assert wait_for_stable_text(label) == "square: 9", cell_errors(page)

    type_into_readout(slider, "12")
    page.wait_for_function(
        "() => document.querySelector('.probe-label').innerText !== 'square: 9'",
        timeout=RENDER_TIMEOUT_MS,
    )

    assert wait_for_stable_text(label) == "square: 144"
    assert slider.locator(".widget-readout").inner_text() == "12"
    assert page.dialogs == []


def test_isolated_env_finds_widget_extensions(tmp_path):
    env = isolated_environment(tmp_path)
    real_home = Path.home()

    paths = json.loads(
        subprocess.run(
            [sys.executable, "-m", "jupyter", "--paths", "--json"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout
    )
    assert str(tmp_path / "config") in paths["config"]
    assert str(tmp_path / "data") in paths["data"]
    assert paths["runtime"] == [str(tmp_path / "runtime")]
    assert str(Path(sys.prefix) / "share" / "jupyter") in paths["data"]
    assert str(Path(sys.prefix) / "etc" / "jupyter") in paths["config"]
    for path in paths["config"] + paths["data"] + paths["runtime"]:
        assert not Path(path).is_relative_to(real_home), path

    listing = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"],
        env=env, capture_output=True, text=True, check=True,
    )
    output = listing.stdout + listing.stderr
    for extension in ("@jupyter-widgets/jupyterlab-manager", "bqplot", "anywidget"):
        assert extension in output, output
