"""A Segment-compatible receiver on 127.0.0.1, for the demo, development and tests.

It speaks Segment's tracking API (``/v1/batch``, ``/v1/track``; the write key as Basic-auth user or as
``writeKey`` in the body) and also accepts Sentry's envelope endpoint, so a Sentry DSN can point at it
too. Bodies may be compressed with gzip, deflate (zlib or raw) or br (brotli, when the ``brotli`` package
is importable: sentry-sdk then compresses every envelope with it). A body it cannot read is answered
415 or 400 and listed in :attr:`SegmentSink.unreadable`, never dropped without a trace.

Answers can be scripted to stand in for a failing Segment: an error status, a delay, a hang-up, a
redirect (to an HTML page, as an SSO proxy does), or a 200 whose body trickles in a byte at a time.
Every connection has TCP_NODELAY set and each answer goes out in one write, so a keep-alive client
never waits for a delayed ACK.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import importlib
import json
import socket
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

SEGMENT_PATHS = ("/v1/batch", "/v1/track")

# How long ``stop()`` waits, at most, for the threads of open connections to end once they are shut.
_STOP_JOIN_TIMEOUT = 5.0
# How often the accepting thread looks whether ``stop()`` was called: how long ``stop()`` takes.
_POLL_INTERVAL = 0.05
# A dribbled answer's declared length: at one byte per tick it never completes while a test runs.
_DRIBBLE_LENGTH = 1 << 20
_DRIBBLE_TAIL = b"{}"
_LOGIN_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>\n"
    b'<form method="post" action="/login"><h1>Sign in to continue</h1>\n'
    b'<input name="username"> <input name="password" type="password"> <button>Sign in</button>\n'
    b"</form></body></html>\n"
)


def _import_brotli() -> Any:
    try:
        return importlib.import_module("brotli")
    except ImportError:
        return None


_brotli: Any = _import_brotli()


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
    # Seconds between the bytes of a 200 answer's body that never completes (the batch is not recorded).
    dribble: Optional[float] = None


class SegmentSink:
    """Records what arrives; ``with SegmentSink() as sink:`` serves on a free port."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        on_batch: Optional[Callable[[ReceivedBatch], None]] = None,
        keep: bool = True,
        on_connection: Optional[Callable[[socket.socket], None]] = None,
    ) -> None:
        """``on_batch`` is called with each accepted batch (on a request thread, before the answer
        is sent); ``keep=False`` keeps no batch in memory (a receiver that runs for hours).
        ``on_connection`` is called with the socket of each accepted connection (on the accepting
        thread, TCP_NODELAY already set, before any request on it is read)."""
        self._on_batch = on_batch
        self._on_connection = on_connection
        self._keep = keep
        self.batches: List[ReceivedBatch] = []
        self.sentry_event_ids: List[str] = []
        # Segment POST requests that arrived, whatever they were answered.
        self.requests = 0
        # GET requests that arrived (what a client that followed a 301/302/303 sends next).
        self.get_requests = 0
        # One line per request whose body could not be read, saying why; each was answered 400 or 415.
        self.unreadable: List[str] = []
        self._script: Deque[ScriptedAnswer] = deque()
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._connections: Dict[threading.Thread, socket.socket] = {}
        self._server = _Server((host, port), _handler_for(self), self)
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> SegmentSink:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(_POLL_INTERVAL,), name="segment-sink", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, end every open connection (a delayed or dribbled answer included) and wait
        for their threads: none is left running afterwards. A second call does nothing."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        with self._changed:
            open_connections = dict(self._connections)
            self._changed.notify_all()
        for connection in open_connections.values():
            with contextlib.suppress(OSError):  # already closed by its client or its thread
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + _STOP_JOIN_TIMEOUT
        current = threading.current_thread()
        for thread in open_connections:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))

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

    def redirect_next(self, status: int, location: str, times: int = 1) -> None:
        """Answer the next ``times`` Segment requests with the redirect ``status`` (301, 302, 303,
        307, 308) and ``Location: location``, as a proxy in front of Segment might. It is
        ``answer_next(status, times, headers={"Location": location})``. A client that follows a
        301/302/303 sends a GET next: every GET is answered 200 with an HTML sign-in page and counted
        in :attr:`get_requests`; a 307/308 repeats the POST, to ``location``."""
        if not 300 <= status <= 399:
            raise ValueError(f"redirect_next: {status} is not a redirect status (3xx)")
        self.answer_next(status, times=times, headers={"Location": location})

    def clear_answers(self) -> None:
        """Forget the scripted answers not yet given: from now on, accept every request."""
        with self._changed:
            self._script.clear()

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """Accept the next ``times`` Segment requests only after ``seconds``: a slow Segment."""
        with self._changed:
            for _ in range(times):
                self._script.append(ScriptedAnswer(200, delay=seconds, record=True))

    def dribble_next(self, seconds_per_byte: float, times: int = 1) -> None:
        """Answer the next ``times`` Segment requests with the status line and headers of a 200 at
        once, then its (long) body one byte every ``seconds_per_byte`` seconds: a slow endpoint that
        a client's per-read timeout never catches. The batch is not recorded. The answer ends when
        the client closes the connection or the sink is stopped."""
        if not seconds_per_byte > 0:
            raise ValueError(f"dribble_next: seconds_per_byte must be positive, not {seconds_per_byte!r}")
        with self._changed:
            for _ in range(times):
                self._script.append(ScriptedAnswer(200, dribble=seconds_per_byte))

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Wait until at least ``count`` messages arrived (or ``timeout`` passed); return them all."""
        self._wait_until(lambda: sum(len(batch.messages) for batch in self.batches) >= count, timeout)
        return self.messages

    def wait_for_sentry_events(self, count: int, timeout: float = 10.0) -> List[str]:
        """Wait until at least ``count`` Sentry error events arrived (or ``timeout`` passed); return
        all their ids."""
        self._wait_until(lambda: len(self.sentry_event_ids) >= count, timeout)
        with self._changed:
            return list(self.sentry_event_ids)

    def _wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(remaining)

    def _count_request(self) -> None:
        with self._changed:
            self.requests += 1

    def _next_scripted(self) -> Optional[ScriptedAnswer]:
        with self._changed:
            self.requests += 1
            return self._script.popleft() if self._script else None

    def _count_get(self) -> None:
        with self._changed:
            self.get_requests += 1
            self._changed.notify_all()

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

    def _record_unreadable(self, description: str) -> None:
        with self._changed:
            self.unreadable.append(description)
            self._changed.notify_all()

    def _connection_opened(self, thread: threading.Thread, connection: socket.socket) -> None:
        if self._on_connection is not None:
            self._on_connection(connection)
        with self._changed:
            self._connections[thread] = connection

    def _connection_closed(self, thread: threading.Thread) -> None:
        with self._changed:
            self._connections.pop(thread, None)


class _Server(ThreadingHTTPServer):
    """One thread per connection, each known to the sink so that ``stop()`` can end it."""

    daemon_threads = True
    block_on_close = False  # the sink joins the threads itself, after shutting their sockets

    def __init__(self, address: Tuple[str, int], handler: Any, sink: SegmentSink) -> None:
        self._sink = sink
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        connection: socket.socket = request
        # Without it, an answer written after the client's last packet waits for its delayed ACK.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="segment-sink-connection",
            daemon=True,
        )
        self._sink._connection_opened(thread, connection)
        try:
            thread.start()
        except BaseException:
            self._sink._connection_closed(thread)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._sink._connection_closed(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer is the client's business, not a traceback on stderr.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Unreadable(Exception):
    """A body that cannot be read: ``status`` 415 (a coding it does not know) or 400 (corrupt data)."""

    def __init__(self, status: int, encoding: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.encoding = encoding
        self.reason = reason


def _supported_encodings() -> str:
    return "gzip, deflate, br" if _brotli is not None else "gzip, deflate"


def _decode_body(raw: bytes, content_encoding: Optional[str]) -> bytes:
    """Undo ``Content-Encoding``: gzip (x-gzip), deflate (zlib or raw), br, identity; a list of
    codings is undone from the last one applied to the first. Raises ``_Unreadable``."""
    codings = [coding.strip().lower() for coding in (content_encoding or "").split(",") if coding.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as error:
                raise _Unreadable(400, coding, f"not valid gzip data ({error})") from None
        elif coding == "deflate":
            raw = _inflate(raw)
        elif coding == "br":
            if _brotli is None:
                raise _Unreadable(415, coding, "brotli is not installed here (pip install brotli)")
            try:
                raw = _brotli.decompress(raw)
            except _brotli.error as error:
                raise _Unreadable(400, coding, f"not valid brotli data ({error})") from None
        else:
            raise _Unreadable(415, coding, f"unknown content coding (this receiver reads {_supported_encodings()})")
    return raw


def _inflate(raw: bytes) -> bytes:
    """``deflate`` as RFC 9110 means it (zlib-wrapped), or the raw deflate some clients send."""
    try:
        return zlib.decompress(raw)
    except zlib.error:
        pass
    try:
        return zlib.decompress(raw, -zlib.MAX_WBITS)
    except zlib.error as error:
        raise _Unreadable(400, "deflate", f"not valid zlib or raw deflate data ({error})") from None


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
    """Event ids of the error events in a Sentry envelope: a header line, then per item a JSON
    header line and a payload of the header's ``length`` bytes (else up to the next newline).
    Raises ``ValueError`` for an item header or an event payload that is not a JSON object."""
    ids: List[str] = []
    position = body.find(b"\n")
    if position < 0:
        return ids
    position += 1
    while position < len(body):
        end = body.find(b"\n", position)
        end = len(body) if end < 0 else end
        header_line, position = body[position:end], end + 1
        if not header_line.strip():
            continue
        item_header = json.loads(header_line)
        if not isinstance(item_header, dict):
            raise ValueError("an item header is not a JSON object")
        length = item_header.get("length")
        if isinstance(length, int) and not isinstance(length, bool) and length >= 0:
            payload, position = body[position : position + length], position + length
            if body[position : position + 1] == b"\n":
                position += 1
        else:
            end = body.find(b"\n", position)
            end = len(body) if end < 0 else end
            payload, position = body[position:end], end + 1
        if item_header.get("type") == "event":
            event = json.loads(payload)
            if not isinstance(event, dict):
                raise ValueError("an event item is not a JSON object")
            ids.append(str(event.get("event_id")))
    return ids


def _sentry_store_event_id(body: bytes) -> List[str]:
    """sentry-sdk 1.x posts a plain error event, alone, to the older /store/ endpoint."""
    event = json.loads(body)
    if not isinstance(event, dict):
        raise ValueError("the event is not a JSON object")
    return [str(event.get("event_id"))]


def _handler_for(sink: SegmentSink) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Buffered: the status line, headers and body of an answer leave in one write (flushed by
        # BaseHTTPRequestHandler after each request), not as two small packets.
        wbufsize = 1 << 16

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(
            self,
            status: int,
            body: bytes,
            headers: Optional[Dict[str, str]] = None,
            content_type: str = "application/json",
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _hang_up(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _read_body(self) -> Optional[bytes]:
            """The request's body (Content-Length or chunked); None when the client sent less than
            it announced, or an unreadable length (the connection is then closed)."""
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                return self._read_chunked()
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                self._answer(400, b'{"code": "invalid_request", "message": "unreadable Content-Length"}')
                return None
            raw = self.rfile.read(length)
            if len(raw) < length:
                self.close_connection = True
                return None
            return raw

        def _read_chunked(self) -> Optional[bytes]:
            chunks: List[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    self.close_connection = True
                    return None
                if size == 0:
                    while self.rfile.readline(65537).strip():
                        pass  # trailer fields
                    return b"".join(chunks)
                chunk = self.rfile.read(size)
                self.rfile.readline(3)
                if len(chunk) < size:
                    self.close_connection = True
                    return None
                chunks.append(chunk)

        def _unreadable(self, path: str, what: str, status: int, code: str, encoding: Optional[str]) -> None:
            sink._record_unreadable(f"{self.command} {path}: {what}")
            answer: Dict[str, Any] = {"code": code, "message": what}
            headers: Dict[str, str] = {}
            if encoding is not None:
                answer["encoding"] = encoding
            if status == 415:
                headers["Accept-Encoding"] = _supported_encodings()
            self._answer(status, json.dumps(answer).encode(), headers)

        def do_GET(self) -> None:
            if sink._stopping.is_set():
                return self._hang_up()
            if self._read_body() is None:
                return None
            sink._count_get()
            self._answer(200, _LOGIN_PAGE, content_type="text/html; charset=utf-8")

        def do_POST(self) -> None:
            if sink._stopping.is_set():
                return self._hang_up()
            raw = self._read_body()
            if raw is None:
                return None
            path = self.path.split("?", 1)[0]
            is_sentry = path.startswith("/api/") and path.rstrip("/").endswith(("/envelope", "/store"))
            if not is_sentry and path not in SEGMENT_PATHS:
                return self._answer(404, b'{"code": "not_found", "message": "unknown path"}')
            encoding = self.headers.get("Content-Encoding")
            try:
                raw = _decode_body(raw, encoding)
            except _Unreadable as error:
                if not is_sentry:
                    sink._count_request()
                what = f"cannot read a body with Content-Encoding {encoding!r}: {error.encoding}: {error.reason}"
                code = "unsupported_encoding" if error.status == 415 else "unreadable_body"
                return self._unreadable(path, what, error.status, code, error.encoding)
            if is_sentry:
                return self._sentry(path, raw)
            return self._segment(path, raw)

        def _sentry(self, path: str, raw: bytes) -> None:
            store = path.rstrip("/").endswith("/store")
            try:
                event_ids = _sentry_store_event_id(raw) if store else _sentry_event_ids(raw)
            except ValueError as error:
                kind = "event" if store else "envelope"
                return self._unreadable(path, f"not a Sentry {kind}: {error}", 400, "invalid_request", None)
            for event_id in event_ids:
                sink._record_sentry(event_id)
            self._answer(200, b"{}")

        def _segment(self, path: str, raw: bytes) -> None:
            scripted = sink._next_scripted()
            if scripted is not None:
                if scripted.delay > 0 and sink._stopping.wait(scripted.delay):
                    return self._hang_up()
                if scripted.hang_up:
                    return self._hang_up()
                if scripted.dribble is not None:
                    return self._dribble(scripted.dribble)
                if not scripted.record:
                    return self._answer(scripted.status, scripted.body, scripted.headers)
            try:
                body = json.loads(raw)
            except ValueError:
                return self._unreadable(path, "body is not JSON", 400, "invalid_request", None)
            if not isinstance(body, dict):
                return self._unreadable(path, "body is not an object", 400, "invalid_request", None)
            messages = body.get("batch") if path == "/v1/batch" else [body]
            if not isinstance(messages, list):
                return self._unreadable(path, "batch is not a list", 400, "invalid_request", None)
            headers = {name: value for name, value in self.headers.items() if name.lower() != "authorization"}
            sink._record(ReceivedBatch(path, write_key_of(self.headers, body), messages, headers))
            self._answer(200, b'{"success": true}')

        def _dribble(self, seconds_per_byte: float) -> None:
            """A 200 whose headers leave at once and whose body never finishes in practice: a byte
            per tick, straight to the socket, until the client hangs up or the sink stops."""
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(_DRIBBLE_LENGTH))
            self.end_headers()
            try:
                self.wfile.flush()
                for index in range(_DRIBBLE_LENGTH):
                    if sink._stopping.wait(seconds_per_byte):
                        break
                    tail_index = index - (_DRIBBLE_LENGTH - len(_DRIBBLE_TAIL))
                    self.connection.sendall(_DRIBBLE_TAIL[tail_index : tail_index + 1] if tail_index >= 0 else b" ")
            except OSError:
                pass  # the client hung up mid-answer

    return Handler
