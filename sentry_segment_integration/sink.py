"""A Segment-compatible receiver on 127.0.0.1, for the demo, development and tests.

It speaks Segment's tracking API (``/v1/batch``, ``/v1/track``; gzip bodies; the write key as
Basic-auth user or as ``writeKey`` in the body) and also accepts Sentry's envelope endpoint, so a
Sentry DSN can point at it too. Answers can be scripted to stand in for a failing Segment.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Deque, Dict, List, Optional

SEGMENT_PATHS = ("/v1/batch", "/v1/track")


@dataclass
class ReceivedBatch:
    path: str
    write_key: Optional[str]
    messages: List[Dict[str, Any]]
    headers: Dict[str, str]


@dataclass
class ScriptedAnswer:
    status: int
    headers: Dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"code": "error", "message": "scripted failure"}'
    delay: float = 0.0
    hang_up: bool = False
    record: bool = False


class SegmentSink:
    """Records what arrives; ``with SegmentSink() as sink:`` serves on a free port."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        on_batch: Optional[Callable[[ReceivedBatch], None]] = None,
        keep: bool = True,
    ) -> None:
        """``on_batch`` is called with each accepted batch (on a request thread, before the answer
        is sent); ``keep=False`` keeps no batch in memory (a receiver that runs for hours)."""
        self._on_batch = on_batch
        self._keep = keep
        self.batches: List[ReceivedBatch] = []
        self.sentry_event_ids: List[str] = []
        self.requests = 0
        self._script: Deque[ScriptedAnswer] = deque()
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> SegmentSink:
        self._thread = threading.Thread(target=self._server.serve_forever, name="segment-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SegmentSink:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def messages(self) -> List[Dict[str, Any]]:
        with self._changed:
            return [message for batch in self.batches for message in batch.messages]

    def answer_next(
        self,
        status: int,
        times: int = 1,
        headers: Optional[Dict[str, str]] = None,
        delay: float = 0.0,
        hang_up: bool = False,
    ) -> None:
        """Answer the next ``times`` Segment requests with ``status`` instead of accepting them,
        after ``delay`` seconds; ``hang_up``: close the connection without any answer instead."""
        with self._changed:
            for _ in range(times):
                self._script.append(ScriptedAnswer(status, dict(headers or {}), delay=delay, hang_up=hang_up))

    def clear_answers(self) -> None:
        """Forget the scripted answers not yet given: from now on, accept every request."""
        with self._changed:
            self._script.clear()

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """Accept the next ``times`` Segment requests only after ``seconds``: a slow Segment."""
        with self._changed:
            for _ in range(times):
                self._script.append(ScriptedAnswer(200, delay=seconds, record=True))

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Wait until at least ``count`` messages arrived (or ``timeout`` passed); return them all."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(len(batch.messages) for batch in self.batches) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        return self.messages

    def _next_scripted(self) -> Optional[ScriptedAnswer]:
        with self._changed:
            self.requests += 1
            return self._script.popleft() if self._script else None

    def _record(self, batch: ReceivedBatch) -> None:
        with self._changed:
            if self._keep:
                self.batches.append(batch)
            self._changed.notify_all()
        if self._on_batch is not None:
            self._on_batch(batch)

    def _record_sentry(self, event_id: str) -> None:
        with self._changed:
            self.sentry_event_ids.append(event_id)
            self._changed.notify_all()


def write_key_of(headers: Any, body: Dict[str, Any]) -> Optional[str]:
    authorization = headers.get("Authorization") or ""
    if authorization.startswith("Basic "):
        try:
            return base64.b64decode(authorization[6:]).decode().split(":", 1)[0]
        except ValueError:
            return None
    key = body.get("writeKey")
    return key if isinstance(key, str) else None


def _sentry_event_ids(body: bytes) -> List[str]:
    """Event ids of the error events in a Sentry envelope (one JSON header line per item)."""
    lines = body.split(b"\n")
    ids = []
    for index, line in enumerate(lines[1:], start=1):
        try:
            item_header = json.loads(line)
        except ValueError:
            continue
        if isinstance(item_header, dict) and item_header.get("type") == "event" and index + 1 < len(lines):
            event = json.loads(lines[index + 1])
            ids.append(str(event.get("event_id")))
    return ids


def _sentry_store_event_id(body: bytes) -> List[str]:
    """sentry-sdk 1.x posts a plain error event, alone, to the older /store/ endpoint."""
    try:
        event = json.loads(body)
    except ValueError:
        return []
    return [str(event.get("event_id"))] if isinstance(event, dict) else []


def _handler_for(sink: SegmentSink) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes, headers: Optional[Dict[str, str]] = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            path = self.path.split("?", 1)[0]
            if path.startswith("/api/") and path.rstrip("/").endswith(("/envelope", "/store")):
                store = path.rstrip("/").endswith("/store")
                for event_id in _sentry_store_event_id(raw) if store else _sentry_event_ids(raw):
                    sink._record_sentry(event_id)
                return self._answer(200, b"{}")
            if path not in SEGMENT_PATHS:
                return self._answer(404, b'{"code": "not_found", "message": "unknown path"}')
            scripted = sink._next_scripted()
            if scripted is not None:
                time.sleep(scripted.delay)
                if scripted.hang_up:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                if not scripted.record:
                    return self._answer(scripted.status, scripted.body, scripted.headers)
            try:
                body = json.loads(raw)
            except ValueError:
                return self._answer(400, b'{"code": "invalid_request", "message": "body is not JSON"}')
            if not isinstance(body, dict):
                return self._answer(400, b'{"code": "invalid_request", "message": "body is not an object"}')
            messages = body.get("batch") if path == "/v1/batch" else [body]
            if not isinstance(messages, list):
                return self._answer(400, b'{"code": "invalid_request", "message": "batch is not a list"}')
            headers = {name: value for name, value in self.headers.items() if name.lower() != "authorization"}
            sink._record(ReceivedBatch(path, write_key_of(self.headers, body), messages, headers))
            self._answer(200, b'{"success": true}')

    return Handler
