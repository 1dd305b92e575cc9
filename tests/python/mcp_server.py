"""A small MCP server on the official Python SDK (`mcp` 2.x, `MCPServer`) for
tests/mcp_client.rs and tests/graphs.rs: tools `add(a: int, b: int)`, `echo(text)`, `big(n)`
(n bytes of text), `sleep(seconds, pid_file)`, `calls()` (how many times `add` and `echo`
ran: a refused call must not reach them) and `last_key()` (the idempotency key in the `_meta`
of the last `add` call).

Usage: mcp_server.py http PORT TOKEN   Streamable HTTP at http://127.0.0.1:PORT/mcp; every
                                       request must carry `Authorization: Bearer TOKEN`
       mcp_server.py stdio             over stdin/stdout
"""

import os

import anyio
import sys

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("shoal-test-tools")
CALLS = {"n": 0, "key": ""}
KEY = "io.shoal/idempotency-key"


def idempotency_key(ctx: Context) -> str:
    meta = ctx.request_context.meta
    if meta is None:
        return ""
    if isinstance(meta, dict):
        return str(meta.get(KEY, ""))
    return str((getattr(meta, "model_extra", None) or {}).get(KEY, getattr(meta, KEY, "")))


@server.tool()
def add(a: int, b: int, ctx: Context) -> int:
    """Adds two integers."""
    CALLS["n"] += 1
    CALLS["key"] = idempotency_key(ctx)
    return a + b


@server.tool()
def echo(text: str) -> dict:
    """Returns the text, what the process's environment holds (names only), and its parent's pid."""
    CALLS["n"] += 1
    return {"text": text, "env": sorted(os.environ), "ppid": os.getppid()}


@server.tool()
def big(n: int) -> str:
    """n bytes of text."""
    return "x" * n


@server.tool()
async def sleep(seconds: float, pid_file: str) -> str:
    """Writes the server's process id to pid_file, then sleeps."""
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    await anyio.sleep(seconds)
    return "slept"


@server.tool()
def calls() -> int:
    """How many times add and echo ran."""
    return CALLS["n"]


@server.tool()
def last_key() -> str:
    """The idempotency key of the last add call."""
    return CALLS["key"]


def bearer_only(app, token):
    """An ASGI wrapper answering 401 to a request without the right bearer token."""
    want = f"Bearer {token}".encode()

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and dict(scope.get("headers", [])).get(b"authorization") != want:
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"wrong or missing token"})
            return
        await app(scope, receive, send)

    return guarded


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        import uvicorn

        port, token = int(sys.argv[2]), sys.argv[3]
        app = server.streamable_http_app(host="127.0.0.1")
        uvicorn.run(bearer_only(app, token), host="127.0.0.1", port=port, log_level="warning")
