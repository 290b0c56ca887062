#!/usr/bin/env python3
"""Run a fixed subset of sentry-python's own core tests twice, plain and with ``SegmentIntegration``
added to every Sentry client, and report each test that passes plain but not with the integration.

The tests come from the sentry-sdk source distribution on the package index (it ships ``tests/``),
downloaded at run time; nothing of sentry-python is kept in this repository. Steps:

1. a venv (``--venv PATH``: created there if missing, else reused; by default a temporary one)
   gets sentry-sdk==VERSION (``--sentry-sdk-version``, by default the newest release), this repo
   (``pip install -e``) and the test requirements below;
2. ``pip download --no-deps --no-binary :all: sentry-sdk==VERSION``, unpacked in a temporary dir;
3. ``pytest`` runs ``TEST_FILES`` there twice. The second run puts ``peer/segment_everywhere`` on
   ``PYTHONPATH`` with ``SENTRY_SEGMENT_EVERYWHERE=1``: its ``sitecustomize`` wraps
   ``sentry_sdk.Client.__init__`` to append
   ``SegmentIntegration(write_key="peer_test_key", host="http://127.0.0.1:9")`` to the
   ``integrations`` option of every client, in pytest and in any Python subprocess a test starts;
   pytest runs in the unpacked sdist, so its tests import the sdist's own copy of ``sentry_sdk``
   (the same release as the one installed, which this repo's editable install needs);
4. per-test outcomes (``peer/sentry_tests_outcomes.py``, a pytest plugin loaded in both runs) are
   compared. A test that differs is run again alone, in both modes, to tell a real difference from
   a flaky one. The differences named in ``peer/expected_differences.txt`` (node id, `` -- ``, the
   reason) are expected.

Exit status: 0 when no test differs but the expected ones, 1 when one does (or the run with the
integration never gave a client the integration), 2 when the set-up failed (the sdist or a
requirement could not be had).

Usage: python peer/run_sentry_python_tests.py [--venv PATH] [--sentry-sdk-version X.Y.Z]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

PEER = Path(__file__).resolve().parent
REPO = PEER.parent
ALLOWLIST = PEER / "expected_differences.txt"
EVERYWHERE = PEER / "segment_everywhere"

# Core tests that build clients and send through transports: errors, messages, transactions,
# sessions, check-ins, logs, the transport's health monitor, PII and scrubbing options (what decides
# whether and how an event is forwarded). About 700 tests; each run takes 1.5 to 2.5 minutes on
# 2 shared cores, the whole script under 4 minutes with a new venv. Paths are relative to the
# sdist's root.
TEST_FILES = (
    "tests/test_client.py",
    "tests/test_transport.py",
    "tests/test_basics.py",
    "tests/test_scope.py",
    "tests/test_api.py",
    "tests/test_envelope.py",
    "tests/test_sessions.py",
    "tests/test_monitor.py",
    "tests/test_crons.py",
    "tests/test_logs.py",
    "tests/test_dsc.py",
    "tests/test_scrubber.py",
    "tests/test_data_collection.py",
)

# sentry-python's requirements-testing.txt (its repository, not the sdist) and the "common"
# tox environment's pytest-asyncio; pytest-timeout is ours (a hung test fails rather than stalls
# the run). pytest < 9: pytest 9 breaks pytest-forked. Left out of theirs: pytest-cov (its
# addopts, which need it, are overridden), pytest-watch and docker (unused by these tests).
TEST_REQUIREMENTS = (
    "pytest>=8.4,<9",
    "pytest-forked",
    "pytest-localserver",
    "pytest-asyncio",
    "pytest-timeout",
    "responses",
    "jsonschema",
    "executing",
    "asttokens",
    "pysocks",
    "socksio",
    "httpcore[http2,asyncio]",
    "brotli",
    "setuptools",
)


def log(message: str) -> None:
    print(message, flush=True)


class SetupError(Exception):
    pass


def run(command: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), text=True, capture_output=True, **kwargs)


def pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_PROGRESS_BAR="off")
    return run([str(python), "-m", "pip", *args], env=env)


def venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def newest_version(python: Path) -> str:
    answer = pip(python, "index", "versions", "sentry-sdk")
    match = re.search(r"^sentry-sdk \(([^)]+)\)", answer.stdout, re.MULTILINE)
    if answer.returncode != 0 or not match:
        raise SetupError(f"could not learn the newest sentry-sdk release from the package index:\n{answer.stderr}")
    return match.group(1)


def create_venv(path: Path, interpreter: str) -> Path:
    python = venv_python(path)
    if python.exists():
        log(f"== reusing the venv {path}")
    else:
        log(f"== creating the venv {path} ({interpreter})")
        answer = run([interpreter, "-m", "venv", str(path)])
        if answer.returncode != 0 or not python.exists():
            raise SetupError(f"could not create a venv with {interpreter}:\n{answer.stderr}")
    return python


def install_requirements(python: Path, version: str) -> None:
    requirements = [f"sentry-sdk=={version}", "-e", str(REPO), *TEST_REQUIREMENTS]
    log("== installing: " + " ".join(requirements))
    answer = pip(python, "install", "-q", *requirements)
    if answer.returncode != 0:
        raise SetupError(f"pip could not install the requirements:\n{answer.stdout}\n{answer.stderr}")
    # The editable install of this repo may have pulled another sentry-sdk; the one under test wins.
    installed = run([str(python), "-c", "import sentry_sdk; print(sentry_sdk.VERSION)"]).stdout.strip()
    if installed != version:
        raise SetupError(f"the venv has sentry-sdk {installed!r}, not {version}")


def unpack_sdist(python: Path, version: str, into: Path) -> Path:
    log(f"== downloading the source distribution of sentry-sdk {version}")
    downloads = into / "download"
    answer = pip(
        python, "download", "-q", "--no-deps", "--no-binary", ":all:", f"sentry-sdk=={version}", "-d", str(downloads)
    )
    archives = sorted(downloads.glob("sentry_sdk-*.tar.gz")) + sorted(downloads.glob("sentry-sdk-*.tar.gz"))
    if answer.returncode != 0 or not archives:
        raise SetupError(
            f"the source distribution of sentry-sdk {version} cannot be had from the package index:\n{answer.stderr}"
        )
    with tarfile.open(archives[0]) as archive:
        if hasattr(tarfile, "data_filter"):  # 3.12, and the security releases of 3.9-3.11
            archive.extractall(into, filter="data")
        else:
            archive.extractall(into)
    roots = [path for path in into.iterdir() if path.is_dir() and path.name.lower().startswith("sentry")]
    root = next((path for path in roots if (path / "tests" / "conftest.py").is_file()), None)
    if root is None:
        raise SetupError(f"the source distribution of sentry-sdk {version} has no tests/ folder")
    return root


def tests_in(root: Path, tests: Sequence[str]) -> List[str]:
    """The test files (or node ids) that this release's sdist has; the others are named and left
    out (a release may move or drop one: 3.0 has no tests/test_scrubber.py). None there: set-up fails."""
    present = [test for test in tests if (root / test.split("::", 1)[0]).exists()]
    missing = [test for test in tests if test not in present]
    if missing:
        log(f"   not in this release's tests, left out: {' '.join(missing)}")
    if not present:
        raise SetupError("none of the test files is in this release's tests/")
    return present


def clean_environment() -> Dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # Sentry's and Segment's own settings (a DSN, a write key or host) would change either run;
        # a proxy would take the integration's requests (to a closed local port) elsewhere.
        if not key.startswith(("SENTRY_", "SEGMENT_", "PYTEST_"))
        and key not in ("PYTHONPATH", "PYTHONSTARTUP", "COVERAGE_PROCESS_START")
        and key.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@dataclass
class Run:
    """One pytest run: each test's outcome (and failure text), and how the process ended."""

    tests: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    exit_status: Optional[int] = None
    seconds: float = 0.0
    clients_given_the_integration: Optional[int] = None
    integration_counters: Dict[str, int] = field(default_factory=dict)
    # Why there are no outcomes (pytest crashed before the end), or why it did not end (hung).
    broken: str = ""

    def outcome(self, nodeid: str) -> str:
        entry = self.tests.get(nodeid)
        return "missing" if entry is None else str(entry.get("outcome"))


