"""Fixtures: a real sentry-sdk client, a real Segment-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
from typing import Any, Callable, Iterator, Sequence

import pytest
import sentry_sdk

from sentry_segment_integration.sink import SegmentSink
from support import DSN, RecordingTransport, current_client


@pytest.fixture
def sink() -> Iterator[SegmentSink]:
    with SegmentSink() as server:
        yield server


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens: Segment refusing connections."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def init_sentry() -> Iterator[Callable[..., RecordingTransport]]:
    """``init_sentry(integration=..., **sentry_options)``: a real client, events recorded."""

    def init(integration: Any = None, extra_integrations: Sequence[Any] = (), **options: Any) -> RecordingTransport:
        transport = RecordingTransport()
        options.setdefault("dsn", DSN)
        options.setdefault("default_integrations", False)
        integrations = [*extra_integrations, *([integration] if integration is not None else [])]
        sentry_sdk.init(transport=transport, integrations=integrations, **options)
        return transport

    yield init
    client = current_client()
    if client is not None:
        client.close(timeout=2)
    sentry_sdk.init()
