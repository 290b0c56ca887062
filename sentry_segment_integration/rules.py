"""Which of the events Sentry sends are forwarded, and why the others are not.

Pure, and the only place the event's rules are written: the integration applies :func:`qualify`
to every event its client sends, ``explain`` and ``replay`` to saved events. What depends on the
configuration and the traffic (whether the project forwards, whether the rate limit has room) is
decided after it, by the route and the limiter.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

from sentry_segment_integration.anonymous import AnonymousIdSource, anonymous_id_of
from sentry_segment_integration.payload import is_forwardable_kind, user_id_of


class Identity(NamedTuple):
    """Who the message is about: the event's user id, the visitor's anonymous id, or both."""

    user_id: Optional[str]
    anonymous_id: Optional[str]


class Skip(NamedTuple):
    """An event the rules leave out: the rule, the ``stats()`` counter it counts in, and why."""

    rule: str
    counter: str
    reason: str


NOT_AN_ERROR = Skip("not_error", "skipped_not_error", "it is not an error event")
NO_USER = Skip("no_user", "skipped_no_user", "it has no user id")
NO_USER_OR_VISITOR = Skip("no_user", "skipped_no_user", "it has no user id and no anonymous id")


def qualify(
    event: Mapping[str, Any],
    include_messages: bool,
    anonymous_id: Optional[AnonymousIdSource] = None,
    hint: Optional[Mapping[str, Any]] = None,
    on_anonymous_id_error: Optional[Callable[[BaseException], None]] = None,
) -> Union[Identity, Skip]:
    """Who ``event`` is forwarded as, or the rule that leaves it out, in the rules' order: an error
    (or, with ``include_messages``, a message), then a user id or, with ``anonymous_id``, the
    visitor's anonymous id. Never edits ``event``; a failing ``anonymous_id`` function is handed to
    ``on_anonymous_id_error`` and counts as no anonymous id."""
    if not is_forwardable_kind(event, include_messages):
        return NOT_AN_ERROR
    user_id = user_id_of(event)
    # Read even with a user id: the message then carries both, as Segment's identity rules want.
    # With the cookie, this is the capturing thread, where the live request is visible.
    visitor = anonymous_id_of(anonymous_id, event, hint, on_anonymous_id_error) if anonymous_id is not None else None
    if user_id is None and visitor is None:
        return NO_USER if anonymous_id is None else NO_USER_OR_VISITOR
    return Identity(user_id, visitor)
