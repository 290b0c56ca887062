"""The per-organization budget in one process: window edges, bursts, threads, several clients."""

from __future__ import annotations

import threading
import time
from typing import Any, List

import sentry_sdk

from sentry_segment_integration.ratelimit import FixedWindowLimiter
from sentry_segment_integration.testing import SegmentSink
from support import SteppingClock, capture_with_client, error_as_user, make_integration, separate_client


def test_window_edges() -> None:
    clock = SteppingClock(100.0)
    limiter = FixedWindowLimiter(clock)
    assert [limiter.try_acquire("org", 3) for _ in range(4)] == [1, 1, 1, 0]
    clock.now = 100.999
    assert limiter.try_acquire("org", 3) == 0
    clock.now = 101.0
    assert [limiter.try_acquire("org", 3) for _ in range(4)] == [1, 1, 1, 0]
    assert limiter.try_acquire("other-org", 3) == 1
    clock.now = 105.5
    assert limiter.try_acquire("org", 3, amount=5) == 3


def test_exact_under_sixteen_threads() -> None:
    limiter = FixedWindowLimiter(SteppingClock(7.0))
    granted: List[int] = []
    start = threading.Barrier(16)

    def take() -> None:
        start.wait()
        granted.append(sum(limiter.try_acquire("org", 5000) for _ in range(1000)))

    threads = [threading.Thread(target=take) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 5000


def windows_between(started: float, ended: float) -> int:
    """How many one-second windows of the limiter's clock a run touched."""
    return int(ended) - int(started) + 1


def test_burst_is_cut_at_the_rate_limit(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, rate_limit=50)
    sentry = init_sentry(integration)
    started = time.monotonic()
    for n in range(400):
        error_as_user({"id": f"u-{n}"})
    windows = windows_between(started, time.monotonic())
    sentry_sdk.flush(10)
    stats = integration.stats()
    assert len(sentry.events) == 400
    assert stats["forwarded"] + stats["rate_limited"] == 400
    assert 50 <= stats["forwarded"] <= 50 * windows
    assert len(sink.wait_for_messages(stats["forwarded"])) == stats["forwarded"]


def test_fractional_rate_limit_rounds_up_per_window(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, rate_limit=2.5)
    init_sentry(integration)
    started = time.monotonic()
    for n in range(30):
        error_as_user({"id": f"u-{n}"})
    windows = windows_between(started, time.monotonic())
    assert 3 <= integration.stats()["forwarded"] <= 3 * windows


def test_skipped_events_do_not_spend_the_budget(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, rate_limit=5)
    init_sentry(integration)
    for _ in range(50):
        error_as_user(None)
        sentry_sdk.capture_message("not an error")
    for n in range(5):
        error_as_user({"id": f"u-{n}"})
    stats = integration.stats()
    assert stats["skipped_no_user"] == 50, stats
    assert stats["skipped_not_error"] == 50
    assert stats["forwarded"] == 5
    assert stats["rate_limited"] == 0


def test_no_limit_forwards_everything(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, rate_limit=None)
    init_sentry(integration)
    for n in range(300):
        error_as_user({"id": f"u-{n}"})
    assert integration.stats()["forwarded"] == 300


def test_sixteen_threads_capturing_share_one_budget(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, rate_limit=100)
    init_sentry(integration)
    start = threading.Barrier(16)
    failures: List[BaseException] = []

    def capture() -> None:
        try:
            start.wait()
            for n in range(50):
                error_as_user({"id": f"{threading.get_ident()}-{n}"})
        except BaseException as error:  # pragma: no cover - reported below
            failures.append(error)

    threads = [threading.Thread(target=capture) for _ in range(16)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    windows = windows_between(started, time.monotonic())
    stats = integration.stats()
    assert failures == []
    assert stats["forwarded"] + stats["rate_limited"] == 800
    assert 100 <= stats["forwarded"] <= 100 * windows


def capture_on_each(clients: List[Any], errors: int) -> int:
    """``errors`` errors on each client in turn; how many rate-limit windows that took."""
    started = time.monotonic()
    for n in range(errors):
        for client in clients:
            capture_with_client(client, f"u-{n}")
    return windows_between(started, time.monotonic())


def test_two_clients_and_two_integrations_share_the_organizations_budget(sink: SegmentSink) -> None:
    first, second = (make_integration(sink, rate_limit=30, organization=None) for _ in range(2))
    clients = [
        separate_client(f"https://k@o77.ingest.sentry.io/{project}", integration)
        for project, integration in ((1, first), (2, second))
    ]
    try:
        windows = capture_on_each(clients, 60)
        forwarded = first.stats()["forwarded"] + second.stats()["forwarded"]
        assert 30 <= forwarded <= 30 * windows
        assert first.stats()["forwarded"] > 0 and second.stats()["forwarded"] > 0
        rate_limited = first.stats()["rate_limited"] + second.stats()["rate_limited"]
        assert forwarded + rate_limited == 120
    finally:
        for client in clients:
            client.close(timeout=1)


def test_organizations_have_separate_budgets(sink: SegmentSink) -> None:
    integration = make_integration(sink, rate_limit=10, organization=None)
    clients = [
        separate_client(dsn, integration)
        for dsn in ("https://k@o301.ingest.sentry.io/1", "https://k@sentry.internal.example/2")
    ]
    try:
        windows = capture_on_each(clients, 20)
        assert 20 <= integration.stats()["forwarded"] <= 20 * windows
    finally:
        for client in clients:
            client.close(timeout=1)


def test_organization_option_overrides_the_dsn(sink: SegmentSink) -> None:
    integrations = [make_integration(sink, rate_limit=10, organization="acme") for _ in range(2)]
    clients = [
        separate_client(dsn, integration)
        for dsn, integration in zip(
            ("https://k@o1.ingest.sentry.io/1", "https://k@o2.ingest.sentry.io/2"), integrations
        )
    ]
    try:
        windows = capture_on_each(clients, 20)
        assert 10 <= sum(i.stats()["forwarded"] for i in integrations) <= 10 * windows
    finally:
        for client in clients:
            client.close(timeout=1)
