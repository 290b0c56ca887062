"""The Segment message built from a Sentry event dict, field by field: the pure functions of
``payload.py``, called directly (no client, no receiver: these run in milliseconds).

The end-to-end tests check the same fields through a real sentry-sdk client and receiver
(test_forwarding, test_privacy_and_properties, test_message_links_and_names); test_payload_edges
covers a ``properties`` hook's result and timestamps at the edges of what can be made UTC.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Iterator, Optional
from urllib.parse import urlsplit

import pytest

from sentry_segment_integration.payload import (
    EVENT_NAME,
    MAX_FIELD_CHARS,
    MAX_MESSAGE_BYTES,
    as_text,
    build_message,
    encoded_size,
    exception_type_of,
    header_values,
    is_forwardable_kind,
    links_of,
    user_id_of,
)
from sentry_segment_integration.version import __version__

NOW = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=timezone.utc)
EVENT_ID = "9ec79c33ec9942ab8353589fcb2e04dc"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
URL = "https://shop.example/checkout/pay?step=2&coupon=SPRING#summary"
REFERER = "https://shop.example/cart?token=abc123#top"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64)"
IP = "203.0.113.7"


def sentry_event(**changes: Any) -> Dict[str, Any]:
    """An error event as sentry-sdk sends it, with ``changes`` applied (a value of None removes the field)."""
    event: Dict[str, Any] = {
        "event_id": EVENT_ID,
        "timestamp": "2024-05-01T12:30:45.123456Z",
        "level": "error",
        "environment": "production",
        "release": "shop@1.2.3",
        "transaction": "/checkout/pay",
        "exception": {"values": [{"type": "KeyError", "value": "'coupon'"}, {"type": "CheckoutError"}]},
        "user": {"id": "u-42", "email": "ada@example.com", "ip_address": IP},
        "request": {
            "url": URL,
            "method": "POST",
            "query_string": "step=2&coupon=SPRING",
            "headers": {"User-Agent": USER_AGENT, "Referer": REFERER, "Cookie": "session=s3cr3t"},
        },
        "contexts": {"trace": {"trace_id": TRACE_ID, "span_id": SPAN_ID}},
    }
    for name, value in changes.items():
        if value is None:
            event.pop(name, None)
        else:
            event[name] = value
    return event


def build(event: Optional[Dict[str, Any]] = None, user_id: Optional[str] = "u-42", **options: Any) -> Dict[str, Any]:
    return build_message(sentry_event() if event is None else event, user_id, now=NOW, **options)


def without_query(url: str) -> str:
    """What a URL is with its query and fragment left out (the test's own reading of it)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


# --- the whole message ------------------------------------------------------------------------------


def test_a_full_event_gives_every_field_of_the_track_call() -> None:
    event = sentry_event()
    message = build(event)
    request, user = event["request"], event["user"]
    page_path = urlsplit(URL).path
    assert message == {
        "type": "track",
        "event": EVENT_NAME,
        "userId": "u-42",
        "messageId": event["event_id"],
        # Sentry's own form, cut to milliseconds and written with an offset.
        "timestamp": event["timestamp"][: len("2024-05-01T12:30:45.123")] + "+00:00",
        "properties": {
            "environment": event["environment"],
            "eventId": event["event_id"],
            "exceptionType": event["exception"]["values"][-1]["type"],  # the raised one: the last
            "release": event["release"],
            "transaction": event["transaction"],
            "level": event["level"],
            "userAgent": USER_AGENT,
            "page": {"url": URL, "method": request["method"], "search": request["query_string"], "referer": REFERER},
            "traceId": TRACE_ID,
            "spanId": SPAN_ID,
        },
        "context": {
            "library": {"name": "sentry-segment-integration", "version": __version__},
            "userAgent": USER_AGENT,
            "page": {"url": URL, "path": page_path, "search": request["query_string"], "referrer": REFERER},
            "ip": user["ip_address"],
        },
    }
    assert "ada@example.com" not in json.dumps(message)  # only the id of the user goes
    assert "s3cr3t" not in json.dumps(message)  # nor any header but the two


def test_the_message_is_strict_json_and_its_library_context_is_a_copy() -> None:
    first, second = build(), build()
    assert json.loads(json.dumps(first, allow_nan=False)) == first
    first["context"]["library"]["version"] = "changed"
    assert second["context"]["library"]["version"] == __version__


def test_an_event_without_a_request_has_no_page_and_no_user_agent() -> None:
    message = build(sentry_event(request=None))
    assert "page" not in message["properties"] and "userAgent" not in message["properties"]
    assert set(message["context"]) == {"library", "ip"}


@pytest.mark.parametrize("request_value", [{}, "GET /checkout", ["url"]], ids=["empty", "text", "list"])
def test_a_request_that_is_not_a_filled_mapping_is_left_out(request_value: Any) -> None:
    assert "page" not in build(sentry_event(request=request_value))["properties"]


def test_missing_fields_are_empty_strings_never_absent() -> None:
    event = {"exception": {"values": [{"type": "ValueError"}]}}
    properties = build(event, user_id="u-1")["properties"]
    assert properties == {
        "environment": "",
        "eventId": "",
        "exceptionType": "ValueError",
        "release": "",
        "transaction": "",
        "level": "",
    }


# --- who: userId and anonymousId ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_id", "anonymous_id", "expected"),
    [
        ("u-42", None, {"userId": "u-42"}),
        (None, "anon-7", {"anonymousId": "anon-7"}),
        ("u-42", "anon-7", {"userId": "u-42", "anonymousId": "anon-7"}),
        (None, None, {}),
    ],
)
def test_user_id_and_anonymous_id_are_sent_only_when_given(
    user_id: Optional[str], anonymous_id: Optional[str], expected: Dict[str, str]
) -> None:
    message = build(user_id=user_id, anonymous_id=anonymous_id)
    assert {name: message[name] for name in ("userId", "anonymousId") if name in message} == expected


