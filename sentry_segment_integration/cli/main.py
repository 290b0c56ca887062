"""Command line: ``sentry-segment`` (also ``python -m sentry_segment_integration``).

Subcommands: ``demo``, ``sink``, ``check``, ``replay``, ``explain``. Exit codes: 0 ok, 1 failure
(or, for ``explain``, "would not be forwarded"), 2 usage. Only the standard library (argparse):
the command line adds no dependency to the integration.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from sentry_segment_integration.cli.check import run_check
from sentry_segment_integration.cli.demo import run_demo
from sentry_segment_integration.cli.explain import run_explain
from sentry_segment_integration.cli.options import (
    DEFAULT_SEGMENT_HOST,
    EXIT_FAILED,
    EXIT_USAGE,
    MAX_CHECK_TIMEOUT,
    MAX_REPLAY_TIMEOUT,
    UsageError,
    event_name_argument,
    project_id_argument,
    quiet_library_logs,
    rate_limit_argument,
    resolve_host,
    resolve_write_key,
    seconds_argument,
    sentry_url_argument,
)
from sentry_segment_integration.cli.replay import ReplaySettings, run_replay
from sentry_segment_integration.cli.sink import DEFAULT_PORT as DEFAULT_SINK_PORT
from sentry_segment_integration.cli.sink import run_sink
from sentry_segment_integration.cli.verdicts import RuleOptions
from sentry_segment_integration.payload import EVENT_NAME
from sentry_segment_integration.settings import HOST_ENV, WRITE_KEY_ENV

# The integration's default: a replay sends at the pace the integration would allow.
DEFAULT_RATE_LIMIT = 200


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0 to 65535): {port}")
    return port


class _ParagraphFormatter(argparse.HelpFormatter):
    """argparse's wrapping, paragraph by paragraph: a blank line in a description or epilog stays."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(
            super(_ParagraphFormatter, self)._fill_text(part, width, indent) for part in text.split("\n\n")
        )


_EXIT_CODES = "exit codes: 0 ok, 1 failure, 2 usage error"
_KEY_HELP = (
    f"the Segment source's write key (default: ${WRITE_KEY_ENV}; prefer the variable: "
    "an argument shows in the shell history and the process list)"
)
_HOST_HELP = f"Segment API base URL (default: ${HOST_ENV}, else {DEFAULT_SEGMENT_HOST}): the EU region, a proxy, a sink"


