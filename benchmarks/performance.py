"""What SegmentIntegration costs an application, against baselines measured in the same run.

Eight scenarios, each measured process started afresh, the capture modes interleaved over rounds:

1. burst, default settings: errors as fast as they come (the rate limit drops most); capture time
   against plain sentry-sdk (target <= 1.02).
2. forward everything (rate_limit=None): process CPU per event, background threads included,
   (ours - plain) / (naive - plain), where naive is a before_send that builds the same message
   by hand and calls Segment's Client.track() (target <= 0.5).
3. delivery: 10,000 errors with the limit off and the receiver up: how many arrive, how fast.
4. memory: 100,000 errors with Segment unreachable: peak RSS growth (target <= 30 MB).
5. shutdown with Segment unreachable and a full queue: process exit time (target <= Sentry's
   shutdown_timeout + 1 s).
6. rate_limit_storage on a local Redis: capture time against plain (target <= 1.02).
7. latency, the application idle and the receiver up: errors one at a time, 20 to 50 ms apart;
   capture to arrival at the receiver, p50 and p99, ours (default settings) and naive, whose
   Client keeps the library's default upload_interval (target: ours p50 <= 5 ms).
8. a steady 50 errors/s, default settings: process CPU per event, background threads and idle
   wake-ups included, (ours - plain) / (naive - plain) as in 2 (target <= 0.5, as 2).

Two reference modes put 1 and 6 in proportion: plain sentry-sdk measured a second time (how far
two identical runs differ here) and an empty sentry-sdk Integration (what sentry-sdk itself costs
per event for any integration: its name is serialized into every event).

The Segment-compatible receiver and redis-server stand in for servers that run elsewhere: where
the machine has two CPUs or more they are kept on the last one and the measured process on the
first, so they take no CPU from what is measured. Prints medians, ratios and each target; asserts
nothing (the machines are shared and noisy).

    python benchmarks/performance.py           # the full run, about three minutes
    python benchmarks/performance.py --quick   # fewer events and rounds (CI), same figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from typing import Any, Dict, Iterator, List, Set

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sentry_segment_integration.testing import ReceivedBatch, SegmentSink

MEASURED_SCRIPT = """
import json, os, random, resource, sys, time
if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1 and os.cpu_count() > 1:
    os.sched_setaffinity(0, {0})
import sentry_sdk
from datetime import datetime, timezone
mode, host, redis_url, run_tag, events = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
queue_size, pace = int(sys.argv[6]), sys.argv[7]
options = dict(dsn="https://k@o1.ingest.sentry.io/1", transport=lambda event: None, default_integrations=False)
integration = segment = None
if mode == "naive":
    from segment.analytics import Client
    segment = Client("bench_key", host=host)
    def before_send(event, hint):
        # The obvious hand-written forwarder: the same message as ours, through Client.track().
        user = event.get("user") or {}
        values = (event.get("exception") or {}).get("values")
        if user.get("id") is not None and values and not event.get("type"):
            request = event.get("request") or {}
            headers = request.get("headers") or {}
            url, search = request.get("url") or "", request.get("query_string") or ""
            user_agent, referer = headers.get("User-Agent", ""), headers.get("Referer", "")
            context = {"library": {"name": "sentry-segment-integration", "version": "0.1.0"}}
            properties = {"environment": event.get("environment") or "", "eventId": event["event_id"],
                          "exceptionType": values[-1].get("type") or "", "release": event.get("release") or "",
                          "transaction": event.get("transaction") or "", "level": event.get("level") or ""}
            if request:
                properties["userAgent"] = context["userAgent"] = user_agent
                properties["page"] = {"url": url, "method": request.get("method") or "", "search": search,
                                      "referer": referer}
                context["page"] = {"url": url, "path": url.split("?")[0], "search": search, "referrer": referer}
            if user.get("ip_address"):
                context["ip"] = user["ip_address"]
            segment.track(user_id=str(user["id"]), event="Error Captured", properties=properties, context=context,
                          timestamp=datetime.now(timezone.utc), message_id=event["event_id"])
        return event
    options["before_send"] = before_send
elif mode == "empty":
    from sentry_sdk.integrations import Integration
    class EmptyIntegration(Integration):
        # What sentry-sdk itself charges for any integration: its name goes into every event.
        identifier = "empty_reference"
        @staticmethod
        def setup_once():
            pass
    options["integrations"] = [EmptyIntegration()]
