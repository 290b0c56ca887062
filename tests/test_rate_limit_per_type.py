"""`rate_limit_per_type`: each exception type capped within the organization's window, in process
and through the shared storage, checked before the organization's budget so that a storm of one
type cannot spend it; window edges, bursts mixed with other types, explain/replay."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable, List

import pytest
import sentry_sdk

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.ratelimit import FixedWindowLimiter, RateLimiter, SharedLimiter, TypeCap, type_key
from sentry_segment_integration.settings import ConfigurationError
from sentry_segment_integration.testing import SegmentSink
from support import WRITE_KEY, RecordedAdmission, SteppingClock, error_as_user, make_integration, run_cli

OTHER_TYPES = (ValueError, TypeError, LookupError, ZeroDivisionError)


def windows_between(started: float, ended: float) -> int:
    return int(ended) - int(started) + 1


def storm_then_others(storm: int, others_each: int) -> int:
    """``storm`` KeyErrors, then ``others_each`` of each other type; the windows it took (wall clock
    and monotonic clock alike: the larger count)."""
    started, started_wall = time.monotonic(), time.time()
    for n in range(storm):
        error_as_user({"id": f"storm-{n}"}, KeyError(n))
    for kind in OTHER_TYPES:
        for n in range(others_each):
            error_as_user({"id": f"{kind.__name__}-{n}"}, kind(n))
    return max(windows_between(started, time.monotonic()), windows_between(started_wall, time.time()))


def arrived_by_type(sink: SegmentSink, expected: int) -> Counter[str]:
    return Counter(message["properties"]["exceptionType"] for message in sink.wait_for_messages(expected))


# -- window edges, deterministic --------------------------------------------------------------


def test_type_caps_have_window_edges_of_their_own() -> None:
    clock = SteppingClock(100.0)
    limiter = FixedWindowLimiter(clock)
    storm, other = type_key("org", "KeyError"), type_key("org", "ValueError")
    assert [limiter.try_acquire(storm, 2) for _ in range(3)] == [1, 1, 0]
    assert limiter.try_acquire(other, 2) == 1
    assert limiter.try_acquire(type_key("other-org", "KeyError"), 2) == 1
    clock.now = 100.999
    assert limiter.try_acquire(storm, 2) == 0
    clock.now = 101.0
    assert [limiter.try_acquire(storm, 2) for _ in range(3)] == [1, 1, 0]


def test_type_keys_are_short_and_plain_whatever_the_name() -> None:
    for name in ("", "KeyError", "my app.Error with spaces\n", "\u2603" * 3000):
        key = type_key("123", name)
        assert key.startswith("123/type/") and len(key) == len("123/type/") + 16
        assert key.isascii() and " " not in key
    assert type_key("1", "A") != type_key("1", "B") != type_key("2", "A")


def test_many_types_do_not_grow_the_limiter_without_end() -> None:
    clock = SteppingClock(0.0)
    limiter = FixedWindowLimiter(clock)
    for second in range(5):
        clock.now = float(second)
        for n in range(3000):
            assert limiter.try_acquire(type_key("org", f"Generated{second}_{n}"), 1) == 1
    assert len(limiter._windows) <= 2 * 4096


ADMITTED, OVER_BUDGET, OVER_TYPE_CAP = "admitted", "over_budget", "over_type_cap"


@pytest.fixture(params=["in-process", "shared"])
def make_limiter(request: pytest.FixtureRequest) -> Callable[[SteppingClock], RateLimiter]:
    """Either storage behind the one interface: the same answers are expected of both."""
    # Only the shared one needs a Redis (a laptop without one still runs the in-process case).
    redis_server = request.getfixturevalue("redis_server") if request.param == "shared" else None

    def make(clock: SteppingClock) -> RateLimiter:
        if redis_server is None:
            return FixedWindowLimiter(clock=clock)
        return SharedLimiter(redis_server().url, wall_clock=clock)

    return make


def test_type_caps_window_edges_and_order(make_limiter: Callable[[SteppingClock], RateLimiter]) -> None:
    clock = SteppingClock(float(int(time.time())))
    limiter = make_limiter(clock)
    org = f"org-{uuid.uuid4().hex}"
    answers: List[str] = []

    def admit(kind: str, count: int, org_limit: int = 4, type_limit: int = 2) -> Counter[str]:
        answers.clear()
        for _ in range(count):
            limiter.admit(org, org_limit, RecordedAdmission(answers), TypeCap(type_key(org, kind), type_limit))
        assert limiter.flush(5)
        assert len(answers) == count  # every admission told exactly once
        return Counter(answers)

    # 5 KeyErrors under a cap of 2: 2 go, 3 over the cap spend nothing of the organization's 4 ...
    assert admit("KeyError", 5) == {ADMITTED: 2, OVER_TYPE_CAP: 3}
    # ... so 2 ValueErrors still go, and they spend the rest of it: the third finds it spent.
    assert admit("ValueError", 3) == {ADMITTED: 2, OVER_BUDGET: 1}
    assert admit("TypeError", 1) == {OVER_BUDGET: 1}
    clock.now += 0.999  # the same window
    assert admit("LookupError", 1) == {OVER_BUDGET: 1}
    clock.now = float(int(clock.now)) + 1.0  # the next one: every budget anew
    assert admit("KeyError", 3) == {ADMITTED: 2, OVER_TYPE_CAP: 1}
    assert admit("TypeError", 2) == {ADMITTED: 2}
    assert admit("ValueError", 1) == {OVER_BUDGET: 1}
    # A type's cap without an organization budget (rate_limit=None, rate_limit_per_type=2).
    answers.clear()
    for _ in range(3):
        limiter.admit(org, None, RecordedAdmission(answers), TypeCap(type_key(org, "OSError"), 2))
    assert limiter.flush(5)
    assert Counter(answers) == {ADMITTED: 2, OVER_TYPE_CAP: 1}


def test_shared_type_caps_are_shared_between_limiters(redis_server) -> None:
    # Two limiters on one storage stand for two processes: the type's cap is one for both.
    server = redis_server()
    clock = SteppingClock(float(int(time.time())))
    first, second = (SharedLimiter(server.url, wall_clock=clock) for _ in range(2))
    org = f"org-{uuid.uuid4().hex}"
    answers: List[str] = []
    cap = TypeCap(type_key(org, "KeyError"), 4)
    for limiter in (first, second):
        for _ in range(3):
            limiter.admit(org, 100, RecordedAdmission(answers), cap)
        assert limiter.flush(5)
    assert Counter(answers) == {ADMITTED: 4, OVER_TYPE_CAP: 2}


# -- end to end -------------------------------------------------------------------------------


def test_a_storm_of_one_type_leaves_the_budget_to_the_others(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, rate_limit=20, rate_limit_per_type=5)
    init_sentry(integration)
    windows = storm_then_others(300, 3)
    sentry_sdk.flush(10)
    stats = integration.stats()
    arrived = arrived_by_type(sink, stats["forwarded"])
    # Every other error arrives: the storm's events over their cap never spent the budget of 20.
    assert {kind.__name__: arrived[kind.__name__] for kind in OTHER_TYPES} == {kind.__name__: 3 for kind in OTHER_TYPES}
    assert 5 <= arrived["KeyError"] <= 5 * windows
    assert stats["forwarded"] == sum(arrived.values())
    assert stats["rate_limited"] == 300 - arrived["KeyError"]


def test_without_the_cap_the_storm_crowds_the_others_out(init_sentry, sink: SegmentSink) -> None:
    # The same traffic without rate_limit_per_type, for contrast: the storm takes the budget.
    integration = make_integration(sink, rate_limit=20)
    init_sentry(integration)
    windows = storm_then_others(300, 3)
    sentry_sdk.flush(10)
    arrived = arrived_by_type(sink, integration.stats()["forwarded"])
    if windows == 1:  # within one window the outcome is exact
        assert arrived == {"KeyError": 20}


def test_mixed_burst_every_type_capped_on_its_own(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, rate_limit=None, rate_limit_per_type=4)
    init_sentry(integration)
    started = time.monotonic()
    for n in range(200):
        kind = KeyError if n % 2 else OTHER_TYPES[n % 4]
        error_as_user({"id": f"u-{n}"}, kind(n))
    windows = windows_between(started, time.monotonic())
    sentry_sdk.flush(10)
    stats = integration.stats()
    arrived = arrived_by_type(sink, stats["forwarded"])
    assert set(arrived) == {"KeyError", "ValueError", "LookupError"}  # the even n: n % 4 is 0 or 2
    assert all(4 <= count <= 4 * windows for count in arrived.values()), arrived
    assert stats["forwarded"] + stats["rate_limited"] == 200


def test_the_per_type_cap_comes_after_the_other_rules(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, rate_limit_per_type=2)
    init_sentry(integration)
    for n in range(20):
        error_as_user(None, KeyError(n))  # no user: never reaches the cap
    for n in range(2):
        error_as_user({"id": f"u-{n}"}, KeyError(n))
    stats = integration.stats()
    assert stats["skipped_no_user"] == 20
    assert stats["forwarded"] == 2 and stats["rate_limited"] == 0


def test_skip_line_says_it_was_the_per_type_cap(init_sentry, sink: SegmentSink, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="sentry_segment_integration")
    integration = make_integration(sink, rate_limit=1000, rate_limit_per_type=1, organization="acme-per-type-log")
    init_sentry(integration)
    started = time.monotonic()
    event_ids = [error_as_user({"id": "u"}, KeyError(n)) for n in range(3)]
    skipped = [record.getMessage() for record in caplog.records if "not forwarded" in record.getMessage()]
    assert len(skipped) == 3 - integration.stats()["forwarded"] >= 3 - windows_between(started, time.monotonic())
    for line in skipped:
        assert "the per-type cap: exception type 'KeyError' is over rate_limit_per_type=1" in line
        assert "'acme-per-type-log'" in line
        assert any(str(event_id) in line for event_id in event_ids)


def test_storm_through_the_shared_storage(init_sentry, redis_server, sink: SegmentSink) -> None:
    server = redis_server()
    integration = make_integration(sink, rate_limit=20, rate_limit_per_type=5, rate_limit_storage=server.url)
    init_sentry(integration)
    windows = storm_then_others(300, 3)
    sentry_sdk.flush(10)
    stats = integration.stats()
    assert stats["forwarded"] + stats["rate_limited"] == 312, stats
    arrived = arrived_by_type(sink, stats["forwarded"])
    assert {kind.__name__: arrived[kind.__name__] for kind in OTHER_TYPES} == {kind.__name__: 3 for kind in OTHER_TYPES}
    assert 5 <= arrived["KeyError"] <= 5 * windows


@pytest.mark.parametrize("bad", [0, -1, "5", True, float("nan"), float("inf"), 10**12, [5]])
def test_bad_rate_limit_per_type_is_a_clear_error(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="option 'rate_limit_per_type' must be a positive number") as raised:
        SegmentIntegration(write_key=WRITE_KEY, rate_limit_per_type=bad)
    assert isinstance(raised.value, ValueError)
    assert "None to turn the cap off" in str(raised.value)


def test_fractional_cap_rounds_up() -> None:
    integration = SegmentIntegration(write_key=WRITE_KEY, rate_limit_per_type=2.5)
    assert integration._options.rate_limit_per_type == 3


# -- replay -----------------------------------------------------------------------------------


def saved_event(n: int, kind: str, when: str) -> str:
    return json.dumps(
        {
            "event_id": uuid.UUID(int=n).hex,
            "timestamp": when,
            "user": {"id": f"u-{n}"},
            "exception": {"values": [{"type": kind}]},
        }
    )


def test_replay_caps_each_type_per_second_of_the_events_own_time(tmp_path: Path) -> None:
    lines = [saved_event(n, "KeyError", "2026-11-26T15:29:40.100Z") for n in range(5)]
    lines += [saved_event(10 + n, "KeyError", "2026-11-26T15:29:41.500Z") for n in range(2)]
    lines += [saved_event(20 + n, "ValueError", "2026-11-26T15:29:40.900Z") for n in range(3)]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    command = ["replay", "--dry-run", "--json", str(path)]
    runs = [run_cli(*command, "--rate-limit-per-type", "2") for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    first = [json.loads(line) for line in runs[0].stdout.splitlines()]
    assert Counter(message["properties"]["exceptionType"] for message in first) == {"KeyError": 4, "ValueError": 2}
    # The same files replayed again forward the same events (the same messageIds).
    assert [message["messageId"] for message in first] == [
        json.loads(line)["messageId"] for line in runs[1].stdout.splitlines()
    ]
    summary = json.loads(runs[0].stderr.strip().splitlines()[-1])
    assert summary["skipped"] == {"not_error": 0, "no_user": 0, "over_type_cap": 4}
    assert summary["rate_limit_per_type"] == 2
    uncapped = run_cli(*command)
    assert len(uncapped.stdout.splitlines()) == 10


def test_replay_bad_cap_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(saved_event(1, "KeyError", "2026-11-26T15:29:40Z") + "\n")
    result = run_cli("replay", "--dry-run", str(path), "--rate-limit-per-type", "0")
    assert result.returncode == 2
    assert "argument --rate-limit-per-type" in result.stderr
