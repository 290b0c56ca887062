"""One Sentry client's route to Segment: its project's settings, worked out once per client, then
for each event the rules, the rate limit and the Segment queue, in that order."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional, Protocol

from sentry_sdk.utils import BadDsn, Dsn

from sentry_segment_integration import hints
from sentry_segment_integration._log import contained, logger
from sentry_segment_integration.delivery import SegmentSender
from sentry_segment_integration.payload import as_text, build_message, exception_type_of
from sentry_segment_integration.ratelimit import RateLimiter, TypeCap, type_key
from sentry_segment_integration.rules import Identity, Skip, qualify
from sentry_segment_integration.settings import Options, Secret, event_url_prefix

DEFAULT_SHUTDOWN_TIMEOUT = 2.0


class Forwarder(Protocol):
    """What a route needs of the integration it belongs to."""

    limiter: RateLimiter

    @property
    def options(self) -> Options: ...

    def sender_for(self, write_key: Secret) -> SegmentSender: ...

    def count(self, counter: str, amount: int = 1) -> None: ...

    def flush(self, timeout: float) -> bool: ...

    def route_opened(self, route: ClientRoute) -> None: ...

    def route_closed(self, route: ClientRoute) -> None: ...


class ClientRoute:
    """Where one Sentry client's events go (a ``hook.Route``). No method raises."""

    def __init__(self, forwarder: Forwarder, client_options: Mapping[str, Any]) -> None:
        options = forwarder.options
        dsn = _parse_dsn(client_options.get("dsn"))
        self.forwarder = forwarder
        self.project_id: Optional[str] = dsn.project_id if dsn is not None else None
        self.organization = options.organization or _organization_of(dsn)
        write_key = options.write_key_for(self.project_id)
        self.sender = forwarder.sender_for(write_key) if write_key is not None else None
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
        self.shutdown_timeout = float(timeout) if isinstance(timeout, (int, float)) else DEFAULT_SHUTDOWN_TIMEOUT
        if self.sender is not None:
            self.sender.shutdown_timeout = self.shutdown_timeout
        # One guard for every entry point: what fails here never reaches the application.
        self.contained = contained(self.internal_error)
        forwarder.route_opened(self)

    def forward_envelope(self, envelope: Any) -> None:
        """The envelope's event, if any, through :meth:`forward_event`."""
        with self.contained:
            event = envelope.get_event()
            if event is not None:
                self._forward(event)

    def forward_event(self, event: Mapping[str, Any]) -> None:
        """The rules, the rate limit, the message onto the queue. Never edits ``event``."""
        with self.contained:
            self._forward(event)

    def _forward(self, event: Mapping[str, Any]) -> None:
        # Cheapest first: nothing is built for an event that will not go.
        if type(event) is not dict and not isinstance(event, Mapping):
            return
        # Taken for every event, so that no hint outlives the capture of an event that does not go.
        hint = hints.RECENT_HINTS.pop(event.get("event_id")) if self.wants_hint else None
        verdict = qualify(event, self.include_messages, self.anonymous_id, hint, self._anonymous_id_failed)
        if isinstance(verdict, Skip):
            return self._skip(verdict.counter, event, verdict.reason)
        if self.sender is None:
            return self._skip("skipped_disabled", event, "forwarding is off for project %s", self.project_id)
        limit, type_limit = self.rate_limit, self.rate_limit_per_type
        if limit is None and type_limit is None:
            return self.deliver(event, verdict, hint)
        waiting = _Waiting(self, event, verdict, hint)
        cap = None
        if type_limit is not None:
            waiting.exception_type = exception_type_of(event)
            cap = TypeCap(type_key(self.organization, waiting.exception_type), type_limit)
        self.forwarder.limiter.admit(self.organization, limit, waiting, cap)

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
            self.forwarder.count("forwarded")
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
        except Exception:  # the user's code: anything may fail in it
            self.forwarder.count("internal_error")
            logger.warning("the 'properties' hook failed; the message is sent without its properties", exc_info=True)
            return None

    def _anonymous_id_failed(self, error: BaseException) -> None:
        self.forwarder.count("internal_error")

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
        self.forwarder.count(counter)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("event %s not forwarded to Segment: " + reason, as_text(event.get("event_id")), *reason_args)

    def internal_error(self, error: Exception) -> None:
        self.forwarder.count("internal_error")
        logger.error(
            "internal error while forwarding an event to Segment; the Sentry event is unaffected", exc_info=error
        )

    def flush(self, timeout: float) -> None:
        with self.contained:
            self.forwarder.flush(timeout)

    def close(self) -> None:
        with self.contained:
            self.forwarder.route_closed(self)


class _Waiting:
    """An event (with its identity and hint) waiting for the limiter's answer: an
    :class:`~sentry_segment_integration.ratelimit.Admission`, told at once or on the shared
    limiter's thread."""

    __slots__ = ("event", "exception_type", "hint", "identity", "route")

    def __init__(
        self, route: ClientRoute, event: Mapping[str, Any], identity: Identity, hint: Optional[Mapping[str, Any]]
    ) -> None:
        self.route, self.event, self.identity, self.hint = route, event, identity, hint
        self.exception_type = ""

    def admitted(self) -> None:
        with self.route.contained:
            self.route.deliver(self.event, self.identity, self.hint)

    def over_budget(self) -> None:
        with self.route.contained:
            self.route.rate_limited(self.event)

    def over_type_cap(self) -> None:
        with self.route.contained:
            self.route.over_type_cap(self.event, self.exception_type)


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
