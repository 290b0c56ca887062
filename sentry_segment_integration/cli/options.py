"""What the subcommands share: usage errors, the write key, host and number options, quiet library logs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Optional, Tuple

from sentry_segment_integration._log import SEGMENT_LOGGER, logger
from sentry_segment_integration.settings import (
    HOST_ENV,
    MAX_RATE_LIMIT,
    WRITE_KEY_ENV,
    ConfigurationError,
    Secret,
    SentryLink,
    parse_event_name,
    parse_host,
    parse_project_id,
    parse_rate_limit,
    parse_sentry_url,
    parse_write_key,
    without_credentials,
)

DEFAULT_SEGMENT_HOST = "https://api.segment.io"
# Exit codes that scripts can rely on.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Bounds of the commands' --timeout: `check` waits for one request, as the integration's `timeout`
# option (at most 600 s); `replay` waits at the end for what is queued. Beyond them a wait is a
# mistake, and past ~9.2e9 s it overflows the thread timers (a traceback rather than a usage error).
MAX_CHECK_TIMEOUT = 600.0
MAX_REPLAY_TIMEOUT = 86400.0
_MAX_SHOWN = 40


class UsageError(Exception):
    """The command line asks for something that cannot be done as given: exit code 2."""


def resolve_write_key(given: Optional[str]) -> Tuple[Secret, str]:
    """The write key and where it came from (``--write-key`` or the environment), for display.

    Messages never repeat the key, not even a malformed one: it may be a real key mistyped.
    """
    value = given if given is not None else os.environ.get(WRITE_KEY_ENV)
    source = "--write-key" if given is not None else WRITE_KEY_ENV
    # Surrounding whitespace (a secret file's final newline) is ignored, as by the integration.
    if not value or not value.strip():
        raise UsageError(
            f"no write key: set {WRITE_KEY_ENV} (or pass --write-key) to the write key of your Segment source "
            "(Segment: Connections > Sources > the source > Settings > API Keys)"
        )
    try:
        return parse_write_key(value, from_env=False), source
    except ConfigurationError:
        raise UsageError(
            f"the write key from {source} is not a Segment write key: expected only letters, digits, '-', '_' and ':' "
            "(surrounding whitespace is ignored, whitespace inside is not)"
        ) from None


def resolve_host(given: Optional[str]) -> Optional[str]:
    """``--host``, else ``SEGMENT_HOST``, else None (the Segment library's default host)."""
    try:
        return parse_host(given)
    except ConfigurationError:
        raise UsageError(
            f"--host (or {HOST_ENV}) must be an http:// or https:// URL such as https://events.eu1.segmentapis.com"
        ) from None


def _shown(text: str) -> str:
    return repr(text) if len(text) <= _MAX_SHOWN else repr(text[: _MAX_SHOWN - 3] + "...")


def seconds_argument(maximum: float) -> Callable[[str], float]:
    """An argparse ``type``: a number of seconds, more than 0 and at most ``maximum``.

    ``nan``, ``inf``, ``-1``, ``1e10`` or ``10**400`` are a usage error naming the option (exit code 2),
    never a traceback from a timer that cannot wait that long.
    """

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {_shown(text)}") from None
        if not 0 < value <= maximum:  # also refuses nan
            raise argparse.ArgumentTypeError(
                f"must be a positive number of seconds, at most {maximum:g}: {_shown(text)}"
            )
        return value

    return seconds


def rate_limit_argument(text: str) -> int:
    """An argparse ``type``: events per second, as the integration's ``rate_limit`` (a fraction rounds up)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {_shown(text)}") from None
    try:
        limit = parse_rate_limit(value)
    except ConfigurationError:
        limit = None
    if limit is None:
        raise argparse.ArgumentTypeError(
            f"must be a positive number of messages per second, at most {MAX_RATE_LIMIT}: {_shown(text)}"
        )
    return limit


def _option_problem(error: ConfigurationError) -> str:
    """The integration's message for an option, as the command line's: without the option's name
    (argparse names the argument)."""
    text = str(error)
    _, must, rest = text.partition(" must ")
    return f"must {rest}" if must else text.replace("SegmentIntegration: ", "", 1)


def event_name_argument(text: str) -> str:
    """An argparse ``type``: the Segment event name, as the integration's ``event_name``."""
    try:
        return parse_event_name(text)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(_option_problem(error)) from None


def sentry_url_argument(text: str) -> SentryLink:
    """An argparse ``type``: the organization's Sentry web address, as the integration's ``sentry_url``."""
    try:
        link = parse_sentry_url(text)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(_option_problem(error)) from None
    assert link is not None  # a string is never None
    return link


def project_id_argument(text: str) -> str:
    """An argparse ``type``: a Sentry project id (the last part of the DSN's path)."""
    try:
        return parse_project_id(text.strip())
    except ConfigurationError:
        raise argparse.ArgumentTypeError(
            f"must be a Sentry project id (digits, the last part of the DSN's path): {_shown(text)}"
        ) from None


def display_host(host: Optional[str]) -> str:
    """The host as it may be printed: without any ``user:password@`` part."""
    return without_credentials(host) if host else DEFAULT_SEGMENT_HOST


def quiet_library_logs() -> None:
    """The command line reports failures itself, in plain words, once.

    The Segment library logs every failed upload at ERROR (and ``backoff``, on 2.2, every retry);
    without a handler those would reach stderr raw. This package's own warnings (a batch Segment
    refused, and why) stay, one line each, with the write key already redacted by its filter.
    """
    logging.getLogger(SEGMENT_LOGGER).setLevel(logging.CRITICAL)
    logging.getLogger("backoff").setLevel(logging.CRITICAL)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("sentry-segment: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING)
