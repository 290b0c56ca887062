"""``SegmentIntegration``: options, the qualifying rules, and the counters of what happened."""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Dict, List, NamedTuple, Optional, Union

from sentry_sdk.integrations import Integration
from sentry_sdk.integrations.logging import ignore_logger
from sentry_sdk.utils import BadDsn, Dsn

from sentry_segment_integration import delivery, hook
from sentry_segment_integration.anonymous import (
    AnonymousIdHook,
    anonymous_id_of,
    install_cookie_readers,
    parse_anonymous_id,
)
from sentry_segment_integration.delivery import SEGMENT_LOGGER, SegmentSender, logger
from sentry_segment_integration.forking import reset_in_child
from sentry_segment_integration.payload import (
    EVENT_NAME,
    as_text,
    build_message,
    exception_type_of,
    is_forwardable_kind,
    user_id_of,
)
from sentry_segment_integration.ratelimit import (
    PER_TYPE,
    PROCESS_LIMITER,
    SharedLimiter,
    shared_limiter_for,
    shared_limiters,
    type_key,
)
from sentry_segment_integration.settings import (
    DeliverySettings,
    Options,
    PropertiesHook,
    Secret,
    event_url_prefix,
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
_DEFAULT_SHUTDOWN_TIMEOUT = 2.0


class Identity(NamedTuple):
    """Who the message is about: the event's user id, the visitor's anonymous id, or both."""

    user_id: Optional[str]
    anonymous_id: Optional[str]


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
        self._shared_limiter: Optional[SharedLimiter] = (
            None if storage.lower().startswith("memory://") else shared_limiter_for(storage)
        )
        _LIVE_INTEGRATIONS.add(self)
        reset_in_child(self)
        hook.install(ClientRoute.for_client)
        anonymous = self._options.anonymous_id
        if self._options.wants_hints:
            # With an anonymous id, an event without a user id may be forwarded: its hint too.
            hook.keep_hints(without_user=anonymous is not None)
        if anonymous is not None and anonymous.reads_cookie:
            install_cookie_readers()

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
        drained = self._shared_limiter is None or self._shared_limiter.flush(timeout)
        with self._lock:
            senders = list(self._senders.values())
        senders += [sender for sender in delivery.senders_with_work() if sender not in senders]
        for sender in senders:
            drained = sender.flush(deadline - time.monotonic()) and drained
        return drained

    def _route_closed(self, route: ClientRoute) -> None:
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


class ClientRoute:
    """Where one Sentry client's events go: its project's settings, worked out once per client."""

    def __init__(self, integration: SegmentIntegration, client_options: Mapping[str, Any]) -> None:
        options = integration._options
        dsn = _parse_dsn(client_options.get("dsn"))
        self.integration = integration
        self.project_id: Optional[str] = dsn.project_id if dsn is not None else None
        self.organization = options.organization or _organization_of(dsn)
        write_key = options.write_key_for(self.project_id)
        self.sender = integration.sender_for(write_key) if write_key is not None else None
        self.rate_limit = options.rate_limit
        self.rate_limit_per_type = options.rate_limit_per_type
        self.event_name = options.event_name
        self.event_url_prefix = event_url_prefix(options.sentry_url, self.project_id)
        self.include_messages = options.include_messages
        self.send_ip = options.send_ip if options.send_ip is not None else _collects_user_info(client_options)
        self.send_query_string = options.send_query_string
        self.properties_hook = options.properties
        self.anonymous_id = options.anonymous_id
        self.wants_hint = options.wants_hints
        timeout = client_options.get("shutdown_timeout")
        self.shutdown_timeout = float(timeout) if isinstance(timeout, (int, float)) else _DEFAULT_SHUTDOWN_TIMEOUT
        if self.sender is not None:
            self.sender.shutdown_timeout = self.shutdown_timeout
        with integration._lock:
            integration._routes.add(self)
        _mark_exit_start_once()

    @classmethod
    def for_client(cls, client: Any) -> Optional[ClientRoute]:
        integrations = getattr(client, "integrations", None) or {}
        integration = integrations.get(SegmentIntegration.identifier)
        if not isinstance(integration, SegmentIntegration):
            return None
        return cls(integration, getattr(client, "options", None) or {})

    def forward_envelope(self, envelope: Any) -> None:
        """Apply the qualifying rules to the envelope's event, if any. Never raises."""
        try:
            event = envelope.get_event()
            if event is not None:
                self._forward(event)
        except Exception:
            self._internal_error()

    def forward_event(self, event: Mapping[str, Any]) -> None:
        """Apply the qualifying rules and enqueue the message. Never raises, never edits ``event``."""
        try:
            self._forward(event)
        except Exception:
            self._internal_error()

    def _forward(self, event: Mapping[str, Any]) -> None:
        # The rules in order, cheapest first: nothing is built for an event that will not go.
        if type(event) is not dict and not isinstance(event, Mapping):
            return
        # Taken for every event, so that no hint outlives the capture of an event that does not go.
        hint = hook.RECENT_HINTS.pop(event.get("event_id")) if self.wants_hint else None
        if not is_forwardable_kind(event, self.include_messages):
            return self._skip("skipped_not_error", event, "it is not an error event")
        user_id = user_id_of(event)
        # Read here, on the capturing thread: the live request it may come from is visible only here.
        anonymous_id = (
            anonymous_id_of(self.anonymous_id, event, hint, self._anonymous_id_failed)
            if self.anonymous_id is not None
            else None
        )
        if user_id is None and anonymous_id is None:
            return self._skip(
                "skipped_no_user",
                event,
                "it has no user id" if self.anonymous_id is None else "it has no user id and no anonymous id",
            )
        identity = Identity(user_id, anonymous_id)
        if self.sender is None:
            return self._skip("skipped_disabled", event, "forwarding is off for project %s", self.project_id)
        limit = self.rate_limit
        if self.rate_limit_per_type is not None:
            return self._limit_per_type(event, identity, hint, limit, self.rate_limit_per_type)
        if limit is None:
            return self.deliver(event, identity, hint)
        shared_limiter = self.integration._shared_limiter
        limiter = shared_limiter or PROCESS_LIMITER
        if limiter.spent.get(self.organization) == limiter.window_now():
            return self.rate_limited(event)
        if shared_limiter is not None:
            if not shared_limiter.submit(self.organization, limit, _SharedDecision(self, event, identity, hint)):
                self.rate_limited(event)
        elif PROCESS_LIMITER.try_acquire(self.organization, limit):
            self.deliver(event, identity, hint)
        else:
            self.rate_limited(event)

    def _limit_per_type(
        self,
        event: Mapping[str, Any],
        identity: Identity,
        hint: Optional[Mapping[str, Any]],
        limit: Optional[int],
        type_limit: int,
    ) -> None:
        """The rate limit with ``rate_limit_per_type``: the event's exception type's cap first, so
        that a type over its cap never spends the organization's budget, then that budget."""
        shared_limiter = self.integration._shared_limiter
        limiter = shared_limiter or PROCESS_LIMITER
        window = limiter.window_now()
        if limit is not None and limiter.spent.get(self.organization) == window:
            return self.rate_limited(event)
        exception_type = exception_type_of(event)
        key = type_key(self.organization, exception_type)
        if limiter.spent.get(key) == window:
            return self.over_type_cap(event, exception_type)
        if shared_limiter is not None:
            decision = _SharedDecision(self, event, identity, hint, exception_type)
            refused = shared_limiter.submit_capped(self.organization, limit, key, type_limit, decision)
            if refused == PER_TYPE:
                self.over_type_cap(event, exception_type)
            elif refused is not None:
                self.rate_limited(event)
        elif not PROCESS_LIMITER.try_acquire(key, type_limit):
            self.over_type_cap(event, exception_type)
        elif limit is None or PROCESS_LIMITER.try_acquire(self.organization, limit):
            self.deliver(event, identity, hint)
        else:
            self.rate_limited(event)

    def deliver(self, event: Mapping[str, Any], identity: Identity, hint: Optional[Mapping[str, Any]] = None) -> None:
        assert self.sender is not None
        message = build_message(
            event,
            identity.user_id,
            anonymous_id=identity.anonymous_id,
            send_ip=self.send_ip,
            send_query_string=self.send_query_string,
            extra_properties=self._extra_properties(event, hint or {}) if self.properties_hook is not None else None,
            event_name=self.event_name,
            event_url_prefix=self.event_url_prefix,
        )
        if self.sender.enqueue(message):
            self.integration.count("forwarded")
        else:
            self._skip("queue_full", event, "the Segment queue is full")

    def _extra_properties(self, event: Mapping[str, Any], hint: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
        """What the user's ``properties`` hook adds; its failure is counted, the message still goes."""
        assert self.properties_hook is not None
        try:
            extra = self.properties_hook(event, hint)
            if extra is not None and not isinstance(extra, Mapping):
                raise TypeError(f"the properties hook returned a {type(extra).__name__}, not a dict")
            return extra
        except Exception:
            self.integration.count("internal_error")
            logger.warning("the 'properties' hook failed; the message is sent without its properties", exc_info=True)
            return None

    def _anonymous_id_failed(self, error: BaseException) -> None:
        self.integration.count("internal_error")

    def rate_limited(self, event: Mapping[str, Any]) -> None:
        self._skip("rate_limited", event, "organization %r is over %s per second", self.organization, self.rate_limit)

    def over_type_cap(self, event: Mapping[str, Any], exception_type: str) -> None:
        self._skip(
            "rate_limited",
            event,
            "the per-type cap: exception type %r is over rate_limit_per_type=%s per second in organization %r",
            exception_type,
            self.rate_limit_per_type,
            self.organization,
        )

    def _skip(self, counter: str, event: Mapping[str, Any], reason: str, *reason_args: Any) -> None:
        self.integration.count(counter)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("event %s not forwarded to Segment: " + reason, as_text(event.get("event_id")), *reason_args)

    def _internal_error(self) -> None:
        try:
            self.integration.count("internal_error")
            logger.exception("internal error while forwarding an event to Segment; the Sentry event is unaffected")
        except Exception:
            pass

    def flush(self, timeout: float) -> None:
        try:
            self.integration.flush(timeout)
        except Exception:
            self._internal_error()

    def close(self) -> None:
        try:
            self.integration._route_closed(self)
        except Exception:
            self._internal_error()


class _SharedDecision:
    """An event (with its hint, for a ``properties`` hook) waiting for the shared limiter's
    answer, given on its background thread."""

    __slots__ = ("event", "exception_type", "hint", "identity", "route")

    def __init__(
        self,
        route: ClientRoute,
        event: Mapping[str, Any],
        identity: Identity,
        hint: Optional[Mapping[str, Any]],
        exception_type: str = "",
    ) -> None:
        self.route, self.event, self.identity, self.hint = route, event, identity, hint
        self.exception_type = exception_type

    def over_type_cap(self) -> None:
        try:
            self.route.over_type_cap(self.event, self.exception_type)
        except Exception:
            self.route._internal_error()

    def decided(self, allowed: bool) -> None:
        try:
            if allowed:
                self.route.deliver(self.event, self.identity, self.hint)
            else:
                self.route.rate_limited(self.event)
        except Exception:
            self.route._internal_error()


def _collects_user_info(client_options: Mapping[str, Any]) -> bool:
    """Whether the client itself collects the user's details (their IP among them): the resolved
    ``data_collection["user_info"]`` where sentry-sdk has it (2.7x, and 3.x, which has no
    ``send_default_pii``; derived from ``send_default_pii`` when only that is set), else
    ``send_default_pii``."""
    data_collection = client_options.get("data_collection")
    if isinstance(data_collection, Mapping) and "user_info" in data_collection:
        return bool(data_collection["user_info"])
    return bool(client_options.get("send_default_pii"))


def _parse_dsn(value: Any) -> Optional[Dsn]:
    if not value:
        return None
    try:
        return Dsn(str(value))
    except BadDsn:
        return None


def _organization_of(dsn: Optional[Dsn]) -> str:
    """``o123.ingest.sentry.io`` (and regional hosts) give ``123``; otherwise the DSN's host."""
    if dsn is None:
        return ""
    host = dsn.host.lower()
    first, _, rest = host.partition(".")
    if first.startswith("o") and first[1:].isdigit() and rest.startswith("ingest."):
        return first[1:]
    return host


_LIVE_INTEGRATIONS: weakref.WeakSet[SegmentIntegration] = weakref.WeakSet()
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
    try:
        pending = delivery.senders_with_work()
        budget = max((sender.shutdown_timeout for sender in pending), default=_DEFAULT_SHUTDOWN_TIMEOUT)
        spent = time.monotonic() - _exit_started[0] if _exit_started else 0.0
        deadline = time.monotonic() + max(0.0, budget - spent)
        for limiter in shared_limiters():
            limiter.flush(deadline - time.monotonic())
        for sender in delivery.senders_with_work():
            sender.flush(deadline - time.monotonic())
        for sender in delivery.all_senders():
            sender.stop()
    except Exception:
        pass
