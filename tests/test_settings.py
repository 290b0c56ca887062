"""The ``parse_*`` functions of ``settings.py``, called directly: what each makes of a good value,
and that each bad value is a ConfigurationError (a ValueError) naming the option.

What ``SegmentIntegration(...)`` does with bad options is tested through it in test_config.py
(a table of bad options), test_option_edges.py (whitespace, numbers too large, unparsable URIs,
bounds) and test_message_links_and_names.py (``sentry_url``, ``event_name``); the values here are
the ones those do not try.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from importlib.util import find_spec
from typing import Any, Callable, Dict, Iterator
from urllib.parse import urlsplit

import pytest

from sentry_segment_integration.settings import (
    HOST_ENV,
    MAX_EVENT_NAME_CHARS,
    MAX_INT_OPTIONS,
    SHARED_STORAGE_SCHEMES,
    WRITE_KEY_ENV,
    ConfigurationError,
    ProjectOverride,
    Secret,
    SentryLink,
    event_url_prefix,
    parse_bool,
    parse_event_name,
    parse_host,
    parse_int,
    parse_optional_bool,
    parse_organization,
    parse_project_id,
    parse_projects,
    parse_properties_hook,
    parse_rate_limit,
    parse_seconds,
    parse_sentry_url,
    parse_storage,
    parse_write_key,
)

KEY = "wk_settings_unit_5e1d"
MAX_ID = 2**63 - 1


@pytest.fixture(autouse=True)
def no_segment_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WRITE_KEY_ENV, raising=False)
    monkeypatch.delenv(HOST_ENV, raising=False)


def refused(parse: Callable[[], Any], option: str) -> str:
    """The message of the ConfigurationError ``parse()`` raises; it names ``option``."""
    with pytest.raises(ConfigurationError) as raised:
        parse()
    assert isinstance(raised.value, ValueError)
    message = str(raised.value)
    assert message.startswith("SegmentIntegration: option ")
    assert f"option {option!r}" in message, message
    return message


class Opaque:
    """A value of no known kind, whose repr fails."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


# --- write keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, "id:secret", "A-Z_0-9", "k"])
def test_a_write_key_is_a_secret_of_letters_digits_dash_underscore_and_colon(key: str) -> None:
    secret = parse_write_key(key)
    assert secret == Secret(key) and secret.value == key
    assert key not in repr(secret) and key not in str(secret)


def test_a_secret_is_equal_by_value_and_never_shown() -> None:
    assert Secret(KEY) == Secret(KEY) and hash(Secret(KEY)) == hash(Secret(KEY))
    assert Secret(KEY) != Secret(KEY + "x")
    assert Secret(KEY) != KEY  # not equal to the bare string: a Secret is never compared by accident
    assert repr(Secret(KEY)) == str(Secret(KEY)) == "Secret('***')"


def test_a_missing_write_key_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WRITE_KEY_ENV, KEY)
    assert parse_write_key(None) == Secret(KEY)


def test_a_write_key_that_must_not_come_from_the_environment_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WRITE_KEY_ENV, KEY)
    option = "projects[7]['write_key']"
    message = refused(lambda: parse_write_key(None, option, from_env=False), option)
    assert "is missing" in message and WRITE_KEY_ENV not in message


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("key.with.dots-secretpart", "not a Segment write key"),
        ("key+plus-secretpart", "not a Segment write key"),
        ("clé-secretpart", "not a Segment write key"),
        (b"bytes-secretpart", "must be a string, got a bytes"),
        (12.5, "must be a string, got a float"),
        (["secretpart"], "must be a string, got a list"),
    ],
    ids=repr,
)
def test_a_bad_write_key_names_the_option_and_never_the_key(key: Any, said: str) -> None:
    for option, from_env in (("write_key", True), ("projects[3]['write_key']", False)):
        message = refused(lambda: parse_write_key(key, option, from_env=from_env), option)  # noqa: B023
        assert said in message
        assert "secretpart" not in message
        assert (WRITE_KEY_ENV in message) is from_env


