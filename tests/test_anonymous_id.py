"""A signed-out visitor's Segment anonymous id (sentry_segment_integration.anonymous).

The cookie's value forms, the option's validation, the ``anonymous_id`` function's failures, and, end to end,
real Flask, Django (its test client, its WSGI application under a real server, its ASGI handler under uvicorn)
and FastAPI/Starlette apps (under uvicorn on 127.0.0.1) with Sentry's user details off: a browser-like request
carrying ``ajs_anonymous_id`` beside other cookies. The id is read where the integration reads it, in the
client's transport on the capturing thread, and is exactly the visitor's; the Sentry event is unchanged and
carries none of the cookies.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import logging
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional
from wsgiref.simple_server import make_server

import pytest
import sentry_sdk

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.anonymous import (
    COOKIE,
    COOKIE_NAME,
    MAX_ANONYMOUS_ID_LENGTH,
    AnonymousIdMiddleware,
    AnonymousIdSource,
    anonymous_id_from_cookie,
    anonymous_id_from_cookie_header,
    anonymous_id_of,
    install_cookie_readers,
    parse_anonymous_id,
    valid_anonymous_id,
)
from sentry_segment_integration.settings import ConfigurationError
from sentry_segment_integration.testing import SegmentSink
from support import (
    DSN,
    SDK_MAJOR,
    WRITE_KEY,
    QuietWSGIHandler,
    RecordingTransport,
    as_at_application_start,
    close_and_reset_sentry,
    django_example_set_up,
    error_as_user,
    error_event,
    make_integration,
    new_scope,
    run_cli,
    user_details_option,
    wait_until,
    write_json_lines,
)

REPO = Path(__file__).resolve().parent.parent
SESSION_ID = "s3ss10n-v4lue-0f-the-v1s1t0r"
CSRF_TOKEN = "csrf-t0ken-v4lue-0f-the-v1s1t0r"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) anonymous id test"
# The two forms analytics.js's cookie takes: JSON-quoted with URL-encoded quotes, or with literal quotes.
COOKIE_FORMS = {"url-encoded quotes": "%22{}%22", "literal quotes": '"{}"'}
ARRIVAL_TIMEOUT = 20.0  # generous: every wait ends as soon as its condition holds


def visitor_id() -> str:
    return str(uuid.uuid4())


def browser_cookie_header(form: str, anonymous_id: str) -> str:
    """What a browser sends to a shop that uses analytics.js and Django-style sessions."""
    return f"sessionid={SESSION_ID}; {COOKIE_NAME}={form.format(anonymous_id)}; csrftoken={CSRF_TOKEN}"


def browser_headers(form: str, anonymous_id: str) -> Dict[str, str]:
    return {
        "Cookie": browser_cookie_header(form, anonymous_id),
        "User-Agent": USER_AGENT,
        "Accept": "text/html,application/xhtml+xml",
        "Referer": "http://localhost/",
    }


def sentry_collection(user_details: bool) -> Dict[str, Any]:
    """Sentry's client options for collecting the user's details, cookies among them, or not: 1.x and 2.x
    record cookies only with ``send_default_pii``; 3.x records them by default (``data_collection``'s
    ``cookies``, sensitive names scrubbed) unless they are turned off."""
    options = user_details_option(user_details)
    if SDK_MAJOR >= 3 and not user_details:
        options["data_collection"] = {**options["data_collection"], "cookies": {"mode": "off"}}
    return options


class CapturingTransport(RecordingTransport):
    """Reads the anonymous id where the integration does: in the client's transport, on the capturing thread,
    for each event Sentry sends. Notes whether that left the event as it was. Beside it, the client has
    ``SegmentIntegration(anonymous_id="cookie")`` sending to ``sink``: :meth:`wait_for` also checks that
    Segment got each visitor's error with that id, and nothing of any other cookie."""

    def __init__(self, sink: SegmentSink) -> None:
        super().__init__()
        self.sink = sink
        self.anonymous_ids: List[Optional[str]] = []
        self.unchanged: List[bool] = []
        self.errors: List[Exception] = []

    def capture_event(self, event: Dict[str, Any]) -> None:
        before = copy.deepcopy(event)
        self.anonymous_ids.append(anonymous_id_of(COOKIE, event, {}, on_error=self.errors.append))
        self.unchanged.append(event == before)
        super().capture_event(event)

    def wait_for(self, count: int) -> None:
        assert wait_until(lambda: len(self.events) >= count, timeout=ARRIVAL_TIMEOUT), self.events
        sentry_sdk.flush(5)
        expected = {
            event["event_id"]: anonymous_id
            for event, anonymous_id in zip(self.events, self.anonymous_ids)
            if anonymous_id is not None
        }
        messages = self.sink.wait_for_messages(len(expected), timeout=ARRIVAL_TIMEOUT)
        assert {message["messageId"]: message.get("anonymousId") for message in messages} == expected
        assert [message for message in messages if "userId" in message] == []  # signed-out visitors
        sent = json.dumps(messages)
        assert SESSION_ID not in sent and CSRF_TOKEN not in sent and COOKIE_NAME not in sent