def _add_rule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--include-messages",
        action="store_true",
        help="also forward message-only events, as the integration's include_messages=True",
    )
    parser.add_argument(
        "--send-ip",
        action="store_true",
        help="send context.ip (the event's user.ip_address), as send_ip=True; off by default",
    )
    parser.add_argument(
        "--no-query-string",
        dest="send_query_string",
        action="store_false",
        help="leave the query string out of page.url, page.search and the referrer, as send_query_string=False",
    )
    parser.add_argument(
        "--anonymous-id-cookie",
        action="store_true",
        help="forward a signed-out visitor's error with the ajs_anonymous_id cookie of its request.cookies as "
        "anonymousId, as anonymous_id='cookie'",
    )
    parser.add_argument(
        "--event-name",
        type=event_name_argument,
        default=EVENT_NAME,
        metavar="NAME",
        help="the Segment event name, as event_name= (default %(default)r)",
    )
    parser.add_argument(
        "--sentry-url",
        type=sentry_url_argument,
        metavar="URL",
        help="add properties.sentryUrl, a link to each event in Sentry, as sentry_url=: https://<org>.sentry.io "
        "or https://sentry.example.com/organizations/<org>",
    )
    parser.add_argument(
        "--project-id",
        type=project_id_argument,
        metavar="ID",
        help="the Sentry project id for --sentry-url's links (default: each event's own projectID or project)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentry-segment",
        description="Mirror Sentry's error events into Segment: tools for setting it up.",
        epilog=_EXIT_CODES,
        formatter_class=_ParagraphFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    commands.add_parser(
        "demo",
        formatter_class=_ParagraphFormatter,
        help="forward a real error to a local Segment-compatible receiver and show what arrived",
        description="Start a receiver on 127.0.0.1, raise an error in a small app as a signed-in user, "
        "and print the Segment message that arrived.",
        epilog=_EXIT_CODES,
    )

    sink = commands.add_parser(
        "sink",
        formatter_class=_ParagraphFormatter,
        help="run a Segment-compatible receiver on 127.0.0.1 and print each message that arrives",
        description="A Segment-compatible receiver on 127.0.0.1 for development: accepts POST /v1/batch and "
        "/v1/track, gzip bodies and the write key as Basic auth, answers 200, and prints each message as it "
        "arrives (never the write key). Point the integration at it with SEGMENT_HOST=http://127.0.0.1:PORT. "
        "Runs until Ctrl-C or SIGTERM.",
        epilog="exit codes: 0 stopped by Ctrl-C/SIGTERM, 1 cannot listen or write, 2 usage error",
    )
    sink.add_argument(
        "--port", type=_port, default=DEFAULT_SINK_PORT, help="port (default %(default)s; 0: any free port)"
    )
    sink.add_argument("--output", metavar="FILE.jsonl", help="also append each message to this file, one JSON per line")
    sink.add_argument("--json", action="store_true", help="print each whole message as a JSON line on stdout")

    check = commands.add_parser(
        "check",
        formatter_class=_ParagraphFormatter,
        help="send one test message to Segment and say whether it was accepted, and if not why",
        description='Send one clearly marked test "Error Captured" message (userId sentry-segment-check, '
        "properties.test = true, a fresh messageId) the way the integration does, and report whether Segment "
        "accepted it, the HTTP status, and the likely cause of a failure (key refused, DNS, connection refused, "
        "TLS, proxy, timeout). The key is never printed. Segment's API accepts any well-formed key: find the "
        "test message in the source's Debugger to be sure of the key.",
        epilog="exit codes: 0 accepted, 1 not accepted, 2 usage error",
    )
    check.add_argument("--write-key", metavar="KEY", help=_KEY_HELP)
    check.add_argument("--host", metavar="URL", help=_HOST_HELP)
    check.add_argument(
        "--timeout",
        type=seconds_argument(MAX_CHECK_TIMEOUT),
        default=10.0,
        metavar="S",
        help=f"seconds (default 10, at most {MAX_CHECK_TIMEOUT:g})",
    )
    check.add_argument("--json", action="store_true", help="print the result as one JSON object")

    replay = commands.add_parser(
        "replay",
        formatter_class=_ParagraphFormatter,
        help="forward Sentry events saved as JSON to Segment (a backfill), under the same rules",
        description="Forward Sentry events saved as JSON (one event per file, a JSON array such as Sentry's API "
        "returns, or JSON lines such as exports) through the integration's qualifying rules, message and rate "
        "limit. Events in the shape of Sentry's web API (eventID, dateCreated, entries, tags as a list) are "
        "normalised to the SDK's shape first. Unreadable input (not JSON, not an event, a truncated file) is "
        "reported by file and line, skipped and counted; the run goes on. The messageId is the Sentry event id, "
        "so replaying the same events again sends the same messageIds and Segment de-duplicates them.",
        epilog="rate limit: unlike the integration, which drops what is over its budget, replay WAITS for the "
        "next one-second window, so every qualifying event is delivered: N events at --rate-limit R take about "
        "N/R seconds. The budget is the replay's own (not shared with running applications).\n\n"
        "exit codes: 0 everything read and delivered (or printed), 1 bad input, a delivery failure or an "
        "interruption, 2 usage error",
    )
    replay.add_argument(
        "files", nargs="+", metavar="FILE", help="JSON, JSON-array or JSON-lines files of Sentry events"
    )
    replay.add_argument("--write-key", metavar="KEY", help=_KEY_HELP)
    replay.add_argument("--host", metavar="URL", help=_HOST_HELP)
    replay.add_argument(
        "--rate-limit",
        type=rate_limit_argument,
        default=DEFAULT_RATE_LIMIT,
        metavar="N",
        help="most messages sent per second (default %(default)s, the integration's); waits rather than drops",
    )
    replay.add_argument(
        "--rate-limit-per-type",
        type=rate_limit_argument,
        metavar="N",
        help="at most N events of one exception type per second of the events' own time, as rate_limit_per_type= "
        "(the rest are skipped, not waited for); default: no cap",
    )
    _add_rule_options(replay)
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="print the messages (one JSON per line on stdout; the summary on stderr) instead of sending them",
    )
    replay.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    replay.add_argument(
        "--timeout",
        type=seconds_argument(MAX_REPLAY_TIMEOUT),
        default=30.0,
        metavar="S",
        help="at the end, seconds to wait for Segment to take what is queued "
        f"(default 30, at most {MAX_REPLAY_TIMEOUT:g})",
    )

    explain = commands.add_parser(
        "explain",
        formatter_class=_ParagraphFormatter,
        help="say whether one saved Sentry event would be forwarded, which rule stops it, and the message",
        description="For one Sentry event saved as JSON (from the SDK, before_send, or Sentry's API), say whether "
        "the integration would forward it and, if not, which rule stops it, and print the message it would send.",
        epilog="exit codes: 0 would be forwarded, 1 would not, 2 usage error or unreadable file",
    )
    explain.add_argument("file", metavar="FILE", help="a JSON file holding one Sentry event")
    _add_rule_options(explain)
    explain.add_argument("--json", action="store_true", help="print the verdict as one JSON object")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        return _run(arguments)
    except UsageError as error:
        print(f"sentry-segment {arguments.command}: error: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except BrokenPipeError:
        # Output piped into a program that stopped reading (``| head``): end quietly, and keep
        # Python's final flush of stdout from reporting the same broken pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def _run(arguments: argparse.Namespace) -> int:
    command = arguments.command
    if command == "demo":
        return run_demo(sys.stdout)
    if command == "sink":
        return run_sink(arguments.port, arguments.output, arguments.json, sys.stdout, sys.stderr)
    quiet_library_logs()
    if command == "check":
        write_key, key_source = resolve_write_key(arguments.write_key)
        host = resolve_host(arguments.host)
        return run_check(write_key, key_source, host, arguments.timeout, arguments.json, sys.stdout)
    rules = RuleOptions(
        include_messages=arguments.include_messages,
        send_ip=arguments.send_ip,
        send_query_string=arguments.send_query_string,
        event_name=arguments.event_name,
        sentry_url=arguments.sentry_url,
        project_id=arguments.project_id,
        anonymous_id_cookie=arguments.anonymous_id_cookie,
    )
    if command == "explain":
        return run_explain(arguments.file, rules, arguments.json, sys.stdout, sys.stderr)
    if command == "replay":
        dry_run = arguments.dry_run
        settings = ReplaySettings(
            write_key=None if dry_run else resolve_write_key(arguments.write_key)[0],
            host=resolve_host(arguments.host),
            rate_limit=arguments.rate_limit,
            rules=rules,
            dry_run=dry_run,
            as_json=arguments.json,
            timeout=arguments.timeout,
            rate_limit_per_type=arguments.rate_limit_per_type,
        )
        return run_replay(arguments.files, settings, sys.stdout, sys.stderr)
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
