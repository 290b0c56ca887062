"""The one place that sees exactly what Sentry sends: the client's transport.

Everything before the transport (event processors, ``before_send``, error sampling) has already
decided by the time an event reaches it, in every sentry-sdk version from 1.45 on. The transport
object itself is kept (so ``isinstance`` checks and every other attribute stay as they were);
only its ``capture_event``, ``capture_envelope``, ``flush`` and ``kill`` are wrapped, per instance.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Callable, Optional, Protocol

from sentry_sdk import client as sentry_client

from sentry_segment_integration._log import contained, log_failure
from sentry_segment_integration.delivery import all_senders, senders_with_work

_STATE_ATTRIBUTE = "_sentry_segment_forwarding"
# Inside the application's calls to sentry-sdk: what fails here is logged and goes no further.
_FLUSH_FAILED = contained(log_failure("could not flush the Segment queues; the Sentry flush is unaffected"))
_ATTACH_FAILED = contained(log_failure("could not attach to this Sentry client; its events are not forwarded"))
_install_lock = threading.Lock()
_installed = False


# A transport may pass an event from capture_event to its own capture_envelope or the other way
# round (sentry-sdk 2.x's function transport does): only the outermost call forwards. A context
# variable, not a thread-local: it is per greenlet under gevent (where one thread runs them all
# and a capture may yield inside Sentry's transport) and per task under asyncio.
_inside_capture: ContextVar[bool] = ContextVar("sentry_segment_inside_capture", default=False)


class Route(Protocol):
    """Where one client's events go (``routing.ClientRoute``). No method raises."""

    def forward_envelope(self, envelope: Any) -> None: ...

    def forward_event(self, event: Mapping[str, Any]) -> None: ...

    def flush(self, timeout: float) -> None: ...

    def close(self) -> None: ...


MakeRoute = Callable[[Any], Optional[Route]]


class TransportHook:
    """The wrapped methods of one transport and the client route its events go to."""

    def __init__(self, transport: Any, route: Optional[Route]) -> None:
        self.route = route
        self._capture_envelope = transport.capture_envelope
        self._capture_event = getattr(transport, "capture_event", None)
        self._flush = transport.flush
        self._kill = transport.kill
        self._is_async = _is_async_transport(transport)
        transport.capture_envelope = self.capture_envelope
        if self._capture_event is not None:
            transport.capture_event = self.capture_event
        transport.flush = self.flush
        transport.kill = self.kill

    def capture_envelope(self, envelope: Any) -> Any:
        # On every captured event: kept to a few calls (see benchmarks/performance.py).
        if _inside_capture.get():
            return self._capture_envelope(envelope)
        route = self.route
        if route is not None:
            route.forward_envelope(envelope)
        return _call_inside_capture(self._capture_envelope, envelope)

    def capture_event(self, event: Mapping[str, Any]) -> Any:
        # sentry-sdk 1.x sends plain error events here rather than in an envelope.
        assert self._capture_event is not None
        if _inside_capture.get():
            return self._capture_event(event)
        route = self.route
        if route is not None:
            route.forward_event(event)
        return _call_inside_capture(self._capture_event, event)

    def flush(self, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        result = self._flush(*args, **kwargs)
        route = self.route
        # A client without the integration (a re-init) still flushes what replaced ones left.
        flush_segment = route.flush if route is not None else flush_pending
        timeout = kwargs.get("timeout", args[0] if args else None)
        if inspect.isawaitable(result):
            # sentry-sdk's async transport hands back a task for flush_async() to await: ours runs
            # after it, on a worker thread, so the event loop is never blocked.
            return _flush_after(result, flush_segment, timeout, started)
        if result is None and not self._is_async:
            flush_segment(_remaining(timeout, started))
        return result

    def kill(self, *args: Any, **kwargs: Any) -> Any:
        route, self.route = self.route, None
        try:
            return self._kill(*args, **kwargs)
        finally:
            if route is not None:
                route.close()


def _is_async_transport(transport: Any) -> bool:
    try:
        from sentry_sdk.transport import AsyncHttpTransport  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # sentry-sdk before the async transport
        return False
    return isinstance(transport, AsyncHttpTransport)


def flush_pending(timeout: float) -> None:
    """Flush every queue of the process that has messages, within ``timeout`` in all."""
    with _FLUSH_FAILED:
        deadline = time.monotonic() + timeout
        for sender in senders_with_work():
            sender.flush(deadline - time.monotonic())


def _flush_after(sentry_flush: Any, flush_segment: Callable[[float], Any], timeout: Any, started: float) -> Any:
    async def flush_both() -> None:
        try:
            await sentry_flush
        finally:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, flush_segment, _remaining(timeout, started))

    try:
        return asyncio.get_running_loop().create_task(flush_both())
    except RuntimeError:  # no running loop: hand Sentry's awaitable back untouched
        return sentry_flush


def _call_inside_capture(capture: Callable[[Any], Any], argument: Any) -> Any:
    token = _inside_capture.set(True)
    try:
        return capture(argument)
    finally:
        _inside_capture.reset(token)


def _remaining(timeout: Any, started: float) -> float:
    if not isinstance(timeout, (int, float)):
        return 0.0
    return max(0.0, float(timeout) - (time.monotonic() - started))


def attach(client: Any, make_route: MakeRoute) -> None:
    """Route ``client``'s events, or stop routing them when it has no SegmentIntegration."""
    transport = getattr(client, "transport", None)
    if transport is None:
        return
    route = make_route(client)
    hook: Optional[TransportHook] = transport.__dict__.get(_STATE_ATTRIBUTE)
    if hook is None:
        if route is None and not all_senders():
            return
        hook = TransportHook(transport, route)
        transport.__dict__[_STATE_ATTRIBUTE] = hook
    else:
        # A transport object passed to a second client: it now serves that one.
        old_route, hook.route = hook.route, route
        if old_route is not None and old_route is not route:
            old_route.close()


def install(make_route: MakeRoute) -> None:
    """Patch sentry-sdk's client set-up, once per process, to attach every new client.

    It runs when a SegmentIntegration is constructed, necessarily before the ``sentry_sdk.init``
    that receives it; ``setup_once`` would be too late for the client being built.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        client_class = sentry_client._Client
        original_init_impl = client_class._init_impl

        def _init_impl(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original_init_impl(self, *args, **kwargs)
            with _ATTACH_FAILED:
                attach(self, make_route)
            return result

        def get_transport(self: Any) -> Any:
            return self.__dict__.get("transport")

        def set_transport(self: Any, transport: Any) -> None:
            # A transport assigned after init (`client.transport = ...`, as sentry-python's own test
            # fixtures and many test set-ups do) is routed too; during init, _init_impl attaches.
            self.__dict__["transport"] = transport
            if "integrations" in self.__dict__:
                with _ATTACH_FAILED:
                    attach(self, make_route)

        client_class._init_impl = _init_impl  # type: ignore[method-assign]
        # Stored where sentry-sdk keeps it, in the instance's __dict__, so nothing else changes.
        client_class.transport = property(get_transport, set_transport)  # type: ignore[assignment]
        _installed = True
