"""Start and stop JupyterLab and Notebook 7 servers for the browser tests."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

App = Literal["lab", "notebook"]

# Seconds to wait for a server to respond after start, and to exit after shutdown.
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0

# Environment variables that point Jupyter at user-level or extra folders, or
# set a token, and so would leak the caller's setup into the test server.
_USER_JUPYTER_VARIABLES = (
    "JUPYTER_PATH",
    "JUPYTER_CONFIG_PATH",
    "JUPYTER_PLATFORM_DIRS",
    "JUPYTER_PREFER_ENV_PATH",
    "JUPYTER_TOKEN",
    "JUPYTER_TOKEN_FILE",
    "JUPYTER_ALLOW_INSECURE_WRITES",
)

# Direct opener: requests go to the loopback server even when a proxy is set.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def isolated_environment(root: Path) -> dict[str, str]:
    """Return an environment whose ``HOME`` and user-level Jupyter folders lie under ``root``.

    System and ``sys.prefix`` folders stay on Jupyter's search paths, so the
    server still finds the installed server extensions and prebuilt lab
    extensions.
    """
    folders = {
        "HOME": root / "home",
        "JUPYTER_CONFIG_DIR": root / "config",
        "JUPYTER_DATA_DIR": root / "data",
        "JUPYTER_RUNTIME_DIR": root / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": root / "settings",
        "JUPYTERLAB_WORKSPACES_DIR": root / "workspaces",
        "IPYTHONDIR": root / "ipython",
        "MPLCONFIGDIR": root / "matplotlib",
        "XDG_CONFIG_HOME": root / "home" / ".config",
        "XDG_CACHE_HOME": root / "home" / ".cache",
        "XDG_DATA_HOME": root / "home" / ".local" / "share",
    }
    env = {key: value for key, value in os.environ.items() if key not in _USER_JUPYTER_VARIABLES}
    for key, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        env[key] = str(folder)

    # JupyterLab shows a toast prompting to fetch news even when the server
    # sets no news URL. Setting "never" in the user settings keeps the toast
    # from covering the notebook and the page from calling out.
    notification = folders["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True, exist_ok=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )

    # The kernel runs the interpreter of this test run, so the package under
    # test and its dependencies are importable in the notebook.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class JupyterServer:
    """A running ``jupyter lab`` or ``jupyter notebook`` server on loopback."""

    app: App
    port: int
    token: str
    root_dir: Path
    log_path: Path
    process: subprocess.Popen

    @property
    def base_url(self) -> str:
        """URL of the server root, without the token."""
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, path: Path) -> str:
        """Return the URL that opens the notebook at ``path`` (inside ``root_dir``) in this app.

        In JupyterLab the notebook opens in a workspace of its own, reset on
        load, so tabs left open by an earlier test are not restored (each
        restored notebook would start another kernel).
        """
        relative = path.relative_to(self.root_dir).as_posix()
        if self.app == "notebook":
            return f"{self.base_url}/notebooks/{relative}?token={self.token}"
        workspace = secrets.token_hex(8)
        return f"{self.base_url}/lab/workspaces/{workspace}/tree/{relative}?reset&token={self.token}"

    def api(self, method: str, route: str, timeout: float = 10.0) -> Any:
        """Call the server's REST API and return the decoded JSON body, or ``None``."""
        request = urllib.request.Request(
            f"{self.base_url}/api/{route}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, characters: int = 4000) -> str:
        """Return the end of the server's log."""
        return self.log_path.read_text(errors="replace")[-characters:]

    def shut_down_kernels(self, under: Path) -> None:
        """Shut down the kernels of all sessions whose notebook lies under the folder ``under``."""
        prefix = under.relative_to(self.root_dir).as_posix() + "/"
        try:
            sessions = self.api("GET", "sessions")
            for session in sessions:
                if session["path"].startswith(prefix):
                    self.api("DELETE", f"sessions/{session['id']}")
        except OSError as error:
            logger.warning("Failed to shut down kernels under %s on port %d: %s", under, self.port, error)

    def stop(self) -> None:
        """Shut the server and its kernels down; kill them if the server does not exit."""
        if self.process.poll() is not None:
            return
        kernel_pids = _child_pids(self.process.pid)
        try:
            self.api("POST", "shutdown")
            self.process.wait(timeout=STOP_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as error:
            logger.warning("Jupyter %s server on port %d did not shut down (%s); killing it", self.app, self.port, error)
            self.process.kill()
            self.process.wait()

        # Kernels run in their own sessions, so kill any that outlived the server.
        for pid in kernel_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _child_pids(parent: int) -> list[int]:
    """Return the ids of the direct child processes of ``parent`` (Linux ``/proc``)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def server_command(app: App, port: int, token: str, root_dir: Path) -> list[str]:
    """Return the command line that starts ``app`` on ``port`` with the given token and root."""
    app_class = "LabApp" if app == "lab" else "JupyterNotebookApp"
    module = "jupyterlab" if app == "lab" else "notebook"
    return [
        sys.executable,
        "-m",
        module,
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.allow_root=True",
        "--ServerApp.terminals_enabled=False",
        f"--IdentityProvider.token={token}",
        # Exposes `window.jupyterapp`, so tests run commands such as
        # "notebook:run-all-cells" instead of clicking through menus.
        f"--{app_class}.expose_app_in_browser=True",
        # Keep JupyterLab (also loaded as an extension by Notebook 7) from
        # fetching news, checking for updates or querying the extension index.
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]


def start_server(app: App, root: Path) -> JupyterServer:
    """Start ``app`` with its home and Jupyter folders under ``root`` and wait until it responds.

    Raises
    ------
    RuntimeError
        If the server exits or does not respond to ``/api/status`` within
        ``START_TIMEOUT`` seconds; the message ends with the server's log.
    """
    env = isolated_environment(root)
    root_dir = root / "notebooks"
    root_dir.mkdir()
    port = free_port()
    token = secrets.token_hex(24)
    log_path = root / "server.log"

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            server_command(app, port, token, root_dir),
            cwd=root_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = JupyterServer(app, port, token, root_dir, log_path, process)
    logger.info("Started jupyter %s (pid %d) on port %d", app, process.pid, port)

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"jupyter {app} exited with code {process.returncode} before responding "
                f"on port {port}. Server log:\n{server.log_tail()}"
            )
        try:
            server.api("GET", "status", timeout=2.0)
            return server
        except OSError:
            time.sleep(0.25)

    server.stop()
    raise RuntimeError(
        f"jupyter {app} did not respond on port {port} within {START_TIMEOUT:.0f} s. "
        f"Server log:\n{server.log_tail()}"
    )
