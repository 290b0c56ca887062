"""The write key, and credentials in URLs, never in logs (at DEBUG, every logger), repr, errors or stats."""

from __future__ import annotations

import logging

import pytest
import sentry_sdk

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.sink import SegmentSink
from support import error_as_user

SECRET_KEY = "wk_secret_do_not_log_4f9a8b7c"
PROXY_PASSWORD = "proxy-pass-do-not-log"


@pytest.fixture
def everything_at_debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("segment", "sentry_segment_integration", "urllib3", "requests", "sentry_sdk", "backoff"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def all_logged_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(name)s %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records)


def test_write_key_never_logged_even_at_debug(init_sentry, sink: SegmentSink, everything_at_debug) -> None:
    sink.answer_next(401)
    sink.answer_next(500)
    integration = SegmentIntegration(write_key=SECRET_KEY, host=sink.url, upload_size=1, upload_interval=0.05)
    init_sentry(integration, debug=True)
    for n in range(4):
        error_as_user({"id": f"u-{n}"})
    sentry_sdk.flush(10)
    sink.wait_for_messages(3)

    logged = all_logged_text(everything_at_debug)
    assert "making request" in logged  # the Segment library did log its request bodies
    assert SECRET_KEY not in logged
    assert SECRET_KEY not in repr(integration)
    assert SECRET_KEY not in str(integration.stats())
    assert {batch.write_key for batch in sink.batches} == {SECRET_KEY}


def test_credentials_in_host_never_logged(init_sentry, sink: SegmentSink, everything_at_debug) -> None:
    host = sink.url.replace("http://", f"http://proxyuser:{PROXY_PASSWORD}@")
    integration = SegmentIntegration(write_key=SECRET_KEY, host=host, max_retries=0, upload_interval=0.05)
    init_sentry(integration)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    logged = all_logged_text(everything_at_debug)
    assert PROXY_PASSWORD not in logged
    assert SECRET_KEY not in logged
    assert PROXY_PASSWORD not in repr(integration)
