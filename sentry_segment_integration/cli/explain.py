"""``sentry-segment explain``: one saved Sentry event, the rules it passes or fails, and the
message it would be forwarded as."""

from __future__ import annotations

import json
import textwrap
from typing import Any, Dict, List, Mapping, TextIO

from sentry_segment_integration.cli.options import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from sentry_segment_integration.cli.output import Style, print_line
from sentry_segment_integration.cli.saved_events import (
    BadInput,
    SavedEvent,
    read_saved_events,
)
from sentry_segment_integration.cli.verdicts import (
    MAX_REPORTED_PROBLEMS,
    RuleOptions,
    Verdict,
    judge_saved,
)
from sentry_segment_integration.payload import (
    exception_type_of,
    exception_values,
)


def run_explain(path: str, rules: RuleOptions, as_json: bool, out: TextIO, err: TextIO) -> int:
    events: List[SavedEvent] = []
    problems: List[BadInput] = []
    for item in read_saved_events(path):
        if isinstance(item, BadInput):
            problems.append(item)
        else:
            events.append(item)
    verdict = judge_saved(events[0], rules) if len(events) == 1 and not problems else None
    if isinstance(verdict, BadInput):
        problems.append(verdict)
    if verdict is None or isinstance(verdict, BadInput):
        style = Style(err)
        for problem in problems[:MAX_REPORTED_PROBLEMS]:
            style.line(f"sentry-segment explain: {problem.where}: {problem.problem}")
        if not problems:
            style.line(
                f"sentry-segment explain: {path} holds {len(events)} events; explain takes one "
                "(see them all with: sentry-segment replay --dry-run FILE)"
            )
        return EXIT_USAGE
    saved = events[0]
    if as_json:
        print_line(json.dumps(_explain_json(verdict)), out)
    else:
        _print_explanation(saved, verdict, rules, Style(out))
    return EXIT_OK if verdict.forwarded else EXIT_FAILED


def _explain_json(verdict: Verdict) -> Dict[str, Any]:
    return {
        "forwarded": verdict.forwarded,
        "rule": verdict.rule,
        "reason": verdict.reason,
        "event_id": verdict.event.get("event_id"),
        "normalised": verdict.normalised_from,
        "message": verdict.message,
    }


def _print_explanation(saved: SavedEvent, verdict: Verdict, rules: RuleOptions, style: Style) -> None:
    event = verdict.event
    style.line(style.strong(f"event {event.get('event_id')} ({saved.where})"))
    if verdict.normalised_from:
        changes = "; ".join(verdict.normalised_from)
        wrapped = textwrap.fill(
            f"read in Sentry's API shape: {changes}", 100, initial_indent="  ", subsequent_indent="    "
        )
        style.line(style.quiet(wrapped))
    checks = [
        ("1. Sentry sent it", None, "not checked here: a saved event was sent (before_send, sampling)"),
        ("2. it is an error", verdict.rule != "not_error", _kind_detail(event, verdict, rules)),
        (
            "3. it has a user id",
            None if verdict.rule == "not_error" else verdict.rule != "no_user",
            _user_detail(event, verdict),
        ),
        ("4. its project forwards", None, "not checked here: depends on projects / enroll_new_projects"),
        (
            "5. the rate limit has room",
            None,
            "not checked here: depends on the traffic at the time (rate_limit, rate_limit_per_type)",
        ),
    ]
    width = max(len(name) for name, _, _ in checks)
    for name, passed, detail in checks:
        if passed is None:
            mark = style.quiet(style.neutral)
        else:
            mark = style.good(style.yes) if passed else style.bad(style.no)
        style.line(f"  {mark} {name.ljust(width)}  {detail}")
    if verdict.forwarded and verdict.message is not None:
        style.line(style.good(f"{style.yes} would be forwarded to Segment as:"))
        style.line(json.dumps(verdict.message, indent=2, ensure_ascii=False))
    else:
        style.line(style.bad(f"{style.no} would NOT be forwarded: {verdict.reason}"))


def _kind_detail(event: Mapping[str, Any], verdict: Verdict, rules: RuleOptions) -> str:
    if verdict.rule == "not_error":
        return verdict.reason
    if exception_values(event):
        exception_type = exception_type_of(event)
        return f"exception {exception_type}" if exception_type else "it has exception data"
    return "a message-only event, forwarded because of --include-messages" if rules.include_messages else ""


def _user_detail(event: Mapping[str, Any], verdict: Verdict) -> str:
    if verdict.rule == "no_user":
        return verdict.reason
    if verdict.rule == "not_error":
        return "not reached"
    message = verdict.message or {}
    return f"userId {message.get('userId')!r}"
