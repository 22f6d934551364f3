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
import random
import subprocess
import sys
import tempfile
import time

WRAPPER = """#!/bin/sh
if [ ! -e '{marker}' ]; then
  : > '{marker}'
  ( /bin/sleep 0.{delay_us:06}; kill -9 $$ ) &
fi
exec '{real}' "$@"
"""


def one_round(cli, runtime, round_no, delay_us, scratch):
    marker = os.path.join(scratch, f"killed-{round_no}")
    wrapper = os.path.join(scratch, f"runtime-{round_no}")
    with open(wrapper, "w") as out:
        out.write(WRAPPER.format(marker=marker, delay_us=delay_us, real=runtime))
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
    try:
        server.stdin.write(json.dumps(requests[0]) + "\n")
        server.stdin.flush()
        opened = json.loads(server.stdout.readline())
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
            line = server.stdout.readline()
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
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if not os.path.exists(marker):
            return "the wrapper never ran"


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
    times = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_no in range(args.rounds):
            delay_us = rng.randrange(20_000)
            started = time.monotonic()
            problem = one_round(cli, runtime, round_no, delay_us, scratch)
            times.append(time.monotonic() - started)
            if problem:
                failures += 1
                print(f"round {round_no} (killed after {delay_us} us): {problem}")
    times.sort()
    p50 = times[len(times) // 2]
    p95 = times[min(len(times) - 1, len(times) * 95 // 100)]
    print(
        f"{args.rounds} rounds, {failures} failed; a round (start, open, exec, stop) "
        f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
