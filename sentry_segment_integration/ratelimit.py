"""The forwarding budget: at most ``limit`` events per one-second window per organization key.

Two limiters behind one interface, :class:`RateLimiter`: ``admit`` an event (an
:class:`Admission`, told its answer once) under an organization's budget and optionally its
exception type's cap. :class:`FixedWindowLimiter` decides at once in the capturing thread, in
memory, for one process. :class:`SharedLimiter` shares the budget between processes and hosts
through a storage of the ``limits`` library (Redis, Valkey, Memcached, ...): a round trip there
costs half a ``capture_exception``, so the capturing thread only hands the event over and a
background thread decides, a batch at a time, with one atomic increment per batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Protocol, Tuple, Union

from sentry_segment_integration._log import SECRETS, logger
from sentry_segment_integration.forking import reset_in_child
from sentry_segment_integration.settings import url_credentials, without_credentials

Clock = Callable[[], float]

# How long the shared counters of a window live: longer than any decision can lag behind.
WINDOW_KEY_EXPIRY = 10
# How long a request to the shared storage may take before the process decides alone.
STORAGE_TIMEOUT = 0.5
# How long the deciding thread lets a burst gather before one round trip decides all of it. Each
# wake-up of a thread costs a busy application thread up to a switch interval (5 ms): in a burst,
# the first `limit` errors of each window are decided in one or two rounds rather than dozens.
GATHER_SECONDS = 0.05
# After the shared storage failed, how long the process decides alone before trying it again.
RETRY_STORAGE_AFTER = 1.0
# Keys of past windows are forgotten once a limiter holds more than this many (or twice what the
# current window holds): one key per organization, and with ``rate_limit_per_type`` one per
# exception type, whose names an application may make up without end.
PRUNE_KEYS_AT = 4096

# What refused an event: the organization's budget, or its exception type's cap.
ORGANIZATION = "organization"
PER_TYPE = "type"


class Admission(Protocol):
    """An event waiting for the limiter's answer: told exactly one of these, on the capturing
    thread (in-process) or on the shared limiter's thread. Each counts its own failures."""

    def admitted(self) -> None: ...

    def over_budget(self) -> None: ...

    def over_type_cap(self) -> None: ...


class TypeCap(NamedTuple):
    """An exception type's cap within an organization (see :func:`type_key`)."""

    key: str
    limit: int


