"""``sentry-segment replay``: saved Sentry events through the integration's rules, into Segment.

It applies exactly what the integration applies inside an application: the same qualifying rules
(:func:`rules.qualify`), the same message
(:func:`payload.build_message`), and for ``replay`` the same delivery (:class:`SegmentSender`: its
queue, sending thread and request) under the same kind of rate limit
(:class:`FixedWindowLimiter`). Events saved from Sentry's API are first brought into the SDK's
shape (:func:`saved_events.normalise_event`).

Rate limit, and why a replay waits: the integration drops what is over its budget, because an
application must never wait on analytics. A backfill is the opposite case: it wants every event
delivered and has time. So ``replay`` takes the budget with the same fixed one-second windows and,
when a window is spent, waits for the next one instead of dropping. A replay of ``n`` qualifying
events at ``--rate-limit r`` takes about ``n / r`` seconds, and never sends more than ``r`` in a
second of the real clock. The budget is the replay's own: it does not count against (and is not
counted by) a running application's, so a backfill next to live traffic should use a limit that
leaves Segment room for both.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO

from sentry_segment_integration.cli.options import EXIT_FAILED, EXIT_OK, UsageError, display_host
from sentry_segment_integration.cli.output import Progress, Style, count, print_line, table
from sentry_segment_integration.cli.saved_events import (
    BadInput,
    Item,
    SavedEvent,
    read_saved_events,
)
from sentry_segment_integration.cli.verdicts import (
    MAX_REPORTED_PROBLEMS,
    SKIP_LABELS,
    RuleOptions,
    judge_saved,
)
from sentry_segment_integration.delivery import SegmentSender
from sentry_segment_integration.payload import (
    Message,
    exception_type_of,
)
from sentry_segment_integration.ratelimit import FixedWindowLimiter
from sentry_segment_integration.settings import (
    URL_FIELD,
    DeliverySettings,
    Secret,
    repr_without_credentials,
)

# With --rate-limit-per-type, the events its cap leaves out (see ``_TypeCap``).
OVER_TYPE_CAP = "over_type_cap"
OVER_TYPE_CAP_LABEL = "over the per-type cap"
# --json lists at most this many problems.
MAX_PROBLEMS_IN_JSON = 1000
# The replay's rate limit key: its budget is its own (see the module's docstring).
_BUDGET_KEY = "replay"


@dataclass
class ReplayTally:
    """What a replay did, for its summary."""

    files: int = 0
    events: int = 0
    forwarded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    bad_input: int = 0
    problems: List[Dict[str, str]] = field(default_factory=list)
    delivery_failed: int = 0
    waited_for_rate_limit: float = 0.0
    delivered_all: bool = True
    stopped_because: str = ""
    interrupted: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_delivery_failed(self, messages: int) -> None:
        # Called by the sending thread.
        with self._lock:
            self.delivery_failed += messages


@dataclass(frozen=True, repr=False)
class ReplaySettings:
    # The write key is a Secret and the host is shown without a user:password@ part: repr() is safe
    # in a log or a traceback.
    write_key: Optional[Secret]
    host: Optional[str] = field(metadata=URL_FIELD)
    rate_limit: int
    rules: RuleOptions
    dry_run: bool
    as_json: bool
    # At the end, how long to wait for Segment to take what is queued (and, during the run, for
    # room in a full queue) before giving up.
    timeout: float
    rate_limit_per_type: Optional[int] = None

    def __repr__(self) -> str:
        return repr_without_credentials(self)


class _TypeCap:
    """``--rate-limit-per-type``: at most ``limit`` events of one exception type per second of the
    events' own time (their timestamps, in UTC), as the integration would have capped them live.

    The events' time, not the replay's: the replay reads far faster or slower than the errors came,
    and the same files replayed again leave out the same events (the messageIds stay the same).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._counts: Counter[tuple[str, str]] = Counter()

    def admits(self, event: Mapping[str, Any], message: Message) -> bool:
        second = str(message.get("timestamp", ""))[:19]  # 2026-11-26T15:29:40
        key = (exception_type_of(event), second)
        if self._counts[key] >= self._limit:
            return False
        self._counts[key] += 1
        return True