def assert_event_holds_no_cookie(event: Mapping[str, Any], anonymous_id: str) -> None:
    request = event.get("request", {})
    assert "cookies" not in request
    sent = json.dumps(event)
    for secret in (anonymous_id, SESSION_ID, CSRF_TOKEN, COOKIE_NAME):
        assert secret not in sent


@pytest.fixture
def init_capture(sink: SegmentSink) -> Iterator[Callable[..., CapturingTransport]]:
    """``init_capture(*integrations)``: a real client with Sentry's user details and cookies off (no
    ``send_default_pii``), unless ``user_details=True``, its events read for their anonymous id by a
    :class:`CapturingTransport`."""
    install_cookie_readers()  # what the integration's setup does for anonymous_id="cookie"
    with as_at_application_start():

        def init(*integrations: Any, user_details: bool = False) -> CapturingTransport:
            transport = CapturingTransport(sink)
            segment = make_integration(sink, anonymous_id="cookie", rate_limit=None)
            sentry_sdk.init(
                dsn=DSN,
                transport=transport,
                integrations=[*integrations, segment],
                default_integrations=False,
                **sentry_collection(user_details),
            )
            return transport

        yield init
        close_and_reset_sentry()


# --- the option ---------------------------------------------------------------------------------------------


def test_the_option_is_off_the_cookie_or_a_function() -> None:
    def from_header(event: Mapping[str, Any], hint: Mapping[str, Any]) -> Optional[str]:
        return None

    assert parse_anonymous_id(None) is None
    cookie = parse_anonymous_id("cookie")
    assert cookie == COOKIE and cookie is not None and cookie.reads_cookie and cookie.hook is None
    hook = parse_anonymous_id(from_header)
    assert hook == AnonymousIdSource(hook=from_header) and hook is not None and not hook.reads_cookie
    assert repr(cookie) == "'cookie'"
    assert "from_header" in repr(hook)


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("Cookie", "'Cookie'"),
        ("cookies", "'cookies'"),
        (" cookie", "' cookie'"),
        ("", "''"),
        (True, "True"),
        (1, "1"),
        (b"cookie", "b'cookie'"),
        ({"cookie": True}, "{'cookie': True}"),
        ("x" * 1000, "'xxxx"),
        (_BadRepr(), "a _BadRepr"),
    ],
)
def test_a_bad_option_names_it_and_says_what_was_expected(value: Any, shown: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_anonymous_id(value)
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert message.startswith("SegmentIntegration: option 'anonymous_id' must be None, 'cookie'")
    assert "a function (event, hint) -> str or None" in message
    assert f"got {shown}" in message
    assert len(message) < 300  # a huge value is not repeated whole


# --- the cookie's value -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("abc", "abc"),  # analytics.js 2.0 (analytics-next) writes the id as it is
        ("%22abc%22", "abc"),  # classic analytics.js: JSON.stringify, then URL-encoded
        ('"abc"', "abc"),  # JSON-quoted with literal quotes
        ("%22abc", None),  # an unbalanced quote
        ('"abc', None),
        ('abc"', None),
        ('a"bc', None),
        ('"a\\"bc"', 'a"bc'),  # a JSON escape inside the quotes
        ("%2205c4e7b0-5ad1-4c2b-9e8e-6f1b2a3c4d5e%22", "05c4e7b0-5ad1-4c2b-9e8e-6f1b2a3c4d5e"),
        ("  %22abc%22 ", "abc"),
        ('" abc "', "abc"),  # an id is stripped
        ("caf%C3%A9", "café"),  # percent-encoded UTF-8
        ("%22caf%C3%A9%22", "café"),
        ("a%20b", "a b"),
        ("a+b", "a+b"),  # a cookie is not a form: + stays
        ("", None),
        ("   ", None),
        ('""', None),
        ("%22%22", None),
        ('"  "', None),
        ("%FF%FE", None),  # not UTF-8
        ("%00abc", None),  # a control character
        ("abc%0A", "abc"),  # a trailing newline is whitespace, stripped
        ("ab%0Ac", None),
        ('"ab\\u0000c"', None),
        ('"\\ud800"', None),  # a lone surrogate
        ("ab%E2%80%8Bc", None),  # a zero-width space
        ("ab%E2%80%AEc", None),  # a right-to-left override
        ("ab%E2%80%A8c", None),  # a line separator
        ('"abc" "def"', None),  # not one JSON string
        ('"abc"x', None),
        ("%22%5B1%5D%22", "[1]"),
        ("a" * MAX_ANONYMOUS_ID_LENGTH, "a" * MAX_ANONYMOUS_ID_LENGTH),
        ("a" * (MAX_ANONYMOUS_ID_LENGTH + 1), None),
        ("%22" + "a" * (MAX_ANONYMOUS_ID_LENGTH + 1) + "%22", None),
        ("%61" * MAX_ANONYMOUS_ID_LENGTH, "a" * MAX_ANONYMOUS_ID_LENGTH),  # the bound is on the decoded id
        ("a" * 100_000, None),  # huge: not decoded at all
        ('"' + "[" * 100_000 + '"', None),
        ("%" * 100_000, None),
    ],
)
def test_the_cookie_value_in_each_form(raw: str, expected: Optional[str]) -> None:
    assert anonymous_id_from_cookie(raw) == expected


