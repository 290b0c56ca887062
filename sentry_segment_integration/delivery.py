"""Delivery to Segment through the official library's queue and consumer thread.

The Segment library's own edges are handled here (see NOTES.md): its ``flush()`` has no timeout,
its atexit hook drops the queue, a raising ``on_error`` kills its thread, and it is not fork safe.
So each :class:`SegmentSender` owns the library client's lifecycle: the consumer starts on the
first message, flushing is bounded, ``on_error`` cannot raise, and a forked child starts afresh.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List, Optional, Set
from urllib.parse import unquote, urlsplit

from requests import Session
from segment.analytics import Client as SegmentClient
from segment.analytics import request as segment_request

from sentry_segment_integration.forking import reset_in_child
from sentry_segment_integration.payload import Message
from sentry_segment_integration.settings import DeliverySettings, Secret

logger = logging.getLogger("sentry_segment_integration")
SEGMENT_LOGGER = "segment"
REDACTED = "[redacted]"


class SecretsFilter(logging.Filter):
    """Blanks every registered secret out of records of the logger it is attached to.

    The Segment library logs each request body, write key included, at DEBUG.
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: Set[str] = set()

    def add(self, secret: str) -> None:
        # However short: a garbled log line is better than a leaked key.
        if secret:
            self._secrets = self._secrets | {secret}

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot format itself: keep nothing of it
            record.msg, record.args = "unprintable log record", None
            return True
        if any(secret in message for secret in secrets):
            record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


SECRETS = SecretsFilter()
for _name in (SEGMENT_LOGGER, logger.name):
    logging.getLogger(_name).addFilter(SECRETS)

DELIVERY_THREAD_NAME = "sentry-segment-delivery"


def _not_from_delivery_threads(record: logging.LogRecord) -> bool:
    # segment-analytics-python 2.2 retries through the `backoff` library, which logs each give-up
    # at ERROR: Sentry's logging integration would make each a Sentry event (a loop with
    # include_messages). The failure is reported by this package's own warning instead.
    return record.threadName != DELIVERY_THREAD_NAME


logging.getLogger("backoff").addFilter(_not_from_delivery_threads)


class SegmentSender:
    """One Segment library client, with its bounded queue and one consumer thread, per write key."""

    def __init__(
        self,
        write_key: Secret,
        delivery: DeliverySettings,
        on_delivery_failed: Callable[[int], None],
    ) -> None:
        self._write_key = write_key
        self._delivery = delivery
        self._on_delivery_failed = on_delivery_failed
        self._lock = threading.Lock()
        self._client: Optional[Any] = None
        self._failures_logged: Set[str] = set()
        SECRETS.add(write_key.value)
        for credential in url_credentials(delivery.host):
            SECRETS.add(credential)
        reset_in_child(self)

    def __repr__(self) -> str:
        return f"SegmentSender(host={'default' if self._delivery.host is None else 'custom'})"

    def enqueue(self, message: Message) -> bool:
        """Hand one message to the consumer thread; False when the queue is full. Never waits."""
        client = self._client or self._start()
        try:
            client.queue.put_nowait(message)
        except Exception:  # queue.Full: bounded by design
            return False
        return True

    def _start(self) -> Any:
        with self._lock:
            if self._client is None:
                delivery = self._delivery
                # send=False: no consumer started and no atexit hook of the library's own;
                # this object starts the consumer and bounds every wait on it.
                client = SegmentClient(
                    self._write_key.value,
                    host=delivery.host,
                    send=False,
                    on_error=self._on_error,
                    max_queue_size=delivery.max_queue_size,
                    upload_size=delivery.upload_size,
                    upload_interval=delivery.upload_interval,
                    gzip=delivery.gzip,
                    timeout=delivery.timeout,
                    max_retries=delivery.max_retries,
                )
                for consumer in client.consumers:
                    consumer.name = DELIVERY_THREAD_NAME
                    consumer.start()
                self._client = client
            return self._client

    def flush(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for every queued message to be sent or given up on."""
        client = self._client
        if client is None:
            return True
        queue = client.queue
        with queue.all_tasks_done:
            drained: bool = queue.all_tasks_done.wait_for(lambda: not queue.unfinished_tasks, timeout=max(timeout, 0.0))
            return drained

    def stop(self) -> None:
        """Let the consumer thread end; what is still queued is dropped. Never waits."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            for consumer in client.consumers:
                consumer.pause()

    def _on_error(self, error: Exception, batch: List[Any]) -> None:
        # Called on the consumer thread: raising here would kill it for good.
        try:
            self._on_delivery_failed(len(batch))
            status = getattr(error, "status", None)
            kind = f"HTTP {status}" if status is not None else type(error).__name__
            level = logging.DEBUG if kind in self._failures_logged else logging.WARNING
            self._failures_logged.add(kind)
            logger.log(
                level,
                "Segment did not accept a batch of %d message(s) (%s): %s",
                len(batch),
                kind,
                _describe(error, status),
            )
        except Exception:
            pass

    def after_fork_in_child(self) -> None:
        # The parent's consumer thread does not exist here, and its queue belongs to the parent,
        # which delivers it: start over empty, so nothing is sent twice.
        self._lock = threading.Lock()
        self._client = None
        # The library posts through one module-wide requests.Session: its pooled keep-alive
        # sockets are the parent's, and sharing them mixes up answers (then retries, duplicates).
        if hasattr(segment_request, "_session"):
            segment_request._session = Session()


def url_credentials(url: Optional[str]) -> List[str]:
    """What of a URL's ``user:password@`` part must never be logged."""
    if not url:
        return []
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return [part for part in (userinfo, password, unquote(password)) if part]


def _describe(error: Exception, status: Optional[int]) -> str:
    if status in (400, 401, 403):
        return "the write key was refused or the message is invalid; check the write key and host"
    if status is not None:
        return "Segment answered with an error and the retries are spent"
    return "Segment could not be reached and the retries are spent"
