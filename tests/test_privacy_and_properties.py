"""Privacy switches (send_ip, send_query_string) and the properties hook, through a real client."""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping

import pytest
import sentry_sdk
from flask import Flask, request
from sentry_sdk.integrations.flask import FlaskIntegration

from sentry_segment_integration.testing import SegmentSink
from support import error_as_user, make_integration, new_scope


@pytest.mark.parametrize(
    ("send_ip", "send_default_pii", "ip_sent"),
    [(None, True, True), (None, False, False), (True, False, True), (False, True, False)],
    ids=["follows-pii-on", "follows-pii-off", "forced-on", "forced-off"],
)
def test_send_ip(init_sentry, sink: SegmentSink, send_ip: Any, send_default_pii: bool, ip_sent: bool) -> None:
    def keep_ip(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        # Whatever sentry-sdk does with IPs without send_default_pii, the event Sentry sends has one.
        event["user"]["ip_address"] = "203.0.113.7"
        return event

    integration = make_integration(sink, send_ip=send_ip)
    sentry = init_sentry(integration, send_default_pii=send_default_pii, before_send=keep_ip)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    [message] = sink.wait_for_messages(1)
    assert sentry.events[0]["user"]["ip_address"] == "203.0.113.7"
    assert message["context"].get("ip") == ("203.0.113.7" if ip_sent else None)


def app_with_query() -> Flask:
    app = Flask("queries")

    @app.route("/search")
    def search() -> str:
        sentry_sdk.set_user({"id": "u-7"})
        raise KeyError(request.args["q"])

    return app


@pytest.mark.parametrize("send_query_string", [True, False])
def test_send_query_string(init_sentry, sink: SegmentSink, send_query_string: bool) -> None:
    integration = make_integration(sink, send_query_string=send_query_string)
    init_sentry(integration, extra_integrations=[FlaskIntegration()])
    referer = "http://localhost/home?token=abc123#top"
    response = app_with_query().test_client().get("/search?q=secret+term", headers={"Referer": referer})
    assert response.status_code == 500
    sentry_sdk.flush(5)
    [message] = sink.wait_for_messages(1)
    page, context_page = message["properties"]["page"], message["context"]["page"]
    assert page["url"] == context_page["url"] == "http://localhost/search"
    if send_query_string:
        assert page["search"] == context_page["search"] == "q=secret+term"
        assert page["referer"] == context_page["referrer"] == referer
    else:
        assert page["search"] == context_page["search"] == ""
        assert page["referer"] == context_page["referrer"] == "http://localhost/home"
        assert "secret" not in str(message) and "abc123" not in str(message)


class CheckoutFailed(Exception):
    def __init__(self, plan: str) -> None:
        super().__init__(f"checkout failed on plan {plan}")
        self.plan = plan


def test_properties_hook_adds_properties_from_event_and_hint(init_sentry, sink: SegmentSink) -> None:
    def extra(event: Mapping[str, Any], hint: Mapping[str, Any]) -> Dict[str, Any]:
        error = hint["exc_info"][1]
        return {
            "plan": error.plan,
            "message": str(error),
            "tags": event.get("tags", {}),
            "environment": "cannot-replace-a-standard-field",
            "when": object(),
        }

    integration = make_integration(sink, properties=extra)
    init_sentry(integration, environment="production")
    with new_scope() as scope:
        scope.set_tag("region", "eu")
        scope.set_user({"id": "u-1"})
        try:
            raise CheckoutFailed("pro")
        except CheckoutFailed:
            sentry_sdk.capture_exception()
    sentry_sdk.flush(5)
    [message] = sink.wait_for_messages(1)
    properties = message["properties"]
    assert properties["plan"] == "pro"
    assert properties["message"] == "checkout failed on plan pro"
    assert properties["tags"] == {"region": "eu"}
    assert properties["environment"] == "production"
    assert properties["exceptionType"] == "CheckoutFailed"
    assert properties["when"].startswith("<object object at")  # not JSON: sent as its string
    assert integration.stats()["internal_error"] == 0


@pytest.mark.parametrize("broken", ["raises", "not-a-dict"])
def test_failing_properties_hook_is_counted_and_the_message_still_goes(
    init_sentry, sink: SegmentSink, broken: str
) -> None:
    def hook(event: Mapping[str, Any], hint: Mapping[str, Any]) -> Any:
        if broken == "raises":
            raise RuntimeError("hook bug")
        return ["not", "a", "dict"]

    integration = make_integration(sink, properties=hook)
    sentry = init_sentry(integration)
    event_id = error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    [message] = sink.wait_for_messages(1)
    assert sentry.event_ids == [event_id]
    assert message["messageId"] == event_id
    standard = {"environment", "eventId", "exceptionType", "release", "transaction", "level"}
    assert set(message["properties"]) == standard | {"traceId", "spanId"}
    assert integration.stats()["internal_error"] == 1
    assert integration.stats()["forwarded"] == 1


def test_huge_hook_properties_are_cut_to_fit(init_sentry, sink: SegmentSink) -> None:
    def long_strings(event: Mapping[str, Any], hint: Mapping[str, Any]) -> Dict[str, Any]:
        return {"blob": "x" * 100_000, "nested": {"deeper": {"deepest": "y" * 50_000}}}

    integration = make_integration(sink, properties=long_strings)
    init_sentry(integration)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    [message] = sink.wait_for_messages(1)
    properties = message["properties"]
    assert len(json.dumps(message).encode()) < 32 * 1024
    assert properties["exceptionType"] == "RuntimeError"
    assert properties["blob"].startswith("xxxx")
    assert properties["nested"]["deeper"]["deepest"].startswith("yyyy")


def test_hook_properties_that_cannot_be_cut_are_left_out(init_sentry, sink: SegmentSink) -> None:
    def huge(event: Mapping[str, Any], hint: Mapping[str, Any]) -> Dict[str, Any]:
        return {"blob": "x" * 100_000, "nested": {"deeper": {"deepest": "y" * 50_000}}, "listed": ["z" * 40_000]}

    integration = make_integration(sink, properties=huge)
    init_sentry(integration)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    [message] = sink.wait_for_messages(1)
    assert len(json.dumps(message).encode()) < 32 * 1024
    properties = message["properties"]
    assert properties["exceptionType"] == "RuntimeError"
    assert "listed" not in properties  # long strings inside a list cannot be cut: the extras are left out
    assert "blob" not in properties
