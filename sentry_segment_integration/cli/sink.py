"""``sentry-segment sink``: a Segment-compatible receiver on 127.0.0.1 that shows what arrives.

For development: point an application's ``SEGMENT_HOST`` (or ``host=``) at it and watch each
``"Error Captured"`` message arrive, without a Segment account. It is :class:`SegmentSink`, the
receiver the demo and the test suite use, run until Ctrl-C or SIGTERM (both: exit 0).
"""

from __future__ import annotations

import errno
import json
import signal
import threading
import time
from types import FrameType
from typing import Any, Dict, Optional, TextIO

from sentry_segment_integration.cli.options import EXIT_FAILED, EXIT_OK
from sentry_segment_integration.cli.output import Style, print_line
from sentry_segment_integration.testing import ReceivedBatch, SegmentSink

DEFAULT_PORT = 8787


class _Printer:
    """Shows and saves each message; request threads call it concurrently, so one lock orders it."""

    def __init__(self, out: TextIO, output: Optional[TextIO], as_json: bool, stop: threading.Event) -> None:
        self._out = out
        self._style = Style(out)
        self._output = output
        self._as_json = as_json
        self._stop = stop
        self._lock = threading.Lock()
        self.messages = 0
        self.requests = 0
        self.failure: Optional[str] = None

    def batch_arrived(self, batch: ReceivedBatch) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self.requests += 1
            try:
                for message in batch.messages:
                    self.messages += 1
                    try:
                        line = json.dumps(message, ensure_ascii=False)
                    except (ValueError, RecursionError) as error:
                        # Parsed once, yet too deep to write again from this thread's stack: say so.
                        self._style.line(f"{self._style.warn('not saved')}: a message that cannot be written: {error}")
                        continue
                    if self._output is not None:
                        # The file is opened with errors="backslashreplace": a lone surrogate (the
                        # JSON escape "\\udfff", which the integration can forward) is written as
                        # that same escape, so each line stays valid UTF-8 and the same JSON.
                        self._output.write(line + "\n")
                        self._output.flush()
                    if self._as_json:
                        print_line(line, self._out)
                    else:
                        self._style.line(self._summary_of(message, batch))
            except OSError as error:
                # A full disk, a closed pipe (``| head``): stop rather than accept what is not kept.
                self.failure = error.strerror or str(error)
                self._stop.set()

    def close(self) -> None:
        """No more output once the receiver stops: a request still running writes nothing."""
        with self._lock:
            self._stop.set()
            if self._output is not None:
                self._output.close()
                self._output = None

    def _summary_of(self, message: Any, batch: ReceivedBatch) -> str:
        """One line a person reads at a glance; the whole message is in --output or --json."""
        style = self._style
        clock = time.strftime("%H:%M:%S")
        if not isinstance(message, dict):
            return f"{clock}  {style.warn('not a message')}: a JSON {type(message).__name__} in the batch"
        found = message.get("properties")
        properties: Dict[str, Any] = found if isinstance(found, dict) else {}
        user = message.get("userId") or message.get("anonymousId")
        parts = [
            style.quiet(clock),
            str(message.get("type", "?")),
            style.strong(str(message.get("event", ""))) if message.get("event") else "",
            f"user={user}" if user is not None else style.warn("no userId"),
        ]
        if properties.get("exceptionType"):
            parts.append(style.paint(str(properties["exceptionType"]), "red"))
        if properties.get("test") is True:
            parts.append(style.warn("(test message)"))
        parts.append(style.quiet(f"messageId={message.get('messageId', '')}"))
        if not batch.write_key:
            # Never the key itself: only whether the request carried one (Segment refuses it without).
            parts.append(style.warn("[no write key]"))
        return "  ".join(part for part in parts if part)


def run_sink(port: int, output_path: Optional[str], as_json: bool, out: TextIO, err: TextIO) -> int:
    # With --json, stdout carries only messages; what a person reads goes to stderr.
    talk = Style(err if as_json else out)
    output: Optional[TextIO] = None
    if output_path is not None:
        try:
            # errors="backslashreplace": see _Printer.batch_arrived. Closed by _Printer.close.
            output = open(output_path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        except (OSError, ValueError) as error:
            # As the help says: 1, cannot listen or write (a usage error is argparse's 2).
            reason = (error.strerror if isinstance(error, OSError) else None) or str(error)
            Style(err).line(f"sentry-segment sink: --output {output_path}: cannot write to it: {reason}")
            return EXIT_FAILED
    stop = threading.Event()
    printer = _Printer(out, output, as_json, stop)
    try:
        sink = SegmentSink(port=port, on_batch=printer.batch_arrived, keep=False)
    except OSError as error:
        printer.close()
        in_use = error.errno == errno.EADDRINUSE
        reason = "it is already in use" if in_use else (error.strerror or str(error))
        Style(err).line(f"sentry-segment sink: cannot listen on 127.0.0.1:{port}: {reason} (choose another --port)")
        return EXIT_FAILED

    def stop_on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, stop_on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        sink.start()
        talk.line(talk.strong(f"sentry-segment sink: listening on {sink.url}  (Ctrl-C to stop)"))
        talk.line(f"  point the integration at it:  SEGMENT_HOST={sink.url}  (any write key)")
        talk.line("  accepts POST /v1/batch and /v1/track, gzip bodies, the write key as Basic auth")
        if output_path is not None:
            talk.line(f"  appending each message as a JSON line to {output_path}")
        while not stop.wait(0.2):
            pass
    finally:
        sink.stop()
        printer.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if printer.failure is not None:
        Style(err).line(f"sentry-segment sink: stopped: cannot write a message: {printer.failure}")
        return EXIT_FAILED
    talk.line(f"sentry-segment sink: stopped; {printer.messages} message(s) received in {printer.requests} request(s)")
    return EXIT_OK
