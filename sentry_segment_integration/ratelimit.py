"""The forwarding budget: at most ``limit`` events per one-second window per organization key."""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Tuple

from sentry_segment_integration.forking import reset_in_child

Clock = Callable[[], float]


class FixedWindowLimiter:
    """In-process fixed windows, one counter per key, exact under any number of threads.

    No background thread and no I/O: one short lock per decision.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: Dict[str, Tuple[int, int]] = {}

    def try_acquire(self, key: str, limit: float) -> bool:
        """Take one unit of ``key``'s budget in the current window; False when it is spent."""
        window = int(self._clock())
        with self._lock:
            current, used = self._windows.get(key, (window, 0))
            if current != window:
                used = 0
            if used >= limit:
                self._windows[key] = (window, used)
                return False
            self._windows[key] = (window, used + 1)
            return True

    def after_fork_in_child(self) -> None:
        # A thread of the parent may have held the lock at fork time; the child has no such thread.
        self._lock = threading.Lock()


# Shared by every client, thread and integration instance of the process, as the budget is.
PROCESS_LIMITER = FixedWindowLimiter()
reset_in_child(PROCESS_LIMITER)
