"""What the tests share: a real sentry-sdk client's recording transport, and small helpers.

Sentry's side is captured the way sentry-python's own tests do it: a transport that records
every event the client hands over, so a test can compare what Sentry sent with what Segment got.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, List, Optional

import sentry_sdk
from sentry_sdk.transport import Transport

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.sink import SegmentSink

DSN = "https://public@o123.ingest.sentry.io/42"
WRITE_KEY = "test_write_key_0123456789"
SDK_MAJOR = int(sentry_sdk.VERSION.split(".")[0])


class RecordingTransport(Transport):
    """Stands in for Sentry's servers: keeps every error event the client sends (or only counts
    them, with ``keep=False``, for tests that measure memory)."""

    def __init__(self, options: Any = None, keep: bool = True) -> None:
        super().__init__(options)
        self.events: List[Dict[str, Any]] = []
        self.count = 0
        self._keep = keep

    def capture_event(self, event: Dict[str, Any]) -> None:
        self.count += 1
        if self._keep:
            self.events.append(event)

    def capture_envelope(self, envelope: Any) -> None:
        event = envelope.get_event()
        if event is not None:
            self.capture_event(event)

    def flush(self, timeout: float, callback: Any = None) -> None:
        pass

    def kill(self) -> None:
        pass

    @property
    def event_ids(self) -> List[str]:
        return [event["event_id"] for event in self.events]


def current_client() -> Any:
    if SDK_MAJOR >= 2:
        return sentry_sdk.get_client()
    return sentry_sdk.Hub.current.client


def make_integration(sink: SegmentSink, **options: Any) -> SegmentIntegration:
    """An integration sending to ``sink``. The rate limit is shared by the whole process, so each
    gets an organization of its own unless the test passes one (or None: the DSN's)."""
    options.setdefault("upload_interval", 0.05)
    options.setdefault("organization", f"test-org-{uuid.uuid4().hex}")
    return SegmentIntegration(write_key=options.pop("write_key", WRITE_KEY), host=sink.url, **options)


def raise_and_capture(exception: BaseException) -> str:
    try:
        raise exception
    except BaseException:
        event_id = sentry_sdk.capture_exception()
    assert event_id is not None
    return str(event_id)


def error_as_user(user: Any = None, exception: Optional[BaseException] = None) -> Optional[str]:
    """Capture one error with ``user`` on the scope (None: no user at all)."""
    with new_scope() as scope:
        if user is not None:
            scope.set_user(user)
        try:
            raise exception or RuntimeError("checkout failed")
        except BaseException:
            return sentry_sdk.capture_exception()


def new_scope() -> Any:
    if SDK_MAJOR >= 2:
        return sentry_sdk.new_scope()
    return sentry_sdk.push_scope()


def capture_with_client(client: Any, user_id: str) -> None:
    """Capture one error through ``client`` (not the global one) for ``user_id``."""
    if SDK_MAJOR >= 2:
        with sentry_sdk.new_scope() as scope:
            scope.set_client(client)
            scope.set_user({"id": user_id})
            try:
                raise LookupError(user_id)
            except LookupError:
                scope.capture_exception()
    else:
        hub = sentry_sdk.Hub(client)
        with hub.configure_scope() as scope:
            scope.set_user({"id": user_id})
        try:
            raise LookupError(user_id)
        except LookupError:
            hub.capture_exception()


def clear_scopes() -> None:
    """Forget a user that a test left on the scopes, so the next test starts without one.

    (Not ``Scope.clear()``: in sentry-sdk 2.0.0 it leaves a scope unable to capture.)
    """
    if SDK_MAJOR >= 2:
        scope_class = sentry_sdk.Scope
        for scope in (
            scope_class.get_global_scope(),
            scope_class.get_isolation_scope(),
            scope_class.get_current_scope(),
        ):
            scope.set_user(None)
    else:
        sentry_sdk.Hub.current.scope.set_user(None)
