"""The message's link back to Sentry (`sentry_url`), trace ids, and the event name (`event_name`):
end to end through a real sentry-sdk client and the local receiver, and through explain/replay."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict

import pytest
import sentry_sdk

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.settings import ConfigurationError
from sentry_segment_integration.testing import SegmentSink
from support import WRITE_KEY, error_as_user, make_integration, run_cli, start_transaction

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")


def one_message(sink: SegmentSink) -> Dict[str, Any]:
    sentry_sdk.flush(5)
    messages = sink.wait_for_messages(1)
    assert len(messages) == 1, messages
    return messages[0]


@pytest.mark.parametrize(
    ("sentry_url", "dsn", "expected_prefix"),
    [
        # sentry.io: the customer domain; Sentry takes the organization from the subdomain.
        (
            "https://acme.sentry.io",
            "https://key@o123.ingest.us.sentry.io/4505",
            "https://acme.sentry.io/organizations/acme/projects/4505/events/",
        ),
        (
            "https://acme.sentry.io/organizations/acme/",
            "https://key@o123.ingest.de.sentry.io/77",
            "https://acme.sentry.io/organizations/acme/projects/77/events/",
        ),
        # self-hosted: the base URL (here with a path prefix and a port) and the organization's slug.
        (
            "https://sentry.example.com/organizations/shop-team",
            "https://key@sentry.example.com/9",
            "https://sentry.example.com/organizations/shop-team/projects/9/events/",
        ),
        (
            " http://Tools.Example.com:9000/sentry/organizations/sentry/ \n",
            "http://key@tools.example.com:9000/sentry/12",
            "http://tools.example.com:9000/sentry/organizations/sentry/projects/12/events/",
        ),
    ],
)
def test_sentry_url_opens_the_event(init_sentry, sink: SegmentSink, sentry_url: str, dsn: str, expected_prefix: str):
    init_sentry(make_integration(sink, sentry_url=sentry_url), dsn=dsn)
    event_id = error_as_user({"id": "u-1"})
    message = one_message(sink)
    assert message["properties"]["sentryUrl"] == f"{expected_prefix}{event_id}/"
    assert message["messageId"] == event_id


def test_no_sentry_url_by_default(init_sentry, sink: SegmentSink) -> None:
    init_sentry(make_integration(sink))
    error_as_user({"id": "u-1"})
    assert "sentryUrl" not in one_message(sink)["properties"]


def test_an_event_id_edited_into_something_else_gets_no_link(init_sentry, sink: SegmentSink) -> None:
    def odd_id(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        event["event_id"] = "not-an-event-id"
        return event

    init_sentry(make_integration(sink, sentry_url="https://acme.sentry.io"), before_send=odd_id)
    error_as_user({"id": "u-1"})
    message = one_message(sink)
    assert message["properties"]["eventId"] == "not-an-event-id"
    assert "sentryUrl" not in message["properties"]


@pytest.mark.parametrize(
    "bad",
    [
        "acme.sentry.io",  # no scheme
        "ftp://acme.sentry.io",
        "https://sentry.io",  # names no organization
        "https://sentry.example.com",  # self-hosted without /organizations/<slug>
        "https://sentry.example.com/organizations/",
        "https://sentry.example.com/organizations/ac me",
        "https://sentry.example.com/organizations/acme?x=1",
        "https://sentry.example.com/organizations/acme#top",
        "https://admin:hunter2@sentry.example.com/organizations/acme",
        "https://acme.sentry.io/organizations/other",  # two organizations
        "https://acme.sentry.io/issues/",
        "https://[::1/organizations/acme",
        "",
        42,
        b"https://acme.sentry.io",
    ],
)
def test_bad_sentry_url_is_a_clear_error(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="'sentry_url'") as raised:
        SegmentIntegration(write_key=WRITE_KEY, sentry_url=bad)
    assert isinstance(raised.value, ValueError)
    assert "hunter2" not in str(raised.value)


def test_trace_and_span_ids_come_from_the_trace_context(init_sentry, sink: SegmentSink) -> None:
    sentry = init_sentry(make_integration(sink))
    error_as_user({"id": "u-1"})
    message = one_message(sink)
    trace = sentry.events[0]["contexts"]["trace"]
    assert HEX32.fullmatch(message["properties"]["traceId"])
    assert HEX16.fullmatch(message["properties"]["spanId"])
    assert message["properties"]["traceId"] == trace["trace_id"]
    assert message["properties"]["spanId"] == trace["span_id"]


def test_an_error_inside_a_transaction_carries_its_trace(init_sentry, sink: SegmentSink) -> None:
    sentry = init_sentry(make_integration(sink), traces_sample_rate=1.0)
    with start_transaction("checkout", "http.server"):
        error_as_user({"id": "u-1"})
    message = one_message(sink)
    error_event = next(event for event in sentry.events if event.get("type") is None)
    assert message["properties"]["traceId"] == error_event["contexts"]["trace"]["trace_id"]
    assert message["properties"]["spanId"] == error_event["contexts"]["trace"]["span_id"]


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        ({"trace_id": "A" * 32, "span_id": "B" * 16}, {"traceId": "a" * 32, "spanId": "b" * 16}),
        ({"trace_id": "a" * 32, "span_id": "short"}, {"traceId": "a" * 32}),
        ({"trace_id": "0" * 32, "span_id": "b" * 16}, {}),  # all zeros: W3C's invalid id
        ({"trace_id": "g" * 32, "span_id": "b" * 16}, {}),
        ({"trace_id": 12345, "span_id": "b" * 16}, {}),
        ({"span_id": "b" * 16}, {}),  # a span id alone joins nothing
        ({"trace_id": "a" * 31, "span_id": "b" * 16}, {}),  # too short
    ],
)
def test_malformed_trace_ids_are_left_out(init_sentry, sink: SegmentSink, trace: Any, expected: Dict[str, str]):
    def set_trace(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        event.setdefault("contexts", {})["trace"] = trace
        return event

    init_sentry(make_integration(sink), before_send=set_trace)
    error_as_user({"id": "u-1"})
    properties = one_message(sink)["properties"]
    assert {key: properties[key] for key in ("traceId", "spanId") if key in properties} == expected


def test_links_are_never_cut_to_fit_and_a_hook_cannot_replace_them(init_sentry, sink: SegmentSink) -> None:
    def huge(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        # Every standard field at its longest, in characters that cost 6 bytes each.
        for name in ("environment", "release", "transaction", "level"):
            event[name] = "\u2603" * 5000
        event["request"] = {
            "url": "https://shop.example/" + "\u2603" * 5000,
            "headers": {"User-Agent": "\u2603" * 5000},
        }
        return event

    def hook(event: Any, hint: Any) -> Dict[str, Any]:
        return {"sentryUrl": "https://evil.example", "traceId": "x", "plan": "pro"}

    init_sentry(make_integration(sink, sentry_url="https://acme.sentry.io", properties=hook), before_send=huge)
    event_id = error_as_user({"id": "u-1"})
    message = one_message(sink)
    properties = message["properties"]
    assert len(json.dumps(message)) <= 32 * 1024
    assert len(properties["environment"]) < 5000  # the other fields were cut to fit
    assert properties["sentryUrl"] == f"https://acme.sentry.io/organizations/acme/projects/42/events/{event_id}/"
    assert HEX32.fullmatch(properties["traceId"]) and HEX16.fullmatch(properties["spanId"])


def test_event_name_is_sent(init_sentry, sink: SegmentSink) -> None:
    init_sentry(make_integration(sink, event_name="  Checkout Error  "))
    error_as_user({"id": "u-1"})
    assert one_message(sink)["event"] == "Checkout Error"


def test_default_event_name(init_sentry, sink: SegmentSink) -> None:
    init_sentry(make_integration(sink))
    error_as_user({"id": "u-1"})
    assert one_message(sink)["event"] == "Error Captured"


def test_event_name_of_200_characters_is_accepted() -> None:
    SegmentIntegration(write_key=WRITE_KEY, event_name="é" * 200)


@pytest.mark.parametrize(
    "bad", ["", "   ", "x" * 201, "Error\nCaptured", "tab\there", "\ud800", None, 42, ["Error Captured"]]
)
def test_bad_event_name_is_a_clear_error(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="option 'event_name' must be a non-empty string of at most 200"):
        SegmentIntegration(write_key=WRITE_KEY, event_name=bad)


# -- explain and replay -------------------------------------------------------------------------


API_EVENT = {
    "eventID": "52c1a3f591d04f74b24b226cf7e7b5e8",
    "projectID": "4505",
    "dateCreated": "2026-11-26T15:29:40.866Z",
    "user": {"id": "u-7"},
    "contexts": {"trace": {"trace_id": "ab" * 16, "span_id": "cd" * 8}},
    "entries": [{"type": "exception", "data": {"values": [{"type": "KeyError"}]}}],
}


@pytest.mark.slow
def test_explain_shows_the_same_message(tmp_path: Path) -> None:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(API_EVENT))
    result = run_cli(
        "explain", str(path), "--json", "--event-name", "Backend Error", "--sentry-url", "https://acme.sentry.io"
    )
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)["message"]
    assert message["event"] == "Backend Error"
    assert message["properties"]["sentryUrl"] == (
        "https://acme.sentry.io/organizations/acme/projects/4505/events/52c1a3f591d04f74b24b226cf7e7b5e8/"
    )
    assert message["properties"]["traceId"] == "ab" * 16
    assert message["properties"]["spanId"] == "cd" * 8


@pytest.mark.slow
def test_replay_project_id_option_and_self_hosted_link(tmp_path: Path) -> None:
    event = {key: value for key, value in API_EVENT.items() if key != "projectID"}
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(event) + "\n")
    link = "https://sentry.example.com/organizations/shop"
    without_project = run_cli("replay", "--dry-run", str(path), "--sentry-url", link)
    assert "sentryUrl" not in json.loads(without_project.stdout.splitlines()[0])["properties"]
    result = run_cli("replay", "--dry-run", str(path), "--sentry-url", link, "--project-id", "9")
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout.splitlines()[0])
    assert message["properties"]["sentryUrl"] == (
        "https://sentry.example.com/organizations/shop/projects/9/events/52c1a3f591d04f74b24b226cf7e7b5e8/"
    )
    assert message["event"] == "Error Captured"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arguments", "option"),
    [
        (["--event-name", "  "], "--event-name"),
        (["--event-name", "x" * 201], "--event-name"),
        (["--sentry-url", "https://sentry.example.com"], "--sentry-url"),
        (["--project-id", "abc"], "--project-id"),
    ],
)
def test_explain_bad_options_are_usage_errors(tmp_path: Path, arguments: Any, option: str) -> None:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(API_EVENT))
    result = run_cli("explain", str(path), *arguments)
    assert result.returncode == 2
    assert f"argument {option}" in result.stderr
    assert "Traceback" not in result.stderr
