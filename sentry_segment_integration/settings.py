"""The integration's options: validated once at construction, resolved per Sentry project.

A bad option is a :class:`ConfigurationError` (a ``ValueError``) that names the option and what
was expected, and never repeats a write key or a URL that may carry credentials.

Surrounding whitespace of a write key (``write_key``, ``SEGMENT_WRITE_KEY``, a project's
``write_key``), of ``host`` (and ``SEGMENT_HOST``) and of ``rate_limit_storage`` is ignored: a value
read from a file or a Kubernetes secret often ends with a newline. Whitespace inside is an error.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:  # anonymous.py imports this module
    from sentry_segment_integration.anonymous import AnonymousIdSource

from sentry_segment_integration.payload import EVENT_NAME

WRITE_KEY_ENV = "SEGMENT_WRITE_KEY"
HOST_ENV = "SEGMENT_HOST"
# Letters, digits, "-", "_" (Segment, RudderStack, Customer.io) and ":" (Jitsu's "id:secret" keys).
_WRITE_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_:-]+$")
_PROJECT_FIELDS = frozenset({"write_key", "enabled"})
MAX_EVENT_NAME_CHARS = 200
# Sentry's organization slugs: what its URL patterns take (`[\w_-]+`), at most its 50 characters.
_SLUG_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,50}")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Upper bounds of the numeric options. Beyond them a value is a mistake (or cannot even be a float:
# 10**400), and would overflow timers or memory rather than do what was meant.
MAX_RATE_LIMIT = 1_000_000_000  # events per second; None turns the limit off
MAX_INT_OPTIONS = {
    "max_queue_size": 10_000_000,  # messages held in memory
    "upload_size": 10_000,  # messages per batch (Segment caps a batch at 500 KB anyway)
    "max_retries": 1_000,
}
# Sentry's project and organization ids are 64-bit integers.
_MAX_ID = 2**63 - 1
_MAX_SHOWN = 80
# Storages of the `limits` library that can share one budget between processes.
SHARED_STORAGE_SCHEMES = frozenset(
    {
        "redis",
        "rediss",
        "redis+unix",
        "redis+cluster",
        "redis+sentinel",
        "valkey",
        "valkeys",
        "valkey+unix",
        "valkey+cluster",
        "valkey+sentinel",
        "memcached",
        "mongodb",
        "mongodb+srv",
    }
)


# The Python package each shared storage of the `limits` library talks through.
_STORAGE_DRIVERS = {
    "redis": "redis",
    "rediss": "redis",
    "valkey": "valkey",
    "valkeys": "valkey",
    "memcached": "pymemcache",
    "mongodb": "pymongo",
}


# The `properties` option: (Sentry event, Sentry hint) -> extra Segment properties.
PropertiesHook = Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]]


class ConfigurationError(ValueError):
    """A ``SegmentIntegration`` option has a value it cannot work with."""


class Secret:
    """A write key that stays out of ``repr()``, ``str()`` and so out of logs and tracebacks."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def _userinfo_and_rest(url: str) -> tuple[str, str, str] | None:
    """``scheme://user:pass@host/path`` -> ``("scheme", "user:pass", "host/path")``, or None without ``://``.

    The user information runs up to the last ``@``: a password may hold an unencoded ``/``, ``?``
    or ``#``, which a URL parser would take for the start of the path.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return None
    userinfo, _, rest = rest.rpartition("@")
    return scheme, userinfo, rest


def without_credentials(url: str) -> str:
    """``redis://:secret@host:6379/0?password=x`` -> ``redis://host:6379/0``: a URL as it may be shown.

    The user information goes, then the query and the fragment (``?password=...``). Never raises,
    whatever the text.
    """
    parts = _userinfo_and_rest(url)
    if parts is None:
        return "..."
    scheme, _, rest = parts
    return f"{scheme}://{rest.split('?', 1)[0].split('#', 1)[0]}"


def url_credentials(url: Optional[str]) -> list[str]:
    """What of a URL's ``user:password@`` part must never be logged: the part, the password as written
    and percent-decoded. Never raises."""
    parts = _userinfo_and_rest(url) if url else None
    if parts is None:
        return []
    userinfo = parts[1]
    password = userinfo.partition(":")[2]
    return [part for part in (userinfo, password, unquote(password)) if part]


# Marks a dataclass field holding a URL that may carry credentials: shown without them in repr().
URL_FIELD = {"credentials": True}


def repr_without_credentials(instance: Any) -> str:
    """A dataclass's repr with its ``URL_FIELD`` fields shown without credentials."""
    shown = []
    for item in fields(instance):
        if not item.repr:
            continue
        value = getattr(instance, item.name)
        if item.metadata.get("credentials") and isinstance(value, str):
            value = without_credentials(value)
        shown.append(f"{item.name}={value!r}")
    return f"{type(instance).__name__}({', '.join(shown)})"


