"""Which events are forwarded, and the exact Segment message, end to end through a real client."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List

import pytest
import sentry_sdk
from flask import Flask, request
from sentry_sdk.integrations.flask import FlaskIntegration

import sentry_segment_integration
from sentry_segment_integration.testing import SegmentSink
from support import SDK_MAJOR, WRITE_KEY, error_as_user, make_integration, new_scope, start_transaction


def utc_millis(sentry_timestamp: Any) -> str:
    if isinstance(sentry_timestamp, datetime):
        moment = sentry_timestamp
    else:
        moment = datetime.strptime(sentry_timestamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def shop_app() -> Flask:
    app = Flask("shop")

    @app.before_request
    def sign_in() -> None:
        user_id = request.headers.get("X-User-Id")
        if user_id:
            sentry_sdk.set_user({"id": user_id, "email": f"{user_id}@example.com"})

    @app.route("/checkout/<int:cart_id>", methods=["POST"])
    def checkout(cart_id: int) -> str:
        raise ZeroDivisionError(f"cart {cart_id} has no items")

    @app.route("/health")
    def health() -> str:
        return "ok"

    return app


def test_flask_request_error_arrives_as_the_exact_segment_message(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    sentry = init_sentry(
        integration,
        extra_integrations=[FlaskIntegration()],
        release="shop@1.2.3",
        environment="production",
        send_default_pii=True,
    )
    client = shop_app().test_client()

    response = client.post(
        "/checkout/7?coupon=SPRING&step=2",
        headers={
            "X-User-Id": "u-1001",
            "User-Agent": "Mozilla/5.0 (shop test)",
            "Referer": "http://localhost/cart?from=banner",
        },
    )
    assert response.status_code == 500
    sentry_sdk.flush(5)

    [event] = sentry.events
    [batch] = sink.batches
    assert batch.write_key == WRITE_KEY
    [message] = batch.messages
    page_url = "http://localhost/checkout/7"
    assert message == {
        "type": "track",
        "event": "Error Captured",
        "userId": "u-1001",
        "messageId": event["event_id"],
        "timestamp": utc_millis(event["timestamp"]),
        "properties": {
            "environment": "production",
            "eventId": event["event_id"],
            "exceptionType": "ZeroDivisionError",
            "release": "shop@1.2.3",
            "transaction": event["transaction"],
            "traceId": event["contexts"]["trace"]["trace_id"],
            "spanId": event["contexts"]["trace"]["span_id"],
            "level": "error",
            "userAgent": "Mozilla/5.0 (shop test)",
            "page": {
                "url": page_url,
                "method": "POST",
                "search": "coupon=SPRING&step=2",
                "referer": "http://localhost/cart?from=banner",
            },
        },
        "context": {
            "library": {"name": "sentry-segment-integration", "version": sentry_segment_integration.__version__},
            "userAgent": "Mozilla/5.0 (shop test)",
            "page": {
                "url": page_url,
                "path": "/checkout/7",
                "search": "coupon=SPRING&step=2",
                "referrer": "http://localhost/cart?from=banner",
            },
            "ip": "127.0.0.1",
        },
    }
    # The view's name (the URL rule on 3.x, whose Flask integration names transactions so).
    assert event["transaction"] == ("checkout" if SDK_MAJOR < 3 else "/checkout/<int:cart_id>")
    assert integration.stats()["forwarded"] == 1


def test_flask_anonymous_error_is_not_forwarded(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    sentry = init_sentry(integration, extra_integrations=[FlaskIntegration()])
    assert shop_app().test_client().post("/checkout/3").status_code == 500
    assert shop_app().test_client().get("/health").status_code == 200
    sentry_sdk.flush(2)
    assert len(sentry.events) == 1
    assert sink.messages == []
    assert integration.stats()["skipped_no_user"] == 1


@pytest.mark.parametrize(
    "user",
    [None, {}, {"email": "ada@example.com"}, {"username": "ada", "ip_address": "10.0.0.1"}, {"id": ""}, {"id": None}],
    ids=["no-user", "empty-user", "email-only", "username-and-ip", "empty-id", "null-id"],
)
def test_errors_without_a_user_id_are_skipped(init_sentry, sink: SegmentSink, user: Any) -> None:
    integration = make_integration(sink)
    sentry = init_sentry(integration)
    error_as_user(user)
    sentry_sdk.flush(2)
    assert len(sentry.events) == 1
    assert sink.messages == []
    assert integration.stats()["skipped_no_user"] == 1
    assert integration.stats()["forwarded"] == 0


def test_every_skip_is_logged_at_debug_with_its_reason_and_event_id(
    init_sentry, sink: SegmentSink, caplog: pytest.LogCaptureFixture
) -> None:
    integration = make_integration(sink)
    init_sentry(integration)
    caplog.set_level("DEBUG", logger="sentry_segment_integration")
    anonymous = error_as_user(None)
    with new_scope() as scope:
        scope.set_user({"id": "u-1"})
        message = sentry_sdk.capture_message("just a message")
    lines = [record.getMessage() for record in caplog.records if "not forwarded" in record.getMessage()]
    assert lines == [
        f"event {anonymous} not forwarded to Segment: it has no user id",
        f"event {message} not forwarded to Segment: it is not an error event",
    ]


def test_integer_user_id_is_sent_as_a_string(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    init_sentry(integration)
    error_as_user({"id": 4242})
    sentry_sdk.flush(5)
    [message] = sink.messages
    assert message["userId"] == "4242"


def test_message_events_are_skipped_unless_include_messages(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    sentry = init_sentry(integration)
    with new_scope() as scope:
        scope.set_user({"id": "u-1"})
        sentry_sdk.capture_message("payment provider slow")
    sentry_sdk.flush(2)
    assert len(sentry.events) == 1
    assert sink.messages == []
    assert integration.stats()["skipped_not_error"] == 1


def test_message_events_are_forwarded_with_include_messages(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, include_messages=True)
    sentry = init_sentry(integration)
    with new_scope() as scope:
        scope.set_user({"id": "u-1"})
        sentry_sdk.capture_message("payment provider slow", level="warning")
    sentry_sdk.flush(5)
    [message] = sink.messages
    assert message["messageId"] == sentry.events[0]["event_id"]
    assert message["properties"]["exceptionType"] == ""
    assert message["properties"]["level"] == "warning"


def test_transactions_are_never_forwarded(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    init_sentry(integration, traces_sample_rate=1.0)
    with new_scope() as scope:
        scope.set_user({"id": "u-1"})
        with start_transaction("checkout", "http.server"):
            pass
    sentry_sdk.flush(2)
    assert sink.messages == []
    assert integration.stats()["forwarded"] == 0


def test_events_with_a_type_are_never_forwarded(init_sentry, sink: SegmentSink) -> None:
    def mark_as_other_type(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        event["type"] = "feedback"
        return event

    integration = make_integration(sink)
    sentry = init_sentry(integration, before_send=mark_as_other_type)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(2)
    assert len(sentry.events) == 1
    assert sink.messages == []
    assert integration.stats()["skipped_not_error"] == 1


def test_event_dropped_by_before_send_is_not_forwarded(init_sentry, sink: SegmentSink) -> None:
    def drop_checkout_errors(event: Dict[str, Any], hint: Any) -> Any:
        return None if "checkout" in str(hint.get("exc_info")) else event

    integration = make_integration(sink)
    sentry = init_sentry(integration, before_send=drop_checkout_errors)
    error_as_user({"id": "u-1"}, RuntimeError("checkout failed"))
    kept = error_as_user({"id": "u-2"}, RuntimeError("search failed"))
    sentry_sdk.flush(5)
    assert sentry.event_ids == [kept]
    assert [message["messageId"] for message in sink.messages] == [kept]


def test_event_edited_by_before_send_is_forwarded_as_edited(init_sentry, sink: SegmentSink) -> None:
    def scrub(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        event["user"] = {"id": "pseudonym-17"}
        event["environment"] = "scrubbed-env"
        event["request"] = {"url": "https://shop.example/[scrubbed]", "method": "GET", "headers": {}}
        return event

    integration = make_integration(sink)
    sentry = init_sentry(integration, environment="production", before_send=scrub)
    error_as_user({"id": "real-user-id", "email": "ada@example.com"})
    sentry_sdk.flush(5)
    [message] = sink.messages
    assert message["userId"] == "pseudonym-17"
    assert message["properties"]["environment"] == "scrubbed-env"
    assert message["properties"]["page"]["url"] == "https://shop.example/[scrubbed]"
    assert "real-user-id" not in json.dumps(message)
    assert "ada@example.com" not in json.dumps(message)
    assert sentry.events[0]["user"] == {"id": "pseudonym-17"}


def test_sample_rate_zero_forwards_nothing(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    sentry = init_sentry(integration, sample_rate=0.0)
    for _ in range(20):
        error_as_user({"id": "u-1"})
    sentry_sdk.flush(2)
    assert sentry.events == []
    assert sink.messages == []
    assert integration.stats()["forwarded"] == 0


@pytest.mark.slow
def test_sampled_errors_forwarded_are_exactly_those_sent(init_sentry, sink: SegmentSink) -> None:
    random.seed(20261126)
    integration = make_integration(sink)
    sentry = init_sentry(integration, sample_rate=0.5)
    captured = [error_as_user({"id": f"u-{n}"}) for n in range(200)]
    sentry_sdk.flush(10)
    sent = sentry.event_ids
    assert 0 < len(sent) < len(captured)
    messages = sink.wait_for_messages(len(sent))
    assert sorted(message["messageId"] for message in messages) == sorted(sent)
    assert integration.stats()["forwarded"] == len(sent)


class PaymentDeclined(Exception):
    pass


def test_chained_exception_reports_the_raised_type(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    sentry = init_sentry(integration)
    with new_scope() as scope:
        scope.set_user({"id": "u-9"})
        try:
            try:
                raise KeyError("card")
            except KeyError as root_cause:
                raise PaymentDeclined("declined") from root_cause
        except PaymentDeclined:
            sentry_sdk.capture_exception()
    sentry_sdk.flush(5)
    types = [value["type"] for value in sentry.events[0]["exception"]["values"]]
    assert types == ["KeyError", "PaymentDeclined"]
    [message] = sink.messages
    assert message["properties"]["exceptionType"] == "PaymentDeclined"


def test_timestamp_is_the_events_own_in_utc(init_sentry, sink: SegmentSink) -> None:
    def backdate(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        event["timestamp"] = "2024-02-29T23:59:58.123456+02:00"
        return event

    integration = make_integration(sink)
    init_sentry(integration, before_send=backdate)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    [message] = sink.messages
    assert message["timestamp"] == "2024-02-29T21:59:58.123+00:00"


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2024-02-29T23:59:58.123456Z", "2024-02-29T23:59:58.123+00:00"),  # sentry-sdk's own format
        ("2024-02-29T23:59:58.999999Z", "2024-02-29T23:59:58.999+00:00"),  # cut, never rounded
        ("2024-02-29T23:59:58.1Z", "2024-02-29T23:59:58.100+00:00"),
        ("2023-02-29T23:59:58.123456Z", None),  # no such day: the time it was sent instead
        ("2024-02-29T24:59:58.123456Z", None),
    ],
)
def test_sentry_utc_timestamps_are_taken_as_written_when_they_exist(
    init_sentry, sink: SegmentSink, written: str, expected: Any
) -> None:
    def stamp(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        event["timestamp"] = written
        return event

    init_sentry(make_integration(sink), before_send=stamp)
    before = datetime.now(timezone.utc)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    [message] = sink.messages
    if expected is not None:
        assert message["timestamp"] == expected
    else:
        sent_at = datetime.fromisoformat(message["timestamp"])
        assert before - timedelta(seconds=1) <= sent_at <= datetime.now(timezone.utc)


def odd_shapes(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
    event["release"] = 20261126
    event["environment"] = {"name": "prod"}
    event["level"] = None
    event["transaction"] = ["not", "a", "string"]
    event["timestamp"] = "yesterday, roughly"
    event["exception"]["values"][-1].pop("type", None)
    event["request"] = {
        "url": 12345,
        "method": b"POST",
        "query_string": [["page", "2"], ["sort", "price"]],
        "headers": [["user-agent", "Odd/1.0"], ["REFERER", "http://ref.example/"], ["broken"], 7],
    }
    event["user"] = {"id": 7.5, "ip_address": ["not", "an", "ip"]}
    return event


def test_odd_shapes_are_stringified_or_left_out(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    sentry = init_sentry(integration, before_send=odd_shapes)
    before = datetime.now(timezone.utc)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    assert len(sentry.events) == 1
    [message] = sink.messages
    properties = message["properties"]
    assert message["userId"] == "7.5"
    assert properties["release"] == "20261126"
    assert json.loads(properties["environment"]) == {"name": "prod"}
    assert properties["level"] == ""
    assert json.loads(properties["transaction"]) == ["not", "a", "string"]
    assert properties["exceptionType"] == ""
    assert properties["userAgent"] == "Odd/1.0"
    assert properties["page"] == {
        "url": "12345",
        "method": "b'POST'",
        "search": "page=2&sort=price",
        "referer": "http://ref.example/",
    }
    sent_at = datetime.fromisoformat(message["timestamp"])
    assert sent_at >= before.replace(microsecond=(before.microsecond // 1000) * 1000)
    assert integration.stats()["internal_error"] == 0


def test_huge_fields_are_truncated_to_fit_segments_limit(init_sentry, sink: SegmentSink) -> None:
    def huge(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        event["request"] = {
            "url": "https://shop.example/" + "p" * 100_000,
            "method": "GET",
            "query_string": "q=" + "\u00e9" * 50_000,
            "headers": {"User-Agent": "\U0001f600" * 30_000, "Referer": "r" * 70_000},
        }
        event["release"] = "\x01" * 40_000
        return event

    integration = make_integration(sink)
    sentry = init_sentry(integration, before_send=huge)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    assert len(sentry.events) == 1
    [message] = sink.messages
    assert len(json.dumps(message).encode()) < 32 * 1024
    assert message["properties"]["page"]["url"].startswith("https://shop.example/ppp")
    assert message["properties"]["userAgent"].startswith("\U0001f600")
    assert message["messageId"] == sentry.events[0]["event_id"]


def test_one_message_per_sent_error_with_matching_ids(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    sentry = init_sentry(integration)
    users: List[str] = [f"user-{n}" for n in range(25)]
    for user in users:
        error_as_user({"id": user})
    sentry_sdk.flush(5)
    messages = sink.wait_for_messages(len(users))
    assert [message["messageId"] for message in messages] == sentry.event_ids
    assert [message["userId"] for message in messages] == users
