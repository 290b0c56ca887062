"""Delivery: capture only enqueues, flush and exit are bounded, failures are counted, fork works.

Bounds are asserted against the configured network timeouts (a hang would last for them, or for
minutes), never as a speed: the machines are shared and noisy.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from typing import Iterator, List

import pytest
import sentry_sdk

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.testing import SegmentSink
from support import WRITE_KEY, error_as_user, flush_until_failed, make_integration, wait_until

# A Segment that hangs would hold the capturing thread or flush for this long at the least.
SEGMENT_TIMEOUT = 30.0
SLACK = 10.0


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a Segment that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def capture_many(count: int, prefix: str = "user") -> List[str]:
    return [str(error_as_user({"id": f"{prefix}-{n}"})) for n in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("segment", ["refusing", "hanging"])
def test_segment_down_capture_never_waits_and_flush_is_bounded(
    init_sentry, closed_port: int, silent_server: str, segment: str
) -> None:
    host = f"http://127.0.0.1:{closed_port}" if segment == "refusing" else silent_server
    # An organization of its own: the process-wide budget of the DSN's may be spent by the other case.
    integration = SegmentIntegration(
        write_key=WRITE_KEY, host=host, timeout=SEGMENT_TIMEOUT, upload_interval=0.05, organization=f"down-{segment}"
    )
    sentry = init_sentry(integration)

    started = time.monotonic()
    capture_many(200)
    capturing = time.monotonic() - started
    assert capturing < SEGMENT_TIMEOUT / 3

    started = time.monotonic()
    sentry_sdk.flush(timeout=1.0)
    flushing = time.monotonic() - started
    assert flushing < 1.0 + SLACK

    assert len(sentry.events) == 200
    stats = integration.stats()
    assert stats["forwarded"] == 200
    assert stats["internal_error"] == 0


def test_an_idle_sender_sends_each_message_at_once(init_sentry, sink: SegmentSink) -> None:
    # upload_interval is a minute: no message may wait for a batch to fill, nor for a flush.
    integration = make_integration(sink, rate_limit=None, upload_size=10, upload_interval=60)
    init_sentry(integration)

    for n in range(3):
        event_id = error_as_user({"id": f"user-{n}"})
        arrived = sink.wait_for_messages(n + 1, timeout=SEGMENT_TIMEOUT)
        assert arrived[-1]["messageId"] == event_id
    assert [len(batch.messages) for batch in sink.batches] == [1, 1, 1]


@pytest.mark.slow
def test_batches_form_while_a_request_is_in_flight(init_sentry, sink: SegmentSink) -> None:
    sink.delay_next(1.0)  # the first request is slow: what comes meanwhile waits for it
    integration = make_integration(sink, rate_limit=None, upload_size=10, upload_interval=60)
    init_sentry(integration)

    first = error_as_user({"id": "first"})
    assert wait_until(lambda: sink.requests >= 1, timeout=SEGMENT_TIMEOUT)
    event_ids = [first, *capture_many(25)]
    sentry_sdk.flush(timeout=SEGMENT_TIMEOUT)

    assert sorted(message["messageId"] for message in sink.messages) == sorted(event_ids)
    assert [len(batch.messages) for batch in sink.batches] == [1, 10, 10, 5]


def test_batches_stay_under_segments_500_kb_limit(init_sentry, sink: SegmentSink) -> None:
    bulky = {f"note{n}": "x" * 2000 for n in range(12)}  # about 24 KB per message
    integration = make_integration(sink, rate_limit=None, properties=lambda event, hint: bulky)
    init_sentry(integration)

    event_ids = capture_many(60)
    sentry_sdk.flush(timeout=SEGMENT_TIMEOUT)

    assert sorted(message["messageId"] for message in sink.messages) == sorted(event_ids)
    assert len(sink.batches) >= 3
    for batch in sink.batches:
        assert len(json.dumps({"batch": batch.messages}).encode()) < 500 * 1024


def test_server_errors_are_retried_until_accepted(init_sentry, sink: SegmentSink) -> None:
    sink.answer_next(503, times=1)
    sink.answer_next(500, times=1)
    integration = make_integration(sink, max_retries=5)
    sentry = init_sentry(integration)
    capture_many(3)
    sentry_sdk.flush(10)
    messages = sink.wait_for_messages(3)
    assert sorted(message["messageId"] for message in messages) == sorted(sentry.event_ids)
    assert sink.requests >= 3
    assert integration.stats()["delivery_failed"] == 0


def test_refused_batch_is_counted_and_logged_once(
    init_sentry, sink: SegmentSink, caplog: pytest.LogCaptureFixture
) -> None:
    sink.answer_next(401, times=2)
    integration = make_integration(sink, upload_size=1)
    init_sentry(integration)
    caplog.set_level("WARNING", logger="sentry_segment_integration")
    capture_many(3)
    sentry_sdk.flush(10)
    sink.wait_for_messages(1)
    stats = integration.stats()
    assert stats["delivery_failed"] == 2
    assert stats["forwarded"] == 3
    assert len(sink.messages) == 1
    warnings_logged = [record for record in caplog.records if record.name == "sentry_segment_integration"]
    assert len(warnings_logged) == 1
    assert "HTTP 401" in warnings_logged[0].getMessage()
    assert "write key" in warnings_logged[0].getMessage()


def test_unreachable_segment_is_counted_as_delivery_failed(init_sentry, closed_port: int) -> None:
    integration = SegmentIntegration(
        write_key=WRITE_KEY, host=f"http://127.0.0.1:{closed_port}", max_retries=0, upload_interval=0.05
    )
    init_sentry(integration)
    capture_many(5)
    flush_until_failed(integration, 5)
    assert integration.stats()["delivery_failed"] == 5


def test_full_queue_drops_and_counts(init_sentry, silent_server: str) -> None:
    integration = SegmentIntegration(
        write_key=WRITE_KEY, host=silent_server, max_queue_size=10, upload_size=1, timeout=SEGMENT_TIMEOUT
    )
    sentry = init_sentry(
        integration,
    )
    capture_many(50)
    stats = integration.stats()
    assert len(sentry.events) == 50
    assert stats["forwarded"] + stats["queue_full"] == 50
    assert 10 <= stats["forwarded"] <= 12
    assert stats["queue_full"] >= 38


EXIT_SCRIPT = """
import sys, sentry_sdk
from sentry_segment_integration import SegmentIntegration
port, segment_host, default_integrations = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
integration = SegmentIntegration(write_key="exit_key", host=segment_host, upload_interval=0.3, timeout={timeout})
for _ in range({inits}):  # a second init replaces the client without closing it
    sentry_sdk.init(
        dsn="http://public@127.0.0.1:%s/42" % port,
        default_integrations=default_integrations,
        shutdown_timeout={shutdown_timeout},
        integrations=[integration],
    )
