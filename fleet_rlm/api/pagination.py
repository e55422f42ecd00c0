"""``?limit=`` and ``?page_token=`` for the paginated lists of PROTOCOL.md.

A page token is the opaque, url-safe encoding of the last row id of the previous page.
"""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request

from fleet_rlm.errors import FleetError

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class InvalidRequestError(FleetError):
    code = "invalid_request"
    status = 422


def encode_token(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, value = raw.partition(":")
        last_id = int(value)
        if prefix != "id" or not 0 <= last_id < 2**63:
            raise ValueError(raw)
        return last_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequestError(
            "page_token is not one this server issued; start again without it"
        ) from None


def page_params(request: Request) -> tuple[int, int | None]:
    raw_limit = request.query_params.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError:
        raise InvalidRequestError(f"limit must be an integer 1 to {MAX_LIMIT}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be 1 to {MAX_LIMIT}; got {limit}")
    token = request.query_params.get("page_token")
    return limit, decode_token(token) if token else None


def page(items: list[dict], ids: list[int], limit: int) -> dict:
    """``items`` fetched with ``limit + 1`` rows; the extra row says whether more follow."""
    more = len(items) > limit
    items = items[:limit]
    return {
        "items": items,
        "next_page_token": encode_token(ids[limit - 1]) if more else None,
    }
