"""Sentry event -> Segment ``track`` message. Pure functions: no I/O, no state.

Every reader here tolerates any shape a ``before_send`` hook may leave behind: a value of an
unexpected type is turned into a string or left out, never an error.
"""

from __future__ import annotations

import contextlib
import json
import math
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple
from urllib.parse import urlsplit

from sentry_segment_integration.version import __version__

EVENT_NAME = "Error Captured"

# Segment rejects a message over 32 KB (its consumer drops it whole). Keep a margin for what the
# Segment library adds to the batch around each message.
MAX_MESSAGE_BYTES = 32 * 1024 - 512
# Any single field longer than this is cut before the size check even runs.
MAX_FIELD_CHARS = 2048
# A JSON-encoded character costs at most this many bytes (a surrogate pair as two \uXXXX escapes).
_MAX_BYTES_PER_CHAR = 12

LIBRARY = {"name": "sentry-segment-integration", "version": __version__}

Message = Dict[str, Any]


def as_text(value: Any) -> str:
    """A display string for an event field: ``""`` for missing, ``str()`` for anything else."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value[:MAX_FIELD_CHARS]
        return text if text.isascii() else well_formed(text)
    try:
        if isinstance(value, (dict, list, tuple)):
            text = json.dumps(value, default=repr, ensure_ascii=False)
        else:
            text = str(value)
    except Exception:  # a cycle, a broken __str__: leave the field empty rather than fail
        return ""
    text = text[:MAX_FIELD_CHARS]
    return text if text.isascii() else well_formed(text)


def user_id_of(event: Mapping[str, Any]) -> Optional[str]:
    """The event's user id as Segment's ``userId``, or None when it has no usable one."""
    user = event.get("user")
    if type(user) is not dict and not isinstance(user, Mapping):  # the exact type first: it is cheaper
        return None
    user_id = user.get("id")
    if type(user_id) is str:
        text = user_id[:MAX_FIELD_CHARS]
    elif user_id is None or isinstance(user_id, (bool, dict, list, tuple, set)):
        return None
    else:
        try:
            text = str(user_id)[:MAX_FIELD_CHARS]
        except Exception:  # a broken __str__: no usable id
            return None
    if not text.isascii():
        text = well_formed(text)
    return text or None


def exception_values(event: Mapping[str, Any]) -> List[Any]:
    """``exception.values``; Sentry also accepts the list itself as ``exception``."""
    exception = event.get("exception")
    values = exception.get("values") if type(exception) is dict or isinstance(exception, Mapping) else exception
    return values if isinstance(values, list) else []


def is_forwardable_kind(event: Mapping[str, Any], include_messages: bool = False) -> bool:
    """An error event (exception data and no ``type``), or with ``include_messages`` any event
    without a ``type``: never a transaction, a check-in or anything else typed."""
    return not event.get("type") and bool(exception_values(event) or include_messages)


def exception_type_of(event: Mapping[str, Any]) -> str:
    """Type of the exception raised: the last of ``exception.values`` (Sentry's issue title)."""
    values = exception_values(event)
    if not values:
        return ""
    raised = values[-1]
    return as_text(raised.get("type")) if isinstance(raised, Mapping) else ""


def timestamp_of(event: Mapping[str, Any], now: Optional[datetime] = None) -> str:
    """The event's own time in UTC, ISO 8601 with milliseconds.

    ``now`` (default: the current time) when the timestamp cannot be read, or read but not turned
    into UTC: a time near year 1 or 9999 whose offset moves it out of range, or a tzinfo whose
    ``utcoffset`` raises or answers nonsense.
    """
    value = event.get("timestamp")
    if type(value) is str and _is_sentry_utc_time(value):
        return value[:23] + "+00:00"
    if value is not None:
        try:
            when = _parse_timestamp(value)
            if when is not None:
                # The base class's methods: a datetime subclass's own may do anything.
                return datetime.isoformat(datetime.astimezone(when, timezone.utc), timespec="milliseconds")
        except Exception:
            pass
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _is_sentry_utc_time(text: str) -> bool:
    """``2024-05-01T12:30:45.123456Z``, as sentry-sdk writes it: then the text itself is the answer."""
    if len(text) != 27 or not text.isascii() or text[4:20:3] != "--T::.":
        return False
    try:
        datetime.fromisoformat(text[:26])  # the date and time exist (no 30 February)
    except ValueError:
        return False
    return text[26] == "Z"


def _parse_timestamp(value: Any) -> Optional[datetime]:
    try:
        if isinstance(value, datetime):
            # Naive (no tzinfo, or one whose utcoffset is None) is UTC, as Sentry means it.
            return value if datetime.utcoffset(value) is not None else datetime.replace(value, tzinfo=timezone.utc)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, tz=timezone.utc)
        if isinstance(value, str) and value:
            return _parse_iso(value)
    except (ValueError, OverflowError, OSError):
        pass
    return None


