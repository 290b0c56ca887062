"""Many threads at once, flushes among them, and clients closed: counters exact, no thread left."""

from __future__ import annotations

import threading
import time
from typing import List, Set

import sentry_sdk

from sentry_segment_integration._log import DELIVERY_THREAD_NAME
from sentry_segment_integration.testing import SegmentSink
from support import capture_with_client, error_as_user, make_integration, new_scope, separate_client


def test_sixteen_threads_for_seconds_every_counter_adds_up(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, rate_limit=300)
    sentry = init_sentry(integration)
    captured_per_thread: List[int] = []
    failures: List[BaseException] = []
    stop_at = time.monotonic() + 3.0

    def capture_until_stopped(index: int) -> None:
        count = 0
        try:
            while time.monotonic() < stop_at:
                # A third anonymous, a third message-only, a third forwardable.
                if count % 3 == 0:
                    error_as_user(None)
                elif count % 3 == 1:
                    with new_scope() as scope:
                        scope.set_user({"id": f"t{index}"})
                        sentry_sdk.capture_message("not an error")
                else:
                    error_as_user({"id": f"t{index}-{count}"})
                count += 1
        except BaseException as error:  # pragma: no cover - reported below
            failures.append(error)
        captured_per_thread.append(count)

    def flush_meanwhile() -> None:
        while time.monotonic() < stop_at:
            sentry_sdk.flush(0.2)

    threads = [threading.Thread(target=capture_until_stopped, args=(n,)) for n in range(16)]
    threads.append(threading.Thread(target=flush_meanwhile))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    sentry_sdk.flush(10)

    assert failures == []
    captured = sum(captured_per_thread)
    stats = integration.stats()
    assert len(sentry.events) == captured
    counted = sum(stats[name] for name in ("forwarded", "rate_limited", "skipped_no_user", "skipped_not_error"))
    assert counted == captured
    assert stats["internal_error"] == stats["queue_full"] == stats["delivery_failed"] == 0
    assert len(sink.wait_for_messages(stats["forwarded"], timeout=30)) == stats["forwarded"]


def delivery_threads() -> Set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == DELIVERY_THREAD_NAME and thread.is_alive()}


def test_closing_the_client_leaves_no_delivery_thread(sink: SegmentSink) -> None:
    others = delivery_threads()  # of other tests' clients, never closed
    integration = make_integration(sink)
    client = separate_client("https://k@o1.ingest.sentry.io/1", integration)
    capture_with_client(client, "u-1")
    [ours] = delivery_threads() - others
    client.close(timeout=5)
    assert len(sink.messages) == 1
    ours.join(10)
    assert not ours.is_alive()
    capture_with_client(client, "after-close")
    assert integration.stats()["forwarded"] == 1
    assert delivery_threads() - others == set()


def test_reinit_many_times_forwards_once_and_keeps_one_thread_per_write_key(init_sentry, sink: SegmentSink) -> None:
    others = delivery_threads()
    integration = make_integration(sink)
    for _ in range(5):
        init_sentry(integration)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    assert len(sink.wait_for_messages(1)) == 1
    assert integration.stats()["forwarded"] == 1
    assert len(delivery_threads() - others) == 1
