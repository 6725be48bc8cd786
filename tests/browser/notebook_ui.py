"""Drive a notebook in JupyterLab or Notebook 7 from playwright: open, run, read widgets."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import nbformat

from .servers import JupyterServer

T = TypeVar("T")

# Seconds allowed for a kernel to start (the first import of numba or torch on
# a busy machine is slow) and for a widget to show up after "Run all".
KERNEL_TIMEOUT_MS = 120_000
RENDER_TIMEOUT_MS = 90_000

# True once the current notebook's kernel is connected and idle. The toolbar's
# `.jp-Notebook-ExecutionIndicator[data-status="idle"]` is not enough: JupyterLab
# 4.6 shows it while the session is still "No Kernel | Initializing".
KERNEL_IDLE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return Boolean(kernel) && kernel.connectionStatus === "connected" && kernel.status === "idle";
}"""


def write_notebook(path: Path, cells: list[str]) -> Path:
    """Write a notebook of code cells at ``path`` that runs on the ``python3`` kernel."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(notebook, path)
    return path


def open_notebook(page, server: JupyterServer, path: Path) -> None:
    """Open the notebook at ``path`` and wait until its kernel is idle."""
    page.goto(server.notebook_url(path))
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=KERNEL_TIMEOUT_MS)
    page.locator(".jp-Notebook").first.wait_for(timeout=KERNEL_TIMEOUT_MS)
    wait_for_idle_kernel(page)


def wait_for_idle_kernel(page) -> None:
    """Wait until the open notebook's kernel is connected and idle."""
    page.wait_for_function(KERNEL_IDLE, timeout=KERNEL_TIMEOUT_MS, polling=200)


def run_all_cells(page) -> None:
    """Run every cell of the open notebook, once its kernel is idle.

    Running before the kernel is idle skips cells, so this waits first. The
    command's promise is not awaited, because it resolves only when every
    cell has finished and ``page.evaluate`` has no timeout.
    """
    wait_for_idle_kernel(page)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


def wait_for_stable(read: Callable[[], T], quiet: float = 1.0, timeout: float = 60.0) -> T:
    """Return ``read()`` once its value has not changed for ``quiet`` seconds.

    A slider drag or a stream of batches sends many kernel round trips, and
    each may redraw a label or a table, so asserting on the first value seen
    is flaky.

    Raises
    ------
    AssertionError
        When the value still changes after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    value = read()
    unchanged_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        current = read()
        if current != value:
            value = current
            unchanged_since = time.monotonic()
        elif time.monotonic() - unchanged_since >= quiet:
            return value
    raise AssertionError(f"value kept changing for {timeout:.0f} s; last value: {value!r}")


def wait_for_stable_text(locator, quiet: float = 1.0, timeout: float = 60.0) -> str:
    """Return the text of ``locator`` once it has not changed for ``quiet`` seconds."""
    return wait_for_stable(locator.inner_text, quiet, timeout)


def wait_until(condition: Callable[[], bool], message: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` every 0.1 s until it is true.

    Raises
    ------
    AssertionError
        With ``message`` when ``condition`` is still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s: {message}")
        time.sleep(0.1)


def type_into_readout(slider, value: str) -> None:
    """Type ``value`` into an ipywidgets slider's readout and press Enter.

    Notebook 7 treats arrow keys on a focused slider handle as notebook
    shortcuts, so typing into the readout is the key input that works in both
    apps.
    """
    readout = slider.locator(".widget-readout")
    readout.click()
    readout.fill(value)
    readout.press("Enter")


def cell_errors(page) -> list[str]:
    """Return the text of every error output in the open notebook."""
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