@dataclass(frozen=True, repr=False)
class DeliverySettings:
    """Settings of the Segment senders: their queue, batches and requests."""

    host: Optional[str] = field(default=None, metadata=URL_FIELD)
    gzip: bool = False
    max_queue_size: int = 10000
    upload_size: int = 500
    upload_interval: float = 0.5
    timeout: float = 15.0
    max_retries: int = 10

    def __repr__(self) -> str:
        return repr_without_credentials(self)


@dataclass(frozen=True)
class SentryLink:
    """Where an event opens in Sentry's web UI: the organization's web address and slug."""

    base: str  # scheme://host[:port][/prefix], without a final slash
    organization: str

    def event_url_prefix(self, project_id: str) -> str:
        """The link to an event of ``project_id`` without the event id and its final ``/``.

        Sentry's project event redirect (``sentry-project-event-redirect`` in src/sentry/web/urls.py,
        the view ``ProjectEventRedirect``) resolves an event id to its issue, given the project's id
        or slug; on a customer domain (``acme.sentry.io``) the subdomain names the organization and
        the same path works.
        """
        return f"{self.base}/organizations/{self.organization}/projects/{project_id}/events/"


def event_url_prefix(link: Optional[SentryLink], project_id: Optional[str]) -> Optional[str]:
    """The ``sentryUrl`` of ``project_id``'s events without their id: None without a link or a project."""
    return link.event_url_prefix(project_id) if link is not None and project_id is not None else None


@dataclass(frozen=True)
class ProjectOverride:
    write_key: Optional[Secret] = None
    enabled: Optional[bool] = None


@dataclass(frozen=True, repr=False)
class Options:
    write_key: Secret
    rate_limit: Optional[int]
    rate_limit_storage: str = field(metadata=URL_FIELD)
    organization: Optional[str]
    projects: Mapping[str, ProjectOverride]
    enroll_new_projects: bool
    include_messages: bool
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    send_ip: Optional[bool] = None
    send_query_string: bool = True
    properties: Optional[PropertiesHook] = None
    sentry_url: Optional[SentryLink] = None
    event_name: str = EVENT_NAME
    rate_limit_per_type: Optional[int] = None
    anonymous_id: Optional[AnonymousIdSource] = None

    @property
    def wants_hints(self) -> bool:
        """Whether a function of the user's is given Sentry's hint: a ``properties`` hook, or an
        ``anonymous_id`` function."""
        return self.properties is not None or (self.anonymous_id is not None and self.anonymous_id.hook is not None)

    def write_key_for(self, project_id: Optional[str]) -> Optional[Secret]:
        """The write key that the project's events go to, or None when it does not forward."""
        override = self.projects.get(project_id) if project_id is not None else None
        if override is None:
            return self.write_key if self.enroll_new_projects else None
        if override.enabled is False:
            return None
        return override.write_key or self.write_key

    def __repr__(self) -> str:
        return repr_without_credentials(self)


def _is_huge_int(value: Any) -> bool:
    # Such an int cannot be a float (OverflowError) nor, past 4300 digits, even a str (ValueError).
    return isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64


