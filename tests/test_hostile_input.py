"""Property-based: whatever a before_send leaves in an event, capturing never raises, the Sentry
event goes on unchanged, and whatever is forwarded is a valid Segment message under 32 KB."""

from __future__ import annotations

import copy
import json
from typing import Any, Dict, List

import pytest
import sentry_sdk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentry_segment_integration import SegmentIntegration
from sentry_segment_integration.testing import SegmentSink
from support import DSN, RecordingTransport, error_as_user

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    # Huge strings, of one character repeated: Segment's 32 KB limit must still hold.
    st.builds(lambda text, times: text * times, st.text(min_size=1, max_size=3), st.integers(8_000, 30_000)),
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
# Each field the payload reads, with either a plausible or an arbitrary value.
field_values = {
    "user": st.one_of(
        json_value, st.fixed_dictionaries({"id": json_value}, optional={"ip_address": json_value, "email": json_value})
    ),
    "exception": st.one_of(
        json_value,
        st.fixed_dictionaries({"values": st.lists(st.dictionaries(st.sampled_from(["type", "value"]), json_value))}),
    ),
    "request": st.one_of(
        json_value,
        st.fixed_dictionaries(
            {},
            optional={
                "url": json_value,
                "method": json_value,
                "query_string": json_value,
                "headers": st.one_of(
                    json_value,
                    st.dictionaries(st.sampled_from(["User-Agent", "referer", "X-Other"]), json_value),
                    st.lists(st.lists(json_value, min_size=0, max_size=3)),
                ),
            },
        ),
    ),
    "timestamp": json_value,
    "environment": json_value,
    "release": json_value,
    "transaction": json_value,
    "level": json_value,
    "type": st.one_of(st.none(), st.just(""), json_value),
}
odd_events = st.fixed_dictionaries({}, optional=field_values)


@pytest.fixture(scope="module")
def module_sink() -> Any:
    with SegmentSink() as sink:
        yield sink


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=odd_events)
def test_any_event_shape_is_contained(module_sink: SegmentSink, changes: Dict[str, Any]) -> None:
    sent_by_before_send: List[Dict[str, Any]] = []

    def apply(event: Dict[str, Any], hint: Any) -> Dict[str, Any]:
        event.update(copy.deepcopy(changes))
        seen = copy.deepcopy(event)
        contexts = seen.get("contexts")
        if isinstance(contexts, dict) and isinstance(contexts.get("trace"), dict):
            # Sentry itself moves this into the envelope's headers after before_send.
            contexts["trace"].pop("dynamic_sampling_context", None)
        sent_by_before_send.append(seen)
        return event

    batches_before = len(module_sink.batches)
    integration = SegmentIntegration(
        write_key="property_key", host=module_sink.url, include_messages=True, rate_limit=None, upload_interval=0.05
    )
    transport = RecordingTransport()
    sentry_sdk.init(
        dsn=DSN, transport=transport, integrations=[integration], default_integrations=False, before_send=apply
    )
    try:
        error_as_user({"id": "u-1"})  # never raises into the application
        sentry_sdk.flush(5)
    finally:
        sentry_sdk.init()

    assert len(transport.events) == 1
    assert json.dumps(transport.events[0], sort_keys=True, default=repr) == json.dumps(
        sent_by_before_send[0], sort_keys=True, default=repr
    )
    stats = integration.stats()
    assert stats["internal_error"] == 0
    assert stats["forwarded"] + stats["skipped_not_error"] + stats["skipped_no_user"] == 1
    if stats["forwarded"]:
        messages = module_sink.wait_for_messages(sum(len(b.messages) for b in module_sink.batches[:batches_before]) + 1)
        message = messages[-1]
        assert len(json.dumps(message).encode()) < 32 * 1024
        assert message["event"] == "Error Captured"
        assert isinstance(message["userId"], str) and message["userId"]
        assert all(isinstance(value, (str, dict)) for value in message["properties"].values())
