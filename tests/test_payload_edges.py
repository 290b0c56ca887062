"""Edges of the message builder: a ``properties`` hook's result (its size, NaN and the infinities,
dicts that cannot be read as they are, lone surrogates) and timestamps that cannot be made UTC.

Each is tested on the pure builder and end to end, through a real sentry-sdk client and a real
Segment-compatible HTTP server.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import statistics
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone, tzinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import sentry_sdk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.payload import (
    MAX_HOOK_DEPTH,
    MAX_MESSAGE_BYTES,
    PROPERTIES_TRUNCATED,
    build_message,
    encoded_size,
)
from sentry_segment_integration.testing import SegmentSink
from support import WRITE_KEY, error_as_user, make_integration

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
NOW_TEXT = "2026-01-02T03:04:05.678+00:00"
EVENT: Dict[str, Any] = {
    "event_id": "9ec79c33ec9942ab8353589fcb2e04dc",
    "timestamp": "2024-05-01T12:30:45.123456Z",
    "environment": "production",
    "release": "shop@1.2.3",
    "transaction": "/checkout",
    "level": "error",
    "exception": {"values": [{"type": "KeyError", "value": "plan"}]},
    "user": {"id": "u-1", "ip_address": "203.0.113.7"},
    "request": {
        "url": "https://shop.example/checkout?step=2",
        "method": "POST",
        "query_string": "step=2",
        "headers": {"User-Agent": "Mozilla/5.0", "Referer": "https://shop.example/cart"},
    },
}
PLAIN = build_message(EVENT, "u-1", now=NOW)
STANDARD = PLAIN["properties"]
# What a real capture adds beside them: Sentry gives every event a trace context.
TRACE_FIELDS = {"traceId", "spanId"}


def build(extra: Any, event: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return build_message(event or EVENT, "u-1", now=NOW, extra_properties=extra)


def hook_part(properties: Mapping[str, Any], standard: Mapping[str, Any] = STANDARD) -> Dict[str, Any]:
    """What the hook added to ``properties`` (the marker included)."""
    return {name: value for name, value in properties.items() if name not in standard and name not in TRACE_FIELDS}


def refuse_constant(word: str) -> Any:
    raise ValueError(f"not JSON: {word}")


def strict_loads(text: str) -> Any:
    """RFC 8259 JSON only: the bare words NaN, Infinity and -Infinity are refused."""
    return json.loads(text, parse_constant=refuse_constant)


def assert_wire_ready(message: Dict[str, Any]) -> None:
    """Strict JSON, well-formed Unicode (a UTF-8 encoder takes it), within Segment's 32 KB."""
    text = json.dumps(message, allow_nan=False)
    assert strict_loads(text) == message
    json.dumps(message, allow_nan=False, ensure_ascii=False).encode("utf-8")  # no lone surrogate
    assert len(text.encode()) == encoded_size(message) <= MAX_MESSAGE_BYTES < 32 * 1024


def assert_standard_fields_intact(message: Dict[str, Any]) -> None:
    assert {name: message["properties"][name] for name in STANDARD} == STANDARD
    assert {name: value for name, value in message.items() if name != "properties"} == {
        name: value for name, value in PLAIN.items() if name != "properties"
    }


# --- 1. A big hook result is fitted in linear time --------------------------------------------------