def run_pytest(
    python: Path,
    root: Path,
    tests: Sequence[str],
    with_integration: bool,
    outcomes: Path,
    log_file: Path,
    test_timeout: int,
    run_timeout: int,
) -> Run:
    env = clean_environment()
    paths = [str(PEER)]
    if with_integration:
        paths.insert(0, str(EVERYWHERE))
        env["SENTRY_SEGMENT_EVERYWHERE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(paths)
    command = [
        str(python),
        "-m",
        "pytest",
        # sentry-python's addopts ask for coverage (pytest-cov) and -s; ours instead.
        "-o",
        "addopts=",
        "-p",
        "no:cacheprovider",
        "-p",
        "sentry_tests_outcomes",
        "--outcomes-json",
        str(outcomes),
        f"--timeout={test_timeout}",
        "-q",
        "-rfE",
        "--tb=short",
        *tests,
    ]
    outcomes.unlink(missing_ok=True)
    started = time.monotonic()
    result = Run()
    with open(log_file, "w", encoding="utf-8") as output:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            result.exit_status = process.wait(timeout=run_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: pytest and what it started
            process.wait()
            result.broken = f"pytest had not ended after {run_timeout} s and was killed"
    result.seconds = round(time.monotonic() - started, 1)
    if outcomes.is_file():
        data = json.loads(outcomes.read_text(encoding="utf-8"))
        result.tests = data["tests"]
        result.clients_given_the_integration = data.get("clients_given_the_integration")
        result.integration_counters = data.get("integration_counters") or {}
    elif not result.broken:
        result.broken = f"pytest (exit {result.exit_status}) ended before writing its outcomes"
    if result.broken:
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
        result.broken += f"; the end of its output ({log_file}):\n{tail}"
    return result


def read_allowlist(path: Path) -> Dict[str, str]:
    expected: Dict[str, str] = {}
    if not path.is_file():
        return expected
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        nodeid, separator, reason = line.partition(" -- ")
        if not separator or not reason.strip():
            raise SetupError(f"{path}:{number}: expected '<test node id> -- <reason>', got {line!r}")
        expected[nodeid.strip()] = reason.strip()
    return expected


def totals(run: Run) -> str:
    counts: Dict[str, int] = {}
    for entry in run.tests.values():
        outcome = str(entry.get("outcome"))
        counts[outcome] = counts.get(outcome, 0) + 1
    order = ["passed", "failed", "error", "skipped", "xfailed", "xpassed"]
    names = order + sorted(set(counts) - set(order))
    # "passed=N": not the "N passed, N failed" shape of a test runner's closing line.
    return ", ".join(f"{name}={counts.get(name, 0)}" for name in names if counts.get(name) or name in order[:4])


FAILING = ("failed", "error")


def differs(plain: str, segment: str) -> bool:
    """Passes plain and not with the integration (fails, errs, is skipped or is gone), or fails only
    with it (skipped plain, or a node such as a collection error that only the run with it has)."""
    if plain == "passed":
        return segment != "passed"
    return plain in ("skipped", "xfailed", "missing") and segment in FAILING


def first_lines(text: str, count: int = 30) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join("      " + line for line in lines[:count])


class Suite:
    def __init__(self, python: Path, root: Path, work: Path, args: argparse.Namespace) -> None:
        self.python, self.root, self.work, self.args = python, root, work, args

    def run(self, tests: Sequence[str], with_integration: bool, name: str) -> Run:
        return run_pytest(
            self.python,
            self.root,
            tests,
            with_integration,
            self.work / f"{name}.json",
            self.work / f"{name}.log",
            self.args.timeout,
            self.args.run_timeout,
        )

    def again_alone(self, nodeid: str) -> Optional[str]:
        """None if the difference is seen again with the test run alone; else what was seen."""
        for _ in range(self.args.reruns):
            plain = self.run([nodeid], False, "rerun-plain").outcome(nodeid)
            segment = self.run([nodeid], True, "rerun-segment").outcome(nodeid)
            if not differs(plain, segment):
                return f"run again alone: plain {plain}, with the integration {segment}"
        return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--venv", type=Path, help="venv to create, or reuse if it exists (default: a temporary one)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for a new venv (default: this one)")
    parser.add_argument("--sentry-sdk-version", help="the release under test (default: the newest)")
    parser.add_argument("--tests", nargs="+", default=list(TEST_FILES), help="test files or node ids (sdist-relative)")
    parser.add_argument("--allowlist", type=Path, default=ALLOWLIST, help="expected differences")
    parser.add_argument("--timeout", type=int, default=120, help="seconds one test may take (pytest-timeout)")
    parser.add_argument("--run-timeout", type=int, default=1200, help="seconds one pytest run may take")
    parser.add_argument("--reruns", type=int, default=1, help="times a differing test is run again alone")
    parser.add_argument("--keep", type=Path, help="keep the unpacked sdist, logs and outcome files in this folder")
    args = parser.parse_args(argv)
    started = time.monotonic()

    work = Path(tempfile.mkdtemp(prefix="sentry-python-tests-")) if args.keep is None else args.keep.resolve()
    work.mkdir(parents=True, exist_ok=True)
    venv_path = args.venv.resolve() if args.venv else work / "venv"
    try:
        expected = read_allowlist(args.allowlist)
        python = create_venv(venv_path, args.python)
        version = args.sentry_sdk_version or newest_version(python)
        log(f"== sentry-sdk under test: {version}{'' if args.sentry_sdk_version else ' (the newest release)'}")
        install_requirements(python, version)
        root = unpack_sdist(python, version, work)
        suite = Suite(python, root, work, args)

        args.tests = tests_in(root, args.tests)
        log(f"== pytest, plain: {' '.join(args.tests)} (log: {work / 'plain.log'})")
        plain = suite.run(args.tests, False, "plain")
        log(f"   {plain.seconds} s, pytest exit {plain.exit_status}")
        if plain.broken:
            raise SetupError(f"the plain run broke: {plain.broken}")
        if not plain.tests:
            raise SetupError(f"the plain run ran no test (pytest exit {plain.exit_status}): see {work / 'plain.log'}")
        log(f"== pytest, with the integration (log: {work / 'segment.log'})")
        segment = suite.run(args.tests, True, "segment")
        log(f"   {segment.seconds} s, pytest exit {segment.exit_status}")
    except SetupError as error:
        log(f"SET-UP FAILED: {error}")
        return 2
    finally:
        if args.keep is None and "segment" not in locals():
            shutil.rmtree(work, ignore_errors=True)
    try:
        return report(suite, plain, segment, expected, version, started)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def report(suite: Suite, plain: Run, segment: Run, expected: Dict[str, str], version: str, started: float) -> int:
    args = suite.args
    candidates = sorted(
        nodeid
        for nodeid in set(plain.tests) | set(segment.tests)
        if differs(plain.outcome(nodeid), segment.outcome(nodeid))
    )
    confirmed: List[str] = []
    unconfirmed: List[Tuple[str, str]] = []
    for nodeid in candidates:
        # Expected ones, and collection errors (a file's node id), are not run again.
        seen = None if nodeid in expected or "::" not in nodeid or segment.broken else suite.again_alone(nodeid)
        if seen is None:
            confirmed.append(nodeid)
        else:
            unconfirmed.append((nodeid, seen))

    log("")
    log(f"== totals (sentry-sdk {version}, {len(args.tests)} test files or ids)")
    log(f"plain run: {totals(plain)} ({plain.seconds} s)")
    log(f"run with the integration: {totals(segment)} ({segment.seconds} s)")
    log(f"clients given the integration in that run (pytest's process): {segment.clients_given_the_integration}")
    counters = ", ".join(f"{name}={count}" for name, count in sorted(segment.integration_counters.items()))
    log(f"their integrations' counters, summed: {counters or 'none'}")
    if segment.integration_counters.get("internal_error"):
        log("NOTE: the integration counted internal errors (logged by 'sentry_segment_integration'); see segment.log")

    both = sorted(
        nodeid for nodeid in plain.tests if plain.outcome(nodeid) in FAILING and segment.outcome(nodeid) in FAILING
    )
    if both:
        log(f"\nfail in both runs, so not because of the integration ({len(both)}):")
        for nodeid in both:
            log(f"  {nodeid}: {plain.outcome(nodeid)}")
    only_plain = sorted(n for n in plain.tests if plain.outcome(n) in FAILING and segment.outcome(n) == "passed")
    if only_plain:
        log(f"\nfail plain, pass with the integration (flaky?; {len(only_plain)}):")
        for nodeid in only_plain:
            log(f"  {nodeid}")

    unexpected = [nodeid for nodeid in confirmed if nodeid not in expected]
    seen_expected = [nodeid for nodeid in confirmed if nodeid in expected]
    if seen_expected:
        log(f"\nexpected differences ({len(seen_expected)}, from {args.allowlist.name}):")
        for nodeid in seen_expected:
            log(f"  {nodeid}: {segment.outcome(nodeid)} -- {expected[nodeid]}")
    gone = sorted(set(expected) - set(seen_expected))
    if gone:
        log(f"\nlisted as expected, but not differing in this run ({len(gone)}; the list may be out of date):")
        for nodeid in gone:
            log(f"  {nodeid}: plain {plain.outcome(nodeid)}, with the integration {segment.outcome(nodeid)}")
    if unconfirmed:
        log(f"\ndiffered in the full run, not when run again alone (flaky or order-dependent; {len(unconfirmed)}):")
        for nodeid, seen in unconfirmed:
            log(f"  {nodeid}: plain {plain.outcome(nodeid)}, with the integration {segment.outcome(nodeid)}; {seen}")
            log(first_lines(str(segment.tests.get(nodeid, {}).get("text", "")), 12))
    if unexpected:
        log(f"\nUNEXPECTED: pass plain, not with the integration ({len(unexpected)}):")
        for nodeid in unexpected:
            log(f"  {nodeid}: plain {plain.outcome(nodeid)}, with the integration {segment.outcome(nodeid)}")
            log(first_lines(str(segment.tests.get(nodeid, {}).get("text", ""))))

    log(f"\n({time.monotonic() - started:.0f} s in all; work folder: {suite.work}{'' if args.keep else ', removed'})")
    if segment.broken:
        log(f"FAILED: the run with the integration broke, the plain one did not: {segment.broken}")
        return 1
    if not segment.clients_given_the_integration:
        log("FAILED: the run with the integration gave no client the integration: the patch did not apply")
        return 1
    if unexpected:
        log(f"FAILED: {len(unexpected)} test(s) of sentry-python differ only because of SegmentIntegration")
        return 1
    log("OK: no test of sentry-python differs because of SegmentIntegration, but the expected ones")
    return 0


if __name__ == "__main__":
    sys.exit(main())
