"""``SegmentIntegration``: options in, counters out; it routes each of its Sentry clients (see routing.py)
and delivers what is left queued at exit."""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Union

from sentry_sdk.integrations import Integration
from sentry_sdk.integrations.logging import ignore_logger

from sentry_segment_integration import delivery, hints, hook
from sentry_segment_integration._log import SEGMENT_LOGGER, contained, log_failure, logger
from sentry_segment_integration.anonymous import AnonymousIdHook, install_cookie_readers, parse_anonymous_id
from sentry_segment_integration.delivery import SegmentSender
from sentry_segment_integration.forking import reset_in_child
from sentry_segment_integration.payload import EVENT_NAME
from sentry_segment_integration.ratelimit import PROCESS_LIMITER, RateLimiter, shared_limiter_for, shared_limiters
from sentry_segment_integration.routing import DEFAULT_SHUTDOWN_TIMEOUT, ClientRoute
from sentry_segment_integration.settings import (
    DeliverySettings,
    Options,
    PropertiesHook,
    Secret,
    parse_bool,
    parse_event_name,
    parse_host,
    parse_int,
    parse_optional_bool,
    parse_organization,
    parse_projects,
    parse_properties_hook,
    parse_rate_limit,
    parse_seconds,
    parse_sentry_url,
    parse_storage,
    parse_write_key,
)

COUNTERS = (
    "forwarded",
    "rate_limited",
    "skipped_not_error",
    "skipped_no_user",
    "skipped_disabled",
    "queue_full",
    "delivery_failed",
    "internal_error",
)


