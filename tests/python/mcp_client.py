"""Drives Shoal's MCP server (`/mcp`) with the official Python MCP SDK (`mcp`), as an MCP
client application would: tools listed and called with an API key, over both the
2026-07-28 per-request protocol and the older initialize handshake; plus the raw HTTP
rules (401 with the resource-metadata challenge, the metadata document, 403 for a
foreign Origin).

Usage: mcp_client.py GATEWAY ADMIN_KEY LIMITED_KEY KNOWLEDGE_BASE
  LIMITED_KEY may use only the `echo` model. The gateway serves `echo` (builtin://echo)
  and `minilm`, the knowledge base holds the document `lighthouse`, the graph `tiny`
  (input `word`, output `loud`) is registered, and so is the prompt template `review`
  ("Review this {{ language }} code:\n{{ code }}", `code` required, `language` optional,
  described "Reviews code").
Prints one line per check; exits non-zero on the first failure.
"""

import asyncio
import json
import sys
import urllib.error
import urllib.request

try:
    import httpx2
    from mcp import Client, MCPError
    from mcp.client.streamable_http import streamable_http_client
except ImportError as e:  # the Rust test checks this first, with the install command
    print(f"FAIL: the Python MCP SDK is not importable ({e}); install it: python3 -m pip install mcp==2.3.0")
    sys.exit(3)

GW, ADMIN, LIMITED, KB = sys.argv[1:5]
MCP = f"{GW}/mcp"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}},
}


def check(cond, what, detail=""):
    if not cond:
        print(f"FAIL: {what} {detail}")
        sys.exit(1)
    print(f"ok: {what}")


