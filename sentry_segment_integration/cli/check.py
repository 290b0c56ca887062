"""``sentry-segment check``: does Segment accept what the integration sends, with this key and host?

One clearly marked test message (``userId`` ``sentry-segment-check``, ``properties.test`` true, a
fresh ``messageId``) is built by the integration's own :func:`payload.build_message` and posted by
the integration's own :class:`delivery.SegmentEndpoint`, the very request its sending thread makes
for every batch (same URL, headers, Basic auth, body and timeout; a redirect is not followed). The
sender itself is not used: it retries, and reports a failure only as a count, while ``check`` must
answer within its timeout with the HTTP status and the exception, which ``post`` gives directly.

What "accepted" can and cannot mean: Segment's tracking API does not look a write key up when it
accepts a batch. A well-formed key of no source gets ``200`` and the message is dropped later
(only malformed keys get ``400``, and proxies or regional endpoints may answer ``401``/``403``). So
an accepted check proves the host, network, TLS and proxy path; the source's Debugger in Segment
proves the key.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Dict, Iterator, List, Optional, TextIO, Tuple

import requests

from sentry_segment_integration._log import redact as redact_secrets
from sentry_segment_integration.cli.options import EXIT_FAILED, EXIT_OK, display_host
from sentry_segment_integration.cli.output import Style
from sentry_segment_integration.delivery import SegmentEndpoint
from sentry_segment_integration.payload import Message, build_message
from sentry_segment_integration.settings import Secret, url_credentials
from sentry_segment_integration.version import __version__

CHECK_USER_ID = "sentry-segment-check"
CHECK_EXCEPTION_TYPE = "SentrySegmentCheck"


@dataclass(frozen=True)
class CheckResult:
    accepted: bool
    status: Optional[int]
    # A short name scripts can switch on: accepted, key_refused, bad_request, not_found,
    # rate_limited, server_error, http_error, dns, refused, tls, proxy, timeout, unreachable.
    problem: str
    cause: str
    seconds: float
    # What the host itself said about a refusal (Segment's error message), if anything.
    detail: str = ""


def check_message(now: Optional[datetime] = None) -> Message:
    """The test message: an ``"Error Captured"`` that says what it is wherever it is looked at."""
    event_id = uuid.uuid4().hex
    event = {
        "event_id": event_id,
        "timestamp": (now or datetime.now(timezone.utc)).isoformat(),
        "level": "error",
        "environment": "sentry-segment-check",
        "release": f"sentry-segment-integration@{__version__}",
        "transaction": "sentry-segment check",
        "exception": {"values": [{"type": CHECK_EXCEPTION_TYPE, "value": "a test message: nothing is broken"}]},
        "user": {"id": CHECK_USER_ID},
    }
    return build_message(event, CHECK_USER_ID, now=now, extra_properties={"test": True})


def send_check(write_key: Secret, host: Optional[str], message: Message, timeout: float) -> CheckResult:
    """Post ``message`` as a batch of one, as the Segment library does; an answer within ``timeout``."""
    outcome: List[Any] = []
    started = time.monotonic()

    def post() -> None:
        try:
            outcome.append(SegmentEndpoint(host, timeout).post(write_key.value, [message]))
        except Exception as error:  # every failure is an answer here, classified below
            outcome.append(error)

    # The request runs on a thread of its own: name resolution is not bounded by requests' timeout.
    worker = threading.Thread(target=post, name="sentry-segment-check", daemon=True)
    worker.start()
    worker.join(timeout)
    seconds = time.monotonic() - started
    if not outcome:
        return CheckResult(False, None, "timeout", f"no answer within {timeout:g} s: {_TIMEOUT_HINT}", seconds)
    answer = outcome[0]
    if isinstance(answer, Exception):
        return _classify_failure(answer, seconds, timeout)
    return CheckResult(True, answer, "accepted", "", seconds)


_TIMEOUT_HINT = "the host or a firewall drops the connection, or a proxy is needed (HTTPS_PROXY)"


def _classify_failure(error: Exception, seconds: float, timeout: float) -> CheckResult:
    status = getattr(error, "status", None)
    if isinstance(status, int):
        problem, cause = _http_cause(status)
        said = getattr(error, "message", "")
        detail = " ".join(said.split())[:200] if isinstance(said, str) else ""
        return CheckResult(False, status, problem, cause, seconds, detail)
    chain = list(_causes(error))
    if any(
        isinstance(link, requests.exceptions.ProxyError) or str(link).startswith("Tunnel connection failed")
        for link in chain
    ):
        cause = "the proxy (HTTPS_PROXY / HTTP_PROXY) refused the connection or could not reach Segment"
        return CheckResult(False, None, "proxy", cause, seconds)
    if any(isinstance(link, (requests.exceptions.SSLError, ssl.SSLError)) for link in chain):
        cause = (
            "the TLS handshake failed: the certificate is not trusted or not for this host (a proxy that "
            "inspects TLS needs its CA in REQUESTS_CA_BUNDLE), or the host does not speak https"
        )
        return CheckResult(False, None, "tls", cause, seconds)
    if any(isinstance(link, (requests.exceptions.Timeout, socket.timeout, TimeoutError)) for link in chain):
        return CheckResult(False, None, "timeout", f"no answer within {timeout:g} s: {_TIMEOUT_HINT}", seconds)
    if any(isinstance(link, socket.gaierror) or type(link).__name__ == "NameResolutionError" for link in chain):
        cause = "the host name could not be resolved (DNS): check the spelling of --host / SEGMENT_HOST"
        return CheckResult(False, None, "dns", cause, seconds)
    if any(isinstance(link, ConnectionRefusedError) for link in chain):
        cause = "the connection was refused: nothing listens at that host and port"
        return CheckResult(False, None, "refused", cause, seconds)
    cause = f"the host could not be reached ({type(chain[-1]).__name__})"
    return CheckResult(False, None, "unreachable", cause, seconds)


def _http_cause(status: int) -> Tuple[str, str]:
    if status in (401, 403):
        return "key_refused", f"Segment refused the write key (HTTP {status}): copy it again from the source's settings"
    if status == 400:
        return "bad_request", ("Segment rejected the request (HTTP 400): most often a malformed or truncated write key")
    if status == 404:
        return "not_found", "the host answered 404: it is not Segment's tracking API (check --host / SEGMENT_HOST)"
    if 300 <= status < 400:
        return "redirect", (
            f"the host answered with a redirect (HTTP {status}), which is not followed: most often a sign-in "
            "page, a captive portal or an http:// URL for an https:// one; set --host / SEGMENT_HOST to the API itself"
        )
    if status == 429:
        return "rate_limited", "Segment is rate limiting this source (HTTP 429): try again in a moment"
    if status >= 500:
        return "server_error", f"Segment (or a proxy in front of it) failed (HTTP {status}): try again later"
    return "http_error", f"the host answered HTTP {status} instead of accepting the batch"


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: requests wraps urllib3, which wraps the socket's own error."""
    seen: List[int] = []
    pending: List[BaseException] = [error]
    while pending:
        link = pending.pop(0)
        if id(link) in seen:
            continue
        seen.append(id(link))
        yield link
        wrapped = [link.__cause__, link.__context__, getattr(link, "reason", None), *link.args]
        pending.extend(item for item in wrapped if isinstance(item, BaseException))