class _Budget:
    """The rate limit as a backfill wants it: wait for the next window rather than drop."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._limiter = FixedWindowLimiter(clock)
        self.waited = 0.0

    def take(self, on_wait: Callable[[], None]) -> None:
        while not self._limiter.try_acquire(_BUDGET_KEY, self._limit):
            now = self._clock()
            # Until the next window, in slices short enough to keep a progress line alive.
            pause = min(max(int(now) + 1 - now, 0.001), 0.1)
            on_wait()
            time.sleep(pause)
            self.waited += pause


def run_replay(paths: Sequence[str], settings: ReplaySettings, out: TextIO, err: TextIO) -> int:
    return _Replay(paths, settings, out, err).run()


class _Replay:
    """One run of ``replay``: read every file, judge every event, send (or print) what qualifies.

    Messages (with ``--dry-run``) go to ``out``; what a person reads while it runs (bad input,
    progress) goes to ``err``; the summary to ``out``, or to ``err`` with ``--dry-run`` so that
    ``out`` stays nothing but messages.
    """

    def __init__(self, paths: Sequence[str], settings: ReplaySettings, out: TextIO, err: TextIO) -> None:
        self.paths = paths
        self.settings = settings
        self.out = out
        self.out_is_terminal = Style(out).is_terminal
        self.err_style = Style(err)
        self.tally = ReplayTally()
        self.budget = _Budget(settings.rate_limit)
        self.type_cap = _TypeCap(settings.rate_limit_per_type) if settings.rate_limit_per_type is not None else None
        self.progress = Progress(err)
        self.sizes = _file_sizes(paths)
        self.total_bytes = max(sum(self.sizes), 1)
        self.done_bytes = 0
        self.fraction_done = 0.0
        self.sender: Optional[SegmentSender] = None
        if not settings.dry_run:
            if settings.write_key is None:  # pragma: no cover - the command line resolves it first
                raise UsageError("no write key")
            self.sender = SegmentSender(
                settings.write_key,
                DeliverySettings(host=settings.host),
                on_delivery_failed=self.tally.count_delivery_failed,
            )

    def run(self) -> int:
        tally, started = self.tally, time.monotonic()
        try:
            self._read_all()
        except KeyboardInterrupt:
            tally.stopped_because = "interrupted (Ctrl-C)"
            tally.interrupted = True
        finally:
            self.progress.clear()
            tally.waited_for_rate_limit = self.budget.waited
            self._finish_delivery()
        summary_stream = self.err_style.stream if self.settings.dry_run else self.out
        _print_summary(tally, self.settings, time.monotonic() - started, summary_stream)
        complete = tally.delivered_all and not tally.stopped_because and tally.bad_input == 0
        return EXIT_OK if complete else EXIT_FAILED

    def _read_all(self) -> None:
        tally = self.tally
        for path, size in zip(self.paths, self.sizes):
            tally.files += 1
            for item in read_saved_events(path):
                if isinstance(item, BadInput):
                    _report_problem(item, tally, self.progress, self.err_style)
                else:
                    self._replay(item)
                if tally.stopped_because:
                    return
                self._show_progress(item)
            self.done_bytes += size

    def _replay(self, item: SavedEvent) -> None:
        tally = self.tally
        verdict = judge_saved(item, self.settings.rules)
        if isinstance(verdict, BadInput):
            _report_problem(verdict, tally, self.progress, self.err_style)
            return
        # An event counts once decided (forwarded or skipped): an interrupted wait leaves it uncounted.
        if not verdict.forwarded or verdict.message is None:
            tally.events += 1
            tally.skipped[verdict.rule or "unknown"] += 1
            return
        # Checked after the other rules, as by the integration.
        if self.type_cap is not None and not self.type_cap.admits(verdict.event, verdict.message):
            tally.events += 1
            tally.skipped[OVER_TYPE_CAP] += 1
            return
        if self.sender is None:
            # --dry-run: the message instead of sending it; no rate limit, nothing waits.
            if self.out_is_terminal:
                self.progress.clear()
            print_line(json.dumps(verdict.message, ensure_ascii=False), self.out)
            tally.events += 1
            tally.forwarded += 1
            return
        self.budget.take(on_wait=self._show_progress)
        if not _enqueue(self.sender, verdict.message, self.settings.timeout):
            tally.stopped_because = (
                f"Segment took no message for {self.settings.timeout:g} s (the queue stayed full): is it reachable?"
            )
            return
        tally.events += 1
        tally.forwarded += 1
        if tally.forwarded == 1 and not self.sender.flush(self.settings.timeout):
            # The first message goes alone and is confirmed before the rest follow: a refused key or
            # an unreachable host stops the replay after one message, not after thousands.
            tally.stopped_because = (
                f"Segment did not take the first message within {self.settings.timeout:g} s "
                "(`sentry-segment check` says why)"
            )
        elif tally.delivery_failed:
            # Replaying again sends the same messageIds, so stopping early costs nothing: Segment
            # de-duplicates whatever already arrived once the cause is fixed.
            tally.stopped_because = "Segment did not accept a batch (the reason is above)"

    def _finish_delivery(self) -> None:
        sender, tally = self.sender, self.tally
        if sender is None:
            return
        # After an interruption, what is queued gets a short wait, not the whole timeout; after
        # Segment refused or never took a message, what is queued would fare no better.
        if tally.interrupted:
            wait = min(5.0, self.settings.timeout)
        else:
            wait = 0.0 if tally.stopped_because else self.settings.timeout
        try:
            tally.delivered_all = sender.flush(wait) and tally.delivery_failed == 0
        except KeyboardInterrupt:
            tally.delivered_all = False
        sender.stop()

    def _show_progress(self, item: Optional[Item] = None) -> None:
        tally = self.tally
        if item is not None:
            read, _ = item.progress
            self.fraction_done = (self.done_bytes + read) / self.total_bytes
        skipped = sum(tally.skipped.values())
        rate = tally.forwarded / max(self.progress.elapsed, 1e-9)
        verb = "shown" if self.settings.dry_run else "forwarded"
        self.progress.show(
            self.fraction_done,
            f"{count(tally.events)} events: {verb} {count(tally.forwarded)}, skipped {count(skipped)}, "
            f"bad input {count(tally.bad_input)} ({rate:,.0f}/s)",
        )


def _enqueue(sender: SegmentSender, message: Message, timeout: float) -> bool:
    """Queue the message; when the queue is full, wait for room (a backfill drops nothing)."""
    deadline = time.monotonic() + timeout
    while not sender.enqueue(message):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _report_problem(item: BadInput, tally: ReplayTally, progress: Progress, style: Style) -> None:
    tally.bad_input += 1
    if len(tally.problems) < MAX_PROBLEMS_IN_JSON:
        tally.problems.append({"where": str(item.where), "problem": item.problem})
    if tally.bad_input <= MAX_REPORTED_PROBLEMS:
        progress.clear()
        style.line(f"{item.where}: {style.warn('skipped')}: {item.problem}")
    elif tally.bad_input == MAX_REPORTED_PROBLEMS + 1:
        progress.clear()
        style.line("(more bad input: only counted from here on, see the summary)")


def _file_sizes(paths: Sequence[str]) -> List[int]:
    sizes: List[int] = []
    for path in paths:
        try:
            sizes.append(os.path.getsize(path))
        except OSError:
            sizes.append(0)
    return sizes


def _print_summary(tally: ReplayTally, settings: ReplaySettings, elapsed: float, stream: TextIO) -> None:
    labels = dict(SKIP_LABELS)
    if settings.rate_limit_per_type is not None:
        labels[OVER_TYPE_CAP] = OVER_TYPE_CAP_LABEL
    skipped = {rule: tally.skipped.get(rule, 0) for rule in labels}
    delivered = tally.forwarded - tally.delivery_failed if tally.delivered_all else None
    complete = tally.delivered_all and not tally.stopped_because and tally.bad_input == 0
    if settings.as_json:
        summary = {
            "complete": complete,
            "dry_run": settings.dry_run,
            "files": tally.files,
            "events": tally.events,
            "forwarded": tally.forwarded,
            "delivered": delivered if not settings.dry_run else None,
            "delivery_failed": tally.delivery_failed,
            "skipped": skipped,
            "bad_input": tally.bad_input,
            "problems": tally.problems,
            "stopped_because": tally.stopped_because or None,
            "host": None if settings.dry_run else display_host(settings.host),
            "rate_limit": settings.rate_limit,
            "rate_limit_per_type": settings.rate_limit_per_type,
            "waited_for_rate_limit": round(tally.waited_for_rate_limit, 3),
            "seconds": round(elapsed, 3),
        }
        print_line(json.dumps(summary), stream)
        return
    style = Style(stream)
    if settings.dry_run:
        title = f"replay --dry-run: {count(tally.events)} event(s) read from {tally.files} file(s) in {elapsed:.1f} s"
        forwarded = ("would be forwarded", f"{count(tally.forwarded)}  (the messages printed on stdout)")
    else:
        title = f"replay: {count(tally.events)} event(s) read from {tally.files} file(s) in {elapsed:.1f} s"
        target = display_host(settings.host)
        if delivered is not None:
            detail = f"{count(delivered)} delivered to {target}"
        elif tally.delivery_failed:
            detail = f"{count(tally.delivery_failed)} refused by {target}"
        else:
            detail = f"not all confirmed delivered to {target} within {settings.timeout:g} s"
        forwarded = ("forwarded", f"{count(tally.forwarded)}  ({detail})")
    rows = [forwarded]
    rows += [(f"skipped: {label}", count(skipped[rule])) for rule, label in labels.items()]
    rows.append(
        ("bad input", count(tally.bad_input) + ("  (reported above by file and line)" if tally.bad_input else ""))
    )
    if not settings.dry_run:
        rows.append(
            ("rate limit", f"{count(settings.rate_limit)}/s, waited {tally.waited_for_rate_limit:.1f} s for it")
        )
    style.line(style.strong(title))
    for line in table(rows):
        style.line(line)
    if tally.stopped_because:
        style.line(style.bad(f"{style.no} stopped: {tally.stopped_because}"))
        style.line("  Replaying the same files again is safe: the messageIds are the Sentry event ids, Segment")
        style.line("  de-duplicates what already arrived.")
    elif complete:
        verb = "would be forwarded" if settings.dry_run else "was delivered"
        style.line(style.good(f"{style.yes} done: every qualifying event {verb}"))
    else:
        style.line(style.bad(f"{style.no} incomplete: {'; '.join(_what_went_wrong(tally, settings))}"))
    if not tally.delivered_all and not tally.delivery_failed:
        style.line("  Segment could not be reached or did not answer in time: `sentry-segment check` says why.")


def _what_went_wrong(tally: ReplayTally, settings: ReplaySettings) -> List[str]:
    problems = []
    if tally.delivery_failed:
        problems.append(f"Segment refused {count(tally.delivery_failed)} message(s) (the reason is above)")
    elif not tally.delivered_all:
        problems.append(f"not all messages were confirmed delivered within {settings.timeout:g} s")
    if tally.bad_input:
        problems.append(f"{count(tally.bad_input)} unreadable input(s) skipped (listed above by file and line)")
    return problems
