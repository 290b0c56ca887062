"""The forwarding rules, alone: ``rules.qualify`` on event dicts, and ``explain``'s verdict agreeing
with it (one rules function for the integration, explain and replay). Fast: no client, no server."""

from __future__ import annotations

import copy
import uuid
from typing import Any, Dict, List, Mapping, Optional

import pytest

from sentry_segment_integration.anonymous import COOKIE, COOKIE_NAME, parse_anonymous_id
from sentry_segment_integration.cli.verdicts import RuleOptions, judge
from sentry_segment_integration.rules import NO_USER, NO_USER_OR_VISITOR, NOT_AN_ERROR, Identity, Skip, qualify


def event_of(
    user: Optional[Dict[str, Any]] = None,
    *,
    kind: Optional[str] = None,
    exception: bool = True,
    cookies: Optional[Dict[str, str]] = None,
) -> Dict[str, Any]:
    event: Dict[str, Any] = {"event_id": uuid.uuid4().hex, "level": "error", "platform": "python"}
    if exception:
        event["exception"] = {"values": [{"type": "ValueError", "value": "boom"}]}
    else:
        event["message"] = "a message"
    if kind is not None:
        event["type"] = kind
    if user is not None:
        event["user"] = user
    if cookies is not None:
        event["request"] = {"url": "https://shop.example/cart", "cookies": cookies}
    return event


def test_an_error_of_a_user_with_an_id_goes_as_that_user() -> None:
    assert qualify(event_of({"id": 42}), include_messages=False) == Identity("42", None)


@pytest.mark.parametrize("kind", ["transaction", "check_in", "feedback"])
def test_a_typed_event_is_not_an_error(kind: str) -> None:
    assert qualify(event_of({"id": "u"}, kind=kind), include_messages=True) is NOT_AN_ERROR


def test_a_message_goes_only_with_include_messages() -> None:
    message = event_of({"id": "u"}, exception=False)
    assert qualify(message, include_messages=False) is NOT_AN_ERROR
    assert qualify(message, include_messages=True) == Identity("u", None)


@pytest.mark.parametrize("user", [None, {}, {"email": "a@example.com", "ip_address": "10.0.0.1"}, {"id": None}])
def test_an_error_without_a_user_id_is_skipped(user: Optional[Dict[str, Any]]) -> None:
    verdict = qualify(event_of(user), include_messages=False)
    assert verdict is NO_USER
    assert isinstance(verdict, Skip) and verdict.counter == "skipped_no_user"


def test_the_cookie_gives_a_signed_out_visitor_and_a_user_both_ids() -> None:
    cookies = {COOKIE_NAME: "%22visitor-1%22", "session": "secret"}
    assert qualify(event_of(None, cookies=cookies), False, COOKIE) == Identity(None, "visitor-1")
    assert qualify(event_of({"id": "u"}, cookies=cookies), False, COOKIE) == Identity("u", "visitor-1")
    assert qualify(event_of(None, cookies={"session": "secret"}), False, COOKIE) is NO_USER_OR_VISITOR


def test_an_anonymous_id_function_is_asked_with_the_event_and_hint() -> None:
    seen: List[Any] = []

    def from_header(event: Mapping[str, Any], hint: Mapping[str, Any]) -> Optional[str]:
        seen.append((event["event_id"], hint))
        return "from-hook"

    event, hint = event_of(None), {"exc_info": None}
    assert qualify(event, False, parse_anonymous_id(from_header), hint) == Identity(None, "from-hook")
    assert seen == [(event["event_id"], hint)]


def test_a_failing_anonymous_id_function_counts_as_no_visitor_and_is_reported() -> None:
    failures: List[BaseException] = []

    def broken(event: Mapping[str, Any], hint: Mapping[str, Any]) -> Optional[str]:
        raise RuntimeError("the app's lookup failed")

    source = parse_anonymous_id(broken)
    assert qualify(event_of(None), False, source, None, failures.append) is NO_USER_OR_VISITOR
    assert [type(error) for error in failures] == [RuntimeError]
    # With a user id the event still goes, as that user alone.
    assert qualify(event_of({"id": "u"}), False, source, None, failures.append) == Identity("u", None)


def test_qualify_never_edits_the_event() -> None:
    event = event_of({"id": "u"}, cookies={COOKIE_NAME: "v"})
    before = copy.deepcopy(event)
    qualify(event, True, COOKIE)
    assert event == before


@pytest.mark.parametrize(
    "event, include_messages",
    [
        (event_of({"id": "u"}), False),
        (event_of({"id": "u"}, kind="transaction"), False),
        (event_of({"id": "u"}, exception=False), False),
        (event_of({"id": "u"}, exception=False), True),
        (event_of(None), False),
        (event_of({"email": "a@example.com"}), False),
        (event_of(None, cookies={COOKIE_NAME: "visitor"}), False),
    ],
)
def test_explain_judges_by_the_same_rules(event: Dict[str, Any], include_messages: bool) -> None:
    for cookie in (False, True):
        expected = qualify(event, include_messages, COOKIE if cookie else None)
        verdict = judge(event, RuleOptions(include_messages=include_messages, anonymous_id_cookie=cookie))
        if isinstance(expected, Skip):
            assert (verdict.forwarded, verdict.rule) == (False, expected.rule)
        else:
            assert verdict.forwarded and verdict.message is not None
            assert verdict.message.get("userId") == expected.user_id
            assert verdict.message.get("anonymousId") == expected.anonymous_id
