"""Delivery in the shapes applications really run in: serverless invocations, re-initialised SDKs,
closed clients, asyncio, signal handlers, forks, and a Segment endpoint that redirects, dribbles or fails.

End to end: real sentry-sdk clients, a real Segment-compatible receiver on 127.0.0.1, subprocesses
where the shape is a process's life (exit, os._exit, signals, fork). Parity is counted against what
Sentry received. Bounds are "did not hang" bounds (a subprocess overrunning one is killed and the test
fails), never speeds: the machines are shared and noisy.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import pytest
import sentry_sdk

from sentry_segment_integration.testing import SegmentSink
from support import (
    SDK_MAJOR,
    RecordingTransport,
    current_client,
    error_as_user,
    flush_until_failed,
    make_integration,
    sentry_dsn_for,
    wait_until,
)

# A "did not hang" allowance on top of a configured timeout: far longer than any honest wait here.
SLACK = 10.0
# The longest any subprocess of these tests may live before it counts as hung (it is killed).
PROCESS_BUDGET = 90.0
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
OUR_LOGGER = "sentry_segment_integration"

InitSentry = Callable[..., RecordingTransport]


# ----------------------------------------------------------------------------------------------
# helpers


def run_python(script: str, config: Dict[str, Any], budget: float = PROCESS_BUDGET) -> Dict[str, Any]:
    """Run ``script`` with ``config`` (JSON, as argv[1]) in a fresh interpreter that can import
    ``support``; return the JSON object it printed last. Overrunning ``budget`` is a hang: killed, failed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(part for part in (TESTS_DIR, env.get("PYTHONPATH")) if part)
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        stdout, stderr = process.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"the process hung (killed after {budget:.0f} s); stderr ends:\n{stderr[-4000:]}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        hung = "Timeout (" in stderr  # faulthandler.dump_traceback_later: stuck, every thread's stack shown
        what = "hung (its stacks were dumped)" if hung else f"ended with status {process.returncode}"
        pytest.fail(f"the process {what}; stderr ends:\n{stderr[-4000:]}")
    result: Dict[str, Any] = json.loads(lines[-1])
    result["stderr"] = stderr
    return result


def message_ids(source: Union[SegmentSink, List[Dict[str, Any]]]) -> List[str]:
    messages = source.messages if isinstance(source, SegmentSink) else source
    return [str(message["messageId"]) for message in messages]


def records_of(caplog: pytest.LogCaptureFixture, logger: str, level: int) -> List[logging.LogRecord]:
    """Records of ``logger`` or its children at exactly ``level``."""
    return [
        record
        for record in caplog.records
        if (record.name == logger or record.name.startswith(logger + ".")) and record.levelno == level
    ]


def warnings_from_us(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [record for record in caplog.records if record.name == OUR_LOGGER and record.levelno >= logging.WARNING]


def fork_quietly() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: what pre-fork servers do
        return os.fork()


def segment_paths_redirect(sink: SegmentSink, status: int, location: str, times: int) -> None:
    """Answer the next ``times`` Segment requests with a redirect to ``location``."""
    redirect_next = getattr(sink, "redirect_next", None)
    if redirect_next is not None:
        redirect_next(status, location, times=times)
    else:
        sink.answer_next(status, times=times, headers={"Location": location})


def gets_at(sink: SegmentSink) -> Optional[int]:
    """GET requests the sink saw on Segment's paths, when it counts them (``SegmentSink.get_requests``)."""
    value = getattr(sink, "get_requests", None)
    return None if value is None else int(value() if callable(value) else value)


# ----------------------------------------------------------------------------------------------
# 1. AWS Lambda: AwsLambdaIntegration flushes the client at the end of every invocation

LAMBDA_SCRIPT = """
import json, os, sys, time, types
import sentry_sdk
from sentry_sdk.integrations.aws_lambda import AwsLambdaIntegration
from sentry_segment_integration import SegmentIntegration

config = json.loads(sys.argv[1])


class LambdaRuntimeClient:
    # The runtime's client of the Lambda API, in the shape awslambdaric's bootstrap has:
    # AwsLambdaIntegration wraps these posts to flush the Sentry client before each one.
    def __init__(self):
        self.posted = []

    def post_init_error(self, error_response_data, error_type=None):
        self.posted.append("init_error")

    def post_invocation_result(self, invoke_id, result_data, content_type="application/json"):
        self.posted.append("result")

    def post_invocation_error(self, invoke_id, error_response_data, xray_fault=None):
        self.posted.append("error")


def handle_event_request(lambda_runtime_client, request_handler, invoke_id, event_body, context):
    # As the bootstrap does: run the handler, then post its result or its error.
    try:
        result = request_handler(event_body, context)
    except Exception as error:
        lambda_runtime_client.post_invocation_error(invoke_id, repr(error))
    else:
        lambda_runtime_client.post_invocation_result(invoke_id, json.dumps(result))


bootstrap = types.ModuleType("bootstrap")
bootstrap.LambdaRuntimeClient = LambdaRuntimeClient
bootstrap.handle_event_request = handle_event_request
sys.modules["bootstrap"] = bootstrap  # where AwsLambdaIntegration.setup_once looks for the runtime


class Context:
    function_name = "checkout"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:checkout"
    log_group_name = "/aws/lambda/checkout"
    log_stream_name = "2026/12/01/[$LATEST]0123456789abcdef"

    def __init__(self, request_id):
        self.aws_request_id = request_id

    def get_remaining_time_in_millis(self):
        return 300000


def handler(event, context):
    sentry_sdk.set_user({"id": event["user"]})
    if event["fail"]:
        raise RuntimeError("checkout failed")
    return {"statusCode": 200}


integration = SegmentIntegration(
    write_key="lambda_key", host=config["segment_host"], rate_limit=None, organization=config["organization"]
)
sentry_sdk.init(
    dsn=config["sentry_dsn"],
    integrations=[AwsLambdaIntegration(), integration],
    default_integrations=False,
    shutdown_timeout=config["shutdown_timeout"],
)
patched = bootstrap.handle_event_request is not handle_event_request
runtime = LambdaRuntimeClient()
elapsed = []
for n, fail in enumerate(config["fails"]):
    started = time.monotonic()
    bootstrap.handle_event_request(
        runtime, handler, "invoke-%d" % n, {"user": "%s-%d" % (config["prefix"], n), "fail": fail}, Context("r%d" % n)
    )
    elapsed.append(time.monotonic() - started)
    if elapsed[-1] > config["give_up_after"]:
        break  # this invocation waited on Segment: the test fails on it, the rest would only wait too
print(json.dumps({"patched": patched, "posted": runtime.posted, "elapsed": elapsed, "stats": integration.stats()}))
sys.stdout.flush()
os._exit(0)  # Lambda freezes, then ends, the process: nothing runs at exit
"""


@pytest.mark.slow
def test_lambda_invocations_forward_every_error_and_segment_down_costs_no_flush_wait(
    sink: SegmentSink, closed_port: int
) -> None:
    shutdown_timeout = 20.0
    config: Dict[str, Any] = {
        "sentry_dsn": sentry_dsn_for(sink),
        "shutdown_timeout": shutdown_timeout,
        "give_up_after": shutdown_timeout / 2,
        "organization": f"lambda-{uuid.uuid4().hex}",
    }
    up = run_python(LAMBDA_SCRIPT, {**config, "segment_host": sink.url, "fails": [True] * 10, "prefix": "up"})
    assert up["patched"], "AwsLambdaIntegration did not wrap the runtime's handle_event_request"
    assert up["posted"] == ["error"] * 10
    sentry_ids = list(sink.sentry_event_ids)
    assert len(sentry_ids) == 10
    sink.wait_for_messages(10, timeout=5)  # already there if each invocation's flush delivered it
    assert sorted(message_ids(sink)) == sorted(sentry_ids)

    # Segment refuses connections; Sentry is up. Errors and error-free invocations alternate.
    fails = [True, False] * 5
    down = run_python(
        LAMBDA_SCRIPT, {**config, "segment_host": f"http://127.0.0.1:{closed_port}", "fails": fails, "prefix": "down"}
    )
    slow = [round(seconds, 2) for seconds in down["elapsed"] if seconds >= shutdown_timeout / 2]
    ratio = sum(down["elapsed"]) / max(sum(up["elapsed"]), 1e-6) * len(up["elapsed"]) / len(down["elapsed"])
    assert slow == [], (
        f"{len(slow)} invocation(s) with Segment down waited for Segment in the flush: {slow} s "
        f"(shutdown_timeout {shutdown_timeout} s; down/up mean time ratio {ratio:.0f}; "
        f"{len(down['elapsed'])} of {len(fails)} invocations run)"
    )
    assert len(down["elapsed"]) == len(fails)
    assert len(sink.sentry_event_ids) == 10 + fails.count(True)  # Sentry's own delivery is untouched
    assert down["stats"]["forwarded"] == fails.count(True)


# ----------------------------------------------------------------------------------------------
# 2. a replaced client's queue: delivered at exit and by the next flush

REINIT_SCRIPT = """
import json, os, sys
import sentry_sdk
from sentry_segment_integration import SegmentIntegration
from support import DSN, RecordingTransport, error_as_user

config = json.loads(sys.argv[1])
options = {"dsn": DSN, "shutdown_timeout": config["shutdown_timeout"]}
first = SegmentIntegration(write_key="reinit_key", host=config["segment_host"], rate_limit=None, timeout=10)
sentry = RecordingTransport()
sentry_sdk.init(transport=sentry, integrations=[first], **options)
for n in range(50):
    error_as_user({"id": "reinit-user-%d" % n})
sent_to_sentry = sentry.event_ids
del sentry  # the application keeps no reference to the replaced client or its transport

if config["second_init"] == "new-integration":
    second = SegmentIntegration(write_key="reinit_key", host=config["segment_host"], rate_limit=None)
    sentry_sdk.init(transport=RecordingTransport(), integrations=[second], **options)
elif config["second_init"] == "no-integration":
    sentry_sdk.init(transport=RecordingTransport(), **options)
else:
    sentry_sdk.init()
print(json.dumps({"event_ids": sent_to_sentry}))
sys.stdout.flush()
if config["ending"] == "flush":
    sentry_sdk.flush(config["shutdown_timeout"])
    os._exit(0)
# otherwise the interpreter's exit must deliver what the replaced client queued
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("second_init", "ending"),
    [
        ("new-integration", "exit"),
        ("no-integration", "exit"),
        ("empty-init", "exit"),
        ("new-integration", "flush"),
        ("no-integration", "flush"),
    ],
)
def test_replaced_clients_queue_is_delivered_at_exit_and_by_the_next_flush(
    sink: SegmentSink, second_init: str, ending: str
) -> None:
    shutdown_timeout = 5.0
    sink.delay_next(0.5)  # the first request is still in flight when the client is replaced
    started = time.monotonic()
    result = run_python(
        REINIT_SCRIPT,
        {"segment_host": sink.url, "shutdown_timeout": shutdown_timeout, "second_init": second_init, "ending": ending},
    )
    elapsed = time.monotonic() - started
    assert len(result["event_ids"]) == 50
    arrived = set(message_ids(sink.wait_for_messages(50, timeout=3)))  # a request in flight at exit lands
    missing = set(result["event_ids"]) - arrived
    assert not missing, f"{50 - len(missing)} of 50 arrived"
    assert elapsed < shutdown_timeout + SLACK


# ----------------------------------------------------------------------------------------------
# 3. close() with Segment slow: what close could not send is given up, counted, logged once


@pytest.mark.slow
def test_close_with_segment_slow_counts_what_it_gives_up_and_warns_once(
    init_sentry: InitSentry, sink: SegmentSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=OUR_LOGGER)
    sink.delay_next(2.0, times=100)  # every request takes 2 s to be accepted
    integration = make_integration(sink, rate_limit=None, timeout=15.0)
    sentry = init_sentry(integration)
    error_as_user({"id": "close-0"})
    assert wait_until(lambda: sink.requests >= 1, timeout=SLACK), "the first message was never sent"
    for n in range(1, 10):  # queued behind the request in flight
        error_as_user({"id": f"close-{n}"})
    close_timeout = 0.5
    started = time.monotonic()
    current_client().close(timeout=close_timeout)
    assert time.monotonic() - started < close_timeout + SLACK

    def accounted() -> int:
        return len(set(message_ids(sink))) + integration.stats()["delivery_failed"]

    wait_until(lambda: accounted() >= 10, timeout=SLACK)  # the request in flight lands within 2 s
    stats = integration.stats()
    arrived = len(set(message_ids(sink)))
    assert len(sentry.events) == stats["forwarded"] == 10
    assert arrived + stats["delivery_failed"] >= 10, (
        f"{arrived} arrived and {stats['delivery_failed']} counted as delivery_failed, of 10 forwarded"
    )
    assert 1 <= stats["delivery_failed"] <= 10
    assert len(warnings_from_us(caplog)) == 1, [record.getMessage() for record in warnings_from_us(caplog)]


# ----------------------------------------------------------------------------------------------
# 4. sentry-sdk's async transport: await flush_async() flushes Segment too, without blocking the loop

ASYNC_SCRIPT = """
import asyncio, json, os, sys, time
import sentry_sdk
from sentry_sdk.integrations.asyncio import AsyncioIntegration
from sentry_segment_integration import SegmentIntegration
from support import error_as_user

config = json.loads(sys.argv[1])
TICK = 0.01


async def main():
    integration = SegmentIntegration(
        write_key="async_key", host=config["segment_host"], rate_limit=None, organization=config["organization"]
    )
    sentry_sdk.init(
        dsn=config["sentry_dsn"],
        integrations=[AsyncioIntegration(), integration],
        default_integrations=False,
        _experiments={"transport_async": True},
    )
    transport = type(sentry_sdk.get_client().transport).__name__
    ticks = []

    async def tick():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(TICK)

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0.05)
    for n in range(config["count"]):
        error_as_user({"id": "async-user-%d" % n})
    started = time.monotonic()
    await sentry_sdk.flush_async(timeout=config["flush_timeout"])
    ended = time.monotonic()
    ticker.cancel()
    edges = [started] + [moment for moment in ticks if started < moment < ended] + [ended]
    print(json.dumps({
        "transport": transport,
        "flush_seconds": ended - started,
        "longest_gap": max(later - earlier for earlier, later in zip(edges, edges[1:])),
        "ticks_during_flush": len(edges) - 2,
        "stats": integration.stats(),
    }))
    sys.stdout.flush()
    os._exit(0)  # the process ends right after the flush: nothing runs at exit


asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.skipif(SDK_MAJOR < 2, reason="sentry-sdk 1.x has no async transport and no flush_async")
def test_async_transport_flush_async_delivers_segment_without_blocking_the_loop(sink: SegmentSink) -> None:
    pytest.importorskip("httpcore")
    pytest.importorskip("anyio")
    segment_delay = 1.0
    sink.delay_next(segment_delay)  # the Segment request is in flight while flush_async is awaited
    result = run_python(
        ASYNC_SCRIPT,
        {
            "segment_host": sink.url,
            "sentry_dsn": sentry_dsn_for(sink),
            "organization": f"async-{uuid.uuid4().hex}",
            "count": 20,
            "flush_timeout": 10,
        },
    )
    assert result["transport"] == "AsyncHttpTransport"
    sentry_ids = set(sink.sentry_event_ids)
    assert len(sentry_ids) == 20
    arrived = set(message_ids(sink.wait_for_messages(20, timeout=3)))
    assert sentry_ids <= arrived, (
        f"{len(sentry_ids & arrived)} of 20 arrived (flush_async took {result['flush_seconds']:.2f} s)"
    )
    # Not blocked: while flush_async waited for Segment, the loop kept running other tasks.
    if result["flush_seconds"] >= segment_delay / 2:
        assert result["longest_gap"] < result["flush_seconds"] / 2, result


# ----------------------------------------------------------------------------------------------
# 5. a signal handler that flushes can never deadlock, wherever the signal lands

SIGNAL_SCRIPT = """
import faulthandler, json, os, signal, sys, time
import sentry_sdk
from sentry_segment_integration import SegmentIntegration
from support import DSN, RecordingTransport, error_as_user

config = json.loads(sys.argv[1])
faulthandler.dump_traceback_later(config["dump_after"], exit=True)  # a deadlock says where it is stuck
integration = SegmentIntegration(
    write_key="signal_key", host=config["segment_host"], rate_limit=None, organization=config["organization"]
)
sentry = RecordingTransport(keep=False)
sentry_sdk.init(dsn=DSN, transport=sentry, integrations=[integration], default_integrations=False)
state = {"flushes": 0, "inside": False}


def report(**extra):
    print(json.dumps(dict(captured=sentry.count, flushes=state["flushes"], stats=integration.stats(), **extra)))
    sys.stdout.flush()


def flush_on_alarm(signum, frame):
    if state["inside"]:  # a signal landing in this handler's own flush: once is enough
        return
    state["inside"] = True
    try:
        sentry_sdk.flush(2)
        state["flushes"] += 1
    finally:
        state["inside"] = False


def flush_and_exit_on_term(signum, frame):
    if state["inside"]:  # the parent keeps signalling: one landing in this handler's own flush returns
        return
    state["inside"] = True
    sentry_sdk.flush(2)
    state["flushes"] += 1
    report(reason="sigterm")
    # Not sys.exit(): the SystemExit would be raised wherever the signal landed, and sentry-sdk's
    # capture_internal_exceptions() swallows it when that is inside a capture.
    os._exit(0)


if config["mode"] == "alarm":
    signal.signal(signal.SIGALRM, flush_on_alarm)
    signal.setitimer(signal.ITIMER_REAL, config["interval"], config["interval"])
    for n in range(config["count"]):
        error_as_user({"id": "signal-user-%d" % n})
    signal.setitimer(signal.ITIMER_REAL, 0)
    sentry_sdk.flush(10)
    report(reason="done")
else:
    signal.signal(signal.SIGTERM, flush_and_exit_on_term)
    print("ready", flush=True)
    n = 0
    while True:  # a tight loop of captures until SIGTERM
        error_as_user({"id": "signal-user-%d" % n})
        n += 1
"""


@pytest.mark.slow
def test_sigalrm_handler_flushing_during_thousands_of_captures_never_deadlocks(sink: SegmentSink) -> None:
    result = run_python(
        SIGNAL_SCRIPT,
        {
            "mode": "alarm",
            "segment_host": sink.url,
            "organization": f"signal-{uuid.uuid4().hex}",
            "interval": 0.002,
            "count": 3000,
            "dump_after": 40,
        },
        budget=60,
    )
    assert result["captured"] == 3000
    assert result["flushes"] > 0, "no alarm landed: the test proved nothing"
    assert result["stats"]["forwarded"] == 3000
    assert result["stats"]["internal_error"] == 0
    assert len(set(message_ids(sink.wait_for_messages(3000, timeout=SLACK)))) == 3000


def terminate_while_capturing(env: Dict[str, str], config: Dict[str, Any], wait_before: float) -> Tuple[int, str, str]:
    """Start a child capturing in a tight loop, SIGTERM it after ``wait_before`` s and every 10 ms from
    then on until it ends; its (exit status, stdout, stderr). A child that outlives the budget is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SIGNAL_SCRIPT), json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline().strip() == "ready"
        time.sleep(wait_before)
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            process.send_signal(signal.SIGTERM)
            time.sleep(0.01)
        if process.poll() is None:
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(f"the process did not end within 30 s of SIGTERM (a deadlock); stderr ends:\n{stderr[-4000:]}")
        stdout, stderr = process.communicate()
        return process.returncode, stdout, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.slow
def test_sigterm_handler_that_flushes_and_exits_never_deadlocks(sink: SegmentSink) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(part for part in (TESTS_DIR, env.get("PYTHONPATH")) if part)
    config = {
        "mode": "term",
        "segment_host": sink.url,
        "organization": f"signal-{uuid.uuid4().hex}",
        "dump_after": 25,
    }
    randomness = random.Random(20261201)
    for attempt in range(8):
        status, stdout, stderr = terminate_while_capturing(env, config, randomness.uniform(0.05, 0.4))
        assert status == 0, f"attempt {attempt}: exit status {status}; stderr ends:\n{stderr[-4000:]}"
        report = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
        assert report["reason"] == "sigterm"
        assert report["stats"]["internal_error"] == 0


# ----------------------------------------------------------------------------------------------
# 6. a fork while the shared limiter starts (its thread imports limits and connects) forwards

FORK_LIMITER_SCRIPT = """
import faulthandler, json, os, signal, sys, time, warnings
import sentry_sdk
from sentry_segment_integration import SegmentIntegration
from support import DSN, RecordingTransport, error_as_user

config = json.loads(sys.argv[1])
integration = SegmentIntegration(
    write_key="fork_key",
    host=config["segment_host"],
    rate_limit=1000,
    rate_limit_storage=config["redis_url"],
    organization=config["organization"],
    upload_interval=0.05,
)
sentry_sdk.init(dsn=DSN, transport=RecordingTransport(), integrations=[integration], default_integrations=False)
error_as_user({"id": "fork-parent"})  # starts the shared limiter: its thread imports limits and connects
if config["delay"]:
    time.sleep(config["delay"])
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later(config["child_budget"], exit=True)
    code = 1
    try:
        before = integration.stats()
        for n in range(3):
            error_as_user({"id": "fork-child-%d" % n})
        sentry_sdk.flush(config["flush_timeout"])
        after = integration.stats()
        forwarded = after["forwarded"] - before["forwarded"]
        failed = after["delivery_failed"] - before["delivery_failed"]
        code = 0 if forwarded == 3 and failed == 0 else 3
    finally:
        os._exit(code)
deadline = time.monotonic() + config["child_budget"] + 10
status = None
while time.monotonic() < deadline:
    done, raw = os.waitpid(pid, os.WNOHANG)
    if done:
        status = os.waitstatus_to_exitcode(raw)
        break
    time.sleep(0.02)
else:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
sentry_sdk.flush(10)
print(json.dumps({"child": "hung" if status is None else status, "stats": integration.stats()}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15])
def test_fork_during_shared_limiter_start_leaves_a_child_that_forwards(
    sink: SegmentSink, redis_server: Callable[..., Any], delay: float
) -> None:
    redis = redis_server()
    result = run_python(
        FORK_LIMITER_SCRIPT,
        {
            "segment_host": sink.url,
            "redis_url": redis.url,
            "organization": f"fork-{uuid.uuid4().hex}",
            "delay": delay,
            "flush_timeout": 10,
            "child_budget": 20,
        },
    )
    codes = {0: "forwarded", 1: "raised", 3: "flushed without forwarding (or delivery failed)"}
    child = result["child"]
    assert child == 0, f"child: {codes.get(child, child)}; stderr ends:\n{result['stderr'][-4000:]}"
    user_ids = {str(message["userId"]) for message in sink.wait_for_messages(4, timeout=5)}
    assert user_ids >= {"fork-parent", "fork-child-0", "fork-child-1", "fork-child-2"}, sorted(user_ids)


# ----------------------------------------------------------------------------------------------
# 7. no redirect is followed: a 3xx is a failed delivery


@pytest.fixture
def other_sink() -> Iterator[SegmentSink]:
    """Another host, where a followed redirect would land."""
    with SegmentSink() as server:
        yield server


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_never_followed_and_counts_as_failed(
    init_sentry: InitSentry,
    sink: SegmentSink,
    other_sink: SegmentSink,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    caplog.set_level(logging.WARNING, logger=OUR_LOGGER)
    segment_paths_redirect(sink, status, other_sink.url + "/v1/batch", times=100)
    integration = make_integration(sink, rate_limit=None, max_retries=2)
    init_sentry(integration)
    for n in range(3):  # one failed batch after another: the kind is logged once
        error_as_user({"id": f"redirected-{n}"})
        flush_until_failed(integration, n + 1)

    followed = {
        "posts_at_other_host": other_sink.requests,
        "messages_at_other_host": len(other_sink.messages),
        "gets_at_other_host": gets_at(other_sink),
        "gets_at_segment_host": gets_at(sink),
        "delivery_failed": integration.stats()["delivery_failed"],
    }
    assert other_sink.messages == [] and other_sink.requests == 0, f"the {status} was followed with a POST: {followed}"
    assert followed["gets_at_other_host"] in (None, 0), f"the {status} was turned into a GET: {followed}"
    assert followed["gets_at_segment_host"] in (None, 0), f"the {status} was turned into a GET: {followed}"
    assert integration.stats()["delivery_failed"] == 3, followed
    assert sink.messages == []
    logged = [record.getMessage() for record in warnings_from_us(caplog)]
    assert len(logged) == 1, logged
    assert str(status) in logged[0], logged
    assert all(record.levelno == logging.WARNING for record in warnings_from_us(caplog))

    sink.clear_answers()  # Segment answers again: later batches are delivered as usual
    event_id = error_as_user({"id": "after-redirects"})
    sentry_sdk.flush(5)
    assert event_id in message_ids(sink.wait_for_messages(1, timeout=SLACK))


# ----------------------------------------------------------------------------------------------
# 8. the request timeout bounds the whole request, also against an answer dribbled byte by byte


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(SegmentSink, "dribble_next"), reason="this SegmentSink cannot dribble an answer")
def test_dribbled_answer_is_cut_at_the_timeout_and_later_messages_arrive(
    init_sentry: InitSentry, sink: SegmentSink
) -> None:
    # A 200 whose body comes one byte every 0.2 s and never ends: no single read waits for `timeout`.
    sink.dribble_next(0.2, times=1)
    timeout, max_retries = 1.0, 2
    integration = make_integration(sink, rate_limit=None, timeout=timeout, max_retries=max_retries)
    init_sentry(integration)
    first = str(error_as_user({"id": "dribbled"}))
    assert wait_until(lambda: sink.requests >= 1, timeout=SLACK), "the first batch was never sent"
    later = {str(error_as_user({"id": f"later-{n}"})) for n in range(3)}

    flush_timeout = 5.0
    started = time.monotonic()
    sentry_sdk.flush(flush_timeout)
    assert time.monotonic() - started < flush_timeout + SLACK

    # Uncut, the dribbled answer holds the request (and what is queued behind it) until the sink stops.
    bound = timeout * (max_retries + 1) + SLACK
    wait_until(lambda: later <= set(message_ids(sink)), timeout=bound)
    arrived = set(message_ids(sink))
    assert later <= arrived, f"{len(later & arrived)} of 3 later messages arrived within {bound:.0f} s"
    # The dribbled batch: delivered by a retry (the sink no longer dribbles), or given up and counted.
    wait_until(lambda: first in message_ids(sink) or integration.stats()["delivery_failed"] >= 1, timeout=bound)
    assert first in message_ids(sink) or integration.stats()["delivery_failed"] >= 1


# ----------------------------------------------------------------------------------------------
# 9. stats() counts per process


@pytest.mark.slow
def test_forked_child_stats_start_at_zero(init_sentry: InitSentry, sink: SegmentSink) -> None:
    integration = make_integration(sink)
    init_sentry(integration)
    for n in range(3):
        error_as_user({"id": f"parent-{n}"})
    error_as_user(None)  # a skip, counted too
    sentry_sdk.flush(10)
    sink.wait_for_messages(3)
    parent_before = integration.stats()
    assert parent_before["forwarded"] == 3
    assert parent_before["skipped_no_user"] == 1

    reading, writing = os.pipe()
    pid = fork_quietly()
    if pid == 0:  # pragma: no cover - the child process
        code = 1
        try:
            os.close(reading)
            at_start = integration.stats()
            error_as_user({"id": "child"})
            sentry_sdk.flush(10)
            os.write(writing, json.dumps({"at_start": at_start, "after_one": integration.stats()}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        child = json.loads(pipe.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child["at_start"] == dict.fromkeys(parent_before, 0), child["at_start"]
    assert child["after_one"]["forwarded"] == 1
    assert integration.stats() == parent_before  # the child's counts are its own
    assert "child" in {message["userId"] for message in sink.wait_for_messages(4)}


# ----------------------------------------------------------------------------------------------
# 10. the Segment library's own per-batch ERROR lines stay out of the application's logs


@pytest.mark.parametrize("status", [500, 400])
def test_segment_library_error_lines_stay_out_and_we_warn_once_per_kind(
    init_sentry: InitSentry, sink: SegmentSink, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    sink.answer_next(status, times=1000)
    integration = make_integration(sink, rate_limit=None, max_retries=1)
    init_sentry(integration)
    caplog.set_level(logging.DEBUG)  # an application that logs everything, every logger at DEBUG
    for n in range(3):  # three failed batches, one after another
        error_as_user({"id": f"failing-{n}"})
        flush_until_failed(integration, n + 1)
    assert integration.stats()["delivery_failed"] == 3

    library_lines = [
        f"{record.levelname} {record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.name.split(".")[0] in ("segment", "backoff") and record.levelno >= logging.ERROR
    ]
    assert library_lines == []
    ours = warnings_from_us(caplog)
    assert len(ours) == 1, [record.getMessage() for record in ours]
    assert ours[0].levelno == logging.WARNING
    assert str(status) in ours[0].getMessage()
    assert len(records_of(caplog, OUR_LOGGER, logging.DEBUG)) >= 2  # the later failures: at DEBUG