@pytest.mark.parametrize("raw", [None, b"abc", 42, ["abc"], {"abc": 1}])
def test_a_cookie_value_that_is_not_text_gives_no_id(raw: Any) -> None:
    assert anonymous_id_from_cookie(raw) is None
    assert anonymous_id_from_cookie_header(raw) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (browser_cookie_header("%22{}%22", "abc"), "abc"),
        (browser_cookie_header('"{}"', "abc"), "abc"),
        (f"{COOKIE_NAME}=abc", "abc"),
        (f"  {COOKIE_NAME} = %22abc%22  ;x=1", "abc"),
        ("sessionid=abc; csrftoken=def", None),
        (f"x{COOKIE_NAME}=abc; {COOKIE_NAME}_old=def", None),  # other cookies whose names contain it
        (f"{COOKIE_NAME}; {COOKIE_NAME}", None),
        (f"{COOKIE_NAME}=; {COOKIE_NAME}=%22%22", None),
        (f"{COOKIE_NAME}=%22bad; {COOKIE_NAME}=%22good%22", "good"),  # the first usable one
        (f"{COOKIE_NAME}=first; {COOKIE_NAME}=second", "first"),
        (f"{COOKIE_NAME}=a=b", "a=b"),
        ("", None),
        (";;;", None),
    ],
)
def test_the_cookie_in_a_cookie_header(header: str, expected: Optional[str]) -> None:
    assert anonymous_id_from_cookie_header(header) == expected


def test_a_huge_cookie_header_gives_the_one_cookie_or_nothing() -> None:
    others = "; ".join(f"c{number}={'v' * 50}" for number in range(20_000))  # about 1.2 MB
    assert anonymous_id_from_cookie_header(f"{others}; {COOKIE_NAME}=%22abc%22") == "abc"
    assert anonymous_id_from_cookie_header(others) is None
    assert anonymous_id_from_cookie_header(f"{COOKIE_NAME}=;" * 100_000) is None
    assert anonymous_id_from_cookie_header(f"{COOKIE_NAME}={'a' * 1_000_000}") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", "abc"),
        (" abc\t\n", "abc"),
        ("ünïcødé-ïd", "ünïcødé-ïd"),
        ("a b", "a b"),
        ("", None),
        ("\n", None),
        ("a\x00b", None),
        ("a\x7fb", None),
        ("a\x85b", None),
        ("a\u2029b", None),
        ("a\ufeffb", None),
        ("\udcff", None),
        (None, None),
        (42, None),
        (b"abc", None),
    ],
)
def test_a_valid_id(value: Any, expected: Optional[str]) -> None:
    assert valid_anonymous_id(value) == expected


def test_a_str_subclass_gives_a_plain_str() -> None:
    class Sneaky(str):
        def strip(self, chars: Optional[str] = None) -> str:
            raise AssertionError("never called")

    found = valid_anonymous_id(Sneaky(" abc "))
    assert found == "abc" and type(found) is str


# --- the anonymous_id function ------------------------------------------------------------------------------

EVENT: Dict[str, Any] = {"event_id": "5c1f" * 8, "level": "error", "request": {"url": "https://shop.example/"}}


def hook_source(result: Callable[[Mapping[str, Any], Mapping[str, Any]], Any]) -> AnonymousIdSource:
    source = parse_anonymous_id(result)
    assert source is not None
    return source


def test_the_function_gets_the_event_and_its_hint() -> None:
    seen: List[Any] = []

    def from_tag(event: Mapping[str, Any], hint: Mapping[str, Any]) -> Optional[str]:
        seen.append((event, hint))
        return " visitor-7 "

    hint = {"exc_info": None}
    event = copy.deepcopy(EVENT)
    assert anonymous_id_of(hook_source(from_tag), event, hint) == "visitor-7"
    assert seen == [(event, hint)] and seen[0][1] is hint
    assert event == EVENT
    assert anonymous_id_of(hook_source(from_tag), event) == "visitor-7"  # no hint: an empty one
    assert seen[1][1] == {}


