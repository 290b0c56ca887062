"""Sentry events saved as JSON: reading them from files, and normalising them to the SDK's shape.

Used by ``sentry-segment replay`` and ``explain``. A file may hold one event (pretty-printed or
not), several events one after another, a JSON array of events (what Sentry's API list endpoints
return), or JSON lines (one event per line, what Sentry's data exports and most log pipelines
write). Whatever cannot be read is reported as a :class:`BadInput` naming the file and line, and
reading goes on with the next event wherever the format allows it.

Reading costs time in proportion to the file, whatever is wrong in it: a JSON parse error is
reported from a bounded window of the text (Python's own error would count the lines from the
start of the file for each one), and JSON nested too deeply to parse is a :class:`BadInput` too.

Sentry's web API serialises events differently from what an SDK sends (``eventID``,
``dateCreated``, ``entries``, ...); :func:`normalise_event` maps that shape, and the one of the
"JSON" link in Sentry's UI, onto the SDK's, so the qualifying rules and the payload see the same
fields the integration would have seen when the error happened.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, Generator, Iterator, List, Optional, Tuple, Union
from urllib.parse import quote, urlencode

# Keys that make a JSON object a Sentry event, in the SDK's shape or in the API's.
_EVENT_ID_KEYS = ("event_id", "eventID")
_EVENT_CONTENT_KEYS = ("exception", "entries", "logentry")
# ``id`` alone is too common to mean "event": with one of these next to it, it does.
_API_EVENT_KEYS = ("dateCreated", "groupID", "projectID", "platform", "timestamp")
# Event types that SDKs send without a ``type`` and Sentry's server fills in when it stores them.
_UNTYPED_EVENT_TYPES = ("error", "default")


@dataclass(frozen=True)
class Location:
    """Where something was read: a file and, when it is known, a line (1-based)."""

    path: str
    line: Optional[int] = None

    def __str__(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"


@dataclass(frozen=True)
class SavedEvent:
    """One JSON object that looks like a Sentry event, as it was in the file (not normalised)."""

    where: Location
    event: Dict[str, Any]
    # How far into its file reading has come, for a progress indicator: (bytes read, file size).
    progress: Tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class BadInput:
    """Something in a file that is not a readable Sentry event: skipped, reported, counted."""

    where: Location
    problem: str
    progress: Tuple[int, int] = (0, 0)


Item = Union[SavedEvent, BadInput]


@dataclass
class NormalisedEvent:
    """An event in the SDK's shape, and what had to be changed to get it there (for ``explain``)."""

    event: Dict[str, Any]
    changes: List[str] = field(default_factory=list)


def read_saved_events(path: str) -> Iterator[Item]:
    """Every event of one file, in order; a :class:`BadInput` for whatever cannot be read."""
    try:
        size = os.path.getsize(path)
        stream = open(path, "rb")  # noqa: SIM115  (closed below, after the generator is done)
    except OSError as error:
        yield BadInput(Location(path), f"cannot read the file: {error.strerror or error}")
        return
    with stream:
        first, second = _first_meaningful_lines(stream)
        stream.seek(0)
        if first is None:
            yield BadInput(Location(path), "the file is empty: no event in it", (size, size))
        elif _is_json_lines(first, second):
            yield from _read_json_lines(path, stream, size)
        else:
            yield from _read_documents(path, stream.read(), size)


def _first_meaningful_lines(stream: BinaryIO) -> Tuple[Optional[str], Optional[str]]:
    """The first two lines that are not blank: they tell JSON lines from a document or an array."""
    found: List[Optional[str]] = []
    for line in stream:
        text = line.decode("utf-8-sig", errors="replace").strip()
        if text:
            found.append(text)
            if len(found) == 2:
                break
    found += [None, None]
    return found[0], found[1]


def _is_json_lines(first: str, second: Optional[str]) -> bool:
    """JSON lines: the first line is a whole JSON object (a line starting with ``[`` may open a
    pretty-printed array, so it is read as a document). A first line nested too deeply to parse
    tells nothing: then the second line decides."""
    kind = _json_line_kind(first)
    if kind is None:
        return second is not None and _json_line_kind(second) is True
    return kind and not first.startswith("[")


def _json_line_kind(text: str) -> Optional[bool]:
    """Whether ``text`` is a whole JSON object or array; None when it is nested too deeply to tell."""
    if not text.startswith(("{", "[")):
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    except RecursionError:
        return None
    return True


