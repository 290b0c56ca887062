"""What the integration costs the capturing thread, against baselines measured in the same run.

Each mode runs in its own process, the modes interleaved over several rounds; the Segment-compatible
receiver (and redis-server, when installed) run outside those processes. Prints medians and ratios;
asserts nothing about time (the machines are shared and noisy).

    python benchmarks/capture_cost.py [--events 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sentry_segment_integration.sink import SegmentSink

MODE_SCRIPT = """
import json, sys, time, sentry_sdk
from datetime import datetime, timezone
mode, sink_url, redis_url, events = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = dict(dsn="https://k@o1.ingest.sentry.io/1", transport=lambda event: None, default_integrations=False)
integration = None
if mode == "naive":
    from segment.analytics import Client
    segment = Client("bench_key", host=sink_url, upload_interval=0.05)
    def before_send(event, hint):
        user = event.get("user") or {}
        values = (event.get("exception") or {}).get("values") or [{}]
        if user.get("id") and not event.get("type"):
            segment.track(
                user_id=str(user["id"]), event="Error Captured", message_id=event["event_id"],
                timestamp=datetime.now(timezone.utc),
                properties={"eventId": event["event_id"], "environment": event.get("environment") or "",
                            "release": event.get("release") or "", "level": event.get("level") or "",
                            "transaction": event.get("transaction") or "",
                            "exceptionType": values[-1].get("type", "")},
            )
        return event
    options["before_send"] = before_send
elif mode != "plain":
    from sentry_segment_integration import SegmentIntegration
    settings = {"ours": {"rate_limit": None}, "ours-limited": {}, "ours-redis": {"rate_limit_storage": redis_url},
                "ours-redis-unlimited": {"rate_limit_storage": redis_url, "rate_limit": 10**9}}[mode]
    integration = SegmentIntegration("bench_key", host=sink_url, upload_interval=0.05, organization=mode, **settings)
    options["integrations"] = [integration]
sentry_sdk.init(**options)
sentry_sdk.set_user({"id": "bench-user"})
def capture(n):
    try:
        raise ValueError(n)
    except ValueError:
        sentry_sdk.capture_exception()
for n in range(200):  # warm-up
    capture(n)
sentry_sdk.flush(10)
cpu, wall = time.process_time(), time.perf_counter()
for n in range(events):
    capture(n)
capture_wall = time.perf_counter() - wall
sentry_sdk.flush(30)
if mode == "naive":
    segment.flush()  # its queue is not Sentry's: without this its delivery would not be measured
cpu = time.process_time() - cpu
print(json.dumps({"capture_us": capture_wall / events * 1e6, "cpu_us": cpu / events * 1e6,
                  "stats": integration.stats() if integration else None}))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_redis() -> Optional[subprocess.Popen]:  # type: ignore[type-arg]
    if shutil.which("redis-server") is None:
        return None
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    process.redis_url = f"redis://127.0.0.1:{port}/0"  # type: ignore[attr-defined]
    time.sleep(0.3)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    redis = start_redis()
    modes = ["plain", "naive", "ours", "ours-limited"]
    if redis is not None:
        modes += ["ours-redis", "ours-redis-unlimited"]
    results: Dict[str, List[Dict[str, float]]] = {mode: [] for mode in modes}
    script = textwrap.dedent(MODE_SCRIPT)
    try:
        with SegmentSink() as sink:
            redis_url = redis.redis_url if redis is not None else ""  # type: ignore[attr-defined]
            for round_number in range(arguments.rounds):
                for mode in modes:
                    output = subprocess.run(
                        [sys.executable, "-c", script, mode, sink.url, redis_url, str(arguments.events)],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    results[mode].append(json.loads(output))
                print(f"round {round_number + 1}/{arguments.rounds} done", file=sys.stderr)
    finally:
        if redis is not None:
            redis.kill()

    plain_capture = statistics.median(r["capture_us"] for r in results["plain"])
    plain_cpu = statistics.median(r["cpu_us"] for r in results["plain"])
    naive_cpu = statistics.median(r["cpu_us"] for r in results["naive"])
    print(f"python {sys.version.split()[0]}, {arguments.events} errors x {arguments.rounds} rounds, medians")
    print(f"{'mode':<22}{'capture µs':>12}{'vs plain':>10}{'CPU µs/event':>14}{'extra CPU vs naive':>20}")
    for mode in modes:
        capture = statistics.median(r["capture_us"] for r in results[mode])
        cpu = statistics.median(r["cpu_us"] for r in results[mode])
        extra = (cpu - plain_cpu) / (naive_cpu - plain_cpu) if mode != "plain" and naive_cpu > plain_cpu else 0
        print(f"{mode:<22}{capture:>12.1f}{capture / plain_capture:>10.3f}{cpu:>14.1f}{extra:>20.2f}")
    for mode in modes:
        stats = results[mode][-1].get("stats")
        if stats:
            print(f"  {mode}: forwarded {stats['forwarded']}, rate_limited {stats['rate_limited']} (last round)")


if __name__ == "__main__":
    main()
