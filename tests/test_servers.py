"""The Flask example (examples/flask_app) under real gunicorn servers, and a plain gevent program, as subprocesses.

Parity, in each shape: the error events with a user that Sentry's own transport delivered are the ones that
reach Segment, each once, and the server answered every request. One receiver on 127.0.0.1 plays both
Sentry (the DSN) and Segment (SEGMENT_HOST). Servers are stopped as deployments stop them: SIGTERM to the
master, a graceful shutdown.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence

import pytest
import requests
from conftest import free_port

from sentry_segment_integration.testing import SegmentSink
from support import kill_group, sentry_dsn_for, stop_with_sigterm, tail, wait_until

REPO = Path(__file__).resolve().parent.parent
WRITE_KEY = "server_test_write_key"
APP = "examples.flask_app.app:create_app()"
# Two browsers per user of the shop, each signed in once and checking out (and failing) a few times.
BROWSERS = [1001, 1001, 1002, 1002]
CHECKOUTS_PER_BROWSER = 5
# Generous bounds for "did not hang", never measured against: every wait ends as soon as its condition holds.
REQUEST_TIMEOUT = 20.0
START_TIMEOUT = 60.0
ARRIVAL_TIMEOUT = 60.0
EXIT_TIMEOUT = 60.0

GUNICORN_SHAPES = {
    "preload-sync": ["--preload", "--workers", "2"],
    "preload-gthread": ["-k", "gthread", "--threads", "4", "--preload"],
    "preload-gevent": ["-k", "gevent", "--preload", "--workers", "2"],
    "max-requests": ["--max-requests", "5", "--workers", "2"],
}


def need(module: str) -> None:
    """Skip without ``module``, except in CI (CI=true), where a missing test extra is a failure."""
    if os.environ.get("CI") == "true":
        importlib.import_module(module)
    else:
        pytest.importorskip(module)


def environment_for(sink: SegmentSink, first_on_path: Sequence[Path] = ()) -> Dict[str, str]:
    """What a deployment pointed at ``sink`` has; this checkout's package and examples come first on the path."""
    environment = dict(os.environ)
    for name in ("SENTRY_RELEASE", "SENTRY_ENVIRONMENT", "SENTRY_DEBUG", "GEVENT_MONKEY_DISABLE_QUEUE_QUEUE"):
        environment.pop(name, None)
    path = [*map(str, first_on_path), str(REPO), os.environ.get("PYTHONPATH")]
    environment.update(
        SENTRY_DSN=sentry_dsn_for(sink),
        SEGMENT_WRITE_KEY=WRITE_KEY,
        SEGMENT_HOST=sink.url,
        PYTHONPATH=os.pathsep.join(filter(None, path)),
        PYTHONUNBUFFERED="1",
    )
    return environment


def sentry_transport_started_in_each_worker(tmp_path: Path) -> Path:
    """A gunicorn config file whose ``post_worker_init`` starts sentry-sdk's transport thread in each worker.

    Without it, sentry-sdk alone (this package not even imported) hangs gevent workers with ``--preload`` in
    about half the runs (sentry-sdk 2.75, gevent 26.9, gunicorn 27): its transport's lock is made in the
    master, before the worker's ``monkey.patch_all()``, so it stays a native lock; the first capture in a
    worker takes it to start the transport's thread, starting a (patched) thread switches greenlets, and a
    second request's capture then blocks the worker's only OS thread on that lock, for good (py-spy shows the
    worker stuck in ``BackgroundWorker.start``). Started once, alone, before any request, the lock is never
    taken again. The shape is here to measure this package, so sentry-sdk's own hang is kept out of it.
    """
    config = tmp_path / "gunicorn_gevent.conf.py"
    config.write_text(
        textwrap.dedent(
            """
            def post_worker_init(worker):
                import sentry_sdk

                client = sentry_sdk.get_client() if hasattr(sentry_sdk, "get_client") else sentry_sdk.Hub.current.client
                background = getattr(getattr(client, "transport", None), "_worker", None)
                start = getattr(background, "_ensure_thread", None)
                if start is not None:
                    start()
            """
        )
    )
    return config


