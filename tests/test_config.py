"""Every option: a bad value is a clear ValueError at construction that names the option."""

from __future__ import annotations

import re
from typing import Any, Dict

import pytest

from sentry_segment_integration import ConfigurationError, SegmentIntegration

KEY = "a_valid-Write_key_123"


@pytest.fixture(autouse=True)
def no_segment_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGMENT_WRITE_KEY", raising=False)
    monkeypatch.delenv("SEGMENT_HOST", raising=False)


def test_write_key_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENT_WRITE_KEY", KEY)
    assert "***" in repr(SegmentIntegration())


@pytest.mark.parametrize("write_key", [None, ""])
def test_missing_write_key_names_option_and_variable(write_key: Any) -> None:
    with pytest.raises(ValueError, match=r"'write_key'.*SEGMENT_WRITE_KEY.*missing"):
        SegmentIntegration(write_key=write_key)


@pytest.mark.parametrize(
    "write_key",
    ["has space-secretpart", "semi;colon-secretpart", "slash/secretpart", "quote'secretpart", "ünïcode-secretpart"],
)
def test_malformed_write_key_is_refused_without_echoing_it(write_key: str) -> None:
    with pytest.raises(ValueError) as raised:
        SegmentIntegration(write_key=write_key)
    message = str(raised.value)
    assert "'write_key'" in message and "SEGMENT_WRITE_KEY" in message
    assert "secretpart" not in message


def test_write_key_of_wrong_type_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'write_key'.*must be a string"):
        SegmentIntegration(write_key=12345)  # type: ignore[arg-type]


def test_malformed_write_key_from_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "bad key secretpart")
    with pytest.raises(ValueError) as raised:
        SegmentIntegration()
    assert "SEGMENT_WRITE_KEY" in str(raised.value)
    assert "secretpart" not in str(raised.value)


def test_configuration_error_is_a_value_error() -> None:
    assert issubclass(ConfigurationError, ValueError)


BAD_OPTIONS = [
    ({"host": "ftp://segment.example"}, "host"),
    ({"host": "not a url"}, "host"),
    ({"host": "https://"}, "host"),
    ({"host": 443}, "host"),
    ({"rate_limit": 0}, "rate_limit"),
    ({"rate_limit": -5}, "rate_limit"),
    ({"rate_limit": "200"}, "rate_limit"),
    ({"rate_limit": True}, "rate_limit"),
    ({"rate_limit": float("nan")}, "rate_limit"),
    ({"rate_limit_storage": "postgres://db/1"}, "rate_limit_storage"),
    ({"rate_limit_storage": "redis"}, "rate_limit_storage"),
    ({"rate_limit_storage": None}, "rate_limit_storage"),
    ({"organization": ""}, "organization"),
    ({"organization": ["acme"]}, "organization"),
    ({"projects": ["42"]}, "projects"),
    ({"projects": {"forty-two": {}}}, "projects"),
    ({"projects": {-1: {}}}, "projects"),
    ({"projects": {42: "enabled"}}, "projects[42]"),
    ({"projects": {42: {"is_enabled": True}}}, "projects[42]"),
    ({"projects": {42: {"write_key": ""}}}, "projects[42]['write_key']"),
    ({"projects": {42: {"write_key": None}}}, "projects[42]['write_key']"),
    ({"projects": {42: {"write_key": "bad key"}}}, "projects[42]['write_key']"),
    ({"projects": {42: {"enabled": "yes"}}}, "projects[42]['enabled']"),
    ({"projects": {42: {}, "42": {}}}, "projects"),
    ({"enroll_new_projects": "no"}, "enroll_new_projects"),
    ({"include_messages": 1}, "include_messages"),
    ({"gzip": None}, "gzip"),
    ({"max_queue_size": 0}, "max_queue_size"),
    ({"max_queue_size": 10.5}, "max_queue_size"),
    ({"upload_size": 0}, "upload_size"),
    ({"upload_interval": 0}, "upload_interval"),
    ({"timeout": -1}, "timeout"),
    ({"timeout": 1e300}, "timeout"),
    ({"upload_interval": 61}, "upload_interval"),
    ({"timeout": "15"}, "timeout"),
    ({"max_retries": -1}, "max_retries"),
    ({"send_ip": "yes"}, "send_ip"),
    ({"send_query_string": None}, "send_query_string"),
    ({"properties": {"plan": "pro"}}, "properties"),
]


@pytest.mark.parametrize(("options", "option_name"), BAD_OPTIONS, ids=[repr(o) for o, _ in BAD_OPTIONS])
def test_bad_option_is_a_value_error_naming_it(options: Dict[str, Any], option_name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(option_name))):
        SegmentIntegration(write_key=KEY, **options)


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="rate_limt"):
        SegmentIntegration(write_key=KEY, rate_limt=5)  # type: ignore[call-arg]


def test_host_with_credentials_is_not_echoed_in_errors() -> None:
    with pytest.raises(ValueError) as raised:
        SegmentIntegration(write_key=KEY, host="ftp://user:hunter2@proxy.example")
    assert "hunter2" not in str(raised.value)


def test_host_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENT_HOST", "gopher://nowhere")
    with pytest.raises(ValueError, match="SEGMENT_HOST"):
        SegmentIntegration(write_key=KEY)


def test_good_options_are_accepted() -> None:
    integration = SegmentIntegration(
        write_key=KEY,
        host="https://events.eu1.segmentapis.com/",
        rate_limit=None,
        rate_limit_storage="memory://",
        organization=123,  # type: ignore[arg-type]
        projects={42: {"write_key": "other_key"}, "43": {"enabled": False}, "44": {}},
        enroll_new_projects=False,
        include_messages=True,
        gzip=True,
        max_queue_size=10,
        upload_size=5,
        upload_interval=0.1,
        timeout=1,
        max_retries=0,
    )
    assert integration.stats() == {
        "forwarded": 0,
        "rate_limited": 0,
        "skipped_not_error": 0,
        "skipped_no_user": 0,
        "skipped_disabled": 0,
        "queue_full": 0,
        "delivery_failed": 0,
        "internal_error": 0,
    }
    assert "other_key" not in repr(integration)
