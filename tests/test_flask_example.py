"""The Flask example shop (examples/flask_app), configured from the environment as its users run it.

Sentry's real HTTP transport and the Segment library both post to one receiver on 127.0.0.1, so the
test sees what Sentry received and what Segment received, and can compare them.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Callable, Iterator

import pytest

pytest.importorskip("flask")

import sentry_sdk
from flask import Flask

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.testing import SegmentSink
from support import SDK_MAJOR, as_at_application_start, close_and_reset_sentry, current_client

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WRITE_KEY = "flask_shop_write_key"
USER_AGENT = "Mozilla/5.0 (flask example test)"


@pytest.fixture
def create_shop(sink: SegmentSink, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Flask]]:
    """The example's ``create_app``, with the environment a deployment pointed at ``sink`` would have."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("SENTRY_DSN", f"http://public@127.0.0.1:{sink.port}/42")
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRITE_KEY)
    monkeypatch.setenv("SEGMENT_HOST", sink.url)
    monkeypatch.setenv("SENTRY_ENVIRONMENT", "staging")
    monkeypatch.setenv("SENTRY_RELEASE", "flask-shop@2.0.1")
    module = importlib.import_module("flask_app.app")
    with as_at_application_start():
        yield module.create_app
        close_and_reset_sentry()


def segment_integration() -> SegmentIntegration:
    integration = current_client().get_integration(SegmentIntegration)
    assert isinstance(integration, SegmentIntegration)
    return integration


def test_signed_in_users_checkout_error_arrives_in_segment_as_the_event_sentry_received(
    create_shop: Callable[[], Flask], sink: SegmentSink
) -> None:
    browser = create_shop().test_client()
    assert browser.get("/login/1001").status_code == 302
    assert "Hello, ada@example.com." in browser.get("/").get_data(as_text=True)
    paid = browser.post("/checkout", data={"installments": "3"})
    assert (paid.status_code, paid.get_data(as_text=True)) == (200, "Charged 3 x 2433 cents.\n")

    failed = browser.post("/checkout?coupon=SPRING", headers={"User-Agent": USER_AGENT, "Referer": "http://localhost/"})
    assert failed.status_code == 500
    sentry_sdk.flush(5)

    [message] = sink.wait_for_messages(1)
    [batch] = sink.batches
    assert batch.write_key == WRITE_KEY
    assert message["type"] == "track"
    assert message["event"] == "Error Captured"
    assert message["userId"] == "1001"  # set_user({"id": 1001, ...}) in the app's before_request
    assert sink.sentry_event_ids == [message["messageId"]]  # the one error, and nothing for the paid checkout
    properties = message["properties"]
    assert properties["eventId"] == message["messageId"]
    assert properties["exceptionType"] == "PaymentError"  # raised from a ZeroDivisionError: the one raised
    # The view's name (its URL rule on 3.x, whose Flask integration names transactions so).
    assert properties["transaction"] == ("checkout" if SDK_MAJOR < 3 else "/checkout")
    assert properties["level"] == "error"
    assert (properties["environment"], properties["release"]) == ("staging", "flask-shop@2.0.1")
    assert properties["userAgent"] == USER_AGENT
    assert properties["page"] == {
        "url": "http://localhost/checkout",
        "method": "POST",
        "search": "coupon=SPRING",
        "referer": "http://localhost/",
    }
    assert message["context"]["page"]["path"] == "/checkout"
    assert message["context"]["ip"] == "127.0.0.1"
    assert "ada@example.com" not in json.dumps(message)  # the email went to Sentry only
    assert segment_integration().stats()["forwarded"] == 1


def test_guest_checkout_error_reaches_sentry_but_not_segment(
    create_shop: Callable[[], Flask], sink: SegmentSink
) -> None:
    app = create_shop()
    browser = app.test_client()
    assert browser.post("/checkout").status_code == 500
    signed_out = app.test_client()
    signed_out.get("/login/1002")
    assert signed_out.get("/logout").status_code == 302
    assert signed_out.post("/checkout").status_code == 500
    sentry_sdk.flush(5)

    assert len(sink.sentry_event_ids) == 2
    assert sink.messages == []
    stats = segment_integration().stats()
    assert (stats["skipped_no_user"], stats["forwarded"]) == (2, 0)


def test_users_stay_in_their_own_requests(create_shop: Callable[[], Flask], sink: SegmentSink) -> None:
    app = create_shop()
    ada, guest, grace = app.test_client(), app.test_client(), app.test_client()
    ada.get("/login/1001")
    grace.get("/login/1002")
    for browser in (ada, guest, grace, guest):
        assert browser.post("/checkout").status_code == 500
    sentry_sdk.flush(5)

    messages = sink.wait_for_messages(2)
    assert [message["userId"] for message in messages] == ["1001", "1002"]
    assert len(sink.sentry_event_ids) == 4
    assert {message["messageId"] for message in messages} <= set(sink.sentry_event_ids)
    assert segment_integration().stats()["skipped_no_user"] == 2