def seconds_per_run(run: Callable[[], Any], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        run()
    return (time.perf_counter() - start) / number


def many_entries(shape: str, count: int) -> Dict[str, Any]:
    if shape == "short strings":
        return {f"key{index:05d}": f"value {index}" for index in range(count)}
    if shape == "integers":
        return {f"key{index:05d}": index for index in range(count)}
    return {f"key{index:05d}": {"index": index, "flags": [True, None], "name": "x"} for index in range(count)}


# A plain build takes some microseconds; any build must read (most of) the 32 KB it sends, some
# thousands of entries at a fraction of a microsecond each. Fitting by halving strings and encoding
# the whole message each round took seconds to minutes for this: a ratio of 10**6 and more.
PLAIN_BUILD_RATIO = 2500
# Linear: ten times the entries cost at most about ten times as much, with room for noise.
TEN_TIMES_RATIO = 30


@pytest.mark.parametrize("shape", ["short strings", "integers", "small objects"])
def test_a_10000_entry_hook_result_costs_a_bounded_multiple_of_a_plain_build(shape: str) -> None:
    extra = many_entries(shape, 10_000)
    plain_times, hooked_times = [], []
    for _ in range(7):  # interleaved, so that a busy machine slows both alike
        plain_times.append(seconds_per_run(lambda: build_message(EVENT, "u-1", now=NOW), 200))
        hooked_times.append(seconds_per_run(lambda: build(extra), 1))
    ratio = statistics.median(hooked_times) / statistics.median(plain_times)
    assert ratio < PLAIN_BUILD_RATIO, f"a 10,000-entry build costs {ratio:.0f} plain builds"
    message = build(extra)
    assert_wire_ready(message)
    assert message["properties"][PROPERTIES_TRUNCATED] is True


def test_fitting_ten_times_the_entries_costs_about_ten_times_as_much() -> None:
    fits, fitted = many_entries("short strings", 1_000), many_entries("short strings", 10_000)
    assert PROPERTIES_TRUNCATED not in build(fits)["properties"]  # 1,000 fit whole: no fitting at all
    fits_times, fitted_times = [], []
    for _ in range(7):
        fits_times.append(seconds_per_run(lambda: build(fits), 3))
        fitted_times.append(seconds_per_run(lambda: build(fitted), 1))
    ratio = statistics.median(fitted_times) / statistics.median(fits_times)
    assert ratio < TEN_TIMES_RATIO, f"10,000 entries cost {ratio:.1f} times 1,000"


def test_many_short_entries_keep_a_prefix_in_the_hooks_order() -> None:
    extra = many_entries("short strings", 10_000)
    message = build(extra)
    assert_wire_ready(message)
    assert_standard_fields_intact(message)
    added = hook_part(message["properties"])
    assert added.pop(PROPERTIES_TRUNCATED) is True
    assert list(added) == list(extra)[: len(added)]  # in the hook's order, whole, until the room is spent
    assert all(added[name] == extra[name] for name in added)
    assert len(added) > 1000
    assert encoded_size(message) > MAX_MESSAGE_BYTES - 64  # the room is used, not wasted


def test_a_hook_result_that_fits_goes_as_it_is() -> None:
    extra = {"plan": "pro", "seats": 12, "ratio": 0.25, "trial": False, "tags": {"region": "eu"}, "ids": [1, "2"]}
    message = build(extra)
    assert_wire_ready(message)
    assert hook_part(message["properties"]) == extra  # and no propertiesTruncated


def test_long_strings_are_cut_to_one_length_when_that_keeps_every_entry() -> None:
    extra = {
        "first": "a" * 30_000,
        "second": {"inner": "b" * 30_000, "short": "kept"},
        "count": 7,
        "listed": ["c" * 100],
        "medium": "d" * 2_000,
    }
    message = build(extra)
    assert_wire_ready(message)
    assert_standard_fields_intact(message)
    added = hook_part(message["properties"])
    assert set(added) == {*extra, PROPERTIES_TRUNCATED}
    assert added["count"] == 7 and added["listed"] == ["c" * 100] and added["second"]["short"] == "kept"
    assert added["medium"] == "d" * 2_000  # shorter than the common length: whole
    first, inner = added["first"], added["second"]["inner"]
    assert len(first) == len(inner) > 10_000
    assert extra["first"].startswith(first) and extra["second"]["inner"].startswith(inner)


def test_when_some_entry_must_be_left_out_whole_entries_go_in_order() -> None:
    extra = {"ids": list(range(20_000)), "plan": "pro", "blob": "x" * 50_000, "seats": 3}
    message = build(extra)
    assert_wire_ready(message)
    # ids cannot be cut (numbers) and does not fit: nothing is cut then, and what fits whole goes.
    assert hook_part(message["properties"]) == {"plan": "pro", "seats": 3, PROPERTIES_TRUNCATED: True}


def test_non_ascii_strings_are_cut_on_character_boundaries() -> None:
    extra = {
        "accents": "é" * 20_000,
        "emoji": "😀" * 20_000,
        "escapes": 'q"\\\n\x01' * 5_000,
        "lone": "\ud800x" * 9_000,
    }
    message = build(extra)
    assert_wire_ready(message)
    added = hook_part(message["properties"])
    assert set(added) == {*extra, PROPERTIES_TRUNCATED}
    for name in ("accents", "emoji", "escapes"):
        assert added[name] and extra[name].startswith(added[name])
    assert added["lone"].startswith("\ufffdx\ufffdx")


def test_the_hook_cannot_replace_standard_fields_or_the_marker() -> None:
    extra = {"environment": "x", "eventId": "y", "page": "z", "userAgent": "u", PROPERTIES_TRUNCATED: "mine", "a": 1}
    message = build(extra)
    assert_standard_fields_intact(message)
    assert hook_part(message["properties"]) == {"a": 1}


def test_a_hook_result_of_10000_entries_end_to_end(init_sentry, sink: SegmentSink) -> None:
    extra = many_entries("short strings", 10_000)
    integration = make_integration(sink, properties=lambda event, hint: extra)
    init_sentry(integration)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    [message] = sink.wait_for_messages(1)
    properties = message["properties"]
    assert properties["exceptionType"] == "RuntimeError"
    assert properties[PROPERTIES_TRUNCATED] is True
    added = [name for name in properties if name.startswith("key")]
    assert added == list(extra)[: len(added)] and len(added) > 1000
    assert len(json.dumps(message).encode()) < 32 * 1024
    assert integration.stats()["forwarded"] == 1 and integration.stats()["internal_error"] == 0


# --- 2. NaN and the infinities are not JSON ----------------------------------------------------------

NON_FINITE = {
    "nan": math.nan,
    "inf": math.inf,
    "minus_inf": -math.inf,
    "listed": [1.5, math.nan, [math.inf]],
    "nested": {"x": -math.inf, "y": 2.0, "deeper": {"z": math.nan}},
    "paired": (math.nan, 1),
    "fine": 0.5,
}
NON_FINITE_SENT = {
    "nan": None,
    "inf": None,
    "minus_inf": None,
    "listed": [1.5, None, [None]],
    "nested": {"x": None, "y": 2.0, "deeper": {"z": None}},
    "paired": [None, 1],
    "fine": 0.5,
}


def test_non_finite_floats_are_sent_as_null() -> None:
    message = build(NON_FINITE)
    assert_wire_ready(message)
    assert hook_part(message["properties"]) == NON_FINITE_SENT


def test_encoded_size_is_strict_json() -> None:
    with pytest.raises(ValueError):
        encoded_size({"x": math.nan})
    assert encoded_size({"x": None}) == len('{"x": null}')


def test_non_finite_floats_end_to_end(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, properties=lambda event, hint: NON_FINITE)
    init_sentry(integration)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    [message] = sink.wait_for_messages(1)
    json.dumps(sink.messages, allow_nan=False)  # the sink's lenient parser found no NaN either
    assert hook_part(message["properties"]) == NON_FINITE_SENT


class StrictReceiver:
    """A receiver as strict as Segment's API, in front of a sink: a body that is not RFC 8259 JSON
    in UTF-8 (a bare NaN or Infinity, say) is refused with a 400, the whole batch with it; any
    other is passed on to the sink as it came, and the sink's answer back."""

    def __init__(self, upstream: SegmentSink) -> None:
        self.bodies: List[bytes] = []
        self.refused: List[str] = []
        self.in_flight = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.bodies.append(raw)
                receiver.in_flight.set()
                try:
                    strict_loads(raw.decode("utf-8"))
                except ValueError as error:  # UnicodeDecodeError is one too
                    receiver.refused.append(str(error))
                    return self.answer(400, b'{"code": "invalid_request", "message": "Invalid JSON"}')
                passed = {name: value for name, value in self.headers.items() if name.lower() != "host"}
                connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=30)
                try:
                    connection.request("POST", self.path, body=raw, headers=passed)
                    answer = connection.getresponse()
                    self.answer(answer.status, answer.read())
                finally:
                    connection.close()

            def answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> StrictReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def test_a_batch_with_non_finite_floats_is_strict_json_and_every_message_in_it_arrives(
    init_sentry, sink: SegmentSink
) -> None:
    def hook(event: Mapping[str, Any], hint: Any) -> Dict[str, Any]:
        user_id = event["user"]["id"]
        return {"user": user_id, **(NON_FINITE if user_id == "u-2" else {"score": 1.0})}

    with StrictReceiver(sink) as receiver:
        integration = SegmentIntegration(
            write_key=WRITE_KEY,
            host=receiver.url,
            organization=f"test-org-{uuid.uuid4().hex}",
            upload_interval=0.05,
            properties=hook,
        )
        init_sentry(integration)
        sink.delay_next(0.5)  # the first batch stays in flight, so the next three wait and go as one
        error_as_user({"id": "u-0"})
        assert receiver.in_flight.wait(5)
        for user_id in ("u-1", "u-2", "u-3"):
            error_as_user({"id": user_id})
        sentry_sdk.flush(10)
        messages = sink.wait_for_messages(4)
    assert receiver.refused == []
    for body in receiver.bodies:
        strict_loads(body.decode("utf-8"))
    assert sorted(message["userId"] for message in messages) == ["u-0", "u-1", "u-2", "u-3"]
    [batch] = [batch for batch in sink.batches if any(m["userId"] == "u-2" for m in batch.messages)]
    assert sorted(message["userId"] for message in batch.messages) == ["u-1", "u-2", "u-3"]
    [with_nan] = [message for message in messages if message["userId"] == "u-2"]
    assert with_nan["properties"]["nan"] is None and with_nan["properties"]["nested"]["x"] is None
    assert integration.stats()["delivery_failed"] == 0 and integration.stats()["forwarded"] == 4


