"""The agent's routing and error plumbing (agent-api.md §2.4, §2.5)."""

from __future__ import annotations

import uuid

from agentconn.agent.api.router import (
    ApiError,
    RequestContext,
    Router,
    decode_body,
    json_ok,
    query_params,
)
from agentconn.proto.files import LSRequest


def _router() -> Router:
    r = Router()

    async def hello(req, ctx):  # type: ignore[no-untyped-def]
        return json_ok({"message": "Hello from the agent!"})

    async def chat(req, ctx: RequestContext):  # type: ignore[no-untyped-def]
        return json_ok({"chat": str(ctx.chat_id), "anc": [str(a) for a in ctx.ancestor_chat_ids]})

    async def boom(req, ctx, id):  # type: ignore[no-untyped-def]
        if id == "teapot":
            raise ApiError(418, "I'm a teapot.", "short and stout")
        raise RuntimeError("kaboom")

    async def ls(req, ctx):  # type: ignore[no-untyped-def]
        body = await decode_body(req, LSRequest)
        return json_ok(body)

    async def rf(req, ctx):  # type: ignore[no-untyped-def]
        q = query_params(req, "ReadFile")
        return json_ok({"path": q["path"], "offset": q["offset"]})

    r.add("GET", "/", hello)
    r.add("GET", "/chat", chat)
    r.add("POST", "/things/{id}/boom", boom)
    r.add("POST", "/api/v0/list-directory", ls)
    r.add("GET", "/api/v0/read-file", rf)
    return r


async def test_greeting_404_405(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(_router())
    r = await api.call("GET", "/")
    assert (r.status, r.body) == (200, b'{"message":"Hello from the agent!"}\n')
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    r = await api.call("GET", "/nope")
    assert (r.status, r.body) == (404, b"404 page not found\n")
    r = await api.call("DELETE", "/")
    assert r.status == 405


async def test_errors_become_response_bodies(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(_router())
    r = await api.call("POST", "/things/teapot/boom")
    assert r.status == 418 and r.json() == {"message": "I'm a teapot.", "detail": "short and stout"}
    r = await api.call("POST", "/things/x/boom")
    assert r.status == 500 and "kaboom" in r.json()["detail"]
    # The server keeps serving on the same connection after errors.
    assert (await api.call("GET", "/")).status == 200


async def test_body_and_query_validation(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(_router())
    r = await api.call("POST", "/api/v0/list-directory", body=b"")
    assert r.status == 400 and r.json()["message"] == "Request body must be valid JSON."
    r = await api.call("POST", "/api/v0/list-directory", body={"path": "notalist"})
    assert r.status == 400 and r.json()["validations"][0]["field"] == "path"
    r = await api.call("POST", "/api/v0/list-directory", body={"path": ["a"], "relativity": "root"})
    assert r.status == 200 and r.json()["path"] == ["a"]
    r = await api.call("GET", "/api/v0/read-file")
    assert r.status == 400
    body = r.json()
    assert body["message"] == "Query parameters have invalid values."
    assert '"path" is required' in body["validations"][0]["detail"]
    r = await api.call("GET", "/api/v0/read-file?path=/a%20b%26c%3F%23%25&offset=-1")
    assert r.status == 400 and "value is negative" in r.json()["validations"][0]["detail"]
    r = await api.call("GET", "/api/v0/read-file?path=/a%20b%26c%3F%23%25&offset=2")
    assert r.json() == {"path": "/a b&c?#%", "offset": 2}
    r = await api.call("GET", "/api/v0/read-file?path=/x&bogus=1")
    assert r.status == 400


async def test_chat_context(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(_router())
    chat, anc = uuid.uuid4(), uuid.uuid4()
    r = await api.call("GET", "/chat", headers={
        "Coder-Chat-Id": str(chat), "Coder-Ancestor-Chat-Ids": f'["{anc}", "junk", 3]'})
    assert r.json() == {"chat": str(chat), "anc": [str(anc)]}
    r = await api.call("GET", "/chat", headers={"Coder-Chat-Id": "not-a-uuid"})
    assert r.json() == {"chat": "None", "anc": []}