@pytest.mark.parametrize("result", [None, "", "   ", "a" * (MAX_ANONYMOUS_ID_LENGTH + 1), "a\nb", "\x00"])
def test_a_function_without_a_usable_id_gives_none_and_is_no_error(
    result: Any, caplog: pytest.LogCaptureFixture
) -> None:
    errors: List[Exception] = []
    caplog.set_level(logging.DEBUG, logger="sentry_segment_integration")
    assert anonymous_id_of(hook_source(lambda event, hint: result), EVENT, {}, on_error=errors.append) is None
    assert errors == []
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    if isinstance(result, str):  # the DEBUG line never repeats what the function returned
        assert all(result.strip() not in record.getMessage() for record in caplog.records if result.strip())


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


@pytest.mark.parametrize(
    ("hook", "error_type"),
    [
        (lambda event, hint: 1 / 0, ZeroDivisionError),
        (lambda event, hint: event["missing"], KeyError),
        (lambda event, hint: 4242, TypeError),  # a number is not an id: the function's bug, counted
        (lambda event, hint: b"abc", TypeError),
        (lambda event, hint: ["abc"], TypeError),
        (lambda event, hint: (_ for _ in ()).throw(Unprintable()), Unprintable),
    ],
)
def test_a_failing_function_gives_none_and_tells_the_caller(
    hook: Callable[..., Any], error_type: type, caplog: pytest.LogCaptureFixture
) -> None:
    errors: List[Exception] = []
    event = copy.deepcopy(EVENT)
    assert anonymous_id_of(hook_source(hook), event, {}, on_error=errors.append) is None
    assert [type(error) for error in errors] == [error_type]
    assert event == EVENT
    [record] = [record for record in caplog.records if record.name == "sentry_segment_integration"]
    assert record.levelno == logging.WARNING
    assert "'anonymous_id' function failed" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is error_type
    # Without on_error, it is still only logged.
    assert anonymous_id_of(hook_source(hook), event, {}) is None


def test_a_failing_on_error_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    def on_error(error: Exception) -> None:
        raise RuntimeError("the caller's counter failed")

    assert anonymous_id_of(hook_source(lambda event, hint: 1 / 0), EVENT, {}, on_error=on_error) is None
    assert any("on_error failed" in record.getMessage() for record in caplog.records)


def test_a_keyboard_interrupt_in_the_function_goes_through() -> None:
    def interrupted(event: Mapping[str, Any], hint: Mapping[str, Any]) -> Optional[str]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        anonymous_id_of(hook_source(interrupted), EVENT, {})


def test_off_reads_nothing() -> None:
    assert anonymous_id_of(None, {"request": {"cookies": {COOKIE_NAME: "abc"}}}, {}) is None


# --- the cookie, from the event (send_default_pii) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("cookies", "expected"),
    [
        ({COOKIE_NAME: "%22abc%22", "sessionid": SESSION_ID}, "abc"),
        ({COOKIE_NAME: '"abc"'}, "abc"),
        ({COOKIE_NAME: "abc"}, "abc"),
        ({COOKIE_NAME: "[Filtered]"}, None),  # what Sentry's data scrubbing leaves
        ({COOKIE_NAME: ["abc"]}, None),
        ({COOKIE_NAME: None}, None),
        ({"sessionid": SESSION_ID}, None),
        ({}, None),
        (f"sessionid={SESSION_ID}; {COOKIE_NAME}=%22abc%22", "abc"),  # the protocol allows the raw header
        ([["sessionid", SESSION_ID], [COOKIE_NAME, "%22abc%22"]], "abc"),  # or pairs
        ([["sessionid"], "x", None, [COOKIE_NAME, 4]], None),
        (None, None),
        (42, None),
    ],
)
def test_the_cookie_from_the_events_request_outside_any_request(cookies: Any, expected: Optional[str]) -> None:
    event = {**EVENT, "request": {"url": "https://shop.example/", "cookies": cookies}}
    before = copy.deepcopy(event)
    errors: List[Exception] = []
    assert anonymous_id_of(COOKIE, event, {}, on_error=errors.append) == expected
    assert event == before
    assert errors == []


@pytest.mark.parametrize("event", [{}, {"request": None}, {"request": "x"}, {"request": {"cookies": {}}}, EVENT])
def test_no_request_and_no_cookies_give_no_id(event: Any) -> None:
    assert anonymous_id_of(COOKIE, event, {}) is None


# --- ASGI: the scope a request leaves for capture time ----------------------------------------------------------


def http_scope(cookie_header: str) -> Dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"host", b"shop.example"), (b"cookie", cookie_header.encode("latin-1"))],
    }


async def no_receive() -> Any:
    return {"type": "http.disconnect"}


async def no_send(message: Any) -> None:
    pass


