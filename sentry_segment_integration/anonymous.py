"""A signed-out visitor's Segment anonymous id, for an error being captured (the ``anonymous_id`` option).

Segment's analytics.js keeps the visitor's id in the ``ajs_anonymous_id`` cookie, sometimes JSON-quoted:
``ajs_anonymous_id=%22abc%22`` (URL-encoded quotes, analytics.js classic) or ``ajs_anonymous_id="abc"``
(literal quotes); both, and the plain ``ajs_anonymous_id=abc``, give ``abc``.

The option: ``None`` (off), ``"cookie"`` (that cookie, of the request being handled) or a function
``(event, hint) -> str | None``. How the integration uses this module:

1. At construction, :func:`parse_anonymous_id` validates the option (a :class:`ConfigurationError`
   otherwise) into an :class:`AnonymousIdSource`, or ``None``.
2. In ``setup_once`` (or at construction), when ``source.reads_cookie``, :func:`install_cookie_readers`:
   once per process, idempotent. With the option off nothing is installed, so no request pays anything.
3. For each error event, on the capturing thread (the transport hook), before anything hands the event to
   another thread (the shared limiter's): :func:`anonymous_id_of`. It never raises. It returns a valid id
   (a string, stripped, 1 to :data:`MAX_ANONYMOUS_ID_LENGTH` characters, no control or format characters)
   or ``None``. When the ``anonymous_id`` function raises or returns something else than a string or
   ``None`` (or this module fails unexpectedly), the failure is logged at WARNING with its traceback
   (logger ``sentry_segment_integration``), the result is ``None``, and ``on_error(exception)`` is called:
   that is where the caller counts ``internal_error``. A visitor's malformed cookie, or a function's
   string that is not a usable id (blank, too long, control characters), is just ``None``: no error.

What ``"cookie"`` reads: the one ``ajs_anonymous_id`` cookie of the live request, at capture time, so it
works without ``send_default_pii`` (Sentry's events then carry no cookies). Nothing is copied per request:
a reference to the request's own WSGI environ or ASGI scope is kept for the request's duration, and the
cookie is looked for only when an error is captured. No other cookie or header is read, kept or returned,
and the Sentry event is never changed. Where the live request comes from:

- Flask: ``flask.has_request_context()`` and ``flask.request.cookies`` (public API; nothing installed).
- Django under WSGI: the public ``request_started`` / ``request_finished`` signals keep the request's
  ``environ`` in a context variable.
- Django under ASGI, and Starlette / FastAPI: the ASGI entry point of the framework's application class,
  ``django.core.handlers.asgi.ASGIHandler.__call__`` and ``starlette.applications.Starlette.__call__``, is
  wrapped to keep the request's ``scope`` in a context variable, the way sentry-sdk's own Django and
  Starlette integrations wrap these same two methods. Neither framework has a public per-request hook that
  runs in the request's context: Starlette has no request signal, and whether a context variable that a
  ``request_started`` receiver sets reaches the view under Django's ASGI handler depends on the versions
  (Django 5.2 sends the signal through ``asyncio.gather``: lost on CPython 3.11, kept on 3.13). The
  wrapper relies only on the method being the ASGI callable ``(self, scope, receive, send)``, which the
  ASGI specification fixes.
- Any other ASGI application: wrap it in :class:`AnonymousIdMiddleware`.
- Otherwise (a thread the application started, a task queue), the event's own ``request.cookies``, which
  Sentry records with ``send_default_pii=True``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import sys
import threading
import unicodedata
from contextvars import ContextVar, Token
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any, Awaitable, Callable, Iterable, Mapping, MutableMapping, Optional
from urllib.parse import unquote

from sentry_segment_integration._log import logger
from sentry_segment_integration.settings import option_error

COOKIE_NAME = "ajs_anonymous_id"
OPTION = "anonymous_id"
# The longest id sent: analytics.js's ids are 36-character UUIDs, and a longer one is not an id.
MAX_ANONYMOUS_ID_LENGTH = 200
# A browser keeps at most 4096 bytes of a cookie; a longer value is not analytics.js's, and is not decoded.
MAX_COOKIE_VALUE_LENGTH = 4096
# What Sentry puts in place of a value its data scrubbing removed.
_SENTRY_SUBSTITUTES = frozenset({"[Filtered]"})
# Unicode categories an id must not contain: controls (C0, DEL, C1), format characters (zero-width and
# bidirectional marks), lone surrogates, line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

AnonymousIdHook = Callable[[Mapping[str, Any], Mapping[str, Any]], Optional[str]]
ErrorCallback = Callable[[Exception], object]
_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[Any]]
_Send = Callable[[Any], Awaitable[None]]
_AsgiApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


@dataclass(frozen=True)
class AnonymousIdSource:
    """Where anonymous ids come from: the ``ajs_anonymous_id`` cookie (``hook`` is None), or ``hook``."""

    hook: Optional[AnonymousIdHook] = None

    @property
    def reads_cookie(self) -> bool:
        return self.hook is None

    def __repr__(self) -> str:
        return "'cookie'" if self.hook is None else f"<function {getattr(self.hook, '__qualname__', '?')}>"


COOKIE = AnonymousIdSource()


def parse_anonymous_id(value: Any) -> Optional[AnonymousIdSource]:
    """The ``anonymous_id`` option, validated: ``None``, ``"cookie"`` or a function ``(event, hint)``."""
    if value is None:
        return None
    if isinstance(value, str) and value == "cookie":
        return COOKIE
    if callable(value) and not isinstance(value, str):
        return AnonymousIdSource(hook=value)
    raise option_error(
        OPTION,
        f"None, 'cookie' (the analytics.js {COOKIE_NAME} cookie) or a function (event, hint) -> str or None",
        value,
    )


def valid_anonymous_id(value: Any) -> Optional[str]:
    """``value`` stripped, if it is a usable id: a string of 1 to 200 characters without control or
    format characters. Otherwise None."""
    if not isinstance(value, str):
        return None
    text = str.strip(value)  # str.strip, not a subclass's own strip(): the result is a plain str
    if not text or len(text) > MAX_ANONYMOUS_ID_LENGTH:
        return None
    if not (text.isascii() and text.isprintable()) and any(
        unicodedata.category(character) in _FORBIDDEN_CATEGORIES for character in text
    ):
        return None
    return text


def anonymous_id_from_cookie(value: Any) -> Optional[str]:
    """The id in a raw ``ajs_anonymous_id`` cookie value: ``abc``, ``%22abc%22`` or ``"abc"`` give ``abc``.

    The value is percent-decoded (UTF-8), then, when it is JSON-quoted, JSON-decoded. None for anything
    else: not a string, longer than 4096 characters, bad percent-encoding or JSON, a JSON value other
    than a string, a stray quote, or not a :func:`valid_anonymous_id`. Never raises.
    """
    if not isinstance(value, str) or len(value) > MAX_COOKIE_VALUE_LENGTH:
        return None
    value = str.strip(value)
    if "%" in value:
        try:
            value = unquote(value, errors="strict")
        except UnicodeDecodeError:
            return None
        value = value.strip()
    if value.startswith('"'):
        try:
            value = json.loads(value)
        except ValueError:  # JSONDecodeError: not one JSON string
            return None
        if not isinstance(value, str):
            return None
    elif '"' in value:
        return None
    return valid_anonymous_id(value)


def anonymous_id_from_cookie_header(header: Any) -> Optional[str]:
    """The id of the first valid ``ajs_anonymous_id`` in a ``Cookie`` header (``a=1; ajs_anonymous_id=...``).

    Only that cookie's value is decoded; other cookies are skipped unread. Never raises.
    """
    if not isinstance(header, str) or COOKIE_NAME not in header:
        return None
    for part in header.split(";"):
        name, separator, raw = part.partition("=")
        if separator and name.strip() == COOKIE_NAME:
            found = anonymous_id_from_cookie(raw)
            if found is not None:
                return found
    return None


def _first_valid(values: Iterable[Any]) -> Optional[str]:
    for value in values:
        if isinstance(value, str) and value not in _SENTRY_SUBSTITUTES:
            found = anonymous_id_from_cookie(value)
            if found is not None:
                return found
    return None


def anonymous_id_of(
    source: Optional[AnonymousIdSource],
    event: Mapping[str, Any],
    hint: Optional[Mapping[str, Any]] = None,
    on_error: Optional[ErrorCallback] = None,
) -> Optional[str]:
    """The anonymous id of the visitor ``event`` (being captured now, on this thread) happened to, or None.

    Never raises (but an ``Exception``-less ``BaseException``, a ``KeyboardInterrupt``, goes through). A
    failure of the ``anonymous_id`` function, or of this module, is logged with its traceback and handed
    to ``on_error`` (where the caller counts ``internal_error``); the result is then None. Never edits
    ``event``.
    """
    if source is None:
        return None
    try:
        if source.hook is not None:
            return _from_hook(source.hook, event, hint)
        return _from_live_request() or _from_event(event)
    except Exception as error:
        what = f"the {OPTION!r} function failed" if source.hook is not None else "reading the visitor's cookie failed"
        logger.warning("%s; the event is handled as one without an anonymous id", what, exc_info=True)
        if on_error is not None:
            try:
                on_error(error)
            except Exception:
                logger.exception("the caller's on_error failed")
        return None


def _from_hook(hook: AnonymousIdHook, event: Mapping[str, Any], hint: Optional[Mapping[str, Any]]) -> Optional[str]:
    result: Any = hook(event, hint if hint is not None else {})
    if result is None:
        return None
    if not isinstance(result, str):
        raise TypeError(f"the {OPTION!r} function returned a {type(result).__name__}, not a str or None")
    found = valid_anonymous_id(result)
    if found is None and logger.isEnabledFor(logging.DEBUG):
        # Not its value: it may be anything the function read.
        logger.debug("the %r function returned a string of %d characters that is not a usable id", OPTION, len(result))
    return found


# --- the live request -------------------------------------------------------------------------------------

# The WSGI environ of the Django request being handled in this context (thread): set on request_started,
# cleared on request_finished.
_DJANGO_ENVIRON: ContextVar[Optional[Mapping[str, Any]]] = ContextVar("sentry_segment_django_environ", default=None)
# The ASGI scope of the request (Django, Starlette, AnonymousIdMiddleware) being handled in this task.
_ASGI_SCOPE: ContextVar[Optional[Mapping[str, Any]]] = ContextVar("sentry_segment_asgi_scope", default=None)


def _from_live_request() -> Optional[str]:
    flask = sys.modules.get("flask")  # not imported: no Flask request can be running
    if flask is not None and flask.has_request_context():
        cookies = flask.request.cookies
        getlist = getattr(cookies, "getlist", None)
        found = _first_valid(getlist(COOKIE_NAME) if getlist is not None else [cookies.get(COOKIE_NAME)])
        if found is not None:
            return found
    scope = _ASGI_SCOPE.get()
    if scope is not None:
        found = _from_asgi_headers(scope.get("headers"))
        if found is not None:
            return found
    environ = _DJANGO_ENVIRON.get()
    if environ is not None:
        return anonymous_id_from_cookie_header(_wsgi_text(environ.get("HTTP_COOKIE")))
    return None


def _from_asgi_headers(headers: Any) -> Optional[str]:
    if not headers:
        return None
    for item in headers:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            continue
        name, value = item
        if isinstance(name, bytes) and name.lower() == b"cookie" and isinstance(value, bytes):
            found = anonymous_id_from_cookie_header(_decode_header(value))
            if found is not None:
                return found
    return None


def _decode_header(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _wsgi_text(value: Any) -> Any:
    """A WSGI header (bytes read as Latin-1, PEP 3333) as the UTF-8 text the browser sent, when it is."""
    if isinstance(value, str) and not value.isascii():
        try:
            return value.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return value
    return value


def _from_event(event: Mapping[str, Any]) -> Optional[str]:
    """The cookie from the event's ``request.cookies`` (Sentry records them with ``send_default_pii``)."""
    request = event.get("request") if isinstance(event, Mapping) else None
    cookies = request.get("cookies") if isinstance(request, Mapping) else None
    if isinstance(cookies, Mapping):
        return _first_valid([cookies.get(COOKIE_NAME)])
    if isinstance(cookies, str):
        return anonymous_id_from_cookie_header(cookies)
    if isinstance(cookies, (list, tuple)):
        pairs = (pair for pair in cookies if isinstance(pair, (list, tuple)) and len(pair) == 2)
        return _first_valid(value for name, value in pairs if name == COOKIE_NAME)
    return None