def _shown(value: Any) -> str:
    """A bad value as an error message may repeat it: short, and never raising."""
    if _is_huge_int(value):
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # an object whose repr fails is still a bad value
        return f"a {type(value).__name__}"
    return text if len(text) <= _MAX_SHOWN else f"{text[: _MAX_SHOWN - 3]}..."


def option_error(option: str, expected: str, got: Any = None, show_value: bool = True) -> ConfigurationError:
    """``SegmentIntegration: option 'x' must be <expected>, got <the value, short>``: every option's error."""
    shown = f", got {_shown(got)}" if show_value else ""
    return ConfigurationError(f"SegmentIntegration: option {option!r} must be {expected}{shown}")


def parse_write_key(value: Any, option: str = "write_key", from_env: bool = True) -> Secret:
    """The key with surrounding whitespace (a file's or a secret's final newline) stripped.

    What remains must be only letters, digits, ``-``, ``_`` and ``:``: whitespace inside is an error, as is
    anything else. No message repeats the key, not even a malformed one: it may be a real key mistyped.
    """
    if value is None and from_env:
        value = os.environ.get(WRITE_KEY_ENV)
    where = f"{option!r} (or the {WRITE_KEY_ENV} environment variable)" if from_env else repr(option)
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        raise ConfigurationError(
            f"SegmentIntegration: option {where} is missing: set it to your Segment source's write key"
        )
    if not isinstance(value, str):
        raise ConfigurationError(f"SegmentIntegration: option {where} must be a string, got a {type(value).__name__}")
    # fullmatch: `$` alone would let a final newline through, and the key would then be logged
    # JSON-escaped (`...\n`), a form the log filter does not know.
    if not _WRITE_KEY_PATTERN.fullmatch(value):
        raise ConfigurationError(
            f"SegmentIntegration: option {where} is not a Segment write key: expected only letters, digits, '-', "
            "'_' and ':' (surrounding whitespace is ignored, whitespace inside is not)"
        )
    return Secret(value)


def parse_host(value: Any) -> Optional[str]:
    if value is None:
        value = os.environ.get(HOST_ENV, "").strip() or None
    if value is None:
        return None
    problem = ConfigurationError(
        f"SegmentIntegration: option 'host' (or the {HOST_ENV} environment variable) must be an http:// or "
        "https:// URL such as https://events.eu1.segmentapis.com"
    )
    if not isinstance(value, str):
        raise problem
    url = value.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise problem from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise problem
    return url.rstrip("/")