# --- host ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "parsed"),
    [
        ("https://events.eu1.segmentapis.com", "https://events.eu1.segmentapis.com"),
        ("https://api.segment.io/", "https://api.segment.io"),
        ("http://127.0.0.1:8080/base//", "http://127.0.0.1:8080/base"),  # every final slash
        ("HTTPS://Proxy.Example:443", "HTTPS://Proxy.Example:443"),  # as written: schemes are case-insensitive
        ("http://[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_a_host_is_an_http_url_without_its_final_slashes(host: str, parsed: str) -> None:
    assert parse_host(host) == parsed


def test_no_host_is_none_unless_the_environment_names_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_host(None) is None
    monkeypatch.setenv(HOST_ENV, "  ")
    assert parse_host(None) is None  # only whitespace: not set
    monkeypatch.setenv(HOST_ENV, "https://events.eu1.segmentapis.com/")
    assert parse_host(None) == "https://events.eu1.segmentapis.com"


@pytest.mark.parametrize(
    "host",
    ["http://segment.example:99999", "https://:443", "mailto:someone@example.com", "//events.example", b"https://x.io"],
    ids=repr,
)
def test_a_bad_host_names_the_option_and_the_variable(host: Any) -> None:
    message = refused(lambda: parse_host(host), "host")
    assert HOST_ENV in message and "http:// or https:// URL" in message


# --- rate limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [(None, None), (1, 1), (200, 200), (0.1, 1), (1e-9, 1), (7.0, 7), (1_000_000_000, 1_000_000_000)],
)
def test_a_rate_limit_is_whole_events_per_second_rounded_up(value: Any, parsed: Any) -> None:
    for option in ("rate_limit", "rate_limit_per_type"):
        result = parse_rate_limit(value, option)
        assert result == (None if value is None else math.ceil(value)) == parsed
        assert result is None or type(result) is int


@pytest.mark.parametrize(("option", "off"), [("rate_limit", "the limit off"), ("rate_limit_per_type", "the cap off")])
@pytest.mark.parametrize("value", [-0.0, -1e-9, 1_000_000_000.5, "1", b"1", [1], math.inf], ids=repr)
def test_a_bad_rate_limit_says_how_to_turn_it_off(option: str, off: str, value: Any) -> None:
    message = refused(lambda: parse_rate_limit(value, option), option)
    assert f"or None to turn {off}" in message


# --- storage ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("memory://", "memory://"),
        (" MEMORY://\n", "MEMORY://"),  # the scheme in any case; surrounding whitespace goes
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("Redis://:pw@127.0.0.1:6379/0", "Redis://:pw@127.0.0.1:6379/0"),
        ("rediss://cache.example:6380/1", "rediss://cache.example:6380/1"),
        ("redis+unix:///var/run/redis.sock", "redis+unix:///var/run/redis.sock"),
    ],
)
def test_a_storage_is_a_uri_of_a_known_scheme(uri: str, parsed: str) -> None:
    assert parse_storage(uri) == parsed


@pytest.mark.parametrize("uri", [42, b"memory://", "memory:", "memory:/", "127.0.0.1:6379"], ids=repr)
def test_a_storage_that_is_not_a_uri_is_refused_without_showing_it(uri: Any) -> None:
    message = refused(lambda: parse_storage(uri), "rate_limit_storage")
    assert "a storage URI such as" in message and "got" not in message


@pytest.mark.parametrize("uri", ["sqlite:///limits.db", "postgresql://db.example/5", "http://limits.example"])
def test_a_storage_of_an_unknown_scheme_lists_the_known_ones(uri: str) -> None:
    message = refused(lambda: parse_storage(uri), "rate_limit_storage")
    for scheme in {"memory", *SHARED_STORAGE_SCHEMES}:
        assert scheme in message
    assert uri not in message


@pytest.mark.parametrize(
    ("uri", "driver"),
    [("mongodb://db.example:27017", "pymongo"), ("memcached://cache.example:11211", "pymemcache")],
)
def test_a_shared_storage_needs_its_driver(uri: str, driver: str) -> None:
    if find_spec(driver) is not None:
        assert parse_storage(uri) == uri
    else:
        message = refused(lambda: parse_storage(uri), "rate_limit_storage")
        assert driver in message and "pip install" in message


# --- organization and projects ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [(None, None), (0, "0"), (123, "123"), (MAX_ID, str(MAX_ID)), (" acme \n", "acme"), ("Acme Corp", "Acme Corp")],
)
def test_an_organization_is_a_non_empty_string_or_an_id(value: Any, parsed: Any) -> None:
    assert parse_organization(value) == parsed


