"""Checks `code-mode mcp --http` as a service: credentials, Origin, the session cap and idle
expiry. Each mode prints one JSON object; the Rust tests assert on it.

    http_service.py probe <url> [--token T] [--ca PEM] [--header NAME:VALUE]... [--session ID] [--close]
        one `initialize` (or, with --session, `tools/list`) with these headers: its status,
        challenge, session id and body; --close ends the session it opened (DELETE)
    http_service.py sdk <url> [--token T] [--ca PEM]
        the official SDK lists the tools and runs a cell; an error is reported, not raised
    http_service.py abandon <url> <n> [--token T]
        opens n sessions, runs a cell in each (it stores a value) and leaves without DELETE
    http_service.py gone <url> <ids.json> [--token T]
        the status a request naming each of those sessions gets now
    http_service.py long <url> <ms> [--token T]
        an SDK session whose one `exec` runs for <ms> (longer than the idle timeout), then
        a second `exec` in the same session
    http_service.py cap <url> [--token T]
        with --max-sessions 2: two SDK sessions, a third refused, the first two still
        working, then a place freed by closing one
    http_service.py begin <url> [--token T]
        a raw session whose cell stores a value, yields, then calls the server's `slow`
        tool (after its `exec` answered): the session id and that first answer
    http_service.py resume <url> --session ID [--token T]
        in that session (on a restarted server): `wait` on its cell, then a new `exec`
        that reads the stored value
    http_service.py open <url> <value> [--token T]
        a raw session whose cell stores <value> as "k": the session id
    http_service.py again <url> --session ID [--token T]
        one `exec` in that session that reads "k": its texts, or the status and body
    http_service.py cut <url> [--token T]
        `wait`s whose connections break before their answers' first bytes, sent again
    http_service.py request <url> <METHOD> --session ID [--token T] [--header NAME:VALUE]...
        a bare GET (an event stream) or DELETE naming that session: its status and body
    http_service.py hop <holder-url> <other-url> <n>
        a raw session opened on the first replica, then n `exec`s of `text(1)` to it and n
        to the second (which forwards them), alternated, each over a kept connection: the
        latency figures of each, in ms
    http_service.py spread <url> [--token T]
        the official SDK with no connection kept alive (every request on a new one, as
        through a balancer with no affinity): a cell that yields, waited on to its end,
        then more calls in the session; each call's texts and how long it took
    http_service.py rolling <url> [--token T]
        the official SDK, every request on a new connection: the `begin` cell's first
        answer is printed as a line ({"exec": ...}); after a line on stdin (the test has
        replaced the replica meanwhile), `wait` on the cell and an `exec` reading the
        stored value, as `resume` prints them
    http_service.py broken <url> [--token T] [OTHER-TOKEN]
        a raw session; an `exec` whose cell answers after 800 ms, its connection closed
        once the stream's first event came (its `retry` noted); 200 ms later the stream
        resumed with `Last-Event-ID`: its status and the texts of the result it gave (with
        OTHER-TOKEN, first resumed by that principal: its status and body)
    http_service.py fleet <url> <n> [--token T]
        n clients of the official SDK at once, every request on a new connection, each
        with a cell that stores a value, yields, calls the server's `count` tool and
        goes on; "started" is printed as a line once every cell runs, then each client
        waits on its cell to its end, sending a `wait` that failed (its replica died
        under it) again: each client's texts, its longest request (ms, a `wait` from its
        first try to its answer), the failures of the requests it sent again and any
        error
"""

import asyncio
import json
import logging
import ssl
import subprocess
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "http_service.py", "version": "1"},
    },
}