class SegmentIntegration(Integration):
    """Mirrors the error events Sentry sends into Segment as ``"Error Captured"`` track calls."""

    identifier = "segment"

    def __init__(
        self,
        write_key: Optional[str] = None,
        *,
        host: Optional[str] = None,
        rate_limit: Optional[float] = 200,
        rate_limit_storage: str = "memory://",
        organization: Optional[str] = None,
        projects: Optional[Mapping[Any, Mapping[str, Any]]] = None,
        enroll_new_projects: bool = True,
        include_messages: bool = False,
        gzip: bool = False,
        max_queue_size: int = 10000,
        upload_size: int = 500,
        upload_interval: float = 0.5,
        timeout: float = 15.0,
        max_retries: int = 10,
        send_ip: Optional[bool] = None,
        send_query_string: bool = True,
        properties: Optional[PropertiesHook] = None,
        sentry_url: Optional[str] = None,
        event_name: str = EVENT_NAME,
        rate_limit_per_type: Optional[float] = None,
        anonymous_id: Union[str, AnonymousIdHook, None] = None,
    ) -> None:
        self._options = Options(
            write_key=parse_write_key(write_key),
            rate_limit=parse_rate_limit(rate_limit),
            rate_limit_storage=parse_storage(rate_limit_storage),
            organization=parse_organization(organization),
            projects=parse_projects(projects),
            enroll_new_projects=parse_bool("enroll_new_projects", enroll_new_projects),
            include_messages=parse_bool("include_messages", include_messages),
            delivery=DeliverySettings(
                host=parse_host(host),
                gzip=parse_bool("gzip", gzip),
                max_queue_size=parse_int("max_queue_size", max_queue_size, 1),
                upload_size=parse_int("upload_size", upload_size, 1),
                upload_interval=parse_seconds("upload_interval", upload_interval, maximum=60),
                timeout=parse_seconds("timeout", timeout, maximum=600),
                max_retries=parse_int("max_retries", max_retries, 0),
            ),
            send_ip=parse_optional_bool("send_ip", send_ip),
            send_query_string=parse_bool("send_query_string", send_query_string),
            properties=parse_properties_hook(properties),
            sentry_url=parse_sentry_url(sentry_url),
            event_name=parse_event_name(event_name),
            rate_limit_per_type=parse_rate_limit(rate_limit_per_type, "rate_limit_per_type"),
            anonymous_id=parse_anonymous_id(anonymous_id),
        )
        self._start()

    def _start(self) -> None:
        # Re-entrant: a signal handler that flushes may run while its thread is counting.
        self._lock = threading.RLock()
        self._counts: Dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._senders: Dict[Secret, SegmentSender] = {}
        self._routes: weakref.WeakSet[ClientRoute] = weakref.WeakSet()
        storage = self._options.rate_limit_storage
        # The process's own budget, or the one shared through the storage.
        self.limiter: RateLimiter = (
            PROCESS_LIMITER if storage.lower().startswith("memory://") else shared_limiter_for(storage)
        )
        reset_in_child(self)
        hook.install(route_for)
        anonymous = self._options.anonymous_id
        if self._options.wants_hints:
            # With an anonymous id, an event without a user id may be forwarded: its hint too.
            hints.keep_hints(without_user=anonymous is not None)
        if anonymous is not None and anonymous.reads_cookie:
            install_cookie_readers()

    @property
    def options(self) -> Options:
        return self._options

    def __getstate__(self) -> Dict[str, Any]:
        # sentry-sdk pickles a client as its options, which hold the integrations: only the
        # options are ours to keep; counters, queues and threads start anew where it is unpickled.
        return {"options": self._options}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._options = state["options"]
        self._start()

    @staticmethod
    def setup_once() -> None:
        # Sentry's logging integration would turn the Segment library's error logs into Sentry
        # events: with include_messages those would be forwarded, fail, and log again.
        ignore_logger(SEGMENT_LOGGER)
        ignore_logger(logger.name)

    def __repr__(self) -> str:
        options = self._options
        return (
            f"SegmentIntegration(write_key='***', rate_limit={options.rate_limit!r}, "
            f"projects={sorted(options.projects)!r}, enroll_new_projects={options.enroll_new_projects!r}, "
            f"include_messages={options.include_messages!r})"
        )

    def stats(self) -> Dict[str, int]:
        """Counters since start: what was forwarded, and why the rest was not."""
        with self._lock:
            return dict(self._counts)

    def count(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[counter] += amount

    def sender_for(self, write_key: Secret) -> SegmentSender:
        with self._lock:
            sender = self._senders.get(write_key)
            if sender is None:
                sender = SegmentSender(write_key, self._options.delivery, self._count_delivery_failed)
                self._senders[write_key] = sender
            return sender

    def _count_delivery_failed(self, messages: int) -> None:
        self.count("delivery_failed", messages)

    def flush(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds, in all, for every Segment queue of this integration,
        and for what replaced clients left queued in the process."""
        deadline = time.monotonic() + timeout
        drained = self.limiter.flush(timeout)
        with self._lock:
            senders = list(self._senders.values())
        senders += [sender for sender in delivery.senders_with_work() if sender not in senders]
        for sender in senders:
            drained = sender.flush(deadline - time.monotonic()) and drained
        return drained

    def route_opened(self, route: ClientRoute) -> None:
        with self._lock:
            self._routes.add(route)
        _mark_exit_start_once()

    def route_closed(self, route: ClientRoute) -> None:
        with self._lock:
            self._routes.discard(route)
            if self._routes:
                return
        self.stop_delivery()

    def stop_delivery(self) -> None:
        """Let every delivery thread end; a later message starts its thread again."""
        with self._lock:
            senders = list(self._senders.values())
        for sender in senders:
            sender.stop()

    def after_fork_in_child(self) -> None:
        # Counters are per process: summing the workers' stats() adds up.
        self._lock = threading.RLock()
        self._counts = dict.fromkeys(COUNTERS, 0)


def route_for(client: Any) -> Optional[ClientRoute]:
    """The route of a Sentry client that has a SegmentIntegration (``None`` for one without)."""
    integrations = getattr(client, "integrations", None) or {}
    integration = integrations.get(SegmentIntegration.identifier)
    if not isinstance(integration, SegmentIntegration):
        return None
    return ClientRoute(integration, getattr(client, "options", None) or {})


_exit_started: List[float] = []
_exit_marker_registered = False


def _mark_exit_start_once() -> None:
    # Registered once the first client is built, so after sentry-sdk's own atexit hook, and so it
    # runs before it (atexit runs the last registered first): exit's time budget starts there.
    global _exit_marker_registered
    if not _exit_marker_registered:
        _exit_marker_registered = True
        atexit.register(lambda: _exit_started.append(time.monotonic()))


@atexit.register
def _deliver_at_exit() -> None:
    # Registered at import, before sentry-sdk's own atexit hook, so it runs after it: a client
    # that Sentry closed at exit has already flushed its queues. This covers what nobody closes
    # (no AtexitIntegration, replaced or extra clients) with what is left of the budget. Then every
    # sending thread is told to stop (what is still queued is counted and logged), so none is
    # still sending while the interpreter finalizes.
    with _EXIT_DELIVERY_FAILED:
        pending = delivery.senders_with_work()
        budget = max((sender.shutdown_timeout for sender in pending), default=DEFAULT_SHUTDOWN_TIMEOUT)
        spent = time.monotonic() - _exit_started[0] if _exit_started else 0.0
        deadline = time.monotonic() + max(0.0, budget - spent)
        for limiter in shared_limiters():
            limiter.flush(deadline - time.monotonic())
        for sender in delivery.senders_with_work():
            sender.flush(deadline - time.monotonic())
        for sender in delivery.all_senders():
            sender.stop()


_EXIT_DELIVERY_FAILED = contained(log_failure("could not deliver the Segment queues at exit"))
