"""Segment's API misbehaving, for real on 127.0.0.1: capture stays fast, flush stays bounded, the
counters say what happened, and once the fault clears every queued message arrives exactly once."""

from __future__ import annotations

import time
from typing import Any, Dict, List

import pytest
import sentry_sdk

from sentry_segment_integration.testing import SegmentSink
from support import error_as_user, flush_until_failed, make_integration

# Bounds, never speeds: a capture that waited on Segment would take a network timeout at least.
SLACK = 10.0

RETRIED_FAULTS: Dict[str, Dict[str, Any]] = {
    "408": {"status": 408},
    "429": {"status": 429},
    "429-retry-after": {"status": 429, "headers": {"Retry-After": "1"}},
    "500": {"status": 500},
    "503": {"status": 503},
    "503-retry-after": {"status": 503, "headers": {"Retry-After": "1"}},
    "hang-up-mid-request": {"status": 0, "hang_up": True},
    "no-answer-until-timeout": {"status": 0, "hang_up": True, "delay": 3.0},
}


def capture(count: int) -> float:
    started = time.monotonic()
    for n in range(count):
        error_as_user({"id": f"u-{n}"})
    return time.monotonic() - started


# Waiting out a Retry-After of 1 s, or a request's 1 s timeout twice, takes seconds.
SLOW_FAULTS = {"429-retry-after", "503-retry-after", "no-answer-until-timeout"}


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(fault, id=fault, marks=[pytest.mark.slow] if fault in SLOW_FAULTS else [])
        for fault in RETRIED_FAULTS
    ],
)
def test_retried_fault_then_every_message_arrives_once(init_sentry, sink: SegmentSink, fault: str) -> None:
    sink.answer_next(times=2, **RETRIED_FAULTS[fault])
    integration = make_integration(sink, max_retries=5, timeout=1.0)
    sentry = init_sentry(integration)

    assert capture(5) < SLACK / 2
    started = time.monotonic()
    sentry_sdk.flush(timeout=0.5)
    assert time.monotonic() - started < 0.5 + SLACK

    messages = sink.wait_for_messages(5, timeout=60)
    assert sorted(message["messageId"] for message in messages) == sorted(sentry.event_ids)
    assert sink.requests >= 3
    stats = integration.stats()
    assert stats["forwarded"] == 5
    assert stats["delivery_failed"] == 0


@pytest.mark.parametrize("status", [400, 401, 403])
def test_refused_batch_is_not_retried_and_is_counted(init_sentry, sink: SegmentSink, status: int) -> None:
    sink.answer_next(status)
    integration = make_integration(sink, max_retries=5, upload_size=100)
    init_sentry(integration)
    capture(4)
    sentry_sdk.flush(5)
    flush_until_failed(integration, 1)
    sentry_sdk.flush(5)
    refused = integration.stats()["delivery_failed"]
    # The first request carries what was queued when it left; the refused batch is not retried
    # (it would be refused again), and what came later is sent as usual.
    assert refused >= 1
    assert len(sink.messages) == 4 - refused
    assert sink.requests == 1 + len(sink.batches)
    capture(2)
    sentry_sdk.flush(5)
    assert len(sink.wait_for_messages(6 - refused)) == 6 - refused


@pytest.mark.slow
def test_slow_segment_never_slows_capture_and_flush_stays_bounded(init_sentry, sink: SegmentSink) -> None:
    sink.delay_next(3.0, times=1)
    integration = make_integration(sink, timeout=15.0)
    sentry = init_sentry(integration)
    assert capture(10) < SLACK / 2
    started = time.monotonic()
    sentry_sdk.flush(timeout=0.5)
    assert time.monotonic() - started < 0.5 + SLACK
    messages: List[Dict[str, Any]] = sink.wait_for_messages(10, timeout=30)
    assert sorted(message["messageId"] for message in messages) == sorted(sentry.event_ids)
    assert integration.stats()["delivery_failed"] == 0