def _read_json_lines(path: str, stream: BinaryIO, size: int) -> Iterator[Item]:
    """One JSON value per line, read as a stream: a file of any size, and a bad line costs one line."""
    offset = 0
    for number, raw in enumerate(stream, start=1):
        offset += len(raw)
        where = Location(path, number)
        progress = (offset, size)
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            yield BadInput(where, "not UTF-8 text", progress)
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except ValueError as error:
            truncated = not raw.endswith(b"\n") or _ends_early(error, text)
            hint = " (the line is cut short: a truncated file?)" if truncated else ""
            yield BadInput(where, f"not valid JSON: {_json_problem(error)}{hint}", progress)
            continue
        except RecursionError:
            yield BadInput(where, f"not valid JSON: {_TOO_DEEP}", progress)
            continue
        yield from _events_in(value, where, progress)


def _read_documents(path: str, data: bytes, size: int) -> Iterator[Item]:
    """JSON documents one after another: one pretty-printed event, a JSON array of events, several.

    The whole file is read: a single document cannot be parsed a piece at a time. The elements of
    an array are parsed one by one, so a truncated array still gives every event before the cut.
    After a document that cannot be parsed, reading goes on at the next line that starts one.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        yield BadInput(Location(path, line), "not UTF-8 text: the file is skipped", (size, size))
        return
    lines = _LineCounter(text)
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    while position < len(text):
        where = Location(path, lines.line_at(position))
        if text[position] == "[":
            after_array = yield from _read_array(path, text, position, lines, size)
            if after_array is None:
                return
            position = after_array
        else:
            try:
                value, end = _decode_at(decoder, text, position)
            except _NotJSON as error:
                where = Location(path, lines.line_at(error.position))
                if error.ends_early:
                    yield BadInput(where, "the JSON ends early: a truncated file?", (size, size))
                    return
                yield BadInput(where, f"not valid JSON: {error.problem}", (size, size))
                resume = _next_document_start(text, position)
                if resume is None:
                    return
                position = resume
                continue
            yield from _events_in(value, where, (end, size))
            position = _skip_space(text, end)


def _read_array(
    path: str, text: str, start: int, lines: _LineCounter, size: int
) -> Generator[Item, None, Optional[int]]:
    """The elements of the JSON array at ``start``; returns where reading may go on, or None."""
    decoder = json.JSONDecoder()
    position = _skip_space(text, start + 1)
    count = 0
    while True:
        where = Location(path, lines.line_at(position))
        if position >= len(text):
            yield BadInput(
                where, f"the JSON array ends early, after {count} element(s): a truncated file?", (size, size)
            )
            return None
        if text[position] == "]":
            return _skip_space(text, position + 1)
        try:
            value, end = _decode_at(decoder, text, position)
        except _NotJSON as error:
            if error.ends_early:
                problem = f"the JSON array ends early, after {count} element(s): a truncated file?"
            else:
                problem = f"not valid JSON: {error.problem}"
            where = Location(path, lines.line_at(error.position))
            yield BadInput(where, problem, (size, size))
            # The next element that starts a line where the broken one started: read on from there.
            resume = _next_document_start(text, position, _column_of(text, position), "{")
            if resume is None:
                return None
            position = resume
            continue
        count += 1
        progress = (end, size)
        if isinstance(value, Mapping):
            yield _as_event(value, where, progress)
        else:
            yield BadInput(where, f"not a Sentry event: the array holds a JSON {_json_type(value)}", progress)
        position = _skip_space(text, end)
        if position < len(text) and text[position] == ",":
            position = _skip_space(text, position + 1)
        elif position < len(text) and text[position] != "]":
            where = Location(path, lines.line_at(position))
            yield BadInput(where, "not valid JSON: expected ',' or ']' between the array's elements", (size, size))
            return None


def _events_in(value: Any, where: Location, progress: Tuple[int, int]) -> Iterator[Item]:
    """The events of one parsed JSON value: an event, or a list of them (a page of an API answer)."""
    if isinstance(value, Mapping):
        yield _as_event(value, where, progress)
    elif isinstance(value, list):
        for element in value:
            if isinstance(element, Mapping):
                yield _as_event(element, where, progress)
            else:
                yield BadInput(where, f"not a Sentry event: a JSON {_json_type(element)} in a list", progress)
    else:
        yield BadInput(where, f"not a Sentry event: a JSON {_json_type(value)}", progress)


def _as_event(value: Mapping[str, Any], where: Location, progress: Tuple[int, int]) -> Item:
    if looks_like_event(value):
        return SavedEvent(where, dict(value), progress)
    return BadInput(
        where,
        "not a Sentry event: a JSON object without event_id, eventID, exception, entries or logentry",
        progress,
    )


def looks_like_event(value: Mapping[str, Any]) -> bool:
    if any(key in value for key in _EVENT_ID_KEYS + _EVENT_CONTENT_KEYS):
        return True
    return "id" in value and any(key in value for key in _API_EVENT_KEYS)


class _LineCounter:
    """Line numbers of character offsets, counted from the last offset asked about.

    Offsets mostly increase; one that goes back (reading resumes before where a parse error was
    found) is counted back from there, never from the start: each costs what the parse before it
    read, and the whole file is counted in linear time.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._offset = 0
        self._line = 1

    def line_at(self, offset: int) -> int:
        if offset < self._offset:
            self._line -= self._text.count("\n", offset, self._offset)
        else:
            self._line += self._text.count("\n", self._offset, offset)
        self._offset = offset
        return self._line


