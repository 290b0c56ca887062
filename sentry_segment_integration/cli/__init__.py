"""The command line, ``sentry-segment``: one module per command, their shared options and output."""

from sentry_segment_integration.cli.main import main

__all__ = ["main"]