# --- 3. Dicts the hook returns that cannot be sent as they are ----------------------------------------


class ItemsRaise(dict):
    def items(self) -> Any:
        raise RuntimeError("items() is broken")


class ItemsRaiseMidway(Mapping):
    def __getitem__(self, key: Any) -> Any:
        return 1

    def __iter__(self) -> Iterator[Any]:
        yield "ok"
        raise RuntimeError("iteration is broken")

    def __len__(self) -> int:
        return 2


class GetitemRaises(Mapping):
    def __getitem__(self, key: Any) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[Any]:
        return iter(["a", "b"])

    def __len__(self) -> int:
        return 2


class LenRaises(dict):
    def __len__(self) -> int:
        raise RuntimeError("len() is broken")


class StrRaises:
    def __str__(self) -> str:
        raise RuntimeError("str() is broken")

    def __hash__(self) -> int:
        return 1


def itself_inside() -> Dict[str, Any]:
    result: Dict[str, Any] = {"a": 1}
    result["me"] = result
    return result


def in_a_cycle() -> Dict[str, Any]:
    inner: Dict[str, Any] = {"a": 1}
    inner["me"] = inner
    listed: List[Any] = [1]
    listed.append(listed)
    return {"dict": inner, "list": listed}


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# (the hook's result, what the message's properties get from it)
ODD_RESULTS: Dict[str, Tuple[Callable[[], Any], Dict[str, Any]]] = {
    "keys that are not strings": (
        lambda: {(1, 2): "tuple", 2: "int", None: "none", False: "bool", 1.5: "float", math.nan: "nan"},
        {"(1, 2)": "tuple", "2": "int", "null": "none", "false": "bool", "1.5": "float", "NaN": "nan"},
    ),
    "keys that read the same": (lambda: {1: "int", "1": "str"}, {"1": "int"}),
    "keys naming standard fields": (
        lambda: {"environment": "x", "eventId": "y", "exceptionType": "z", "plan": "pro"},
        {"plan": "pro"},
    ),
    "a key whose str() raises": (lambda: {StrRaises(): 1, "ok": 1}, {"ok": 1}),
    "an empty key and a huge key": (
        lambda: {"": "empty", "k" * 40_000: 1, "ok": 1},
        {"": "empty", "ok": 1, PROPERTIES_TRUNCATED: True},  # a name is never cut: that entry cannot go
    ),
    "the result inside itself": (itself_inside, {"a": 1, "me": None}),
    "values in a cycle": (in_a_cycle, {"dict": {"a": 1, "me": None}, "list": [1, None]}),
    "a value dict whose items() raises": (lambda: {"bad": ItemsRaise(a=1), "ok": 2}, {"bad": {"a": 1}, "ok": 2}),
    "a result dict whose items() raises": (lambda: ItemsRaise(a=1, b="two"), {"a": 1, "b": "two"}),
    "a result mapping that breaks midway": (ItemsRaiseMidway, {"ok": 1}),
    "a result mapping whose __getitem__ raises": (GetitemRaises, {}),
    "a result dict whose __len__ raises": (lambda: LenRaises(a=1), {"a": 1}),
    "a value whose str() raises": (lambda: {"s": StrRaises(), "ok": 1}, {"s": None, "ok": 1}),
    "an int too long to print": (lambda: {"n": 10**5000, "ok": 1}, {"n": None, "ok": 1}),
    "nesting 100,000 deep": (lambda: {"deep": nested(100_000, 1)}, {"deep": nested(MAX_HOOK_DEPTH, None)}),
    "lone surrogates": (
        lambda: {"\ud800": "a\udc80b", "pair": "\ud83d\ude00", "list": ["\udfff"]},
        {"\ufffd": "a\ufffdb", "pair": "😀", "list": ["\ufffd"]},
    ),
    "objects that are not JSON": (
        lambda: {"set": {1}, "bytes": b"x", "when": datetime(2024, 1, 1)},
        {"set": "{1}", "bytes": "b'x'", "when": "2024-01-01 00:00:00"},
    ),
}


