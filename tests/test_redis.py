"""The budget shared through a real redis-server: across processes, and through Redis failures."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from typing import Any, Dict, List

import pytest
import redis
import sentry_sdk

from sentry_segment_integration.ratelimit import SharedLimiter
from sentry_segment_integration.testing import SegmentSink
from support import RecordedAdmission, SteppingClock, error_as_user, make_integration

FIRE_SCRIPT = """
import json, sys, time, sentry_sdk
from sentry_segment_integration import SegmentIntegration
redis_url, sink_url, organization, start_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
stop_at = float(sys.argv[5]) if len(sys.argv) > 5 else None
integration = SegmentIntegration(
    write_key="shared_budget_key", host=sink_url, rate_limit=50, rate_limit_storage=redis_url,
    organization=organization, upload_interval=0.05,
)
sentry_sdk.init(dsn="https://k@o999.ingest.sentry.io/1", transport=lambda event: None,
                integrations=[integration], default_integrations=False)
while time.time() < start_at:
    time.sleep(0.001)
first = time.time()
n = 0
while (time.time() < stop_at) if stop_at else (n < 300):
    sentry_sdk.set_user({"id": "u-%d" % n})
    try:
        1 / 0
    except ZeroDivisionError:
        sentry_sdk.capture_exception()
    n += 1