elif mode not in ("plain", "plain_again"):
    from sentry_segment_integration import SegmentIntegration
    settings = {"limited": {}, "redis": {"rate_limit_storage": redis_url}}.get(mode, {"rate_limit": None})
    integration = SegmentIntegration("bench_key", host=host, organization=run_tag, max_queue_size=queue_size,
                                     **settings)
    options["integrations"] = [integration]
sentry_sdk.init(**options)
sentry_sdk.set_user({"id": run_tag})

def capture(n):
    try:
        raise ValueError(n)
    except ValueError:
        return sentry_sdk.capture_exception()

def rss_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

# Paced runs warm up with fewer: 200 would spend the default budget (200/s) of the second the
# measured errors begin in.
warm_up = 0 if mode in ("delivery", "shutdown") else 200 if pace == "burst" else 20
for n in range(warm_up):
    capture(n)
if warm_up:
    sentry_sdk.flush(10)
    if segment is not None:
        segment.flush()
rss_before = rss_kib("VmRSS:")
captured_at = {}
cpu, wall = time.process_time(), time.perf_counter()
if pace == "burst":
    for n in range(events):
        capture(n)
    capture_wall = time.perf_counter() - wall
else:
    # One error at a time, the application doing nothing in between: "idle" pauses 20 to 50 ms
    # (the same pauses in every mode), a number is a steady rate of that many errors per second.
    pauses, capture_wall, due = random.Random(0), 0.0, wall
    for n in range(events):
        due = due + 1 / float(pace) if pace != "idle" else time.perf_counter() + pauses.uniform(0.02, 0.05)
        time.sleep(max(due - time.perf_counter(), 0))
        # time.monotonic is the machine's one monotonic clock, the receiver's in the parent too.
        started, started_perf = time.monotonic(), time.perf_counter()
        event_id = capture(n)
        capture_wall += time.perf_counter() - started_perf
        if pace == "idle":
            captured_at[event_id] = started
result = {"capture_us": capture_wall / events * 1e6, "captured_at": captured_at}
if mode == "shutdown":
    result["stats"] = integration.stats()
    result["ended_at"] = time.time()
    print(json.dumps(result), flush=True)
    sys.exit(0)  # what is left is Sentry's and our exit: the parent times it
if mode != "memory":
    sentry_sdk.flush(120)
if segment is not None:
    segment.flush()  # its queue is not Sentry's: without this its delivery would not be measured
result["cpu_us"] = (time.process_time() - cpu) / events * 1e6
result["flushed_s"] = time.perf_counter() - wall
result["rss_growth_mib"] = (rss_kib("VmHWM:") - rss_before) / 1024
result["stats"] = integration.stats() if integration else None
print(json.dumps(result), flush=True)
"""

CAPTURE_MODES = {
    "plain": "plain sentry-sdk",
    "plain_again": "plain sentry-sdk again (the noise)",
    "empty": "an empty sentry-sdk Integration",
    "naive": "naive before_send + Client.track",
    "ours": "ours, forward everything",
    "limited": "ours, default settings (200/s)",
    "redis": "ours, Redis storage (200/s)",
}
IDLE_MODES = ("naive", "limited")  # scenario 7: the two forwarders, default settings
STEADY_MODES = ("plain", "naive", "limited")  # scenario 8
STEADY_RATE = 50  # errors per second


def keep_off_measured_cpu() -> None:
    """This process (the receiver's threads) and what it starts on the last CPU; the measured
    processes move themselves to the first."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {(os.cpu_count() or 1) - 1})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Redis:
    def __init__(self) -> None:
        port = free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)

    def stop(self) -> None:
        self._process.kill()
        self._process.wait()


class Receiver:
    """A Segment-compatible receiver that counts, per user id, what arrived and when; for the user
    ids in ``timed``, also when (``time.monotonic()``) each messageId arrived."""

    def __init__(self) -> None:
        self.arrived: Counter[str] = Counter()
        self.last_arrival: Dict[str, float] = {}
        self.timed: Set[str] = set()
        self.arrived_at: Dict[str, float] = {}
        self._lock = threading.Lock()
        self.sink = SegmentSink(on_batch=self._count, keep=False).start()

    def _count(self, batch: ReceivedBatch) -> None:
        now, monotonic_now = time.time(), time.monotonic()
        with self._lock:
            for message in batch.messages:
                self.arrived[str(message.get("userId"))] += 1
                self.last_arrival[str(message.get("userId"))] = now
                if str(message.get("userId")) in self.timed:
                    self.arrived_at[str(message.get("messageId"))] = monotonic_now


