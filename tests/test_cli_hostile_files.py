"""The command line on hostile input: what a wrong, broken or malicious file does to a run.

``explain`` and ``replay`` on JSON nested too deeply to parse, an API-shaped event dated in year 1,
lone surrogates in what is printed; files of bad lines read in linear time; ``sink`` receiving a
lone surrogate, and an ``--output`` it cannot write. Each through the real command (a subprocess,
or for the timing the replay command's own function), real files, a real receiver on 127.0.0.1.
The promise checked: unreadable input is reported as ``file:line``, skipped, counted, the run goes
on with the next line and file, and the summary is printed; never a traceback.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List

import pytest

from sentry_segment_integration.cli.replay import ReplaySettings, RuleOptions, run_replay
from sentry_segment_integration.settings import Secret
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

DEEP = "[" * 100_000
# stdout and stderr as plain UTF-8 pipes: a lone surrogate cannot be encoded there at all.
UTF8 = {"PYTHONIOENCODING": "utf-8"}


def assert_no_traceback(result: Any) -> None:
    assert "Traceback" not in output_of(result), output_of(result)


def replay_json(sink: SegmentSink, *files: Path) -> Any:
    return run_cli("replay", *map(str, files), "--host", sink.url, "--json", SEGMENT_WRITE_KEY=WRITE_KEY, **UTF8)


def problems_of(summary: Dict[str, Any]) -> Dict[str, str]:
    return {problem["where"]: problem["problem"] for problem in summary["problems"]}


# -- JSON nested too deeply ----------------------------------------------------------------------------


@pytest.mark.slow
def test_replay_reports_json_nested_too_deeply_by_file_and_line_and_goes_on(sink: SegmentSink, tmp_path: Path) -> None:
    deep_document = tmp_path / "deep.json"
    deep_document.write_text(DEEP)
    deep_line = tmp_path / "deep-line.jsonl"
    deep_line.write_text(
        json.dumps(error_event(1, user_id="u")) + "\n" + DEEP + "\n" + json.dumps(error_event(2, user_id="u")) + "\n"
    )
    deep_first_line = tmp_path / "deep-first.jsonl"
    deep_first_line.write_text(
        '{"a": ' * 50_000 + "\n" + json.dumps(error_event(3, user_id="u")) + "\n"
    )  # the first line too deep to tell: the second says JSON lines
    deep_element = tmp_path / "deep-element.json"
    events = json.dumps([error_event(4, user_id="u"), "DEEP", error_event(5, user_id="u")], indent=2)
    deep_element.write_text(events.replace('"DEEP"', DEEP[:50_000] + "]" * 50_000))
    later = write_json_lines(tmp_path / "later.jsonl", [error_event(6, user_id="u")])

    result = replay_json(sink, deep_document, deep_line, deep_first_line, deep_element, later)
    assert_no_traceback(result)
    assert result.returncode == 1, output_of(result)  # bad input: 1, after the whole run
    summary = json.loads(result.stdout)
    problems = problems_of(summary)
    deep_element_line = events.splitlines().index('  "DEEP",') + 1
    assert problems.keys() == {
        f"{deep_document}:1",
        f"{deep_line}:2",
        f"{deep_first_line}:1",
        f"{deep_element}:{deep_element_line}",
    }
    assert all("nested too deeply" in problem for problem in problems.values())
    for where in problems:
        assert f"{where}: skipped" in result.stderr
    assert summary["files"] == 5 and summary["bad_input"] == 4
    assert summary["forwarded"] == summary["delivered"] == 6
    expected = [error_event(number)["event_id"] for number in range(1, 7)]
    assert sorted(message_ids(sink.wait_for_messages(6))) == sorted(expected)


@pytest.mark.slow
def test_explain_of_json_nested_too_deeply_is_exit_2_with_the_file_and_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    result = run_cli("explain", str(deep), **UTF8)
    assert_no_traceback(result)
    assert result.returncode == 2
    assert f"{deep}:1: not valid JSON: nested too deeply" in result.stderr
    deep_line = tmp_path / "deep-line.jsonl"
    deep_line.write_text(json.dumps(error_event(1, user_id="u")) + "\n" + DEEP + "\n")
    result = run_cli("explain", str(deep_line), **UTF8)
    assert_no_traceback(result)
    assert result.returncode == 2 and f"{deep_line}:2:" in result.stderr


# -- an API-shaped event dated in year 1 -------------------------------------------------------------


@pytest.mark.slow
def test_an_api_event_dated_year_1_east_of_utc_goes_through_with_the_rest(sink: SegmentSink, tmp_path: Path) -> None:
    # 0001-01-01T00:00:00+05:00 is before year 1 in UTC: no datetime holds it (OverflowError).
    event = sentry_api_event("9fac2ceed9344f2bbfdd1fdacb0ed9b1", {"id": "4242"})
    event["dateCreated"] = "0001-01-01T00:00:00+05:00"
    del event["dateReceived"]
    api_file = tmp_path / "api-event.json"
    api_file.write_text(json.dumps(event, indent=2))
    later = write_json_lines(tmp_path / "later.jsonl", [error_event(1, user_id="u")])

    result = replay_json(sink, api_file, later)
    assert_no_traceback(result)
    assert result.returncode == 0, output_of(result)
    summary = json.loads(result.stdout)
    assert summary["forwarded"] == summary["delivered"] == 2 and summary["bad_input"] == 0
    messages = {message["messageId"]: message for message in sink.wait_for_messages(2)}
    assert messages.keys() == {event["id"], error_event(1)["event_id"]}
    # As the README says: the time of forwarding when the event's own cannot be read (in UTC).
    timestamp = datetime.fromisoformat(messages[event["id"]]["timestamp"])
    assert timestamp.year > 2000 and timestamp.utcoffset() is not None

    explained = run_cli("explain", str(api_file), **UTF8)
    assert_no_traceback(explained)
    assert explained.returncode == 0 and "would be forwarded" in explained.stdout


# -- lone surrogates in what is printed ----------------------------------------------------------------


def surrogate_events() -> List[Dict[str, Any]]:
    """Events whose printed text holds a lone surrogate: JSON's "\\ud800" is valid JSON, not UTF-8."""
    forwarded = error_event(1, user_id="u", event_id="\ud800", transaction="/caf\udce9")
    forwarded["exception"]["values"][-1]["type"] = "Checkout\udfffError"
    anonymous = error_event(2, user={"\ud800": "x"})
    return [forwarded, anonymous]