# --- the readers' installation ------------------------------------------------------------------------------

_INSTALL_LOCK = threading.Lock()
_INSTALLED = False
# Marks an ASGI entry point this module wrapped, so that it is never wrapped twice.
_WRAPPED_MARK = "_sentry_segment_anonymous_id"


def install_cookie_readers() -> None:
    """Make the live request visible at capture time (for ``anonymous_id="cookie"``): once per process.

    Connects Django's ``request_started`` / ``request_finished`` signals and wraps Django's and Starlette's
    ASGI entry points, each only when the framework is installed. Idempotent and thread-safe. Raises
    nothing for a framework that is missing or cannot be set up: that one's requests are then read from
    the event only (logged at WARNING).
    """
    global _INSTALLED
    with _INSTALL_LOCK:
        if _INSTALLED:
            return
        _INSTALLED = True
        for name, install in (("django", _install_django), ("starlette", _install_starlette)):
            if find_spec(name) is None:
                continue
            try:
                install()
            except Exception:
                logger.warning("cannot read the %s cookie of %s requests", COOKIE_NAME, name, exc_info=True)


def _install_django() -> None:
    # Imported by name: Django has no type information (and the lint environment has no Django).
    signals = importlib.import_module("django.core.signals")
    asgi = importlib.import_module("django.core.handlers.asgi")
    # weak=False: the receivers are module functions; dispatch_uid: connected once whatever happens.
    signals.request_started.connect(_django_request_started, weak=False, dispatch_uid=_WRAPPED_MARK)
    signals.request_finished.connect(_django_request_finished, weak=False, dispatch_uid=_WRAPPED_MARK)
    _wrap_asgi_entry_point(asgi.ASGIHandler)


