"""Drives `code-mode mcp` with the official Python MCP SDK, as any MCP client would.

    drive_code_mode.py stdio <code-mode> <tools.toml>
    drive_code_mode.py http <url>

Lists the tools, runs a cell with `exec` that calls a nested MCP tool, prints, yields and
keeps running; `wait`s for the rest; checks that a stored value outlives the cell within
the connection. Prints one JSON object with what it saw; the Rust test asserts on it.
"""

import json
import sys

import anyio
from mcp import Client, StdioServerParameters

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
    seen = {}
    async with Client(server) as client:
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
    return seen


def main():
    mode = sys.argv[1]
    if mode == "stdio":
        server = StdioServerParameters(
            command=sys.argv[2], args=["mcp", "--tools", sys.argv[3]]
        )
    elif mode == "http":
        server = sys.argv[2]
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(anyio.run(drive, server)))


if __name__ == "__main__":
    main()