@pytest.mark.parametrize("value", [True, False, MAX_ID + 1, 1.5, b"acme", "\t", {"name": "acme"}], ids=repr)
def test_a_bad_organization_names_the_option(value: Any) -> None:
    refused(lambda: parse_organization(value), "organization")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [(0, "0"), (42, "42"), ("42", "42"), ("0042", "42"), (MAX_ID, str(MAX_ID)), ("0" + str(MAX_ID), str(MAX_ID))],
)
def test_a_project_id_is_its_decimal_digits(value: Any, parsed: str) -> None:
    assert parse_project_id(value) == parsed


@pytest.mark.parametrize(
    "value", [True, 42.0, None, "", " 42", "42 ", "4.2", "-1", "\uff14\uff12", "\u0664\u0662", "0x2a"], ids=repr
)
def test_a_bad_project_id_names_the_projects_option(value: Any) -> None:
    message = refused(lambda: parse_project_id(value), "projects")
    assert "keyed by Sentry project id" in message and str(MAX_ID) in message


class FrozenMapping(Mapping):
    """A mapping that is not a dict."""

    def __init__(self, items: Dict[Any, Any]) -> None:
        self._items = items

    def __getitem__(self, key: Any) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def test_projects_are_overrides_keyed_by_project_id() -> None:
    assert parse_projects(None) == {}
    parsed = parse_projects(
        {
            42: {},
            "0043": {"write_key": "other_key"},
            "44": {"enabled": False},
            45: FrozenMapping({"write_key": "id:secret", "enabled": True}),
            46: {"enabled": None},
        }
    )
    assert parsed == {
        "42": ProjectOverride(),
        "43": ProjectOverride(write_key=Secret("other_key")),
        "44": ProjectOverride(enabled=False),
        "45": ProjectOverride(write_key=Secret("id:secret"), enabled=True),
        "46": ProjectOverride(),
    }
    assert parse_projects(FrozenMapping({7: {}})) == {"7": ProjectOverride()}


def test_a_projects_write_key_never_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WRITE_KEY_ENV, KEY)
    option = "projects[9]['write_key']"
    message = refused(lambda: parse_projects({9: {"write_key": None}}), option)
    assert "is missing" in message


def test_unknown_fields_of_a_project_are_all_named_in_order() -> None:
    fields = {"enabled": True, "zeta": 1, "alpha": 2, 3: "three"}
    message = refused(lambda: parse_projects({9: fields}), "projects[9]")
    unknown = sorted(str(name) for name in fields if name not in ("write_key", "enabled"))
    assert "unknown field(s) " + ", ".join(map(repr, unknown)) in message


@pytest.mark.parametrize(
    ("projects", "option", "said"),
    [
        ((("42", {}),), "projects", "a dict of {project id"),
        ({42: None}, "projects[42]", "a dict with the fields"),
        ({42: [("enabled", True)]}, "projects[42]", "a dict with the fields"),
        ({42: {"enabled": 0}}, "projects[42]['enabled']", "True or False, got 0"),
        ({42: {"enabled": "false"}}, "projects[42]['enabled']", "True or False, got 'false'"),
        ({42: {}, "042": {}}, "projects", "names project 42 twice"),
        ({"42.0": {}}, "projects", "keyed by Sentry project id"),
    ],
    ids=repr,
)
def test_bad_projects_name_the_option_where_it_went_wrong(projects: Any, option: str, said: str) -> None:
    assert said in refused(lambda: parse_projects(projects), option)


# --- booleans, ints, seconds --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_true_or_false(value: bool) -> None:
    assert parse_bool("gzip", value) is value
    assert parse_optional_bool("send_ip", value) is value


def test_an_optional_bool_may_be_none() -> None:
    assert parse_optional_bool("send_ip", None) is None


@pytest.mark.parametrize("value", [0, 1, "True", "no", 1.0, [True]], ids=repr)
def test_a_bad_bool_names_the_option_and_what_it_got(value: Any) -> None:
    assert f"must be True or False, got {value!r}" in refused(lambda: parse_bool("gzip", value), "gzip")
    message = refused(lambda: parse_optional_bool("send_ip", value), "send_ip")
    assert f"must be True, False or None, got {value!r}" in message