class BrokenStr:
    def __str__(self) -> str:
        raise RuntimeError("no text")

    def __repr__(self) -> str:
        return "BrokenStr()"


class UserMapping(Mapping):
    """A user that is a Mapping but not a dict (as a before_send hook may leave)."""

    def __init__(self, **fields: Any) -> None:
        self._fields = fields

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"UserMapping({self._fields!r})"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({"id": "u-42"}, "u-42"),
        ({"id": 4242}, str(4242)),  # Segment's userId is a string
        ({"id": 12.5}, str(12.5)),
        ({"id": ""}, None),
        ({"id": None}, None),
        ({"id": True}, None),
        ({"id": {"nested": 1}}, None),
        ({"id": ["u-42"]}, None),
        ({"id": ("u", 42)}, None),
        ({"id": {"u-42"}}, None),
        ({"id": BrokenStr()}, None),
        ({"email": "ada@example.com"}, None),
        ({}, None),
        ("u-42", None),  # not a mapping
        (None, None),
        (UserMapping(id="u-m"), "u-m"),
        ({"id": "a\ud800b"}, "a\ufffdb"),  # a lone surrogate cannot be sent: U+FFFD
        ({"id": "x" * (MAX_FIELD_CHARS + 10)}, "x" * MAX_FIELD_CHARS),
    ],
    ids=repr,
)
def test_user_id_of_the_event(user: Any, expected: Optional[str]) -> None:
    event: Dict[str, Any] = {} if user is None else {"user": user}
    assert user_id_of(event) == expected


# --- the request: page, userAgent, referer, query string ----------------------------------------------


def test_without_query_strings_the_url_and_the_referer_lose_query_and_fragment() -> None:
    message = build(send_query_string=False)
    page, context_page = message["properties"]["page"], message["context"]["page"]
    assert page == {"url": without_query(URL), "method": "POST", "search": "", "referer": without_query(REFERER)}
    assert context_page == {
        "url": without_query(URL),
        "path": urlsplit(URL).path,
        "search": "",
        "referrer": without_query(REFERER),
    }
    text = json.dumps(message)
    assert "coupon" not in text and "token=abc123" not in text and "#" not in text


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("a=1&b=two", "a=1&b=two"),
        ([["a", "1"], ["b", "two"]], "a=1&b=two"),  # Sentry's API gives pairs
        ((("a", 1), ("b", None)), "a=1&b="),
        ({"a": "1", "b": 2}, "a=1&b=2"),
        ([["a", "1"], "junk", ["only-one"], ["b", "2"]], "a=1&b=2"),  # what is not a pair is skipped
        (None, ""),
        (12, "12"),
    ],
    ids=repr,
)
def test_the_query_string_in_any_of_its_shapes_is_the_search(query: Any, expected: str) -> None:
    event = sentry_event(request={"url": "https://shop.example/search", "query_string": query})
    message = build(event)
    assert message["properties"]["page"]["search"] == message["context"]["page"]["search"] == expected