last = time.time()
sentry_sdk.flush(10)
print(json.dumps({"stats": integration.stats(), "first": first, "last": last}))
"""


def fire_from_three_processes(redis_url: str, sink: SegmentSink, start_at: float, *stop_at: str) -> List[Any]:
    organization = f"org-{uuid.uuid4().hex}"
    script = textwrap.dedent(FIRE_SCRIPT)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, redis_url, sink.url, organization, str(start_at), *stop_at],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    reports = [json.loads(process.communicate(timeout=120)[0]) for process in processes]
    assert all(process.returncode == 0 for process in processes)
    return reports


def test_three_processes_share_one_budget(redis_server, sink: SegmentSink) -> None:
    server = redis_server()
    start_at = float(int(time.time()) + 3) + 0.05  # all three fire at the start of the same second
    reports = fire_from_three_processes(server.url, sink, start_at)

    forwarded = sum(report["stats"]["forwarded"] for report in reports)
    rate_limited = sum(report["stats"]["rate_limited"] for report in reports)
    windows = int(max(r["last"] for r in reports)) - int(min(r["first"] for r in reports)) + 1
    assert forwarded + rate_limited == 900
    # One budget of 50 per second for the three of them, not 50 each.
    assert 50 <= forwarded <= 50 * windows
    assert windows < 3
    assert len(sink.wait_for_messages(forwarded)) == forwarded


@pytest.mark.slow
def test_shared_budget_is_within_ten_percent_of_exact_over_ten_seconds(redis_server, sink: SegmentSink) -> None:
    server = redis_server()
    start_at = float(int(time.time()) + 3)  # ten whole windows, from a second's start to another's
    reports = fire_from_three_processes(server.url, sink, start_at, str(start_at + 10))
    forwarded = sum(report["stats"]["forwarded"] for report in reports)
    captured = sum(report["stats"]["forwarded"] + report["stats"]["rate_limited"] for report in reports)
    # The last capture may begin just before the tenth second ends and be counted in the next.
    windows = int(max(report["last"] for report in reports)) - int(start_at) + 1
    exact = 50 * 10
    assert captured > 3 * exact  # far more demand than budget, from every process
    assert 0.9 * exact <= forwarded <= 50 * windows


def capture_users(count: int, prefix: str) -> float:
    started = time.monotonic()
    for n in range(count):
        error_as_user({"id": f"{prefix}-{n}"})
    return time.monotonic() - started


def shared_counters(url: str, organization: str) -> Dict[str, int]:
    client = redis.Redis.from_url(url)
    keys = client.keys(f"*sentry-segment/{organization}/*")
    return {key.decode(): int(client.get(key) or 0) for key in keys}


def test_redis_killed_mid_run_falls_back_then_shares_again(
    init_sentry, redis_server, sink: SegmentSink, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server()
    integration = make_integration(sink, rate_limit=20, rate_limit_storage=server.url)
    organization = integration._options.organization
    assert organization is not None
    init_sentry(integration)
    caplog.set_level(logging.WARNING, logger="sentry_segment_integration")

    capture_users(5, "before")
    sentry_sdk.flush(5)
    assert integration.stats()["forwarded"] == 5
    assert sum(shared_counters(server.url, organization).values()) == 5

    server.stop()
    started = time.monotonic()
    capture_users(60, "during")
    sentry_sdk.flush(5)
    windows = int(time.monotonic()) - int(started) + 1
    stats = integration.stats()
    assert stats["forwarded"] + stats["rate_limited"] == 65
    assert stats["forwarded"] > 5  # the process went on forwarding alone, within its own limit
    assert stats["forwarded"] <= 5 + 20 * windows
    assert stats["internal_error"] == 0
    unreachable = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(unreachable) == 1

    server.start()
    time.sleep(1.5)  # the storage is tried again one second after it failed
    before = integration.stats()["forwarded"]
    capture_users(3, "after")
    sentry_sdk.flush(5)
    assert integration.stats()["forwarded"] == before + 3
    assert sum(shared_counters(server.url, organization).values()) == 3
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_redis_down_at_start_never_blocks(init_sentry, closed_port: int, sink: SegmentSink) -> None:
    url = f"redis://127.0.0.1:{closed_port}/0"
    integration = make_integration(sink, rate_limit=10, rate_limit_storage=url)
    sentry = init_sentry(integration)
    started = time.monotonic()
    elapsed = capture_users(40, "u")
    windows = int(time.monotonic()) - int(started) + 1
    # Capturing never talks to Redis: 40 captures take far less than one storage timeout each.
    assert elapsed < 40 * 0.5 / 4
    sentry_sdk.flush(5)
    stats = integration.stats()
    assert len(sentry.events) == 40
    assert stats["forwarded"] + stats["rate_limited"] == 40
    assert 10 <= stats["forwarded"] <= 10 * windows


def test_slow_redis_never_blocks_capturing(init_sentry, redis_server, sink: SegmentSink) -> None:
    server = redis_server()
    integration = make_integration(sink, rate_limit=1000, rate_limit_storage=server.url)
    init_sentry(integration)
    capture_users(1, "warm-up")
    sentry_sdk.flush(5)
    # Redis answers nothing for two seconds.
    stall = threading.Thread(target=lambda: redis.Redis.from_url(server.url).execute_command("DEBUG", "SLEEP", "2"))
    stall.start()
    time.sleep(0.1)
    elapsed = capture_users(30, "during-stall")
    assert elapsed < 2.0 / 2
    sentry_sdk.flush(10)
    stall.join()
    stats = integration.stats()
    assert stats["forwarded"] == 31
    assert len(sink.wait_for_messages(31)) == 31


def test_redis_credentials_never_logged(
    init_sentry, redis_server, sink: SegmentSink, caplog: pytest.LogCaptureFixture
) -> None:
    password = "redis-pass-not-for-logs"
    server = redis_server(password=password)
    integration = make_integration(sink, rate_limit_storage=server.url)
    init_sentry(integration)
    caplog.set_level(logging.DEBUG)
    capture_users(2, "u")
    sentry_sdk.flush(5)
    server.stop()
    capture_users(2, "v")
    sentry_sdk.flush(5)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "cannot be reached" in logged
    assert f"127.0.0.1:{server.port}" in logged
    assert password not in logged
    assert password not in repr(integration)


def test_shared_window_edges(redis_server) -> None:
    server = redis_server()
    clock = SteppingClock(float(int(time.time())))
    limiter = SharedLimiter(server.url, wall_clock=clock)
    key = f"org-{uuid.uuid4().hex}"
    answers: List[str] = []

    def admit(count: int) -> List[int]:
        answers.clear()
        for _ in range(count):
            limiter.admit(key, 3, RecordedAdmission(answers))
        assert limiter.flush(5)
        return [answers.count("admitted"), answers.count("over_budget")]

    assert admit(5) == [3, 2]
    clock.now += 0.999
    assert admit(2) == [0, 2]
    clock.now = float(int(clock.now)) + 1.0
    assert admit(4) == [3, 1]