class Warnings(logging.Handler):
    """What the SDK logs at warning level or above (e.g. a failed session termination)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = []

    def emit(self, record):
        self.seen.append(record.getMessage())


WARNINGS = Warnings()
logging.getLogger("mcp").addHandler(WARNINGS)


def options(args):
    """--token, --ca, --header and --session from the argument list."""
    parsed = {"token": None, "ca": None, "headers": {}, "session": None, "close": False, "rest": []}
    i = 0
    while i < len(args):
        if args[i] == "--token":
            parsed["token"] = args[i + 1]
            i += 2
        elif args[i] == "--ca":
            parsed["ca"] = args[i + 1]
            i += 2
        elif args[i] == "--header":
            name, value = args[i + 1].split(":", 1)
            parsed["headers"][name] = value
            i += 2
        elif args[i] == "--close":
            parsed["close"] = True
            i += 1
        elif args[i] == "--session":
            parsed["session"] = args[i + 1]
            i += 2
        else:
            parsed["rest"].append(args[i])
            i += 1
    return parsed


def http_client(opts, **extra):
    headers = dict(extra.pop("headers", {}))
    if opts["token"]:
        headers["Authorization"] = f"Bearer {opts['token']}"
    verify = ssl.create_default_context(cafile=opts["ca"]) if opts["ca"] else True
    return httpx2.AsyncClient(
        headers=headers, verify=verify, timeout=httpx2.Timeout(30, read=120), **extra
    )


def sse_message(text):
    """The JSON-RPC message of an SSE (or plain JSON) response body."""
    for line in text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            return json.loads(line[5:])
    try:
        return json.loads(text)
    except ValueError:
        return None


async def probe(url, opts):
    async with http_client(opts) as client:
        headers = {**ACCEPT, **opts["headers"]}
        if opts["session"]:
            headers["Mcp-Session-Id"] = opts["session"]
            body = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        else:
            body = INITIALIZE
        response = await client.post(url, headers=headers, json=body)
        text = (await response.aread()).decode(errors="replace")
        closed = None
        if opts["close"] and response.headers.get("mcp-session-id"):
            deleted = await client.delete(
                url, headers={"Mcp-Session-Id": response.headers["mcp-session-id"]}
            )
            closed = deleted.status_code
        return {
            "closed": closed,
            "status": response.status_code,
            "www_authenticate": response.headers.get("www-authenticate"),
            "retry_after": response.headers.get("retry-after"),
            "session_id": response.headers.get("mcp-session-id"),
            "body": text[:2000],
        }


async def sdk(url, opts):
    async with http_client(opts) as http:
        try:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                listed = await client.list_tools()
                ran = await client.call_tool("exec", {"code": "text(6 * 7)"})
                return {
                    "tools": sorted(tool.name for tool in listed.tools),
                    "exec": [block.text for block in ran.content if block.type == "text"],
                    "warnings": WARNINGS.seen,
                }
        except BaseException as error:  # an ExceptionGroup from the SDK's task group
            return {"error": describe(error), "warnings": WARNINGS.seen}


APPROVAL_CELL = """
try { text("sent " + JSON.stringify(await tools.send({ to: "a" }))); }
catch (error) { text("failed " + String(error)); }"""


def approvals_command(code_mode, state, *args):
    """`code-mode approvals ...` against the server's state directory: its JSON lines."""
    done = subprocess.run(
        [code_mode, "approvals", *args, "--state-dir", state],
        capture_output=True, text=True, check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


async def approval(url, opts):
    """With the official SDK: two cells whose `send` waits on a person; the first approved
    with an edited input, the second denied, both from `code-mode approvals` (the
    operator's command line) while the client waits. What each `exec` and `wait` said."""
    code_mode, state = opts["rest"]
    seen = {}
    async with http_client(opts) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            for n, decision in enumerate(["approve", "deny"]):
                started = await client.call_tool("exec", {"code": APPROVAL_CELL})
                listed = approvals_command(code_mode, state, "list")
                seen[f"exec{n}"] = [block.text for block in started.content if block.type == "text"]
                seen[f"listed{n}"] = listed
                pending = [entry for entry in listed if entry["front"] == "mcp"]
                if decision == "approve":
                    approvals_command(code_mode, state, "approve", pending[0]["approval"], "--input", '{"to":"b"}')
                else:
                    approvals_command(code_mode, state, "deny", pending[0]["approval"], "--message", "not now")
                cell = "1" if n == 0 else "2"
                texts = []
                deadline = asyncio.get_running_loop().time() + 60
                while asyncio.get_running_loop().time() < deadline:
                    waited = await client.call_tool("wait", {"cell_id": cell, "yield_time_ms": 10000})
                    texts = [block.text for block in waited.content if block.type == "text"]
                    if any(text.startswith("Script completed") for text in texts):
                        break
                    # Still waiting: the server finds the decision within a moment.
                    await asyncio.sleep(0.05)
                seen[f"wait{n}"] = texts
    return seen


async def elicited(url, opts):
    """With the official SDK as a client that can ask its user (an elicitation callback):
    the first call is approved with an edited input, the second denied with a message,
    each by the user's answer to the server's question. What the user was asked, and what
    each cell's `wait` said."""
    seen = {"asked": []}
    answers = [
        {"approve": True, "input": '{"to":"b"}'},
        {"approve": False, "message": "not this one"},
    ]

    async def asked(context, params):
        from mcp_types import ElicitResult

        seen["asked"].append(params.message)
        return ElicitResult(action="accept", content=answers[len(seen["asked"]) - 1])

    async with http_client(opts) as http:
        async with Client(streamable_http_client(url, http_client=http), elicitation_callback=asked) as client:
            for n in range(2):
                await client.call_tool("exec", {"code": APPROVAL_CELL})
                texts = []
                deadline = asyncio.get_running_loop().time() + 60
                while asyncio.get_running_loop().time() < deadline:
                    waited = await client.call_tool("wait", {"cell_id": str(n + 1), "yield_time_ms": 10000})
                    texts = [block.text for block in waited.content if block.type == "text"]
                    if any(text.startswith("Script completed") for text in texts):
                        break
                    await asyncio.sleep(0.05)
                seen[f"wait{n}"] = texts
    return seen


def describe(error):
    """The innermost messages of an exception (group)."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}"


async def initialized(client, url):
    """A raw session: `initialize`, then `notifications/initialized`. Its id, and the
    headers its later requests carry."""
    response = await client.post(url, headers=ACCEPT, json=INITIALIZE)
    await response.aread()
    response.raise_for_status()
    session = response.headers["mcp-session-id"]
    headers = {**ACCEPT, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
    notified = await client.post(
        url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
    )
    await notified.aread()
    return session, headers


async def open_and_abandon(client, url):
    """initialize, initialized, one cell; no DELETE. Returns the session id."""
    session, headers = await initialized(client, url)
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "exec", "arguments": {"code": 'store("k", "x".repeat(1000)); text("ok")'}},
    }
    ran = await client.post(url, headers=headers, json=call)
    message = sse_message((await ran.aread()).decode())
    text = message["result"]["content"][0]["text"] if message and "result" in message else ""
    if not text.startswith("Script completed"):
        raise RuntimeError(f"the cell did not complete: {message}")
    return session


async def abandon(url, count, opts):
    limit = asyncio.Semaphore(8)
    async with http_client(opts, limits=httpx2.Limits(max_connections=8)) as client:

        async def one():
            async with limit:
                return await open_and_abandon(client, url)

        sessions = await asyncio.gather(*(one() for _ in range(count)))
    return {"sessions": sessions}


async def gone(url, ids, opts):
    statuses = {}
    async with http_client(opts) as client:
        for session in ids:
            headers = {**ACCEPT, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
            response = await client.post(
                url, headers=headers, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
            )
            await response.aread()
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
    return {"statuses": statuses}


async def long(url, ms, opts):
    cell = f'// @exec: {{"yield_time_ms": 60000}}\nstore("k", 1); await new Promise((r) => setTimeout(r, {ms})); text("slept")'
    async with http_client(opts) as http:
        try:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                slept = await client.call_tool("exec", {"code": cell})
                after = await client.call_tool("exec", {"code": 'text(load("k"))'})
                return {
                    "slept": [b.text for b in slept.content if b.type == "text"],
                    "after": [b.text for b in after.content if b.type == "text"],
                }
        except BaseException as error:
            return {"error": describe(error)}


async def cap(url, opts):
    seen = {}
    async with http_client(opts) as http_a, http_client(opts) as http_b:
        async with Client(streamable_http_client(url, http_client=http_a)) as first:
            await first.call_tool("exec", {"code": 'store("who", "first")'})
            async with Client(streamable_http_client(url, http_client=http_b)) as second:
                await second.call_tool("exec", {"code": 'store("who", "second")'})
                seen["third"] = await probe(url, opts)
                again = await first.call_tool("exec", {"code": 'text(load("who"))'})
                seen["first_after"] = [b.text for b in again.content if b.type == "text"]
                again = await second.call_tool("exec", {"code": 'text(load("who"))'})
                seen["second_after"] = [b.text for b in again.content if b.type == "text"]
            # The second client closed its session (DELETE): a place is free again.
            seen["fourth"] = await probe(url, opts)
    seen["warnings"] = WARNINGS.seen
    return seen


DURABLE_CELL = """// @exec: {"yield_time_ms": 500}
store("k", "v"); text("before");
await new Promise((resolve) => setTimeout(resolve, 700));
let slow;
try { slow = await tools.slow({}); } catch (error) { slow = "slow failed: " + error; }
text(slow);
await new Promise((resolve) => setTimeout(resolve, 200));
text("after " + load("k"));"""


async def call(client, session, number, name, arguments):
    """One raw `tools/call` in `session`: the texts of its result."""
    headers = {**ACCEPT, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
    body = {
        "jsonrpc": "2.0",
        "id": number,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    response = await client.post(URL[0], headers=headers, json=body)
    text = (await response.aread()).decode(errors="replace")
    message = sse_message(text)
    if response.status_code != 200 or message is None or "result" not in message:
        return {"status": response.status_code, "body": text[:2000]}
    return [block["text"] for block in message["result"]["content"] if block["type"] == "text"]


URL = [None]


async def begin(url, opts):
    URL[0] = url
    async with http_client(opts) as client:
        session, headers = await initialized(client, url)
        first = await call(client, session, 2, "exec", {"code": DURABLE_CELL})
        return {"session": session, "exec": first}


async def resume(url, opts):
    URL[0] = url
    session = opts["session"]
    async with http_client(opts) as client:
        waited = await call(client, session, 3, "wait", {"cell_id": "1", "yield_time_ms": 10000})
        after = await call(client, session, 4, "exec", {"code": 'text(load("k"))'})
        return {"wait": waited, "after": after}


async def again(url, opts):
    """One more exec on a session a server kept (after a rolling update, say)."""
    URL[0] = url
    session = opts["session"]
    async with http_client(opts) as client:
        after = await call(client, session, 5, "exec", {"code": 'text(load("k"))'})
        return {"after": after}


async def open_session(url, value, opts):
    async with http_client(opts) as client:
        session, headers = await initialized(client, url)
        URL[0] = url
        stored = await call(client, session, 2, "exec", {"code": f"store('k', {json.dumps(value)})"})
        return {"session": session, "exec": stored}


async def bare(url, method, opts):
    async with http_client(opts) as client:
        headers = {
            "Accept": "text/event-stream",
            "Mcp-Session-Id": opts["session"],
            "MCP-Protocol-Version": "2025-06-18",
            **opts["headers"],
        }
        response = await client.request(method, url, headers=headers)
        return {"status": response.status_code, "body": (await response.aread()).decode()}


SPREAD_CELL = """// @exec: {"yield_time_ms": 100}
store("k", "kept"); text("started");
await new Promise((resolve) => setTimeout(resolve, 600));
text("finished " + load("k"));"""


async def spread(url, opts):
    """Every request on a new connection: with replicas behind a round-robin balancer,
    most reach a replica that does not hold the session."""
    import time

    calls = []

    async def timed(client, name, arguments):
        started = time.monotonic()
        result = await client.call_tool(name, arguments)
        texts = [block.text for block in result.content if block.type == "text"]
        calls.append({"tool": name, "texts": texts, "ms": round((time.monotonic() - started) * 1000)})
        return texts

    limits = httpx2.Limits(max_keepalive_connections=0)
    async with http_client(opts, limits=limits) as http:
        try:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                first = await timed(client, "exec", {"code": SPREAD_CELL})
                cell = first[0].split("cell ID ", 1)[1].split()[0]
                for _ in range(10):
                    texts = await timed(client, "wait", {"cell_id": cell, "yield_time_ms": 200})
                    if any(text.startswith("finished") for text in texts):
                        break
                for n in range(4):
                    await timed(client, "exec", {"code": f"text(load('k') + ' {n}')"})
                return {"calls": calls, "warnings": WARNINGS.seen}
        except BaseException as error:
            return {"error": describe(error), "calls": calls, "warnings": WARNINGS.seen}


async def broken(url, opts):
    async with http_client(opts) as client:
        session, headers = await initialized(client, url)
    body = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": "exec",
            "arguments": {
                "code": '// @exec: {"yield_time_ms": 5000}\n'
                "await new Promise((resolve) => setTimeout(resolve, 800)); text('late');"
            },
        },
    }
    last = None
    async with http_client(opts) as client:
        async with client.stream("POST", url, headers=headers, json=body) as response:
            seen = b""
            async for chunk in response.aiter_bytes():
                seen += chunk
                if b"\n\n" in seen:
                    break
        retry = None
        for line in seen.decode().splitlines():
            if line.startswith("id:"):
                last = line[3:].strip()
            if line.startswith("retry:"):
                retry = int(line[6:].strip())
    # The connection is gone with its client; the stream is resumed before the cell
    # answers (the answer comes to the resumed stream as it is made).
    await asyncio.sleep(0.2)
    resume = {
        "Accept": "text/event-stream",
        "Mcp-Session-Id": session,
        "MCP-Protocol-Version": "2025-06-18",
        "Last-Event-ID": last,
    }
    other = None
    if opts["rest"]:
        # Another principal, knowing the session id and the event id, resumes first.
        async with http_client({**opts, "token": opts["rest"][0]}) as client:
            response = await client.get(url, headers=resume)
            other = {"status": response.status_code, "body": (await response.aread()).decode()[:500]}
    async with http_client(opts) as client:
        response = await client.get(url, headers=resume)
        text = (await response.aread()).decode(errors="replace")
        message = sse_message(text)
        texts = None
        if message and "result" in message:
            texts = [block["text"] for block in message["result"]["content"]]
        return {
            "last_event_id": last,
            "retry": retry,
            "status": response.status_code,
            "texts": texts,
            "body": text[:2000],
            "other": other,
        }


async def cut_wait(url, session, headers, cell, opts):
    """A `wait` whose connection is closed as soon as its answer's headers come, before
    any event is read (its client has no event id to resume with)."""
    body = {
        "jsonrpc": "2.0",
        "id": 100 + int(cell),
        "method": "tools/call",
        "params": {"name": "wait", "arguments": {"cell_id": cell, "yield_time_ms": 10000}},
    }
    async with http_client(opts, limits=httpx2.Limits(max_keepalive_connections=0)) as client:
        async with client.stream("POST", url, headers=headers, json=body) as response:
            assert response.status_code == 200, response.status_code


async def cut(url, opts):
    """Two cells, each observed by a `wait` whose connection breaks before its answer's
    first byte, then waited on again: the first is still running (its cut observation
    took output), the second ended while its cut observation watched it."""
    URL[0] = url
    async with http_client(opts) as client:
        session, headers = await initialized(client, url)
        sleep = "await new Promise((resolve) => setTimeout(resolve, %d));"
        running = await call(
            client, session, 2, "exec",
            {"code": '// @exec: {"yield_time_ms": 100}\ntext("begun");'
             + sleep % 600 + 'text("during");' + sleep % 1200 + 'text("late");'},
        )
        await cut_wait(url, session, headers, "1", opts)
        await asyncio.sleep(0.9)
        again_running = await call(client, session, 3, "wait", {"cell_id": "1", "yield_time_ms": 10000})
        ending = await call(
            client, session, 4, "exec",
            {"code": '// @exec: {"yield_time_ms": 100}\ntext("a");' + sleep % 300 + 'text("b");'},
        )
        await cut_wait(url, session, headers, "2", opts)
        await asyncio.sleep(0.8)
        again_ended = await call(client, session, 5, "wait", {"cell_id": "2", "yield_time_ms": 10000})
        return {
            "running": [running, again_running],
            "ended": [ending, again_ended],
        }


async def rolling(url, opts):
    """One SDK session across a rolling update the test makes between its two halves."""
    limits = httpx2.Limits(max_keepalive_connections=0)
    loop = asyncio.get_running_loop()

    async def texts(client, name, arguments):
        result = await client.call_tool(name, arguments)
        return [block.text for block in result.content if block.type == "text"]

    async with http_client(opts, limits=limits) as http:
        try:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                first = await texts(client, "exec", {"code": DURABLE_CELL})
                print(json.dumps({"exec": first}), flush=True)
                await loop.run_in_executor(None, sys.stdin.readline)
                waited = await texts(client, "wait", {"cell_id": "1", "yield_time_ms": 10000})
                after = await texts(client, "exec", {"code": 'text(load("k"))'})
                return {"wait": waited, "after": after, "warnings": WARNINGS.seen}
        except BaseException as error:
            return {"error": describe(error), "warnings": WARNINGS.seen}


FLEET_CELL = """// @exec: {"yield_time_ms": 100}
store("k", "v%d"); text("started %d");
await new Promise((resolve) => setTimeout(resolve, 300));
let got;
try { got = await tools.count({n: %d}); } catch (error) { got = "count failed: " + error; }
text(got);
await new Promise((resolve) => setTimeout(resolve, 1500));
text("end " + load("k"));"""


async def fleet(url, n, opts):
    """n SDK clients at once; the test kills and restarts a replica meanwhile."""
    import time

    limits = httpx2.Limits(max_keepalive_connections=0)
    running = [0]
    all_running = asyncio.Event()

    async def one(number):
        longest = [0]
        session = []
        cell = []

        async def remember(response):
            named = response.headers.get("mcp-session-id")
            if named and not session:
                session.append(named)

        async def texts(client, name, arguments):
            started = time.monotonic()
            result = await client.call_tool(name, arguments)
            longest[0] = max(longest[0], round((time.monotonic() - started) * 1000))
            return [block.text for block in result.content if block.type == "text"]

        seen, again = [], []
        deadline = time.monotonic() + 120
        counted = False
        try:
            async with http_client(opts, limits=limits, event_hooks={"response": [remember]}) as http:
                async with Client(streamable_http_client(url, http_client=http)) as client:
                    first = await texts(client, "exec", {"code": FLEET_CELL % (number, number, number)})
                    seen.extend(first)
                    running[0] += 1
                    counted = True
                    if running[0] == n:
                        all_running.set()
                    cell.append(first[0].split("cell ID ", 1)[1].split()[0])
                    first_try = None
                    while time.monotonic() < deadline:
                        first_try = first_try or time.monotonic()
                        try:
                            waited = await texts(
                                client, "wait", {"cell_id": cell[0], "yield_time_ms": 1000}
                            )
                        except (MCPError, httpx2.TransportError) as error:
                            # A request whose replica died under it fails (its stream is
                            # gone: 410 on resumption; or the connection closed before
                            # any answer); a client sends it again.
                            again.append(f"{type(error).__name__}: {error}")
                            continue
                        # The stall the client saw: from its first try to the answer.
                        stalled = round((time.monotonic() - first_try) * 1000)
                        longest[0] = max(longest[0], stalled)
                        first_try = None
                        seen.extend(waited)
                        if not waited or not waited[0].startswith("Script running"):
                            break
            return {"n": number, "texts": seen, "longest_ms": longest[0], "sent_again": again}
        except BaseException as error:
            if not counted:
                running[0] += 1
                if running[0] >= n:
                    all_running.set()
            described = describe(error)
            if not (session and cell and "Server disconnected" in described):
                return {"n": number, "texts": seen, "longest_ms": longest[0], "error": described}
            # The SDK gives up its whole client when a request's connection closes before
            # any answer (its replica died under it); an agent would go on with the
            # session: its `wait`s go on here over plain HTTP, under the same session id.
            again.append(described)
        URL[0] = url
        first_try = time.monotonic()
        async with http_client(opts, limits=limits) as raw:
            number_id = 1000
            while time.monotonic() < deadline:
                number_id += 1
                try:
                    waited = await call(
                        raw, session[0], number_id, "wait", {"cell_id": cell[0], "yield_time_ms": 1000}
                    )
                except httpx2.TransportError as error:
                    again.append(f"RemoteProtocolError: Server disconnected ({type(error).__name__})")
                    continue
                if isinstance(waited, dict):
                    return {"n": number, "texts": seen, "longest_ms": longest[0], "error": f"plain wait: {waited}"}
                longest[0] = max(longest[0], round((time.monotonic() - first_try) * 1000))
                first_try = time.monotonic()
                seen.extend(waited)
                if not waited or not waited[0].startswith("Script running"):
                    break
        return {"n": number, "texts": seen, "longest_ms": longest[0], "sent_again": again}

    async def announce():
        await all_running.wait()
        print("started", flush=True)

    results = await asyncio.gather(announce(), *(one(number) for number in range(n)))
    return {"clients": results[1:], "warnings": WARNINGS.seen}


async def hop(holder, other, n, opts):
    import statistics
    import time

    URL[0] = holder
    async with http_client(opts) as to_holder, http_client(opts) as to_other:
        session, _ = await initialized(to_holder, holder)
        times = {"holder": [], "forwarded": []}
        for i in range(n + 10):
            for name, client, url in (("holder", to_holder, holder), ("forwarded", to_other, other)):
                URL[0] = url
                started = time.perf_counter()
                texts = await call(client, session, 100 + i, "exec", {"code": "text(1)"})
                elapsed = (time.perf_counter() - started) * 1000
                if texts[-1:] != ["1"]:
                    return {"error": texts}
                if i >= 10:  # the first ten warm up
                    times[name].append(elapsed)

        def figures(values):
            values = sorted(values)
            return {
                "p50": round(statistics.median(values), 3),
                "p95": round(values[int(len(values) * 0.95) - 1], 3),
                "mean": round(statistics.fmean(values), 3),
            }

        return {name: figures(values) for name, values in times.items()}


def main():
    mode, url = sys.argv[1], sys.argv[2]
    opts = options(sys.argv[3:])
    if mode == "probe":
        result = asyncio.run(probe(url, opts))
    elif mode == "sdk":
        result = asyncio.run(sdk(url, opts))
    elif mode == "abandon":
        result = asyncio.run(abandon(url, int(opts["rest"][0]), opts))
    elif mode == "gone":
        with open(opts["rest"][0]) as file:
            ids = json.load(file)
        result = asyncio.run(gone(url, ids, opts))
    elif mode == "long":
        result = asyncio.run(long(url, int(opts["rest"][0]), opts))
    elif mode == "cap":
        result = asyncio.run(cap(url, opts))
    elif mode == "begin":
        result = asyncio.run(begin(url, opts))
    elif mode == "resume":
        result = asyncio.run(resume(url, opts))
    elif mode == "open":
        result = asyncio.run(open_session(url, opts["rest"][0], opts))
    elif mode == "request":
        result = asyncio.run(bare(url, opts["rest"][0], opts))
    elif mode == "again":
        result = asyncio.run(again(url, opts))
    elif mode == "hop":
        result = asyncio.run(hop(url, opts["rest"][0], int(opts["rest"][1]), opts))
    elif mode == "spread":
        result = asyncio.run(spread(url, opts))
    elif mode == "broken":
        result = asyncio.run(broken(url, opts))
    elif mode == "fleet":
        result = asyncio.run(fleet(url, int(opts["rest"][0]), opts))
    elif mode == "cut":
        result = asyncio.run(cut(url, opts))
    elif mode == "rolling":
        result = asyncio.run(rolling(url, opts))
    elif mode == "approval":
        result = asyncio.run(approval(url, opts))
    elif mode == "elicited":
        result = asyncio.run(elicited(url, opts))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