class RateLimiter(Protocol):
    """What the route asks of either storage."""

    def admit(self, key: str, limit: Optional[int], admission: Admission, type_cap: Optional[TypeCap] = None) -> None:
        """Tell ``admission`` whether it fits ``key``'s ``limit`` in the current window (``None``:
        no organization budget) and, with ``type_cap``, its type's cap first: an event its type's
        cap refuses never spends the organization's budget."""

    def flush(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds until every admission has its answer."""


def type_key(organization: str, exception_type: str) -> str:
    """The key of one exception type's cap within an organization: the type's name hashed, so
    that the key is short and of plain characters whatever the name (Memcached, for one, refuses
    spaces and keys of more than 250 bytes)."""
    digest = hashlib.blake2b(exception_type.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{organization}/type/{digest}"


def _prune(windows: Dict[str, Tuple[int, int]], spent: Dict[str, int], window: int) -> int:
    """Forget the keys of past windows; the size at which to prune next."""
    for key in [key for key, (current, _) in windows.items() if current != window]:
        del windows[key]
    for key in [key for key, current in spent.items() if current != window]:
        del spent[key]
    return max(PRUNE_KEYS_AT, 2 * len(windows))


class FixedWindowLimiter:
    """In-process fixed windows, one counter per key, exact under any number of threads.

    No background thread and no I/O: one short lock per decision.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._windows: Dict[str, Tuple[int, int]] = {}
        self._prune_at = PRUNE_KEYS_AT
        # key -> the window whose budget is spent. Read without the lock: in a burst most
        # answers are this one lookup (see ``admit``).
        self.spent: Dict[str, int] = {}

    def window_now(self) -> int:
        return int(self._clock())

    def admit(self, key: str, limit: Optional[int], admission: Admission, type_cap: Optional[TypeCap] = None) -> None:
        # In a burst most answers are the first lookup: no lock is taken for a spent window.
        window = self.window_now()
        if limit is not None and self.spent.get(key) == window:
            admission.over_budget()
        elif type_cap is not None and (
            self.spent.get(type_cap.key) == window or not self.try_acquire(type_cap.key, type_cap.limit)
        ):
            admission.over_type_cap()
        elif limit is None or self.try_acquire(key, limit):
            admission.admitted()
        else:
            admission.over_budget()

    def flush(self, timeout: float) -> bool:
        return True  # every answer is given at once

    def try_acquire(self, key: str, limit: int, amount: int = 1) -> int:
        """Take up to ``amount`` units of ``key``'s budget in the current window; how many were taken."""
        window = self.window_now()
        with self._lock:
            current, used = self._windows.get(key, (window, 0))
            if current != window:
                used = 0
            taken = max(0, min(amount, limit - used))
            self._windows[key] = (window, used + taken)
            if used + taken >= limit:
                self.spent[key] = window
            if len(self._windows) > self._prune_at:
                self._prune_at = _prune(self._windows, self.spent, window)
            return taken

    def after_fork_in_child(self) -> None:
        # A thread of the parent may have held the lock at fork time; the child has no such thread.
        self._lock = threading.RLock()


# Shared by every client, thread and integration instance of the process, as the budget is.
PROCESS_LIMITER = FixedWindowLimiter()
reset_in_child(PROCESS_LIMITER)


class _Capped:
    """An admission waiting under its exception type's cap as well as the organization's budget."""

    __slots__ = ("admission", "key", "limit")

    def __init__(self, admission: Admission, cap: TypeCap) -> None:
        self.admission, self.key, self.limit = admission, cap.key, cap.limit


Waiting = Union[Admission, _Capped]
# (organization key, window, its limit or None) -> what waits, in the order submitted.
Batch = Dict[Tuple[str, int, Optional[int]], List[Waiting]]


class SharedLimiter:
    """One budget per key and window across every process and host that names the same storage.

    Windows are the seconds of the wall clock, so every host counts the same windows (their clocks
    are assumed to agree, as NTP keeps them). While the storage cannot be reached, the process
    decides alone with ``fallback``, logs it once, and tries the storage again every second.
    """

    def __init__(
        self,
        uri: str,
        fallback: FixedWindowLimiter = PROCESS_LIMITER,
        wall_clock: Clock = time.time,
    ) -> None:
        self._uri = uri
        self.display_uri = without_credentials(uri)
        for credential in url_credentials(uri):
            SECRETS.add(credential)
        self._fallback = fallback
        self._wall_clock = wall_clock
        self._storage: Any = None
        self._retry_storage_at = 0.0
        self._storage_down = False
        # Imported here, on the configuring thread: a fork while the deciding thread held an
        # import lock would leave the child's limiter waiting on that lock for ever.
        _import_storage_modules(uri)
        self._reset_state()
        reset_in_child(self)

    def _reset_state(self) -> None:
        # Re-entrant: a signal handler that flushes may run while its thread is submitting. Made
        # anew after a fork; and made where it is first needed, not at import: under gevent's
        # `--preload` the worker patches threading only after the fork.
        self._changed_lock = threading.RLock()
        self._changed_made: Optional[threading.Condition] = None
        self._pending: Batch = {}
        self._submitted: Dict[str, Tuple[int, int]] = {}
        self._prune_at = PRUNE_KEYS_AT
        # key -> the wall-clock window in which this process has submitted its whole limit.
        # Read without the lock (see ``admit``): in a burst most answers are this one lookup.
        self.spent: Dict[str, int] = {}
        self._undecided = 0
        self._thread: Optional[threading.Thread] = None

    def window_now(self) -> int:
        return int(self._wall_clock())

    @property
    def _changed(self) -> threading.Condition:
        changed = self._changed_made
        if changed is None:
            with self._changed_lock:
                if self._changed_made is None:
                    self._changed_made = threading.Condition(threading.RLock())
                changed = self._changed_made
        return changed

    def admit(self, key: str, limit: Optional[int], admission: Admission, type_cap: Optional[TypeCap] = None) -> None:
        """Queue ``admission`` for the background thread, or refuse it now when this process has
        already submitted ``limit`` events (or its type's cap) in this window, for which no other
        process can make room."""
        window = self.window_now()
        if limit is not None and self.spent.get(key) == window:
            return admission.over_budget()
        if type_cap is not None and self.spent.get(type_cap.key) == window:
            return admission.over_type_cap()
        refused = self._submit(key, limit, admission, _Capped(admission, type_cap) if type_cap is not None else None)
        if refused == ORGANIZATION:
            admission.over_budget()
        elif refused == PER_TYPE:
            admission.over_type_cap()
        return None

    def _submit(
        self, key: str, limit: Optional[int], admission: Admission, capped: Optional[_Capped] = None
    ) -> Optional[str]:
        """None when queued, else what refused it now: ``ORGANIZATION`` or ``PER_TYPE``."""
        window = self.window_now()
        with self._changed:
            submitted = self._submitted_in(key, window)
            if limit is not None and submitted >= limit:
                self.spent[key] = window
                return ORGANIZATION
            if capped is not None:
                type_submitted = self._submitted_in(capped.key, window)
                if type_submitted >= capped.limit:
                    self.spent[capped.key] = window
                    return PER_TYPE
                self._submitted[capped.key] = (window, type_submitted + 1)
            self._submitted[key] = (window, submitted + 1)
            if len(self._submitted) > self._prune_at:
                self._prune_at = _prune(self._submitted, self.spent, window)
            waking = not self._pending
            self._pending.setdefault((key, window, limit), []).append(capped or admission)
            self._undecided += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sentry-segment-ratelimit", daemon=True)
                self._thread.start()
            if waking:  # otherwise the thread has been woken already and will take this one too
                self._changed.notify()
        return None

    def _submitted_in(self, key: str, window: int) -> int:
        current, submitted = self._submitted.get(key, (window, 0))
        return submitted if current == window else 0

    def _give_back(self, key: str, window: int, amount: int) -> None:
        """Events the type's cap refused do not count against what this process may submit for
        the organization in ``window``."""
        with self._changed:
            submitted = self._submitted_in(key, window)
            if submitted:
                self._submitted[key] = (window, max(0, submitted - amount))
                if self.spent.get(key) == window:
                    del self.spent[key]

    def flush(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds until every admission has its answer."""
        if self._changed_made is None:
            return True
        with self._changed:
            return self._changed.wait_for(lambda: not self._undecided, timeout=max(timeout, 0.0))

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending:
                    self._changed.wait()
            # Errors come in bursts: a moment's wait turns many round trips into one.
            time.sleep(GATHER_SECONDS)
            with self._changed:
                batch, self._pending = self._pending, {}
            for (key, window, limit), waiting in batch.items():
                self._decide(key, window, limit, waiting)
                with self._changed:
                    self._undecided -= len(waiting)
                    self._changed.notify_all()

    def _decide(self, key: str, window: int, limit: Optional[int], waiting: List[Waiting]) -> None:
        """Tell each of ``waiting`` its answer: each type's cap first, then the organization's
        budget for what those let through, in the order submitted."""
        through: List[Admission] = []
        refused: List[Admission] = []
        try:
            through, refused = self._within_type_caps(window, waiting)
            if refused:
                self._give_back(key, window, len(refused))
            allowed = len(through) if limit is None else self._allowance(key, window, limit, len(through))
        except Exception:
            logger.exception("rate limiter failed; the events it was deciding are not forwarded")
            through = [entry.admission if isinstance(entry, _Capped) else entry for entry in waiting]
            refused, allowed = [], 0
        # An admission counts its own failures; this thread must never stop deciding.
        for admission in refused:
            with contextlib.suppress(Exception):
                admission.over_type_cap()
        for index, admission in enumerate(through):
            with contextlib.suppress(Exception):
                if index < allowed:
                    admission.admitted()
                else:
                    admission.over_budget()

    def _within_type_caps(self, window: int, waiting: List[Waiting]) -> Tuple[List[Admission], List[Admission]]:
        """What of ``waiting`` its types' caps let through (in order), and what they refuse."""
        wanted: Dict[Tuple[str, int], int] = {}
        for entry in waiting:
            if isinstance(entry, _Capped):
                wanted[(entry.key, entry.limit)] = wanted.get((entry.key, entry.limit), 0) + 1
        if not wanted:
            return [entry for entry in waiting if not isinstance(entry, _Capped)], []
        room = {cap: self._allowance(cap[0], window, cap[1], count) for cap, count in wanted.items()}
        through: List[Admission] = []
        refused: List[Admission] = []
        for entry in waiting:
            if not isinstance(entry, _Capped):
                through.append(entry)
            elif room[(entry.key, entry.limit)] > 0:
                room[(entry.key, entry.limit)] -= 1
                through.append(entry.admission)
            else:
                refused.append(entry.admission)
        return through, refused

    def _allowance(self, key: str, window: int, limit: int, wanted: int) -> int:
        """How many of ``wanted`` events of ``key`` in ``window`` fit in the shared budget."""
        storage = self._connected_storage()
        if storage is not None:
            try:
                count = int(storage.incr(f"sentry-segment/{key}/{window}", WINDOW_KEY_EXPIRY, amount=wanted))
            except Exception as error:
                self._storage_failed(error)
            else:
                self._storage_answered()
                return max(0, min(wanted, limit - (count - wanted)))
        return self._fallback.try_acquire(key, limit, wanted)

    def _connected_storage(self) -> Any:
        if self._storage is None and time.monotonic() >= self._retry_storage_at:
            try:
                self._storage = open_storage(self._uri)
            except Exception as error:
                self._storage_failed(error)
        return self._storage

    def _storage_failed(self, error: Exception) -> None:
        self._storage = None
        self._retry_storage_at = time.monotonic() + RETRY_STORAGE_AFTER
        if not self._storage_down:
            self._storage_down = True
            logger.warning(
                "rate limit storage %s cannot be reached (%s): each process now limits itself "
                "to the rate limit, until the storage is back",
                self.display_uri,
                type(error).__name__,
            )

    def _storage_answered(self) -> None:
        if self._storage_down:
            self._storage_down = False
            logger.warning("rate limit storage %s answers again: the budget is shared again", self.display_uri)

    def after_fork_in_child(self) -> None:
        # The parent's thread, its pending events and its connections stay the parent's.
        self._reset_state()
        self._storage = None


def _import_storage_modules(uri: str) -> None:
    import importlib

    import limits.storage  # noqa: F401

    scheme = uri.split("://", 1)[0].lower().split("+")[0]
    driver = {"redis": "redis", "rediss": "redis", "valkey": "valkey", "valkeys": "valkey"}.get(scheme)
    if driver is not None:
        with contextlib.suppress(ImportError):  # settings already said which package is missing
            importlib.import_module(driver)


def open_storage(uri: str) -> Any:
    from limits.storage import storage_from_string

    scheme = uri.split("://", 1)[0].lower()
    options: Dict[str, Any] = {}
    if scheme.startswith(("redis", "valkey")):
        options = {"socket_timeout": STORAGE_TIMEOUT, "socket_connect_timeout": STORAGE_TIMEOUT}
    return storage_from_string(uri, **options)


_SHARED_LIMITERS: Dict[str, SharedLimiter] = {}
_SHARED_LIMITERS_LOCK = threading.Lock()


def shared_limiters() -> List[SharedLimiter]:
    with _SHARED_LIMITERS_LOCK:
        return list(_SHARED_LIMITERS.values())


def shared_limiter_for(uri: str) -> SharedLimiter:
    """One shared limiter (one background thread, one connection pool) per storage URI."""
    with _SHARED_LIMITERS_LOCK:
        limiter = _SHARED_LIMITERS.get(uri)
        if limiter is None:
            limiter = _SHARED_LIMITERS[uri] = SharedLimiter(uri)
        return limiter