# A parse begins on this many characters after where the value starts, four times more each time
# the value (or its error) reaches the end of that window.
_WINDOW = 1 << 13
# What the parser may look at beyond the place it reports (``-Infinity``, ``\\uXXXX``), with room
# to spare: a result this close to a window's end may depend on what comes after it.
_LOOKAHEAD = 64
_TOO_DEEP = "nested too deeply to read (more levels of arrays and objects than the parser takes)"


class _NotJSON(Exception):
    """Where and why the JSON value at a position cannot be parsed."""

    def __init__(self, problem: str, position: int, ends_early: bool) -> None:
        super().__init__(problem)
        self.problem = problem
        self.position = position
        self.ends_early = ends_early


def _decode_at(decoder: json.JSONDecoder, text: str, start: int) -> Tuple[Any, int]:
    """``decoder.raw_decode(text, start)`` at a cost that depends on the value, not on ``start``.

    ``json.JSONDecodeError`` counts the lines from the start of its text to say where an error
    is: on a file of bad lines that is quadratic. So the value is parsed in a window of the text
    from ``start``, a larger one whenever the window's end may have changed the result (an error
    or a value that ends near it, an unterminated string); an error well inside the window is
    the error the whole text has. Raises :class:`_NotJSON` with its position in ``text``.
    """
    size = _WINDOW
    while True:
        whole = start + size >= len(text)
        window = text[start:] if whole else text[start : start + size]
        try:
            value, end = decoder.raw_decode(window)
        except json.JSONDecodeError as error:
            cut_by_window = error.pos + _LOOKAHEAD >= len(window) or error.msg.startswith("Unterminated string")
            if whole or not cut_by_window:
                position = start + error.pos
                problem = f"{error.msg} (column {_column_of(text, position) + 1})"
                raise _NotJSON(problem, position, whole and _ends_early(error, window)) from None
        except ValueError as error:
            # Not a syntax error (an integer of more than 4,300 digits): the window, holding those
            # digits already, does not change it. Where in the value it is, the parser does not say.
            raise _NotJSON(str(error), start, False) from None
        except RecursionError:
            # Deeper than the parser can go, already within the window: no more text changes that.
            raise _NotJSON(_TOO_DEEP, start, False) from None
        else:
            if whole or end + _LOOKAHEAD < len(window):
                return value, start + end
        size *= 4


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _next_document_start(text: str, position: int, column: int = 0, openers: str = "{[") -> Optional[int]:
    """After JSON that cannot be parsed: the start of the next line that opens a new value
    (one of ``openers``) at ``column``, where the broken value started; None when there is none."""
    while True:
        newline = text.find("\n", position)
        if newline < 0:
            return None
        position = newline + 1
        start = position + column
        if text[position:start].strip(" \t") == "" and text[start : start + 1] in tuple(openers):
            return start


def _column_of(text: str, position: int) -> int:
    return position - (text.rfind("\n", 0, position) + 1)


def _json_problem(error: ValueError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} (column {error.colno})"
    return str(error)


def _ends_early(error: ValueError, text: str) -> bool:
    """The parser ran out of text, rather than meeting a wrong character: the JSON is cut short."""
    if not isinstance(error, json.JSONDecodeError):
        return False
    return _skip_space(text, error.pos) >= len(text) or error.msg.startswith("Unterminated string")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else type(value).__name__


