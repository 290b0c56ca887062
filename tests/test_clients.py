"""The hook on real clients: re-init, several clients, the Sentry event untouched, failures contained."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Dict, List

import pytest
import sentry_sdk

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.testing import SegmentSink
from support import (
    DSN,
    SDK_MAJOR,
    WRITE_KEY,
    RecordingTransport,
    capture_with_client,
    error_as_user,
    make_integration,
    separate_client,
    wait_until,
)


def test_integration_is_reachable_from_the_client(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    init_sentry(integration)
    if SDK_MAJOR >= 2:
        assert sentry_sdk.get_client().get_integration(SegmentIntegration) is integration
    else:
        assert sentry_sdk.Hub.current.get_integration(SegmentIntegration) is integration


def test_reinit_without_the_integration_turns_forwarding_off(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    init_sentry(integration)
    error_as_user({"id": "before-reinit"})
    sentry_sdk.flush(5)
    sentry = init_sentry(None)
    error_as_user({"id": "after-reinit"})
    sentry_sdk.flush(2)
    assert len(sentry.events) == 1
    assert [message["userId"] for message in sink.messages] == ["before-reinit"]


def test_reinit_with_a_new_integration_forwards_once(init_sentry, sink: SegmentSink) -> None:
    first = make_integration(sink)
    init_sentry(first)
    second = make_integration(sink)
    init_sentry(second)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    assert len(sink.wait_for_messages(1)) == 1
    assert first.stats()["forwarded"] == 0
    assert second.stats()["forwarded"] == 1


def test_same_transport_reused_by_a_client_without_the_integration(sink: SegmentSink) -> None:
    transport = RecordingTransport()
    integration = make_integration(sink)
    sentry_sdk.init(dsn="https://k@o1.ingest.sentry.io/1", transport=transport, integrations=[integration])
    sentry_sdk.init(dsn="https://k@o1.ingest.sentry.io/1", transport=transport, default_integrations=False)
    try:
        error_as_user({"id": "u-1"})
        sentry_sdk.flush(2)
        assert len(transport.events) == 1
        assert sink.messages == []
    finally:
        sentry_sdk.init()


@pytest.mark.skipif(SDK_MAJOR != 2, reason="1.x's function transport takes events only; 3.x has none")
def test_function_transport_forwards_each_event_once(sink: SegmentSink) -> None:
    received: List[Dict[str, Any]] = []
    integration = make_integration(sink)
    sentry_sdk.init(dsn="https://k@o1.ingest.sentry.io/1", transport=received.append, integrations=[integration])
    try:
        error_as_user({"id": "u-1"})
        error_as_user({"id": "u-2"})
        sentry_sdk.flush(5)
        assert len(received) == 2
        assert [message["userId"] for message in sink.wait_for_messages(2)] == ["u-1", "u-2"]
        assert integration.stats()["forwarded"] == 2
    finally:
        sentry_sdk.init()


class EnvelopeToEventTransport(RecordingTransport):
    """A custom transport that hands envelopes on to its own capture_event."""

    def capture_envelope(self, envelope: Any) -> None:
        event = envelope.get_event()
        if event is not None:
            self.capture_event(event)


def test_transport_delegating_between_its_methods_forwards_once(init_sentry, sink: SegmentSink) -> None:
    transport = EnvelopeToEventTransport()
    integration = make_integration(sink)
    sentry_sdk.init(dsn="https://k@o1.ingest.sentry.io/1", transport=transport, integrations=[integration])
    try:
        error_as_user({"id": "u-1"})
        sentry_sdk.flush(5)
        assert len(transport.events) == 1
        assert len(sink.wait_for_messages(1)) == 1
        assert integration.stats()["forwarded"] == 1
    finally:
        sentry_sdk.init()


@pytest.mark.slow
def test_segment_failures_never_become_sentry_events(init_sentry, closed_port: int) -> None:
    integration = SegmentIntegration(
        write_key=WRITE_KEY,
        host=f"http://127.0.0.1:{closed_port}",
        include_messages=True,
        max_retries=1,
        upload_interval=0.05,
    )
    sentry = init_sentry(integration, default_integrations=True)
    error_as_user({"id": "u-1"})
    wait_until(lambda: integration.stats()["delivery_failed"] >= 1, timeout=20)
    time.sleep(1.0)  # room for a Sentry event a failure log would have caused (what must not happen)
    assert integration.stats()["delivery_failed"] == 1
    assert len(sentry.events) == 1
    assert integration.stats()["forwarded"] == 1


def two_clients(dsn_a: str, dsn_b: str, integration: SegmentIntegration) -> List[Any]:
    return [separate_client(dsn, integration) for dsn in (dsn_a, dsn_b)]


def test_two_clients_route_by_their_own_project(sink: SegmentSink) -> None:
    integration = make_integration(sink, projects={7: {"write_key": "project_seven_key"}})
    client_a, client_b = two_clients("https://k@o5.ingest.sentry.io/6", "https://k@o5.ingest.sentry.io/7", integration)
    try:
        capture_with_client(client_a, "user-of-6")
        capture_with_client(client_b, "user-of-7")
        client_a.flush(5)
        client_b.flush(5)
        sink.wait_for_messages(2)
        by_user = {message["userId"]: batch.write_key for batch in sink.batches for message in batch.messages}
        assert by_user == {"user-of-6": WRITE_KEY, "user-of-7": "project_seven_key"}
        assert integration.stats()["forwarded"] == 2
    finally:
        client_a.close(timeout=1)
        client_b.close(timeout=1)


def test_disabled_project_and_enrollment(sink: SegmentSink) -> None:
    integration = make_integration(sink, projects={6: {"enabled": False}, 8: {}}, enroll_new_projects=False)
    clients = [separate_client(f"https://k@o5.ingest.sentry.io/{project}", integration) for project in (6, 7, 8)]
    try:
        for project, client in zip((6, 7, 8), clients):
            capture_with_client(client, f"user-of-{project}")
            client.flush(5)
        assert [message["userId"] for message in sink.wait_for_messages(1)] == ["user-of-8"]
        assert integration.stats()["skipped_disabled"] == 2
    finally:
        for client in clients:
            client.close(timeout=1)


def test_closed_client_forwards_nothing_more(sink: SegmentSink) -> None:
    integration = make_integration(sink)
    [client, _] = two_clients("https://k@o5.ingest.sentry.io/6", "https://k@o5.ingest.sentry.io/7", integration)
    capture_with_client(client, "before-close")
    client.close(timeout=5)
    capture_with_client(client, "after-close")
    _.close(timeout=1)
    assert [message["userId"] for message in sink.messages] == ["before-close"]


def test_sentry_event_is_not_changed_by_the_integration(init_sentry, sink: SegmentSink) -> None:
    seen_by_before_send: List[Dict[str, Any]] = []

    def snapshot(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        seen = copy.deepcopy(event)
        # Sentry itself moves this out of the event into the envelope's headers after before_send.
        seen.get("contexts", {}).get("trace", {}).pop("dynamic_sampling_context", None)
        seen_by_before_send.append(seen)
        return event

    integration = make_integration(sink)
    with_integration = init_sentry(integration, before_send=snapshot, release="r1", environment="e1")
    error_as_user({"id": "u-1", "email": "ada@example.com"})
    sentry_sdk.flush(5)
    without_integration = init_sentry(None, before_send=snapshot, release="r1", environment="e1")
    error_as_user({"id": "u-1", "email": "ada@example.com"})

    assert len(sink.messages) == 1, (integration.stats(), with_integration.events, without_integration.events)
    [sent_with] = with_integration.events
    [sent_without] = without_integration.events
    assert sent_with == seen_by_before_send[0]
    assert sent_without == seen_by_before_send[1]
    assert comparable(sent_with) == comparable(sent_without)


def comparable(event: Dict[str, Any]) -> Dict[str, Any]:
    """The event less what differs between any two captures: ids, times, the SDK's own list."""
    event = copy.deepcopy(event)
    for varying in ("event_id", "timestamp", "sdk", "breadcrumbs"):
        event.pop(varying, None)
    event.get("contexts", {}).pop("trace", None)
    for value in event["exception"]["values"]:
        for frame in value.get("stacktrace", {}).get("frames", []):
            frame.pop("lineno", None)
            frame.pop("context_line", None)
            frame.pop("pre_context", None)
            frame.pop("post_context", None)
            frame.pop("vars", None)
    return event


