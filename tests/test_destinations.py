"""Segment-compatible destinations: the same batch call, at another host, checked as each checks it.

Each stand-in below is a real HTTP server on 127.0.0.1 that accepts ``POST .../v1/batch`` the way
that destination's public source or documentation says it does, and answers as it would:

- RudderStack's data plane (rudderlabs/rudder-server ``gateway/``): Basic auth with the source write
  key as user (password ignored), ``Content-Encoding: gzip`` undone by its middleware, a body of at
  most 4,000 KB (``Gateway.maxReqSizeInKB``), a ``userId`` or ``anonymousId`` on every message,
  plain-text answers (``OK``; ``invalid write key`` 401; ``request size exceeds max limit`` 413;
  ``max requests limit reached`` 429).
- Customer.io Data Pipelines (docs.customer.io/integrations/api/cdp/): Basic auth with the API key
  as user and a blank password, 500 KB per batch request and 32 KB per call in it; a request over
  them is not processed, yet answered 200 unless the client sends ``X-Strict-Mode: 1``.
- Jitsu's ingest (jitsucom/jitsu ``bulker/ingest/router_batch_handler.go``): ``application/json``
  required, gzip read, the write key from ``Authorization: Basic`` (trailing ``:`` trimmed), else
  ``X-Write-Key``, else the body's ``writeKey``; per-event errors in a 200 ``{"ok": false}``.
- Hightouch Events (hightouch.com/docs/events/sdks/http, ht-sdks/events-sdk-python): Basic auth
  with the write key, or the body's ``writeKey`` as its own Python library sends it.

Nothing of this package is replaced: a real sentry-sdk client, the integration, its sending thread,
and the bytes on a real socket.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import sentry_sdk

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.delivery import SegmentEndpoint
from sentry_segment_integration.payload import encoded_size
from support import error_as_user, wait_until

WAIT = 15.0
Answer = Tuple[int, str, bytes]  # status, Content-Type, body


@dataclass
class Received:
    """One request as the destination saw it."""

    path: str
    headers: Dict[str, str]
    wire_bytes: int  # the body as sent (compressed, when it was)
    body: bytes  # after Content-Encoding
    status: int
    answer: bytes

    @property
    def messages(self) -> List[Dict[str, Any]]:
        batch = json.loads(self.body).get("batch")
        return batch if isinstance(batch, list) else []


def basic_auth(headers: Dict[str, str]) -> Optional[Tuple[str, str]]:
    """``(user, password)`` of an ``Authorization: Basic`` header, as Go's ``Request.BasicAuth``."""
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


class Destination:
    """A Segment-compatible API on 127.0.0.1; subclasses answer as their destination does."""

    path = "/v1/batch"

    def __init__(self, keys: Tuple[str, ...], prefix: str = "") -> None:
        self.keys = keys
        self.prefix = prefix
        self.received: List[Received] = []
        self.scripted: List[Answer] = []  # answers to give first, in order (a 429, say)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # Shutdown is seen within 0.05 s (the default 0.5 s poll would be teardown time).
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.prefix}"

    @property
    def accepted(self) -> List[Received]:
        with self._lock:
            return [request for request in self.received if 200 <= request.status < 300]

    @property
    def messages(self) -> List[Dict[str, Any]]:
        return [message for request in self.accepted for message in request.messages]

    def wait_for(self, count: int) -> List[Dict[str, Any]]:
        assert wait_until(lambda: len(self.messages) >= count, timeout=WAIT), (count, self.received)
        return self.messages

    def answer(self, path: str, headers: Dict[str, str], raw: bytes) -> Tuple[Answer, bytes]:
        raise NotImplementedError

    def _handle(self, path: str, headers: Dict[str, str], raw: bytes) -> Answer:
        with self._lock:
            scripted = self.scripted.pop(0) if self.scripted else None
        if scripted is not None:
            answer, body = scripted, raw
        else:
            answer, body = self.answer(path, headers, raw)
        with self._lock:
            self.received.append(Received(path, headers, len(raw), body, answer[0], answer[2]))
        return answer

    def _handler(self) -> type:
        destination = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, content_type, body = destination._handle(self.path, headers, raw)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def __enter__(self) -> Destination:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


def plain(status: int, text: str) -> Answer:
    # Go's http.Error: the message and a newline, as text/plain.
    return status, "text/plain; charset=utf-8", (text + "\n").encode()


