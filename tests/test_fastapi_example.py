"""The FastAPI example shop (examples/fastapi_app) under real uvicorn and gunicorn servers, as subprocesses.

Parity, in each shape: the error events with a user that Sentry's own transport delivered are exactly the
ones that reach Segment, each once; guests' errors reach Sentry only. One receiver on 127.0.0.1 plays both
Sentry (the DSN) and Segment (SEGMENT_HOST), and keeps running in the test process after the server is gone.

The servers are stopped as deployments stop them: SIGTERM. uvicorn shuts down gracefully, then raises the
signal again with its default action, so the process ends without running any ``atexit`` hook: whatever
is still waiting in a queue then is lost. (Ctrl-C differs: the re-raised SIGINT is a KeyboardInterrupt,
and the interpreter exits normally.)
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ContextManager, Dict, Iterator, List, NamedTuple, Optional

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("itsdangerous")  # Starlette's SessionMiddleware signs the shop's session cookie with it

import requests
from conftest import free_port

from sentry_segment_integration.testing import SegmentSink
from support import sentry_dsn_for, tail, wait_until

REPO = Path(__file__).resolve().parent.parent
APP = "examples.fastapi_app.app:app"
WRITE_KEY = "fastapi_shop_write_key"
ENVIRONMENT, RELEASE = "staging", "fastapi-shop@3.1.0"
USER_AGENT = "Mozilla/5.0 (fastapi example test)"
USERS = (1001, 1002)
# Generous bounds for "did not hang", never measured against: every wait ends as soon as its condition holds.
REQUEST_TIMEOUT = 20.0
START_TIMEOUT = 60.0
ARRIVAL_TIMEOUT = 20.0
EXIT_TIMEOUT = 60.0
# After the server has exited nothing new can be sent; this only lets the receiver finish recording what
# it was reading when the process ended (and is waited out only when parity does not hold).
SETTLE_TIMEOUT = 3.0


class Server(NamedTuple):
    process: subprocess.Popen[bytes]
    url: str
    log: Path


class Order(NamedTuple):
    """One failing request of a signed-in user: ``path`` carries ``?order=N``, which Segment gets back as
    ``properties.page.search``, so each message can be matched with the request it came from."""

    number: int
    user_id: int
    path: str
    exception_type: str


def environment_for(sink: SegmentSink) -> Dict[str, str]:
    """What a deployment of the shop pointed at ``sink`` has."""
    environment = dict(os.environ)
    environment.pop("SENTRY_DEBUG", None)
    environment.update(
        SENTRY_DSN=sentry_dsn_for(sink),
        SEGMENT_WRITE_KEY=WRITE_KEY,
        SEGMENT_HOST=sink.url,
        SENTRY_ENVIRONMENT=ENVIRONMENT,
        SENTRY_RELEASE=RELEASE,
        SESSION_SECRET_KEY="fastapi example test",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    return environment


def answers(base_url: str) -> bool:
    try:
        return requests.get(base_url + "/", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def serving(command: List[str], sink: SegmentSink, workdir: Path, port: int, workers: int = 1) -> Iterator[Server]:
    """The shop under ``command`` (run from the repository's root), once it answers and each of its
    ``workers`` has started the application; its output in ``workdir/server.log``. Killed on the way out if
    the test did not stop it."""
    log = workdir / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=environment_for(sink), stdout=output, stderr=subprocess.STDOUT
        )
    try:
        server = Server(process, f"http://127.0.0.1:{port}", log)
        started = wait_until(
            lambda: (
                log.read_text(errors="replace").count("Application startup complete") >= workers and answers(server.url)
            ),
            START_TIMEOUT,
            lambda: process.poll() is None,
        )
        assert started, f"{command[2]} did not answer within {START_TIMEOUT} s\n{tail(log)}"
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def uvicorn(sink: SegmentSink, workdir: Path) -> ContextManager[Server]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port)]
    return serving(command, sink, workdir, port)


def gunicorn(options: List[str], sink: SegmentSink, workdir: Path, workers: int) -> ContextManager[Server]:
    """``gunicorn -k uvicorn_worker.UvicornWorker``, with a config file that keeps gunicorn's own log lines out
    of Sentry. Each uvicorn worker ends by its re-raised SIGTERM, and the master logs that at ERROR ("Worker
    (pid:N) was sent SIGTERM!"); with ``--preload`` the master has the Sentry client, and sentry-sdk 1.x's
    LoggingIntegration makes each such line a Sentry message event: no exception, no user, so never Segment's,
    but the receiver counts every Sentry event, and these would pass for errors with a user lost on the way."""
    config = workdir / "gunicorn.conf.py"
    config.write_text('from sentry_sdk.integrations.logging import ignore_logger\n\nignore_logger("gunicorn.error")\n')
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", str(config), "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", str(workers), "-k", "uvicorn_worker.UvicornWorker", *options, APP]
    return serving(command, sink, workdir, port, workers)


def stop(process: subprocess.Popen[bytes], signum: int) -> Optional[int]:
    """Send ``signum`` and wait for the exit; None (and killed) if the process did not exit in time."""
    process.send_signal(signum)
    try:
        return process.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        return None


def session_cookie(base_url: str, user_id: int) -> Dict[str, str]:
    """Sign ``user_id`` in, as a browser does: the session cookie the shop sets."""
    response = requests.get(f"{base_url}/login/{user_id}", allow_redirects=False, timeout=REQUEST_TIMEOUT)
    cookie = response.cookies.get("session")
    assert (response.status_code, bool(cookie)) == (302, True)
    return {"session": str(cookie)}


def guests_fail(base_url: str, sink: SegmentSink) -> List[str]:
    """Errors without a user: a guest's checkout, a signed-out user's checkout, a guest's unknown product.
    Their Sentry event ids, once Sentry has them all (so what arrives later is the signed-in users')."""
    already = len(sink.sentry_event_ids)
    with requests.Session() as signed_out:
        assert signed_out.get(f"{base_url}/login/1002", timeout=REQUEST_TIMEOUT).text.startswith("Hello, grace")
        assert signed_out.get(f"{base_url}/logout", timeout=REQUEST_TIMEOUT).text.startswith("Hello, guest")
        statuses = [
            requests.post(f"{base_url}/checkout", timeout=REQUEST_TIMEOUT).status_code,
            signed_out.post(f"{base_url}/checkout", timeout=REQUEST_TIMEOUT).status_code,
            requests.get(f"{base_url}/products/gift-card", timeout=REQUEST_TIMEOUT).status_code,
        ]
    assert statuses == [500, 500, 500]
    arrived = wait_until(lambda: len(sink.sentry_event_ids) >= already + len(statuses), ARRIVAL_TIMEOUT)
    assert arrived, f"Sentry received {len(sink.sentry_event_ids) - already} of the {len(statuses)} guest errors"
    return sink.sentry_event_ids[already:]


def orders(count: int) -> List[Order]:
    """``count`` failing requests of signed-in users, the two users taking turns; every fifth one asks
    for the unknown product (which fails for everybody), the others check out without installments."""
    made = []
    for number in range(count):
        user_id = USERS[number % len(USERS)]
        if number % 5 == 4:
            made.append(Order(number, user_id, f"/products/gift-card?order={number}", "KeyError"))
        else:
            made.append(Order(number, user_id, f"/checkout?order={number}", "PaymentError"))
    return made


def place(base_url: str, order: Order, cookies: Dict[str, Dict[str, str]]) -> int:
    method = "POST" if order.path.startswith("/checkout") else "GET"
    headers = {"User-Agent": USER_AGENT}
    response = requests.request(
        method, base_url + order.path, cookies=cookies[str(order.user_id)], headers=headers, timeout=REQUEST_TIMEOUT
    )
    return response.status_code


def burst(base_url: str, placed: List[Order]) -> Counter[int]:
    """All of ``placed`` at once, each on a connection of its own; what they were answered."""
    cookies = {str(user_id): session_cookie(base_url, user_id) for user_id in USERS}
    start = threading.Barrier(len(placed))

    def go(order: Order) -> int:
        start.wait(REQUEST_TIMEOUT)
        return place(base_url, order, cookies)

    with ThreadPoolExecutor(len(placed)) as pool:
        return Counter(pool.map(go, placed))


def trickle(base_url: str, placed: List[Order]) -> Counter[int]:
    """``placed`` one after the other, 20 to 50 ms apart (a steady, light load); what they were answered."""
    cookies = {str(user_id): session_cookie(base_url, user_id) for user_id in USERS}
    statuses: Counter[int] = Counter()
    for order in placed:
        statuses[place(base_url, order, cookies)] += 1
        if order is not placed[-1]:
            time.sleep((20 + (order.number * 13) % 31) / 1000)
    return statuses


def observe(sink: SegmentSink, guest_ids: List[str], placed: List[Order]) -> Dict[str, Any]:
    """What reached Sentry and Segment, once the receiver has settled. The errors with a user are those that
    reached Sentry after the guests' (which ``guests_fail`` waited for)."""
    orders_by_search = {f"order={order.number}": order for order in placed}

    def segment_ids() -> List[str]:
        return [message["messageId"] for message in sink.messages]

    def with_user() -> List[str]:
        return [event_id for event_id in sink.sentry_event_ids if event_id not in set(guest_ids)]

    wait_until(lambda: set(segment_ids()) >= set(with_user()), SETTLE_TIMEOUT)
    sentry_ids, segment = with_user(), segment_ids()
    mismatched = []
    for message in sink.messages:
        order = orders_by_search.get(message.get("properties", {}).get("page", {}).get("search"))
        shape = (message.get("userId"), message.get("properties", {}).get("exceptionType"))
        if order is None or shape != (str(order.user_id), order.exception_type):
            mismatched.append(message["messageId"])
    return {
        "sentry_with_user": len(sentry_ids),
        "sentry_duplicates": len(sink.sentry_event_ids) - len(set(sink.sentry_event_ids)),
        "segment": len(segment),
        "segment_duplicates": len(segment) - len(set(segment)),
        "with_user_not_in_segment": len(set(sentry_ids) - set(segment)),
        "in_segment_not_with_user": len(set(segment) - set(sentry_ids)),
        "guests_in_segment": len(set(guest_ids) & set(segment)),
        "not_the_request_s_user_or_error": len(mismatched),
    }


def in_parity(sentry_with_user: int) -> Dict[str, Any]:
    return {
        "sentry_with_user": sentry_with_user,
        "sentry_duplicates": 0,
        "segment": sentry_with_user,
        "segment_duplicates": 0,
        "with_user_not_in_segment": 0,
        "in_segment_not_with_user": 0,
        "guests_in_segment": 0,
        "not_the_request_s_user_or_error": 0,
    }


def assert_parity(observed: Dict[str, Any], placed: List[Order], log: Path) -> None:
    # Parity is measured against what Sentry's own transport delivered, whatever that was; but a run in
    # which Sentry received none of the signed-in errors would prove nothing.
    assert observed["sentry_with_user"] > 0, f"Sentry received no error of a signed-in user\n{tail(log)}"
    # The receiver counts every Sentry event: more than were placed means some other event reached Sentry
    # (a log message, say), and would pass for an error with a user that Segment did not get.
    assert observed["sentry_with_user"] <= len(placed), f"Sentry received events of another kind: {observed}"
    assert observed == in_parity(observed["sentry_with_user"]), (
        f"{len(placed)} failing requests of signed-in users: Sentry received {observed['sentry_with_user']}"
        f" of them, Segment {observed['segment']}: {observed}\n{tail(log)}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("load", ["burst", "trickle", "single"])
def test_uvicorn_stopped_by_sigterm_each_error_with_a_user_reaches_segment_once(
    load: str, sink: SegmentSink, tmp_path: Path
) -> None:
    """uvicorn, SIGTERM right after the last answer: a burst of 20 concurrent requests, a trickle of 30, or a
    single one (while nothing else is being sent: an idle sender sends it at once)."""
    placed = orders({"burst": 20, "trickle": 30, "single": 1}[load])
    with uvicorn(sink, tmp_path) as server:
        guest_ids = guests_fail(server.url, sink)
        statuses = burst(server.url, placed) if load == "burst" else trickle(server.url, placed)
        exit_code = stop(server.process, signal.SIGTERM)

    assert (exit_code, statuses) == (-signal.SIGTERM, Counter({500: len(placed)})), tail(server.log)
    assert_parity(observe(sink, guest_ids, placed), placed, server.log)


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["workers-import-the-app", "preload"])
def test_gunicorn_uvicorn_workers_stopped_by_sigterm_each_error_with_a_user_reaches_segment_once(
    preload: bool, sink: SegmentSink, tmp_path: Path
) -> None:
    """gunicorn with uvicorn's worker class (two workers), a burst, then SIGTERM to the master: it stops the
    workers, each shuts down gracefully and ends by the re-raised SIGTERM, then the master exits."""
    pytest.importorskip("gunicorn")
    if importlib.util.find_spec("uvicorn_worker") is None:
        # uvicorn.workers.UvicornWorker is deprecated (a DeprecationWarning in uvicorn 0.54) in favour of this package.
        pytest.skip("uvicorn-worker is not installed (pip install uvicorn-worker)")
    placed = orders(20)
    with gunicorn(["--preload"] if preload else [], sink, tmp_path, workers=2) as server:
        guest_ids = guests_fail(server.url, sink)
        statuses = burst(server.url, placed)
        exit_code = stop(server.process, signal.SIGTERM)

    assert (exit_code, statuses) == (0, Counter({500: len(placed)})), tail(server.log)
    assert_parity(observe(sink, guest_ids, placed), placed, server.log)


@pytest.mark.slow
def test_uvicorn_stopped_with_ctrl_c_delivers_the_error_as_the_event_sentry_received(
    sink: SegmentSink, tmp_path: Path
) -> None:
    """Ctrl-C: uvicorn's re-raised SIGINT ends the process through a normal interpreter exit, whose hooks
    deliver what is queued. Also what one message holds, as the Flask example's test checks it."""
    with uvicorn(sink, tmp_path) as server:
        guest_ids = guests_fail(server.url, sink)
        cookies = session_cookie(server.url, 1001)
        assert "Hello, ada@example.com." in requests.get(server.url + "/", cookies=cookies).text
        paid = requests.post(f"{server.url}/checkout", json={"installments": 3}, cookies=cookies)
        assert (paid.status_code, paid.text) == (200, "Charged 3 x 2433 cents.\n")
        headers = {"User-Agent": USER_AGENT, "Referer": f"{server.url}/"}
        failed = requests.post(f"{server.url}/checkout?coupon=SPRING", cookies=cookies, headers=headers)
        assert failed.status_code == 500
        exit_code = stop(server.process, signal.SIGINT)

    assert exit_code is not None, tail(server.log)
    [message] = sink.wait_for_messages(1, timeout=SETTLE_TIMEOUT)
    [batch] = sink.batches
    assert batch.write_key == WRITE_KEY
    assert [event_id for event_id in sink.sentry_event_ids if event_id not in guest_ids] == [message["messageId"]]
    assert (message["type"], message["event"], message["userId"]) == ("track", "Error Captured", "1001")
    properties = message["properties"]
    assert properties["eventId"] == message["messageId"]
    assert properties["exceptionType"] == "PaymentError"  # raised from a ZeroDivisionError: the one raised
    assert properties["transaction"] == "/checkout"  # sentry-sdk's FastAPI transaction style "url"
    assert properties["level"] == "error"
    assert (properties["environment"], properties["release"]) == (ENVIRONMENT, RELEASE)
    assert properties["userAgent"] == message["context"]["userAgent"] == USER_AGENT
    assert properties["page"] == {
        "url": f"{server.url}/checkout",
        "method": "POST",
        "search": "coupon=SPRING",
        "referer": f"{server.url}/",
    }
    assert message["context"]["page"]["path"] == "/checkout"
    assert "ada@example.com" not in str(message)  # the email went to Sentry only
