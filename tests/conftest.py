"""Fixtures: a real sentry-sdk client, a real Segment-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence

import pytest
import sentry_sdk

from sentry_segment_integration.testing import SegmentSink
from support import DSN, RecordingTransport, clear_scopes, current_client, user_details_option


@pytest.fixture
def sink(request: pytest.FixtureRequest) -> Iterator[SegmentSink]:
    with SegmentSink() as server:
        yield server
        record_arrivals(request.node.nodeid, server)


def record_arrivals(test: str, sink: SegmentSink) -> None:
    """With ``PARITY_REPORT=FILE``: one JSON line per test whose receiver got Sentry events, counting what
    Sentry and Segment received (the tests assert parity; this keeps the numbers, for a table)."""
    report = os.environ.get("PARITY_REPORT")
    sentry_ids = sink.sentry_event_ids
    if not report or not sentry_ids:
        return
    segment_ids = [message.get("messageId") for message in sink.messages]
    line = {
        "test": test,
        "sentry": len(set(sentry_ids)),
        "sentry_duplicates": len(sentry_ids) - len(set(sentry_ids)),
        "segment": len(set(segment_ids)),
        "segment_duplicates": len(segment_ids) - len(set(segment_ids)),
        "sentry_not_in_segment": len(set(sentry_ids) - set(segment_ids)),
        "segment_not_in_sentry": len(set(segment_ids) - set(sentry_ids)),
    }
    with open(report, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


@pytest.fixture
def everything_at_debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every logger that could print a secret, at DEBUG, captured."""
    caplog.set_level(logging.DEBUG)
    for name in ("segment", "sentry_segment_integration", "urllib3", "requests", "sentry_sdk", "backoff"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens: Segment refusing connections."""
    return free_port()


@pytest.fixture
def init_sentry(request: pytest.FixtureRequest) -> Iterator[Callable[..., RecordingTransport]]:
    """``init_sentry(integration=..., **sentry_options)``: a real client, events recorded.

    When the test also uses ``sink``, the receiver is set up first, so that it is torn down last (whatever
    order the test names them in): the client's close below then delivers what is still queued to a
    receiver that still answers, and waits on no stopped one.
    """
    if "sink" in request.fixturenames:
        request.getfixturevalue("sink")

    def init(integration: Any = None, extra_integrations: Sequence[Any] = (), **options: Any) -> RecordingTransport:
        transport = RecordingTransport()
        options.setdefault("dsn", DSN)
        options.setdefault("default_integrations", False)
        if "send_default_pii" in options:
            options.update(user_details_option(options.pop("send_default_pii")))
        integrations = [*extra_integrations, *([integration] if integration is not None else [])]
        sentry_sdk.init(transport=transport, integrations=integrations, **options)
        return transport

    yield init
    client = current_client()
    if client is not None:
        client.close(timeout=2)
    clear_scopes()
    sentry_sdk.init()


class RedisServer:
    """A real redis-server on 127.0.0.1 that a test can stop and start again on the same port."""

    def __init__(self, port: int, password: Optional[str] = None) -> None:
        self.port = port
        self.password = password
        self._process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command: List[str] = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        command += ["--appendonly", "no", "--protected-mode", "no", "--enable-debug-command", "local"]
        if self.password:
            command += ["--requirepass", self.password]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """A test that asks for ``redis_server`` starts a redis-server process: it is ``slow``, as every test
    that starts a server or a subprocess is (``-m "not slow"``, the quick loop, leaves it out)."""
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def redis_server() -> Iterator[Callable[..., RedisServer]]:
    """``redis_server(password=None)``: a started server. Skips without redis-server, except in CI."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required in CI (.ci/run installs it)")
        pytest.skip("redis-server is not installed")
    started: List[RedisServer] = []

    def start(password: Optional[str] = None) -> RedisServer:
        server = RedisServer(free_port(), password)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
