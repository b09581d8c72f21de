"""The hub's small HTTP/1.1 layer: parsing and routing, without sockets."""

from __future__ import annotations

import asyncio

import pytest

from hub.http import HttpError, Request, Response, Router, parse_head


def test_parse_head_reads_method_path_query_and_headers() -> None:
    """Request line, query string and case-folded headers are parsed."""
    head = (
        b"GET /api/captures?coop=3&label=healthy HTTP/1.1\r\n"
        b"Host: hub\r\nAuthorization: Bearer fet_x\r\n\r\n"
    )
    request = parse_head(head, "peer")
    assert (request.method, request.path) == ("GET", "/api/captures")
    assert request.query == {"coop": "3", "label": "healthy"}
    assert request.headers["authorization"] == "Bearer fet_x"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    ],
)
def test_malformed_requests_are_refused_with_a_status(head: bytes, status: int) -> None:
    """Broken request lines, versions, headers and chunked bodies get 4xx/5xx."""
    with pytest.raises(HttpError) as refused:
        parse_head(head, "peer")
    assert refused.value.status == status


def test_router_matches_params_and_reports_405_and_404() -> None:
    """Path parameters reach the handler; wrong methods and paths are explained."""

    async def handler(request: Request) -> Response:
        return Response(body=request.params["capture_id"].encode())

    router = Router()
    router.add("GET", "/api/captures/{capture_id}", handler)

    def call(method: str, path: str) -> Response:
        request = parse_head(f"{method} {path} HTTP/1.1\r\n\r\n".encode(), "peer")
        return asyncio.run(router.dispatch(request))

    assert call("GET", "/api/captures/17").body == b"17"
    assert call("HEAD", "/api/captures/17").status == 200
    assert call("POST", "/api/captures/17").status == 405
    assert call("GET", "/api/nothing").status == 404
