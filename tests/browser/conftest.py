"""Fixtures that run JupyterLab and Notebook 7 servers and headless Chromium.

Each server listens on a free loopback port with a random token. It runs with
its own ``HOME`` and user-level Jupyter folders (config, data, runtime, lab
settings, workspaces) in a temporary directory, so a test run writes nothing
into the user's home. The data folders of ``sys.prefix`` stay on Jupyter's
search path because the prebuilt widget extensions (ipywidgets, bqplot,
anywidget) live in ``<sys.prefix>/share/jupyter/labextensions``.

The browser is Debian's Chromium (``/usr/bin/chromium``) driven by
playwright-python, with flags that keep it off the network.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import JupyterServer, isolated_environment, start_server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"

# Flags that keep Chromium from calling out to the network (updates, sync,
# field trials, QUIC probes, proxies) and let it run as root in a container.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",
]

VIEWPORT = {"width": 1400, "height": 1000}


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    """Return a running ``jupyter lab`` server, stopped with its kernels at teardown."""
    server = start_server("lab", tmp_path_factory.mktemp("jupyter-lab"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def notebook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    """Return a running ``jupyter notebook`` (Notebook 7) server, stopped at teardown."""
    server = start_server("notebook", tmp_path_factory.mktemp("jupyter-notebook"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Return the path of Debian's Chromium; skip the test when it or playwright is missing.

    With ``IUA_WIDGETS_REQUIRE_BROWSER=1`` (set by CI) a missing browser fails
    the test instead, so a broken install cannot pass as skipped tests.
    """
    if not CHROMIUM.exists():
        message = (
            f"{CHROMIUM} not found: install Debian's Chromium with "
            "`apt-get install chromium` (browser tests never download a browser)"
        )
        if os.environ.get("IUA_WIDGETS_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip(
        "playwright.sync_api",
        reason='playwright-python is missing: pip install "iua-widgets[test]"',
    )
    return CHROMIUM


@pytest.fixture(params=["lab", "notebook"])
def server(request: pytest.FixtureRequest, chromium: Path) -> JupyterServer:
    """Return the JupyterLab server, then the Notebook 7 server (parametrized).

    Depends on ``chromium`` so that a missing browser skips the test before
    any server starts.
    """
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory: pytest.TempPathFactory, chromium: Path):
    """Return a headless Chromium context with a fresh profile and ``HOME``."""
    from playwright import sync_api

    root = tmp_path_factory.mktemp("chromium")
    env = isolated_environment(root)
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(root / "profile"),
            executable_path=str(chromium),
            args=CHROMIUM_ARGS,
            headless=True,
            env=env,
            viewport=VIEWPORT,
        )
        yield context
        context.close()


@pytest.fixture
def page(browser_context, request: pytest.FixtureRequest):
    """Return a new page; at teardown save ``test-artifacts/browser/<test>.png`` and ``.log``.

    The log lists the page's console messages. JavaScript dialogs (``alert``,
    ``confirm``) are dismissed and recorded in ``page.dialogs``, so a test can
    assert that no script injected through a layer name ran.
    """
    page = browser_context.new_page()
    page.set_default_timeout(60_000)
    page.dialogs = []
    console = []

    def record_dialog(dialog) -> None:
        page.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def record_console(message) -> None:
        console.append(f"{message.type}: {message.text}")

    page.on("dialog", record_dialog)
    page.on("console", record_console)
    yield page

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    (ARTIFACTS / f"{name}.log").write_text(
        "\n".join(console + [f"dialog {dialog}" for dialog in page.dialogs]) + "\n"
    )
    try:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    finally:
        page.close()


@pytest.fixture
def notebook_dir(server: JupyterServer, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Return an empty folder inside the server's root for this test's notebooks.

    At teardown the kernels of this test's notebooks are shut down, so a
    streaming thread left running cannot slow down the next test.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    folder = server.root_dir / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    yield folder
    server.shut_down_kernels(under=folder)
