"""The receiver the demo and the tests use, end to end with real clients: urllib, requests, raw sockets,
the Segment library and a real sentry-sdk client whose DSN points at it."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import brotli  # the test extra installs it: sentry-sdk then compresses with it, as in most installs
import pytest
import requests
import sentry_sdk
import urllib3
from segment.analytics import Client as SegmentClient

from sentry_segment_integration.testing import SegmentSink
from support import SDK_MAJOR, WRITE_KEY, sentry_dsn_for, wait_until

REPOSITORY = Path(__file__).resolve().parent.parent
CONNECTION_THREAD = "segment-sink-connection"


def a_message() -> Dict[str, Any]:
    return {"type": "track", "event": "Error Captured", "userId": "u-1", "messageId": uuid.uuid4().hex}


def post(url: str, body: bytes, headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
    """One POST with urllib (a new connection, no redirect involved); the status, headers and body."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), dict(error.headers.items()), error.read()


def connection_threads() -> List[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == CONNECTION_THREAD and thread.is_alive()]


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODINGS: Dict[str, Tuple[Optional[str], Callable[[bytes], bytes]]] = {
    "none": (None, lambda data: data),
    "identity": ("identity", lambda data: data),
    "gzip": ("gzip", gzip.compress),
    "x-gzip": ("x-gzip", gzip.compress),
    "deflate-zlib": ("deflate", zlib.compress),
    "deflate-raw": ("deflate", raw_deflate),
    "br": ("br", brotli.compress),
    "BR-uppercase": ("BR", brotli.compress),
    "gzip-then-br": ("gzip, br", lambda data: brotli.compress(gzip.compress(data))),
}


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_segment_batches_are_decoded_whatever_their_content_encoding(sink: SegmentSink, name: str) -> None:
    encoding, compress = ENCODINGS[name]
    message = a_message()
    headers = {"Content-Encoding": encoding} if encoding else {}
    status, _, answer = post(f"{sink.url}/v1/batch", compress(json.dumps({"batch": [message]}).encode()), headers)
    assert (status, json.loads(answer)) == (200, {"success": True})
    assert sink.messages == [message]
    assert sink.unreadable == []


def test_a_single_track_call_is_decoded_too(sink: SegmentSink) -> None:
    message = a_message()
    status, _, _ = post(
        f"{sink.url}/v1/track", brotli.compress(json.dumps(message).encode()), {"Content-Encoding": "br"}
    )
    assert status == 200
    assert sink.messages == [message]


@pytest.mark.parametrize("use_gzip", [True, False])
def test_the_segment_library_delivers_to_it_with_and_without_gzip(sink: SegmentSink, use_gzip: bool) -> None:
    client = SegmentClient(WRITE_KEY, host=sink.url, gzip=use_gzip, sync_mode=True, max_retries=0)
    client.track(user_id="u-7", event="Error Captured", message_id="m-7")
    [message] = sink.wait_for_messages(1)
    assert (message["userId"], message["messageId"]) == ("u-7", "m-7")
    assert sink.batches[0].write_key == WRITE_KEY
    assert (sink.batches[0].headers.get("Content-Encoding") == "gzip") is use_gzip


# -- Sentry envelopes ----------------------------------------------------------------------------------


@pytest.fixture
def sentry_client() -> Iterator[Callable[..., Any]]:
    """``sentry_client(sink, **options)``: a real sentry-sdk client with its own HTTP transport to ``sink``."""
    clients: List[Any] = []

    def make(sink: SegmentSink, **options: Any) -> Any:
        client = sentry_sdk.Client(dsn=sentry_dsn_for(sink), default_integrations=False, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=2)


def capture_through(client: Any) -> str:
    try:
        raise ZeroDivisionError("checkout failed")
    except ZeroDivisionError as error:
        if SDK_MAJOR >= 2:
            with sentry_sdk.new_scope() as scope:
                scope.set_client(client)
                event_id = scope.capture_exception(error)
        else:
            event_id = sentry_sdk.Hub(client).capture_exception(error)
    assert event_id is not None
    return str(event_id)


def compression_of(client: Any) -> Optional[str]:
    """What sentry-sdk chose to compress envelopes with (1.x: gzip only, no such attribute)."""
    return getattr(client.transport, "_compression_algo", "gzip")