def _parse_iso(text: str) -> datetime:
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python < 3.11 reads only 3 or 6 fraction digits; Sentry writes 6, others may not.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, zone = rest[:digits], rest[digits:]
        text = f"{head}.{(fraction + '000000')[:6]}{zone}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def header_values(headers: Any, *names: str) -> Tuple[str, ...]:
    """Values of the named headers, matched case-insensitively; ``""`` where absent.

    Sentry's ``request.headers`` is a dict, but its schema also allows a list of pairs.
    """
    if type(headers) is dict:  # the common case: its items are pairs, read without checking them
        wanted = {name.lower(): index for index, name in enumerate(names)}
        found = [""] * len(names)
        for key, value in headers.items():
            if isinstance(key, str):
                index = wanted.get(key.lower())
                if index is not None and not found[index]:
                    found[index] = as_text(value)
        return tuple(found)
    if isinstance(headers, Mapping):
        pairs: Any = headers.items()
    elif isinstance(headers, (list, tuple)):
        pairs = headers
    else:
        return tuple("" for _ in names)
    wanted = {name.lower(): index for index, name in enumerate(names)}
    found = [""] * len(names)
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            continue
        key, value = pair
        index = wanted.get(key.lower()) if isinstance(key, str) else None
        if index is not None and not found[index]:
            found[index] = as_text(value)
    return tuple(found)


def _query_text(query: Any) -> str:
    if isinstance(query, (list, tuple)):
        parts = []
        for pair in query:
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                parts.append(f"{as_text(pair[0])}={as_text(pair[1])}")
        return as_text("&".join(parts))
    if isinstance(query, Mapping):
        return as_text("&".join(f"{as_text(k)}={as_text(v)}" for k, v in query.items()))
    return as_text(query)


