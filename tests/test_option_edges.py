"""Option values at the edges: whitespace around keys, numbers too large, unparsable URIs, reprs.

Every case runs for real: ``SegmentIntegration(...)`` constructed (and, where it matters, an error
delivered to a local Segment-compatible receiver), or the command line run as a subprocess.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List

import pytest
import sentry_sdk

from sentry_segment_integration import ConfigurationError, SegmentIntegration
from sentry_segment_integration.settings import url_credentials, without_credentials
from sentry_segment_integration.testing import SegmentSink
from support import all_logged_text, error_as_user, make_integration, run_cli

KEY = "wk_edge_secret_3b1f9c"
OTHER_KEY = "wk_edge_project_key_77d2"
PASSWORD = "pw-edge-do-not-show-81"
HUGE = 10**400  # too large for a float: OverflowError once, never a ConfigurationError
HUGER = 10**5000  # past 4300 digits not even str() works (ValueError)


@pytest.fixture(autouse=True)
def no_segment_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGMENT_WRITE_KEY", raising=False)
    monkeypatch.delenv("SEGMENT_HOST", raising=False)


# 1. Surrounding whitespace of a write key is stripped; whitespace inside is an error.

SURROUNDINGS = ["{}\n", "{}\r\n", " {} ", "\t{}\n\n", "\n{}"]


@pytest.mark.parametrize("shape", SURROUNDINGS, ids=repr)
def test_write_key_with_surrounding_whitespace_is_stripped_and_never_logged(
    shape: str, init_sentry: Any, sink: SegmentSink, everything_at_debug: pytest.LogCaptureFixture
) -> None:
    integration = make_integration(sink, write_key=shape.format(KEY), upload_size=1)
    init_sentry(integration, debug=True)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(10)
    sink.wait_for_messages(1)

    assert {batch.write_key for batch in sink.batches} == {KEY}
    logged = all_logged_text(everything_at_debug)
    assert "making request" in logged  # the Segment library did log its request body, key and all
    assert KEY not in logged  # neither as is nor JSON-escaped (`KEY\n`)
    assert KEY not in repr(integration)


def test_write_key_from_environment_with_final_newline_is_stripped(
    monkeypatch: pytest.MonkeyPatch, init_sentry: Any, sink: SegmentSink, everything_at_debug: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SEGMENT_WRITE_KEY", f"{KEY}\n")  # as a Kubernetes secret mounted as a variable
    integration = SegmentIntegration(host=sink.url, upload_interval=0.05, organization="edge-env")
    init_sentry(integration, debug=True)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(10)
    sink.wait_for_messages(1)
    assert {batch.write_key for batch in sink.batches} == {KEY}
    assert KEY not in all_logged_text(everything_at_debug)


def test_project_write_key_with_final_newline_is_stripped(
    init_sentry: Any, sink: SegmentSink, everything_at_debug: pytest.LogCaptureFixture
) -> None:
    # support.DSN names project 42.
    integration = make_integration(sink, projects={42: {"write_key": f"{OTHER_KEY}\n"}})
    init_sentry(integration, debug=True)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(10)
    sink.wait_for_messages(1)
    assert {batch.write_key for batch in sink.batches} == {OTHER_KEY}
    assert OTHER_KEY not in all_logged_text(everything_at_debug)


INSIDE = [
    "secretpart tailpiece",
    "secretpart\ntailpiece",
    "secretpart\ttailpiece\n",
    "secretpart\u00a0tailpiece",
    "secretpart\x00tailpiece",
]


@pytest.mark.parametrize("write_key", INSIDE, ids=repr)
def test_write_key_with_whitespace_inside_is_refused_without_echoing_it(
    write_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        SegmentIntegration(write_key=write_key)
    message = str(raised.value)
    assert "'write_key'" in message and "not a Segment write key" in message
    assert "secretpart" not in message and "tailpiece" not in message

    with pytest.raises(ConfigurationError) as raised:
        SegmentIntegration(write_key=KEY, projects={7: {"write_key": write_key}})
    assert "projects[7]['write_key']" in str(raised.value)
    assert "secretpart" not in str(raised.value)

    monkeypatch.setenv("SEGMENT_WRITE_KEY", write_key.replace("\x00", " "))  # an environment has no NUL
    with pytest.raises(ConfigurationError) as raised:
        SegmentIntegration()
    assert "SEGMENT_WRITE_KEY" in str(raised.value)
    assert "secretpart" not in str(raised.value)


@pytest.mark.parametrize("write_key", [" ", "\n", " \r\n\t"], ids=repr)
def test_write_key_of_only_whitespace_is_missing(write_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match=r"'write_key'.*SEGMENT_WRITE_KEY.*missing"):
        SegmentIntegration(write_key=write_key)
    monkeypatch.setenv("SEGMENT_WRITE_KEY", write_key)
    with pytest.raises(ConfigurationError, match=r"'write_key'.*SEGMENT_WRITE_KEY.*missing"):
        SegmentIntegration()
    with pytest.raises(ConfigurationError, match=re.escape(repr("projects[7]['write_key']") + " is missing")):
        SegmentIntegration(write_key=KEY, projects={7: {"write_key": write_key}})


def test_host_with_surrounding_whitespace_is_stripped(init_sentry: Any, sink: SegmentSink) -> None:
    integration = SegmentIntegration(write_key=KEY, host=f" {sink.url}/\n", upload_interval=0.05, organization="e-h")
    init_sentry(integration)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(10)
    assert len(sink.wait_for_messages(1)) == 1


def test_host_from_environment_with_final_newline_is_stripped(
    monkeypatch: pytest.MonkeyPatch, init_sentry: Any, sink: SegmentSink
) -> None:
    monkeypatch.setenv("SEGMENT_HOST", f"{sink.url}\n")
    integration = SegmentIntegration(write_key=KEY, upload_interval=0.05, organization="edge-host-env")
    init_sentry(integration)
    error_as_user({"id": "u-1"})
    sentry_sdk.flush(10)
    assert len(sink.wait_for_messages(1)) == 1


@pytest.mark.slow
def test_cli_write_key_with_final_newline_is_stripped(sink: SegmentSink) -> None:
    result = run_cli("check", "--host", sink.url, SEGMENT_WRITE_KEY=f"{KEY}\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sink.batches[0].write_key == KEY
    assert KEY not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("write_key", "said"), [(" \n", "no write key"), ("secretpart one\n", "whitespace inside")])
def test_cli_bad_write_key_is_a_usage_error_without_echoing_it(write_key: str, said: str) -> None:
    result = run_cli("check", "--host", "http://127.0.0.1:9", SEGMENT_WRITE_KEY=write_key)
    assert result.returncode == 2, result.stdout + result.stderr
    assert said in result.stderr
    assert "secretpart" not in result.stdout + result.stderr


# 2. Numbers too large for a float, or absurdly large: a ConfigurationError naming the option and its bound.

NUMERIC = ["rate_limit", "timeout", "upload_interval", "max_queue_size", "upload_size", "max_retries"]


@pytest.mark.parametrize("value", [HUGE, -HUGE, HUGER, 1e300], ids=["10**400", "-10**400", "10**5000", "1e300"])
@pytest.mark.parametrize("option", NUMERIC)
def test_huge_number_is_a_configuration_error_naming_the_option(option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(f"option {option!r} must be")) as raised:
        SegmentIntegration(write_key=KEY, **{option: value})
    assert "at most" in str(raised.value) or " to " in str(raised.value)
    assert len(str(raised.value)) < 300  # the value is summarised, not printed in 400 digits


BOUNDS = [
    ("rate_limit", 1_000_000_000),
    ("max_queue_size", 10_000_000),
    ("upload_size", 10_000),
    ("max_retries", 1_000),
    ("timeout", 600),
    ("upload_interval", 60),
]


@pytest.mark.parametrize(("option", "bound"), BOUNDS)
def test_numeric_bound_is_accepted_and_one_more_is_refused_with_the_bound_in_the_message(
    option: str, bound: int
) -> None:
    at_bound: Dict[str, Any] = {option: bound}
    SegmentIntegration(write_key=KEY, **at_bound)
    beyond: Dict[str, Any] = {option: bound + 1}
    with pytest.raises(ConfigurationError) as raised:
        SegmentIntegration(write_key=KEY, **beyond)
    message = str(raised.value)
    assert repr(option) in message
    assert str(bound) in message
    assert f"got {bound + 1}" in message


def test_rate_limit_fraction_still_rounds_up_and_none_still_turns_it_off() -> None:
    assert "rate_limit=3" in repr(SegmentIntegration(write_key=KEY, rate_limit=2.5))
    assert "rate_limit=None" in repr(SegmentIntegration(write_key=KEY, rate_limit=None))


@pytest.mark.parametrize("project_id", [HUGE, 2**63, "9" * 20, "1" * 5000], ids=["10**400", "2**63", "20d", "5000d"])
def test_project_id_beyond_64_bits_is_a_configuration_error(project_id: Any) -> None:
    with pytest.raises(ConfigurationError, match="'projects' is keyed by Sentry project id") as raised:
        SegmentIntegration(write_key=KEY, projects={project_id: {}})
    assert len(str(raised.value)) < 400


def test_project_id_of_64_bits_with_leading_zeros_is_accepted() -> None:
    integration = SegmentIntegration(write_key=KEY, projects={"000" + str(2**63 - 1): {}, 7: {}})
    assert str(2**63 - 1) in repr(integration)


@pytest.mark.parametrize("organization", [HUGER, -1], ids=["10**5000", "-1"])
def test_organization_int_out_of_range_is_a_configuration_error(organization: int) -> None:
    with pytest.raises(ConfigurationError, match="'organization'"):
        SegmentIntegration(write_key=KEY, organization=organization)  # type: ignore[arg-type]


# 3. URIs that cannot be parsed: a ConfigurationError naming the option, never echoing the URI.

BAD_STORAGES = [
    f"redis://:{PASSWORD}@[::1",
    f"redis://:{PASSWORD}@::1]:6379/0",
    f"rediss://user:{PASSWORD}@[fe80::1/0",
    f"memcached://user:{PASSWORD}@[::1:11211",
]


@pytest.mark.parametrize("uri", BAD_STORAGES)
def test_unparsable_storage_uri_is_a_configuration_error_without_the_uri(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="'rate_limit_storage'") as raised:
        SegmentIntegration(write_key=KEY, rate_limit_storage=uri)
    assert PASSWORD not in str(raised.value)
    assert "::1" not in str(raised.value) and "fe80" not in str(raised.value)


@pytest.mark.parametrize("host", [f"http://user:{PASSWORD}@[::1", f"https://:{PASSWORD}@::1]/", "http://[::1"])
def test_unparsable_host_is_a_configuration_error_without_the_url(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="'host'") as raised:
        SegmentIntegration(write_key=KEY, host=host)
    assert PASSWORD not in str(raised.value) and "::1" not in str(raised.value)
    monkeypatch.setenv("SEGMENT_HOST", host)
    with pytest.raises(ConfigurationError, match="SEGMENT_HOST") as raised:
        SegmentIntegration(write_key=KEY)
    assert PASSWORD not in str(raised.value)


def test_storage_uri_with_surrounding_whitespace_and_several_hosts_is_accepted(closed_port: int) -> None:
    SegmentIntegration(write_key=KEY, rate_limit_storage=" memory://\n")
    # Sentinel and cluster URIs name several hosts: no single port to parse, and still valid.
    sentinel = f"redis+sentinel://:{PASSWORD}@127.0.0.1:{closed_port},127.0.0.1:{closed_port}/mymaster\n"
    integration = SegmentIntegration(write_key=KEY, rate_limit_storage=sentinel)
    assert PASSWORD not in repr(integration._options)


# 4. The command line's --timeout (and --rate-limit): a usage error naming the option, exit code 2.


@pytest.mark.slow
@pytest.mark.parametrize("command", ["check", "replay"])
def test_cli_help_says_exit_code_2_is_a_usage_error(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "2 usage error" in " ".join(result.stdout.split())


BAD_TIMEOUTS = ["1e10", "nan", "inf", "-inf", "-1", "0", "10**400", "1" + "0" * 400, "1e400", "1e308", "soon"]


@pytest.mark.slow
@pytest.mark.parametrize(("command", "bound"), [("check", "600"), ("replay", "86400")], ids=["check", "replay"])
@pytest.mark.parametrize("timeout", [*BAD_TIMEOUTS, "bound+1"], ids=lambda text: text[:12])
def test_cli_bad_timeout_is_a_usage_error_naming_the_option(
    command: str, bound: str, timeout: str, tmp_path: Path
) -> None:
    if timeout == "bound+1":
        timeout = str(int(bound) + 1)
    events = tmp_path / "events.json"
    events.write_text("[]")
    arguments: List[str] = [command, "--host", "http://127.0.0.1:9", "--timeout", timeout]
    if command == "replay":
        arguments.append(str(events))
    result = run_cli(*arguments, SEGMENT_WRITE_KEY=KEY)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "argument --timeout:" in result.stderr
    assert "usage:" in result.stderr
    assert len(result.stderr) < 1000  # a 401-digit argument is not printed back whole


@pytest.mark.slow
@pytest.mark.parametrize(("command", "bound"), [("check", "600"), ("replay", "86400")], ids=["check", "replay"])
def test_cli_timeout_at_its_bound_is_accepted(command: str, bound: str, sink: SegmentSink, tmp_path: Path) -> None:
    events = tmp_path / "events.json"
    events.write_text("[]")
    arguments: List[str] = [command, "--host", sink.url, "--timeout", bound]
    if command == "replay":
        arguments.append(str(events))
    result = run_cli(*arguments, SEGMENT_WRITE_KEY=KEY)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("rate", ["1e10", "1e400", "nan", "inf", "0", "-1", "fast", "1000000001"])
def test_cli_bad_rate_limit_is_a_usage_error_naming_the_option(rate: str, tmp_path: Path) -> None:
    events = tmp_path / "events.json"
    events.write_text("[]")
    result = run_cli("replay", str(events), "--dry-run", "--rate-limit", rate)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "argument --rate-limit:" in result.stderr


# 5. The options objects show URLs without their credentials.


def test_options_repr_hides_credentials_of_host_and_storage(closed_port: int) -> None:
    host = f"http://proxyuser:{PASSWORD}@127.0.0.1:{closed_port}/"
    storage = f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0?password={PASSWORD}"
    integration = SegmentIntegration(write_key=KEY, host=host, rate_limit_storage=storage)
    options = integration._options
    for shown in (repr(options), str(options), repr(options.delivery), f"{options.delivery}", repr(integration)):
        assert PASSWORD not in shown
        assert "proxyuser" not in shown
        assert KEY not in shown
    assert f"host='http://127.0.0.1:{closed_port}'" in repr(options.delivery)
    assert f"rate_limit_storage='redis://127.0.0.1:{closed_port}/0'" in repr(options)
    assert "max_queue_size=10000" in repr(options.delivery)
    # The values themselves are untouched: the Segment client and the limiter still get the credentials.
    assert options.delivery.host == host.rstrip("/")
    assert options.rate_limit_storage == storage
    assert options == integration._options  # still a dataclass: equality by fields


CREDENTIALED = [
    (f"redis://:{PASSWORD}@host:6379/0", "redis://host:6379/0"),
    (f"redis://user:{PASSWORD}@host/0?ssl_cert_reqs=none", "redis://host/0"),
    (f"https://u:pa/ss{PASSWORD}@proxy.example/", "https://proxy.example/"),
    (f"https://u:p?a#s@s{PASSWORD}@proxy.example", "https://proxy.example"),
    (f"redis+sentinel://:{PASSWORD}@h1:26379,h2:26379/m", "redis+sentinel://h1:26379,h2:26379/m"),
    (f"redis://h/0?password={PASSWORD}", "redis://h/0"),
    (f"redis://:{PASSWORD}@[::1", "redis://[::1"),
    ("memory://", "memory://"),
    (f"no scheme {PASSWORD}", "..."),
]


@pytest.mark.parametrize(("url", "shown"), CREDENTIALED)
def test_without_credentials(url: str, shown: str) -> None:
    assert without_credentials(url) == shown


@pytest.mark.parametrize(("url", "shown"), CREDENTIALED)
def test_url_credentials_cover_what_without_credentials_hides(url: str, shown: str) -> None:
    # Every password above is redacted from log lines: the same user information, read the same way.
    if "@" in url:
        assert any(PASSWORD in credential for credential in url_credentials(url))
    assert not any(credential in shown for credential in url_credentials(url))


def test_project_override_repr_still_hides_its_key() -> None:
    integration = SegmentIntegration(write_key=KEY, projects={42: {"write_key": OTHER_KEY}})
    shown = repr(integration._options)
    assert "ProjectOverride(write_key=Secret('***'), enabled=None)" in shown
    assert OTHER_KEY not in shown and KEY not in shown
