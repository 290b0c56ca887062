"""The package's logger, every redaction of a secret, and the one way a failure is kept from the
application. A leaf: it imports nothing of this package.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from types import TracebackType
from typing import Callable, Iterable, List, Optional, Set, Type

logger = logging.getLogger("sentry_segment_integration")
SEGMENT_LOGGER = "segment"
REDACTED = "[redacted]"
# The name of every thread that posts to Segment (see ``_library_errors_as_debug``).
DELIVERY_THREAD_NAME = "sentry-segment-delivery"


def secret_forms(secret: str) -> List[str]:
    """Every form a secret can take in a log line or an answer: raw, JSON-escaped, and as the
    Basic-auth credentials of a write key (base64 of ``key:``, with and without padding)."""
    basic = base64.b64encode(f"{secret}:".encode()).decode()
    forms = {secret, json.dumps(secret)[1:-1], basic, basic.rstrip("=")}
    return sorted((form for form in forms if form), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every form of each of ``secrets`` blanked out, the longest first."""
    return _without(text, {form for secret in secrets if secret for form in secret_forms(secret)})


def _without(text: str, forms: Set[str]) -> str:
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return text


class SecretsFilter(logging.Filter):
    """Blanks every registered secret out of records of the logger it is attached to.

    The Segment library logs each request body, write key included, at DEBUG.
    """

    def __init__(self) -> None:
        super().__init__()
        self._forms: Set[str] = set()

    def add(self, secret: str) -> None:
        # However short: a garbled log line is better than a leaked key.
        if secret:
            self._forms = self._forms | set(secret_forms(secret))

    def filter(self, record: logging.LogRecord) -> bool:
        forms = self._forms
        if not forms:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot format itself: keep nothing of it
            record.msg, record.args = "unprintable log record", None
            return True
        if any(form in message for form in forms):
            record.msg, record.args = _without(message, forms), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _without(logging.Formatter().formatException(record.exc_info), forms)
        return True


SECRETS = SecretsFilter()
for _name in (SEGMENT_LOGGER, logger.name):
    logging.getLogger(_name).addFilter(SECRETS)


def _library_errors_as_debug(record: logging.LogRecord) -> bool:
    # The Segment library logs each failed request at ERROR ("Unknown error", "Unexpected
    # redirect"; 2.2's `backoff` each give-up): error-level alerting would fire on every batch
    # while Segment is down. On our sending thread those are DEBUG; this package says it once,
    # at WARNING, in plain words. The application's own use of the library is left as it is.
    if record.threadName != DELIVERY_THREAD_NAME or record.levelno <= logging.DEBUG:
        return True
    record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
    return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


for _name in (SEGMENT_LOGGER, "backoff"):
    logging.getLogger(_name).addFilter(_library_errors_as_debug)


FailureHandler = Callable[[Exception], None]


class contained:
    """``with contained(on_failure):`` never lets an ``Exception`` of the block reach the caller,
    the application: it is handed to ``on_failure`` (which counts and logs it) and goes no
    further. A ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
    ``SystemExit``, gevent's ``GreenletExit``) goes through, as the application meant it to.
    Stateless: one instance may guard any number of blocks, on any number of threads.
    """

    __slots__ = ("_on_failure",)

    def __init__(self, on_failure: FailureHandler) -> None:
        self._on_failure = on_failure

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: Optional[Type[BaseException]], error: Optional[BaseException], traceback: Optional[TracebackType]
    ) -> bool:
        if not isinstance(error, Exception):
            return False
        # The handler itself failing (a broken logging handler) leaves nowhere to say it.
        with contextlib.suppress(Exception):
            self._on_failure(error)
        return True


def log_failure(what: str, level: int = logging.ERROR) -> FailureHandler:
    """A failure handler that logs ``what`` with the failure's traceback, for :class:`contained`."""

    def log(error: Exception) -> None:
        logger.log(level, what, exc_info=error)

    return log