def build_message(
    event: Mapping[str, Any],
    user_id: Optional[str],
    now: Optional[datetime] = None,
    send_ip: bool = True,
    send_query_string: bool = True,
    extra_properties: Optional[Mapping[str, Any]] = None,
    event_name: str = EVENT_NAME,
    event_url_prefix: Optional[str] = None,
    anonymous_id: Optional[str] = None,
) -> Message:
    """The complete Segment ``track`` message for one qualifying Sentry event.

    The result is final: it goes onto the sender's queue as it is, already within
    Segment's 32 KB message limit and strict JSON. ``extra_properties`` (a ``properties`` hook's
    result) are added to ``properties`` as :func:`add_hook_properties` says. ``event_url_prefix``
    (from the ``sentry_url`` option, see :meth:`settings.SentryLink.event_url_prefix`) gives
    ``properties.sentryUrl``; the trace context gives ``traceId`` and ``spanId``. Those links are
    never cut to fit: a cut link or id would point somewhere else.
    """
    event_id = as_text(event.get("event_id"))
    properties: Dict[str, Any] = {
        "environment": as_text(event.get("environment")),
        "eventId": event_id,
        "exceptionType": exception_type_of(event),
        "release": as_text(event.get("release")),
        "transaction": as_text(event.get("transaction")),
        "level": as_text(event.get("level")),
    }
    context: Dict[str, Any] = {"library": dict(LIBRARY)}

    request = event.get("request")
    if isinstance(request, Mapping) and request:
        url = as_text(request.get("url"))
        user_agent, referer = header_values(request.get("headers"), "User-Agent", "Referer")
        search = _query_text(request.get("query_string"))
        if not send_query_string:
            url, referer, search = _without_query(url), _without_query(referer), ""
        properties["userAgent"] = user_agent
        properties["page"] = {
            "url": url,
            "method": as_text(request.get("method")),
            "search": search,
            "referer": referer,
        }
        context["userAgent"] = user_agent
        context["page"] = {"url": url, "path": _path_of(url), "search": search, "referrer": referer}

    user = event.get("user")
    ip_address = user.get("ip_address") if send_ip and isinstance(user, Mapping) else None
    if ip_address:
        context["ip"] = as_text(ip_address)

    message: Message = {
        "type": "track",
        "event": event_name,
        **({"userId": user_id} if user_id is not None else {}),
        **({"anonymousId": anonymous_id} if anonymous_id is not None else {}),
        # Segment de-duplicates on messageId, so a retried batch never counts an error twice.
        "messageId": event_id or uuid.uuid4().hex,
        "timestamp": timestamp_of(event, now),
        "properties": properties,
        "context": context,
    }
    links = links_of(event, event_id, event_url_prefix)
    if links:
        # Room is kept for them, so that fitting cuts other fields, never a link.
        reserved = sum(len(name) + len(value) + 8 for name, value in links.items())
        message = fit_to_size(message, MAX_MESSAGE_BYTES - reserved)
        properties.update(links)
    else:
        message = fit_to_size(message)
    if extra_properties is not None:
        add_hook_properties(message, extra_properties)
    return message


_HEX_DIGITS = frozenset("0123456789abcdef")


def hex_id(value: Any, length: int) -> Optional[str]:
    """``value`` as a lowercase id of ``length`` hex digits, or None: not a string, another length,
    other characters, or all zeros (W3C trace context's invalid id)."""
    if not isinstance(value, str) or len(value) != length:
        return None
    text = value.lower()
    if not _HEX_DIGITS.issuperset(text) or text.count("0") == length:
        return None
    return text


def links_of(event: Mapping[str, Any], event_id: str, event_url_prefix: Optional[str]) -> Dict[str, str]:
    """``sentryUrl`` (with a prefix and an event id of 32 hex digits), ``traceId`` and ``spanId``
    (from ``contexts.trace``, 32 and 16 hex digits), each only when well-formed."""
    links: Dict[str, str] = {}
    if event_url_prefix is not None:
        link_id = hex_id(event_id, 32)
        if link_id is not None:
            links["sentryUrl"] = f"{event_url_prefix}{link_id}/"
    contexts = event.get("contexts")
    trace = contexts.get("trace") if isinstance(contexts, Mapping) else None
    if isinstance(trace, Mapping):
        trace_id = hex_id(trace.get("trace_id"), 32)
        if trace_id is not None:
            links["traceId"] = trace_id
            span_id = hex_id(trace.get("span_id"), 16)
            if span_id is not None:
                links["spanId"] = span_id
    return links


def _without_query(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0]


def _path_of(url: str) -> str:
    try:
        return urlsplit(url).path
    except ValueError:
        return ""


def _strings_in(node: Any, parent: Any, key: Any, into: List[Tuple[int, Any, Any]]) -> None:
    if isinstance(node, dict):
        for child_key, child in node.items():
            _strings_in(child, node, child_key, into)
    elif isinstance(node, str) and parent is not None:
        into.append((len(node), parent, key))