class ExplodingUser(dict):  # type: ignore[type-arg]
    """A user value whose reading raises: the integration must contain it."""

    def get(self, key: Any, default: Any = None) -> Any:
        raise RuntimeError("this user object cannot be read")


def test_internal_error_is_counted_and_the_event_still_goes_to_sentry(
    init_sentry, sink: SegmentSink, caplog: pytest.LogCaptureFixture
) -> None:
    def odd_user(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        event["user"] = ExplodingUser(id="u-1")
        return event

    integration = make_integration(sink)
    sentry = init_sentry(integration, before_send=odd_user)
    with caplog.at_level(logging.ERROR, logger="sentry_segment_integration"):
        event_id = error_as_user({"id": "u-1"})
    assert sentry.event_ids == [event_id]
    assert integration.stats()["internal_error"] == 1
    assert "internal error" in caplog.text
    assert sink.messages == []


def test_a_transport_assigned_after_init_is_routed_too(sink: SegmentSink) -> None:
    # As sentry-python 1.x's own test fixtures, and many test set-ups, replace a client's transport.
    integration = make_integration(sink)
    client = sentry_sdk.Client(dsn=DSN, integrations=[integration], default_integrations=False)
    try:
        client.transport = recording = RecordingTransport()
        capture_with_client(client, "late-transport")
        client.flush(timeout=5)
        assert len(recording.events) == 1
        arrived = sink.wait_for_messages(1)
        assert [message["messageId"] for message in arrived] == recording.event_ids
        assert integration.stats()["forwarded"] == 1
    finally:
        client.close(timeout=2)