def test_the_middleware_keeps_the_scope_during_the_request_and_after_an_escaping_error() -> None:
    anonymous_id = visitor_id()
    seen: List[Optional[str]] = []

    async def application(scope: Any, receive: Any, send: Any) -> None:
        seen.append(anonymous_id_of(COOKIE, EVENT, {}))
        if scope["path"] == "/fails":
            raise LookupError("no such product")

    async def requests() -> List[Optional[str]]:
        app = AnonymousIdMiddleware(application)
        after: List[Optional[str]] = []
        await app(http_scope(browser_cookie_header("%22{}%22", anonymous_id)), no_receive, no_send)
        after.append(anonymous_id_of(COOKIE, EVENT, {}))  # it returned: gone
        failing = {**http_scope(browser_cookie_header('"{}"', anonymous_id)), "path": "/fails"}
        with pytest.raises(LookupError):
            await app(failing, no_receive, no_send)
        # What an outer layer (sentry-sdk's ASGI middleware) capturing the escaping error reads.
        after.append(anonymous_id_of(COOKIE, EVENT, {}))
        return after

    assert asyncio.run(requests()) == [None, anonymous_id]
    assert seen == [anonymous_id, anonymous_id]
    assert anonymous_id_of(COOKIE, EVENT, {}) is None  # the request's task, and its context, are gone


def test_the_scopes_cookie_headers_are_all_read_and_nothing_else() -> None:
    anonymous_id = visitor_id()
    scope = {
        "type": "http",
        "headers": [
            (b"cookie", f"sessionid={SESSION_ID}".encode()),  # HTTP/2 sends cookies in several headers
            (b"x-ajs-anonymous-id", b"not-this-one"),
            ("cookie", "not bytes"),
            (b"cookie",),
            (b"cookie", f"{COOKIE_NAME}=%22{anonymous_id}%22; csrftoken={CSRF_TOKEN}".encode()),
        ],
    }
    seen: List[Optional[str]] = []

    async def application(scope: Any, receive: Any, send: Any) -> None:
        seen.append(anonymous_id_of(COOKIE, EVENT, {}))

    asyncio.run(AnonymousIdMiddleware(application)(scope, no_receive, no_send))
    lifespan: Dict[str, Any] = {"type": "lifespan", "headers": scope["headers"]}
    asyncio.run(AnonymousIdMiddleware(application)(lifespan, no_receive, no_send))
    assert seen == [anonymous_id, None]


# --- the readers' installation ------------------------------------------------------------------------------

INSTALLATION_CHECK = """
import threading
from django.core import signals
from django.core.handlers.asgi import ASGIHandler
from starlette.applications import Starlette
from fastapi import FastAPI

def state():
    return (Starlette.__call__, ASGIHandler.__call__, len(signals.request_started.receivers),
            len(signals.request_finished.receivers))

before = state()
from sentry_segment_integration import anonymous
anonymous.parse_anonymous_id(None)
anonymous.parse_anonymous_id("cookie")
assert state() == before, "importing or parsing the option installed something"
threads = [threading.Thread(target=anonymous.install_cookie_readers) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
anonymous.install_cookie_readers()
after = state()
assert after[0] is not before[0] and after[0].__wrapped__ is before[0], "Starlette wrapped once"
assert after[1] is not before[1] and after[1].__wrapped__ is before[1], "ASGIHandler wrapped once"
assert after[2:] == (before[2] + 1, before[3] + 1), (before, after)
assert FastAPI.__call__ is not Starlette.__call__  # FastAPI's own __call__ calls Starlette's
print("ok")
"""