class Unanswered:
    """Accepts connections and never answers: Segment's host reachable but hung."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(4096)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def run_measured(
    mode: str, host: str, redis_url: str, run_tag: str, events: int, queue_size: int = 10000, pace: str = "burst"
) -> Any:
    started = time.time()
    # One hash seed for every measured process: dict layouts then differ by mode only, not by luck.
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(MEASURED_SCRIPT),
            mode,
            host,
            redis_url,
            run_tag,
            str(events),
            str(queue_size),
            pace,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONHASHSEED="0"),
    )
    exited = time.time()
    if process.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{process.stderr}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    result["started_at"], result["exited_at"] = started, exited
    return result


def tags() -> Iterator[str]:
    number = 0
    while True:
        number += 1
        yield f"run-{os.getpid()}-{number}"


def verdict(value: float, target: float) -> str:
    return "holds" if value <= target else "MISSED"


def rotated(modes: List[str], round_number: int) -> List[str]:
    """Each round starts with a different mode: no mode always runs first, or after the same one."""
    start = round_number % len(modes)
    return modes[start:] + modes[:start]


def latencies_ms(result: Any, arrived_at: Dict[str, float]) -> List[float]:
    """Capture to arrival of each error of an idle run that arrived, in ms, sorted."""
    captured_at: Dict[str, float] = result["captured_at"]
    return sorted((arrived_at[event] - at) * 1000 for event, at in captured_at.items() if event in arrived_at)


def percentile(values: List[float], percent: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("inf")
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run: fewer events and rounds")
    parser.add_argument("--rounds", type=int, help="rounds of the capture modes (7; quick: 2)")
    arguments = parser.parse_args()
    quick = arguments.quick
    rounds = arguments.rounds or (2 if quick else 7)
    burst, delivery_events = (1000, 2000) if quick else (3000, 10000)
    memory_events, shutdown_queue = (20000, 1000) if quick else (100000, 10000)
    idle_events, steady_seconds, steady_rounds = (50, 2, 1) if quick else (200, 4, 3)

    keep_off_measured_cpu()
    redis = Redis() if shutil.which("redis-server") else None
    receiver = Receiver()
    unanswered = Unanswered()
    run_tag = tags()
    began = time.monotonic()
    captures: Dict[str, List[Any]] = {mode: [] for mode in CAPTURE_MODES}
    if redis is None:
        del captures["redis"]
        print("no redis-server on this machine: scenario 6 is left out", file=sys.stderr)
    try:
        for round_number in range(rounds):
            for mode in rotated(list(captures), round_number):
                tag = next(run_tag)
                result = run_measured(mode, receiver.sink.url, redis.url if redis else "", tag, burst)
                result["arrived"] = receiver.arrived[tag]  # both forwarders flush before their process ends
                captures[mode].append(result)
            print(f"capture modes: round {round_number + 1}/{rounds} done", file=sys.stderr)
        delivery_tag = next(run_tag)
        delivery = run_measured("delivery", receiver.sink.url, "", delivery_tag, delivery_events, delivery_events)
        deadline = time.monotonic() + 30
        while receiver.arrived[delivery_tag] < delivery_events and time.monotonic() < deadline:
            time.sleep(0.05)
        arrived = receiver.arrived[delivery_tag]
        delivered_for = receiver.last_arrival.get(delivery_tag, time.time()) - delivery["started_at"]
        print("delivery done", file=sys.stderr)
        memory = {
            mode: run_measured(mode, closed_port_url(), "", next(run_tag), memory_events)
            for mode in ("plain", "memory")
        }
        print("memory done", file=sys.stderr)
        shutdowns = {
            name: run_measured("shutdown", url, "", next(run_tag), 2 * shutdown_queue, shutdown_queue)
            for name, url in (("refused", closed_port_url()), ("hung", unanswered.url))
        }
        print("shutdown done", file=sys.stderr)
        idle: Dict[str, Any] = {}
        for mode in IDLE_MODES:
            tag = next(run_tag)
            receiver.timed.add(tag)
            idle[mode] = run_measured(mode, receiver.sink.url, "", tag, idle_events, pace="idle")
            # Both forwarders flush before their process ends: this wait is only a safeguard.
            deadline = time.monotonic() + 10
            while len(latencies_ms(idle[mode], receiver.arrived_at)) < idle_events and time.monotonic() < deadline:
                time.sleep(0.05)
            idle[mode]["latencies_ms"] = latencies_ms(idle[mode], receiver.arrived_at)
        print("idle latency done", file=sys.stderr)
        steady: Dict[str, List[Any]] = {mode: [] for mode in STEADY_MODES}
        for round_number in range(steady_rounds):
            for mode in rotated(list(steady), round_number):
                steady_events = STEADY_RATE * steady_seconds
                tag = next(run_tag)
                steady[mode].append(
                    run_measured(mode, receiver.sink.url, "", tag, steady_events, pace=str(STEADY_RATE))
                )
        print("steady rate done", file=sys.stderr)
    finally:
        receiver.sink.stop()
        if redis is not None:
            redis.stop()

    def median(mode: str, field: str) -> float:
        return statistics.median(result[field] for result in captures[mode])

    def paired_ratio(mode: str) -> float:
        """Median over rounds of this mode's capture time over plain's in the same round: the
        machine's slow drift, which moves both, cancels out."""
        return statistics.median(
            result["capture_us"] / plain["capture_us"] for result, plain in zip(captures[mode], captures["plain"])
        )

    def paired_cpu_ratio(mode: str, runs: Dict[str, List[Any]]) -> float:
        """Median over rounds of (mode - plain) / (naive - plain), CPU per event, within a round."""
        return statistics.median(
            (result["cpu_us"] - plain["cpu_us"]) / max(naive["cpu_us"] - plain["cpu_us"], 1e-9)
            for result, plain, naive in zip(runs[mode], runs["plain"], runs["naive"])
        )

    import segment.analytics
    import sentry_sdk

    print()
    print(
        f"sentry-segment-integration benchmark: Python {platform.python_version()}, sentry-sdk {sentry_sdk.VERSION}, "
        f"segment-analytics-python {segment.analytics.VERSION}, {os.cpu_count()} CPUs, "
        f"{'quick run' if quick else 'full run'} in {time.monotonic() - began:.0f} s"
    )
    print(f"\nCapture modes: {burst} errors as fast as they come, one process per run, {rounds} rounds, medians")
    print("(the scenario table below takes ratios within each round, then their median)")
    print(f"| {'mode':<34} | capture µs | vs plain | CPU µs/event | extra CPU vs naive |")
    print(f"|{'-' * 36}|{'-' * 12}:|{'-' * 10}:|{'-' * 14}:|{'-' * 20}:|")
    plain_capture, plain_cpu = median("plain", "capture_us"), median("plain", "cpu_us")
    naive_extra = median("naive", "cpu_us") - plain_cpu
    for mode, label in CAPTURE_MODES.items():
        if mode not in captures:
            continue
        capture, cpu = median(mode, "capture_us"), median(mode, "cpu_us")
        extra = f"{(cpu - plain_cpu) / naive_extra:.2f}" if mode != "plain" and naive_extra > 0 else "-"
        print(f"| {label:<34} | {capture:>10.1f} | {capture / plain_capture:>8.3f} | {cpu:>12.1f} | {extra:>18} |")
    print(f"  arrived at the receiver in the last round (warm-up included): naive {captures['naive'][-1]['arrived']}")
    for mode in ("ours", "limited", "redis"):
        if mode in captures:
            stats, received = captures[mode][-1]["stats"], captures[mode][-1]["arrived"]
            forwarded, rate_limited = stats["forwarded"], stats["rate_limited"]
            print(f"  {CAPTURE_MODES[mode]}: forwarded {forwarded}, rate limited {rate_limited}, arrived {received}")

    print(f"\nIdle application: {idle_events} errors one at a time, 20-50 ms apart, receiver up, one run per mode")
    print("(capture_exception called to the batch's arrival at the receiver, both on time.monotonic())")
    for mode, result in idle.items():
        values = result["latencies_ms"]
        stats = f"; forwarded {result['stats']['forwarded']} (warm-up included)" if result["stats"] else ""
        print(
            f"  {CAPTURE_MODES[mode]}: p50 {percentile(values, 50):.1f} ms, p99 {percentile(values, 99):.1f} ms, "
            f"max {max(values, default=float('inf')):.1f} ms; {len(values)}/{idle_events} arrived{stats}"
        )

    print(
        f"\nSteady rate: {STEADY_RATE} errors/s for {steady_seconds} s ({STEADY_RATE * steady_seconds} errors), "
        f"process CPU from the first error to the end of the flush, {steady_rounds} round(s), medians"
    )
    print(f"| {'mode':<34} | CPU µs/event | extra CPU vs naive | capture µs |")
    print(f"|{'-' * 36}|{'-' * 14}:|{'-' * 20}:|{'-' * 12}:|")
    steady_plain = statistics.median(result["cpu_us"] for result in steady["plain"])
    steady_extra = statistics.median(result["cpu_us"] for result in steady["naive"]) - steady_plain
    for mode, results in steady.items():
        cpu = statistics.median(result["cpu_us"] for result in results)
        capture = statistics.median(result["capture_us"] for result in results)
        extra = f"{(cpu - steady_plain) / steady_extra:.2f}" if mode != "plain" and steady_extra > 0 else "-"
        print(f"| {CAPTURE_MODES[mode]:<34} | {cpu:>12.1f} | {extra:>18} | {capture:>10.1f} |")
    steady_stats = steady["limited"][-1]["stats"]
    print(
        f"  {CAPTURE_MODES['limited']}, last round (warm-up included): forwarded {steady_stats['forwarded']}, "
        f"rate limited {steady_stats['rate_limited']}"
    )

    burst_ratio = paired_ratio("limited")
    cpu_ratio = paired_cpu_ratio("ours", captures)
    memory_growth = memory["memory"]["rss_growth_mib"]
    print()
    row("scenario", "figure", "target", "verdict")
    row("---", "---", "---", "---")
    references = f"(plain again {paired_ratio('plain_again'):.3f}, an empty Integration {paired_ratio('empty'):.3f})"
    row(
        "1. burst, default settings",
        f"capture ours/plain {burst_ratio:.3f} {references}",
        "<= 1.02",
        verdict(burst_ratio, 1.02),
    )
    row("2. forward everything", f"CPU (ours-plain)/(naive-plain) {cpu_ratio:.2f}", "<= 0.5", verdict(cpu_ratio, 0.5))
    row(
        "3. delivery",
        f"{arrived}/{delivery_events} arrived in {delivered_for:.2f} s, {arrived / delivered_for:.0f} events/s",
        "all arrive",
        "holds" if arrived == delivery_events else "MISSED",
    )
    row(
        "4. memory, Segment unreachable",
        f"{memory_events} errors: peak RSS +{memory_growth:.1f} MiB (plain sentry-sdk "
        f"+{memory['plain']['rss_growth_mib']:.1f} MiB; {memory['memory']['stats']['queue_full']} dropped, queue full)",
        "<= 30 MB",
        verdict(memory_growth * 1.048576, 30),
    )
    for name, result in shutdowns.items():
        exit_seconds = result["exited_at"] - result["ended_at"]
        what = "refuses connections" if name == "refused" else "connects, never answers"
        row(
            f"5. shutdown, Segment {what}, queue full",
            f"exit {exit_seconds:.2f} s ({result['stats']['queue_full']} dropped)",
            "<= 2 + 1 s",
            verdict(exit_seconds, 3.0),
        )
    if "redis" in captures:
        redis_ratio = paired_ratio("redis")
        row(
            "6. Redis storage",
            f"capture ours/plain {redis_ratio:.3f} {references}",
            "<= 1.02",
            verdict(redis_ratio, 1.02),
        )
    ours_idle, naive_idle = idle["limited"]["latencies_ms"], idle["naive"]["latencies_ms"]
    row(
        "7. latency, app idle, receiver up",
        f"capture to arrival p50 {percentile(ours_idle, 50):.1f} ms, p99 {percentile(ours_idle, 99):.1f} ms "
        f"(naive p50 {percentile(naive_idle, 50):.1f} ms, p99 {percentile(naive_idle, 99):.1f} ms)",
        "p50 <= 5 ms",
        verdict(percentile(ours_idle, 50), 5),
    )
    steady_ratio = paired_cpu_ratio("limited", steady)
    row(
        f"8. steady {STEADY_RATE} errors/s, default settings",
        f"CPU (ours-plain)/(naive-plain) {steady_ratio:.2f}",
        "<= 0.5, as 2.",
        verdict(steady_ratio, 0.5),
    )


def row(*cells: str) -> None:
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
