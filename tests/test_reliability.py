"""Sustained faults: a full queue that recovers, pre-forking servers, and every option fuzzed."""

from __future__ import annotations

import os
import resource
import warnings
from typing import Any, Dict, List

import pytest
import sentry_sdk
from hypothesis import given, settings
from hypothesis import strategies as st

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.testing import SegmentSink
from support import DSN, RecordingTransport, error_as_user, make_integration, wait_until


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.slow
def test_sustained_burst_into_a_full_queue_is_counted_memory_stays_flat_and_recovers(sink: SegmentSink) -> None:
    # Segment is down until the burst is over: every request waits, then is refused as busy.
    sink.answer_next(503, times=100_000, delay=0.2)
    integration = make_integration(
        sink, rate_limit=None, max_queue_size=200, upload_size=50, max_retries=3, timeout=5.0
    )
    sentry = RecordingTransport(keep=False)
    sentry_sdk.init(dsn=DSN, transport=sentry, integrations=[integration], default_integrations=False)
    try:
        burst_then_recover(integration, sentry, sink)
    finally:
        sentry_sdk.init()


def burst_then_recover(integration: SegmentIntegration, sentry: RecordingTransport, sink: SegmentSink) -> None:
    for n in range(1000):  # warm-up: reach the steady state of a full queue
        error_as_user({"id": f"warm-{n}"})
    baseline = peak_rss_mb()
    for n in range(20_000):
        error_as_user({"id": f"burst-{n}"})
    growth = peak_rss_mb() - baseline
    stats = integration.stats()
    assert sentry.count == 21_000
    # The queue stayed bounded however fast the burst ran: what was taken in is what the queue holds
    # (200) plus what requests took out (50 each, a retry counted again; one more batch being gathered).
    assert stats["queue_full"] > 0
    assert stats["forwarded"] <= 200 + 50 * (sink.requests + 1)
    assert stats["forwarded"] + stats["queue_full"] + stats["rate_limited"] == 21_000
    assert growth < 30, f"peak RSS grew {growth:.1f} MB"

    # The fault clears: what was queued arrives, and new errors are forwarded again.
    sink.clear_answers()

    def all_delivered_or_given_up() -> bool:
        sentry_sdk.flush(1)
        stats = integration.stats()
        return stats["forwarded"] <= len(sink.messages) + stats["delivery_failed"]

    # Then the queue is empty again (there is no rate limit: nothing else to wait for).
    wait_until(all_delivered_or_given_up, timeout=60)
    forwarded_before = integration.stats()["forwarded"]
    error_as_user({"id": "after-recovery"})
    sentry_sdk.flush(10)
    assert integration.stats()["forwarded"] == forwarded_before + 1
    messages = sink.wait_for_messages(forwarded_before + 1 - integration.stats()["delivery_failed"], timeout=30)
    assert "after-recovery" in {message["userId"] for message in messages}
    assert len({message["messageId"] for message in messages}) == len(messages)


@pytest.mark.slow
def test_pre_forking_server_four_workers_each_forward_nothing_twice(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, upload_interval=0.5)
    init_sentry(integration)
    error_as_user({"id": "master"})  # queued in the master when the workers are forked
    children: List[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for worker in range(4):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - a worker
                code = 1
                try:
                    for n in range(5):
                        error_as_user({"id": f"worker-{worker}-{n}"})
                    sentry_sdk.flush(10)
                    code = 0
                finally:
                    os._exit(code)
            children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    sentry_sdk.flush(10)
    messages = sink.wait_for_messages(21)
    user_ids = sorted(message["userId"] for message in messages)
    assert user_ids == sorted(["master"] + [f"worker-{w}-{n}" for w in range(4) for n in range(5)])
    assert len({message["messageId"] for message in messages}) == 21


OPTION_NAMES = [
    "write_key",
    "host",
    "rate_limit",
    "rate_limit_storage",
    "organization",
    "projects",
    "enroll_new_projects",
    "include_messages",
    "gzip",
    "max_queue_size",
    "upload_size",
    "upload_interval",
    "timeout",
    "max_retries",
    "send_ip",
    "send_query_string",
    "properties",
]
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(
        st.one_of(st.text(max_size=5), st.integers()),
        st.one_of(
            st.text(max_size=5),
            st.dictionaries(st.text(max_size=9), st.one_of(st.text(max_size=9), st.booleans(), st.none())),
        ),
        max_size=3,
    ),
    st.just(object()),
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(option=st.sampled_from(OPTION_NAMES), value=anything)
def test_any_option_value_is_accepted_or_a_clear_error_naming_it(option: str, value: Any) -> None:
    # Every request stays on 127.0.0.1: a port where nothing listens.
    options: Dict[str, Any] = {"write_key": "fuzz_key", "host": "http://127.0.0.1:9", "max_retries": 0}
    options[option] = value
    try:
        integration = SegmentIntegration(**options)
    except ValueError as error:
        assert f"option '{option}" in str(error)
        return
    if option in ("host", "rate_limit_storage"):
        return  # accepted, and it may name another machine: nothing is sent there from a test
    # Accepted: then capturing with it works too.
    transport = RecordingTransport()
    sentry_sdk.init(
        dsn="https://k@o9.ingest.sentry.io/9",
        transport=transport,
        integrations=[integration],
        default_integrations=False,
    )
    try:
        error_as_user({"id": "u-1"})
    finally:
        sentry_sdk.init()
    assert len(transport.events) == 1
    assert integration.stats()["internal_error"] == 0
