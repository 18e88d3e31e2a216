"""The HTTP phase of ServerConnection: plain requests, keep-alive, and the opening handshake.

Bytes in, bytes out: requests are built by hand (tests/protocol_helpers.py) and
the server's responses are parsed by h11's client side, never by wschat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from wsproto import events as wse

from tests.protocol_helpers import (
    OP_TEXT,
    SAMPLE_ACCEPT,
    SAMPLE_KEY,
    Client,
    handshake_request,
    http_request,
    parse_http_responses,
    parse_server_frames,
    receive,
    single_response,
)
from wschat.protocol import (
    DEFAULT_MAX_PENDING_OUTPUT,
    DEFAULT_MAX_REQUEST_HEAD,
    ConnectionClosed,
    HostPolicy,
    HttpRequest,
    LocalProtocolError,
    OriginPolicy,
    RequestRejected,
    ServerConnection,
    State,
    TextReceived,
    WebSocketRequest,
)


def assert_rejected(conn: ServerConnection, events: Sequence[object], status: int) -> str:
    """The connection refused the request itself: event, response, then close."""
    assert len(events) == 1, events
    rejected = events[0]
    assert isinstance(rejected, RequestRejected)
    assert rejected.status == status
    response = single_response(conn)
    assert response.status == status
    assert response.header("connection") == "close"
    assert response.header("content-type") == "text/plain; charset=utf-8"
    assert response.body.decode().strip() == rejected.reason.strip()
    assert conn.close_expected()
    assert conn.state is State.CLOSED
    return rejected.reason


# -- plain HTTP (RFC 9112) -------------------------------------------------------


class TestPlainHttp:
    def test_get_surfaces_as_http_request_and_is_answered(self) -> None:
        conn = ServerConnection()
        events = receive(conn, http_request("/static/app.js?v=3", headers=[("Accept", "*/*")]))
        assert events == [
            HttpRequest(
                method="GET",
                path="/static/app.js",
                query="v=3",
                headers=(("host", "localhost:8080"), ("accept", "*/*")),
            )
        ]
        assert conn.data_to_send() == []  # the caller answers, not the protocol
        conn.send_response(200, b"console.log(1)\n", "text/javascript")
        response = single_response(conn)
        assert response.status == 200
        assert response.body == b"console.log(1)\n"
        assert response.header("content-type") == "text/javascript"
        assert response.header("content-length") == "15"
        assert response.header("connection") is None
        assert not conn.close_expected()
        assert conn.state is State.HTTP

    def test_extra_headers_are_sent(self) -> None:
        conn = ServerConnection()
        receive(conn, http_request("/"))
        conn.send_response(200, b"ok", headers=(("cache-control", "no-store"),))
        assert single_response(conn).header("cache-control") == "no-store"

    def test_keep_alive_answers_two_requests_in_turn(self) -> None:
        conn = ServerConnection()
        assert receive(conn, http_request("/a")) == [
            HttpRequest("GET", "/a", "", (("host", "localhost:8080"),))
        ]
        conn.send_response(200, b"A")
        assert receive(conn, http_request("/b")) == [
            HttpRequest("GET", "/b", "", (("host", "localhost:8080"),))
        ]
        conn.send_response(200, b"B")
        parsed = parse_http_responses(conn.data_to_send())
        assert [(r.status, r.body) for r in parsed.responses] == [(200, b"A"), (200, b"B")]
        assert not parsed.must_close
        assert not conn.close_expected()

    def test_pipelined_requests_in_one_read_are_answered_in_order(self) -> None:
        conn = ServerConnection()
        # h11 hands out the second request only once the first is answered.
        events = receive(conn, http_request("/a") + http_request("/b") + http_request("/c"))
        seen = [e.path for e in events if isinstance(e, HttpRequest)]
        assert seen == ["/a"]
        while seen[-1] != "/c":
            conn.send_response(200, f"answer to {seen[-1]}".encode())
            follow = conn.events_received()
            assert len(follow) == 1 and isinstance(follow[0], HttpRequest)
            seen.append(follow[0].path)
        conn.send_response(200, b"answer to /c")
        assert conn.events_received() == []
        assert seen == ["/a", "/b", "/c"]
        parsed = parse_http_responses(conn.data_to_send())
        assert [(r.status, r.body) for r in parsed.responses] == [
            (200, b"answer to /a"),
            (200, b"answer to /b"),
            (200, b"answer to /c"),
        ]
        assert not conn.close_expected()

    def test_head_is_answered_like_get_without_a_body(self) -> None:
        # RFC 9110 9.3.2: the same header fields as GET (Content-Length included),
        # no content. Today h11 raised LocalProtocolError on the body (issue 8 item 10).
        conn = ServerConnection()
        (head,) = receive(conn, http_request("/", method="HEAD") + http_request("/"))
        assert isinstance(head, HttpRequest) and head.method == "HEAD"
        conn.send_response(200, b"<html>page</html>", "text/html")
        (get,) = conn.events_received()
        assert isinstance(get, HttpRequest) and get.method == "GET"
        conn.send_response(200, b"<html>page</html>", "text/html")
        parsed = parse_http_responses(conn.data_to_send(), methods=["HEAD", "GET"])
        assert [(r.status, r.header("content-length"), r.body) for r in parsed.responses] == [
            (200, "17", b""),
            (200, "17", b"<html>page</html>"),
        ]
        assert not parsed.must_close and not conn.close_expected()

    def test_head_refused_by_the_protocol_gets_its_status_without_a_body(self) -> None:
        conn = ServerConnection()
        events = receive(conn, handshake_request(method="HEAD"))
        assert [(type(e), e.status) for e in events] == [(RequestRejected, 405)]  # type: ignore[union-attr]
        (response,) = parse_http_responses(conn.data_to_send(), methods=["HEAD"]).responses
        assert (response.status, response.body) == (405, b"")
        assert response.header("allow") == "GET"
        assert conn.close_expected()

    def test_request_body_comes_with_the_request_then_the_next_is_parsed(self) -> None:
        conn = ServerConnection()
        data = http_request("/form", method="POST", body=b"x=1") + http_request("/next")
        events = receive(conn, data)
        requests = [e for e in events if isinstance(e, HttpRequest)]
        assert [(e.method, e.path, e.body) for e in requests] == [("POST", "/form", b"x=1")]
        conn.send_response(405, b"nope", headers=(("allow", "GET"),))
        assert [e.path for e in conn.events_received() if isinstance(e, HttpRequest)] == ["/next"]

    def test_a_body_split_across_reads_and_chunked_is_read_whole(self) -> None:
        conn = ServerConnection()
        head = b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        assert receive(conn, head) == []
        assert receive(conn, b"5\r\nhello\r\n") == []
        (request,) = receive(conn, b"6\r\n world\r\n0\r\n\r\n")
        assert isinstance(request, HttpRequest) and request.body == b"hello world"

    def test_a_body_over_the_cap_is_413_and_not_read(self) -> None:
        # Announced too long: refused before a byte of it is read.
        conn = ServerConnection(max_request_body=10)
        head = b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n\r\n"
        events = receive(conn, head)
        assert events == [RequestRejected(413, "request body over 10 bytes")]
        assert single_response(conn).status == 413 and conn.close_expected()
        # Chunked: refused once it passes the cap.
        conn = ServerConnection(max_request_body=10)
        head = b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        events = receive(conn, head + b"8\r\n12345678\r\n8\r\n12345678\r\n")
        assert events == [RequestRejected(413, "request body over 10 bytes")]
        assert conn.close_expected()

    def test_expect_100_continue_is_answered_before_the_body(self) -> None:
        conn = ServerConnection()
        head = http_request(
            "/api/x", method="POST", headers=[("Expect", "100-continue"), ("Content-Length", "2")]
        )
        assert receive(conn, head) == []
        assert b"".join(conn.data_to_send()).startswith(b"HTTP/1.1 100 ")
        (request,) = receive(conn, b"{}")
        assert isinstance(request, HttpRequest) and request.body == b"{}"

    def test_a_plain_request_to_a_websocket_path_is_the_callers_to_answer(self) -> None:
        # A page's fetch() of /ws after a failed upgrade: no Upgrade, no key.
        conn = ServerConnection()
        (request,) = receive(conn, http_request("/ws?room=x"))
        assert isinstance(request, HttpRequest) and (request.path, request.query) == (
            "/ws",
            "room=x",
        )
        # An upgrade attempt with a part missing is still refused by the protocol.
        conn = ServerConnection()
        events = receive(conn, http_request("/ws", headers=[("Upgrade", "websocket")]))
        assert isinstance(events[0], RequestRejected) and events[0].status == 400

    def test_close_response_ends_the_connection(self) -> None:
        conn = ServerConnection()
        receive(conn, http_request("/"))
        conn.send_response(503, b"draining\n", close=True)
        response = single_response(conn)
        assert response.status == 503
        assert response.reason == b"Service Unavailable"
        assert response.header("connection") == "close"
        assert conn.close_expected()

    def test_client_connection_close_is_honoured(self) -> None:
        conn = ServerConnection()
        receive(conn, http_request("/", headers=[("Connection", "close")]))
        conn.send_response(200, b"bye")
        assert single_response(conn).status == 200
        assert conn.close_expected()

    def test_other_methods_on_other_paths_are_the_callers_job(self) -> None:
        # A 405 for POST /healthz is the application's decision, not the protocol's.
        conn = ServerConnection()
        events = receive(conn, http_request("/healthz", method="POST", body=b"{}"))
        assert [(e.method, e.path) for e in events if isinstance(e, HttpRequest)] == [
            ("POST", "/healthz")
        ]
        assert conn.data_to_send() == []

    def test_answering_with_no_request_pending_is_a_local_error(self) -> None:
        conn = ServerConnection()
        with pytest.raises(LocalProtocolError):
            conn.send_response(200)
        receive(conn, http_request("/"))
        conn.send_response(200)
        with pytest.raises(LocalProtocolError):
            conn.send_response(200)

    def test_eof_before_any_request_closes_quietly(self) -> None:
        conn = ServerConnection()
        conn.receive_eof()
        assert conn.events_received() == []
        assert conn.data_to_send() == []
        assert conn.close_expected()

    def test_receive_data_empty_bytes_means_eof(self) -> None:
        conn = ServerConnection()
        conn.receive_data(b"")
        assert conn.close_expected()

    def test_half_closed_client_still_gets_its_answer(self) -> None:
        conn = ServerConnection()
        receive(conn, http_request("/"))
        conn.receive_eof()
        assert not conn.close_expected()  # the answer is still to be written
        conn.send_response(200, b"late but sent")
        assert conn.close_expected()
        assert single_response(conn).body == b"late but sent"

    @pytest.mark.parametrize(
        "data",
        [
            b"NOT A REQUEST\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 requires Host
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS on a plain port
        ],
        ids=["garbage", "bad-header", "no-host", "two-hosts", "tls"],
    )
    def test_malformed_request_gets_400_and_closes(self, data: bytes) -> None:
        conn = ServerConnection()
        assert_rejected(conn, receive(conn, data), 400)

    def test_malformed_request_after_a_good_one_is_answered_in_turn(self) -> None:
        conn = ServerConnection()
        events = receive(conn, http_request("/") + b"BROKEN\r\n\r\n")
        assert [type(e) for e in events] == [HttpRequest]
        conn.send_response(200, b"ok")
        follow = conn.events_received()
        assert [(type(e), e.status) for e in follow if isinstance(e, RequestRejected)] == [
            (RequestRejected, 400)
        ]
        parsed = parse_http_responses(conn.data_to_send())
        assert [r.status for r in parsed.responses] == [200, 400]
        assert conn.close_expected()

    @pytest.mark.parametrize(
        ("data", "statuses"),
        [
            (
                b"GET / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
                ([200], [400]),  # answering first, or refusing the bad body: either is fine
            ),
            (b"GET / HTTP/1.0\r\n\r\n\r\n", ([200],)),  # a stray CRLF after the request
            (
                b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                b"GET /b HTTP/1.1\r\nHost: localhost\r\n\r\n",
                ([200],),  # RFC 9112 9.6: answer the first, ignore what follows "close"
            ),
        ],
        ids=["bad-chunk", "http10-extra-crlf", "pipelined-after-close"],
    )
    def test_bytes_after_a_request_in_the_same_read_do_not_preempt_its_answer(
        self, data: bytes, statuses: tuple[list[int], ...]
    ) -> None:
        conn = ServerConnection()
        events = receive(conn, data)
        # The I/O layer answers every HttpRequest it is given; that must never raise.
        for event in events:
            if isinstance(event, HttpRequest):
                conn.send_response(200, b"ok")
        parsed = parse_http_responses(conn.data_to_send())
        assert [r.status for r in parsed.responses] in statuses
        assert conn.close_expected()


def serve_like_the_io_layer(
    conn: ServerConnection, data: bytes, body: bytes, *, eof: bool = False
) -> list[bytes]:
    """The loop ServerConnection documents; returns what each send would write.

    Answer events until there are none, send, and go on while the send (taking
    the bytes) brought more events.
    """
    conn.receive_data(data)
    if eof:
        conn.receive_eof()
    writes = []
    events = conn.events_received()
    while events:
        for event in events:
            if isinstance(event, HttpRequest):
                conn.send_response(200, body + event.path.encode())
        events = conn.events_received()
        if not events:
            writes.append(b"".join(conn.data_to_send()))
            events = conn.events_received()
    return writes


class TestBoundedPipelining:
    """Issue 8 item 4: pipelined requests are parsed only while few response bytes wait."""

    BODY = b"x" * 16_000  # about app.js
    HEAD = 1024  # room for one answer's head, its security headers included

    def test_default_cap(self) -> None:
        assert DEFAULT_MAX_PENDING_OUTPUT == 64 * 1024

    def test_parsing_stops_while_responses_wait_and_data_to_send_resumes_it(self) -> None:
        conn = ServerConnection()
        events = receive(conn, b"".join(http_request(f"/{i}") for i in range(500)))
        answered = 0
        while events:
            (event,) = events
            assert isinstance(event, HttpRequest) and event.path == f"/{answered}"
            conn.send_response(200, self.BODY)
            answered += 1
            events = conn.events_received()
        # Five ~16 KB answers pass the 64 KiB cap: the other 495 requests wait, unparsed.
        assert answered == 5
        pending = conn.data_to_send()
        assert sum(map(len, pending)) <= DEFAULT_MAX_PENDING_OUTPUT + len(self.BODY) + self.HEAD
        # Taking the bytes resumed parsing: the next request is out.
        (event,) = conn.events_received()
        assert isinstance(event, HttpRequest) and event.path == "/5"

    def test_every_pipelined_request_is_answered_in_order_with_bounded_writes(self) -> None:
        conn = ServerConnection()
        data = b"".join(http_request(f"/{i}") for i in range(300))
        writes = serve_like_the_io_layer(conn, data, self.BODY)
        assert max(map(len, writes)) <= DEFAULT_MAX_PENDING_OUTPUT + len(self.BODY) + self.HEAD
        parsed = parse_http_responses(writes)
        assert [r.body for r in parsed.responses] == [
            self.BODY + f"/{i}".encode() for i in range(300)
        ]
        assert not conn.close_expected()

    def test_small_answers_are_not_held_back(self) -> None:
        conn = ServerConnection()
        writes = serve_like_the_io_layer(
            conn, b"".join(http_request(f"/{i}") for i in range(100)), b"ok"
        )
        assert len(writes) == 1  # 100 small answers fit under the cap: one send
        assert len(parse_http_responses(writes).responses) == 100

    def test_a_smaller_cap(self) -> None:
        conn = ServerConnection(max_pending_output=0)
        writes = serve_like_the_io_layer(conn, http_request("/a") + http_request("/b"), b"1")
        assert len(writes) == 2  # one answer per send

    def test_pipelined_requests_then_eof_are_all_answered_then_closed(self) -> None:
        conn = ServerConnection()
        data = b"".join(http_request(f"/{i}") for i in range(20))
        writes = serve_like_the_io_layer(conn, data, self.BODY, eof=True)
        assert len(parse_http_responses(writes).responses) == 20
        assert conn.close_expected()

    def test_an_upgrade_behind_pipelined_requests_waits_its_turn(self) -> None:
        conn = ServerConnection()
        data = b"".join(http_request(f"/{i}") for i in range(10)) + handshake_request()
        writes = serve_like_the_io_layer(conn, data, self.BODY)
        assert len(parse_http_responses(writes).responses) == 10
        assert conn.state is State.UPGRADE_PENDING


class TestRequestHeadLimit:
    """RFC 6585 5: 431 Request Header Fields Too Large."""

    def test_default_limit(self) -> None:
        assert ServerConnection().max_request_head == DEFAULT_MAX_REQUEST_HEAD == 16 * 1024

    def test_complete_head_over_the_limit_in_one_read(self) -> None:
        conn = ServerConnection(max_request_head=1024)
        data = http_request("/", headers=[("X-Big", "a" * 2000)])
        assert_rejected(conn, receive(conn, data), 431)

    def test_incomplete_head_over_the_limit(self) -> None:
        conn = ServerConnection(max_request_head=1024)
        # No blank line yet: h11 refuses to buffer more than the cap.
        data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000
        assert_rejected(conn, receive(conn, data), 431)

    def test_head_over_the_limit_on_the_websocket_path(self) -> None:
        conn = ServerConnection(max_request_head=1024)
        data = handshake_request(headers=[("Cookie", "c" * 2000)])
        assert_rejected(conn, receive(conn, data), 431)

    def test_head_under_the_limit_is_fine(self) -> None:
        conn = ServerConnection(max_request_head=1024)
        events = receive(conn, http_request("/", headers=[("X-Small", "a" * 500)]))
        assert [type(e) for e in events] == [HttpRequest]


# -- RFC 6455 section 4: the opening handshake ----------------------------------


class TestSection4_2_1ReadingTheClientHandshake:
    """RFC 6455 4.2.1: what a server checks before it switches protocols."""

    def test_valid_handshake_surfaces_as_websocket_request(self) -> None:
        conn = ServerConnection()
        events = receive(conn, handshake_request("/ws?room=lobby"))
        assert len(events) == 1
        (request,) = events
        assert isinstance(request, WebSocketRequest)
        assert (request.path, request.query) == ("/ws", "room=lobby")
        assert ("sec-websocket-key", SAMPLE_KEY) in request.headers
        assert conn.state is State.UPGRADE_PENDING
        assert conn.data_to_send() == []  # the caller decides (capacity, auth, draining)
        assert not conn.close_expected()

    def test_only_configured_paths_upgrade(self) -> None:
        conn = ServerConnection(websocket_paths={"/chat", "/echo"})
        (event,) = receive(conn, handshake_request("/ws"))
        assert isinstance(event, HttpRequest)  # an ordinary request: the caller 404s it
        conn = ServerConnection(websocket_paths={"/chat", "/echo"})
        (event,) = receive(conn, handshake_request("/echo"))
        assert isinstance(event, WebSocketRequest)

    def test_handshake_split_across_reads(self) -> None:
        conn = ServerConnection()
        data = handshake_request()
        for i in range(len(data) - 1):
            assert receive(conn, data[i : i + 1]) == []
        (event,) = receive(conn, data[-1:])
        assert isinstance(event, WebSocketRequest)

    def test_post_gets_405_from_the_protocol(self) -> None:
        conn = ServerConnection()
        reason = assert_rejected(conn, receive(conn, handshake_request(method="POST")), 405)
        assert "GET" in reason

    def test_405_names_the_allowed_method(self) -> None:
        conn = ServerConnection()
        receive(conn, handshake_request(method="PUT"))
        assert single_response(conn).header("allow") == "GET"

    def test_http_1_0_is_refused(self) -> None:
        conn = ServerConnection()
        reason = assert_rejected(conn, receive(conn, handshake_request(http_version="1.0")), 400)
        assert "HTTP/1.1" in reason

    @pytest.mark.parametrize("upgrade", [None, "h2c", "websocketx", "web socket"])
    def test_missing_or_other_upgrade_is_refused(self, upgrade: str | None) -> None:
        conn = ServerConnection()
        reason = assert_rejected(conn, receive(conn, handshake_request(upgrade=upgrade)), 400)
        assert "Upgrade" in reason

    @pytest.mark.parametrize("upgrade", ["websocket", "WebSocket", "h2c, websocket"])
    def test_upgrade_token_is_case_insensitive_and_listed(self, upgrade: str) -> None:
        conn = ServerConnection()
        (event,) = receive(conn, handshake_request(upgrade=upgrade))
        assert isinstance(event, WebSocketRequest)

    @pytest.mark.parametrize(
        "connection", ["Upgrade", "upgrade", "keep-alive, Upgrade", "KEEP-ALIVE,UPGRADE"]
    )
    def test_connection_token_list_in_any_case(self, connection: str) -> None:
        conn = ServerConnection()
        (event,) = receive(conn, handshake_request(connection=connection))
        assert isinstance(event, WebSocketRequest)

    @pytest.mark.parametrize("connection", [None, "keep-alive", "close", "upgraded"])
    def test_missing_connection_upgrade_is_refused(self, connection: str | None) -> None:
        conn = ServerConnection()
        reason = assert_rejected(conn, receive(conn, handshake_request(connection=connection)), 400)
        assert "Connection" in reason

    @pytest.mark.parametrize("second", [SAMPLE_KEY, "AQIDBAUGBwgJCgsMDQ4PEA=="])
    def test_two_keys_are_refused(self, second: str) -> None:
        # RFC 6455 11.3.1: Sec-WebSocket-Key "MUST NOT appear more than once in an
        # HTTP request" (issue 8 item 10).
        conn = ServerConnection()
        data = handshake_request(headers=[("Sec-WebSocket-Key", second)])
        reason = assert_rejected(conn, receive(conn, data), 400)
        assert reason == "more than one Sec-WebSocket-Key header"

    def test_missing_key_is_refused(self) -> None:
        conn = ServerConnection()
        reason = assert_rejected(conn, receive(conn, handshake_request(key=None)), 400)
        assert "Sec-WebSocket-Key" in reason

    @pytest.mark.parametrize(
        "key",
        [
            "",
            "not base64!!",
            "AAAAAAAAAAAAAAAAAAAA",  # base64 of 15 bytes
            "AAAAAAAAAAAAAAAAAAAAAAAA",  # base64 of 18 bytes
            "AAAAAAAAAAAAAAAAAAAAAA",  # 16 bytes but unpadded
            "dGhlIHNhbXBsZSBub25jZQ",
        ],
    )
    def test_key_not_base64_of_16_bytes_is_refused(self, key: str) -> None:
        conn = ServerConnection()
        reason = assert_rejected(conn, receive(conn, handshake_request(key=key)), 400)
        assert "Sec-WebSocket-Key" in reason

    @pytest.mark.parametrize("version", ["8", "12", "14", "13, 8", None])
    def test_other_or_missing_version_gets_426_with_supported_version(
        self, version: str | None
    ) -> None:
        # RFC 6455 4.4: answer with the versions this server speaks.
        conn = ServerConnection()
        events = receive(conn, handshake_request(version=version))
        assert len(events) == 1 and isinstance(events[0], RequestRejected)
        assert events[0].status == 426
        response = single_response(conn)
        assert response.status == 426
        assert response.reason == b"Upgrade Required"
        assert response.header("sec-websocket-version") == "13"
        assert response.body.decode() == events[0].reason + "\n"
        assert conn.close_expected()

    def test_checks_run_in_a_useful_order(self) -> None:
        # A request that is wrong in every way is told about the method first.
        conn = ServerConnection()
        data = handshake_request(method="POST", upgrade=None, connection=None, key=None)
        assert_rejected(conn, receive(conn, data), 405)

    def test_nothing_after_a_rejection_is_parsed(self) -> None:
        conn = ServerConnection()
        events = receive(conn, handshake_request(key=None) + http_request("/"))
        assert [type(e) for e in events] == [RequestRejected]
        assert len(parse_http_responses(conn.data_to_send()).responses) == 1
        assert receive(conn, http_request("/")) == []
        assert conn.data_to_send() == []


class TestSection4_2_2ServerHandshakeResponse:
    """RFC 6455 4.2.2: the 101 and its Sec-WebSocket-Accept."""

    def test_101_carries_the_rfc_sample_accept_key(self) -> None:
        conn = ServerConnection()
        receive(conn, handshake_request(key=SAMPLE_KEY))
        conn.accept_websocket()
        parsed = parse_http_responses(conn.data_to_send())
        (response,) = parsed.responses
        assert response.status == 101
        assert response.reason == b"Switching Protocols"
        assert response.header("upgrade") == "websocket"
        assert response.header("connection") == "Upgrade"
        assert response.header("sec-websocket-accept") == SAMPLE_ACCEPT
        assert response.header("sec-websocket-extensions") is None
        assert parsed.trailing == b""
        assert conn.state is State.OPEN
        assert not conn.close_expected()
        assert conn.events_received() == []

    def test_server_can_refuse_a_valid_upgrade(self) -> None:
        conn = ServerConnection()
        receive(conn, handshake_request())
        conn.send_response(503, b"too many connections\n", headers=(("retry-after", "5"),))
        response = single_response(conn)
        assert response.status == 503
        assert response.header("retry-after") == "5"
        # Unknown bytes may follow a refused upgrade: never reuse the connection.
        assert response.header("connection") == "close"
        assert conn.close_expected()

    def test_accept_without_a_pending_upgrade_is_a_local_error(self) -> None:
        conn = ServerConnection()
        with pytest.raises(LocalProtocolError):
            conn.accept_websocket()
        receive(conn, http_request("/"))
        with pytest.raises(LocalProtocolError):
            conn.accept_websocket()

    def test_accept_twice_is_a_local_error(self) -> None:
        conn = ServerConnection()
        receive(conn, handshake_request())
        conn.accept_websocket()
        with pytest.raises(LocalProtocolError):
            conn.accept_websocket()

    def test_eof_while_the_upgrade_is_pending_closes(self) -> None:
        conn = ServerConnection()
        receive(conn, handshake_request())
        conn.receive_eof()
        assert conn.close_expected()

    def test_send_close_while_the_upgrade_is_pending_closes(self) -> None:
        conn = ServerConnection()
        receive(conn, handshake_request())
        conn.send_close(1001)
        assert conn.close_expected()
        assert conn.data_to_send() == []

    @pytest.mark.parametrize(
        "offer",
        [
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_max_window_bits=x",
            "permessage-deflate; client_max_window_bits=",
        ],
    )
    def test_malformed_deflate_offer_is_declined_not_raised(self, offer: str) -> None:
        # RFC 7692 5: a server MUST decline an offer whose parameter has an invalid value.
        conn = ServerConnection()
        events = receive(conn, handshake_request(extensions=offer))
        if isinstance(events[0], RequestRejected):  # refusing the handshake is fine too
            assert events[0].status == 400
            return
        conn.accept_websocket()
        (response,) = parse_http_responses(conn.data_to_send()).responses
        assert response.status == 101
        assert response.header("sec-websocket-extensions") is None


class TestHandoffToFraming:
    """The h11 -> wsproto handoff: bytes h11 read past the request are frames."""

    def test_first_frame_in_the_same_read_as_the_handshake(self) -> None:
        conn = ServerConnection()
        frame = Client().send(wse.TextMessage("hello"))
        events = receive(conn, handshake_request() + frame)
        assert [type(e) for e in events] == [WebSocketRequest]
        conn.accept_websocket()
        assert conn.events_received() == [TextReceived("hello")]

    def test_good_then_bad_frame_in_the_handshake_read_echo_before_the_close(self) -> None:
        # The I/O layer sends the 101 first, then takes the events and answers them.
        conn = ServerConnection()
        bad = bytes([0x83, 0x80]) + b"\x00\x00\x00\x00"  # reserved opcode 0x3
        events = receive(conn, handshake_request() + Client().send(wse.TextMessage("a")) + bad)
        assert [type(e) for e in events] == [WebSocketRequest]
        conn.accept_websocket()
        parsed = parse_http_responses(conn.data_to_send())
        assert [r.status for r in parsed.responses] == [101]
        assert parsed.trailing == b""  # no close frame ahead of the echo
        assert [type(e) for e in conn.events_received()] == [TextReceived, ConnectionClosed]
        conn.send_text("a")
        frames = parse_server_frames(conn.data_to_send())
        assert [f.opcode.value for f in frames] == [OP_TEXT, 0x8]

    def test_bytes_arriving_while_the_upgrade_is_pending_are_kept(self) -> None:
        conn = ServerConnection()
        client = Client()
        assert [type(e) for e in receive(conn, handshake_request())] == [WebSocketRequest]
        # The caller is still deciding (e.g. checking capacity) when frames arrive.
        assert receive(conn, client.send(wse.TextMessage("one"))) == []
        assert receive(conn, client.send(wse.Ping(b"p"))) == []
        two = client.send(wse.TextMessage("two"))
        assert receive(conn, two[:3]) == []
        conn.accept_websocket()
        assert conn.events_received() == [TextReceived("one")]
        out = conn.data_to_send()
        parsed = parse_http_responses(out)
        assert [r.status for r in parsed.responses] == [101]
        frames = parse_server_frames(parsed.trailing)
        assert [(f.opcode.name, f.payload) for f in frames] == [("PONG", b"p")]
        # The rest of the partial frame completes the message.
        assert receive(conn, two[3:]) == [TextReceived("two")]

    def test_partial_frame_in_the_handshake_read_completes_later(self) -> None:
        conn = ServerConnection()
        frame = Client().send(wse.TextMessage("split"))
        receive(conn, handshake_request() + frame[:4])
        conn.accept_websocket()
        assert conn.events_received() == []
        assert receive(conn, frame[4:]) == [TextReceived("split")]

    def test_handshake_frames_and_server_reply_round_trip(self) -> None:
        conn = ServerConnection()
        client = Client()
        receive(conn, handshake_request() + client.send(wse.TextMessage("hi")))
        conn.accept_websocket()
        conn.send_text("welcome")
        parsed = parse_http_responses(conn.data_to_send())
        assert parsed.responses[0].status == 101
        assert client.receive(parsed.trailing) == [wse.TextMessage(data="welcome")]
        (frame,) = parse_server_frames(parsed.trailing)
        assert frame.opcode.value == OP_TEXT
        assert conn.events_received() == [TextReceived("hi")]


# -- RFC 6455 section 10.2: Origin ------------------------------------------------


class TestSection10_2OriginConsiderations:
    """RFC 6455 10.2 and 4.2.2: servers use Origin to refuse cross-site browser connections."""

    def upgrade(
        self, origin: str | None, host: str = "example.com", allowed: tuple[str, ...] = ()
    ) -> object:
        # Any Host: these cases are about Origin (the Host checks are below).
        conn = ServerConnection(
            origin_policy=OriginPolicy(allowed=allowed), host_policy=HostPolicy(("*",))
        )
        events = receive(conn, handshake_request(origin=origin, host=host))
        assert len(events) == 1
        return events[0]

    def test_no_origin_is_allowed(self) -> None:
        # Non-browser clients send no Origin and could forge one anyway.
        assert isinstance(self.upgrade(None), WebSocketRequest)

    @pytest.mark.parametrize(
        ("origin", "host"),
        [
            ("http://example.com", "example.com"),
            ("http://example.com", "example.com:80"),
            ("http://example.com:80", "example.com"),
            ("https://example.com", "example.com"),
            ("https://example.com", "example.com:443"),
            ("http://example.com:8080", "example.com:8080"),
            ("HTTP://Example.COM", "EXAMPLE.com"),
            ("http://example.com/", "example.com"),
            ("http://127.0.0.1:8000", "127.0.0.1:8000"),
            ("http://[::1]:8000", "[::1]:8000"),
        ],
    )
    def test_same_origin_is_allowed(self, origin: str, host: str) -> None:
        assert isinstance(self.upgrade(origin, host), WebSocketRequest)

    @pytest.mark.parametrize(
        ("origin", "host"),
        [
            ("http://evil.example", "example.com"),
            ("http://example.com:8080", "example.com"),
            ("http://example.com", "example.com:8080"),
            ("https://example.com", "example.com:80"),
            ("http://example.com.evil.example", "example.com"),
            ("http://sub.example.com", "example.com"),
            ("null", "example.com"),
            ("file://", "example.com"),
            ("not a url", "example.com"),
            ("http://example.com:99999", "example.com"),
            ("http://[::1", "example.com"),
            ("ws://example.com", "example.com:443"),
        ],
    )
    def test_cross_origin_is_forbidden(self, origin: str, host: str) -> None:
        conn = ServerConnection(host_policy=HostPolicy(("*",)))
        events = receive(conn, handshake_request(origin=origin, host=host))
        reason = assert_rejected(conn, events, 403)
        assert origin in reason

    def test_allowlist_admits_listed_origins(self) -> None:
        app = ("https://app.example.com",)
        assert isinstance(self.upgrade("https://app.example.com", allowed=app), WebSocketRequest)
        assert isinstance(self.upgrade("https://APP.example.com/", allowed=app), WebSocketRequest)
        # Same origin still works next to the allowlist.
        assert isinstance(self.upgrade("http://example.com", allowed=app), WebSocketRequest)
        # The allowlist is exact: scheme and port matter.
        for other in (
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://evil.example",
        ):
            event = self.upgrade(other, allowed=app)
            assert isinstance(event, RequestRejected) and event.status == 403, other

    def test_star_allows_any_origin(self) -> None:
        for origin in ("https://evil.example", "null", "http://example.com:1"):
            assert isinstance(self.upgrade(origin, allowed=("*",)), WebSocketRequest), origin

    def test_policy_check_directly(self) -> None:
        policy = OriginPolicy()
        assert policy.check(None, None)
        assert policy.check("http://example.com", "example.com")
        assert not policy.check("http://example.com", None)
        assert not policy.check("http://evil.example", "example.com")

    @pytest.mark.parametrize("host", ["", "[", ":"])
    def test_unparseable_origin_and_host_are_not_same_origin(self, host: str) -> None:
        assert not OriginPolicy().check("null", host)

    def test_null_origin_with_empty_host_is_forbidden(self) -> None:
        event = self.upgrade("null", host="")
        assert isinstance(event, RequestRejected) and event.status == 403


# -- RFC 9110 7.2 Host, and DNS rebinding ------------------------------------------


class TestHostHeader:
    """Issue 8 item 6: the Host header is checked on every request (DNS rebinding)."""

    @pytest.mark.parametrize(
        "host", ["localhost", "localhost:8080", "127.0.0.1:8080", "[::1]:8080"]
    )
    @pytest.mark.parametrize("path", ["/", "/app.js", "/healthz", "/metrics", "/nope"])
    def test_loopback_names_are_answered_on_every_path(self, host: str, path: str) -> None:
        conn = ServerConnection()
        (event,) = receive(conn, http_request(path, host=host))
        assert isinstance(event, HttpRequest) and event.path == path

    @pytest.mark.parametrize("path", ["/", "/app.js", "/healthz", "/metrics", "/nope", "/ws"])
    def test_rebinding_host_is_refused_with_421_on_every_path(self, path: str) -> None:
        # The attacker's page: Host and Origin are both the attacker's name, so the
        # same-origin check alone would pass.
        conn = ServerConnection()
        data = handshake_request(
            path, host="attacker.example:8080", origin="http://attacker.example:8080"
        )
        reason = assert_rejected(conn, receive(conn, data), 421)
        assert reason == "host not allowed: attacker.example:8080 (see --allow-host)"

    def test_421_response_names_the_host(self) -> None:
        conn = ServerConnection()
        receive(conn, http_request("/", host="attacker.example"))
        response = single_response(conn)
        assert (response.status, response.reason) == (421, b"Misdirected Request")
        assert response.body == b"host not allowed: attacker.example (see --allow-host)\n"

    def test_each_request_of_a_keep_alive_connection_is_checked(self) -> None:
        conn = ServerConnection()
        (first,) = receive(conn, http_request("/", host="localhost:8080"))
        assert isinstance(first, HttpRequest)
        conn.send_response(200, b"page")
        (second,) = receive(conn, http_request("/app.js", host="attacker.example"))
        assert isinstance(second, RequestRejected) and second.status == 421
        parsed = parse_http_responses(conn.data_to_send())
        assert [r.status for r in parsed.responses] == [200, 421]
        assert conn.close_expected()

    def test_http_1_0_without_host_is_answered(self) -> None:
        conn = ServerConnection()
        (event,) = receive(conn, b"GET / HTTP/1.0\r\n\r\n")
        assert isinstance(event, HttpRequest)

    @pytest.mark.parametrize(
        ("bind", "allowed", "host"),
        [
            ("127.0.0.1", (), "127.0.0.1:8080"),
            ("127.0.0.1", (), "LOCALHOST.:8080"),  # any case, FQDN trailing dot
            ("192.0.2.7", (), "192.0.2.7:8080"),  # the bound address
            ("chat.internal", (), "chat.internal"),  # bound by name
            ("0.0.0.0", (), "192.0.2.7:8080"),  # wildcard: any IP literal
            ("0.0.0.0", (), "10.1.2.3"),
            ("::", (), "[2001:db8::1]:8080"),
            ("127.0.0.1", ("chat.example.com",), "chat.example.com"),
            ("127.0.0.1", ("chat.example.com:443",), "chat.example.com:8443"),  # port ignored
            ("127.0.0.1", ("*.example.com",), "a.b.example.com"),
            ("127.0.0.1", ("*",), "anything.example"),
            ("0.0.0.0", ("[2001:db8::5]",), "[2001:db8::5]"),
        ],
    )
    def test_accepted(self, bind: str, allowed: tuple[str, ...], host: str) -> None:
        conn = ServerConnection(host_policy=HostPolicy.for_bind(bind, allowed))
        (event,) = receive(conn, handshake_request(host=host, origin=f"http://{host}"))
        assert isinstance(event, WebSocketRequest)

    @pytest.mark.parametrize(
        ("bind", "allowed", "host"),
        [
            ("127.0.0.1", (), "attacker.example"),
            ("127.0.0.1", (), "192.0.2.7"),  # bound to loopback: other IPs are not ours
            ("192.0.2.7", (), "192.0.2.8"),
            ("0.0.0.0", (), "attacker.example"),  # wildcard admits IP literals, not names
            ("::", (), "attacker.example:8080"),
            ("127.0.0.1", ("*.example.com",), "example.com"),  # subdomains only
            ("127.0.0.1", ("*.example.com",), "evilexample.com"),
            ("127.0.0.1", ("chat.example.com",), "chat.example.com.attacker.example"),
            ("0.0.0.0", (), "127.0.0.1.nip.io"),  # a name that resolves to an IP is a name
            ("0.0.0.0", (), "bad host"),
            ("0.0.0.0", (), "localhost:http"),
            ("0.0.0.0", (), "[::1"),
            ("0.0.0.0", (), "[::1]x"),
            ("0.0.0.0", (), "user@localhost"),
            ("0.0.0.0", (), ""),
        ],
    )
    def test_refused(self, bind: str, allowed: tuple[str, ...], host: str) -> None:
        conn = ServerConnection(host_policy=HostPolicy.for_bind(bind, allowed))
        data = handshake_request(host=host, origin=f"http://{host}")
        reason = assert_rejected(conn, receive(conn, data), 421)
        assert reason.startswith("host not allowed: ")

    def test_for_bind_lists_the_defaults(self) -> None:
        assert HostPolicy() == HostPolicy(("localhost", "127.0.0.1", "::1"))
        assert HostPolicy.for_bind("127.0.0.1") == HostPolicy(("localhost", "127.0.0.1", "::1"))
        assert HostPolicy.for_bind("0.0.0.0", ("Chat.Example.com:8080",)) == HostPolicy(
            ("localhost", "127.0.0.1", "::1", "chat.example.com"), any_ip_literal=True
        )


class TestSecurityHeadersOnEveryResponse:
    """Issue 8 item 6: the connection's own rejections carry the same security headers
    as the server's answers, once each, read from the bytes as sent."""

    @staticmethod
    def fields(data: bytes) -> list[tuple[str, str]]:
        """The header fields of the one response in ``data``, in order, repeats kept."""
        head, separator, _ = data.partition(b"\r\n\r\n")
        assert separator and data.count(b"HTTP/1.1 ") == 1, data
        lines = head.decode("latin-1").split("\r\n")[1:]
        return [(name.lower(), value.strip()) for name, value in (ln.split(":", 1) for ln in lines)]

    def assert_hardened(self, data: bytes) -> dict[str, str]:
        fields = self.fields(data)
        names = [name for name, _ in fields]
        for name in ("content-security-policy", "x-content-type-options", "referrer-policy"):
            assert names.count(name) == 1, (name, fields)
        values = dict(fields)
        assert values["x-content-type-options"] == "nosniff"
        assert values["referrer-policy"] == "no-referrer"
        policy = values["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        return values

    @pytest.mark.parametrize(
        ("options", "data", "status"),
        [
            pytest.param({}, http_request("/", host="attacker.example"), 421, id="421-host"),
            pytest.param({}, b"NOT A REQUEST\r\n\r\n", 400, id="400-malformed"),
            pytest.param(
                {}, handshake_request(headers=[("Sec-WebSocket-Key", SAMPLE_KEY)]), 400, id="400"
            ),
            pytest.param({}, handshake_request(origin="http://evil.example"), 403, id="403"),
            pytest.param({}, handshake_request(method="POST"), 405, id="405"),
            pytest.param(
                {"max_request_body": 10},
                b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n\r\n",
                413,
                id="413",
            ),
            pytest.param({}, handshake_request(version="8"), 426, id="426"),
            pytest.param(
                {"max_request_head": 1024},
                http_request("/", headers=[("X-Big", "a" * 2000)]),
                431,
                id="431",
            ),
        ],
    )
    def test_each_rejection_of_the_protocol_carries_them(
        self, options: dict[str, Any], data: bytes, status: int
    ) -> None:
        conn = ServerConnection(**options)
        (event,) = receive(conn, data)
        assert isinstance(event, RequestRejected) and event.status == status
        out = b"".join(conn.data_to_send())
        assert out.startswith(f"HTTP/1.1 {status} ".encode())
        values = self.assert_hardened(out)
        assert values["content-type"] == "text/plain; charset=utf-8"

    def test_the_callers_answers_carry_them(self) -> None:
        conn = ServerConnection()
        receive(conn, http_request("/"))
        conn.send_response(200, b"page")
        self.assert_hardened(b"".join(conn.data_to_send()))
        conn = ServerConnection()
        receive(conn, handshake_request())
        conn.send_response(503, b"too many connections\n")  # a refused upgrade
        self.assert_hardened(b"".join(conn.data_to_send()))

    def test_a_header_the_caller_sets_is_sent_once_its_own_way(self) -> None:
        conn = ServerConnection()
        receive(conn, http_request("/"))
        conn.send_response(200, b"x", headers=(("Content-Security-Policy", "default-src 'none'"),))
        fields = self.fields(b"".join(conn.data_to_send()))
        assert [value for name, value in fields if name == "content-security-policy"] == [
            "default-src 'none'"
        ]
        assert ("x-content-type-options", "nosniff") in fields

    @pytest.mark.parametrize(
        ("data", "status", "echoed"),
        [
            (http_request("/", host="<script>alert(1)</script>"), 421, "<script>alert(1)</script>"),
            (handshake_request(origin="http://<img src=x onerror=alert(1)>"), 403, "<img src=x"),
        ],
        ids=["host", "origin"],
    )
    def test_a_refused_header_echoed_in_the_body_is_inert_text(
        self, data: bytes, status: int, echoed: str
    ) -> None:
        # The reason names what was refused, verbatim: text/plain, never sniffed
        # (nosniff), and no header line of the response holds it.
        conn = ServerConnection()
        (event,) = receive(conn, data)
        assert isinstance(event, RequestRejected) and event.status == status
        out = b"".join(conn.data_to_send())
        head, _, body = out.partition(b"\r\n\r\n")
        assert echoed.encode() in body and echoed.encode() not in head
        values = self.assert_hardened(out)
        assert values["content-type"] == "text/plain; charset=utf-8"