@pytest.mark.slow
def test_explain_prints_a_lone_surrogate_as_an_escape(tmp_path: Path) -> None:
    forwarded, anonymous = surrogate_events()
    path = tmp_path / "event.json"
    path.write_text(json.dumps(forwarded, indent=2))  # ensure_ascii: the file itself is ASCII
    result = run_cli("explain", str(path), **UTF8)
    assert_no_traceback(result)
    assert result.returncode == 0, output_of(result)
    assert "event \\ud800 " in result.stdout and "would be forwarded" in result.stdout
    path.write_text(json.dumps(anonymous))
    result = run_cli("explain", str(path), **UTF8)
    assert_no_traceback(result)
    assert result.returncode == 1, output_of(result)
    assert "its user has no id (it has \\ud800)" in result.stdout
    verdict = json.loads(run_cli("explain", str(path), "--json", **UTF8).stdout)
    assert verdict["rule"] == "no_user"


@pytest.mark.slow
def test_replay_prints_lone_surrogates_and_goes_on(tmp_path: Path) -> None:
    events = write_json_lines(tmp_path / "events.jsonl", [*surrogate_events(), error_event(3, user_id="u")])
    # A file name that is not UTF-8 (it reaches Python as a lone surrogate too), holding bad input.
    not_utf8_name = Path(os.fsdecode(bytes(tmp_path) + b"/notes-\xff.txt"))
    not_utf8_name.write_text("this is not JSON\n")
    later = write_json_lines(tmp_path / "later.jsonl", [error_event(4, user_id="u")])

    result = run_cli("replay", str(events), str(not_utf8_name), str(later), "--dry-run", "--json", **UTF8)
    assert_no_traceback(result)
    assert result.returncode == 1, output_of(result)  # the bad input
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(messages) == 3  # the surrogate one, and both after it
    assert messages[-1]["messageId"] == error_event(4)["event_id"]
    assert f"{tmp_path}/notes-\\udcff.txt:1: skipped: not valid JSON" in result.stderr
    summary = json.loads(result.stderr.splitlines()[-1])  # with --dry-run, the summary is on stderr
    assert summary["forwarded"] == 3 and summary["skipped"] == {"not_error": 0, "no_user": 1}
    assert problems_of(summary).keys() == {f"{not_utf8_name}:1"} and summary["bad_input"] == 1


# -- files of bad lines: linear time --------------------------------------------------------------------


