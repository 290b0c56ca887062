"""Sentry's hint of the event being captured (``exc_info``, the log record...), for a
``properties`` hook or an ``anonymous_id`` function: the transport sees the event but not its hint."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Optional, Tuple

from sentry_sdk.scope import add_global_event_processor

from sentry_segment_integration._log import contained, log_failure
from sentry_segment_integration.payload import user_id_of

# The hint of the event being captured in this context (thread, greenlet, task), and its id.
_CURRENT_HINT: ContextVar[Optional[Tuple[Any, Mapping[str, Any]]]] = ContextVar("sentry_segment_hint", default=None)


class RecentHints:
    """Sentry's hint (``exc_info``, the log record...) of the event being captured, for a
    ``properties`` hook: the transport sees the event but not its hint.

    A global event processor notes it; the transport, called on the same thread right after, takes
    it. Only one per context at a time, and only for an event that can be forwarded (an error or
    message with a user id): a hint holds a traceback, its frames and every local, and an event
    that ``before_send`` or sampling drops never comes to collect it (the next capture in the same
    context replaces it).
    """

    def __init__(self) -> None:
        self.wanted = False
        # Also for events without a user id: an ``anonymous_id`` function is given the hint.
        self.wanted_without_user = False

    def remember(self, event: Any, hint: Any) -> Any:
        with _REMEMBERING_FAILED:
            if self.wanted:
                keep = (
                    isinstance(hint, Mapping)
                    and not event.get("type")
                    and (self.wanted_without_user or user_id_of(event) is not None)
                )
                if keep:
                    _CURRENT_HINT.set((event.get("event_id"), hint))
                elif _CURRENT_HINT.get() is not None:
                    _CURRENT_HINT.set(None)
        return event

    def pop(self, event_id: Any) -> Mapping[str, Any]:
        """The hint of the event with ``event_id`` (empty if there is none), forgotten from now on."""
        current = _CURRENT_HINT.get()
        if current is None:
            return {}
        _CURRENT_HINT.set(None)
        return current[1] if current[0] == event_id else {}


# An event processor of the application's capture: what fails in it is logged, the event goes on.
_REMEMBERING_FAILED = contained(log_failure("could not note the hint of an event; a properties hook gets none"))
RECENT_HINTS = RecentHints()
_install_lock = threading.Lock()


def keep_hints(without_user: bool = False) -> None:
    """Start remembering hints for ``properties`` hooks (once per process), and with ``without_user``
    for events without a user id too (for an ``anonymous_id`` function)."""
    with _install_lock:
        if not RECENT_HINTS.wanted:
            add_global_event_processor(RECENT_HINTS.remember)
            RECENT_HINTS.wanted = True
        if without_user:
            RECENT_HINTS.wanted_without_user = True
