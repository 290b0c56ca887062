"""Sentry as it was without the integration: clients pickle, our uploads are not the application's spans."""

from __future__ import annotations

import contextlib
import json
import pickle
import urllib.error
import urllib.request
from typing import Any, Dict, List

import sentry_sdk
from sentry_sdk.transport import Transport

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.testing import SegmentSink
from support import capture_with_client, error_as_user, make_integration, sentry_dsn_for, start_transaction


class EnvelopeTransport(Transport):
    """Keeps every item Sentry sends, transactions included."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.items: List[Dict[str, Any]] = []

    def capture_envelope(self, envelope: Any) -> None:
        for item in envelope.items:
            payload = item.payload.json
            if isinstance(payload, dict):
                self.items.append({"type": item.headers.get("type"), **payload})

    def capture_event(self, event: Dict[str, Any]) -> None:  # sentry-sdk 1.x
        self.items.append({"type": event.get("type", "event"), **event})

    def flush(self, timeout: float, callback: Any = None) -> None:
        pass

    def kill(self) -> None:
        pass


def spans_inside_the_transaction(items: List[Dict[str, Any]]) -> List[str]:
    """The child spans Sentry received for the one transaction, each as its JSON text: in the
    transaction event (1.x, 2.x), or as span items beside the root span (3.x, spans first)."""
    transactions = [item for item in items if item["type"] == "transaction"]
    if transactions:
        assert len(transactions) == 1
        return [json.dumps(span) for span in transactions[0]["spans"]]
    spans = [span for item in items if item["type"] == "span" for span in item["items"]]
    assert [span["name"] for span in spans if span.get("is_segment")] == ["checkout"]
    return [json.dumps(span) for span in spans if not span.get("is_segment")]


def test_a_client_with_the_integration_pickles_and_the_copy_forwards(sink: SegmentSink) -> None:
    integration = make_integration(sink)
    client = sentry_sdk.Client(dsn=sentry_dsn_for(sink), integrations=[integration], default_integrations=False)
    try:
        copy = pickle.loads(pickle.dumps(client))
    finally:
        client.close(timeout=2)
    try:
        capture_with_client(copy, "pickled-user")
        copy.flush(timeout=5)
        arrived = sink.wait_for_messages(1)
        assert [message["userId"] for message in arrived] == ["pickled-user"]
        assert [message["messageId"] for message in arrived] == sink.wait_for_sentry_events(1)
        restored = copy.get_integration(SegmentIntegration)
        assert restored is not None and restored is not integration
        assert restored.stats()["forwarded"] == 1
    finally:
        copy.close(timeout=2)


def test_segment_uploads_are_no_spans_of_the_transaction_and_carry_no_trace(sink: SegmentSink) -> None:
    # The default integrations on (stdlib, threading): what would trace an HTTP call made from a
    # thread started inside a transaction.
    sentry = EnvelopeTransport()
    sentry_sdk.init(
        dsn=sentry_dsn_for(sink),
        transport=sentry,
        traces_sample_rate=1.0,
        integrations=[make_integration(sink, rate_limit=None)],
    )
    try:
        with start_transaction("checkout", "http.server"):
            event_ids = [error_as_user({"id": f"user-{n}"}) for n in range(3)]
            assert len(sink.wait_for_messages(3)) == 3  # uploaded while the transaction is open
            # The application's own HTTP call: Sentry does record it (so a Segment upload would show).
            with contextlib.suppress(urllib.error.HTTPError):  # the receiver knows no such path: 404
                urllib.request.urlopen(f"{sink.url}/app-call", data=b"{}").close()
        sentry_sdk.flush(5)
    finally:
        sentry_sdk.init()

    assert sorted(message["messageId"] for message in sink.messages) == sorted(map(str, event_ids))
    for batch in sink.batches:
        assert not {"sentry-trace", "baggage", "traceparent"} & {name.lower() for name in batch.headers}
    spans = spans_inside_the_transaction(sentry.items)
    assert [span_text for span_text in spans if "/app-call" in span_text], spans
    assert [span_text for span_text in spans if "/app-call" not in span_text] == [], spans
    breadcrumbs = [item.get("breadcrumbs") for item in sentry.items if item["type"] == "event"]
    assert sink.url not in repr(breadcrumbs)
