#!/usr/bin/env python3
"""A runtime killed with SIGKILL at a random moment of its first 20 ms, N times.

Each round starts `code-mode serve --jsonl` with `CODE_MODE_BIN` naming a wrapper that
starts the real runtime and, on the round's first start only, kills it with -9 after a
random delay in 0..20 ms (before it connects, during its handshake, or as it runs the
cell). The round opens a session and runs one exec; it passes when the exec ends with its
own output. Prints each failure and a summary; exits 1 if any round failed.

    python3 scripts/birth_kills.py --cli target/release/code-mode \
        --runtime target/release/code-mode-bin --rounds 200 --seed 7
"""

import argparse
import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time

WRAPPER = """#!/bin/sh
echo start >> '{starts}'
if [ ! -e '{marker}' ]; then
  : > '{marker}'
  ( /bin/sleep 0.{delay_us:06}; kill -9 $$ ) &
fi
exec '{real}' "$@"
"""

# How long a round may wait for each line from the server.
LINE_TIMEOUT_S = 60


def read_line(lines):
    """The server's next line ("" at its end), or None after LINE_TIMEOUT_S."""
    try:
        return lines.get(timeout=LINE_TIMEOUT_S)
    except queue.Empty:
        return None


def lines_of(stdout):
    """The lines of `stdout`, read on a thread of their own ("" once it ends)."""
    lines = queue.Queue()

    def read():
        for line in stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def one_round(cli, runtime, round_no, delay_us, scratch):
    """None if the round's exec ended with its own output, else what went wrong; and how
    many runtimes the round started (2 or more: the killed one was replaced)."""
    marker = os.path.join(scratch, f"killed-{round_no}")
    starts = os.path.join(scratch, f"starts-{round_no}")
    wrapper = os.path.join(scratch, f"runtime-{round_no}")
    with open(wrapper, "w") as out:
        out.write(
            WRAPPER.format(marker=marker, starts=starts, delay_us=delay_us, real=runtime)
        )
    os.chmod(wrapper, 0o755)
    env = dict(os.environ, CODE_MODE_BIN=wrapper)
    requests = [
        {"id": 1, "method": "open_session", "params": {}},
    ]
    server = subprocess.Popen(
        [cli, "serve", "--jsonl"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    problem = None
    try:
        problem = drive(server, lines_of(server.stdout), requests, round_no)
    except (OSError, ValueError, KeyError) as error:
        problem = f"{type(error).__name__}: {error}"
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if problem is None and not os.path.exists(marker):
        problem = "the wrapper never ran"
    try:
        with open(starts) as started:
            runtimes = len(started.readlines())
    except OSError:
        runtimes = 0
    return problem, runtimes


def drive(server, lines, requests, round_no):
    """Opens a session and runs the round's exec: None, or what went wrong."""
    server.stdin.write(json.dumps(requests[0]) + "\n")
    server.stdin.flush()
    line = read_line(lines)
    if line is None:
        return f"no answer to open_session within {LINE_TIMEOUT_S} s"
    opened = json.loads(line)
    session = opened["result"]["session"]
    source = f"text('round {round_no}')"
    exec_request = {
        "id": 2,
        "method": "exec",
        "params": {"session": session, "source": source, "yield_time_ms": 30000},
    }
    server.stdin.write(json.dumps(exec_request) + "\n")
    server.stdin.flush()
    while True:
        line = read_line(lines)
        if line is None:
            return f"no answer to the exec within {LINE_TIMEOUT_S} s"
        if not line:
            return f"the server ended before answering: {server.wait()}"
        frame = json.loads(line)
        if frame.get("id") == 2:
            break
    response = frame.get("result", {}).get("response")
    if response is None:
        return f"no response: {frame}"
    if response.get("type") != "result":
        return f"not a result: {response}"
    items = response.get("content_items")
    expected = [{"type": "input_text", "text": f"round {round_no}"}]
    if items != expected:
        return f"wrong output: {items}"
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli", required=True)
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    cli = os.path.abspath(args.cli)
    runtime = os.path.abspath(args.runtime)
    failures = 0
    replaced = 0
    times = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_no in range(args.rounds):
            delay_us = rng.randrange(20_000)
            started = time.monotonic()
            problem, runtimes = one_round(cli, runtime, round_no, delay_us, scratch)
            times.append(time.monotonic() - started)
            if runtimes >= 2:
                replaced += 1
            if problem:
                failures += 1
                print(f"round {round_no} (killed after {delay_us} us): {problem}")
    times.sort()
    p50 = times[len(times) // 2]
    p95 = times[min(len(times) - 1, len(times) * 95 // 100)]
    print(
        f"{args.rounds} rounds, {failures} failed, {replaced} with the killed runtime "
        "replaced (the others' kill came after the exec's answer); "
        f"a round (start, open, exec, stop) "
        f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
