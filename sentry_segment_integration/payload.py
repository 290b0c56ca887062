"""Sentry event -> Segment ``track`` message. Pure functions: no I/O, no state.

Every reader here tolerates any shape a ``before_send`` hook may leave behind: a value of an
unexpected type is turned into a string or left out, never an error.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple
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
        return value[:MAX_FIELD_CHARS]
    try:
        if isinstance(value, (dict, list, tuple)):
            text = json.dumps(value, default=repr, ensure_ascii=False)
        else:
            text = str(value)
    except Exception:  # a cycle, a broken __str__: leave the field empty rather than fail
        return ""
    return text[:MAX_FIELD_CHARS]


def user_id_of(event: Mapping[str, Any]) -> Optional[str]:
    """The event's user id as Segment's ``userId``, or None when it has no usable one."""
    user = event.get("user")
    if type(user) is not dict and not isinstance(user, Mapping):  # the exact type first: it is cheaper
        return None
    user_id = user.get("id")
    if type(user_id) is str:
        return user_id[:MAX_FIELD_CHARS] or None
    if user_id is None or isinstance(user_id, (bool, dict, list, tuple, set)):
        return None
    text = str(user_id)
    return text[:MAX_FIELD_CHARS] if text else None


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


def timestamp_of(event: Mapping[str, Any], now: datetime) -> str:
    """The event's own time in UTC, ISO 8601 with milliseconds; ``now`` when unreadable."""
    value = event.get("timestamp")
    if type(value) is str and _is_sentry_utc_time(value):
        return value[:23] + "+00:00"
    when = _parse_timestamp(value) or now
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds")


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
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
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
    user_id: str,
    now: Optional[datetime] = None,
    send_ip: bool = True,
    send_query_string: bool = True,
    extra_properties: Optional[Mapping[str, Any]] = None,
) -> Message:
    """The complete Segment ``track`` message for one qualifying Sentry event.

    The result is final: it goes onto the Segment library's queue as it is, already within
    Segment's 32 KB message limit. ``extra_properties`` are added to ``properties`` where they do
    not name one of the standard fields.
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
        "event": EVENT_NAME,
        "userId": user_id,
        # Segment de-duplicates on messageId, so a retried batch never counts an error twice.
        "messageId": event_id or uuid.uuid4().hex,
        "timestamp": timestamp_of(event, now or datetime.now(timezone.utc)),
        "properties": properties,
        "context": context,
    }
    if extra_properties:
        return _with_extra_properties(fit_to_size(message), extra_properties)
    return fit_to_size(message)


def _with_extra_properties(message: Message, extra: Mapping[str, Any]) -> Message:
    """Add a hook's properties as JSON values, cut to the room the message leaves, or not at all."""
    properties = message["properties"]
    values = json.loads(json.dumps(dict(extra), default=str))
    added = {key: value for key, value in values.items() if key not in properties}
    room = MAX_MESSAGE_BYTES - encoded_size(message)
    fit_to_size(added, room, deep=True)
    if encoded_size(added) <= room:  # strings inside lists are not cut: then none of it goes
        properties.update(added)
    return message


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
    """Bytes of ``value`` as JSON: json's default ASCII-only output, one byte per character."""
    return len(json.dumps(value, default=str))


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
