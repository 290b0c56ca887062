"""What the subcommands share: usage errors, the write key and host options, quiet library logs."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Tuple

from sentry_segment_integration.delivery import SEGMENT_LOGGER, logger
from sentry_segment_integration.ratelimit import without_credentials
from sentry_segment_integration.settings import (
    HOST_ENV,
    WRITE_KEY_ENV,
    ConfigurationError,
    Secret,
    parse_host,
    parse_write_key,
)

DEFAULT_SEGMENT_HOST = "https://api.segment.io"
# Exit codes that scripts can rely on.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The command line asks for something that cannot be done as given: exit code 2."""


def resolve_write_key(given: Optional[str]) -> Tuple[Secret, str]:
    """The write key and where it came from (``--write-key`` or the environment), for display.

    Messages never repeat the key, not even a malformed one: it may be a real key mistyped.
    """
    value = given if given is not None else os.environ.get(WRITE_KEY_ENV)
    source = "--write-key" if given is not None else WRITE_KEY_ENV
    if not value:
        raise UsageError(
            f"no write key: set {WRITE_KEY_ENV} (or pass --write-key) to the write key of your Segment source "
            "(Segment: Connections > Sources > the source > Settings > API Keys)"
        )
    try:
        return parse_write_key(value, from_env=False), source
    except ConfigurationError:
        raise UsageError(
            f"the write key from {source} is not a Segment write key: expected only letters, digits, '-' and '_'"
        ) from None


def resolve_host(given: Optional[str]) -> Optional[str]:
    """``--host``, else ``SEGMENT_HOST``, else None (the Segment library's default host)."""
    try:
        return parse_host(given)
    except ConfigurationError:
        raise UsageError(
            f"--host (or {HOST_ENV}) must be an http:// or https:// URL such as https://events.eu1.segmentapis.com"
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