@pytest.mark.parametrize("algo", ["br", "gzip", None])
def test_sentry_events_are_recorded_from_br_and_gzip_envelopes(
    sink: SegmentSink, sentry_client: Callable[..., Any], algo: Optional[str]
) -> None:
    # None: sentry-sdk's own choice, which is br whenever brotli is importable (as it is here).
    options: Dict[str, Any] = {"_experiments": {"transport_compression_algo": algo}} if algo else {}
    client = sentry_client(sink, **options)
    wanted = algo or ("br" if SDK_MAJOR >= 2 else "gzip")
    if compression_of(client) != wanted:
        pytest.skip(f"sentry-sdk {sentry_sdk.VERSION} does not compress envelopes with {wanted}")
    event_ids = [capture_through(client) for _ in range(3)]
    client.flush(timeout=10)
    assert sink.wait_for_sentry_events(3) == event_ids
    assert sink.unreadable == []


def test_an_uncompressed_envelope_with_attachments_and_lengths_is_read(sink: SegmentSink) -> None:
    event_id = uuid.uuid4().hex
    event = json.dumps({"event_id": event_id, "exception": {"values": [{"type": "E"}]}}).encode()
    attachment = b"line one\n{not json}\nline three"
    envelope = b"\n".join(
        [
            json.dumps({"event_id": event_id}).encode(),
            json.dumps({"type": "attachment", "length": len(attachment), "filename": "a.txt"}).encode(),
            attachment,
            json.dumps({"type": "event", "length": len(event)}).encode(),
            event,
            json.dumps({"type": "transaction"}).encode(),
            b'{"event_id": "not-an-error"}',
        ]
    )
    status, _, _ = post(f"{sink.url}/api/42/envelope/", envelope, {"Content-Type": "application/x-sentry-envelope"})
    assert status == 200
    assert sink.sentry_event_ids == [event_id]


@pytest.mark.slow
def test_without_brotli_sentry_sends_gzip_that_is_read_and_a_br_body_is_refused(tmp_path: Path) -> None:
    # An interpreter where brotli cannot be imported, for the sink and for sentry-sdk alike.
    script = tmp_path / "no_brotli.py"
    script.write_text(
        """
import json, sys, urllib.error, urllib.request
sys.modules["brotli"] = None
import sentry_sdk
from sentry_segment_integration.testing import SegmentSink

with SegmentSink() as sink:
    client = sentry_sdk.Client(dsn=f"http://public@127.0.0.1:{sink.port}/42", default_integrations=False)
    try:
        1 / 0
    except ZeroDivisionError as error:
        with sentry_sdk.new_scope() as scope:
            scope.set_client(client)
            event_id = scope.capture_exception(error)
    client.flush(timeout=10)
    client.close(timeout=2)
    request = urllib.request.Request(
        sink.url + "/v1/batch", data=bytes.fromhex(sys.argv[1]), headers={"Content-Encoding": "br"}
    )
    try:
        urllib.request.urlopen(request, timeout=10)
        status, answer, accept = 200, None, None
    except urllib.error.HTTPError as error:
        status, answer, accept = error.code, json.loads(error.read()), error.headers.get("Accept-Encoding")
    print(json.dumps({
        "event_id": event_id, "recorded": sink.wait_for_sentry_events(1), "status": status, "answer": answer,
        "accept": accept, "unreadable": sink.unreadable, "messages": sink.messages, "requests": sink.requests,
    }))
"""
    )
    if SDK_MAJOR < 2:
        pytest.skip("the script uses sentry-sdk 2.x scopes")
    body = brotli.compress(json.dumps({"batch": [a_message()]}).encode())
    result = subprocess.run(
        [sys.executable, str(script), body.hex()], capture_output=True, text=True, timeout=60, cwd=REPOSITORY
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["recorded"] == [outcome["event_id"]]  # sentry-sdk fell back to gzip, which is read
    assert outcome["status"] == 415
    assert outcome["answer"]["code"] == "unsupported_encoding"
    assert outcome["answer"]["encoding"] == "br"
    assert "brotli is not installed" in outcome["answer"]["message"]
    assert outcome["accept"] == "gzip, deflate"
    [description] = outcome["unreadable"]
    assert description.startswith("POST /v1/batch: ") and "'br'" in description
    assert outcome["messages"] == []
    assert outcome["requests"] == 1


# -- bodies that cannot be read ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "body", "status"),
    [
        ("br", b"this is not brotli data", 400),
        ("gzip", b"this is not gzip data", 400),
        ("gzip", gzip.compress(b'{"batch": []}')[:-6], 400),  # cut short
        ("deflate", b"\xff\xfe this is not deflate", 400),
        ("compress", b"whatever", 415),
        ("gzip, zstd", b"whatever", 415),
    ],
)
@pytest.mark.parametrize("path", ["/v1/batch", "/api/42/envelope/"])
def test_an_unreadable_body_is_answered_with_an_error_and_reported(
    sink: SegmentSink, encoding: str, body: bytes, status: int, path: str
) -> None:
    answered, headers, answer = post(f"{sink.url}{path}", body, {"Content-Encoding": encoding})
    assert answered == status
    assert headers["Content-Type"] == "application/json"
    details = json.loads(answer)
    assert details["code"] == ("unsupported_encoding" if status == 415 else "unreadable_body")
    assert details["encoding"] in encoding
    assert encoding in details["message"]
    if status == 415:
        assert headers["Accept-Encoding"] == "gzip, deflate, br"
    [description] = sink.unreadable
    assert description.startswith(f"POST {path}: ") and repr(encoding) in description
    assert sink.messages == [] and sink.sentry_event_ids == []