@pytest.mark.parametrize(
    "headers",
    [
        {"user-agent": USER_AGENT, "REFERER": REFERER},
        [["User-Agent", USER_AGENT], ["Referer", REFERER]],
        (("USER-AGENT", USER_AGENT), ("referer", REFERER), ("broken",)),
        UserMapping(**{"User-Agent": USER_AGENT, "Referer": REFERER}),
    ],
    ids=["dict-any-case", "pairs", "tuple-pairs", "mapping"],
)
def test_headers_are_matched_whatever_their_case_and_shape(headers: Any) -> None:
    message = build(sentry_event(request={"url": URL, "headers": headers}))
    assert message["properties"]["userAgent"] == message["context"]["userAgent"] == USER_AGENT
    assert message["properties"]["page"]["referer"] == message["context"]["page"]["referrer"] == REFERER


def test_header_values_keeps_the_first_value_of_a_repeated_header_and_gives_empty_for_missing() -> None:
    pairs = [["Referer", "https://first.example/"], ["referer", "https://second.example/"]]
    assert header_values(pairs, "Referer", "User-Agent") == ("https://first.example/", "")
    assert header_values("not headers", "Referer") == ("",)
    assert header_values({"Referer": 42}, "Referer") == ("42",)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("https://shop.example/a/b?c=d", "/a/b"),
        ("https://shop.example", ""),
        ("/relative/only", "/relative/only"),
        ("http://[::1/broken", ""),  # urlsplit refuses it: no path rather than an error
    ],
)
def test_the_page_path_is_the_urls_path(url: str, path: str) -> None:
    message = build(sentry_event(request={"url": url}))
    assert message["context"]["page"]["path"] == path
    assert message["properties"]["page"]["url"] == message["context"]["page"]["url"] == url


# --- the IP address -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "send_ip", "expected"),
    [
        ({"id": "u", "ip_address": IP}, True, IP),
        ({"id": "u", "ip_address": IP}, False, None),
        ({"id": "u"}, True, None),
        ({"id": "u", "ip_address": ""}, True, None),
        ({"id": "u", "ip_address": None}, True, None),
        ("u", True, None),
    ],
)
def test_context_ip_is_the_users_ip_only_with_send_ip(user: Any, send_ip: bool, expected: Optional[str]) -> None:
    assert build(sentry_event(user=user), send_ip=send_ip)["context"].get("ip") == expected


# --- the event name, the exception type, what is forwardable ------------------------------------------


def test_the_event_name_is_the_messages_event() -> None:
    assert build(event_name="Checkout Error")["event"] == "Checkout Error"
    assert build()["event"] == EVENT_NAME == "Error Captured"


@pytest.mark.parametrize(
    ("exception", "expected"),
    [
        ({"values": [{"type": "KeyError"}, {"type": "CheckoutError"}]}, "CheckoutError"),
        ([{"type": "KeyError"}, {"type": "CheckoutError"}], "CheckoutError"),  # the list itself
        ({"values": [{"type": "KeyError"}, "not a mapping"]}, ""),
        ({"values": [{"value": "no type"}]}, ""),
        ({"values": []}, ""),
        ({"values": "KeyError"}, ""),
        ({"values": [{"type": 42}]}, "42"),
        ("KeyError", ""),
    ],
    ids=repr,
)
def test_the_exception_type_is_that_of_the_last_exception(exception: Any, expected: str) -> None:
    event = {"exception": exception}
    assert exception_type_of(event) == expected
    assert build(sentry_event(exception=exception))["properties"]["exceptionType"] == expected


@pytest.mark.parametrize(
    ("event", "forwardable", "forwardable_with_messages"),
    [
        ({"exception": {"values": [{"type": "KeyError"}]}}, True, True),
        ({"exception": [{"type": "KeyError"}]}, True, True),
        ({"logentry": {"message": "low stock"}}, False, True),
        ({"exception": {"values": []}}, False, True),
        ({"type": "transaction", "exception": {"values": [{"type": "KeyError"}]}}, False, False),
        ({"type": "check_in"}, False, False),
        ({"type": "", "exception": {"values": [{"type": "KeyError"}]}}, True, True),  # an empty type: none
    ],
    ids=repr,
)
def test_only_untyped_events_are_forwardable_errors_with_exception_data_unless_messages_are_included(
    event: Dict[str, Any], forwardable: bool, forwardable_with_messages: bool
) -> None:
    assert is_forwardable_kind(event) is forwardable
    assert is_forwardable_kind(event, include_messages=True) is forwardable_with_messages