def redact(text: str, write_key: Secret, host: Optional[str]) -> str:
    """Whatever an answer or an exception says, it says without the key or the host's credentials."""
    return redact_secrets(text, (write_key.value, *url_credentials(host)))


def run_check(
    write_key: Secret, key_source: str, host: Optional[str], timeout: float, as_json: bool, out: TextIO
) -> int:
    message = check_message()
    target = f"{display_host(host)}/v1/batch"
    result = send_check(write_key, host, message, timeout)
    cause = redact(result.cause, write_key, host)
    detail = redact(result.detail, write_key, host)
    if as_json:
        report: Dict[str, Any] = {
            "accepted": result.accepted,
            "status": result.status,
            "problem": result.problem,
            "cause": cause or None,
            "detail": detail or None,
            "url": target,
            "messageId": message["messageId"],
            "userId": CHECK_USER_ID,
            "seconds": round(result.seconds, 3),
        }
        print(json.dumps(report), file=out, flush=True)
        return EXIT_OK if result.accepted else EXIT_FAILED
    style = Style(out)
    style.line(style.strong(f'sentry-segment check: one test "Error Captured" message to {target}'))
    style.line(f"  write key  from {key_source} ({len(write_key.value)} characters, not shown)")
    style.line(f"  message    userId {CHECK_USER_ID}, messageId {message['messageId']}, properties.test = true")
    status = f"HTTP {result.status}" if result.status is not None else "no HTTP answer"
    if result.accepted:
        style.line(style.good(f"{style.yes} accepted: {status} in {result.seconds:.2f} s"))
        style.line("  Segment accepts any well-formed write key here: to be sure the key is right, look for")
        style.line(f"  userId {CHECK_USER_ID} in the source's Debugger (Segment: Connections > Sources).")
        return EXIT_OK
    style.line(style.bad(f"{style.no} not accepted: {status} after {result.seconds:.2f} s"))
    style.line(f"  cause: {cause}")
    if detail:
        style.line(f"  the host said: {detail}")
    return EXIT_FAILED
