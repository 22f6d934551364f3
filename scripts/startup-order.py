#!/usr/bin/env python3
"""Makes code-mode-bin/startup-order.txt: the functions a cold start of the Codex front
runs, in the order they first run, which the runtime executables are linked with
(code-mode-bin/link.rs) so that those functions sit together.

A maintainer's tool, not run by CI: it needs `perf` (and the kernel's leave to use it),
a release build and a few minutes. Run it from the repository's root, with V8's archive
set up as for any build (`source ../shared/v8/env.sh`):

    scripts/startup-order.py [--iterations 3] [--rounds 30]

How: cold starts of a release `codex-code-mode-host` (`codex_hosts --host <front>`, one
exec each) run under `perf record`, once sampling the CPU with call chains and then once
per iteration recording every page fault with its call chain. For the front and for its
runtime process, every function of the executable in a call chain within a process's
first milliseconds counts, ranked by when it was first seen (the median over the
processes). A page fault on code shows a function the list lacks; after each iteration
the front is linked again with the list, so that the next one shows the functions that
were hidden behind a listed one on the same pages. The runtime's functions come first:
its chain is a cold start's critical path.
"""

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

ORDER = "code-mode-bin/startup-order.txt"
FRONT = "codex-code-mode-host"
# How long after its first sample a process's functions count (a cold start takes 6-9 ms).
WINDOW_SECONDS = 0.009
HEADER = re.compile(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s+([\d.]+):\s*$")
FRAME = re.compile(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")


def run(command, **kwargs):
    print("+", " ".join(command), file=sys.stderr)
    return subprocess.run(command, check=True, **kwargs)


def build():
    """Builds the front and the bench; returns their paths."""
    run(["cargo", "build", "--release", "-p", FRONT])
    listing = run(
        ["cargo", "bench", "-p", "code-mode-benches", "--bench", "codex_hosts", "--no-run",
         "--message-format=json"],
        stdout=subprocess.PIPE, text=True,
    ).stdout
    bench = None
    for line in listing.splitlines():
        message = json.loads(line)
        if message.get("target", {}).get("name") == "codex_hosts" and message.get("executable"):
            bench = message["executable"]
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    return os.path.join(target, "release", FRONT), bench


def record(bench, front, events, rounds, cache):
    """Runs `rounds` cold starts of `front` under `perf record` with `events`; returns the
    samples' text (call chains with mangled names)."""
    with tempfile.NamedTemporaryFile(suffix=".data") as data:
        env = dict(os.environ, XDG_CACHE_HOME=cache)
        run(["perf", "record", *events, "-g", "-o", data.name, "--", bench, "--bench",
             "--rounds", str(rounds), "--iterations", "1", "--calls", "1", "--host", front],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return run(["perf", "script", "-i", data.name, "--no-demangle",
                    "-F", "comm,pid,tid,time,ip,sym,dso"],
                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout


def samples(text):
    """(comm, pid, time, [(symbol, dso)]) per sample."""
    current = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                yield current
            current = None
            continue
        header = HEADER.match(line)
        if header:
            comm, pid, _tid, time = header.groups()
            current = (comm, int(pid), float(time), [])
        elif current is not None:
            frame = FRAME.match(line)
            if frame:
                current[3].append(frame.groups())
    if current:
        yield current


def first_seen(text, executable, seen):
    """Adds to `seen[role][symbol]` when each function of `executable` was first seen in
    each front ("front") and runtime ("runtime") process of `text`."""
    parsed = list(samples(text))
    comms, start = collections.defaultdict(set), {}
    for comm, pid, time, _ in parsed:
        comms[pid].add(comm)
        # Before its exec, the front's process is the bench's child.
        if not comm.startswith("codex_hosts"):
            start.setdefault(pid, time)
    name = os.path.basename(executable)[:15]
    firsts = collections.defaultdict(dict)
    for _comm, pid, time, chain in parsed:
        if pid not in start or time - start[pid] > WINDOW_SECONDS:
            continue
        if "code-mode-rt" in comms[pid]:
            role = "runtime"
        elif name in comms[pid]:
            role = "front"
        else:
            continue
        for symbol, dso in chain:
            if os.path.basename(dso) != os.path.basename(executable) or symbol == "[unknown]":
                continue
            firsts[(role, pid)].setdefault(symbol.split("+")[0], time - start[pid])
    for (role, _pid), symbols in firsts.items():
        for symbol, when in symbols.items():
            seen[role][symbol].append(when)


def order(seen):
    names, listed = [], set()
    for role in ("runtime", "front"):
        ranked = sorted(seen[role].items(), key=lambda item: statistics.median(item[1]))
        for symbol, _ in ranked:
            if symbol not in listed:
                names.append(symbol)
                listed.add(symbol)
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30)
    options = parser.parse_args()
    seen = {"runtime": collections.defaultdict(list), "front": collections.defaultdict(list)}
    with tempfile.TemporaryDirectory() as cache:
        front, bench = build()
        text = record(bench, front, ["-F", "40000"], options.rounds * 2, cache)
        first_seen(text, front, seen)
        for iteration in range(options.iterations):
            text = record(bench, front, ["-e", "page-faults", "-c", "1"], options.rounds, cache)
            first_seen(text, front, seen)
            names = order(seen)
            with open(ORDER, "w", encoding="utf-8") as out:
                out.write("\n".join(names) + "\n")
            print(f"iteration {iteration + 1}: {len(names)} functions", file=sys.stderr)
            front, bench = build()


if __name__ == "__main__":
    main()
