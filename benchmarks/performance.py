"""What SegmentIntegration costs an application, against baselines measured in the same run.

Nine scenarios, each measured process started afresh, the modes interleaved over rounds:

1. a long burst, default settings: errors as fast as they come (the rate limit drops most);
   capture time against an empty sentry-sdk Integration (target <= 1.02), with plain sentry-sdk
   against itself measured the same way beside it (the noise, aimed at 0.5 %). A process per
   mode, all alive at once, take turns 100 errors at a time in a shuffled order, so that the
   machine's drift moves every mode alike. A round is one second of ours' capture time, one
   window of its rate limit; ratios are taken between the modes' totals in each round, then
   their median over the rounds of several sets of fresh processes (each process's memory
   layout moves its speed by a per cent or so). Ours keeps the default 200/s, its limiter's
   windows counted in its own capture time: each window forwards its 200 events out of as many
   as one continuous burst captures in a second.
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
8. the price of prompt delivery: a steady 50 errors/s, the application idle in between, default
   settings: the extra process CPU per error over plain sentry-sdk (background threads and idle
   wake-ups included), in µs and, at that rate, in % of one CPU core, ours and naive. Reported,
   no target: an idle sender posts each error at once (one request per error, so a hard stop
   loses nothing), where naive holds them for up to 0.5 s and posts one request per batch.
9. a busy application: a steady 1000 errors/s, everything forwarded (rate_limit=None), where
   batches form while a request is in flight: process CPU per event, (ours - plain) /
   (naive - plain), each difference taken within a round, then its median (target <= 0.5).

Two reference modes put 1 and 6 in proportion: plain sentry-sdk measured a second time (how far
two identical runs differ here) and an empty sentry-sdk Integration (what sentry-sdk itself costs
per event for any integration: its name is serialized into every event).

The Segment-compatible receiver and redis-server stand in for servers that run elsewhere: where
the machine has two CPUs or more they are kept on the last one and the measured processes on the
first, so they take no CPU from what is measured. Prints medians, ratios and each target; asserts
nothing (the machines are shared and noisy).

    python benchmarks/performance.py           # the full run, about five and a half minutes
    python benchmarks/performance.py --quick   # fewer events and rounds (CI), same figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from typing import Any, Dict, Iterable, Iterator, List, Set, Tuple

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
# A chunked worker (scenario 1) captures in chunks, other processes running in between: the rate
# limit's windows are then seconds of its own capture time, as in one continuous burst. The first
# window ends after 0.2 s of capture, the warm-up (the parent measures from the window after).
captured_for, chunk_began = 0.8, None
def capture_clock():
    return captured_for if chunk_began is None else captured_for + time.perf_counter() - chunk_began
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
    if pace == "chunks":
        # The in-process limiter of the default settings, on the capture-time clock (its one
        # Python call per event, slower than time.monotonic, is charged to ours).
        from sentry_segment_integration.ratelimit import FixedWindowLimiter
        integration.limiter = FixedWindowLimiter(clock=capture_clock)
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
warm_up = 0 if mode in ("delivery", "shutdown") else 200 if pace in ("burst", "chunks") else 20
for n in range(warm_up):
    capture(n)
if warm_up:
    sentry_sdk.flush(10)
    if segment is not None:
        segment.flush()
if pace == "chunks":
    # Told how many errors to capture, one line at a time; each chunk ends with Sentry's flush (so
    # ours has delivered what it forwarded before another process runs), in every mode alike.
    for line in sys.stdin:
        cpu, chunk_began = time.process_time_ns(), time.perf_counter()
        started = time.perf_counter_ns()
        for n in range(int(line)):
            capture(n)
        capture_ns = time.perf_counter_ns() - started
        captured_for, chunk_began = captured_for + time.perf_counter() - chunk_began, None
        sentry_sdk.flush(10)
        print(json.dumps({"capture_ns": capture_ns, "cpu_ns": time.process_time_ns() - cpu, "clock": captured_for}),
              flush=True)
    print(json.dumps({"stats": integration.stats() if integration else None}), flush=True)
    sys.exit(0)
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
# Scenarios 2 and 6, and the references of 6: one process per run, the modes rotated over rounds.
FRESH_MODES = ("plain", "plain_again", "empty", "naive", "ours", "redis")
# Scenario 1: one process per mode alive at once, taking turns BURST_CHUNK errors at a time.
BURST_MODES = ("plain", "plain_again", "empty", "limited")
BURST_CHUNK = 100
IDLE_MODES = ("naive", "limited")  # scenario 7: the two forwarders, default settings
STEADY_MODES = ("plain", "naive", "limited")  # scenario 8
STEADY_RATE = 50  # errors per second
BUSY_MODES = ("plain", "naive", "ours")  # scenario 9: everything forwarded
BUSY_RATE = 1000  # errors per second


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
    """A Segment-compatible receiver that counts, per user id, what arrived, in how many requests
    and when; for the user ids in ``timed``, also when (``time.monotonic()``) each messageId arrived."""

    def __init__(self) -> None:
        self.arrived: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()  # batches received, per user id
        self.last_arrival: Dict[str, float] = {}
        self.timed: Set[str] = set()
        self.arrived_at: Dict[str, float] = {}
        self._lock = threading.Lock()
        self.sink = SegmentSink(on_batch=self._count, keep=False).start()

    def _count(self, batch: ReceivedBatch) -> None:
        now, monotonic_now = time.time(), time.monotonic()
        with self._lock:
            for user_id in {str(message.get("userId")) for message in batch.messages}:
                self.requests[user_id] += 1
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
        measured_command(mode, host, redis_url, run_tag, events, queue_size, pace),
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


def measured_command(
    mode: str, host: str, redis_url: str, run_tag: str, events: int, queue_size: int, pace: str
) -> List[str]:
    return [
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
    ]


class ChunkedWorker:
    """A measured process that captures a chunk of errors each time it is asked (scenario 1)."""

    def __init__(self, mode: str, host: str, run_tag: str) -> None:
        self.mode, self.tag = mode, run_tag
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed by kill or close)
        self._process = subprocess.Popen(
            measured_command(mode, host, "", run_tag, 0, 10000, "chunks"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
            env=dict(os.environ, PYTHONHASHSEED="0"),
        )

    def _answer(self) -> Any:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            self._errors.seek(0)
            raise RuntimeError(f"{self.mode} failed:\n{self._errors.read().decode(errors='replace')}")
        return json.loads(line)

    def capture(self, events: int) -> Any:
        assert self._process.stdin is not None
        self._process.stdin.write(f"{events}\n")
        self._process.stdin.flush()
        return self._answer()

    def kill(self) -> None:
        self._process.kill()
        self._process.wait()
        self._errors.close()

    def close(self) -> Any:
        """Its integration's stats (None without one), once it has flushed and ended."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        stats = self._answer()["stats"]
        self._process.wait(timeout=60)
        self._errors.close()
        return stats