def without_django(tmp_path: Path) -> Path:
    """A path entry that makes ``import django`` fail, as it does where a Flask shop is deployed.

    The test extras install Django, and sentry-sdk's auto-enabled DjangoIntegration then imports
    ``django.conf``, leaving its unconfigured lazy ``settings`` object in the process. With ``--preload``
    that happens before a gevent worker's ``monkey.patch_all()``, which calls ``isinstance`` on every object
    in the process: the lazy object tries to load settings, raises ImproperlyConfigured, and every worker
    fails to boot. That is a gevent/Django matter, not this package's.
    """
    package = tmp_path / "without_django" / "django"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('raise ImportError("Django is not installed in this deployment")\n')
    return package.parent


def parity(sink: SegmentSink, with_user: Optional[List[str]] = None) -> Dict[str, Any]:
    """What reached Sentry and Segment. ``with_user``: the ids of the events that had a user, when the test
    knows them; otherwise every event that reached Sentry had one."""
    sentry_ids = sink.sentry_event_ids
    segment_ids = [message["messageId"] for message in sink.messages]
    expected = set(sentry_ids) if with_user is None else set(sentry_ids) & set(with_user)
    return {
        "sentry": len(sentry_ids),
        "sentry_duplicates": len(sentry_ids) - len(set(sentry_ids)),
        "segment": len(segment_ids),
        "segment_duplicates": len(segment_ids) - len(set(segment_ids)),
        "with_user_not_in_segment": len(expected - set(segment_ids)),
        "in_segment_not_with_user": len(set(segment_ids) - expected),
    }


def in_parity(events: int) -> Dict[str, Any]:
    return {
        "sentry": events,
        "sentry_duplicates": 0,
        "segment": events,
        "segment_duplicates": 0,
        "with_user_not_in_segment": 0,
        "in_segment_not_with_user": 0,
    }


class Server(NamedTuple):
    process: subprocess.Popen[bytes]
    url: str
    log: Path


@contextmanager
def gunicorn(options: List[str], sink: SegmentSink, workdir: Path) -> Iterator[Server]:
    """The shop under ``gunicorn OPTIONS examples.flask_app.app:create_app()``, once it answers; its output in
    ``workdir/gunicorn.log``. Killed on the way out if the test did not stop it."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", *options, APP]
    environment = environment_for(sink, first_on_path=[without_django(workdir)])
    log = workdir / "gunicorn.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        server = Server(process, f"http://127.0.0.1:{port}", log)
        up = wait_until(lambda: answers(server.url), START_TIMEOUT, lambda: process.poll() is None)
        assert up, f"gunicorn did not answer within {START_TIMEOUT} s\n{tail(log)}"
        yield server
    finally:
        kill_group(process)


def answers(base_url: str) -> bool:
    try:
        return requests.get(base_url + "/", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def shop_in_browser(base_url: str, user_id: int) -> List[str]:
    """One browser: sign in, then check out (and fail) a few times. What each request got, in order; a request
    that got no answer ends the browser's visit."""
    outcomes: List[str] = []
    with requests.Session() as browser:
        try:
            page = browser.get(f"{base_url}/login/{user_id}", timeout=REQUEST_TIMEOUT)  # follows the redirect to /
            outcomes.append(f"login {page.status_code}")
            for _ in range(CHECKOUTS_PER_BROWSER):
                outcomes.append(f"checkout {browser.post(f'{base_url}/checkout', timeout=REQUEST_TIMEOUT).status_code}")
        except requests.RequestException as error:
            outcomes.append(f"no answer: {type(error).__name__}")
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(GUNICORN_SHAPES))
def test_gunicorn_each_signed_in_checkout_error_reaches_segment_once(
    shape: str, sink: SegmentSink, tmp_path: Path
) -> None:
    need("flask")
    need("gunicorn")
    options = GUNICORN_SHAPES[shape]
    if "gevent" in shape:
        need("gevent")
        options = ["--config", str(sentry_transport_started_in_each_worker(tmp_path)), *options]
    with gunicorn(options, sink, tmp_path) as server:
        with ThreadPoolExecutor(len(BROWSERS)) as pool:
            visits = list(pool.map(lambda user_id: shop_in_browser(server.url, user_id), BROWSERS))
        failed = sum(answer == "checkout 500" for visit in visits for answer in visit)
        wait_until(lambda: len(sink.sentry_event_ids) >= failed, ARRIVAL_TIMEOUT, lambda: server.process.poll() is None)
        exit_code = stop_with_sigterm(server.process, EXIT_TIMEOUT)

    checkouts = len(BROWSERS) * CHECKOUTS_PER_BROWSER
    observed = {
        "answers": Counter(answer for visit in visits for answer in visit),
        "worker_timeouts": server.log.read_text(errors="replace").count("WORKER TIMEOUT"),
        "exit_code": "did not exit" if exit_code is None else exit_code,
        **parity(sink),
    }
    expected = {
        "answers": Counter({"login 200": len(BROWSERS), "checkout 500": checkouts}),
        "worker_timeouts": 0,
        "exit_code": 0,
        **in_parity(checkouts),
    }
    assert observed == expected, tail(server.log)
    users = Counter(message["userId"] for message in sink.messages)
    assert users == Counter({str(user_id): CHECKOUTS_PER_BROWSER * BROWSERS.count(user_id) for user_id in BROWSERS})
    assert {message["properties"]["exceptionType"] for message in sink.messages} == {"PaymentError"}


