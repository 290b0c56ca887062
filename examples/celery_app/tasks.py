"""A Celery worker: Sentry plus CeleryIntegration and SegmentIntegration, configured from the environment.

Start a Redis server, then a worker, from the repository's root:

    export CELERY_BROKER_URL=redis://127.0.0.1:6379/0
    export SENTRY_DSN=https://<key>@o123.ingest.sentry.io/456 SEGMENT_WRITE_KEY=<write key>
    celery -A examples.celery_app worker --loglevel INFO

(any pool: the default ``--pool prefork``, ``--pool threads`` or ``--pool solo``; stop it with Ctrl-C or
SIGTERM, Celery's warm shutdown, and what it still holds for Segment is sent before it exits). Then, from
any process with the same broker, queue a payment that fails (the same bug as the shops': no installments):

    python -c 'from examples.celery_app.tasks import charge_order; charge_order.delay(order_id=7, user_id=1001)'

Sentry gets the task's error with user 1001 on it, and Segment an "Error Captured" track call for userId
"1001". Without ``user_id`` (a guest's order) the error reaches Sentry only: it has no user id.

Environment: CELERY_BROKER_URL (default redis://127.0.0.1:6379/0), SENTRY_DSN, SEGMENT_WRITE_KEY (required
by SegmentIntegration), SEGMENT_HOST (optional: another Segment endpoint such as the EU region or a local
receiver), SENTRY_ENVIRONMENT, SENTRY_RELEASE.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Tuple

import sentry_sdk
from celery import Celery, signals
from sentry_sdk.integrations.celery import CeleryIntegration

from sentry_segment_integration import SegmentIntegration

CART: List[Tuple[str, int, int]] = [("notebook", 1250, 2), ("fountain pen", 4800, 1)]  # item, cents, quantity

app = Celery("shop", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))


class PaymentError(Exception):
    """The payment could not be set up."""


@signals.celeryd_init.connect
def init_sentry(**_kwargs: Any) -> None:
    # Once, in the worker's main process, before its pool starts: prefork children inherit it.
    sentry_sdk.init(
        dsn=os.environ.get("SENTRY_DSN"),
        environment=os.environ.get("SENTRY_ENVIRONMENT"),
        release=os.environ.get("SENTRY_RELEASE"),
        # SegmentIntegration() reads SEGMENT_WRITE_KEY and, when set, SEGMENT_HOST.
        integrations=[CeleryIntegration(), SegmentIntegration()],
    )


@app.task(name="shop.charge_order")
def charge_order(order_id: int, user_id: Optional[int] = None, installments: int = 0) -> str:
    if user_id is not None:
        # What makes this task's error a Segment event: the user's id on Sentry's scope. CeleryIntegration
        # gives each task a scope of its own, so the user does not stay on for the worker's next task.
        sentry_sdk.set_user({"id": user_id})
    total = sum(cents * quantity for _, cents, quantity in CART)
    try:
        per_installment = total // installments  # the bug: the caller left installments out, so 0
    except ZeroDivisionError as error:
        raise PaymentError(f"order {order_id}: cannot split {total} cents into {installments} installments") from error
    return f"Charged {installments} x {per_installment} cents for order {order_id}."
