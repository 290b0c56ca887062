"""The Django example shop (examples/django_app), run as it is deployed: its WSGI application behind a
real HTTP server on 127.0.0.1, a user signing in through Django's login form, Sentry configured in
settings from the environment.

Not through ``django.test.Client``: it calls Django's request handler directly, skipping the WSGI entry
point where sentry-sdk's DjangoIntegration gives each request its own scope and records its URL, method
and headers. Under it an event has no page, and what one request put on the scope stays there for the
next request and the next test: its transaction name, and, while its response is referenced, its
request.user, so that an anonymous request's error carries the previous request's user id.

Django can be set up only once per process, so the module sets it up once (settings.py calls the
example's ``init_sentry()`` then); each test then calls that same ``init_sentry()`` with its own
environment, as a new deployment would.
"""

from __future__ import annotations

import importlib
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.cookiejar import CookieJar
from typing import Any, Dict, Iterator, Optional
from wsgiref.simple_server import make_server

import pytest

pytest.importorskip("django")

import sentry_sdk

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.testing import SegmentSink
from support import (
    QuietWSGIHandler,
    as_at_application_start,
    close_and_reset_sentry,
    current_client,
    django_example_set_up,
)

WRITE_KEY = "django_shop_write_key"
PASSWORD = "correct horse battery staple"
USER_AGENT = "Mozilla/5.0 (django example test)"


@dataclass
class Shop:
    application: Any  # the example's shopsite.wsgi.application
    ada_id: int


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """Django set up with the example's settings, its database migrated, and a user, ada."""
    with django_example_set_up(tmp_path_factory.mktemp("shop"), WRITE_KEY):
        application = importlib.import_module("shopsite.wsgi").application
        from django.contrib.auth.models import User

        User.objects.create_user("grace", "grace@example.com", "another password")
        ada = User.objects.create_user("ada", "ada@example.com", PASSWORD)
        close_and_reset_sentry()  # the client settings.py made is not used again
        yield Shop(application, ada.pk)


@pytest.fixture
def server(shop: Shop, sink: SegmentSink, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The shop served on 127.0.0.1, with Sentry re-initialised from the environment of a deployment
    pointed at ``sink``. Yields the base URL."""
    monkeypatch.setenv("SENTRY_DSN", f"http://public@127.0.0.1:{sink.port}/42")
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRITE_KEY)
    monkeypatch.setenv("SEGMENT_HOST", sink.url)
    monkeypatch.setenv("SENTRY_ENVIRONMENT", "staging")
    monkeypatch.setenv("SENTRY_RELEASE", "django-shop@3.1.0")
    with as_at_application_start():
        importlib.import_module("shop.sentry_setup").init_sentry()
        httpd = make_server("127.0.0.1", 0, shop.application, handler_class=QuietWSGIHandler)
        # poll_interval: shutdown() waits up to one interval (0.5 s by default)
        thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="django-shop", daemon=True
        )
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_port}"
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
        close_and_reset_sentry()


@dataclass
class Page:
    status: int
    url: str
    text: str


class Browser:
    """What a browser does here: keep cookies, send a form's CSRF token back, follow redirects."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.csrf_token: Optional[str] = None
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(CookieJar())
        )

    def get(self, path: str, headers: Optional[Dict[str, str]] = None) -> Page:
        return self._open(urllib.request.Request(self.base_url + path, headers=headers or {}))

    def post(self, path: str, form: Dict[str, str], headers: Optional[Dict[str, str]] = None) -> Page:
        fields = {**form, "csrfmiddlewaretoken": self.csrf_token or ""}
        body = urllib.parse.urlencode(fields).encode()
        return self._open(urllib.request.Request(self.base_url + path, data=body, headers=headers or {}))

    def _open(self, request: urllib.request.Request) -> Page:
        try:
            with self._opener.open(request, timeout=10) as response:
                page = Page(response.status, response.geturl(), response.read().decode())
        except urllib.error.HTTPError as error:
            page = Page(error.code, error.geturl(), error.read().decode())
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        if token:
            self.csrf_token = token.group(1)
        return page


