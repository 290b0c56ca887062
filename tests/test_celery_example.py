"""The Celery example (examples/celery_app) as it is deployed: a real Redis broker, a real ``celery worker``
subprocess per pool, tasks queued by another process, the worker stopped with SIGTERM (a warm shutdown).

Parity: the error events with a user that Sentry's own transport delivered are the ones that reach Segment,
each once. One receiver on 127.0.0.1 plays both Sentry (the DSN) and Segment (SEGMENT_HOST).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest
from conftest import RedisServer

from sentry_segment_integration.testing import SegmentSink
from support import kill_group, sentry_dsn_for, stop_with_sigterm, tail, wait_until

REPO = Path(__file__).resolve().parent.parent
WRITE_KEY = "celery_worker_write_key"
TASK = "shop.charge_order"  # the example's task, by the name it is registered under
ORDERS = 20
GUEST_ORDERS = {3, 10, 17}  # queued without a user: their errors reach Sentry only
# Generous bounds for "did not hang", never measured against: a worker starts in a few seconds, and every
# wait below ends as soon as its condition holds.
ARRIVAL_TIMEOUT = 90.0
EXIT_TIMEOUT = 60.0

POOLS = {
    "prefork": ["--pool", "prefork", "--concurrency", "2"],
    "solo": ["--pool", "solo"],
    "threads": ["--pool", "threads", "--concurrency", "4"],
}


def need(module: str) -> None:
    """Skip without ``module``, except in CI (CI=true), where a missing test extra is a failure."""
    if os.environ.get("CI") == "true":
        importlib.import_module(module)
    else:
        pytest.importorskip(module)


def user_of(order_id: int) -> Optional[int]:
    """Each signed-in order has a user of its own, so each Segment message names the order it is for."""
    return None if order_id in GUEST_ORDERS else 5000 + order_id


def worker_environment(sink: SegmentSink, broker: RedisServer) -> Dict[str, str]:
    environment = dict(os.environ)
    for name in ("SENTRY_RELEASE", "SENTRY_ENVIRONMENT", "SENTRY_DEBUG"):
        environment.pop(name, None)
    environment.update(
        CELERY_BROKER_URL=broker.url,
        SENTRY_DSN=sentry_dsn_for(sink),
        SEGMENT_WRITE_KEY=WRITE_KEY,
        SEGMENT_HOST=sink.url,
        SENTRY_ENVIRONMENT="worker-test",
        # This checkout's package and examples, whatever is installed.
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    return environment


@contextmanager
def celery_worker(pool: List[str], environment: Dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A examples.celery_app worker`` from the repository's root, as its docstring says; killed on
    the way out if the test did not stop it."""
    command = [sys.executable, "-m", "celery", "-A", "examples.celery_app", "worker", *pool, "--loglevel", "INFO"]
    # Mingle and gossip only make a lone worker wait for peers at start; delivery does not depend on them.
    command += ["--without-mingle", "--without-gossip", "--hostname", f"shop-{pool[1]}@%h"]
    with log.open("wb") as output:
        worker = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield worker
    finally:
        kill_group(worker)


def queue_orders(broker: RedisServer) -> None:
    """What the shop's web process does: queue the payments through the broker, with no worker code imported."""
    from celery import Celery

    producer = Celery("shop-web", broker=broker.url)
    try:
        for order_id in range(ORDERS):
            producer.send_task(TASK, kwargs={"order_id": order_id, "user_id": user_of(order_id)})
    finally:
        producer.close()


@pytest.mark.slow
@pytest.mark.parametrize("pool", list(POOLS))
def test_each_failed_task_of_a_user_reaches_segment_once_as_the_event_sentry_received(
    pool: str, redis_server: Callable[..., RedisServer], sink: SegmentSink, tmp_path: Path
) -> None:
    need("celery")
    need("redis")
    broker = redis_server()
    log = tmp_path / "worker.log"
    with celery_worker(POOLS[pool], worker_environment(sink, broker), log) as worker:
        queue_orders(broker)
        wait_until(lambda: len(sink.sentry_event_ids) >= ORDERS, ARRIVAL_TIMEOUT, lambda: worker.poll() is None)
        exit_code = stop_with_sigterm(worker, EXIT_TIMEOUT)

    sentry_ids = sink.sentry_event_ids
    messages = sink.messages
    segment_ids = [message["messageId"] for message in messages]
    signed_in = [order_id for order_id in range(ORDERS) if user_of(order_id) is not None]
    arrived = {
        "sentry": len(sentry_ids),
        "sentry_duplicates": len(sentry_ids) - len(set(sentry_ids)),
        "segment": len(segment_ids),
        "segment_duplicates": len(segment_ids) - len(set(segment_ids)),
        "in_segment_not_in_sentry": len(set(segment_ids) - set(sentry_ids)),
    }
    expected = dict.fromkeys(arrived, 0)
    expected.update(sentry=ORDERS, segment=len(signed_in))
    assert exit_code is not None, f"the worker did not exit within {EXIT_TIMEOUT} s of SIGTERM\n{tail(log)}"
    assert arrived == expected, tail(log)
    assert exit_code == 0, tail(log)
    # One message per signed-in order, for that order's user: none lost, none for a guest's error.
    assert sorted(message["userId"] for message in messages) == sorted(str(user_of(i)) for i in signed_in)
    assert {message["event"] for message in messages} == {"Error Captured"}
    assert {message["properties"]["exceptionType"] for message in messages} == {"PaymentError"}
    assert {batch.write_key for batch in sink.batches} == {WRITE_KEY}
