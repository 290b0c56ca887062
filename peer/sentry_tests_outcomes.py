"""pytest plugin (``-p sentry_tests_outcomes``) for ``peer/run_sentry_python_tests.py``.

Writes one JSON file (``--outcomes-json PATH``) with each test's final outcome: ``passed``,
``failed`` (its call failed), ``error`` (its setup or teardown failed), ``skipped``, ``xfailed``
or ``xpassed``, with the failure's text for the failed and errored ones. Collection errors are
recorded under the collected node's id with outcome ``error``. It imports nothing of sentry_sdk
(sentry-python's tests/__init__.py asserts sentry_sdk is not imported before it).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict

_MAX_TEXT = 6000


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--outcomes-json", default=None, help="write each test's outcome to this JSON file")


class _Outcomes:
    def __init__(self, path: str) -> None:
        self.path = path
        self.tests: Dict[str, Dict[str, Any]] = {}
        self.started = time.monotonic()

    def _entry(self, nodeid: str) -> Dict[str, Any]:
        return self.tests.setdefault(nodeid, {"outcome": None, "duration": 0.0, "text": ""})

    @staticmethod
    def _text(report: Any) -> str:
        text = getattr(report, "longreprtext", "") or ""
        for name, content in getattr(report, "sections", ()):
            if "log" in name or "stderr" in name:
                text += f"\n--- {name} ---\n{content}"
        if len(text) > _MAX_TEXT:
            text = text[: _MAX_TEXT // 2] + "\n[...]\n" + text[-_MAX_TEXT // 2 :]
        return text

    def pytest_runtest_logreport(self, report: Any) -> None:
        entry = self._entry(report.nodeid)
        entry["duration"] += getattr(report, "duration", 0.0) or 0.0
        wasxfail = hasattr(report, "wasxfail")
        if report.when == "call":
            # passed, failed or skipped; xfailed or xpassed for an xfail-marked test
            outcome = ("xfailed" if report.skipped else "xpassed") if wasxfail else report.outcome
            if entry["outcome"] != "error":
                entry["outcome"] = outcome
        elif report.failed:  # setup or teardown
            entry["outcome"] = "error"
        elif report.skipped and report.when == "setup":
            entry["outcome"] = "xfailed" if wasxfail else "skipped"
        if report.failed:
            entry["text"] += f"[{report.when}]\n" + self._text(report) + "\n"

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            entry = self._entry(report.nodeid)
            entry["outcome"] = "error"
            entry["text"] += "[collection]\n" + self._text(report) + "\n"

    def pytest_sessionfinish(self, session: Any, exitstatus: Any) -> None:
        patcher = sys.modules.get("sitecustomize")
        data = {
            "exitstatus": int(exitstatus),
            "seconds": round(time.monotonic() - self.started, 1),
            "clients_given_the_integration": getattr(patcher, "clients_given_the_integration", None),
            "integration_counters": dict(getattr(patcher, "integration_counters", None) or {}),
            "tests": self.tests,
        }
        with open(self.path, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=1, sort_keys=True)


def pytest_configure(config: Any) -> None:
    path = config.getoption("outcomes_json")
    if path:
        config.pluginmanager.register(_Outcomes(path), "sentry_tests_outcomes_writer")