@pytest.mark.parametrize("case", list(ODD_RESULTS))
def test_an_odd_hook_result_never_costs_the_message(case: str) -> None:
    make, expected = ODD_RESULTS[case]
    message = build(make())
    assert_wire_ready(message)
    assert_standard_fields_intact(message)
    assert hook_part(message["properties"]) == expected


@pytest.mark.parametrize("case", list(ODD_RESULTS))
def test_an_odd_hook_result_never_costs_the_message_end_to_end(init_sentry, sink: SegmentSink, case: str) -> None:
    make, expected = ODD_RESULTS[case]
    integration = make_integration(sink, properties=lambda event, hint: make())
    sentry = init_sentry(integration)
    event_id = error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    [message] = sink.wait_for_messages(1)
    assert sentry.event_ids == [event_id] and message["messageId"] == event_id
    assert message["properties"]["exceptionType"] == "RuntimeError"
    standard = {"environment", "eventId", "exceptionType", "release", "transaction", "level", *TRACE_FIELDS}
    assert hook_part(message["properties"], standard) == expected
    stats = integration.stats()
    assert stats["forwarded"] == 1 and stats["internal_error"] == 0


# --- 4. Timestamps that parse but cannot be made UTC ---------------------------------------------------


class OffsetRaises(tzinfo):
    def utcoffset(self, dt: Optional[datetime]) -> Optional[timedelta]:
        raise RuntimeError("utcoffset is broken")