def normalise_event(saved: Mapping[str, Any]) -> NormalisedEvent:
    """The event in the shape an SDK sends, whatever shape Sentry's API or UI saved it in.

    The saved object itself is not changed. Fields already in the SDK's shape win over the API's.
    """
    event: Dict[str, Any] = dict(saved)
    changes: List[str] = []

    event_id, source = _event_id_of(saved)
    if source != "event_id":
        event["event_id"] = event_id
        changes.append(f"event_id from {source}" if source else "event_id made from the event's content (it had none)")

    # Sentry's server stores error events with type "error" and messages with "default"; the
    # SDK sends both without a type, and the rules treat a type as "not an error".
    if event.get("type") in _UNTYPED_EVENT_TYPES:
        changes.append(f"type {event.pop('type')!r} dropped (an SDK sends that event without a type)")

    if not event.get("timestamp"):
        for key in ("dateCreated", "datetime", "dateReceived"):
            if saved.get(key):
                event["timestamp"] = saved[key]
                changes.append(f"timestamp from {key}")
                break

    tags = _tags_of(saved.get("tags"))
    if tags is not None and not isinstance(saved.get("tags"), Mapping):
        event["tags"] = tags
        changes.append("tags from a list of pairs to a dict")
    release = saved.get("release")
    if isinstance(release, Mapping):
        event["release"] = release.get("version") or release.get("shortVersion")
        changes.append("release from release.version")
    for name in ("environment", "level", "transaction", "release"):
        if not isinstance(event.get(name), str) and tags and isinstance(tags.get(name), str):
            event[name] = tags[name]
            changes.append(f"{name} from the tag {name!r}")

    entries = saved.get("entries")
    if isinstance(entries, list):
        _apply_entries(event, entries, changes)

    request = event.get("request")
    if isinstance(request, Mapping):
        query = request.get("query_string")
        if isinstance(query, list):
            event["request"] = {**request, "query_string": _encoded_query(query)}
            changes.append("request.query_string from a list of pairs")
    return NormalisedEvent(event, changes)


def _apply_entries(event: Dict[str, Any], entries: List[Any], changes: List[str]) -> None:
    """Sentry's API gives the event's interfaces as ``entries``: ``[{"type": ..., "data": ...}]``."""
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("data"), Mapping):
            continue
        kind, data = entry.get("type"), entry["data"]
        if kind == "exception" and "exception" not in event:
            event["exception"] = {"values": data.get("values")}
            changes.append("exception from entries[exception]")
        elif kind == "request" and "request" not in event:
            event["request"] = _request_from_entry(data)
            changes.append("request from entries[request]")
        elif kind == "message" and "logentry" not in event:
            formatted = data.get("formatted") or data.get("message")
            event["logentry"] = {"formatted": formatted}
            changes.append("logentry from entries[message]")


def _request_from_entry(data: Mapping[str, Any]) -> Dict[str, Any]:
    request: Dict[str, Any] = {"url": data.get("url"), "method": data.get("method"), "headers": data.get("headers")}
    query = data.get("query")
    if query is None:
        query = data.get("query_string")
    request["query_string"] = _encoded_query(query) if isinstance(query, list) else query
    return request


def _encoded_query(pairs: List[Any]) -> str:
    """Sentry stores the query string decoded, as pairs; an SDK sends it encoded, as a string."""
    usable = [(str(pair[0]), "" if pair[1] is None else str(pair[1])) for pair in pairs if _is_pair(pair)]
    return urlencode(usable, quote_via=quote)


def _tags_of(tags: Any) -> Optional[Dict[str, Any]]:
    """Tags as a dict: the SDK's dict, the API's ``[{"key", "value"}]``, or the store's ``[[k, v]]``."""
    if isinstance(tags, Mapping):
        return dict(tags)
    if not isinstance(tags, list):
        return None
    found: Dict[str, Any] = {}
    for tag in tags:
        if isinstance(tag, Mapping) and isinstance(tag.get("key"), str):
            found.setdefault(tag["key"], tag.get("value"))
        elif _is_pair(tag) and isinstance(tag[0], str):
            found.setdefault(tag[0], tag[1])
    return found


def _is_pair(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2


def _event_id_of(saved: Mapping[str, Any]) -> Tuple[str, str]:
    """The event's id and the key it came from; an id made from the content when it has none,
    so that replaying the same event twice still sends the same messageId."""
    for key in ("event_id", "eventID", "id"):
        value = saved.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            text = str(value).strip()
            # Sentry writes event ids as 32 hex digits; a UUID with dashes is the same id.
            compact = text.replace("-", "").lower()
            is_uuid = len(compact) == 32 and all(c in "0123456789abcdef" for c in compact)
            return (compact if is_uuid else text), key
    canonical = json.dumps(saved, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(canonical).hexdigest()[:32], ""