class RudderStackDataPlane(Destination):
    """rudder-server's gateway: ``srvMux.Route("/v1", ...) r.Post("/batch", ...)`` behind
    ``middleware.UncompressMiddleware``; ``writeKeyAuth``; ``getJobDataFromRequest``."""

    MAX_REQUEST_BYTES = 4000 * 1024  # Gateway.maxReqSizeInKB, default 4000

    def answer(self, path: str, headers: Dict[str, str], raw: bytes) -> Tuple[Answer, bytes]:
        if path != self.prefix + self.path:
            return plain(404, "404 page not found"), raw
        credentials = basic_auth(headers)
        if credentials is None or not credentials[0]:
            return plain(401, "failed to read writekey from header"), raw
        if credentials[0] not in self.keys:
            return plain(401, "invalid write key"), raw
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        try:
            batch = json.loads(body)["batch"]
        except (ValueError, KeyError, TypeError):
            return plain(400, "invalid json"), body
        for message in batch:
            if not (str(message.get("userId") or "").strip() or str(message.get("anonymousId") or "").strip()):
                return plain(400, "non-identifiable request"), body
        if len(body) > self.MAX_REQUEST_BYTES:
            return plain(413, "request size exceeds max limit"), body
        return plain(200, "OK"), body


class CustomerIoPipelines(Destination):
    """Customer.io's Pipelines API: ``POST https://cdp.customer.io/v1/batch`` (``cdp-eu`` in the EU)."""

    MAX_BATCH_BYTES = 500 * 1024
    MAX_CALL_BYTES = 32 * 1024

    def __init__(self, keys: Tuple[str, ...], prefix: str = "") -> None:
        super().__init__(keys, prefix)
        self.not_processed: List[str] = []  # what permissive mode drops while answering 200

    def answer(self, path: str, headers: Dict[str, str], raw: bytes) -> Tuple[Answer, bytes]:
        if path != self.prefix + self.path:
            return (404, "application/json", b'{"error": "not found"}'), raw
        if basic_auth(headers) not in [(key, "") for key in self.keys]:
            return (401, "application/json", b'{"error": "unauthorized"}'), raw
        problems = []
        if len(raw) > self.MAX_BATCH_BYTES:
            problems.append(f"batch of {len(raw)} bytes")
        sizes = [encoded_size(message) for message in json.loads(raw)["batch"]]
        problems += [f"call of {size} bytes" for size in sizes if size > self.MAX_CALL_BYTES]
        if problems and headers.get("x-strict-mode") == "1":
            return (400, "application/json", json.dumps({"error": problems}).encode()), raw
        self.not_processed += problems
        return (200, "application/json", b"{}"), raw


class JitsuIngest(Destination):
    """Jitsu's ingest ``BatchHandler`` (``/v1/batch``, also ``/api/s/s2s/batch``)."""

    MAX_EVENT_BYTES = 1_000_000  # MAX_INGEST_PAYLOAD_SIZE

    def __init__(self, keys: Tuple[str, ...], prefix: str = "") -> None:
        super().__init__(keys, prefix)
        self.write_keys_seen: List[str] = []

    def answer(self, path: str, headers: Dict[str, str], raw: bytes) -> Tuple[Answer, bytes]:
        def reply(status: int, payload: Dict[str, Any]) -> Answer:
            return status, "application/json; charset=utf-8", json.dumps(payload).encode()

        if path != self.prefix + self.path:
            return reply(404, {"ok": False, "error": "not found"}), raw
        content_type = headers.get("content-type", "").split(";")[0].strip()
        if not content_type.endswith(("application/json", "text/plain")):
            return reply(400, {"ok": False, "error": "invalid content type"}), raw
        body = gzip.decompress(raw) if "gzip" in headers.get("content-encoding", "") else raw
        payload = json.loads(body)
        authorization = headers.get("authorization", "")
        if authorization:
            write_key = base64.b64decode(authorization.removeprefix("Basic ")).decode().removesuffix(":")
        else:
            write_key = headers.get("x-write-key") or payload.get("writeKey") or ""
        self.write_keys_seen.append(write_key)
        if write_key not in self.keys:
            return reply(401, {"ok": False, "error": "stream not found"}), body
        errors = []
        for event in payload["batch"]:
            if event.get("type") == "track" and not 0 < len(event.get("event") or "") <= 128:
                errors.append(f"Message ID: {event.get('messageId')}: invalid track event name")
            elif encoded_size(event) > self.MAX_EVENT_BYTES:
                errors.append(f"Message ID: {event.get('messageId')}: message size is too big")
        batch = payload["batch"]
        answer: Dict[str, Any] = {"ok": not errors, "receivedEvents": len(batch), "okEvents": len(batch) - len(errors)}
        if errors:
            answer["errors"] = errors
        return reply(200, answer), body