@pytest.mark.slow
def test_readers_install_nothing_until_asked_then_once() -> None:
    pytest.importorskip("django")
    pytest.importorskip("fastapi")
    result = subprocess.run(
        [sys.executable, "-c", INSTALLATION_CHECK], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


# --- Flask -----------------------------------------------------------------------------------------------------


def flask_shop() -> Any:
    from flask import Flask

    app = Flask("anonymous_shop")

    @app.route("/products/<sku>")
    def product(sku: str) -> str:
        return {"notebook": "12.50 EUR"}[sku]  # an unknown product: a KeyError, a 500

    @app.route("/")
    def index() -> str:
        return "ok"

    return app


@pytest.mark.parametrize("form", COOKIE_FORMS.values(), ids=COOKIE_FORMS.keys())
def test_flask_visitors_error_gives_their_id_from_the_live_request(
    init_capture: Callable[..., CapturingTransport], form: str
) -> None:
    pytest.importorskip("flask")
    from sentry_sdk.integrations.flask import FlaskIntegration

    transport = init_capture(FlaskIntegration())
    browser = flask_shop().test_client(use_cookies=False)
    anonymous_id = visitor_id()
    assert browser.get("/products/gift-card", headers=browser_headers(form, anonymous_id)).status_code == 500
    assert browser.get("/", headers=browser_headers(form, anonymous_id)).status_code == 200
    assert browser.get("/products/gift-card", headers={"User-Agent": USER_AGENT}).status_code == 500  # no cookie

    transport.wait_for(2)
    assert transport.anonymous_ids == [anonymous_id, None]
    assert transport.unchanged == [True, True] and transport.errors == []
    event = transport.events[0]
    assert event["exception"]["values"][-1]["type"] == "KeyError"
    assert event["request"]["url"] == "http://localhost/products/gift-card"
    assert_event_holds_no_cookie(event, anonymous_id)
    # Outside the request, nothing is left of it.
    assert anonymous_id_of(COOKIE, EVENT, {}) is None


def test_flask_with_send_default_pii_reads_the_same_cookie(init_capture: Callable[..., CapturingTransport]) -> None:
    pytest.importorskip("flask")
    from sentry_sdk.integrations.flask import FlaskIntegration

    transport = init_capture(FlaskIntegration(), user_details=True)
    anonymous_id = visitor_id()
    browser = flask_shop().test_client(use_cookies=False)
    assert browser.get("/products/x", headers=browser_headers("%22{}%22", anonymous_id)).status_code == 500
    transport.wait_for(1)
    assert transport.anonymous_ids == [anonymous_id]
    assert transport.unchanged == [True]
    # Here Sentry itself records the cookies; the event alone gives the same id, outside the request.
    event = transport.events[0]
    assert event["request"]["cookies"][COOKIE_NAME] == "%22" + anonymous_id + "%22"
    assert anonymous_id_of(COOKIE, event, {}) == anonymous_id


# --- Django ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Django set up with the example shop's settings (as tests/test_django_example.py does: Django is set up
    once per process, so both use the same settings). Its product page fails for an unknown product."""
    pytest.importorskip("django")
    with django_example_set_up(tmp_path_factory.mktemp("anonymous_shop"), "django_anonymous_write_key"):
        close_and_reset_sentry()
        yield


def django_capture(init_capture: Callable[..., CapturingTransport]) -> CapturingTransport:
    from sentry_sdk.integrations.django import DjangoIntegration

    return init_capture(DjangoIntegration())


def assert_django_visitor(transport: CapturingTransport, anonymous_id: str, path: Optional[str]) -> None:
    transport.wait_for(1)
    assert transport.anonymous_ids == [anonymous_id]
    assert transport.unchanged == [True] and transport.errors == []
    [event] = transport.events
    assert event["exception"]["values"][-1]["type"] == "KeyError"
    if path is not None:
        assert event["request"]["url"].endswith(path)
    assert_event_holds_no_cookie(event, anonymous_id)


@pytest.mark.parametrize("form", COOKIE_FORMS.values(), ids=COOKIE_FORMS.keys())
def test_django_test_client_visitors_error_gives_their_id(
    django_shop: None, init_capture: Callable[..., CapturingTransport], form: str
) -> None:
    from django.test import Client

    transport = django_capture(init_capture)
    browser = Client(raise_request_exception=False, HTTP_HOST="localhost")
    anonymous_id = visitor_id()
    response = browser.get(
        "/products/gift-card/", HTTP_COOKIE=browser_cookie_header(form, anonymous_id), HTTP_USER_AGENT=USER_AGENT
    )
    assert response.status_code == 500
    # (No page: the test client skips the WSGI entry point where Sentry records the request.)
    assert_django_visitor(transport, anonymous_id, None)
    # request_finished let the request go: this thread, which ran it, reads nothing any more.
    assert anonymous_id_of(COOKIE, EVENT, {}) is None


def http_get(url: str, headers: Mapping[str, str], method: str = "GET") -> int:
    """One request on a connection of its own (a server may close one after a 500): its status."""
    import requests

    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment: 127.0.0.1 only
        return session.request(method, url, headers=dict(headers), timeout=ARRIVAL_TIMEOUT).status_code


@pytest.mark.parametrize("form", COOKIE_FORMS.values(), ids=COOKIE_FORMS.keys())
def test_django_wsgi_server_visitors_error_gives_their_id(
    django_shop: None, init_capture: Callable[..., CapturingTransport], form: str
) -> None:
    transport = django_capture(init_capture)
    application = importlib.import_module("shopsite.wsgi").application
    httpd = make_server("127.0.0.1", 0, application, handler_class=QuietWSGIHandler)
    # poll_interval: shutdown() waits up to one interval (0.5 s by default)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="django-anonymous-shop", daemon=True
    )
    thread.start()
    try:
        anonymous_id = visitor_id()
        url = f"http://127.0.0.1:{httpd.server_port}/products/gift-card/"
        assert http_get(url, browser_headers(form, anonymous_id)) == 500
        assert_django_visitor(transport, anonymous_id, "/products/gift-card/")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@contextmanager
def uvicorn_serving(app: Any) -> Iterator[str]:
    """``app`` served by a real uvicorn on 127.0.0.1, in a thread of this process. Yields the base URL."""
    uvicorn = pytest.importorskip("uvicorn")
    from conftest import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn-anonymous", daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, timeout=60.0, still_running=thread.is_alive)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.parametrize("form", COOKIE_FORMS.values(), ids=COOKIE_FORMS.keys())
def test_django_asgi_handler_visitors_error_gives_their_id(
    django_shop: None, init_capture: Callable[..., CapturingTransport], form: str
) -> None:
    from django.core.asgi import get_asgi_application

    # ASGIHandler's entry point is wrapped rather than the id read from request_started: whether what a
    # receiver sets in its context survives to the view depends on Django's and Python's versions
    # (Django 5.2 sends the signal through asyncio.gather: lost on CPython 3.11, kept on 3.13).
    transport = django_capture(init_capture)
    with uvicorn_serving(get_asgi_application()) as base_url:
        anonymous_id = visitor_id()
        assert http_get(f"{base_url}/products/gift-card/", browser_headers(form, anonymous_id)) == 500
        assert_django_visitor(transport, anonymous_id, "/products/gift-card/")


# --- FastAPI and Starlette -------------------------------------------------------------------------------------


def fastapi_shop() -> Any:
    from fastapi import FastAPI

    app = FastAPI()
    prices = {"notebook": 1250}

    @app.get("/products/{sku}")
    async def product(sku: str) -> int:
        return prices[sku]  # an unknown product: a KeyError, a 500

    # A plain function: FastAPI runs it in a worker thread.
    @app.post("/checkout")
    def checkout() -> int:
        return prices["notebook"] // 0

    @app.get("/")
    async def index() -> str:
        return "ok"

    return app


def starlette_shop() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def product(request: Request) -> PlainTextResponse:
        return PlainTextResponse({"notebook": "12.50"}[request.path_params["sku"]])

    return Starlette(routes=[Route("/products/{sku}", product)])


def starlette_integrations() -> List[Any]:
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.starlette import StarletteIntegration

    return [StarletteIntegration(), FastApiIntegration()]


@pytest.mark.parametrize("form", COOKIE_FORMS.values(), ids=COOKIE_FORMS.keys())
def test_fastapi_visitors_errors_give_their_id_in_async_and_thread_routes(
    init_capture: Callable[..., CapturingTransport], form: str
) -> None:
    pytest.importorskip("fastapi")
    transport = init_capture(*starlette_integrations())
    anonymous_id = visitor_id()
    headers = browser_headers(form, anonymous_id)
    with uvicorn_serving(fastapi_shop()) as base_url:
        assert http_get(f"{base_url}/products/gift-card", headers) == 500
        transport.wait_for(1)
        assert http_get(f"{base_url}/checkout", headers, method="POST") == 500
        transport.wait_for(2)
        assert http_get(f"{base_url}/", headers) == 200
        assert http_get(f"{base_url}/products/x", {"User-Agent": USER_AGENT}) == 500  # no cookie
        transport.wait_for(3)

    assert transport.anonymous_ids == [anonymous_id, anonymous_id, None]
    assert transport.unchanged == [True, True, True] and transport.errors == []
    assert [event["exception"]["values"][-1]["type"] for event in transport.events] == [
        "KeyError",
        "ZeroDivisionError",
        "KeyError",
    ]
    for event in transport.events[:2]:
        assert_event_holds_no_cookie(event, anonymous_id)


@pytest.mark.parametrize("form", COOKIE_FORMS.values(), ids=COOKIE_FORMS.keys())
def test_starlette_visitors_error_gives_their_id(init_capture: Callable[..., CapturingTransport], form: str) -> None:
    pytest.importorskip("fastapi")
    transport = init_capture(*starlette_integrations())
    anonymous_id = visitor_id()
    with uvicorn_serving(starlette_shop()) as base_url:
        assert http_get(f"{base_url}/products/gift-card", browser_headers(form, anonymous_id)) == 500
        transport.wait_for(1)
    assert transport.anonymous_ids == [anonymous_id]
    assert transport.unchanged == [True] and transport.errors == []
    assert_event_holds_no_cookie(transport.events[0], anonymous_id)


def test_an_error_captured_outside_the_starlette_app_still_reads_its_request(
    init_capture: Callable[..., CapturingTransport],
) -> None:
    """An outer ASGI layer that captures what escapes the app (as sentry-sdk's ASGI middleware does, which wraps
    the same ``Starlette.__call__``, outside this package's wrapper or inside it, in setup order)."""
    pytest.importorskip("fastapi")
    transport = init_capture()  # no Sentry framework integration: the outer layer below captures
    shop = starlette_shop()

    async def capturing_layer(scope: Any, receive: Any, send: Any) -> None:
        try:
            await shop(scope, receive, send)
        except LookupError:
            sentry_sdk.capture_exception()
            raise

    anonymous_id = visitor_id()
    with uvicorn_serving(capturing_layer) as base_url:
        assert http_get(f"{base_url}/products/gift-card", browser_headers('"{}"', anonymous_id)) == 500
        transport.wait_for(1)
    assert transport.anonymous_ids == [anonymous_id]


@pytest.mark.parametrize("form", COOKIE_FORMS.values(), ids=COOKIE_FORMS.keys())
def test_another_asgi_framework_with_the_middleware(init_capture: Callable[..., CapturingTransport], form: str) -> None:
    transport = init_capture()

    async def bare_application(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            raise LookupError("no such product")
        except LookupError:
            sentry_sdk.capture_exception()
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    anonymous_id = visitor_id()
    with uvicorn_serving(AnonymousIdMiddleware(bare_application)) as base_url:
        assert http_get(f"{base_url}/products/gift-card", browser_headers(form, anonymous_id)) == 500
        transport.wait_for(1)
    assert transport.anonymous_ids == [anonymous_id]
    assert_event_holds_no_cookie(transport.events[0], anonymous_id)


# --- through the integration, without a request ---------------------------------------------------------


def test_a_function_gives_signed_out_errors_an_anonymous_id_and_signed_in_ones_both(init_sentry, sink) -> None:
    seen_hints: List[bool] = []

    def from_tags(event: Mapping[str, Any], hint: Mapping[str, Any]) -> Optional[str]:
        seen_hints.append("exc_info" in hint)
        return event.get("tags", {}).get("visitor")

    integration = make_integration(sink, anonymous_id=from_tags, rate_limit=None)
    init_sentry(integration)
    for user, visitor in ((None, "v-1"), ({"id": "u-2"}, "v-2"), (None, None)):
        with new_scope() as scope:
            if user is not None:
                scope.set_user(user)
            if visitor is not None:
                scope.set_tag("visitor", visitor)
            try:
                raise KeyError("plan")
            except KeyError:
                sentry_sdk.capture_exception()
    sentry_sdk.flush(5)
    messages = sink.wait_for_messages(2)
    assert [(m.get("userId"), m.get("anonymousId")) for m in messages] == [(None, "v-1"), ("u-2", "v-2")]
    assert seen_hints == [True, True, True]
    stats = integration.stats()
    assert (stats["forwarded"], stats["skipped_no_user"], stats["internal_error"]) == (2, 1, 0)


def test_a_failing_function_counts_an_internal_error_and_the_signed_in_error_still_goes(init_sentry, sink) -> None:
    def broken(event: Mapping[str, Any], hint: Mapping[str, Any]) -> Optional[str]:
        raise RuntimeError("no visitor store")

    integration = make_integration(sink, anonymous_id=broken)
    init_sentry(integration)
    error_as_user({"id": "u-1"}, KeyError("plan"))
    sentry_sdk.flush(5)
    [message] = sink.wait_for_messages(1)
    assert message["userId"] == "u-1" and "anonymousId" not in message
    assert integration.stats()["internal_error"] == 1


def test_anonymous_id_option_errors_name_it() -> None:
    with pytest.raises(ConfigurationError, match="anonymous_id"):
        SegmentIntegration(write_key=WRITE_KEY, anonymous_id="cookies")


# --- explain and replay follow the same rule ---------------------------------------------------------------


@pytest.mark.slow
def test_replay_and_explain_forward_a_visitors_saved_error_with_its_cookie(tmp_path: Path) -> None:
    visitor = error_event(1)
    visitor.pop("user", None)
    visitor["request"]["cookies"] = {COOKIE_NAME: '"v-9"', "sessionid": SESSION_ID}
    guest = error_event(2)
    guest.pop("user", None)
    saved = write_json_lines(tmp_path / "events.jsonl", [visitor, guest])

    dry = run_cli("replay", str(saved), "--dry-run", "--anonymous-id-cookie", SEGMENT_WRITE_KEY=WRITE_KEY)
    assert dry.returncode == 0, dry.stderr
    [message] = [json.loads(line) for line in dry.stdout.splitlines() if line.startswith("{")]
    assert message["anonymousId"] == "v-9" and "userId" not in message
    assert SESSION_ID not in dry.stdout

    without = run_cli("replay", str(saved), "--dry-run", SEGMENT_WRITE_KEY=WRITE_KEY)
    assert [line for line in without.stdout.splitlines() if line.startswith("{")] == []

    one = tmp_path / "visitor.json"
    one.write_text(json.dumps(visitor), encoding="utf-8")
    explained = run_cli("explain", str(one), "--anonymous-id-cookie", "--json")
    assert explained.returncode == 0, explained.stdout + explained.stderr
    assert '"anonymousId": "v-9"' in explained.stdout
