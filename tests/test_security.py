"""The write key, and credentials in URLs, never in logs (at DEBUG, every logger), repr, errors or stats."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, List

import pytest
import sentry_sdk

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.testing import SegmentSink
from support import all_logged_text, error_as_user

SECRET_KEY = "wk_secret_do_not_log_4f9a8b7c"
PROXY_PASSWORD = "proxy-pass-do-not-log"


def test_write_key_never_logged_even_at_debug(init_sentry, sink: SegmentSink, everything_at_debug) -> None:
    sink.answer_next(401)
    sink.answer_next(500)
    integration = SegmentIntegration(write_key=SECRET_KEY, host=sink.url, upload_size=1, upload_interval=0.05)
    init_sentry(integration, debug=True)
    for n in range(4):
        error_as_user({"id": f"u-{n}"})
    sentry_sdk.flush(10)
    sink.wait_for_messages(3)

    logged = all_logged_text(everything_at_debug)
    assert "making request" in logged  # the Segment library did log its request bodies
    assert SECRET_KEY not in logged
    assert SECRET_KEY not in repr(integration)
    assert SECRET_KEY not in str(integration.stats())
    assert {batch.write_key for batch in sink.batches} == {SECRET_KEY}


def test_credentials_in_host_never_logged(init_sentry, sink: SegmentSink, everything_at_debug) -> None:
    host = sink.url.replace("http://", f"http://proxyuser:{PROXY_PASSWORD}@")
    integration = SegmentIntegration(write_key=SECRET_KEY, host=host, max_retries=0, upload_interval=0.05)
    init_sentry(integration)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(5)
    logged = all_logged_text(everything_at_debug)
    assert PROXY_PASSWORD not in logged
    assert SECRET_KEY not in logged
    assert PROXY_PASSWORD not in repr(integration)


def key_forms(key: str) -> List[str]:
    basic = base64.b64encode(f"{key}:".encode()).decode()
    return [key, basic, basic.rstrip("="), json.dumps(key)[1:-1]]


@pytest.fixture
def echoing_proxy() -> Iterator[str]:
    """A gateway that refuses with 401 and echoes the request's Authorization header in its body."""

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"error": "unauthorized", "got": self.headers.get("Authorization")}).encode()
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    # poll_interval: shutdown() waits up to one interval (0.5 s by default)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
@pytest.mark.parametrize("as_json", [False, True])
def test_check_never_prints_the_key_a_gateway_echoes(echoing_proxy: str, as_json: bool) -> None:
    environment = {**os.environ, "SEGMENT_WRITE_KEY": SECRET_KEY + "\n"}  # as read from a secret file
    command = [sys.executable, "-m", "sentry_segment_integration", "check", "--host", echoing_proxy]
    result = subprocess.run(command + (["--json"] if as_json else []), capture_output=True, text=True, env=environment)
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "401" in output
    assert [form for form in key_forms(SECRET_KEY) if form in output] == []


def test_every_form_of_the_key_is_kept_out_of_debug_logs(init_sentry, sink: SegmentSink, everything_at_debug) -> None:
    integration = SegmentIntegration(write_key=SECRET_KEY + "\n", host=sink.url, organization="forms")
    init_sentry(integration)
    logging.getLogger("sentry_segment_integration").debug("escaped %s", json.dumps(SECRET_KEY + "\n"))
    logging.getLogger("segment").debug("auth Basic %s", key_forms(SECRET_KEY)[1])
    error_as_user({"id": "u1"})
    sentry_sdk.flush(5)
    assert sink.wait_for_messages(1)
    text = all_logged_text(everything_at_debug)
    assert "making request" in text
    assert [form for form in key_forms(SECRET_KEY) if form in text] == []


STORAGE_PASSWORD = "pa/ss?storage#do-not-log"


def test_storage_password_with_unencoded_separators_never_logged(
    init_sentry, sink: SegmentSink, everything_at_debug, closed_port: int
) -> None:
    # A password holding '/', '?' and '#' as written in an env var: a URL parser reads the host
    # out of the middle of it. Redis is unreachable, so the limiter logs its failure.
    storage = f"redis://:{STORAGE_PASSWORD}@127.0.0.1:{closed_port}/0"
    integration = SegmentIntegration(
        write_key=SECRET_KEY, host=sink.url, rate_limit=10, rate_limit_storage=storage, upload_interval=0.05
    )
    init_sentry(integration, debug=True)
    for n in range(3):
        error_as_user({"id": f"u-{n}"})
    sentry_sdk.flush(5)

    logged = all_logged_text(everything_at_debug)
    assert "127.0.0.1" in logged  # the limiter did log where it could not get to
    shown = logged + repr(integration) + repr(integration._options) + str(integration.stats())
    for secret in (STORAGE_PASSWORD, "pa/ss", "storage#do-not-log"):
        assert secret not in shown