for n in range(20):
    sentry_sdk.set_user({{"id": "exit-user-%d" % n}})
    try:
        1 / 0
    except ZeroDivisionError:
        sentry_sdk.capture_exception()
# no flush: the interpreter's exit must deliver what is queued
"""


def run_exiting_app(
    sink: SegmentSink, segment_host: str, default_integrations: bool, inits: int = 1, shutdown_timeout: float = 1
) -> float:
    script = textwrap.dedent(EXIT_SCRIPT).format(
        timeout=SEGMENT_TIMEOUT, inits=inits, shutdown_timeout=shutdown_timeout
    )
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", script, str(sink.port), segment_host, "1" if default_integrations else "0"],
        check=True,
        timeout=120,
    )
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("default_integrations", [True, False], ids=["atexit-integration", "no-default-integrations"])
def test_exit_delivers_queued_messages(sink: SegmentSink, default_integrations: bool) -> None:
    run_exiting_app(sink, sink.url, default_integrations)
    messages = sink.messages
    assert sorted(message["userId"] for message in messages) == sorted(f"exit-user-{n}" for n in range(20))
    assert len({message["messageId"] for message in messages}) == 20


@pytest.mark.slow
def test_exit_with_segment_hanging_is_bounded_by_shutdown_timeout(sink: SegmentSink, silent_server: str) -> None:
    elapsed = run_exiting_app(sink, silent_server, default_integrations=True)
    # shutdown_timeout is 1 s; a hang would last SEGMENT_TIMEOUT per request, or minutes.
    assert elapsed < 1 + SLACK
    assert sink.messages == []


@pytest.mark.slow
def test_exit_after_reinit_spends_shutdown_timeout_once(sink: SegmentSink, silent_server: str) -> None:
    shutdown_timeout = 5.0
    elapsed = run_exiting_app(sink, silent_server, True, inits=2, shutdown_timeout=shutdown_timeout)
    # The replaced client is flushed within the same budget: not a second shutdown_timeout.
    assert elapsed < 2 * shutdown_timeout - 1


def forward_one_and_flush(user_id: str) -> None:
    error_as_user({"id": user_id})
    sentry_sdk.flush(10)


@pytest.mark.slow
def test_forked_child_forwards_and_nothing_is_sent_twice(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    init_sentry(integration)
    error_as_user({"id": "parent-before-fork"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: it is what gunicorn does
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        code = 1
        try:
            forward_one_and_flush("child")
            # Counters are per process: the child's own one, not the parent's too.
            code = 0 if integration.stats()["forwarded"] == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    forward_one_and_flush("parent-after-fork")
    messages = sink.wait_for_messages(3)
    assert sorted(message["userId"] for message in messages) == ["child", "parent-after-fork", "parent-before-fork"]


@pytest.mark.slow
def test_multiprocessing_fork_workers_forward(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    init_sentry(integration)
    forward_one_and_flush("parent")
    context = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        workers = [context.Process(target=forward_one_and_flush, args=(f"worker-{n}",)) for n in range(4)]
        for worker in workers:
            worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    messages = sink.wait_for_messages(5)
    assert sorted(message["userId"] for message in messages) == ["parent"] + [f"worker-{n}" for n in range(4)]


def test_a_kept_alive_connection_the_host_closed_is_replaced_without_a_failure(init_sentry) -> None:
    first = SegmentSink().start()
    port = first.port
    # No retries: only the reconnection itself can get the second message through.
    integration = SegmentIntegration(write_key=WRITE_KEY, host=first.url, rate_limit=None, max_retries=0)
    init_sentry(integration)
    error_as_user({"id": "before"})
    assert len(first.wait_for_messages(1, timeout=SEGMENT_TIMEOUT)) == 1
    first.stop()  # closes the kept-alive connection, as a host does with an idle one
    with SegmentSink(port=port) as second:
        event_id = error_as_user({"id": "after"})
        arrived = second.wait_for_messages(1, timeout=SEGMENT_TIMEOUT)
        assert [message["messageId"] for message in arrived] == [event_id]
        assert second.requests == 1
    assert integration.stats()["delivery_failed"] == 0