def test_none_is_not_a_bool() -> None:
    assert "got None" in refused(lambda: parse_bool("include_messages", None), "include_messages")


@pytest.mark.parametrize(("option", "bound"), sorted(MAX_INT_OPTIONS.items()))
def test_an_int_option_runs_from_its_minimum_to_its_bound(option: str, bound: int) -> None:
    assert parse_int(option, 1, 1) == 1
    assert parse_int(option, bound, 1) == bound
    for bad in (0, bound + 1):
        message = refused(lambda: parse_int(option, bad, 1), option)  # noqa: B023
        assert f"an integer from 1 to {bound}, got {bad}" in message


def test_an_int_option_without_a_bound_has_only_its_minimum_unless_one_is_given() -> None:
    assert "workers" not in MAX_INT_OPTIONS
    assert parse_int("workers", 10**12, 1) == 10**12
    assert "an integer of at least 1, got 0" in refused(lambda: parse_int("workers", 0, 1), "workers")
    assert parse_int("workers", 4, 1, maximum=4) == 4
    assert "an integer from 1 to 4, got 5" in refused(lambda: parse_int("workers", 5, 1, maximum=4), "workers")


@pytest.mark.parametrize("value", [True, 3.0, "3", None, [3]], ids=repr)
def test_an_int_option_takes_only_ints(value: Any) -> None:
    refused(lambda: parse_int("max_retries", value, 0), "max_retries")


@pytest.mark.parametrize("maximum", [600, 60, 86400, 0.5, 1e6])
def test_seconds_are_a_positive_float_up_to_the_maximum(maximum: float) -> None:
    for value in (maximum, maximum / 2, 1e-6):
        parsed = parse_seconds("timeout", value, maximum)
        assert parsed == float(value) and type(parsed) is float
    for bad in (0, -1, maximum * 1.5, True, "1", None, math.nan, math.inf, -math.inf):
        message = refused(lambda: parse_seconds("timeout", bad, maximum), "timeout")  # noqa: B023
        assert f"a positive number of seconds, at most {maximum:g}" in message


# --- the properties hook ------------------------------------------------------------------------------


class CallableObject:
    def __call__(self, event: Any, hint: Any) -> Dict[str, Any]:
        return {}


def test_a_properties_hook_is_any_callable_or_none() -> None:
    def hook(event: Any, hint: Any) -> Dict[str, Any]:
        return {}

    instance = CallableObject()
    assert parse_properties_hook(None) is None
    assert parse_properties_hook(hook) is hook
    assert parse_properties_hook(instance) is instance
    assert parse_properties_hook(dict) is dict


@pytest.mark.parametrize("value", ["plan=pro-secretpart", ["secretpart"], 42], ids=repr)
def test_a_properties_hook_that_cannot_be_called_is_refused_without_showing_it(value: Any) -> None:
    message = refused(lambda: parse_properties_hook(value), "properties")
    assert "a function (event, hint)" in message
    assert "secretpart" not in message and "got" not in message


# --- sentry_url ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "link"),
    [
        ("https://acme.sentry.io", SentryLink("https://acme.sentry.io", "acme")),
        (" https://ACME.Sentry.io/ \n", SentryLink("https://acme.sentry.io", "acme")),
        ("https://acme.sentry.io/organizations/ACME/", SentryLink("https://acme.sentry.io", "ACME")),
        ("https://sentry.example.com/organizations/shop-team", SentryLink("https://sentry.example.com", "shop-team")),
        (
            "http://Tools.Example.com:9000/sentry/organizations/team_1/",
            SentryLink("http://tools.example.com:9000/sentry", "team_1"),
        ),
        ("https://s.example/organizations/" + "a" * 50, SentryLink("https://s.example", "a" * 50)),
    ],
)
def test_a_sentry_url_gives_the_base_and_the_organization(url: str, link: SentryLink) -> None:
    assert parse_sentry_url(url) == link


def test_no_sentry_url_no_link() -> None:
    assert parse_sentry_url(None) is None
    assert event_url_prefix(None, "42") is None
    assert event_url_prefix(SentryLink("https://acme.sentry.io", "acme"), None) is None


