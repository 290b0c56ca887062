"""What the tests share: a real sentry-sdk client's recording transport, and small helpers.

Sentry's side is captured the way sentry-python's own tests do it: a transport that records
every event the client hands over, so a test can compare what Sentry sent with what Segment got.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import sentry_sdk
from sentry_sdk.transport import Transport

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.sink import SegmentSink

DSN = "https://public@o123.ingest.sentry.io/42"
WRITE_KEY = "test_write_key_0123456789"
SDK_MAJOR = int(sentry_sdk.VERSION.split(".")[0])


def user_details_option(on: bool) -> Dict[str, Any]:
    """The client option that makes Sentry collect the user's details (their IP among them):
    ``send_default_pii`` on sentry-sdk 1.x and 2.x; 3.x has only ``data_collection``."""
    return {"send_default_pii": on} if SDK_MAJOR < 3 else {"data_collection": {"user_info": on}}


def start_transaction(name: str, op: str) -> Any:
    """A transaction: ``start_transaction`` on 1.x and 2.x, a root span on 3.x (which has no other)."""
    if SDK_MAJOR < 3:
        return sentry_sdk.start_transaction(name=name, op=op)
    return sentry_sdk.start_span(name=name, attributes={"sentry.op": op})


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


def separate_client(dsn: str, integration: SegmentIntegration) -> Any:
    """A sentry-sdk client of its own beside the global one, recording what it sends."""
    return sentry_sdk.Client(
        dsn=dsn, transport=RecordingTransport(), integrations=[integration], default_integrations=False
    )


def flush_until_failed(integration: SegmentIntegration, failures: int, slack: float = 10.0) -> None:
    """Flush until ``failures`` deliveries have failed: they fail on the delivery thread, after
    its retries. ``slack`` is far longer than that takes; the caller asserts the count."""
    deadline = time.monotonic() + slack
    while integration.stats()["delivery_failed"] < failures and time.monotonic() < deadline:
        sentry_sdk.flush(1)


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


@contextmanager
def as_at_application_start() -> Iterator[None]:
    """sentry-sdk 1.x only: make the process's main hub current, as it is when an application starts.

    In 1.x the transport's thread enters the hub of the request that captured an event while the
    request's thread enters it too, and both push onto that hub's one stack of previous hubs: the
    thread of an earlier test can be left with another hub current, one bound to that test's (closed)
    client. An init() there would not reach the main hub, which the server's threads start from.
    """
    if SDK_MAJOR >= 2:
        yield
    else:
        main_hub: Any = sentry_sdk.Hub.main
        with main_hub:
            yield


def close_and_reset_sentry() -> None:
    """Close the test's client, and leave the process's hub with no client and no user for later tests."""
    client = current_client()
    if client is not None:
        client.close(timeout=2)
    with as_at_application_start():
        clear_scopes()
        sentry_sdk.init()


def sentry_dsn_for(sink: SegmentSink, project_id: int = 42) -> str:
    """A DSN whose Sentry is ``sink``: what Sentry's own transport delivers is counted there too."""
    return f"http://public@127.0.0.1:{sink.port}/{project_id}"


def wait_until(
    condition: Any, timeout: float = 10.0, still_running: Optional[Any] = None, interval: float = 0.02
) -> bool:
    """Poll ``condition()`` until it is true, ``timeout`` passed, or ``still_running()`` (a server's
    process, say) turns false; whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if still_running is not None and not still_running():
            return bool(condition())
        time.sleep(interval)
    return bool(condition())


def tail(log: Path, lines: int = 40) -> str:
    """The last lines of a server's log, for an assertion's message."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill a server started with ``start_new_session=True`` and all its workers (a killed master can
    leave its workers running)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def stop_with_sigterm(process: subprocess.Popen[bytes], timeout: float) -> Optional[int]:
    """SIGTERM, as systemd, Kubernetes and supervisord stop a server; its exit code, or None (and all
    of it killed) if it did not exit within ``timeout``."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        return None


def all_logged_text(caplog: Any) -> str:
    """What a pytest ``caplog`` captured, each record as its logger's name and its message."""
    formatter = logging.Formatter("%(name)s %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records)