# --- the links: sentryUrl, traceId, spanId ------------------------------------------------------------

PREFIX = "https://acme.sentry.io/organizations/acme/projects/42/events/"


def test_sentry_url_is_the_prefix_the_event_id_and_a_slash() -> None:
    assert build(event_url_prefix=PREFIX)["properties"]["sentryUrl"] == PREFIX + EVENT_ID + "/"
    upper = build(sentry_event(event_id=EVENT_ID.upper()), event_url_prefix=PREFIX)["properties"]
    assert upper["sentryUrl"] == PREFIX + EVENT_ID + "/"  # hex ids are lowercase in links
    assert upper["eventId"] == EVENT_ID.upper()  # the id itself is sent as the event had it


@pytest.mark.parametrize("event_id", ["not-an-event-id", EVENT_ID[:-1], EVENT_ID + "0", "0" * 32, "g" * 32, EVENT_ID])
def test_sentry_url_needs_an_event_id_of_32_hex_digits_not_all_zeros(event_id: str) -> None:
    properties = build(sentry_event(event_id=event_id), event_url_prefix=PREFIX)["properties"]
    well_formed = bool(re.fullmatch(r"[0-9a-f]{32}", event_id)) and set(event_id) != {"0"}
    assert ("sentryUrl" in properties) is well_formed
    assert properties["eventId"] == event_id


def test_no_prefix_no_sentry_url() -> None:
    assert "sentryUrl" not in build()["properties"]


@pytest.mark.parametrize(
    ("contexts", "expected"),
    [
        (
            {"trace": {"trace_id": TRACE_ID.upper(), "span_id": SPAN_ID.upper()}},
            {"traceId": TRACE_ID, "spanId": SPAN_ID},
        ),
        ({"trace": {"trace_id": TRACE_ID, "span_id": None}}, {"traceId": TRACE_ID}),
        ({"trace": {"span_id": SPAN_ID}}, {}),
        ({"trace": "4bf92f35"}, {}),
        ("trace", {}),
        ({}, {}),
    ],
    ids=["uppercase", "no-span", "span-alone", "trace-not-a-mapping", "contexts-not-a-mapping", "no-trace"],
)
def test_trace_and_span_ids_come_from_the_trace_context(contexts: Any, expected: Dict[str, str]) -> None:
    event = sentry_event(contexts=contexts)
    assert links_of(event, EVENT_ID, None) == expected
    properties = build(event)["properties"]
    assert {name: properties[name] for name in ("traceId", "spanId") if name in properties} == expected


# --- messageId and timestamp --------------------------------------------------------------------------


def test_the_message_id_is_the_event_id_so_segment_de_duplicates_a_retry() -> None:
    assert build()["messageId"] == EVENT_ID
    first, second = build(sentry_event(event_id=None)), build(sentry_event(event_id=None))
    assert re.fullmatch(r"[0-9a-f]{32}", first["messageId"])  # an id of its own
    assert first["messageId"] != second["messageId"]
    assert first["properties"]["eventId"] == ""


def iso_utc_millis(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds")


EPOCH = 1714566645.5  # a moment, in seconds since 1970


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2024-05-01T12:30:45.123456Z", "2024-05-01T12:30:45.123+00:00"),
        ("2024-05-01T12:30:45Z", "2024-05-01T12:30:45.000+00:00"),
        ("2024-05-01T12:30:45.5Z", "2024-05-01T12:30:45.500+00:00"),  # 1 to 6 fraction digits are read
        ("2024-05-01T12:30:45.1234567Z", "2024-05-01T12:30:45.123+00:00"),
        ("2024-05-01T14:30:45.123+02:00", "2024-05-01T12:30:45.123+00:00"),
        ("2024-05-01T12:30:45", "2024-05-01T12:30:45.000+00:00"),  # no offset: UTC, as Sentry means it
        (EPOCH, iso_utc_millis(datetime.fromtimestamp(EPOCH, tz=timezone.utc))),
        (int(EPOCH), iso_utc_millis(datetime.fromtimestamp(int(EPOCH), tz=timezone.utc))),
        (datetime(2024, 5, 1, 12, 30, 45, 123999, tzinfo=timezone.utc), "2024-05-01T12:30:45.123+00:00"),
    ],
    ids=repr,
)
def test_the_timestamp_is_the_events_own_in_utc_with_milliseconds(timestamp: Any, expected: str) -> None:
    assert build(sentry_event(timestamp=timestamp))["timestamp"] == expected