def test_the_event_url_prefix_is_the_project_event_redirect() -> None:
    link = SentryLink("http://tools.example.com:9000/sentry", "team_1")
    expected = f"{link.base}/organizations/{link.organization}/projects/42/events/"
    assert link.event_url_prefix("42") == event_url_prefix(link, "42") == expected


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("https://a.b.sentry.io", "names no organization"),
        ("https://sentry.corp-7f3a.test/organizations/" + "a" * 51, "at most 50"),
        ("https://sentry.corp-7f3a.test/organizations/acme/settings", "/organizations/<org slug>"),
        ("https://sentry.corp-7f3a.test/organizations/ac\tme", "without whitespace inside"),
        ("https://sentry.corp-7f3a.test/organizations/ac\x00me", "without whitespace inside"),
        ("https://sentry.corp-7f3a.test/organizations/acme?", "without a query or fragment"),
        ("https://sentry.corp-7f3a.test/organizations/acme#", "without a query or fragment"),
        ("https://sentry.corp-7f3a.test:99999/organizations/acme", "cannot be parsed as a URL"),
        ("https://user@sentry.corp-7f3a.test/organizations/acme", "without user:password@"),
        ("ws://sentry.corp-7f3a.test/organizations/acme", "an http:// or https:// URL"),
    ],
    ids=repr,
)
def test_a_bad_sentry_url_says_why_without_showing_it(url: str, said: str) -> None:
    message = refused(lambda: parse_sentry_url(url), "sentry_url")
    assert said in message
    assert urlsplit(url).hostname not in message  # nor any other part of it


# --- event_name ---------------------------------------------------------------------------------------


class Name(str):
    pass


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("Checkout Error", "Checkout Error"),
        ("  Checkout Error \n", "Checkout Error"),
        (" " + "e" * MAX_EVENT_NAME_CHARS + " ", "e" * MAX_EVENT_NAME_CHARS),  # counted once stripped
        ("Fehler: Zahlung fehlgeschlagen 😀", "Fehler: Zahlung fehlgeschlagen 😀"),
        (Name("Subclassed"), "Subclassed"),
    ],
    ids=repr,
)
def test_an_event_name_is_a_stripped_string(value: str, parsed: str) -> None:
    name = parse_event_name(value)
    assert name == parsed and type(name) is str


@pytest.mark.parametrize("value", ["Checkout\x7fError", "Checkout\x85Error", "Checkout\x00Error", "\x1b[31mRed"])
def test_an_event_name_with_a_control_character_is_refused(value: str) -> None:
    assert "without control characters" in refused(lambda: parse_event_name(value), "event_name")


def test_a_long_event_name_is_refused_by_its_length_without_showing_it() -> None:
    name = "n" * (MAX_EVENT_NAME_CHARS + 1)
    message = refused(lambda: parse_event_name(name), "event_name")
    assert f"got {len(name)} characters" in message and name not in message


@pytest.mark.parametrize("value", [b"Error Captured", 0, Name("   ")], ids=repr)
def test_a_bad_event_name_names_the_option(value: Any) -> None:
    assert f"at most {MAX_EVENT_NAME_CHARS} characters" in refused(lambda: parse_event_name(value), "event_name")


# --- how a bad value is shown -------------------------------------------------------------------------


def test_a_long_bad_value_is_shown_cut() -> None:
    value = "x" * 500
    message = refused(lambda: parse_bool("gzip", value), "gzip")
    shown = message.split(", got ", 1)[1]
    assert shown == repr(value)[:77] + "..."


def test_a_huge_int_is_shown_by_its_size() -> None:
    value = 10**400
    message = refused(lambda: parse_int("upload_size", value, 1), "upload_size")
    assert message.endswith(f", got an integer of {value.bit_length()} bits")


def test_a_value_whose_repr_fails_is_shown_by_its_type() -> None:
    message = refused(lambda: parse_bool("gzip", Opaque()), "gzip")
    assert message.endswith(", got a Opaque")


def test_messages_name_the_option_as_python_would_write_it() -> None:
    option = "projects[42]['enabled']"
    message = refused(lambda: parse_optional_bool(option, "yes"), option)
    assert re.search(r"option \"projects\[42\]\['enabled'\]\" must be", message)