class OffsetTooLarge(tzinfo):
    def utcoffset(self, dt: Optional[datetime]) -> Optional[timedelta]:
        return timedelta(hours=30)


class OffsetNone(tzinfo):
    def utcoffset(self, dt: Optional[datetime]) -> Optional[timedelta]:
        return None


PLUS_5, MINUS_5 = timezone(timedelta(hours=5)), timezone(timedelta(hours=-5))
UNCONVERTIBLE: Dict[str, Any] = {
    "year 1, +05:00 (text)": "0001-01-01T00:00:00+05:00",
    "year 9999, -05:00 (text)": "9999-12-31T23:59:59-05:00",
    "year 1, +05:00": datetime(1, 1, 1, tzinfo=PLUS_5),
    "year 9999, -05:00": datetime(9999, 12, 31, 23, 0, tzinfo=MINUS_5),
    "utcoffset raises": datetime(2024, 1, 1, tzinfo=OffsetRaises()),
    "utcoffset over a day": datetime(2024, 1, 1, tzinfo=OffsetTooLarge()),
}


@pytest.mark.parametrize("case", list(UNCONVERTIBLE))
def test_a_timestamp_that_cannot_be_made_utc_is_the_time_of_forwarding(case: str) -> None:
    message = build_message(dict(EVENT, timestamp=UNCONVERTIBLE[case]), "u-1", now=NOW)
    assert message["timestamp"] == NOW_TEXT
    assert_wire_ready(message)


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("0001-01-01T00:00:00+00:00", "0001-01-01T00:00:00.000+00:00"),
        ("0001-01-01T05:00:00+05:00", "0001-01-01T00:00:00.000+00:00"),
        ("9999-12-31T18:59:59-05:00", "9999-12-31T23:59:59.000+00:00"),
        (datetime(2024, 1, 1, 12, tzinfo=OffsetNone()), "2024-01-01T12:00:00.000+00:00"),  # naive: UTC
        (datetime(2024, 1, 1, 12, tzinfo=PLUS_5), "2024-01-01T07:00:00.000+00:00"),
    ],
)
def test_timestamps_at_the_edges_that_can_be_made_utc_are_the_events_own(timestamp: Any, expected: str) -> None:
    assert build_message(dict(EVENT, timestamp=timestamp), "u-1", now=NOW)["timestamp"] == expected