@pytest.mark.parametrize(
    "timestamp", [None, "", "yesterday", "2024-02-30T00:00:00Z", True, [2024, 5, 1], float("nan"), 10**30]
)
def test_a_timestamp_that_cannot_be_read_is_the_time_of_building(timestamp: Any) -> None:
    message = build(sentry_event(timestamp=timestamp))  # None: the event has no timestamp
    assert message["timestamp"] == iso_utc_millis(NOW)


def test_without_now_the_time_of_building_is_the_current_time() -> None:
    before = datetime.now(timezone.utc)
    sent = datetime.fromisoformat(build_message(sentry_event(timestamp="never"), "u-1")["timestamp"])
    after = datetime.now(timezone.utc)
    assert before - timedelta(milliseconds=1) <= sent <= after


# --- text fields and the size limit -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        ("shop", "shop"),
        (3, "3"),
        (1.5, "1.5"),
        (False, "False"),
        ({"a": "é"}, json.dumps({"a": "é"}, ensure_ascii=False)),
        (["x", 1], json.dumps(["x", 1])),
        (BrokenStr(), ""),
        ("\udcff", "\ufffd"),
        ("y" * (MAX_FIELD_CHARS * 2), "y" * MAX_FIELD_CHARS),
    ],
    ids=repr,
)
def test_as_text_of_any_field(value: Any, expected: str) -> None:
    assert as_text(value) == expected
    assert build(sentry_event(release=value))["properties"]["release"] == expected


def test_a_long_field_is_cut_to_its_most_characters() -> None:
    long = "r" * (MAX_FIELD_CHARS + 500)
    properties = build(sentry_event(release=long, environment=long))["properties"]
    assert properties["release"] == properties["environment"] == long[:MAX_FIELD_CHARS]


def test_a_message_of_huge_fields_fits_under_32_kb_with_every_field_and_its_links() -> None:
    # Characters that JSON escapes to 6 bytes each: every field at its most is far over the limit.
    wide = "\u2603" * (MAX_FIELD_CHARS * 2)
    headers = {"User-Agent": wide, "Referer": "https://shop.example/" + wide}
    request = {"url": "https://shop.example/" + wide, "method": wide, "query_string": wide, "headers": headers}
    event = sentry_event(
        environment=wide, release=wide, transaction=wide, level=wide, request=request, exception=[{"type": wide}]
    )
    # Six of the fields alone, each at its most characters, are over the limit.
    assert 6 * len(json.dumps(as_text(wide))) > MAX_MESSAGE_BYTES
    message = build(event, event_url_prefix=PREFIX)
    assert encoded_size(message) <= MAX_MESSAGE_BYTES < 32 * 1024
    assert len(json.dumps(message).encode("utf-8")) == encoded_size(message)
    properties = message["properties"]
    assert set(properties) == {
        "environment",
        "eventId",
        "exceptionType",
        "release",
        "transaction",
        "level",
        "userAgent",
        "page",
        "sentryUrl",
        "traceId",
        "spanId",
    }
    for name in ("environment", "release", "transaction", "level", "userAgent", "exceptionType"):
        assert 0 < len(properties[name]) < MAX_FIELD_CHARS and wide.startswith(properties[name])
    # The links and the ids are never cut: a cut one would point elsewhere.
    assert properties["sentryUrl"] == PREFIX + EVENT_ID + "/"
    assert (properties["traceId"], properties["spanId"]) == (TRACE_ID, SPAN_ID)
    assert message["messageId"] == properties["eventId"] == EVENT_ID


def test_a_message_already_under_the_limit_is_not_cut() -> None:
    event = sentry_event(release="r" * MAX_FIELD_CHARS, environment="e" * MAX_FIELD_CHARS)
    message = build(event)
    assert message["properties"]["release"] == "r" * MAX_FIELD_CHARS
    assert message["properties"]["environment"] == "e" * MAX_FIELD_CHARS
    assert encoded_size(message) < MAX_MESSAGE_BYTES