def http(method, url, body=None, headers=None):
    """(status, headers, body text) of a plain HTTP request, errors included."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def post_mcp(key=None, origin=None):
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if origin is not None:
        headers["Origin"] = origin
    return http("POST", MCP, INIT, headers)


def raw_http_rules():
    status, headers, _ = post_mcp()
    challenge = headers.get("WWW-Authenticate", "")
    check(status == 401, "no key: 401", f"got {status}")
    metadata_url = f"{GW}/.well-known/oauth-protected-resource"
    check(f'resource_metadata="{metadata_url}"' in challenge, "the 401 names the resource metadata", challenge)
    status, headers, _ = post_mcp(key="sk-not-a-key")
    check(status == 401 and 'error="invalid_token"' in headers.get("WWW-Authenticate", ""), "a wrong key: 401 invalid_token")
    status, _, text = http("GET", metadata_url)
    check(status == 200, "the metadata document is served without a key", f"got {status}: {text}")
    doc = json.loads(text)
    check(doc.get("resource") == MCP, "metadata: resource is the MCP endpoint", doc)
    check(doc.get("bearer_methods_supported") == ["header"], "metadata: bearer tokens in the header", doc)
    status, _, text = post_mcp(key=ADMIN, origin="http://evil.example")
    check(status == 403, "a foreign Origin: 403", f"got {status}: {text}")
    status, _, text = post_mcp(key=ADMIN, origin="http://attacker.example:" + GW.rsplit(":", 1)[1])
    check(status == 403, "a foreign Origin on the gateway's port: 403", f"got {status}: {text}")
    port = GW.rsplit(":", 1)[1]
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        status, _, text = post_mcp(key=ADMIN, origin=origin)
        check(status == 200 and '"serverInfo"' in text, f"this gateway's own Origin ({origin}) is served", f"got {status}: {text}")
    status, _, text = post_mcp(key=ADMIN)
    check(status == 200 and '"protocolVersion"' in text, "no Origin (not a browser): served", f"got {status}: {text}")


def client(key, mode):
    http_client = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30, read=300)
    )
    return Client(streamable_http_client(MCP, http_client=http_client), mode=mode)


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def admin_session(mode):
    async with client(ADMIN, mode) as c:
        print(f"-- admin key, mode={mode}, protocol {c.protocol_version}")
        listed = await c.list_tools(cache_mode="refresh")
        tools = {t.name: t for t in listed.tools}
        for name in ("list_models", "chat", "recall", "graph_tiny"):
            check(name in tools, f"tools/list has {name}", sorted(tools))
        schema = tools["graph_tiny"].input_schema
        check(schema.get("properties", {}).get("word", {}).get("type") == "string", "graph_tiny's schema: word is a string", schema)
        check(schema.get("required") == ["word"], "graph_tiny's schema: word is required", schema)

        r = await c.call_tool("recall", {"knowledge_base": KB, "query": "Who designed the Harbor Lighthouse?", "top_k": 3})
        check(not r.is_error, "recall answers", text_of(r))
        hits = (r.structured_content or {}).get("hits", [])
        check(hits and hits[0]["document_id"] == "lighthouse", "recall: the lighthouse document first", r.structured_content)
        check(isinstance(hits[0].get("score"), (int, float)) and "Margaret Olsen" in hits[0]["text"], "recall: a hit has its text and score", hits[0])
        check("Margaret Olsen" in text_of(r), "recall: the text content carries the passage", text_of(r))

        r = await c.call_tool("graph_tiny", {"word": "hello"})
        check(not r.is_error, "graph_tiny runs", text_of(r))
        check((r.structured_content or {}).get("outputs") == {"loud": "HELLO"}, "graph_tiny returns its outputs", r.structured_content)

        r = await c.call_tool("list_models", {})
        ids = sorted(m["id"] for m in (r.structured_content or {}).get("models", []))
        check(not r.is_error and ids == ["echo", "minilm"], "list_models lists the deployments", ids)

        r = await c.call_tool("chat", {"model": "echo", "prompt": "ping over MCP", "max_tokens": 16})
        check(not r.is_error and "ping over MCP" in text_of(r), "chat answers with the echo model", text_of(r))
        r = await c.call_tool("chat", {"model": "echo", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "two turns"}]})
        check(not r.is_error and "two turns" in text_of(r), "chat takes messages", text_of(r))

        # Arguments are checked before anything runs: tool errors that say what is wrong.
        bad = [
            ("graph_tiny", {}, "missing required input"),
            ("graph_tiny", {"word": 5}, "type mismatch"),
            ("graph_tiny", {"word": "x", "other": 1}, "has no input"),
            ("recall", {"query": "x"}, "knowledge_base"),
            ("recall", {"knowledge_base": KB, "query": "x", "top_k": "many"}, "invalid type"),
            ("recall", {"knowledge_base": KB, "query": "x", "mode": "fuzzy"}, "unknown variant"),
            ("recall", {"knowledge_base": "no-such-kb", "query": "x"}, "no-such-kb"),
            ("chat", {"model": "echo"}, "give messages"),
            ("chat", {"model": "echo", "prompt": "x", "max_tokens": 0}, "max_tokens"),
            ("chat", {"model": "echo", "prompt": "x", "temperature": 9}, "temperature"),
            ("chat", {"model": "echo", "messages": [{"role": "robot", "content": "x"}]}, "unknown message role"),
            ("chat", {"model": "no-such-model", "prompt": "x"}, "no-such-model"),
            ("list_models", {"x": 1}, "takes none"),
        ]
        for name, args, expect in bad:
            r = await c.call_tool(name, args)
            check(r.is_error and expect in text_of(r), f"{name}({json.dumps(args)}) is refused: {expect}", text_of(r))
        try:
            await c.call_tool("no_such_tool", {})
            check(False, "an unknown tool is a protocol error")
        except MCPError as e:
            check("no_such_tool" in str(e), "an unknown tool is a protocol error", str(e))


async def graph_applied_later():
    async with client(ADMIN, "auto") as c:
        before = {t.name for t in (await c.list_tools(cache_mode="refresh")).tools}
        check("graph_later" not in before, "graph_later is not there yet")
        yaml = 'name: later\ninputs: {n: {type: integer, default: 2}}\nsteps:\n  - {id: t, kind: template, template: "n={{ inputs.n }}"}\noutputs: {text: "${steps.t.text}"}\n'
        req = urllib.request.Request(f"{GW}/v1/graphs", data=yaml.encode(), method="POST")
        req.add_header("Authorization", f"Bearer {ADMIN}")
        req.add_header("Content-Type", "application/yaml")
        with urllib.request.urlopen(req, timeout=60) as r:
            check(r.status in (200, 201), "graph later applied over HTTP")
        tools = {t.name: t for t in (await c.list_tools(cache_mode="refresh")).tools}
        check("graph_later" in tools, "graph_later appears without a restart", sorted(tools))
        check(tools["graph_later"].input_schema["properties"]["n"] == {"type": "integer", "default": 2}, "graph_later's schema", tools["graph_later"].input_schema)
        r = await c.call_tool("graph_later", {})
        check((r.structured_content or {}).get("outputs") == {"text": "n=2"}, "graph_later runs with its default", r.structured_content)


async def prompts():
    async with client(LIMITED, "auto") as c:
        print("-- prompts (any key may read them)")
        listed = {p.name: p for p in (await c.list_prompts(cache_mode="refresh")).prompts}
        check("review" in listed, "prompts/list has the prompt template review", sorted(listed))
        args = {a.name: a.required for a in listed["review"].arguments or []}
        check(args == {"code": True, "language": False}, "review's arguments and which are required", args)
        check(listed["review"].description == "Reviews code", "review's description", listed["review"].description)
        r = await c.get_prompt("review", {"code": "fn main() {}", "language": "Rust"})
        m = r.messages[0]
        check(len(r.messages) == 1 and m.role == "user", "prompts/get: one user message", r.messages)
        check(m.content.text == "Review this Rust code:\nfn main() {}", "prompts/get renders the arguments", m.content.text)
        r = await c.get_prompt("review", {"code": "x = 1"})
        check(r.messages[0].content.text == "Review this  code:\nx = 1", "an optional argument may be left out", r.messages[0].content.text)
        for args, expect in (({}, "missing argument 'code'"), ({"code": "x", "tone": "kind"}, "takes no argument 'tone'")):
            try:
                await c.get_prompt("review", args)
                check(False, f"prompts/get with {args} is refused")
            except MCPError as e:
                check(expect in str(e), f"prompts/get with {args} is refused: {expect}", str(e))
        try:
            await c.get_prompt("no-such-prompt", {})
            check(False, "an unknown prompt is refused")
        except MCPError as e:
            check("no prompt named 'no-such-prompt'" in str(e), "an unknown prompt is refused", str(e))


async def limited_key():
    async with client(LIMITED, "auto") as c:
        print("-- a key limited to the model echo")
        r = await c.call_tool("list_models", {})
        ids = [m["id"] for m in (r.structured_content or {}).get("models", [])]
        check(ids == ["echo"], "list_models lists only the key's models", ids)
        r = await c.call_tool("chat", {"model": "minilm", "prompt": "x"})
        check(r.is_error and "may not use the model 'minilm'" in text_of(r), "chat with another model is refused as over HTTP", text_of(r))
        r = await c.call_tool("chat", {"model": "echo", "prompt": "allowed"})
        check(not r.is_error and "allowed" in text_of(r), "chat with its model answers", text_of(r))


async def main():
    raw_http_rules()
    await admin_session("auto")
    await admin_session("legacy")
    await graph_applied_later()
    await prompts()
    await limited_key()
    print("all MCP checks passed")


asyncio.run(main())