@pytest.mark.parametrize("case", list(UNCONVERTIBLE))
def test_a_timestamp_that_cannot_be_made_utc_end_to_end(
    init_sentry, sink: SegmentSink, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    def set_timestamp(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        event["timestamp"] = UNCONVERTIBLE[case]
        return event

    integration = make_integration(sink)
    sentry = init_sentry(integration, before_send=set_timestamp)
    before = datetime.now(timezone.utc)
    with caplog.at_level(logging.DEBUG, logger="sentry_segment_integration"):
        event_id = error_as_user({"id": "u-1"})
        sentry_sdk.flush(5)
        [message] = sink.wait_for_messages(1)
    after = datetime.now(timezone.utc)
    assert sentry.event_ids == [event_id] and message["messageId"] == event_id
    sent_at = datetime.fromisoformat(message["timestamp"])
    assert before - timedelta(milliseconds=1) <= sent_at <= after
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []
    assert integration.stats()["internal_error"] == 0


# --- 5. Any hook result: never an error, always strict JSON, always within 32 KB -----------------------


class HugeInt(int):
    """10**5000, which Python refuses to print (hypothesis prints the examples it draws)."""

    def __repr__(self) -> str:
        return "HugeInt(10**5000)"


any_character = st.characters(exclude_categories=())  # lone surrogates included
odd_text = st.one_of(
    st.text(max_size=12),
    st.text(any_character, max_size=12),
    st.sampled_from(["", "\ud800", "\udfff", "a\ud800b", "\ud83d\ude00", "\ud83d", '"\\\n\x00', "é", "😀"]),
)
long_text = st.builds(
    lambda text, times: text * times, st.text(any_character, min_size=1, max_size=3), st.integers(1, 40_000)
)
names = st.one_of(
    odd_text,
    long_text,
    st.sampled_from(["environment", "eventId", "exceptionType", "page", "userAgent", PROPERTIES_TRUNCATED]),
    st.integers(),
    st.floats(),
    st.none(),
    st.booleans(),
    st.tuples(st.integers()),
    st.builds(StrRaises),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.builds(lambda: HugeInt(10**5000)),
    st.floats(),  # NaN and the infinities included
    st.sampled_from([math.nan, math.inf, -math.inf]),
    odd_text,
    long_text,
    st.builds(StrRaises),
    st.builds(object),
)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.dictionaries(names, children, max_size=5),
        st.builds(lambda items: ItemsRaise(items), st.dictionaries(st.text(max_size=5), children, max_size=3)),
    ),
    max_leaves=25,
)


FIRST = "first entry"


@st.composite
def hook_results(draw: st.DrawFn) -> Any:
    """A hook's result: a few odd entries, and perhaps up to 10,000 more of one drawn kind, in
    either order, perhaps inside itself, perhaps a dict subclass whose items() raises."""
    odd = draw(st.dictionaries(names, values, max_size=12))
    count = draw(st.one_of(st.just(0), st.integers(0, 10_000)))
    prefix, value = draw(st.text(any_character, max_size=4)), draw(values)
    bulk = {f"{prefix}{index}": value for index in range(count)}
    # First, a small entry: it goes whatever the rest (the message is never left without all of it).
    result: Dict[Any, Any] = {FIRST: 1}
    for key, entry in ({**bulk, **odd} if draw(st.booleans()) else {**odd, **bulk}).items():
        result.setdefault(key, entry)
    if draw(st.booleans()):
        result["itself"] = result
    return ItemsRaise(result) if draw(st.booleans()) else result


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(extra=hook_results())
def test_any_hook_result_gives_a_strict_json_message_within_32_kb(extra: Any) -> None:
    message = build(extra)
    assert_wire_ready(message)
    assert_standard_fields_intact(message)
    added = hook_part(message["properties"])
    assert added.get(PROPERTIES_TRUNCATED, True) is True
    assert added[FIRST] == 1