def test_an_unreadable_body_does_not_use_up_a_scripted_answer(sink: SegmentSink) -> None:
    sink.answer_next(503)
    assert post(f"{sink.url}/v1/batch", b"garbage", {"Content-Encoding": "br"})[0] == 400
    assert post(f"{sink.url}/v1/batch", json.dumps({"batch": [a_message()]}).encode())[0] == 503
    assert sink.requests == 2
    assert len(sink.unreadable) == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/batch", b"{not json"),
        ("/v1/batch", b"[1, 2]"),
        ("/v1/batch", b'{"batch": 3}'),
        ("/api/42/envelope/", b'{"event_id": "x"}\n{"type": "event"}\n{not json'),
        ("/api/42/store/", b"[]"),
    ],
)
def test_a_readable_body_that_is_not_what_the_endpoint_takes_is_reported(
    sink: SegmentSink, path: str, body: bytes
) -> None:
    assert post(f"{sink.url}{path}", gzip.compress(body), {"Content-Encoding": "gzip"})[0] == 400
    [description] = sink.unreadable
    assert description.startswith(f"POST {path}: ")


# -- redirects -----------------------------------------------------------------------------------------


def test_redirect_next_answers_with_the_status_and_location(sink: SegmentSink) -> None:
    location = f"{sink.url}/sso/login?next=/v1/batch"
    sink.redirect_next(302, location, times=2)
    for _ in range(2):
        response = requests.post(f"{sink.url}/v1/batch", json={"batch": [a_message()]}, allow_redirects=False)
        assert response.status_code == 302
        assert response.headers["Location"] == location
    assert requests.post(f"{sink.url}/v1/batch", json={"batch": [a_message()]}).status_code == 200
    assert (sink.requests, sink.get_requests, len(sink.messages)) == (3, 0, 1)


@pytest.mark.parametrize("status", [301, 302, 303])
def test_a_followed_redirect_lands_on_an_html_page_and_is_counted(sink: SegmentSink, status: int) -> None:
    sink.redirect_next(status, f"{sink.url}/v1/batch")
    response = requests.post(f"{sink.url}/v1/batch", json={"batch": [a_message()]})
    assert [answer.status_code for answer in response.history] == [status]
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<form" in response.text
    assert sink.get_requests == 1
    assert sink.messages == []  # a client that believes this 200 has lost its batch


def test_a_307_redirect_repeats_the_post_which_is_then_accepted(sink: SegmentSink) -> None:
    message = a_message()
    sink.redirect_next(307, f"{sink.url}/v1/track")
    response = requests.post(f"{sink.url}/v1/batch", json=message)
    assert [answer.status_code for answer in response.history] == [307]
    assert response.json() == {"success": True}
    assert sink.messages == [message]
    assert (sink.requests, sink.get_requests) == (2, 0)


def test_redirect_next_refuses_a_status_that_is_not_a_redirect(sink: SegmentSink) -> None:
    with pytest.raises(ValueError, match="3xx"):
        sink.redirect_next(200, "http://example.invalid/")


# -- dribbled answers ----------------------------------------------------------------------------------


def test_a_dribbled_answer_keeps_a_per_read_timeout_client_receiving_until_stop(sink: SegmentSink) -> None:
    sink.dribble_next(0.05)
    response = requests.post(f"{sink.url}/v1/batch", json={"batch": [a_message()]}, timeout=1.0, stream=True)
    assert response.status_code == 200
    declared = int(response.headers["Content-Length"])
    received = b"".join(response.raw.read(1) for _ in range(10))  # each read well inside the timeout
    assert received == b" " * 10 and declared > 10
    sink.stop()
    assert connection_threads() == []
    with pytest.raises(urllib3.exceptions.ProtocolError):  # cut short: not a timeout
        response.raw.read()
    assert sink.messages == []
    assert sink.requests == 1


