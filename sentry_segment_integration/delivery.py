"""Delivery to Segment through the official library's queue and consumer thread.

The Segment library's own edges are handled here (see NOTES.md): its ``flush()`` has no timeout,
its atexit hook drops the queue, a raising ``on_error`` kills its thread, and it is not fork safe.
So each :class:`SegmentSender` owns the library client's lifecycle: the consumer starts on the
first message, flushing is bounded, ``on_error`` cannot raise, and a forked child starts afresh.

The library's consumer wakes up for every message put on its queue, and every ``upload_interval``
while idle. Each wake-up takes the GIL from the application's thread, which on a busy process
costs that thread up to a thread switch interval (5 ms): during a burst of errors that is most of
what forwarding costs. :class:`BatchGatherer` replaces only how the consumer gathers a batch (its
``next()``): it wakes once per batch, and not at all while there is nothing to send. Sending,
retries and error reporting stay the library's own.
"""

from __future__ import annotations

import logging
import threading
import time
from queue import Empty
from typing import Any, Callable, List, Optional, Set
from urllib.parse import unquote, urlsplit

from requests import Session
from segment.analytics import Client as SegmentClient
from segment.analytics import request as segment_request
from segment.analytics.consumer import BATCH_SIZE_LIMIT

from sentry_segment_integration.forking import reset_in_child
from sentry_segment_integration.payload import Message, encoded_size
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


# While idle the consumer looks at its queue this often anyway (a missed wake-up costs this much).
IDLE_WAKE_UP_SECONDS = 5.0


class BatchGatherer:
    """The Segment consumer's ``next()``: one batch, gathered with one wake-up.

    The consumer sleeps until a first message arrives, then until ``upload_size`` messages are
    queued (the sender says so), ``upload_interval`` has passed, or a flush hurries it. The batch
    stays under Segment's 500 KB limit; what does not fit goes first into the next batch.
    """

    def __init__(self, consumer: Any, upload_size: int, upload_interval: float) -> None:
        self._consumer = consumer
        self._queue = consumer.queue
        self._upload_size = upload_size
        self._upload_interval = upload_interval
        self._batch_ready = threading.Event()
        self._carried: List[Any] = []
        self._hurry_until = 0.0
        consumer.next = self.next_batch

    def note_enqueued(self) -> None:
        """Called after each put: wakes the consumer once a whole batch is waiting."""
        if len(self._queue.queue) >= self._upload_size and not self._batch_ready.is_set():
            self._batch_ready.set()

    def hurry(self, seconds: float) -> None:
        """Send what is queued without waiting for batches to fill, for the next ``seconds``."""
        self._hurry_until = time.monotonic() + seconds
        self._batch_ready.set()

    def calm(self) -> None:
        """Back to gathering whole batches (a flush is over)."""
        self._hurry_until = 0.0

    def wake_to_stop(self) -> None:
        self._batch_ready.set()
        with self._queue.not_empty:
            self._queue.not_empty.notify_all()

    def next_batch(self) -> List[Any]:
        queue = self._queue
        if not self._carried:
            with queue.not_empty:
                if not queue.queue and self._consumer.running:
                    queue.not_empty.wait(IDLE_WAKE_UP_SECONDS)
                if not queue.queue:
                    return []
        self._batch_ready.clear()
        waiting = len(self._carried) + len(queue.queue)
        if waiting < self._upload_size and time.monotonic() >= self._hurry_until and self._consumer.running:
            self._batch_ready.wait(self._upload_interval)
        batch, self._carried = self._carried, []
        while len(batch) < self._upload_size:
            try:
                batch.append(queue.get_nowait())
            except Empty:
                break
        return self._within_size_limit(batch)

    def _within_size_limit(self, batch: List[Any]) -> List[Any]:
        if encoded_size(batch) <= BATCH_SIZE_LIMIT:
            return batch
        total = 0
        for index, message in enumerate(batch):
            total += encoded_size(message) + 2
            if total > BATCH_SIZE_LIMIT and index > 0:
                self._carried = batch[index:]
                return batch[:index]
        return batch


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
        self._gatherer: Optional[BatchGatherer] = None
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
        gatherer = self._gatherer
        if gatherer is not None:
            gatherer.note_enqueued()
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
                consumer = client.consumers[0]
                consumer.name = DELIVERY_THREAD_NAME
                self._gatherer = BatchGatherer(consumer, delivery.upload_size, delivery.upload_interval)
                consumer.start()
                self._client = client
            return self._client

    def flush(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for every queued message to be sent or given up on."""
        client = self._client
        if client is None:
            return True
        gatherer = self._gatherer
        if gatherer is not None:
            gatherer.hurry(timeout)
        queue = client.queue
        try:
            with queue.all_tasks_done:
                drained: bool = queue.all_tasks_done.wait_for(
                    lambda: not queue.unfinished_tasks, timeout=max(timeout, 0.0)
                )
                return drained
        finally:
            if gatherer is not None:
                gatherer.calm()

    def stop(self) -> None:
        """Let the consumer thread end; what is still queued is dropped. Never waits."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            for consumer in client.consumers:
                consumer.pause()
            if self._gatherer is not None:
                self._gatherer.wake_to_stop()

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
