"""The Python package against its alternatives, interleaved round by round in one run:

- `python`: `code_mode.Session.exec` from Python (the runtime process, as installed);
- `python in-process`: the same with `in_process=True` (V8 inside Python; the wheel
  built with the `in-process` feature, as scripts/python-bench.sh builds it);
- `rust ipc` and `rust in-process`: the same cells through the Rust API
  (`benches/python_peer.rs`), over IPC (as the package runs them) and in process;
- `node per cell`: a fresh `node` process per cell, its tool bridged over stdio, as a
  subprocess executor runs code;
- `mini-racer`: V8 embedded in Python, no sandbox and no tool bridge (the trivial cell
  only), the floor of "V8 from Python".

Cells: `trivial` is `text(1)`; `tool` makes one nested call to a tool that answers at
once. Prints p50, p95 and mean per scenario in microseconds, and the ratios.

    python bench.py --peer PATH_TO_python_peer [--rounds 5] [--iterations 60]
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import time

import code_mode

HERE = pathlib.Path(__file__).resolve().parent
CELLS = {"trivial": "text(1)", "tool": "text(await tools.echo({n: 1}))"}


def echo(n: int) -> dict:
    """Answers with its argument."""
    return {"n": n}


def python_round(session: code_mode.Session, cell: str, iterations: int) -> list[float]:
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        result = session.exec(CELLS[cell])
        times.append((time.perf_counter() - started) * 1e6)
        assert result.ok, result
    return times


def peer_round(peer: str, transport: str, cell: str, iterations: int) -> list[float]:
    run = subprocess.run(
        [peer, "--transport", transport, "--cell", cell, "--iterations", str(iterations)],
        capture_output=True, text=True, check=True,
    )
    return [float(value) for value in json.loads(run.stdout.strip().splitlines()[-1])]


def node_cell(cell: str) -> float:
    started = time.perf_counter()
    child = subprocess.Popen(
        ["node", HERE / "node_cell.js", CELLS[cell]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    for line in child.stdout:
        message = json.loads(line)
        if "done" in message:
            break
        child.stdin.write(json.dumps(echo(**message["args"])) + "\n")
        child.stdin.flush()
    child.wait()
    return (time.perf_counter() - started) * 1e6


def mini_racer_round(iterations: int) -> list[float]:
    from py_mini_racer import MiniRacer

    # One context for every cell (no fresh context, no isolation between cells): the
    # floor of calling V8 from Python.
    context = MiniRacer()
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        context.eval("(() => { const out = []; out.push(String(1)); return out.join('\\n'); })()")
        times.append((time.perf_counter() - started) * 1e6)
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {statistics.median(ordered):9.0f}  p95 {p95:9.0f}  mean {statistics.fmean(ordered):9.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--node-cells", type=int, default=10)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}
    if not code_mode.IN_PROCESS:
        raise SystemExit("this wheel has no in-process runtime: build it with scripts/python-package.sh release-in-process")
    with code_mode.Session([echo]) as session, code_mode.Session([echo], in_process=True) as inside:
        for cell in CELLS:
            python_round(session, cell, 5)  # warm-up
            python_round(inside, cell, 5)
        for _ in range(args.rounds):
            for cell in CELLS:
                figures.setdefault(f"python {cell}", []).extend(python_round(session, cell, args.iterations))
                figures.setdefault(f"python in-process {cell}", []).extend(
                    python_round(inside, cell, args.iterations)
                )
                for transport in ("ipc", "in-process"):
                    figures.setdefault(f"rust {transport} {cell}", []).extend(
                        peer_round(args.peer, transport, cell, args.iterations)
                    )
                figures.setdefault(f"node per cell {cell}", []).extend(
                    node_cell(cell) for _ in range(args.node_cells)
                )
            figures.setdefault("mini-racer trivial", []).extend(mini_racer_round(args.iterations))
    print(f"python {os.sys.version.split()[0]}, {args.rounds} rounds, µs per exec")
    for name, times in figures.items():
        print(f"{name:28} {summary(times)}  (n={len(times)})")
    for cell in CELLS:
        ours = statistics.median(figures[f"python {cell}"])
        rust = statistics.median(figures[f"rust ipc {cell}"])
        node = statistics.median(figures[f"node per cell {cell}"])
        print(f"{cell}: python / rust ipc p50 = {ours / rust:.2f}x; node per cell / python p50 = {node / ours:.1f}x")
        inside = statistics.median(figures[f"python in-process {cell}"])
        rust_inside = statistics.median(figures[f"rust in-process {cell}"])
        print(f"{cell}: python in-process / rust in-process p50 = {inside / rust_inside:.2f}x")


if __name__ == "__main__":
    main()