@pytest.mark.slow
def test_a_dribbled_post_holds_a_client_past_its_read_timeout_until_the_sink_stops(sink: SegmentSink) -> None:
    read_timeout = 0.5
    sink.dribble_next(read_timeout / 5)
    outcome: List[BaseException] = []

    def send() -> None:
        try:
            requests.post(f"{sink.url}/v1/batch", json={"batch": [a_message()]}, timeout=read_timeout)
        except requests.RequestException as error:
            outcome.append(error)

    client = threading.Thread(target=send, daemon=True)
    client.start()
    assert wait_until(lambda: sink.requests == 1)
    client.join(3 * read_timeout)
    assert client.is_alive(), f"the client stopped waiting: {outcome}"
    sink.stop()
    client.join(10)
    assert not client.is_alive()
    [error] = outcome
    assert not isinstance(error, requests.Timeout)
    assert sink.messages == []
    assert connection_threads() == []


def test_a_client_that_hangs_up_mid_dribble_does_not_hurt_the_sink(
    sink: SegmentSink, capfd: pytest.CaptureFixture[str]
) -> None:
    sink.dribble_next(0.01, times=2)
    body = json.dumps({"batch": [a_message()]}).encode()
    request = (
        f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", sink.port), timeout=10) as client:
            client.sendall(request)
            received = b""
            while b"\r\n\r\n" not in received or received.endswith(b"\r\n\r\n"):
                received += client.recv(1)
            assert received.startswith(b"HTTP/1.1 200 ")
    assert wait_until(lambda: connection_threads() == [])
    message = a_message()
    assert post(f"{sink.url}/v1/batch", json.dumps({"batch": [message]}).encode())[0] == 200
    assert sink.messages == [message]
    assert capfd.readouterr().err == ""


def test_dribble_next_refuses_a_rate_that_is_not_positive(sink: SegmentSink) -> None:
    with pytest.raises(ValueError, match="positive"):
        sink.dribble_next(0)


# -- connections ---------------------------------------------------------------------------------------


def test_every_accepted_connection_has_tcp_nodelay_and_keep_alive_requests_reuse_it() -> None:
    nodelay: List[int] = []

    def accepted(connection: socket.socket) -> None:
        nodelay.append(connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    with SegmentSink(on_connection=accepted) as sink, requests.Session() as session:
        for _ in range(20):
            response = session.post(f"{sink.url}/v1/batch", json={"batch": [a_message()]})
            assert response.status_code == 200
        assert post(f"{sink.url}/v1/batch", json.dumps({"batch": [a_message()]}).encode())[0] == 200
        assert len(sink.messages) == 21
    assert len(nodelay) == 2  # the session's one connection, and urllib's
    assert all(option != 0 for option in nodelay)


def test_stop_ends_open_keep_alive_connections_and_a_delayed_answer() -> None:
    sink = SegmentSink().start()
    session = requests.Session()
    assert session.post(f"{sink.url}/v1/batch", json={"batch": [a_message()]}).status_code == 200
    sink.delay_next(60)
    outcome: List[BaseException] = []

    def send() -> None:
        try:
            requests.post(f"{sink.url}/v1/batch", json={"batch": [a_message()]}, timeout=60)
        except requests.RequestException as error:
            outcome.append(error)

    delayed = threading.Thread(target=send, daemon=True)
    delayed.start()
    assert wait_until(lambda: sink.requests == 2)
    assert len(connection_threads()) == 2
    sink.stop()
    assert connection_threads() == []
    delayed.join(10)
    assert not delayed.is_alive()
    assert isinstance(outcome[0], requests.ConnectionError)
    with pytest.raises(requests.ConnectionError):
        session.post(f"{sink.url}/v1/batch", json={"batch": [a_message()]}, timeout=5)
    session.close()
    assert len(sink.messages) == 1
    sink.stop()  # a second stop does nothing


def test_stop_without_start_does_not_hang() -> None:
    sink = SegmentSink()
    sink.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sink.port), timeout=5).close()


def test_unknown_path_is_404_and_a_get_anywhere_is_the_login_page(sink: SegmentSink) -> None:
    assert post(f"{sink.url}/v2/elsewhere", b"{}")[0] == 404
    with urllib.request.urlopen(f"{sink.url}/v1/batch", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
    assert sink.get_requests == 1
    assert sink.unreadable == [] and sink.requests == 0


def test_a_chunked_body_is_read(sink: SegmentSink) -> None:
    message = a_message()
    parts = [b'{"batch": ', json.dumps([message]).encode(), b"}"]
    response = requests.post(f"{sink.url}/v1/batch", data=iter(parts), headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert sink.batches[0].headers.get("Transfer-Encoding") == "chunked"
    assert sink.messages == [message]