def sign_in(browser: Browser, username: str, password: str) -> Page:
    assert browser.get("/accounts/login/").status == 200
    return browser.post("/accounts/login/", {"username": username, "password": password})


def segment_integration() -> SegmentIntegration:
    integration = current_client().get_integration(SegmentIntegration)
    assert isinstance(integration, SegmentIntegration)
    return integration


def test_signed_in_users_checkout_error_arrives_in_segment_with_their_django_user_id(
    shop: Shop, server: str, sink: SegmentSink
) -> None:
    browser = Browser(server)
    home = sign_in(browser, "ada", PASSWORD)
    assert (home.status, home.url) == (200, f"{server}/")
    assert "Signed in as ada." in home.text
    paid = browser.post("/checkout/", {"notebook": "2", "installments": "2"})
    assert (paid.status, paid.text) == (200, "Charged 2 x 1250 cents.\n")

    failed = browser.post(
        "/checkout/?coupon=SPRING", {"notebook": "2"}, headers={"User-Agent": USER_AGENT, "Referer": f"{server}/"}
    )
    assert failed.status == 500
    sentry_sdk.flush(5)

    [message] = sink.wait_for_messages(1)
    [batch] = sink.batches
    assert batch.write_key == WRITE_KEY
    assert message["type"] == "track"
    assert message["event"] == "Error Captured"
    # The shop never calls set_user: DjangoIntegration took the id from request.user.
    assert message["userId"] == str(shop.ada_id)
    assert sink.sentry_event_ids == [message["messageId"]]  # the one error, nothing for the paid checkout
    properties = message["properties"]
    assert properties["eventId"] == message["messageId"]
    assert properties["exceptionType"] == "PaymentError"
    assert properties["transaction"] == "/checkout/"
    assert properties["level"] == "error"
    assert (properties["environment"], properties["release"]) == ("staging", "django-shop@3.1.0")
    assert properties["userAgent"] == USER_AGENT
    assert properties["page"] == {
        "url": f"{server}/checkout/",
        "method": "POST",
        "search": "coupon=SPRING",
        "referer": f"{server}/",
    }
    assert message["context"]["page"]["path"] == "/checkout/"
    assert message["context"]["ip"] == "127.0.0.1"
    assert "ada@example.com" not in json.dumps(message)  # the email went to Sentry only
    assert segment_integration().stats()["forwarded"] == 1


def test_anonymous_error_reaches_sentry_but_not_segment(server: str, sink: SegmentSink) -> None:
    browser = Browser(server)
    assert browser.get("/products/gift-card/").status == 500
    # Checkout needs a signed-in user: an anonymous one is sent to the login form, and nothing fails.
    browser.get("/accounts/login/")
    redirected = browser.post("/checkout/", {"notebook": "1"})
    assert (redirected.status, redirected.url) == (200, f"{server}/accounts/login/?next=/checkout/")
    sentry_sdk.flush(5)

    assert len(sink.sentry_event_ids) == 1
    assert sink.messages == []
    stats = segment_integration().stats()
    assert (stats["skipped_no_user"], stats["forwarded"]) == (1, 0)


@pytest.mark.slow
def test_each_request_has_its_own_user(shop: Shop, server: str, sink: SegmentSink) -> None:
    ada, guest = Browser(server), Browser(server)
    sign_in(ada, "ada", PASSWORD)
    for browser in (ada, guest, ada, guest):
        assert browser.get("/products/gift-card/").status == 500
    sentry_sdk.flush(5)

    messages = sink.wait_for_messages(2)
    assert [message["userId"] for message in messages] == [str(shop.ada_id)] * 2
    assert [message["properties"]["transaction"] for message in messages] == ["/products/{sku}/"] * 2
    assert len(sink.sentry_event_ids) == 4
    assert segment_integration().stats()["skipped_no_user"] == 2
