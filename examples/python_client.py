#!/usr/bin/env python3
"""Drives `code-mode serve --jsonl` from Python (standard library only).

Opens a session, runs a cell that calls a tool implemented here in Python, answers the
tool call, and prints the cell's output. Usage:

    python3 examples/python_client.py [path/to/code-mode]

The binary defaults to $CODE_MODE, then `code-mode` next to this project's debug build,
then `code-mode` on PATH. See docs/jsonl.md for the protocol.
"""
import itertools
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def find_code_mode():
    if len(sys.argv) > 1:
        return sys.argv[1]
    if os.environ.get("CODE_MODE"):
        return os.environ["CODE_MODE"]
    built = os.path.join(HERE, "..", "target", "debug", "code-mode")
    if os.path.exists(built):
        return built
    return shutil.which("code-mode") or sys.exit("code-mode not found; pass its path")


# The tools this client implements, by name.
def add(args):
    return {"sum": args["a"] + args["b"]}


TOOLS = {"add": add}


class Client:
    def __init__(self, binary):
        self.process = subprocess.Popen(
            [binary, "serve", "--jsonl"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.ids = itertools.count(1)

    def send(self, message):
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def request(self, method, **params):
        """Sends a request and handles events until its response arrives."""
        request_id = next(self.ids)
        self.send({"id": request_id, "method": method, "params": params})
        for line in self.process.stdout:
            message = json.loads(line)
            if "event" in message:
                self.on_event(message)
            elif message.get("id") == request_id:
                if "error" in message:
                    raise RuntimeError(f"{message['error']['code']}: {message['error']['message']}")
                return message["result"]
        raise RuntimeError("code-mode closed its output")

    def on_event(self, event):
        if event["event"] == "tool_call":
            tool = TOOLS.get(event["tool"])
            reply = {"call": event["call"]}
            try:
                if tool is None:
                    raise KeyError(f"unknown tool {event['tool']}")
                reply["result"] = tool(event["input"])
            except Exception as error:  # a failed tool rejects the JS promise
                reply["error"] = str(error)
            self.send({"method": "tool_result", "params": reply})
        elif event["event"] == "notify":
            print(f"[notify] {event['text']}")

    def close(self):
        self.process.stdin.close()
        return self.process.wait(timeout=30)


def main():
    client = Client(find_code_mode())
    session = client.request("open_session")["session"]
    tools = [{"name": "add", "description": "Adds two numbers.", "kind": "function"}]
    source = "\n".join([
        "notify('adding in Python');",
        "const { sum } = await tools.add({ a: 2, b: 3 });",
        "text(`2 + 3 = ${sum}`);",
        "store('last_sum', sum);",
    ])
    started = client.request("exec", session=session, source=source, tools=tools)
    response = started["response"]
    while response["type"] == "yielded":
        for item in response["content_items"]:
            print(item.get("text", "[image]"))
        response = client.request("wait", session=session, cell_id=started["cell_id"])
    for item in response["content_items"]:
        print(item.get("text", "[image]"))
    print(f"status: {response['type']}, error: {response.get('error_text')}")
    later = client.request("exec", session=session, source="text(load('last_sum') * 10)")
    print(later["response"]["content_items"][0]["text"])
    client.request("shutdown", session=session)
    sys.exit(client.close())


if __name__ == "__main__":
    main()