def burst_rounds(
    host: str, run_tag: Iterator[str], generations: int, rounds: int
) -> Tuple[List[Dict[str, List[int]]], Dict[str, Tuple[str, Any]]]:
    """Scenario 1's rounds: per round and mode, the errors, capture and CPU nanoseconds summed.

    Each generation starts a fresh process per mode; they take turns, BURST_CHUNK errors each, in
    an order shuffled anew each turn (so no mode always follows the same one), until ours has
    captured for ``rounds`` more seconds. A round is one second of ours' capture time, one window of
    its rate limit, whose forwarded events (the first 200) it includes wherever in it they fall; every
    mode captures as many errors as ours in it.
    """
    shuffle = random.Random(0)
    measured: List[Dict[str, List[int]]] = []
    stats: Dict[str, Tuple[str, Any]] = {}
    for _ in range(generations):
        workers = {mode: ChunkedWorker(mode, host, next(run_tag)) for mode in BURST_MODES}
        by_window: Dict[int, Dict[str, List[int]]] = {}
        try:
            while True:
                order = list(workers)
                shuffle.shuffle(order)
                turn = {mode: workers[mode].capture(BURST_CHUNK) for mode in order}
                window = int(turn["limited"]["clock"])  # 0: the warm-up
                if window > rounds:
                    break
                if window > 0:
                    sums = by_window.setdefault(window, {mode: [0, 0, 0] for mode in BURST_MODES})
                    for mode, answer in turn.items():
                        sums[mode][0] += BURST_CHUNK
                        sums[mode][1] += answer["capture_ns"]
                        sums[mode][2] += answer["cpu_ns"]
        except BaseException:
            for worker in workers.values():
                worker.kill()
            raise
        measured += by_window.values()
        for mode, worker in workers.items():
            stats[mode] = (worker.tag, worker.close())
    return measured, stats


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
    parser.add_argument("--rounds", type=int, help="rounds of the fresh-process capture modes (7; quick: 2)")
    parser.add_argument("--generations", type=int, help="scenario 1: sets of fresh processes (5; quick: 1)")
    parser.add_argument("--burst-rounds", type=int, help="scenario 1: rounds (seconds) per generation (4; quick: 2)")
    arguments = parser.parse_args()
    quick = arguments.quick
    rounds = arguments.rounds or (2 if quick else 7)
    generations = arguments.generations or (1 if quick else 5)
    burst_rounds_each = arguments.burst_rounds or (2 if quick else 4)
    burst, delivery_events = (1000, 2000) if quick else (3000, 10000)
    memory_events, shutdown_queue = (12000, 1000) if quick else (100000, 10000)
    idle_events, steady_seconds, steady_rounds = (40, 2, 1) if quick else (200, 4, 3)
    busy_seconds, busy_rounds = (1, 1) if quick else (2, 5)

    keep_off_measured_cpu()
    redis = Redis() if shutil.which("redis-server") else None
    receiver = Receiver()
    unanswered = Unanswered()
    run_tag = tags()
    began = time.monotonic()
    captures: Dict[str, List[Any]] = {mode: [] for mode in FRESH_MODES}
    if redis is None:
        del captures["redis"]
        print("no redis-server on this machine: scenario 6 is left out", file=sys.stderr)

    def paced(modes: Iterable[str], rate: int, seconds: int, paced_rounds: int) -> Dict[str, List[Any]]:
        """Scenarios 8 and 9: ``rate`` errors per second for ``seconds``, the modes rotated over rounds."""
        runs: Dict[str, List[Any]] = {mode: [] for mode in modes}
        for round_number in range(paced_rounds):
            for mode in rotated(list(runs), round_number):
                tag = next(run_tag)
                result = run_measured(mode, receiver.sink.url, "", tag, rate * seconds, pace=str(rate))
                result["arrived"], result["requests"] = receiver.arrived[tag], receiver.requests[tag]
                runs[mode].append(result)
        return runs

    try:
        burst_measured, burst_stats = burst_rounds(receiver.sink.url, run_tag, generations, burst_rounds_each)
        print("long burst done", file=sys.stderr)
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
        steady = paced(STEADY_MODES, STEADY_RATE, steady_seconds, steady_rounds)
        print("steady rate done", file=sys.stderr)
        busy = paced(BUSY_MODES, BUSY_RATE, busy_seconds, busy_rounds)
        print("busy rate done", file=sys.stderr)
    finally:
        receiver.sink.stop()
        if redis is not None:
            redis.stop()

    def median(mode: str, field: str) -> float:
        return float(statistics.median(result[field] for result in captures[mode]))

    def paired_ratio(mode: str) -> float:
        """Median over rounds of this mode's capture time over plain's in the same round: the
        machine's slow drift, which moves both, cancels out."""
        return float(
            statistics.median(
                result["capture_us"] / plain["capture_us"] for result, plain in zip(captures[mode], captures["plain"])
            )
        )

    def paired_cpu_ratio(mode: str, runs: Dict[str, List[Any]]) -> float:
        """Median over rounds of (mode - plain) / (naive - plain), CPU per event, within a round."""
        return float(
            statistics.median(
                (result["cpu_us"] - plain["cpu_us"]) / max(naive["cpu_us"] - plain["cpu_us"], 1e-9)
                for result, plain, naive in zip(runs[mode], runs["plain"], runs["naive"])
            )
        )

    def paired_extra_us(mode: str, runs: Dict[str, List[Any]]) -> float:
        """Median over rounds of this mode's CPU per event minus plain's, within a round."""
        return float(
            statistics.median(result["cpu_us"] - plain["cpu_us"] for result, plain in zip(runs[mode], runs["plain"]))
        )

    def extra_ratio(mode: str, runs: Dict[str, List[Any]]) -> float:
        """Scenarios 8 and 9: (mode - plain) / (naive - plain), CPU per event, each difference taken
        within a round and its median over rounds (a ratio per round would divide by one small
        difference)."""
        return paired_extra_us(mode, runs) / max(paired_extra_us("naive", runs), 1e-9)

    def burst_ratios(mode: str, reference: str, field: int = 1) -> List[float]:
        """Scenario 1, per round: this mode's total over the reference's (the same number of errors),
        capture time (``field`` 1) or CPU (2)."""
        return [sums[mode][field] / sums[reference][field] for sums in burst_measured]

    def burst_us(mode: str, field: int) -> float:
        return statistics.median(sums[mode][field] / sums[mode][0] / 1000 for sums in burst_measured)

    import segment.analytics
    import sentry_sdk

    print()
    print(
        f"sentry-segment-integration benchmark: Python {platform.python_version()}, sentry-sdk {sentry_sdk.VERSION}, "
        f"segment-analytics-python {segment.analytics.VERSION}, {os.cpu_count()} CPUs, "
        f"{'quick run' if quick else 'full run'} in {time.monotonic() - began:.0f} s"
    )

    burst_errors = sum(sums["limited"][0] for sums in burst_measured)
    print(
        f"\nLong burst (scenario 1): {len(BURST_MODES)} processes alive at once, taking turns {BURST_CHUNK} errors at "
        f"a time in a shuffled order; {generations} generation(s) of fresh processes x {burst_rounds_each} rounds, a "
        f"round being one second of ours' capture time (one window of its rate limit); {burst_errors} errors per "
        "mode; per-round totals, medians of their ratios"
    )
    print(f"| {'mode':<34} | capture µs | CPU µs, flush included | vs plain | vs empty |")
    print(f"|{'-' * 36}|{'-' * 12}:|{'-' * 24}:|{'-' * 10}:|{'-' * 10}:|")
    for mode in BURST_MODES:
        versus = [
            f"{statistics.median(burst_ratios(mode, reference)):.4f}" if mode != reference else "-"
            for reference in ("plain", "empty")
        ]
        print(
            f"| {CAPTURE_MODES[mode]:<34} | {burst_us(mode, 1):>10.1f} | {burst_us(mode, 2):>22.1f} | "
            f"{versus[0]:>8} | {versus[1]:>8} |"
        )
    limited_tag, limited_stats = burst_stats["limited"]
    forwarded, rate_limited = limited_stats["forwarded"], limited_stats["rate_limited"]
    print(
        f"  {CAPTURE_MODES['limited']}, last generation (warm-up included): forwarded {forwarded} "
        f"({forwarded / max(forwarded + rate_limited, 1):.1%}), rate limited {rate_limited}, "
        f"arrived {receiver.arrived[limited_tag]}"
    )
    for mode, reference in (("limited", "empty"), ("plain_again", "plain")):
        quartiles = statistics.quantiles(burst_ratios(mode, reference), n=4) if len(burst_measured) > 1 else []
        spread = ", ".join(f"{value:.3f}" for value in quartiles)
        print(f"  {CAPTURE_MODES[mode]} / {CAPTURE_MODES[reference]}, per round: quartiles {spread}")

    print(f"\nCapture modes: {burst} errors as fast as they come, one process per run, {rounds} rounds, medians")
    print("(the scenario table below takes ratios within each round, then their median)")
    print(f"| {'mode':<34} | capture µs | vs plain | CPU µs/event | extra CPU vs naive |")
    print(f"|{'-' * 36}|{'-' * 12}:|{'-' * 10}:|{'-' * 14}:|{'-' * 20}:|")
    plain_capture, plain_cpu = median("plain", "capture_us"), median("plain", "cpu_us")
    naive_extra = median("naive", "cpu_us") - plain_cpu
    for mode in captures:
        capture, cpu = median(mode, "capture_us"), median(mode, "cpu_us")
        extra = f"{(cpu - plain_cpu) / naive_extra:.2f}" if mode != "plain" and naive_extra > 0 else "-"
        print(
            f"| {CAPTURE_MODES[mode]:<34} | {capture:>10.1f} | {capture / plain_capture:>8.3f} | {cpu:>12.1f} | "
            f"{extra:>18} |"
        )
    print(f"  arrived at the receiver in the last round (warm-up included): naive {captures['naive'][-1]['arrived']}")
    for mode in ("ours", "redis"):
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

    for title, rate, seconds, runs in (
        ("Steady rate, the application idle between errors", STEADY_RATE, steady_seconds, steady),
        ("Busy application, everything forwarded", BUSY_RATE, busy_seconds, busy),
    ):
        print(
            f"\n{title}: {rate} errors/s for {seconds} s ({rate * seconds} errors), process CPU from the first "
            f"error to the end of the flush, {len(runs['plain'])} round(s), medians"
        )
        print(f"| {'mode':<34} | CPU µs/event | extra CPU µs/error | extra CPU vs naive | capture µs | requests |")
        print(f"|{'-' * 36}|{'-' * 14}:|{'-' * 20}:|{'-' * 20}:|{'-' * 12}:|{'-' * 10}:|")
        for mode, results in runs.items():
            cpu = statistics.median(result["cpu_us"] for result in results)
            capture = statistics.median(result["capture_us"] for result in results)
            extra_us = f"{paired_extra_us(mode, runs):.1f}" if mode != "plain" else "-"
            extra = f"{extra_ratio(mode, runs):.2f}" if mode not in ("plain", "naive") else "-"
            requests = f"{results[-1]['requests']}" if mode != "plain" else "-"
            print(
                f"| {CAPTURE_MODES[mode]:<34} | {cpu:>12.1f} | {extra_us:>18} | {extra:>18} | {capture:>10.1f} | "
                f"{requests:>8} |"
            )
        for mode, results in runs.items():
            if mode != "plain":
                stats = results[-1]["stats"]
                forwarded = f"forwarded {stats['forwarded']}, rate limited {stats['rate_limited']}, " if stats else ""
                print(
                    f"  {CAPTURE_MODES[mode]}, last round (warm-up included): {forwarded}"
                    f"{results[-1]['arrived']} arrived in {results[-1]['requests']} requests"
                )

    print()
    row("scenario", "figure", "target", "verdict")
    row("---", "---", "---", "---")
    burst_ratio = statistics.median(burst_ratios("limited", "empty"))
    noise = statistics.median(burst_ratios("plain_again", "plain"))
    row(
        "1. long burst, default settings",
        f"capture ours/empty Integration {burst_ratio:.3f} (ours/plain "
        f"{statistics.median(burst_ratios('limited', 'plain')):.3f}; the noise: plain again/plain {noise:.4f}, "
        f"{abs(noise - 1):.2%} off)",
        "<= 1.02",
        verdict(burst_ratio, 1.02),
    )
    cpu_ratio = paired_cpu_ratio("ours", captures)
    row("2. forward everything", f"CPU (ours-plain)/(naive-plain) {cpu_ratio:.2f}", "<= 0.5", verdict(cpu_ratio, 0.5))
    row(
        "3. delivery",
        f"{arrived}/{delivery_events} arrived in {delivered_for:.2f} s, {arrived / delivered_for:.0f} events/s",
        "all arrive",
        "holds" if arrived == delivery_events else "MISSED",
    )
    memory_growth = memory["memory"]["rss_growth_mib"]
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
        references = (
            f"(plain again {paired_ratio('plain_again'):.3f}, an empty Integration {paired_ratio('empty'):.3f})"
        )
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
    ours_extra, naive_extra = paired_extra_us("limited", steady), paired_extra_us("naive", steady)
    row(
        f"8. steady {STEADY_RATE} errors/s, app idle between: the price of prompt delivery",
        f"extra CPU per error ours {ours_extra:.0f} µs, naive {naive_extra:.0f} µs: at {STEADY_RATE}/s "
        f"{ours_extra * STEADY_RATE / 1e6:.2%} and {naive_extra * STEADY_RATE / 1e6:.2%} of one core "
        f"(ratio {extra_ratio('limited', steady):.2f}; ours {steady['limited'][-1]['requests']} requests, "
        f"naive {steady['naive'][-1]['requests']})",
        "none",
        "reported",
    )
    busy_ratio = extra_ratio("ours", busy)
    row(
        f"9. busy, {BUSY_RATE} errors/s, everything forwarded",
        f"CPU (ours-plain)/(naive-plain) {busy_ratio:.2f} (ours {busy['ours'][-1]['requests']} requests, "
        f"naive {busy['naive'][-1]['requests']}, for {busy['ours'][-1]['arrived']} errors)",
        "<= 0.5",
        verdict(busy_ratio, 0.5),
    )


def row(*cells: str) -> None:
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