def replay_seconds(path: Path, lines: int) -> float:
    """One ``replay --dry-run --json`` of the file, in this process; checks every line was counted."""
    settings = ReplaySettings(
        write_key=None, host=None, rate_limit=200, rules=RuleOptions(), dry_run=True, as_json=True, timeout=1.0
    )
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    code = run_replay([str(path)], settings, out, err)
    seconds = time.perf_counter() - started
    summary = json.loads(err.getvalue().splitlines()[-1])
    assert code == 1 and summary["bad_input"] == lines and summary["events"] == 0
    return seconds


@pytest.mark.slow
def test_a_file_of_bad_lines_is_read_in_linear_time(tmp_path: Path) -> None:
    # Each line opens an object the next line breaks: read as JSON documents, each one an error.
    # Python's JSONDecodeError counts lines from the start of its text: quadratic when it is the file.
    bad_line = '{"event_id": "9fac2ceed9344f2bbfdd1fdacb0ed9b1", "exception": {"values": [],'
    small, large = 8_000, 32_000
    files = {}
    for lines in (small, large):
        files[lines] = tmp_path / f"bad-{lines}.jsonl"
        files[lines].write_text((bad_line + "\n") * lines)
    times: Dict[int, List[float]] = {small: [], large: []}
    for _ in range(3):
        for lines, path in files.items():
            times[lines].append(replay_seconds(path, lines))
    ratio = min(times[large]) / min(times[small])
    # Linear: about 4; quadratic: about 16 (the code before: 13.5, 8,000 lines 2.1 s, 32,000 lines 28.6 s).
    assert ratio < 8, (ratio, times)


# -- sink ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sink_answers_and_saves_a_message_with_a_lone_surrogate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")
    output = tmp_path / "received.jsonl"
    sink = SinkProcess("--output", str(output))
    odd = track("user-\udfff", "Key\udfffError")
    odd["properties"]["\udfff"] = "\ud800"
    plain = track("user-2", "ValueError")
    try:
        # json.dumps escapes it ("\udfff"), as the integration sends it.
        assert post_to(sink.url, "/v1/batch", {"batch": [odd]}, WRITE_KEY, use_gzip=True) == 200
        assert post_to(sink.url, "/v1/track", plain, WRITE_KEY, use_gzip=False) == 200
        line = sink.wait_for_line(odd["messageId"])
        assert "user=user-\\udfff" in line
        sink.wait_for_line(plain["messageId"])
    finally:
        result = sink.stop(signal.SIGINT)
    assert_no_traceback(result)
    assert result.returncode == 0, output_of(result)
    assert "2 message(s) received in 2 request(s)" in result.stdout
    written = output.read_bytes().decode("utf-8")  # strict: valid UTF-8
    assert [json.loads(line) for line in written.splitlines()] == [odd, plain]


@pytest.mark.slow
def test_sink_json_prints_a_lone_surrogate_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")
    sink = SinkProcess("--json")
    odd = track("user-\udfff", "KeyError")
    try:
        assert post_to(sink.url, "/v1/batch", {"batch": [odd]}, WRITE_KEY, use_gzip=False) == 200
        line = sink.wait_for_line(odd["messageId"])
    finally:
        result = sink.stop(signal.SIGTERM)
    assert_no_traceback(result)
    assert result.returncode == 0, output_of(result)
    assert json.loads(line) == odd


@pytest.mark.slow
def test_sink_output_that_cannot_be_written_is_exit_1_as_its_help_says(tmp_path: Path) -> None:
    help_text = " ".join(run_cli("sink", "--help").stdout.split())
    assert "1 cannot listen or write" in help_text
    for path in ("/proc/forbidden/x", str(tmp_path)):
        result = run_cli("sink", "--port", "0", "--output", path, timeout=30)
        assert_no_traceback(result)
        assert result.returncode == 1, output_of(result)
        [line] = result.stderr.splitlines()
        assert line.startswith(f"sentry-segment sink: --output {path}: cannot write to it: ")


# -- replay's settings ---------------------------------------------------------------------------------


def test_replay_settings_never_show_the_hosts_credentials() -> None:
    settings = ReplaySettings(
        write_key=Secret(WRITE_KEY),
        host="https://user:s3cret-pass@segment-proxy.example:8443/base?token=t0ken",
        rate_limit=200,
        rules=RuleOptions(),
        dry_run=False,
        as_json=False,
        timeout=30.0,
    )
    for shown in (repr(settings), str(settings), f"{settings!r}"):
        assert "host='https://segment-proxy.example:8443/base'" in shown
        for secret in ("s3cret-pass", "user:", "t0ken", WRITE_KEY):
            assert secret not in shown
    assert settings.host is not None and "s3cret-pass" in settings.host  # the value itself is intact
