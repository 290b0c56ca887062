"""What the integration would do with a saved Sentry event, and why: the rules of
:func:`rules.qualify` and the message of :func:`payload.build_message`, for ``explain`` and
``replay``. Events saved from Sentry's API are first brought into the SDK's shape
(:func:`saved_events.normalise_event`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Union

from sentry_segment_integration.anonymous import COOKIE, COOKIE_NAME
from sentry_segment_integration.cli.saved_events import (
    BadInput,
    SavedEvent,
    normalise_event,
)
from sentry_segment_integration.payload import (
    EVENT_NAME,
    Message,
    build_message,
)
from sentry_segment_integration.rules import NOT_AN_ERROR, Skip, qualify
from sentry_segment_integration.settings import (
    ConfigurationError,
    SentryLink,
    event_url_prefix,
    parse_project_id,
)

# The rules a saved event can fail, in the integration's order, with the integration's counter names.
SKIP_LABELS = {"not_error": "not an error", "no_user": "no user id"}
# Bad input reported line by line up to this many; the rest only counted (a wrong file can be huge).
MAX_REPORTED_PROBLEMS = 50


@dataclass(frozen=True)
class RuleOptions:
    """The integration's options that change whether and how an event is forwarded."""

    include_messages: bool = False
    send_ip: bool = False
    send_query_string: bool = True
    event_name: str = EVENT_NAME
    sentry_url: Optional[SentryLink] = None
    # The Sentry project of the events, for ``sentryUrl``: else each event's own (``projectID`` in
    # Sentry's API shape, ``project`` in its stored JSON).
    project_id: Optional[str] = None
    # As anonymous_id="cookie": the ajs_anonymous_id cookie of the saved event's request.cookies
    # (Sentry recorded them with send_default_pii); a function of the application cannot be replayed.
    anonymous_id_cookie: bool = False


@dataclass(frozen=True)
class Verdict:
    """What the integration would do with one event, and why."""

    event: Dict[str, Any]
    normalised_from: List[str]
    forwarded: bool
    rule: Optional[str]
    reason: str
    message: Optional[Message] = None


def judge(saved: Mapping[str, Any], options: RuleOptions, now: Optional[datetime] = None) -> Verdict:
    """Normalise ``saved`` and apply the qualifying rules that a saved event can be judged on.

    Whether its project forwards and whether the rate limit has room depend on the configuration
    and the traffic at the time: they are not rules of the event.
    """
    normalised = normalise_event(saved)
    event = normalised.event
    verdict = qualify(event, options.include_messages, COOKIE if options.anonymous_id_cookie else None)
    if isinstance(verdict, Skip):
        if verdict.rule == NOT_AN_ERROR.rule:
            because = _not_an_error_because(event)
        else:
            because = _no_user_because(event)
            if options.anonymous_id_cookie:
                because += f"; and its request.cookies hold no {COOKIE_NAME} cookie"
        return Verdict(event, normalised.changes, False, verdict.rule, because)
    project_id = options.project_id or _project_id_of(saved)
    message = build_message(
        event,
        verdict.user_id,
        now=now,
        send_ip=options.send_ip,
        send_query_string=options.send_query_string,
        event_name=options.event_name,
        event_url_prefix=event_url_prefix(options.sentry_url, project_id),
        anonymous_id=verdict.anonymous_id,
    )
    who = "a user with an id" if verdict.user_id is not None else f"a signed-out visitor with an {COOKIE_NAME} cookie"
    return Verdict(event, normalised.changes, True, None, f"it is an error event of {who}", message)


def _project_id_of(saved: Mapping[str, Any]) -> Optional[str]:
    """The saved event's project id: ``projectID`` (Sentry's API) or ``project`` (its event JSON)."""
    for key in ("projectID", "project"):
        value = saved.get(key)
        if value is not None:
            try:
                return parse_project_id(value)
            except ConfigurationError:
                return None
    return None


def judge_saved(saved: SavedEvent, options: RuleOptions) -> Union[Verdict, BadInput]:
    """:func:`judge` for an event read from a file: one that the rules cannot get through (a value
    no code path expected) is bad input at its ``file:line``, and the run goes on with the next."""
    try:
        return judge(saved.event, options)
    except Exception as error:  # the event is data: whatever it makes fail is a problem of that event
        return BadInput(saved.where, f"cannot be read as a Sentry event: {_described(error)}", saved.progress)


def _described(error: Exception) -> str:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _not_an_error_because(event: Mapping[str, Any]) -> str:
    kind = event.get("type")
    if kind:
        return (
            f"it is a {str(kind)!r} event, not an error: only events without a type (errors; messages "
            "with --include-messages) are forwarded"
        )
    return "it has no exception data (a message-only event): messages are forwarded only with --include-messages"


def _no_user_because(event: Mapping[str, Any]) -> str:
    user = event.get("user")
    if not isinstance(user, Mapping) or not user:
        return "it has no user: only errors of a user with an id are forwarded (sentry_sdk.set_user({'id': ...}))"
    others = sorted(str(key) for key, value in user.items() if key != "id" and value)
    known = f" (it has {', '.join(others)})" if others else ""
    return f"its user has no id{known}: user.id is needed; email, username or IP address alone are not enough"
