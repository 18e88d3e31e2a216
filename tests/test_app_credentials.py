"""Where a token is found in an upgrade request, and that it never reaches a log line."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wschat.app import Rejection, UpgradeRequest, find_token, redact_query, redact_target
from wschat.app.credentials import REDACTED, parse_cookies


def request(query: str = "", *headers: tuple[str, str]) -> UpgradeRequest:
    return UpgradeRequest("/ws", query, tuple(headers), "127.0.0.1:5000")


class TestFindToken:
    def test_none(self) -> None:
        assert find_token(request("room=lobby")) is None

    def test_query(self) -> None:
        assert find_token(request("room=lobby&token=abc.def.ghi")) == "abc.def.ghi"

    def test_query_is_percent_decoded(self) -> None:
        assert find_token(request("token=a%2Bb")) == "a+b"

    def test_bearer_header(self) -> None:
        assert find_token(request("", ("authorization", "Bearer abc"))) == "abc"
        assert find_token(request("", ("authorization", "bearer   abc "))) == "abc"

    def test_other_schemes_are_not_tokens(self) -> None:
        assert find_token(request("", ("authorization", "Basic dXNlcjpwdw=="))) is None

    def test_cookie_only_when_configured(self) -> None:
        req = request("", ("cookie", "theme=dark; chat_token=abc"))
        assert find_token(req) is None
        assert find_token(req, "chat_token") == "abc"

    def test_precedence_header_then_query_then_cookie(self) -> None:
        req = request("token=q", ("authorization", "Bearer h"), ("cookie", "t=c"))
        assert find_token(req, "t") == "h"
        assert find_token(request("token=q", ("cookie", "t=c")), "t") == "q"

    @pytest.mark.parametrize(
        "req",
        [
            request("token=a&token=b"),
            request("token="),
            request("", ("authorization", "Bearer ")),
            request("", ("cookie", "t=")),
        ],
        ids=["twice", "empty-query", "empty-bearer", "empty-cookie"],
    )
    def test_malformed_is_401(self, req: UpgradeRequest) -> None:
        with pytest.raises(Rejection) as info:
            find_token(req, "t")
        assert info.value.status == 401 and info.value.reason


class TestCookies:
    def test_pairs(self) -> None:
        assert parse_cookies(["a=1; b=2", "c=3"]) == {"a": "1", "b": "2", "c": "3"}

    def test_quoted_value_and_spaces(self) -> None:
        assert parse_cookies([' a = "x y" ;b=2']) == {"a": "x y", "b": "2"}

    def test_junk_is_skipped_and_first_wins(self) -> None:
        assert parse_cookies(["junk; =v; a=1; a=2; b"]) == {"a": "1"}

    def test_request_cookies(self) -> None:
        assert request("", ("cookie", "a=1"), ("cookie", "b=2")).cookies == {"a": "1", "b": "2"}


class TestRedaction:
    def test_token_is_replaced(self) -> None:
        assert redact_query("room=lobby&token=eyJ.x.y") == f"room=lobby&token={REDACTED}"

    def test_other_parameters_are_kept_exactly(self) -> None:
        query = "room=a%20b&x=&token=t&flag"
        assert redact_query(query) == f"room=a%20b&x=&token={REDACTED}&flag"

    def test_encoded_name_is_redacted_too(self) -> None:
        # The server decodes parameter names, so %74oken is a token parameter.
        assert find_token(request("%74oken=secret")) == "secret"
        assert "secret" not in redact_query("%74oken=secret")

    def test_target(self) -> None:
        assert redact_target("/ws?token=abc&room=r") == f"/ws?token={REDACTED}&room=r"
        assert redact_target("/ws") == "/ws"

    @settings(max_examples=200, deadline=None)
    @given(
        token=st.text(
            st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=8, max_size=40
        ),
        before=st.lists(st.tuples(st.sampled_from(["room", "a", "b"]), st.text(max_size=8))),
        after=st.lists(st.tuples(st.sampled_from(["room", "a", "b"]), st.text(max_size=8))),
    )
    def test_whatever_is_read_as_the_token_is_not_in_the_log_line(
        self, token: str, before: list[tuple[str, str]], after: list[tuple[str, str]]
    ) -> None:
        query = "&".join(
            filter(None, [urlencode(before), f"token={quote(token, safe='')}", urlencode(after)])
        )
        assert find_token(request(query)) == token
        redacted = redact_query(query)
        # Read back as the server reads it: the token is gone, everything else is the same.
        pairs = parse_qsl(redacted, keep_blank_values=True)
        assert [value for name, value in pairs if name == "token"] == [REDACTED]
        assert [pair for pair in pairs if pair[0] != "token"] == before + after
        assert find_token(request(redacted)) == REDACTED
