"""``?limit=`` / ``?page_token=`` parsing, opaque page tokens, and the page body."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from starlette.requests import Request

from fleet_rlm.api.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidRequestError,
    decode_token,
    encode_token,
    page,
    page_params,
)


def request(**query: str) -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/sessions",
        "query_string": urlencode(query).encode(),
        "headers": [],
    }
    return Request(scope)


def test_limits_match_protocol() -> None:
    assert (DEFAULT_LIMIT, MAX_LIMIT) == (20, 100)


@pytest.mark.parametrize("last_id", [1, 7, 20, 99_999, 2**62])
def test_token_round_trips(last_id: int) -> None:
    assert decode_token(encode_token(last_id)) == last_id


def test_token_is_url_safe_without_padding() -> None:
    for last_id in range(1, 300):
        assert re.fullmatch(r"[A-Za-z0-9_-]+", encode_token(last_id))


@pytest.mark.parametrize(
    "token",
    ["!!!", "abc", "aWQ6", "Zm9vOjE", "aWQ6eA", "ü", "a"],
    ids=["symbols", "not-a-token", "empty-id", "wrong-prefix", "id-not-int", "non-ascii", "short"],
)
def test_foreign_token_is_invalid_request(token: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_token(token)
    assert (caught.value.status, caught.value.code) == (422, "invalid_request")


def test_default_params() -> None:
    assert page_params(request()) == (DEFAULT_LIMIT, None)


@pytest.mark.parametrize("limit", ["1", "20", "100"])
def test_limit_in_range(limit: str) -> None:
    assert page_params(request(limit=limit)) == (int(limit), None)


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", ""])
def test_limit_out_of_range_or_not_an_integer_is_invalid_request(limit: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        page_params(request(limit=limit))
    assert caught.value.status == 422


def test_page_token_param_gives_the_last_id() -> None:
    assert page_params(request(limit="5", page_token=encode_token(42))) == (5, 42)


def test_empty_page_token_means_first_page() -> None:
    assert page_params(request(page_token="")) == (DEFAULT_LIMIT, None)


def test_garbage_page_token_param_is_invalid_request() -> None:
    with pytest.raises(InvalidRequestError):
        page_params(request(page_token="garbage!"))


def _rows(n: int) -> tuple[list[dict], list[int]]:
    ids = [10 * (i + 1) for i in range(n)]
    return [{"n": i} for i in ids], ids


def test_page_with_an_extra_row_has_a_token_for_its_last_item() -> None:
    items, ids = _rows(4)
    body = page(items, ids, 3)
    assert body["items"] == items[:3]
    assert decode_token(body["next_page_token"]) == ids[2]


@pytest.mark.parametrize("n", [0, 1, 3], ids=["empty", "fewer", "exactly-limit"])
def test_last_page_has_no_token(n: int) -> None:
    items, ids = _rows(n)
    assert page(items, ids, 3) == {"items": items, "next_page_token": None}
