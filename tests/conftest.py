"""Shared fixtures: the shared audio, the built-in model, and real server processes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cache.registry import fetch
from cache.store import default_cache_dir
from server.app import builtin_model_dir
from tests.support.paths import AUDIO_DIR
from tests.support.server import ServerProcess, start_server


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    if not AUDIO_DIR.is_dir():
        pytest.fail(f"shared audio not found at {AUDIO_DIR}; set STREAMSCRIBE_SHARED")
    return AUDIO_DIR


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return builtin_model_dir()


@pytest.fixture(scope="session")
def speaker_weights() -> Path:
    """The speaker encoder's weights for diarize=true (`--speaker-model`), through the registry."""
    return fetch("resemblyzer-encoder", default_cache_dir()) / "pretrained.pt"


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with custom flags (see `start_server`); every one is stopped at teardown."""
    started: list[ServerProcess] = []

    def factory(*args: str, **kwargs: object) -> ServerProcess:
        kwargs.setdefault("echo", sys.__stderr__)
        handle = start_server(*args, **kwargs)  # type: ignore[arg-type]
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        with contextlib.suppress(Exception):
            handle.stop()


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """One shared server on the built-in tiny.en model for tests that only need a running one."""
    handle = start_server(echo=sys.__stderr__)
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _no_hub_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


KINDS = ("unit", "integration", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test not marked integration or browser is a unit test; none may be two kinds."""
    for item in items:
        kinds = {mark.name for mark in item.iter_markers() if mark.name in KINDS}
        if len(kinds) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(sorted(kinds))}")
        if not kinds:
            item.add_marker(pytest.mark.unit)