def _is_number(value: Any) -> bool:
    """A finite int or float; an int too large for a float (10**400) is not one."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or _is_huge_int(value):
        return False
    return math.isfinite(value)


def parse_rate_limit(value: Any, option: str = "rate_limit") -> Optional[int]:
    """``rate_limit`` and ``rate_limit_per_type``: events per one-second window, or None for none."""
    if value is None:
        return None
    if not _is_number(value) or not 0 < value <= MAX_RATE_LIMIT:
        off = "the limit off" if option == "rate_limit" else "the cap off"
        raise option_error(
            option,
            f"a positive number of events per second, at most {MAX_RATE_LIMIT}, or None to turn {off}",
            value,
        )
    # Windows are whole seconds of whole events: 2.5 per second allows 3 in each window.
    per_second: float = value
    return math.ceil(per_second)


def parse_storage(value: Any) -> str:
    expected = "a storage URI such as 'memory://' or 'redis://host:6379/0'"
    if isinstance(value, str):
        value = value.strip()
    if not isinstance(value, str) or "://" not in value:
        raise option_error("rate_limit_storage", expected, show_value=False)
    try:
        # Not `.port`: cluster and sentinel URIs name several hosts (`redis+sentinel://h1:26379,h2:26379/m`).
        urlsplit(value)
    except ValueError:  # an unclosed `[` of an IPv6 address, a netloc that NFKC-normalizes to `@` ...
        raise option_error(
            "rate_limit_storage", f"{expected} (this one cannot be parsed as a URI)", show_value=False
        ) from None
    scheme = value.split("://", 1)[0].lower()
    if scheme != "memory" and scheme not in SHARED_STORAGE_SCHEMES:
        known = ", ".join(sorted({"memory", *SHARED_STORAGE_SCHEMES}))
        raise option_error("rate_limit_storage", f"a URI with one of the schemes {known}", show_value=False)
    missing = [
        module for module in ("limits", _STORAGE_DRIVERS.get(scheme.split("+")[0])) if module and not find_spec(module)
    ]
    if scheme != "memory" and missing:
        raise ConfigurationError(
            f"SegmentIntegration: option 'rate_limit_storage' with a {scheme}:// URI needs the package(s) "
            f"{', '.join(missing)}: pip install 'sentry-segment-integration[redis]' (or the storage's own driver)"
        )
    return value


def parse_organization(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_ID:
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise option_error("organization", "a non-empty string (the key the rate limit is shared under) or None", value)
    return value.strip()


def parse_project_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_ID:
        return str(value)
    # 19 digits or fewer: int() of thousands of digits is slow, and past 4300 a ValueError of its own.
    digits = value.lstrip("0") if isinstance(value, str) and value.isdigit() and value.isascii() else None
    if digits is not None and len(digits) <= 19 and int(value) <= _MAX_ID:
        return str(int(value))
    raise ConfigurationError(
        f"SegmentIntegration: option 'projects' is keyed by Sentry project id (an int or a string of digits, "
        f"the last part of the DSN's path, at most {_MAX_ID}), got {_shown(value)}"
    )


def parse_projects(value: Any) -> Dict[str, ProjectOverride]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise option_error("projects", "a dict of {project id: {'write_key': str, 'enabled': bool}}", show_value=False)
    projects: Dict[str, ProjectOverride] = {}
    for raw_id, override in value.items():
        project_id = parse_project_id(raw_id)
        option = f"projects[{project_id}]"
        if not isinstance(override, Mapping):
            raise option_error(option, "a dict with the fields 'write_key' and/or 'enabled'", show_value=False)
        unknown = sorted(str(name) for name in override if name not in _PROJECT_FIELDS)
        if unknown:
            raise ConfigurationError(
                f"SegmentIntegration: option {option!r} has unknown field(s) {', '.join(map(repr, unknown))}: "
                "expected only 'write_key' and 'enabled'"
            )
        write_key = None
        if "write_key" in override:
            write_key = parse_write_key(override["write_key"], f"{option}['write_key']", from_env=False)
        enabled = override.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise option_error(f"{option}['enabled']", "True or False", enabled)
        if project_id in projects:
            raise ConfigurationError(f"SegmentIntegration: option 'projects' names project {project_id} twice")
        projects[project_id] = ProjectOverride(write_key=write_key, enabled=enabled)
    return projects


def parse_optional_bool(option: str, value: Any) -> Optional[bool]:
    if value is not None and not isinstance(value, bool):
        raise option_error(option, "True, False or None", value)
    return value


def parse_properties_hook(value: Any) -> Optional[PropertiesHook]:
    if value is not None and not callable(value):
        raise option_error(
            "properties", "a function (event, hint) -> dict of extra properties, or None", show_value=False
        )
    properties_hook: Optional[PropertiesHook] = value
    return properties_hook


def parse_bool(option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise option_error(option, "True or False", value)
    return value


def parse_int(option: str, value: Any, minimum: int, maximum: Optional[int] = None) -> int:
    """An int from ``minimum`` to ``maximum`` (by default the option's bound in ``MAX_INT_OPTIONS``)."""
    if maximum is None:
        maximum = MAX_INT_OPTIONS.get(option)
    expected = f"an integer of at least {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    too_large = maximum is not None and isinstance(value, int) and value > maximum
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or too_large:
        raise option_error(option, expected, value)
    return value


def parse_seconds(option: str, value: Any, maximum: float) -> float:
    # An absurd wait (1e300 s) would overflow the delivery thread's timers and stop it for good.
    if not _is_number(value) or not 0 < value <= maximum:
        raise option_error(option, f"a positive number of seconds, at most {maximum:g}", value)
    return float(value)


_SENTRY_URL_FORMS = (
    "the Sentry web address of the organization: 'https://<org>.sentry.io' (sentry.io), or a base URL "
    "followed by /organizations/<org slug> ('https://sentry.example.com/organizations/acme')"
)


def parse_sentry_url(value: Any) -> Optional[SentryLink]:
    """``https://acme.sentry.io`` or ``<base URL>/organizations/<slug>`` -> the link's base and slug.

    Surrounding whitespace and a final ``/`` are ignored. No user information, query or fragment:
    the link is sent to Segment with every message. No message repeats the URL.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise option_error("sentry_url", _SENTRY_URL_FORMS, show_value=False)
    url = value.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise option_error(
            "sentry_url", _SENTRY_URL_FORMS + " (this one cannot be parsed as a URL)", show_value=False
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise option_error("sentry_url", _SENTRY_URL_FORMS + " (an http:// or https:// URL)", show_value=False)
    if "@" in parts.netloc:
        raise option_error(
            "sentry_url", _SENTRY_URL_FORMS + ", without user:password@ (the link is sent to Segment)", show_value=False
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise option_error("sentry_url", _SENTRY_URL_FORMS + ", without a query or fragment", show_value=False)
    if any(character.isspace() for character in url) or _CONTROL_CHARACTERS.search(url):
        raise option_error("sentry_url", _SENTRY_URL_FORMS + ", without whitespace inside", show_value=False)
    host = parts.hostname.lower()
    origin = f"{parts.scheme}://{parts.netloc.lower()}"
    path = parts.path.rstrip("/")
    prefix, marker, slug = path.rpartition("/organizations/")
    labels = host.split(".")
    subdomain_org = labels[0] if len(labels) == 3 and host.endswith(".sentry.io") else None
    if marker:
        if not _SLUG_PATTERN.fullmatch(slug):
            raise option_error(
                "sentry_url",
                "a URL ending in /organizations/<org slug>, the slug of letters, digits, '-' and '_' (at most 50)",
                show_value=False,
            )
        if subdomain_org is not None and subdomain_org != slug.lower():
            raise ConfigurationError(
                "SegmentIntegration: option 'sentry_url' names two organizations: its <org>.sentry.io host "
                "and its /organizations/<org> path differ"
            )
        return SentryLink(base=origin + prefix, organization=slug)
    if subdomain_org is not None and not path and _SLUG_PATTERN.fullmatch(subdomain_org):
        return SentryLink(base=origin, organization=subdomain_org)
    raise option_error("sentry_url", _SENTRY_URL_FORMS + " (this one names no organization)", show_value=False)


def parse_event_name(value: Any) -> str:
    """The Segment event name: a string, surrounding whitespace stripped, then 1 to 200 characters,
    with no control character (a newline would break many destinations' displays) and no lone
    surrogate (it cannot be sent as strict UTF-8)."""
    expected = f"a non-empty string of at most {MAX_EVENT_NAME_CHARS} characters (surrounding whitespace is stripped)"
    if not isinstance(value, str):
        raise option_error("event_name", expected, value)
    name = str.__str__(value).strip()
    if not name:
        raise option_error("event_name", expected, value)
    if len(name) > MAX_EVENT_NAME_CHARS:
        raise option_error("event_name", expected + f", got {len(name)} characters", show_value=False)
    if _CONTROL_CHARACTERS.search(name):
        raise option_error("event_name", expected + " without control characters (a newline, a tab)", value)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise option_error(
            "event_name", expected + " of valid Unicode (it holds a lone surrogate)", show_value=False
        ) from None
    return name