def _characters_in(message: Message) -> int:
    """Characters in the strings of a message (nested dicts three deep at most, as built here)."""
    total = 0
    for value in message.values():
        if type(value) is str:
            total += len(value)
        elif type(value) is dict:
            for inner in value.values():
                if type(inner) is str:
                    total += len(inner)
                elif type(inner) is dict:
                    for text in inner.values():
                        if type(text) is str:
                            total += len(text)
    return total


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` as JSON: json's default ASCII-only output, one byte per character.

    Strict JSON only: a NaN or an infinity (which ``json.dumps`` would write as the bare words
    ``NaN`` and ``Infinity``, refused by a strict receiver with the whole batch) is a ``ValueError``.
    Every message :func:`build_message` makes has none.
    """
    return len(json.dumps(value, default=str, allow_nan=False))


def fit_to_size(message: Message, limit: int = MAX_MESSAGE_BYTES, deep: bool = False) -> Message:
    """Cut the longest strings of ``message`` until its JSON fits in ``limit`` bytes.

    The common message is a few hundred characters, far under any limit: that is decided from
    the character count alone, without encoding anything. ``deep``: strings may sit deeper than
    this module nests them (a hook's properties), so the count cannot decide.
    """
    if not deep and _characters_in(message) * _MAX_BYTES_PER_CHAR + 1024 <= limit:
        return message
    strings: List[Tuple[int, Any, Any]] = []
    _strings_in(message, None, None, strings)
    size = encoded_size(message)
    while size > limit:
        strings.sort(key=lambda entry: entry[0], reverse=True)
        length, parent, key = strings[0]
        if length == 0:
            break
        parent[key] = parent[key][: length // 2]
        strings[0] = (len(parent[key]), parent, key)
        size = encoded_size(message)
    return message


# --- A ``properties`` hook's result -------------------------------------------------------------

# Added (true) when some of the hook's properties were cut or left out to fit the message. The
# name is reserved: a hook's own entry of that name is never sent.
PROPERTIES_TRUNCATED = "propertiesTruncated"
# Containers nested deeper than this inside a hook's value are sent as null.
MAX_HOOK_DEPTH = 32
# What the marker costs in ``properties``: ``, "propertiesTruncated": true``.
_TRUNCATED_COST = len(', "propertiesTruncated": true')
# The least any entry of ``properties`` costs: ``, "": 0``.
_MIN_ENTRY_COST = len(', "": 0')
# The punctuation around an entry's name: ``, "`` name ``": `` (the quotes are counted with the name).
_ENTRY_PUNCTUATION = len(", : ")
# Strings longer than this are measured once however often they recur in a hook's result.
_MEASURED_ONCE = 256
# Ints this short always have a repr (Python refuses one of over 4300 digits).
_SHORT_INT = 10**18
# Longer ints are null: printing them costs more than they could be worth (and Python refuses to).
_LONGEST_INT_BITS = 14_000


class _TooBig(Exception):
    """The value being read is already over the room it may take: stop reading it."""


class _HookReader:
    """Turns a hook's values into strict JSON values (a fresh copy), counting their bytes as it goes.

    ``fixed`` counts what can never be cut (names, numbers, literals, punctuation, strings in
    arrays), ``text`` the strings that are values of objects, without their quotes (``fixed`` has
    those): the ones that may be cut. Reading stops with :class:`_TooBig` once ``fixed`` (with
    ``text`` too, when ``count_text``) is over ``limit``, so a huge value costs no more than the room.
    """

    __slots__ = (
        "count_text",
        "cut_at",
        "cuttable",
        "fixed",
        "last_text",
        "limit",
        "measured",
        "path",
        "text",
        "whole",
    )

    def __init__(self, cut_at: int) -> None:
        # No string longer than this can go whole: a longer one is cut later, or its entry left out.
        self.cut_at = cut_at
        # (object, name, string, bytes): the strings that may be cut, where they sit.
        self.cuttable: List[Tuple[Dict[str, Any], str, str, int]] = []
        self.count_text = 0
        self.limit = 0
        self.fixed = 0
        self.text = 0
        self.last_text = 0
        self.whole = True
        self.path: Set[int] = set()  # ids of the containers being read: a cycle is cut there
        # Long strings already measured, by id (one string may recur in many places): (it, well formed, bytes).
        self.measured: Dict[int, Tuple[str, str, int]] = {}

    def start(self, limit: int, count_text: bool) -> None:
        self.limit = limit
        self.count_text = 1 if count_text else 0
        self.fixed = self.text = 0
        self.whole = True

    def value(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            return self.string(value)
        if value is None or kind is bool:
            self.fixed += 5 if value is False else 4  # null, true, false
            return value
        if kind is int or kind is float:
            return self.number(value)
        if isinstance(value, dict):
            return self.object(value, depth)
        if isinstance(value, (list, tuple)):
            return self.array(value, depth)
        if isinstance(value, str):
            return self.string(str.__str__(value))
        if isinstance(value, (int, float)):  # a subclass (an IntEnum): the number, as json writes it
            return self.number(value)
        try:
            text = str(value)  # not JSON: sent as its str(), as the README says
        except Exception:
            self.fixed += 4
            return None
        return self.string(str.__str__(text))

    def string(self, text: str) -> str:
        if len(text) > self.cut_at:
            if self.count_text:
                raise _TooBig
            # Longer than any room: it is cut (to well under this) or its entry is left out. It is
            # neither copied nor encoded now, so a long string costs nothing however often it recurs.
            self.whole = False
            self.fixed += self.cut_at + 3
            self.last_text = self.cut_at + 1
            return text
        if len(text) > _MEASURED_ONCE:
            known = self.measured.get(id(text))
            if known is not None and known[0] is text:
                self.fixed += known[2] + 2
                self.last_text = known[2]
                return known[1]
        cleaned = text if text.isascii() else well_formed(text)
        size = len(encode_basestring_ascii(cleaned))
        self.fixed += size
        self.last_text = size - 2
        if len(text) > _MEASURED_ONCE:
            self.measured[id(text)] = (text, cleaned, size - 2)
        return cleaned

    def number(self, value: Any) -> Any:
        if isinstance(value, float):
            if not math.isfinite(value):
                self.fixed += 4
                return None  # NaN and the infinities are not JSON: null, as JavaScript's JSON.stringify
            text = float.__repr__(value)
            self.fixed += len(text)
            return value if type(value) is float else float(text)
        try:
            if int.bit_length(value) > _LONGEST_INT_BITS:
                raise ValueError
            text = int.__repr__(value)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            self.fixed += 4
            return None
        self.fixed += len(text)
        return value if type(value) is int else int(text)

    def object(self, value: Dict[Any, Any], depth: int) -> Optional[Dict[str, Any]]:
        marker = id(value)
        if depth > MAX_HOOK_DEPTH or marker in self.path:
            self.fixed += 4
            return None
        self.path.add(marker)
        copy: Dict[str, Any] = {}
        self.fixed += 2
        try:
            self.items(value.items(), copy, depth)
        except _TooBig:
            raise
        except Exception:
            # An items() that raises, a dict changed while read: the rest from what the dict holds
            # (the names read already are skipped), else what could be read goes.
            if type(value) is not dict:
                with contextlib.suppress(Exception):
                    self.items(dict.items(value), copy, depth)
        finally:
            self.path.discard(marker)
        return copy

    def items(self, pairs: Iterable[Any], copy: Dict[str, Any], depth: int) -> None:
        """Read a dict's ``pairs`` into ``copy``."""
        for key, item in pairs:
            name = key_text(key)
            if name is None or name in copy:
                continue  # the first of the names that read the same is the one that goes
            if len(name) > self.cut_at:
                raise _TooBig
            self.fixed += len(encode_basestring_ascii(name)) + (4 if copy else 2)
            if type(item) is str and len(item) <= _MEASURED_ONCE and len(item) <= self.cut_at and item.isascii():
                size = len(encode_basestring_ascii(item)) - 2
                self.fixed += 2
                self.text += size
                self.cuttable.append((copy, name, item, size))
                copy[name] = item
                if self.fixed + self.text * self.count_text > self.limit:
                    raise _TooBig
                continue
            cleaned = self.value(item, depth + 1)
            if type(cleaned) is str:
                size = self.last_text
                self.fixed -= size
                self.text += size
                self.cuttable.append((copy, name, cleaned, size))
            copy[name] = cleaned
            if self.fixed + self.text * self.count_text > self.limit:
                raise _TooBig

    def array(self, value: Any, depth: int) -> Optional[List[Any]]:
        marker = id(value)
        if depth > MAX_HOOK_DEPTH or marker in self.path:
            self.fixed += 4
            return None
        self.path.add(marker)
        copy: List[Any] = []
        self.fixed += 2
        try:
            for item in value:
                if copy:
                    self.fixed += 2
                kind = type(item)
                if kind is int and -_SHORT_INT < item < _SHORT_INT:  # the common cases, read here at once
                    self.fixed += len(repr(item))
                    copy.append(item)
                elif kind is str and len(item) <= _MEASURED_ONCE and len(item) <= self.cut_at and item.isascii():
                    self.fixed += len(encode_basestring_ascii(item))
                    copy.append(item)
                else:
                    copy.append(self.value(item, depth + 1))
                if self.fixed + self.text * self.count_text > self.limit:
                    raise _TooBig
        except _TooBig:
            raise
        except Exception:
            pass  # an __iter__ that raises: what could be read goes
        finally:
            self.path.discard(marker)
        return copy


def well_formed(text: str) -> str:
    """``text`` as valid Unicode: a lone surrogate (``"\\ud800"``, or what ``surrogateescape`` left)
    becomes U+FFFD, and a surrogate pair held as two code points becomes the one character it means.

    ``json.dumps`` writes a lone surrogate as the escape ``\\ud800``, which is JSON's grammar but not
    Unicode: a UTF-8 encoder refuses it (``ensure_ascii=False``), and strict receivers refuse or
    replace it.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def key_text(key: Any) -> Optional[str]:
    """A hook's dict key as a JSON object name: a string as it is (well-formed); ``None``, a bool,
    an int or a float as ``json.dumps`` names them (``"null"``, ``"true"``, ``"1"``, ``"1.5"``,
    ``"NaN"``); anything else as its ``str()``. None when it has no name: its ``str()`` raises, or
    it is an int too long to print."""
    if type(key) is str:
        name = key
    elif isinstance(key, str):
        name = str.__str__(key)
    elif key is None or isinstance(key, bool):
        return "null" if key is None else "true" if key else "false"
    elif isinstance(key, int):
        if int.bit_length(key) > _LONGEST_INT_BITS:
            return None
        try:
            return int.__repr__(key)
        except ValueError:
            return None
    elif isinstance(key, float):
        if math.isfinite(key):
            return float.__repr__(key)
        return "NaN" if key != key else "Infinity" if key > 0 else "-Infinity"
    else:
        try:
            name = str.__str__(str(key))
        except Exception:
            return None
    return name if name.isascii() else well_formed(name)


def add_hook_properties(message: Message, extra: Mapping[Any, Any]) -> None:
    """Add a ``properties`` hook's result to the (already fitted) ``message``'s ``properties``.

    Never raises, and never drops the message: whatever cannot be read or does not fit is left out.

    - Values become strict JSON, a copy taken now: strings, numbers, true/false/null, objects (from
      dicts) and arrays (from lists and tuples); NaN and the infinities become ``null`` (what
      JavaScript's ``JSON.stringify`` does), anything else its ``str()`` (``null`` if that raises).
      Lone surrogates become U+FFFD. A container inside itself, or nested more than
      ``MAX_HOOK_DEPTH`` deep, is ``null``. A dict subclass whose ``items()`` raises is read from what
      the dict holds; any other mapping or list that raises while read keeps what was read.
    - Keys become names as ``json.dumps`` makes them (``1`` -> ``"1"``, ``None`` -> ``"null"``, others
      their ``str()``); when two read the same, the first goes. A key naming a standard field (or
      ``propertiesTruncated``) is left out: the standard fields always go, intact.
    - Fitting, in the room the standard fields leave under Segment's 32 KB:

      1. if all of it fits, all of it goes;
      2. else, if cutting strings makes all of it fit, every entry goes and the longest strings that
         are values of objects (at any depth) are cut to one common length, longest first (names,
         numbers and strings inside arrays are never cut);
      3. else (too many entries, or too much that cannot be cut, so that some entry has to be left
         out anyway), nothing is cut: going in the hook's order, each whole entry that still fits in
         what is left goes, and the others are left out. So the entries left out first are the ones
         late in the hook's order, and those too big for the room that is left: a hook should put
         the properties that matter most first.

      In 2 and 3, ``propertiesTruncated: true`` is added.

    Each entry is read once and measured as it is read, and no value is read past the room, so
    this is linear in the hook's result (and in the room) with a small constant.
    """
    properties = message["properties"]
    added: Dict[str, Any] = {}
    truncated = False
    try:
        room = MAX_MESSAGE_BYTES - encoded_size(message)
        added, truncated = _fitted_hook_properties(extra, properties, room)
        if not added and not truncated:
            return
        properties.update(added)
        if truncated:
            properties[PROPERTIES_TRUNCATED] = True
        if encoded_size(message) <= MAX_MESSAGE_BYTES:  # a last check that costs one encoding
            return
    except Exception:
        pass
    for name in added:
        properties.pop(name, None)
    if truncated:
        properties.pop(PROPERTIES_TRUNCATED, None)


def _fitted_hook_properties(
    extra: Mapping[Any, Any], properties: Mapping[str, Any], room: int
) -> Tuple[Dict[str, Any], bool]:
    """What of ``extra`` goes into ``properties`` given ``room`` bytes, and whether any was cut or
    left out (see :func:`add_hook_properties`)."""
    room_marked = room - _TRUNCATED_COST  # the room once ``propertiesTruncated`` is in it
    reader = _HookReader(cut_at=max(room, 0))
    reader.path.add(id(extra))
    taken: Set[str] = set(properties)
    taken.add(PROPERTIES_TRUNCATED)
    added: Dict[str, Any] = {}
    # Step 1 and 2's candidates, in the hook's order: (name, value, bytes, read whole).
    entries: List[Tuple[str, Any, int, bool]] = []
    fixed_total = whole_total = 0
    all_whole = True
    # Step 3, once it is known that it is step 3: what goes, and the room it leaves.
    whole_only = False
    kept: Dict[str, Any] = {}
    left = room_marked

    def to_whole_only() -> None:
        nonlocal whole_only, left
        whole_only = True
        for name, value, size, whole in entries:
            if whole and size <= left:
                kept[name] = value
                left -= size
        entries.clear()

    # A dict subclass whose items() raises is read on from what the dict holds (the names read
    # already are skipped); any other mapping that cannot be read on keeps what was read.
    fallback: Optional[Dict[Any, Any]] = extra if isinstance(extra, dict) and type(extra) is not dict else None
    try:
        items: Iterator[Any] = iter(extra.items())
    except Exception:
        if fallback is None:
            return {}, False
        items, fallback = iter(dict.items(fallback)), None
    while True:
        try:
            pair = next(items)
        except StopIteration:
            break
        except Exception:
            if fallback is None:
                break
            items, fallback = iter(dict.items(fallback)), None
            continue
        try:
            key, value = pair
        except Exception:
            continue
        if type(key) is str and key.isascii():
            name = key
        else:
            found = key_text(key)
            if found is None:
                continue
            name = found
        if whole_only:
            if left < _MIN_ENTRY_COST:
                break  # nothing more can fit
            if len(name) + _MIN_ENTRY_COST > left:
                continue  # (a later entry of the same name cannot fit either)
            if name in taken:
                continue
            taken.add(name)
            head = len(encode_basestring_ascii(name)) + _ENTRY_PUNCTUATION
            if type(value) is str and head + len(value) + 2 > left:
                continue  # too long to go whole, known without reading it
            reader.cut_at = left - head
            reader.start(left - head, count_text=True)
            try:
                cleaned = reader.value(value, 1)
            except _TooBig:
                continue
            size = head + reader.fixed + reader.text
            if size <= left:
                kept[name] = cleaned
                left -= size
            continue
        if name in taken:
            continue
        taken.add(name)
        if len(name) > room:
            to_whole_only()  # this entry cannot go even cut: step 3
            continue
        head = len(encode_basestring_ascii(name)) + _ENTRY_PUNCTUATION
        if type(value) is str and len(value) <= _MEASURED_ONCE:  # the common case, read here at once
            text = value if value.isascii() else well_formed(value)
            size = len(encode_basestring_ascii(text)) - 2
            reader.cuttable.append((added, name, text, size))
            added[name] = text
            fixed_total += head + 2
            whole_total += head + 2 + size
            entries.append((name, text, head + 2 + size, True))
        elif type(value) is int and -_SHORT_INT < value < _SHORT_INT:
            size = head + len(repr(value))
            added[name] = value
            fixed_total += size
            whole_total += size
            entries.append((name, value, size, True))
        else:
            reader.start(room - head, count_text=False)
            mark = len(reader.cuttable)
            try:
                cleaned = reader.value(value, 1)
            except _TooBig:
                del reader.cuttable[mark:]
                to_whole_only()
                continue
            if type(cleaned) is str:  # a string value of ``properties`` itself may be cut too
                size = reader.last_text
                reader.fixed -= size
                reader.text += size
                reader.cuttable.append((added, name, cleaned, size))
            added[name] = cleaned
            size = head + reader.fixed + reader.text
            entries.append((name, cleaned, size, reader.whole))
            all_whole = all_whole and reader.whole
            fixed_total += head + reader.fixed
            whole_total += size
        if fixed_total > room:
            to_whole_only()  # all of it cannot fit even cut: step 3
    if whole_only:
        return kept, True
    if all_whole and whole_total <= room:
        return added, False
    if fixed_total <= room_marked:
        _cut_to_fit(reader.cuttable, room_marked - fixed_total)
        return added, True
    to_whole_only()
    return kept, True


def _cut_to_fit(cuttable: List[Tuple[Dict[str, Any], str, str, int]], budget: int) -> None:
    """Cut the strings so that their bytes (without quotes) add up to at most ``budget``: every
    string longer than one common level is cut to it, the level as high as the budget allows."""
    sizes = sorted(entry[3] for entry in cuttable)
    level = sizes[-1] if sizes else 0
    count = len(sizes)
    for size in sizes:
        if size * count > budget:
            level = budget // count
            break
        budget -= size
        count -= 1
    for parent, name, text, size in cuttable:
        if size > level:
            parent[name] = _cut_text(text, level)


def _cut_text(text: str, most: int) -> str:
    """The longest start of ``text`` whose JSON string takes at most ``most`` bytes inside its quotes;
    well-formed, never half an escape, never half a surrogate pair. Costs O(``most``)."""
    start = text[:most]  # a character takes at least one byte
    if not start.isascii():
        start = well_formed(start)
    inside = encode_basestring_ascii(start)[1:-1]
    if len(inside) == len(start):  # one byte a character
        return start
    inside = inside[:most]
    for _ in range(6):  # the longest escape, \uXXXX, is 6 characters
        try:
            cut = json.loads('"' + inside + '"')
        except ValueError:
            inside = inside[:-1]
            continue
        if cut and "\ud800" <= cut[-1] <= "\udbff":
            cut = cut[:-1]
        return str(cut)
    return ""
