"""Delivery to Segment: a bounded queue per write key, one sending thread, the library's wire format.

Each :class:`SegmentSender` owns its queue, batching and retries, and posts every batch as the
official Segment library's ``segment.analytics.request.post`` does (:class:`SegmentEndpoint`: its
URL, Basic auth, body, gzip and errors). It uses nothing private of ``queue.Queue`` or of the
library's consumer, so it works the same under gevent's or eventlet's monkey-patching as with threads.

- Prompt: an idle sender posts a new message at once; batches form only while a request is in
  flight, so a process killed right after an error (uvicorn re-raising SIGTERM) loses at most what
  one request carries, as with Sentry's own transport.
- Bounded: ``flush`` waits at most its timeout, and returns at once while Segment is failing (the
  messages stay queued for the retry); whatever is given up is counted and logged once.
- Re-entrant: the capturing thread never takes a lock on its way in unless the sender is idle, and
  the only locks it can take are re-entrant, so a signal handler that flushes cannot deadlock.
- Fork safe: a child starts with an empty queue of its own; the parent delivers its own queue.
- Strict about the endpoint: a redirect is an answer, never followed (a 301/302 would turn the
  POST into a GET of some login page that "succeeds"), and ``timeout`` bounds the whole request,
  not each read (:class:`RequestWatchdog`).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import random
import socket
import threading
import time
import weakref
from collections import deque
from datetime import datetime, timezone
from gzip import compress as gzip_compress
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

from segment.analytics.request import APIError, DatetimeSerializer
from segment.analytics.version import VERSION as SEGMENT_LIBRARY_VERSION

from sentry_segment_integration._log import (
    DELIVERY_THREAD_NAME,
    SECRETS,
    SEGMENT_LOGGER,
    contained,
    log_failure,
    logger,
)
from sentry_segment_integration.forking import reset_in_child
from sentry_segment_integration.payload import Message, encoded_size
from sentry_segment_integration.settings import DeliverySettings, Secret, url_credentials

segment_log = logging.getLogger(SEGMENT_LOGGER)
DEFAULT_SEGMENT_HOST = "https://api.segment.io"
# Segment accepts batches of up to 500 KB; the margin leaves room for what the library adds.
BATCH_SIZE_LIMIT = 475_000
# Backoff between retries of a failed batch: 0.5 s, 1 s, 2 s ... (+ up to 10 % jitter), at most this.
MAX_RETRY_DELAY = 60.0
# Under load a batch gathers while messages keep coming; this long without one ends the burst.
BURST_QUIET_SECONDS = 0.005
# While idle the sending thread looks at its queue this often anyway (a missed wake-up costs this).
IDLE_WAKE_UP_SECONDS = 30.0


class RequestWatchdog:
    """Cuts a Segment request that is still running ``timeout`` seconds after it started.

    A socket's timeout applies to each read: an endpoint that dribbles its answer would hold the
    sending thread for as long as it likes. One thread for the process sleeps until the
    earliest deadline of the requests under way (it wakes about once per ``timeout`` under load,
    and not at all while nothing is sent) and shuts the socket of a request past it.
    """

    def __init__(self) -> None:
        self._reset()
        reset_in_child(self)

    def _reset(self) -> None:
        # Created on first use, on the sending thread: after a fork and after gevent patched threading.
        self._changed: Optional[threading.Condition] = None
        self._deadlines: Dict[Any, float] = {}
        self._cut: Set[Any] = set()
        self._thread: Optional[threading.Thread] = None

    def watch(self, connection: Any, timeout: float) -> None:
        changed = self._changed
        if changed is None:
            changed = self._changed = threading.Condition(threading.RLock())
        with changed:
            was_idle = not self._deadlines
            self._deadlines[connection] = time.monotonic() + timeout
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sentry-segment-watchdog", daemon=True)
                self._thread.start()
            elif was_idle:
                changed.notify()

    def forget(self, connection: Any) -> bool:
        """Stop watching ``connection``; whether it was cut for running past its deadline."""
        changed = self._changed
        if changed is None:
            return False
        with changed:
            self._deadlines.pop(connection, None)
            if connection in self._cut:
                self._cut.discard(connection)
                return True
            return False

    def _run(self) -> None:
        changed = self._changed
        assert changed is not None
        while True:
            with changed:
                if not self._deadlines:
                    changed.wait()
                    continue
                now = time.monotonic()
                overdue = [conn for conn, deadline in self._deadlines.items() if deadline <= now]
                for conn in overdue:
                    del self._deadlines[conn]
                    self._cut.add(conn)
                if not overdue:
                    changed.wait(min(self._deadlines.values()) - now)
                    continue
            for conn in overdue:
                _cut(conn)

    def after_fork_in_child(self) -> None:
        self._reset()


def _cut(sock: Any) -> None:
    # The request still reading is ended at once: it fails, and is retried on a new connection.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


WATCHDOG = RequestWatchdog()


class SegmentEndpoint:
    """Posts batches to one Segment-compatible host, as the Segment library's ``request.post`` does.

    The same request: ``POST {host}/v1/batch``, the write key as Basic-auth user, a JSON body with
    ``batch`` and ``sentAt``, the library's User-Agent, gzip when asked, the library's ``APIError``
    for an answer other than 2xx. Made with the standard library's ``http.client`` on a kept-alive
    connection: through ``requests`` one post costs about 860 µs of CPU (this, about 180 µs), and a
    prompt sender posts once per error at a moderate rate. It also means no redirect is ever followed (a 3xx is an
    answer), ``timeout`` bounds the whole request (see :class:`RequestWatchdog`), proxies come from
    the usual environment variables, and Sentry's stdlib integration never sees the request (it
    would record it as a span of the application's transaction and add trace headers).
    """

    def __init__(self, host: Optional[str], timeout: float, gzip: bool = False) -> None:
        base = (host or DEFAULT_SEGMENT_HOST).rstrip("/")
        parts = urlsplit(base)
        self.url = base + "/v1/batch"
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "") + "/v1/batch"
        self._host_header = parts.netloc.rpartition("@")[2]
        self._timeout = timeout
        self._gzip = gzip
        self._proxy = _proxy_for(parts.scheme, self._host)
        self._connection: Optional[http.client.HTTPConnection] = None

    def post(self, write_key: str, batch: List[Message]) -> int:
        """Send one batch; its HTTP status when accepted (2xx). Raises ``APIError`` for another
        answer, ``OSError`` or ``http.client.HTTPException`` when there is no whole answer."""
        body = json.dumps(
            {"batch": batch, "sentAt": datetime.now(timezone.utc).isoformat(), "writeKey": write_key},
            cls=DatetimeSerializer,
        ).encode()
        if segment_log.isEnabledFor(logging.DEBUG):
            segment_log.debug("making request: %s", body.decode())
        headers = {
            "Host": self._host_header,
            "Content-Type": "application/json",
            "User-Agent": f"analytics-python/{SEGMENT_LIBRARY_VERSION}",
            "Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode(),
        }
        if self._gzip:
            headers["Content-Encoding"] = "gzip"
            body = gzip_compress(body)
        headers["Content-Length"] = str(len(body))
        target = self.url if self._proxy is not None and not self._https else self._path
        head = f"POST {target} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = head.encode("latin-1") + b"\r\n" + body
        try:
            kept_alive = self._connection is not None
            try:
                response, answer = self._exchange(request)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not kept_alive:
                    raise
                # The host closed the idle kept-alive connection: once more, on a new one.
                self.close()
                response, answer = self._exchange(request)
            if response.will_close:
                self.close()
        except BaseException:
            self.close()
            raise
        if not 200 <= response.status < 300:
            raise _api_error(response.status, response.getheader("Retry-After"), answer)
        segment_log.debug("data uploaded successfully")
        return response.status

    def _exchange(self, request: bytes) -> Tuple[http.client.HTTPResponse, bytes]:
        connection = self._connection
        if connection is None or connection.sock is None:
            connection = self._connection = self._connect()
        sock = connection.sock
        WATCHDOG.watch(sock, self._timeout)
        try:
            sock.sendall(request)
            response = http.client.HTTPResponse(sock, method="POST")
            response.begin()
            answer = response.read()
        except (OSError, http.client.HTTPException) as error:
            if WATCHDOG.forget(sock):
                raise TimeoutError(f"no whole answer within {self._timeout:g} s") from error
            raise
        if WATCHDOG.forget(sock):
            raise TimeoutError(f"no whole answer within {self._timeout:g} s")
        return response, answer

    def _connect(self) -> http.client.HTTPConnection:
        proxy = self._proxy
        host, port = self._host, self._port
        if proxy is not None:
            host, port = proxy.hostname or "", proxy.port or (443 if proxy.scheme == "https" else 80)
        connection_class = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = connection_class(host, port, timeout=self._timeout)
        if proxy is not None and self._https:
            tunnel_headers = {}
            if proxy.username:
                credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
                tunnel_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
            connection.set_tunnel(self._host, self._port, headers=tunnel_headers)
        connection.connect()
        return connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def after_fork_in_child(self) -> None:
        # The kept-alive connection is the parent's: two processes on one socket mix up answers.
        # Its file descriptor here is only a copy, closed when the object goes.
        self._connection = None


def _proxy_for(scheme: str, host: str) -> Any:
    # The environment's proxy (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), as requests would take it.
    proxy = getproxies().get(scheme)
    if not proxy or proxy_bypass(host):
        return None
    return urlsplit(proxy if "://" in proxy else f"http://{proxy}")


def _api_error(status: int, retry_after: Optional[str], answer: bytes) -> Exception:
    # As the library's request.post: Segment's {"code", "message"}, or the answer's text.
    try:
        payload = json.loads(answer)
        code, message = str(payload["code"]), str(payload["message"])
    except (ValueError, KeyError, TypeError):
        code = "redirect" if 300 <= status < 400 else "unknown"
        message = answer[:200].decode("utf-8", "replace")
    error: Exception = APIError(status, code, message)
    error.retry_after = retry_after  # type: ignore[attr-defined]
    return error


class SegmentSender:
    """One write key's bounded queue and its sending thread."""

    def __init__(
        self,
        write_key: Secret,
        delivery: DeliverySettings,
        on_delivery_failed: Callable[[int], None],
    ) -> None:
        self._write_key = write_key
        self._delivery = delivery
        self._on_delivery_failed = on_delivery_failed
        self._failures_logged: Set[str] = set()
        # Sentry's shutdown_timeout of the client that last used this sender: the exit budget.
        self.shutdown_timeout = 2.0
        SECRETS.add(write_key.value)
        for credential in url_credentials(delivery.host):
            SECRETS.add(credential)
        self._endpoint = SegmentEndpoint(delivery.host, delivery.timeout, delivery.gzip)
        self._reset()
        _SENDERS.add(self)
        reset_in_child(self)

    def _reset(self) -> None:
        self._queue: Deque[Message] = deque()
        # The batch taken off the queue and not yet settled (sent, or given up on), and whether
        # it is on the wire right now (else it waits for its retry).
        self._batch: List[Message] = []
        self._on_wire = False
        self._attempts = 0
        # Monotonic time before which the batch is not retried, and whether Segment is failing
        # (the last attempt failed in a way worth retrying; set until an attempt succeeds).
        self._retry_at = 0.0
        self._failing = False
        # Created with the thread, so after a fork and after gevent patched threading.
        self._lock: Optional[threading.RLock] = None
        self._work: Optional[threading.Condition] = None
        self._settled: Optional[threading.Condition] = None
        self._start_lock = threading.RLock()
        # Set by the thread's starter, cleared by the thread itself as it ends (under the lock).
        self._thread: Optional[threading.Thread] = None
        self._idle = False
        # Under load (messages came while a request was in flight) the next batch may gather
        # for up to upload_interval, or until it is full: fewer, larger requests in a burst.
        self._under_load = False
        self._lingering = False
        self._hurried = False
        self._stopping = False

    def __repr__(self) -> str:
        return f"SegmentSender(host={'default' if self._delivery.host is None else 'custom'})"

    @property
    def pending(self) -> int:
        """Messages not yet settled: queued, or in the batch being sent."""
        return len(self._queue) + len(self._batch)

    def enqueue(self, message: Message) -> bool:
        """Hand one message to the sending thread; False when the queue is full. Never waits."""
        queue = self._queue
        if len(queue) >= self._delivery.max_queue_size:
            return False
        queue.append(message)
        if self._thread is None or self._stopping:
            self._start()
        elif self._idle or (self._lingering and len(queue) >= self._delivery.upload_size):
            # The thread set _idle (or _lingering) before it last looked at the queue: it waits,
            # or is about to look again and find this message. Re-entrant, so a signal handler
            # may flush here.
            work = self._work
            if work is not None:
                with work:
                    work.notify()
        return True

    def _start(self) -> None:
        with self._start_lock:
            if self._lock is None:
                self._lock = threading.RLock()
                self._work = threading.Condition(self._lock)
                self._settled = threading.Condition(self._lock)
            assert self._work is not None
            with self._lock:
                self._stopping = False
                if self._thread is not None:  # still running: it goes on with the new message
                    self._work.notify()
                    return
                self._thread = threading.Thread(target=self._run, name=DELIVERY_THREAD_NAME, daemon=True)
                self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds until everything queued is sent or given up on.

        Returns at once (False) while Segment is failing: the messages stay queued for the retry.
        """
        settled, work = self._settled, self._work
        if settled is None or work is None:
            return not self._queue
        deadline = time.monotonic() + max(timeout, 0.0)
        with settled:
            self._hurried = True  # a batch still gathering goes now
            work.notify()  # also: a signal handler may have interrupted an enqueue before its wake-up
            while self.pending:
                remaining = deadline - time.monotonic()
                if self._failing or self._stopping or remaining <= 0 or self._thread is None:
                    return False
                settled.wait(remaining)
        return True

    def stop(self) -> int:
        """Let the sending thread end; what is still queued is given up, counted and logged. Never waits."""
        lock, work = self._lock, self._work
        if lock is None or work is None:
            return 0
        with lock:
            self._stopping = True
            given_up = len(self._queue)
            self._queue.clear()
            if not self._on_wire:  # a batch waiting for its retry; one on the wire settles itself
                given_up += len(self._batch)
                self._batch = []
            work.notify_all()
        if given_up:
            self._give_up(given_up, "stopped", "the Sentry client was closed, or the process exited, first")
        return given_up

    def _run(self) -> None:
        work, settled = self._work, self._settled
        assert work is not None and settled is not None
        while True:
            with work:
                self._idle = True
                while not self._queue and not self._batch and not self._stopping:
                    work.wait(IDLE_WAKE_UP_SECONDS)
                self._idle = False
                if self._stopping:
                    self._thread = None
                    settled.notify_all()
                    return
                if self._batch:
                    wait = self._retry_at - time.monotonic()
                    if wait > 0:
                        work.wait(wait)
                        continue
                else:
                    if self._under_load:
                        self._gather(work)
                    self._batch = self._next_batch()
                batch = self._batch
                self._on_wire = True
            outcome = self._post(batch)
            with work:
                self._on_wire = False
                self._under_load = bool(self._queue)
                self._settle(batch, outcome)
                if self._stopping and self._batch:
                    self._give_up(len(self._batch), "stopped", "the retry was cut short by a close or exit")
                    self._batch = []
                settled.notify_all()

    def _gather(self, work: threading.Condition) -> None:
        """Under load, let the batch grow while messages keep coming: until it is full, until
        ``upload_interval`` has passed, or until no message came for BURST_QUIET_SECONDS (the
        burst is over). A flush or a stop ends it at once."""
        queue, upload_size = self._queue, self._delivery.upload_size
        deadline = time.monotonic() + self._delivery.upload_interval
        self._lingering = True
        self._hurried = False
        while len(queue) < upload_size and not (self._stopping or self._hurried):
            waiting, remaining = len(queue), deadline - time.monotonic()
            if remaining <= 0:
                break
            work.wait(min(BURST_QUIET_SECONDS, remaining))
            if len(queue) == waiting:
                break
        self._lingering = False

    def _next_batch(self) -> List[Message]:
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), self._delivery.upload_size))]
        if len(batch) > 1 and encoded_size(batch) > BATCH_SIZE_LIMIT:
            size = 2
            for index, message in enumerate(batch):
                size += encoded_size(message) + 1
                if size > BATCH_SIZE_LIMIT and index > 0:
                    queue.extendleft(reversed(batch[index:]))
                    return batch[:index]
        return batch

    def _post(self, batch: List[Message]) -> Optional[Exception]:
        try:
            self._endpoint.post(self._write_key.value, batch)
        except Exception as error:  # every failure is an outcome: retried or given up on below
            return error
        return None

    def _settle(self, batch: List[Message], error: Optional[Exception]) -> None:
        """After each attempt to send ``batch``, with the lock held."""
        if error is None:
            self._batch, self._attempts, self._retry_at, self._failing = [], 0, 0.0, False
            return
        status = getattr(error, "status", None)
        self._attempts += 1
        if _is_retryable(status) and self._attempts <= self._delivery.max_retries:
            # Segment is down or overloaded: until an attempt succeeds, flushes do not wait.
            self._failing = True
            self._retry_at = time.monotonic() + _retry_delay(self._attempts, error)
            return
        self._batch, self._attempts, self._retry_at = [], 0, 0.0
        kind = f"HTTP {status}" if status is not None else type(error).__name__
        self._give_up(len(batch), kind, _describe(status))

    def _give_up(self, messages: int, kind: str, reason: str) -> None:
        with _GIVING_UP_FAILED:
            self._on_delivery_failed(messages)
            level = logging.DEBUG if kind in self._failures_logged else logging.WARNING
            self._failures_logged.add(kind)
            logger.log(level, "%d message(s) not delivered to Segment (%s): %s", messages, kind, reason)

    def after_fork_in_child(self) -> None:
        # The parent's thread does not exist here, and its queue belongs to the parent, which
        # delivers it: start over empty, so nothing is sent twice.
        self._reset()
        self._failures_logged = set()
        self._endpoint.after_fork_in_child()


# Giving up runs on the sending thread, during a close or at exit: whatever fails there is only logged.
_GIVING_UP_FAILED = contained(log_failure("could not count or log messages given up on", logging.DEBUG))


def _is_retryable(status: Optional[int]) -> bool:
    # As the Segment library decides: network failures, timeouts and these answers are retried.
    if status is None:
        return True
    if 400 <= status < 500:
        return status in (408, 410, 429, 460)
    return 500 <= status < 600 and status not in (501, 505)


def _retry_delay(attempt: int, error: Exception) -> float:
    retry_after = _retry_after_seconds(error)
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_DELAY)
    if attempt == 1:
        return 0.0
    delay: float = 0.5 * 2 ** (attempt - 2)
    return min(delay + random.uniform(0, 0.1 * delay), MAX_RETRY_DELAY)


def _retry_after_seconds(error: Exception) -> Optional[float]:
    value = getattr(error, "retry_after", None)
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# Every sender of the process, so that exit and any flush reach the queue of a client that was
# replaced (a second sentry_sdk.init) too. A sender with a thread is kept alive by that thread.
_SENDERS: weakref.WeakSet[SegmentSender] = weakref.WeakSet()


def all_senders() -> List[SegmentSender]:
    return list(_SENDERS)


def senders_with_work() -> List[SegmentSender]:
    return [sender for sender in list(_SENDERS) if sender.pending]


def _describe(status: Optional[int]) -> str:
    if status in (400, 401, 403):
        return "the write key was refused or the message is invalid; check the write key and host"
    if status is not None and 300 <= status < 400:
        return "the host answered with a redirect, which is not followed; set `host` to the API's own address"
    if status is not None:
        return "Segment answered with an error and the retries are spent"
    return "Segment could not be reached and the retries are spent"