class HightouchEvents(Destination):
    """Hightouch Events' HTTP API: ``POST https://us-east-1.hightouch-events.com/v1/batch``."""

    def answer(self, path: str, headers: Dict[str, str], raw: bytes) -> Tuple[Answer, bytes]:
        if path != self.prefix + self.path:
            return (404, "application/json", b'{"error": "not found"}'), raw
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        credentials = basic_auth(headers)
        key = credentials[0] if credentials else json.loads(body).get("writeKey")
        if key not in self.keys:
            return (401, "application/json", b'{"error": "invalid write key"}'), body
        return (200, "application/json", b'{"message": "ok"}'), body


@pytest.fixture
def destination(request: pytest.FixtureRequest) -> Iterator[Destination]:
    kind, keys, prefix = request.param
    with kind(keys, prefix) as server:
        yield server


def integration_for(host: str, write_key: str, **options: Any) -> SegmentIntegration:
    options.setdefault("upload_interval", 0.05)
    options.setdefault("rate_limit", None)
    options.setdefault("organization", f"destinations-{host}")
    return SegmentIntegration(write_key=write_key, host=host, **options)


def capture(count: int, prefix: str = "user") -> List[str]:
    return [str(error_as_user({"id": f"{prefix}-{n}"})) for n in range(count)]


def forward(
    init_sentry: Callable[..., Any], destination: Destination, write_key: str, count: int, **options: Any
) -> Tuple[SegmentIntegration, List[Dict[str, Any]]]:
    """``count`` errors captured with an integration sending to ``destination``: the integration, and
    the messages the destination took, checked to be those errors (each once)."""
    integration = integration_for(destination.base_url, write_key, **options)
    init_sentry(integration)

    event_ids = capture(count)
    sentry_sdk.flush(WAIT)
    messages = destination.wait_for(count)

    assert sorted(message["messageId"] for message in messages) == sorted(event_ids)
    return integration, messages


RUDDER_KEY = "2Lq6XgWmA8h1nQd0RudderKey7"
CIO_KEY = "b7a1c0ffee5ca1ab1e0ddba11cdpkey"
JITSU_KEY = "js4f9a:stream_secret_8c1d"  # Jitsu's keys are "id:secret"
HIGHTOUCH_KEY = "5b1f0e7d9c2a4e6b8d0f1a3c5e7b9d1f"


@pytest.mark.parametrize(
    "destination, prefix",
    [
        ((RudderStackDataPlane, (RUDDER_KEY,), ""), ""),
        # A self-hosted data plane behind a reverse proxy that routes a path to it.
        ((RudderStackDataPlane, (RUDDER_KEY,), "/rudder"), "/rudder"),
    ],
    indirect=["destination"],
    ids=["data-plane", "behind-a-path-prefix"],
)
def test_rudderstack_data_plane_takes_gzipped_batches(
    init_sentry: Callable[..., Any], destination: Destination, prefix: str
) -> None:
    integration, messages = forward(init_sentry, destination, RUDDER_KEY, 40, gzip=True)
    for request in destination.received:
        assert request.status == 200
        assert request.path == prefix + "/v1/batch"
        assert basic_auth(request.headers) == (RUDDER_KEY, "")
        assert request.headers["content-encoding"] == "gzip"
        assert request.wire_bytes < len(request.body) <= RudderStackDataPlane.MAX_REQUEST_BYTES
    assert {message["type"] for message in messages} == {"track"}
    assert integration.stats()["delivery_failed"] == 0


@pytest.mark.parametrize("destination", [(RudderStackDataPlane, (RUDDER_KEY,), "")], indirect=True, ids=["data-plane"])
def test_rudderstack_refusing_the_write_key_is_one_attempt_and_counted(
    init_sentry: Callable[..., Any], destination: Destination
) -> None:
    # A key of another source (or a Segment key) gets rudder-server's plain-text 401: not retried.
    integration = integration_for(destination.base_url, "aSegmentKeyNotRudders1", max_retries=5)
    init_sentry(integration)

    capture(3)
    assert wait_until(lambda: integration.stats()["delivery_failed"] == 3, timeout=WAIT)
    sentry_sdk.flush(1)

    assert destination.messages == []
    assert {request.status for request in destination.received} == {401}
    attempted = [json.loads(request.body)["batch"] for request in destination.received]
    assert sum(len(batch) for batch in attempted) == 3  # each message tried once, never again


