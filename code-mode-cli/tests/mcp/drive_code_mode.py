"""Drives `code-mode mcp` with the official Python MCP SDK, as any MCP client would.

    drive_code_mode.py stdio <code-mode> <tools.toml>
    drive_code_mode.py http <url> [<token> [<ca.pem>]]   (a bearer token; HTTPS with a test CA)

Lists the tools, runs a cell with `exec` that calls a nested MCP tool, prints, yields and
keeps running; `wait`s for the rest; checks that a stored value outlives the cell within
the connection; sees a cell's notifications as log messages, and as progress when the
request asks for progress. Prints one JSON object with what it saw; the Rust test asserts on it.
"""

import json
import ssl
import sys

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

CELL = """
const echoed = await tools.mcp__fx__echo({ text: "from python" });
console.log("first:", echoed.content[0].text);
store("seen", echoed.content[0].text);
yield_control();
await new Promise((resolve) => setTimeout(resolve, 300));
console.log("second part");
"""


def texts(result):
    return [block.text for block in result.content if getattr(block, "type", None) == "text"]


async def drive(server):
    seen = {"logged": [], "progress": [], "notified": []}

    async def message(incoming):
        method = getattr(incoming, "method", None) or getattr(
            getattr(incoming, "root", None), "method", None
        )
        if method:
            seen["notified"].append(method)

    async def logged(params):
        seen["logged"].append(params.data)

    async def progress(value, total, message):
        seen["progress"].append([value, message])

    async with Client(server, logging_callback=logged, message_handler=message) as client:
        listed = await client.list_tools()
        seen["tools"] = sorted(tool.name for tool in listed.tools)
        seen["exec_description"] = next(t.description for t in listed.tools if t.name == "exec")
        first = await client.call_tool("exec", {"code": CELL})
        seen["exec"] = texts(first)
        seen["exec_is_error"] = bool(first.is_error)
        # `Script running with cell ID <id>` names the cell to wait for.
        cell_id = None
        for text in texts(first):
            for line in text.splitlines():
                if line.startswith("Script running with cell ID "):
                    cell_id = line.removeprefix("Script running with cell ID ").strip()
        seen["cell_id"] = cell_id
        rest = await client.call_tool("wait", {"cell_id": cell_id, "yield_time_ms": 10000})
        seen["wait"] = texts(rest)
        stored = await client.call_tool("exec", {"code": 'text(load("seen"))'})
        seen["stored"] = texts(stored)
        failed = await client.call_tool("exec", {"code": "throw new Error('on purpose')"})
        seen["failed"] = texts(failed)
        notifying = 'notify("one"); await new Promise((r) => setTimeout(r, 50)); notify("two");'
        await client.call_tool("exec", {"code": notifying})
        await client.call_tool("exec", {"code": notifying}, progress_callback=progress)
        # A request the client gives up on (cancelled) preempts that observation, not the
        # cell; what it had written so far comes with the next `wait`.
        with anyio.move_on_after(0.3):
            await client.call_tool(
                "exec",
                {"code": 'text("early"); await new Promise((r) => setTimeout(r, 1000)); text("survived")'},
            )
        survived = await client.call_tool("wait", {"cell_id": "6", "yield_time_ms": 10000})
        seen["survived"] = texts(survived)
        # A nested server's tool list changes: `exec`'s description follows, and the
        # client is told.
        await client.call_tool("exec", {"code": "await tools.mcp__fx__add_tool()"})
        with anyio.move_on_after(5):
            while "notifications/tools/list_changed" not in seen["notified"]:
                await anyio.sleep(0.05)
        relisted = await client.list_tools()
        exec_tool = next(t for t in relisted.tools if t.name == "exec")
        seen["added_listed"] = "mcp__fx__added(" in exec_tool.description
        # Each item the cell wrote is its own content block, after the header and before
        # the error.
        items = await client.call_tool(
            "exec",
            {
                "code": 'text(2); audio({ type: "audio", data: "SUQz", mimeType: "audio/mpeg" }); '
                'text("mcp ok"); throw new Error("last")'
            },
        )
        seen["items"] = [
            [block.type, getattr(block, "text", None) or getattr(block, "mime_type", None)]
            for block in items.content
        ]
        seen["audio_data"] = next(
            (block.data for block in items.content if block.type == "audio"), None
        )
        # Notifications may trail the result that ends the cell by a moment.
        with anyio.move_on_after(5):
            while len(seen["logged"]) < 2 or len(seen["progress"]) < 2:
                await anyio.sleep(0.05)
    return seen


def main():
    mode = sys.argv[1]
    if mode == "stdio":
        server = StdioServerParameters(
            command=sys.argv[2], args=["mcp", "--tools", sys.argv[3]]
        )
    elif mode == "http" and len(sys.argv) > 3:
        # As an agent's MCP config does it: the token in a header, the server's CA trusted.
        ca = sys.argv[4] if len(sys.argv) > 4 else None
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {sys.argv[3]}"},
            verify=ssl.create_default_context(cafile=ca) if ca else True,
            timeout=httpx2.Timeout(30, read=300),
        )
        server = streamable_http_client(sys.argv[2], http_client=http)
    elif mode == "http":
        server = sys.argv[2]
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(anyio.run(drive, server)))


if __name__ == "__main__":
    main()
