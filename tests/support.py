"""What the tests share: a real sentry-sdk client's recording transport, and small helpers.

Sentry's side is captured the way sentry-python's own tests do it: a transport that records
every event the client hands over, so a test can compare what Sentry sent with what Segment got.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, TextIO, Tuple
from wsgiref.simple_server import WSGIRequestHandler

import sentry_sdk
from sentry_sdk.transport import Transport

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.testing import SegmentSink

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


class SteppingClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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


DJANGO_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "django_app"
DJANGO_EXAMPLE_SETTINGS = "shopsite.settings"


@contextmanager
def django_example_set_up(database_dir: Path, write_key: str) -> Iterator[None]:
    """Django set up with the example shop's settings (examples/django_app), its database migrated, the
    environment kept as set while the caller's block runs. Django is set up once per process, so every test
    module that uses it gets these settings (and skips if Django was set up with others)."""
    import django
    import pytest
    from django.apps import apps
    from django.conf import settings
    from django.core.management import call_command

    with pytest.MonkeyPatch.context() as environment, as_at_application_start():
        environment.syspath_prepend(str(DJANGO_EXAMPLE))
        environment.setenv("DJANGO_SETTINGS_MODULE", DJANGO_EXAMPLE_SETTINGS)
        environment.setenv("SHOP_DATABASE", str(database_dir / "db.sqlite3"))
        # settings.py calls the example's init_sentry(): without a DSN, that first client sends nothing.
        environment.delenv("SENTRY_DSN", raising=False)
        environment.delenv("SEGMENT_HOST", raising=False)
        environment.setenv("SEGMENT_WRITE_KEY", write_key)
        if settings.configured and settings.SETTINGS_MODULE != DJANGO_EXAMPLE_SETTINGS:
            pytest.skip(f"Django is already set up in this process with {settings.SETTINGS_MODULE}")
        if not apps.ready:
            django.setup()
        call_command("migrate", verbosity=0)
        yield


class QuietWSGIHandler(WSGIRequestHandler):
    """wsgiref's request handler, with its access log and its error output left out."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def get_stderr(self) -> TextIO:
        return io.StringIO()


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


# -- the command line, run as a user runs it (a subprocess per command) ----------------------------


def cli_environment(**extra: str) -> Dict[str, str]:
    """The user's environment without Segment settings, and nothing to 127.0.0.1 through a proxy."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SEGMENT_")}
    environment.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "NO_COLOR": "1"})
    environment.update(extra)
    return environment


def run_cli(*arguments: str, timeout: float = 60, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sentry_segment_integration", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_environment(**environment),
    )


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def error_event(number: int, user_id: Optional[Any] = None, **fields: Any) -> Dict[str, Any]:
    """A Sentry error event as the SDK sends it (and as before_send or an export saves it)."""
    event: Dict[str, Any] = {
        "event_id": uuid.UUID(int=number + 1).hex,
        "timestamp": "2024-05-02T10:15:30.250000Z",
        "level": "error",
        "environment": "production",
        "release": "shop@1.2.3",
        "transaction": "/checkout",
        "exception": {"values": [{"type": "KeyError", "value": "'coupon'"}, {"type": "CheckoutError"}]},
        "request": {
            "url": "https://shop.example/checkout",
            "method": "POST",
            "query_string": "coupon=SPRING",
            "headers": {"User-Agent": "Mozilla/5.0", "Referer": "https://shop.example/cart"},
        },
    }
    if user_id is not None:
        event["user"] = {"id": user_id, "email": f"user{number}@example.com"}
    event.update(fields)
    return event


def write_json_lines(path: Path, events: Iterable[Any]) -> Path:
    path.write_text("".join(json.dumps(event) + "\n" for event in events), encoding="utf-8")
    return path


def message_ids(messages: List[Dict[str, Any]]) -> List[str]:
    return [message["messageId"] for message in messages]


class SinkProcess:
    """``sentry-segment sink`` in a subprocess, its stdout and stderr read line by line as they come."""

    def __init__(self, *arguments: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sentry_segment_integration", "sink", "--port", "0", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_environment(),
        )
        self.lines: queue.Queue[Tuple[str, str]] = queue.Queue()
        self.seen: Dict[str, List[str]] = {"stdout": [], "stderr": []}
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr))
        ]
        for reader in self._readers:
            reader.start()
        banner = self.wait_for_line("listening on")
        found = re.search(r"http://127\.0\.0\.1:(\d+)", banner)
        assert found, banner
        self.url = found.group(0)

    def _read(self, name: str, stream: Optional[IO[str]]) -> None:
        assert stream is not None
        for line in stream:
            self.lines.put((name, line))

    def wait_for_line(self, text: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                name, line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            self.seen[name].append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in the sink's output: {self.seen}")

    def stop(self, signum: int) -> subprocess.CompletedProcess[str]:
        self.process.send_signal(signum)
        self.process.wait(timeout=15)
        for reader in self._readers:
            reader.join(timeout=5)
        while not self.lines.empty():
            name, line = self.lines.get()
            self.seen[name].append(line)
        stdout, stderr = ("".join(self.seen[name]) for name in ("stdout", "stderr"))
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, stdout, stderr)


def post_to(url: str, path: str, body: Dict[str, Any], write_key: str, use_gzip: bool) -> int:
    data = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode(),
    }
    if use_gzip:
        data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
    request = urllib.request.Request(url + path, data=data, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def track(user_id: str, exception_type: str) -> Dict[str, Any]:
    return {
        "type": "track",
        "event": "Error Captured",
        "userId": user_id,
        "messageId": uuid.uuid4().hex,
        "properties": {"exceptionType": exception_type},
    }


def sentry_api_event(event_id: str, user: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """An event as GET /api/0/projects/{org}/{project}/events/{id}/ returns it (abridged)."""
    return {
        "id": event_id,
        "eventID": event_id,
        "groupID": "1341191803",
        "projectID": "42",
        "type": "error",
        "platform": "python",
        "title": "CheckoutError: checkout failed",
        "dateCreated": "2024-05-02T10:15:30Z",
        "dateReceived": "2024-05-02T10:15:31.123456Z",
        "user": user,
        "release": {"version": "shop@1.2.3", "shortVersion": "1.2.3"},
        "tags": [
            {"key": "environment", "value": "production"},
            {"key": "level", "value": "error"},
            {"key": "transaction", "value": "/checkout"},
        ],
        "entries": [
            {"type": "exception", "data": {"values": [{"type": "KeyError"}, {"type": "CheckoutError"}]}},
            {"type": "breadcrumbs", "data": {"values": []}},
            {
                "type": "request",
                "data": {
                    "url": "https://shop.example/checkout",
                    "method": "POST",
                    "query": [["coupon", "SPRING 24"]],
                    "headers": [["Referer", "https://shop.example/cart"], ["User-Agent", "Mozilla/5.0"]],
                },
            },
        ],
    }


class RecordedAdmission:
    """An admission for a rate limiter that notes its answer in ``answers``: ``"admitted"``,
    ``"over_budget"`` or ``"over_type_cap"``."""

    def __init__(self, answers: List[str]) -> None:
        self.answers = answers

    def admitted(self) -> None:
        self.answers.append("admitted")

    def over_budget(self) -> None:
        self.answers.append("over_budget")

    def over_type_cap(self) -> None:
        self.answers.append("over_type_cap")
