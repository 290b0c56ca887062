"""The README's first command: the demo, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Each test runs the command as a subprocess: not in the quick loop (-m "not slow").
pytestmark = pytest.mark.slow


def test_demo_forwards_a_real_error_and_shows_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sentry_segment_integration", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    output = result.stdout
    start, end = output.index("\n{") + 1, output.index("\n}") + 2
    message = json.loads(output[start:end])
    assert message["event"] == "Error Captured"
    assert message["userId"] == "demo-user-42"
    assert message["properties"]["exceptionType"] == "ZeroDivisionError"
    assert message["messageId"] in output.split("Sentry received event(s):")[1].splitlines()[0]
    assert "demo_write_key" not in output
    assert '"forwarded": 1' in output


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sentry_segment_integration", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
