"""The ``properties`` hook's hint: there for every forwarded event, kept for no event longer than its capture."""

from __future__ import annotations

import gc
import weakref
from typing import Any, List, Mapping

import pytest
import sentry_sdk

from sentry_segment_integration.testing import SegmentSink
from support import error_as_user, make_integration


class Cart:
    """A big local of the failing code, as a request body or a dataframe would be."""

    def __init__(self) -> None:
        self.lines = [f"line {n}" for n in range(10_000)]


@pytest.mark.slow
def test_every_forwarded_event_gets_its_hint_on_the_shared_limiters_path(
    init_sentry, sink: SegmentSink, redis_server
) -> None:
    hints: List[Mapping[str, Any]] = []

    def hook(event: Mapping[str, Any], hint: Mapping[str, Any]) -> Mapping[str, Any]:
        hints.append(hint)
        return {"raised": type(hint["exc_info"][1]).__name__ if hint.get("exc_info") else ""}

    server = redis_server()
    integration = make_integration(sink, rate_limit=200, rate_limit_storage=server.url, properties=hook)
    init_sentry(integration)
    for n in range(600):
        error_as_user({"id": f"user-{n}"})
    sentry_sdk.flush(10)

    forwarded = integration.stats()["forwarded"]
    assert forwarded >= 200
    assert len(hints) == forwarded
    assert all(hint.get("exc_info") for hint in hints)
    assert {message["properties"]["raised"] for message in sink.wait_for_messages(forwarded)} == {"RuntimeError"}


def fail_with(cart: Cart, user: Any) -> None:
    with sentry_sdk.push_scope() if not hasattr(sentry_sdk, "new_scope") else sentry_sdk.new_scope() as scope:
        if user is not None:
            scope.set_user(user)
        try:
            raise ValueError(len(cart.lines))
        except ValueError:
            sentry_sdk.capture_exception()


def test_no_hint_keeps_the_failing_codes_locals_alive(init_sentry, sink: SegmentSink) -> None:
    integration = make_integration(sink, properties=lambda event, hint: {"kept": bool(hint)})
    init_sentry(integration)
    carts = []
    for user in (None, {"id": "signed-in"}, None):  # not forwarded, forwarded, not forwarded
        cart = Cart()
        carts.append(weakref.ref(cart))
        fail_with(cart, user)
        del cart
    sentry_sdk.flush(5)
    gc.collect()

    assert [ref() for ref in carts] == [None, None, None]
    assert [message["properties"]["kept"] for message in sink.wait_for_messages(1)] == [True]
    assert integration.stats()["skipped_no_user"] == 2