GEVENT_PROGRAM = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json
    import os
    import sys

    import gevent
    import sentry_sdk

    from sentry_segment_integration import SegmentIntegration

    integration = SegmentIntegration()  # SEGMENT_WRITE_KEY, SEGMENT_HOST
    sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], integrations=[integration])
    new_scope = getattr(sentry_sdk, "new_scope", None) or sentry_sdk.push_scope  # 2.x, else 1.x
    USERS, GUESTS = int(sys.argv[1]), int(sys.argv[2])


    def checkout(user_id):
        with new_scope() as scope:
            if user_id is not None:
                scope.set_user({"id": user_id})
            gevent.sleep(0)  # let the other greenlets run in between
            try:
                raise LookupError(f"no cart for {user_id}")
            except LookupError:
                return user_id, sentry_sdk.capture_exception()


    greenlets = [gevent.spawn(checkout, user_id) for user_id in [*range(2000, 2000 + USERS), *[None] * GUESTS]]
    gevent.joinall(greenlets, timeout=60, raise_error=True)
    outcomes = [greenlet.value for greenlet in greenlets]
    sentry_sdk.flush()
    print(json.dumps({
        "with_user": [str(event_id) for user_id, event_id in outcomes if user_id is not None and event_id],
        "guests": [str(event_id) for user_id, event_id in outcomes if user_id is None and event_id],
        "stats": integration.stats(),
    }))
    """
)


@pytest.mark.slow
def test_gevent_program_each_error_with_a_user_reaches_segment_once(sink: SegmentSink, tmp_path: Path) -> None:
    need("gevent")
    users, guests = 50, 5
    program = tmp_path / "gevent_program.py"
    program.write_text(GEVENT_PROGRAM)
    try:
        finished = subprocess.run(
            [sys.executable, str(program), str(users), str(guests)],
            cwd=tmp_path,
            env=environment_for(sink),
            capture_output=True,
            timeout=EXIT_TIMEOUT,  # kills the program when it hangs
        )
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"the gevent program did not exit within {EXIT_TIMEOUT} s\n{hung.stderr!r}")
    stderr = finished.stderr.decode(errors="replace")
    assert finished.returncode == 0, stderr
    report = json.loads(finished.stdout.decode().strip().splitlines()[-1])
    assert (len(report["with_user"]), len(report["guests"])) == (users, guests)

    observed = {
        **parity(sink, with_user=report["with_user"]),
        "forwarded": report["stats"]["forwarded"],  # what the program's integration says it handed on
        "tracebacks": stderr.count("Traceback"),
    }
    expected = {**in_parity(users), "sentry": users + guests, "forwarded": users, "tracebacks": 0}
    assert observed == expected, stderr[-3000:]
