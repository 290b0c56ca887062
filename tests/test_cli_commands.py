"""The command line, run as a user runs it: a subprocess per command, a real receiver on 127.0.0.1.

``sink``, ``check``, ``replay`` and ``explain``, their success and failure paths and exit codes.
The receiver is the ``sink`` fixture (scripted to fail where a test needs it), or for the ``sink``
command itself the command's own process. No traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import List

import pytest

from sentry_segment_integration.testing import SegmentSink
from support import (
    WRITE_KEY,
    SinkProcess,
    error_event,
    message_ids,
    output_of,
    post_to,
    run_cli,
    sentry_api_event,
    track,
    write_json_lines,
)

# Each test runs a command as a subprocess: not in the quick loop (-m "not slow").
pytestmark = pytest.mark.slow

COMMANDS = ["demo", "sink", "check", "replay", "explain"]


# -- every command: --help, usage errors ------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_subcommand_exits_0(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, output_of(result)
    assert f"usage: sentry-segment {command}" in result.stdout
    assert "exit codes" in result.stdout


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["replay"],
        ["replay", "events.json", "--rate-limit", "0"],
        ["replay", "events.json", "--rate-limit", "fast"],
        ["check", "--timeout", "-1"],
        ["sink", "--port", "70000"],
        ["explain"],
        ["explain", "a.json", "--no-such-option"],
    ],
    ids=lambda arguments: " ".join(arguments) or "no command",
)
def test_usage_errors_exit_2(arguments: List[str]) -> None:
    result = run_cli(*arguments)
    assert result.returncode == 2, output_of(result)
    assert "usage: sentry-segment" in result.stderr


def test_a_missing_or_malformed_write_key_is_a_usage_error_that_never_shows_the_key() -> None:
    missing = run_cli("check", "--host", "http://127.0.0.1:9")
    assert missing.returncode == 2
    assert "SEGMENT_WRITE_KEY" in missing.stderr and "--write-key" in missing.stderr
    malformed_key = "not a key, but secret-ish 12345"
    malformed = run_cli("replay", "events.json", SEGMENT_WRITE_KEY=malformed_key)
    assert malformed.returncode == 2
    assert "is not a Segment write key" in malformed.stderr
    assert malformed_key not in output_of(malformed)
    bad_host = run_cli("check", "--host", "ftp://127.0.0.1", SEGMENT_WRITE_KEY=WRITE_KEY)
    assert bad_host.returncode == 2 and "--host" in bad_host.stderr


# -- sink ---------------------------------------------------------------------------------------------


def test_sink_prints_each_message_writes_them_to_a_file_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    output = tmp_path / "received.jsonl"
    sink = SinkProcess("--output", str(output))
    batch = [track("user-1", "KeyError"), track("user-2", "ValueError")]
    single = track("user-3", "ZeroDivisionError")
    try:
        assert post_to(sink.url, "/v1/batch", {"batch": batch}, WRITE_KEY, use_gzip=True) == 200
        assert post_to(sink.url, "/v1/track", single, WRITE_KEY, use_gzip=False) == 200
        for message in [*batch, single]:
            line = sink.wait_for_line(message["messageId"])
            assert f"user={message['userId']}" in line
            assert message["properties"]["exceptionType"] in line
    finally:
        result = sink.stop(signal.SIGINT)
    assert result.returncode == 0, output_of(result)
    assert "3 message(s) received in 2 request(s)" in result.stdout
    assert WRITE_KEY not in output_of(result)
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert written == [*batch, single]
    assert WRITE_KEY not in output.read_text()


def test_sink_json_prints_whole_messages_and_stops_on_sigterm() -> None:
    sink = SinkProcess("--json")
    message = track("user-9", "KeyError")
    try:
        assert post_to(sink.url, "/v1/batch", {"batch": [message]}, WRITE_KEY, use_gzip=False) == 200
        line = sink.wait_for_line(message["messageId"])
    finally:
        result = sink.stop(signal.SIGTERM)
    assert result.returncode == 0, output_of(result)
    assert json.loads(line) == message
    assert "listening on" not in result.stdout.split(line)[0]  # stdout carries only messages
    assert "listening on" in result.stderr


def test_sink_on_a_port_in_use_fails_with_exit_1(sink: SegmentSink) -> None:
    result = run_cli("sink", "--port", str(sink.port))
    assert result.returncode == 1
    assert "already in use" in result.stderr


# -- check -------------------------------------------------------------------------------------------


def test_check_sends_one_marked_test_message_and_reports_it_accepted(sink: SegmentSink) -> None:
    result = run_cli("check", "--host", sink.url, SEGMENT_WRITE_KEY=WRITE_KEY)
    assert result.returncode == 0, output_of(result)
    assert "accepted: HTTP 200" in result.stdout
    assert WRITE_KEY not in output_of(result)
    [message] = sink.messages
    assert message["event"] == "Error Captured"
    assert message["userId"] == "sentry-segment-check"
    assert message["properties"]["test"] is True
    assert message["messageId"] in result.stdout
    assert sink.batches[0].write_key == WRITE_KEY  # sent as Basic auth, as the Segment library does
    again = run_cli("check", "--host", sink.url, "--write-key", WRITE_KEY, "--json")
    report = json.loads(again.stdout)
    assert again.returncode == 0
    assert report["accepted"] is True and report["status"] == 200
    assert report["messageId"] != message["messageId"]  # a fresh one each time


def test_check_says_the_key_was_refused_on_401(sink: SegmentSink) -> None:
    sink.answer_next(401)
    result = run_cli("check", "--host", sink.url, SEGMENT_WRITE_KEY=WRITE_KEY)
    assert result.returncode == 1, output_of(result)
    assert "HTTP 401" in result.stdout
    assert "refused the write key" in result.stdout
    assert WRITE_KEY not in output_of(result)


def test_check_against_a_closed_port_says_unreachable(closed_port: int) -> None:
    result = run_cli("check", "--host", f"http://127.0.0.1:{closed_port}", "--json", SEGMENT_WRITE_KEY=WRITE_KEY)
    assert result.returncode == 1, output_of(result)
    report = json.loads(result.stdout)
    assert report["accepted"] is False and report["status"] is None
    assert report["problem"] == "refused"
    assert "nothing listens" in report["cause"]
    assert WRITE_KEY not in output_of(result)


def test_check_names_a_tls_failure(sink: SegmentSink) -> None:
    # The sink speaks plain HTTP: an https:// host fails the TLS handshake, as a wrong proxy would.
    result = run_cli("check", "--host", sink.url.replace("http://", "https://"), SEGMENT_WRITE_KEY=WRITE_KEY)
    assert result.returncode == 1, output_of(result)
    assert "TLS" in result.stdout


def test_check_gives_up_at_its_timeout(sink: SegmentSink) -> None:
    sink.delay_next(5)
    started = time.monotonic()
    result = run_cli("check", "--host", sink.url, "--timeout", "1", "--json", SEGMENT_WRITE_KEY=WRITE_KEY)
    assert time.monotonic() - started < 4.5
    assert result.returncode == 1, output_of(result)
    assert json.loads(result.stdout)["problem"] == "timeout"


# -- replay ------------------------------------------------------------------------------------------


def test_replay_of_thousands_forwards_every_event_at_the_rate_limit(sink: SegmentSink, tmp_path: Path) -> None:
    count, rate = 3000, 1000
    events = [error_event(number, user_id=f"user-{number % 97}") for number in range(count)]
    path = write_json_lines(tmp_path / "events.jsonl", events)
    started = time.monotonic()
    result = run_cli("replay", str(path), "--host", sink.url, "--rate-limit", str(rate), SEGMENT_WRITE_KEY=WRITE_KEY)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, output_of(result)
    received = sink.wait_for_messages(count, timeout=10)
    assert sorted(message_ids(received)) == sorted(event["event_id"] for event in events)
    assert len(received) == count
    # Fixed one-second windows: 3000 at 1000/s span at least two window boundaries. Loose on purpose.
    assert elapsed >= count / rate - 2
    assert "forwarded" in result.stdout and "3,000" in result.stdout
    assert WRITE_KEY not in output_of(result)


def test_replaying_twice_sends_the_same_message_ids(sink: SegmentSink, tmp_path: Path) -> None:
    events = [error_event(number, user_id=number) for number in range(40)]
    path = write_json_lines(tmp_path / "events.jsonl", events)
    first = run_cli("replay", str(path), "--host", sink.url, "--json", SEGMENT_WRITE_KEY=WRITE_KEY)
    first_ids = message_ids(sink.wait_for_messages(40))
    second = run_cli("replay", str(path), "--host", sink.url, "--json", SEGMENT_WRITE_KEY=WRITE_KEY)
    all_ids = message_ids(sink.wait_for_messages(80))
    assert first.returncode == second.returncode == 0, output_of(first) + output_of(second)
    assert first_ids == [event["event_id"] for event in events]
    assert all_ids[40:] == first_ids
    summary = json.loads(second.stdout)
    assert summary["forwarded"] == summary["delivered"] == 40 and summary["complete"] is True


def test_replay_reports_bad_input_by_file_and_line_and_goes_on(sink: SegmentSink, tmp_path: Path) -> None:
    not_json = tmp_path / "notes.txt"
    not_json.write_text("this is not JSON\nnor is this\n")
    truncated = tmp_path / "truncated.jsonl"
    good_lines = [json.dumps(error_event(number, user_id="u")) for number in range(3)]
    truncated.write_text("\n".join(good_lines) + "\n" + json.dumps(error_event(3, user_id="u"))[:50])
    mixed = write_json_lines(
        tmp_path / "mixed.jsonl",
        [error_event(10, user_id="u"), 42, {"hello": "world"}, error_event(11, user_id="u"), "a string"],
    )
    array = tmp_path / "array.json"
    array.write_text(json.dumps([error_event(20, user_id="u"), error_event(21)], indent=2))
    missing = tmp_path / "missing.json"

    files = [str(path) for path in (not_json, truncated, mixed, array, missing)]
    result = run_cli("replay", *files, "--host", sink.url, "--json", SEGMENT_WRITE_KEY=WRITE_KEY)
    assert result.returncode == 1, output_of(result)
    summary = json.loads(result.stdout)
    problems = {problem["where"]: problem["problem"] for problem in summary["problems"]}
    assert problems.keys() == {
        f"{not_json}:1",
        f"{truncated}:4",
        f"{mixed}:2",
        f"{mixed}:3",
        f"{mixed}:5",
        str(missing),
    }
    assert "not valid JSON" in problems[f"{not_json}:1"]
    assert "truncated" in problems[f"{truncated}:4"]
    assert "not a Sentry event" in problems[f"{mixed}:2"]
    for where in problems:
        assert where in result.stderr  # each also reported to the person, by file and line
    assert summary["bad_input"] == 6
    assert summary["forwarded"] == 6 and summary["skipped"] == {"not_error": 0, "no_user": 1}
    expected = [error_event(number)["event_id"] for number in (0, 1, 2, 10, 11, 20)]
    assert sorted(message_ids(sink.wait_for_messages(6))) == sorted(expected)


def test_replay_dry_run_prints_the_messages_and_sends_nothing(sink: SegmentSink, tmp_path: Path) -> None:
    events = [
        error_event(1, user_id=4242),
        error_event(2),  # anonymous
        error_event(3, user_id="u", type="transaction"),
        error_event(4, user_id="u", exception=None, logentry={"formatted": "low stock"}),
    ]
    path = write_json_lines(tmp_path / "events.jsonl", events)
    result = run_cli("replay", str(path), "--dry-run", "--host", sink.url)  # no write key needed
    assert result.returncode == 0, output_of(result)
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    assert message_ids(messages) == [events[0]["event_id"]]
    assert messages[0]["userId"] == "4242"
    assert messages[0]["properties"]["exceptionType"] == "CheckoutError"
    assert messages[0]["timestamp"] == "2024-05-02T10:15:30.250+00:00"
    assert "not an error" in result.stderr and "no user id" in result.stderr
    with_messages = run_cli("replay", str(path), "--dry-run", "--include-messages")
    assert len(with_messages.stdout.splitlines()) == 2
    time.sleep(0.3)  # room for a request the exited process left in flight to be counted: none must be
    assert sink.requests == 0


def test_replay_stops_when_segment_refuses_the_key(sink: SegmentSink, tmp_path: Path) -> None:
    sink.answer_next(401, times=1000)
    path = write_json_lines(tmp_path / "events.jsonl", [error_event(n, user_id="u") for n in range(500)])
    result = run_cli(
        "replay", str(path), "--host", sink.url, "--rate-limit", "100000", "--json", SEGMENT_WRITE_KEY=WRITE_KEY
    )
    assert result.returncode == 1, output_of(result)
    assert "HTTP 401" in result.stderr and "write key was refused" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["delivery_failed"] > 0 and summary["complete"] is False
    # The first message is confirmed before the rest follow: a refused key stops the replay at once.
    assert "did not accept" in summary["stopped_because"] and summary["forwarded"] == 1
    assert WRITE_KEY not in output_of(result)


def test_replay_to_a_closed_port_stops_after_the_first_message(closed_port: int, tmp_path: Path) -> None:
    path = write_json_lines(tmp_path / "events.jsonl", [error_event(n, user_id="u") for n in range(100)])
    host = f"http://127.0.0.1:{closed_port}"
    result = run_cli("replay", str(path), "--host", host, "--timeout", "1", "--json", SEGMENT_WRITE_KEY=WRITE_KEY)
    assert result.returncode == 1, output_of(result)
    summary = json.loads(result.stdout)
    assert summary["forwarded"] == 1 and summary["complete"] is False
    assert "did not take the first message within 1 s" in summary["stopped_because"]


def test_replay_normalises_events_of_sentrys_api(tmp_path: Path) -> None:
    page = [sentry_api_event("9fac2ceed9344f2bbfdd1fdacb0ed9b1", {"id": "4242", "ip_address": "203.0.113.7"})]
    path = tmp_path / "api-page.json"
    path.write_text(json.dumps(page, indent=2))
    result = run_cli("replay", str(path), "--dry-run")
    assert result.returncode == 0, output_of(result)
    [message] = [json.loads(line) for line in result.stdout.splitlines()]
    assert message["messageId"] == message["properties"]["eventId"] == "9fac2ceed9344f2bbfdd1fdacb0ed9b1"
    assert message["userId"] == "4242"
    assert message["timestamp"] == "2024-05-02T10:15:30.000+00:00"
    assert message["properties"] == {
        "environment": "production",
        "eventId": "9fac2ceed9344f2bbfdd1fdacb0ed9b1",
        "exceptionType": "CheckoutError",
        "release": "shop@1.2.3",
        "transaction": "/checkout",
        "level": "error",
        "userAgent": "Mozilla/5.0",
        "page": {
            "url": "https://shop.example/checkout",
            "method": "POST",
            "search": "coupon=SPRING%2024",
            "referer": "https://shop.example/cart",
        },
    }
    assert "ip" not in message["context"]  # as the integration's default: only with --send-ip
    with_ip = run_cli("replay", str(path), "--dry-run", "--send-ip")
    assert json.loads(with_ip.stdout)["context"]["ip"] == "203.0.113.7"


# -- explain -----------------------------------------------------------------------------------------


def test_explain_a_forwardable_event_prints_its_message(tmp_path: Path) -> None:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(error_event(7, user_id="jane"), indent=2))
    result = run_cli("explain", str(path))
    assert result.returncode == 0, output_of(result)
    assert "would be forwarded" in result.stdout
    message = json.loads(result.stdout[result.stdout.index("\n{") + 1 :])
    assert message["userId"] == "jane" and message["messageId"] == error_event(7)["event_id"]


def test_explain_an_anonymous_event_names_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(sentry_api_event("1" * 32, {"email": "jane@example.com"})))
    result = run_cli("explain", str(path))
    assert result.returncode == 1, output_of(result)
    assert "would NOT be forwarded" in result.stdout
    assert "no id" in result.stdout and "email" in result.stdout
    verdict = json.loads(run_cli("explain", str(path), "--json").stdout)
    assert verdict["forwarded"] is False and verdict["rule"] == "no_user" and verdict["message"] is None


def test_explain_a_transaction_names_the_error_rule(tmp_path: Path) -> None:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(error_event(8, user_id="u", type="transaction")))
    result = run_cli("explain", str(path), "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["rule"] == "not_error"


def test_explain_a_bad_file_is_exit_2(tmp_path: Path) -> None:
    truncated = tmp_path / "event.json"
    truncated.write_text(json.dumps(error_event(9, user_id="u"), indent=2)[:80])
    result = run_cli("explain", str(truncated))
    assert result.returncode == 2
    assert f"{truncated}:" in result.stderr and "truncated" in result.stderr
    several = write_json_lines(tmp_path / "several.jsonl", [error_event(1, user_id="u"), error_event(2, user_id="u")])
    assert run_cli("explain", str(several)).returncode == 2
    assert run_cli("explain", str(tmp_path / "missing.json")).returncode == 2
