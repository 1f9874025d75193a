"""HttpServer over real loopback sockets, driven by raw bytes and by HttpClient."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from agentconn.web import HttpClient, RemoteProtocolError, Request, ServerResponse, json_response


async def _raw(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), read_timeout)
    finally:
        writer.close()


async def echo_info(request: Request) -> ServerResponse:
    body = await request.body()
    return json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "len": len(body),
            "agent": request.headers.get("USER-AGENT"),
        }
    )


async def test_query_and_path_decoding(start_server, client: HttpClient) -> None:
    s = await start_server(echo_info)
    resp = await client.request(
        "GET", "/a%20b/c?x=1&y=hello%20world&x=2&z=", host=s.host, port=s.port
    )
    info = await resp.json()
    assert resp.status == 200
    assert resp.headers["CONTENT-TYPE"] == "application/json"
    assert info == {
        "method": "GET",
        "path": "/a b/c",
        "query": {"x": "1", "y": "hello world", "z": ""},
        "len": 0,
        "agent": "agentconn",
    }


async def test_pipelined_requests_answered_in_order(start_server) -> None:
    s = await start_server(echo_info)
    req = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = await _raw(s.port, req)
    assert out.count(b"HTTP/1.1 200") == 2
    assert out.index(b'"/one"') < out.index(b'"/two"')
    assert s.accepted[0] == 1


async def test_garbage_gets_400_and_close(start_server) -> None:
    s = await start_server(echo_info)
    out = await _raw(s.port, b"\x00\x01 this is not http\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    body = orjson.loads(out.split(b"\r\n\r\n", 1)[1])
    assert body["message"] == "Bad Request"
    assert body["detail"]


async def test_huge_headers_get_431(start_server) -> None:
    s = await start_server(echo_info)
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    out = await _raw(s.port, head)
    assert out.startswith(b"HTTP/1.1 431 ")


async def test_slow_loris_closed_at_header_deadline(start_server) -> None:
    s = await start_server(echo_info, header_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    loop = asyncio.get_running_loop()
    start = loop.time()
    writer.write(b"GET / HTTP/1.1\r\n")
    closed_after = None
    # One header byte every 0.1 s never completes the head; the deadline must not move.
    for _ in range(30):
        try:
            writer.write(b"X")
            await writer.drain()
        except ConnectionError:
            break
        try:
            data = await asyncio.wait_for(reader.read(100), 0.1)
        except TimeoutError:
            continue
        assert data == b""  # closed without a reply
        closed_after = loop.time() - start
        break
    writer.close()
    assert closed_after is not None and closed_after < 1.5


async def test_idle_keep_alive_connection_closed(start_server) -> None:
    s = await start_server(echo_info, keep_alive_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()


async def test_handler_exception_is_500_json_and_server_keeps_serving(
    start_server, client: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: Request) -> object:
        if request.path == "/boom":
            raise ValueError("kaboom")
        return {"ok": True}

    s = await start_server(handler)
    with caplog.at_level(logging.ERROR, logger="agentconn.web.server"):
        resp = await client.request("GET", "/boom", host=s.host, port=s.port)
        assert resp.status == 500
        assert await resp.json() == {
            "message": "Internal Server Error",
            "detail": "ValueError: kaboom",
        }
    assert "kaboom" in caplog.text
    resp = await client.request("GET", "/fine", host=s.host, port=s.port)
    assert resp.status == 200 and await resp.json() == {"ok": True}


async def test_expect_100_continue(start_server) -> None:
    s = await start_server(echo_info)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    writer.write(
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    await writer.drain()
    line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert line.startswith(b"HTTP/1.1 100 ")
    writer.write(b"hello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = orjson.loads(await reader.readexactly(length))
    assert body["len"] == 5
    writer.close()


async def test_expect_100_not_sent_when_handler_ignores_body(start_server) -> None:
    async def handler(request: Request) -> ServerResponse:
        return ServerResponse(403, [], b"no")

    s = await start_server(handler)
    out = await _raw(
        s.port,
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 403 ")
    assert b"100 Continue" not in out


async def test_response_kinds(start_server, client: HttpClient) -> None:
    async def gen():  # type: ignore[no-untyped-def]
        yield b"a"
        yield b"bc"

    async def handler(request: Request) -> object:
        return {"/b": b"bytes", "/s": "text", "/l": [1, 2], "/n": None}.get(request.path, gen())

    s = await start_server(handler)
    for path, status, body in [
        ("/b", 200, b"bytes"),
        ("/s", 200, b"text"),
        ("/l", 200, b"[1,2]"),
        ("/n", 204, b""),
        ("/g", 200, b"abc"),
    ]:
        resp = await client.request("GET", path, host=s.host, port=s.port)
        assert (resp.status, await resp.read()) == (status, body), path
    resp = await client.request("GET", "/g", host=s.host, port=s.port)
    assert resp.headers["transfer-encoding"] == "chunked"
    await resp.read()
    assert s.accepted[0] == 1


async def test_streaming_response_failure_closes_and_server_keeps_serving(
    start_server, client: HttpClient
) -> None:
    async def broken():  # type: ignore[no-untyped-def]
        yield b"partial"
        raise RuntimeError("stream broke")

    async def handler(request: Request) -> object:
        return broken() if request.path == "/broken" else b"ok"

    s = await start_server(handler)
    resp = await client.request("GET", "/broken", host=s.host, port=s.port)
    assert resp.status == 200
    with pytest.raises(RemoteProtocolError):
        await resp.read()
    resp = await client.request("GET", "/", host=s.host, port=s.port)
    assert await resp.read() == b"ok"


async def test_unread_small_body_is_drained_for_keep_alive(
    start_server, client: HttpClient
) -> None:
    async def handler(request: Request) -> bytes:
        return b"ignored your body"

    s = await start_server(handler)
    for _ in range(2):
        resp = await client.request("POST", "/", host=s.host, port=s.port, body=b"x" * 10_000)
        assert await resp.read() == b"ignored your body"
    assert s.accepted[0] == 1


async def test_head_request_has_no_body(start_server, client: HttpClient) -> None:
    async def handler(request: Request) -> bytes:
        return b"12345"

    s = await start_server(handler)
    resp = await client.request("HEAD", "/", host=s.host, port=s.port)
    assert resp.headers["content-length"] == "5"
    assert await resp.read() == b""
    resp = await client.request("GET", "/", host=s.host, port=s.port)
    assert await resp.read() == b"12345"
    assert s.accepted[0] == 1


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info]


@pytest.mark.parametrize("target", [b"//[x", b"http://[::1/", b"/a?b=http://[::1"])
async def test_bad_request_target_gets_400(start_server, caplog, target: bytes) -> None:
    """urlsplit's ``ValueError: Invalid IPv6 URL`` is the client's fault: a 400, no traceback."""
    caplog.set_level(logging.DEBUG)
    s = await start_server(echo_info)
    out = await _raw(s.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    if target.startswith(b"/a?"):  # only the path and query are split: not an IPv6 netloc
        assert out.startswith(b"HTTP/1.1 200 ")
        return
    assert out.startswith(b"HTTP/1.1 400 ")
    body = orjson.loads(out.split(b"\r\n\r\n", 1)[1])
    assert body["message"] == "Bad Request"
    assert body["detail"].startswith("invalid request target: ")
    assert s.server.bad_requests == 1
    assert not _tracebacks(caplog)


async def test_deeply_nested_json_body_is_400(start_server, client: HttpClient, caplog) -> None:
    async def handler(request: Request) -> ServerResponse:
        return json_response({"type": type(await request.json()).__name__})

    s = await start_server(handler)
    for depth, status in ((1000, 200), (3000, 400), (100_000, 400)):
        body = b"[" * depth + b"]" * depth
        resp = await client.request("POST", "/", host=s.host, port=s.port, body=body)
        assert resp.status == status, depth
        await resp.read()
    assert not _tracebacks(caplog)
