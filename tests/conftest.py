"""Shared fixtures: fresh apps on temporary plugin folders, and real uvicorn servers on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ports import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # helpers such as eventdata.py, motoserver.py


@pytest.fixture(autouse=True)
def _close_moto_clients() -> Iterator[None]:
    """boto3 clients a test made against moto are closed when it ends, not whenever they are collected."""
    yield
    if "motoserver" in sys.modules:
        sys.modules["motoserver"].close_clients()


def pytest_configure(config: pytest.Config) -> None:
    """One copy of the bundled plugins for the run, without a user's additions to plugins/ (tests/bundled.py)."""
    import tempfile

    from bundled import ENV, copy_bundled

    if os.environ.get(ENV) is None:
        folder = Path(tempfile.mkdtemp(prefix="dpmsf-bundled-"))
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
        os.environ[ENV] = str(copy_bundled(ROOT, folder))
        config.add_cleanup(lambda: os.environ.pop(ENV, None))


@pytest.fixture(scope="session", autouse=True)
def _bundled_is_the_copy() -> Iterator[None]:
    """``DPMSF_PLUGINS=.`` (the default) means the bundled plugins: in this process, the run's copy of them."""
    from bundled import bundled

    import dpmsf_core.app
    import dpmsf_core.config

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dpmsf_core.config, "BUNDLED_PLUGINS", str(bundled()))
        mp.setattr(dpmsf_core.app, "BUNDLED_PLUGINS", str(bundled()))
        yield


class PluginDir:
    """A temporary plugin folder that tests write modules into."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, name: str, source: str) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(textwrap.dedent(source), encoding="utf-8")
        tmp.replace(target)
        return target

    def remove(self, name: str) -> None:
        (self.path / name).unlink()


@pytest.fixture
def plugin_dir(tmp_path: Path) -> PluginDir:
    folder = tmp_path / "plugins"
    folder.mkdir()
    return PluginDir(folder)


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., Any]:
    """``make_app(folder_or_folders, **env)``: an app built from an explicit environment, never os.environ."""
    from dpmsf_core.app import create_app
    from dpmsf_core.config import Settings

    apps: list[Any] = []

    def build(*folders: Path | str, env: dict[str, str] | None = None, **overrides: Any) -> Any:
        environ = {"DPMSF_STATE_DIR": str(tmp_path / "state")}
        if folders:
            environ["DPMSF_PLUGINS"] = ":".join(str(f) for f in folders)
        environ.update(env or {})
        app = create_app(Settings.from_env(environ, dotenv=None), **overrides)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.close()


class LiveServer:
    """uvicorn serving an app in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def serve() -> Iterator[Callable[[Any], httpx.Client]]:
    """``client = serve(app)``: a real server for ``app`` and an httpx client pointed at it."""
    stack: list[tuple[LiveServer, httpx.Client]] = []

    def start(app: Any) -> httpx.Client:
        server = LiveServer(app).__enter__()
        client = httpx.Client(base_url=server.url, timeout=10)
        stack.append((server, client))
        return client

    yield start
    for server, client in stack:
        client.close()
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def bundled_client() -> Iterator[httpx.Client]:
    """One real server on the bundled plugins for the whole module (the README's examples)."""
    from bundled import bundled

    from dpmsf_core.app import create_app
    from dpmsf_core.config import Settings

    app = create_app(Settings.from_env({"DPMSF_PLUGINS": str(bundled())}, dotenv=None))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client
    app.close()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """One real moto server on 127.0.0.1 for the run, so AWS calls go over HTTP as they do on AWS."""
    from motoserver import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a region; never a real profile."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def dynamodb(moto_url: str, aws_env: None) -> Any:
    import boto3

    return boto3.client("dynamodb", endpoint_url=moto_url)
