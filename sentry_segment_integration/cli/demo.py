"""``sentry-segment demo``: a real error from a tiny WSGI shop, forwarded to a local receiver."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Iterable, TextIO
from wsgiref.simple_server import WSGIRequestHandler, make_server

import sentry_sdk
from sentry_sdk.integrations.wsgi import SentryWsgiMiddleware

from sentry_segment_integration.integration import SegmentIntegration
from sentry_segment_integration.testing import SegmentSink

DEMO_WRITE_KEY = "demo_write_key"
DEMO_USER_ID = "demo-user-42"
# The demo shows the IP address Sentry records: sentry-sdk 1.x and 2.x record it with
# send_default_pii=True; 3.x does by default and refuses that option.
USER_DETAILS_ON: Dict[str, Any] = {"send_default_pii": True} if sentry_sdk.VERSION.startswith(("1.", "2.")) else {}

StartResponse = Callable[..., Any]


def shop_app(environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """A tiny WSGI shop: the user signs in with a header, and checkout fails."""
    user_id = environ.get("HTTP_X_USER_ID")
    if user_id:
        sentry_sdk.set_user({"id": user_id, "email": f"{user_id}@example.com"})
    if environ.get("PATH_INFO") == "/checkout":
        cart: Dict[str, int] = {}
        total = sum(cart.values())
        _ = 100 / total  # ZeroDivisionError: the bug the demo reports
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class _QuietHandler(WSGIRequestHandler):
    """The demo's error is expected: keep its traceback out of the demo's output."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def get_stderr(self) -> TextIO:
        return io.StringIO()


def _request_failing_page(port: int) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/checkout?coupon=SPRING",
        headers={
            "X-User-Id": DEMO_USER_ID,
            "User-Agent": "Mozilla/5.0 (sentry-segment demo)",
            "Referer": f"http://127.0.0.1:{port}/cart",
        },
        method="POST",
        data=b"",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def run_demo(out: TextIO) -> int:
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    with SegmentSink() as sink:
        say("sentry-segment-integration demo: no account, no network, everything on 127.0.0.1")
        say(f"  Segment-compatible receiver listening on {sink.url} (it also takes Sentry's envelopes)")
        integration = SegmentIntegration(write_key=DEMO_WRITE_KEY, host=sink.url, upload_interval=0.1)
        sentry_sdk.init(
            dsn=f"http://public@127.0.0.1:{sink.port}/1",
            release="demo-shop@1.0.0",
            environment="demo",
            integrations=[integration],
            **USER_DETAILS_ON,
        )
        app = SentryWsgiMiddleware(shop_app)
        server = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
        threading.Thread(target=server.handle_request, daemon=True).start()
        status = _request_failing_page(server.server_port)
        server.server_close()
        say(f"  app: POST /checkout?coupon=SPRING as signed-in user {DEMO_USER_ID!r} -> HTTP {status}")
        sentry_sdk.flush(timeout=5)
        messages = sink.wait_for_messages(1, timeout=5)
        sent_ids = list(sink.sentry_event_ids)
        say(f"  Sentry received event(s): {', '.join(sent_ids) if sent_ids else '(none decoded)'}")
        say(f"  Segment received {len(messages)} message(s):")
        for message in messages:
            say(json.dumps(message, indent=2, sort_keys=True))
        keys_matched = all(batch.write_key == DEMO_WRITE_KEY for batch in sink.batches)
        say(f"  write key sent as Basic auth: {'yes' if keys_matched and sink.batches else 'NO'}")
        say(f"  integration.stats(): {json.dumps(integration.stats())}")
        sentry_sdk.init()
    ok = bool(messages) and keys_matched and (not sent_ids or messages[0]["messageId"] in sent_ids)
    say("OK: the error arrived in Segment as 'Error Captured'." if ok else "FAILED: nothing arrived in Segment.")
    return 0 if ok else 1