@pytest.mark.parametrize("destination", [(RudderStackDataPlane, (RUDDER_KEY,), "")], indirect=True, ids=["data-plane"])
def test_rudderstack_rate_limit_answer_is_retried(init_sentry: Callable[..., Any], destination: Destination) -> None:
    # RudderStack Cloud Free answers 429 past 1,000 events a minute; the batch goes again.
    destination.scripted.append(plain(429, "max requests limit reached"))
    integration, _ = forward(init_sentry, destination, RUDDER_KEY, 2, max_retries=3)
    assert destination.received[0].status == 429
    assert integration.stats()["delivery_failed"] == 0


@pytest.mark.parametrize("destination", [(CustomerIoPipelines, (CIO_KEY,), "")], indirect=True, ids=["pipelines"])
def test_customer_io_batches_stay_within_500_kb_and_32_kb_per_call(
    init_sentry: Callable[..., Any], destination: Destination
) -> None:
    # Customer.io answers 200 to what it does not process (no X-Strict-Mode): nothing may exceed.
    bulky = {f"note{n}": "x" * 2000 for n in range(12)}  # about 24 KB per call
    integration = integration_for(destination.base_url, CIO_KEY, properties=lambda event, hint: bulky)
    init_sentry(integration)

    event_ids = capture(60)
    huge = error_as_user({"id": "huge"}, RuntimeError("y" * 200_000))  # fitted to the 32 KB a call may have
    sentry_sdk.flush(WAIT)
    messages = destination.wait_for(61)

    assert sorted(message["messageId"] for message in messages) == sorted([*event_ids, str(huge)])
    assert isinstance(destination, CustomerIoPipelines)
    assert destination.not_processed == []
    assert len(destination.received) >= 3
    for request in destination.received:
        assert request.path == "/v1/batch"
        assert basic_auth(request.headers) == (CIO_KEY, "")
        assert "content-encoding" not in request.headers  # gzip is not documented for the Pipelines API
        assert len(request.body) <= CustomerIoPipelines.MAX_BATCH_BYTES
        assert all(encoded_size(message) <= CustomerIoPipelines.MAX_CALL_BYTES for message in request.messages)


@pytest.mark.parametrize(
    "host, url",
    [
        ("https://cdp.customer.io", "https://cdp.customer.io/v1/batch"),
        ("https://cdp-eu.customer.io", "https://cdp-eu.customer.io/v1/batch"),
        ("https://cdp-eu.customer.io/", "https://cdp-eu.customer.io/v1/batch"),
        ("https://acme.dataplane.rudderstack.com", "https://acme.dataplane.rudderstack.com/v1/batch"),
        ("https://acme.dataplane.eu.rudderstack.com", "https://acme.dataplane.eu.rudderstack.com/v1/batch"),
        ("https://us-east-1.hightouch-events.com", "https://us-east-1.hightouch-events.com/v1/batch"),
        ("https://example.com/segment", "https://example.com/segment/v1/batch"),
        ("https://example.com/segment/", "https://example.com/segment/v1/batch"),
    ],
)
def test_each_documented_host_form_reaches_its_batch_url(host: str, url: str) -> None:
    # Every destination appends /v1/batch to a base URL, as the Segment library does: `host` is
    # that base, path prefix kept (so "https://cdp.customer.io/v1" would be one /v1 too many).
    assert SegmentEndpoint(host, timeout=1.0).url == url


@pytest.mark.parametrize("destination", [(JitsuIngest, (JITSU_KEY,), "")], indirect=True, ids=["ingest"])
def test_jitsu_reads_the_key_from_basic_auth_and_takes_gzip(
    init_sentry: Callable[..., Any], destination: Destination
) -> None:
    _, messages = forward(init_sentry, destination, JITSU_KEY, 5, gzip=True)
    assert isinstance(destination, JitsuIngest)
    assert set(destination.write_keys_seen) == {JITSU_KEY}  # "key:" with its colon trimmed
    for request in destination.received:
        assert request.headers["content-type"] == "application/json"
        assert request.headers["content-encoding"] == "gzip"
        assert json.loads(request.answer)["ok"] is True
    # Jitsu turns any other character of a messageId into "_": the Sentry event id has none.
    assert all(message["messageId"].isalnum() for message in messages)


@pytest.mark.parametrize("destination", [(HightouchEvents, (HIGHTOUCH_KEY,), "")], indirect=True, ids=["events"])
def test_hightouch_finds_the_write_key_either_way(init_sentry: Callable[..., Any], destination: Destination) -> None:
    forward(init_sentry, destination, HIGHTOUCH_KEY, 3)
    for request in destination.received:
        # Basic auth as Hightouch documents it, and the body's writeKey as its own library sends it.
        assert basic_auth(request.headers) == (HIGHTOUCH_KEY, "")
        assert json.loads(request.body)["writeKey"] == HIGHTOUCH_KEY