def _install_starlette() -> None:
    applications = importlib.import_module("starlette.applications")
    _wrap_asgi_entry_point(applications.Starlette)


def _django_request_started(sender: Any, environ: Any = None, **kwargs: Any) -> None:
    # Under ASGI Django sends `scope` instead, from a task of its own: ASGIHandler's wrapper keeps it.
    if environ is not None:
        _DJANGO_ENVIRON.set(environ)


def _django_request_finished(sender: Any, **kwargs: Any) -> None:
    if _DJANGO_ENVIRON.get() is not None:
        _DJANGO_ENVIRON.set(None)


def _wrap_asgi_entry_point(cls: Any) -> None:
    original = cls.__call__
    if getattr(original, _WRAPPED_MARK, False):
        return

    @functools.wraps(original)
    async def __call__(self: Any, scope: _Scope, receive: _Receive, send: _Send) -> Any:
        return await _with_scope(functools.partial(original, self), scope, receive, send)

    setattr(__call__, _WRAPPED_MARK, True)
    cls.__call__ = __call__


async def _with_scope(app: Callable[..., Awaitable[Any]], scope: _Scope, receive: _Receive, send: _Send) -> Any:
    """Run ``app`` with ``scope`` as the live request of this task."""
    if scope.get("type") not in ("http", "websocket"):
        return await app(scope, receive, send)
    token: Token[Optional[Mapping[str, Any]]] = _ASGI_SCOPE.set(scope)
    result = await app(scope, receive, send)
    # Reset only when the application returned. An exception that escapes it is captured further out,
    # in this same task (sentry-sdk's ASGI middleware wraps the same entry point, possibly around this
    # one): the scope stays visible there, and goes with the task, whose context only this request uses.
    with contextlib.suppress(ValueError):  # set in another context: not in one coroutine, but never raise
        _ASGI_SCOPE.reset(token)
    return result


class AnonymousIdMiddleware:
    """An ASGI middleware that makes each request's ``ajs_anonymous_id`` cookie readable at capture time,
    for an ASGI framework other than Django and Starlette/FastAPI (which need nothing):
    ``app = AnonymousIdMiddleware(app)``. It reads nothing itself."""

    def __init__(self, app: _AsgiApp) -> None:
        self.app = app

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        await _with_scope(self.app, scope, receive, send)
