"""What the runtime process protects Python from: a runtime killed mid-call, a heap bomb,
an endless loop; and what the GIL's release allows: many sessions at once, Python
threads running while a cell runs."""

import asyncio
import threading
import time

import code_mode
from conftest import kill, runtime_pid


def test_a_runtime_killed_mid_call_loses_nothing_and_the_call_runs_once():
    entered = threading.Event()
    release = threading.Event()
    calls = []

    def gate(step: int) -> int:
        """Blocks the first call until the test releases it."""
        calls.append(step)
        if step == 1:
            entered.set()
            assert release.wait(30)
        return step * 10

    with code_mode.Session([gate]) as session:
        session.exec("store('before', 1)")
        pid = runtime_pid(session)
        outcome = {}
        worker = threading.Thread(
            target=lambda: outcome.update(
                result=session.exec(
                    "const a = await tools.gate({step: 1}); const b = await tools.gate({step: 2}); text(a + b)"
                )
            )
        )
        worker.start()
        assert entered.wait(30)
        kill(pid)
        release.set()
        worker.join(60)
        result = outcome["result"]
        assert result.text == "30", result
        # The rebuilt cell took the first call's answer from its journal: no call twice.
        assert calls == [1, 2]
        assert session.exec("text(load('before'))").text == "1"
        assert runtime_pid(session) != pid


def test_a_heap_bomb_and_an_endless_loop_end_their_cell_only():
    with code_mode.Session(heap_mb=64, cpu_ms=500) as session:
        bomb = session.exec("const a = []; while (true) { a.push(new Array(1e6).fill(1)); }")
        assert bomb.failure == "out_of_memory", bomb
        loop = session.exec("while (true) {}")
        assert loop.failure == "cpu_budget", loop
        try:
            loop.raise_for_error()
        except code_mode.LimitExceeded:
            pass
        else:  # pragma: no cover
            raise AssertionError("a CPU budget reached is LimitExceeded")
        assert session.exec("text('still here')").text == "still here"


def test_a_hundred_sessions_under_one_event_loop():
    async def one(index: int) -> str:
        async def double(n: int) -> int:
            """Doubles n."""
            await asyncio.sleep(0)
            return n * 2

        async with code_mode.AsyncSession([double]) as session:
            result = await session.exec(f"text(await tools.double({{n: {index}}}))")
            return result.text

    async def main():
        return await asyncio.gather(*(one(index) for index in range(100)))

    assert asyncio.run(main()) == [str(index * 2) for index in range(100)]


def test_python_threads_run_while_a_cell_runs():
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    def ticks_during(action) -> int:
        before = ticks
        action()
        return ticks - before

    counter = threading.Thread(target=count)
    with code_mode.Session() as session:
        session.exec("text(1)")
        counter.start()
        # The same 300 ms with the GIL surely free (a sleep), then inside an exec.
        free = ticks_during(lambda: time.sleep(0.3))
        busy = ticks_during(lambda: session.exec("const end = Date.now() + 300; while (Date.now() < end) {}"))
        stop.set()
        counter.join()
    # Held for the whole exec, the GIL would let the counter run a switch interval or
    # two (a few ms of the 300).
    assert busy > free * 0.3, (busy, free)


_KEPT_AGENT = r'''
import sys, time, code_mode

state_dir, log = sys.argv[1], sys.argv[2]

def slow(step: int) -> int:
    """Logs each run; step 1 never ends in this process."""
    with open(log, "a") as file:
        file.write(f"start {step}\n")
    if step == 1:
        time.sleep(600)
    return step * 10

session = code_mode.Session([slow], state_dir=state_dir, session_id="conversation-1")
started = session.exec(
    "const out = [];"
    "for (const step of [0, 1, 2]) {"
    "  try { out.push(await tools.slow({step})); } catch (e) { out.push(String(e.message ?? e)); }"
    "}"
    "text(JSON.stringify(out));",
    yield_time_ms=0,
)
print(started.cell_id, flush=True)
time.sleep(600)
'''


def test_a_kept_session_goes_on_in_the_next_python_process_after_a_kill(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys

    state_dir, log = tmp_path / "state", tmp_path / "runs.log"
    agent = subprocess.Popen(
        [sys.executable, "-c", _KEPT_AGENT, str(state_dir), str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    cell_id = agent.stdout.readline().strip()
    deadline = time.monotonic() + 60
    while "start 1" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the second call never started"
        time.sleep(0.02)
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait()

    assert code_mode.kept_sessions(state_dir) == ["conversation-1"]

    def slow(step: int) -> int:
        with open(log, "a") as file:
            file.write(f"start {step}\n")
        return step * 10

    with code_mode.Session([slow], state_dir=state_dir, session_id="conversation-1") as session:
        result = session.wait(cell_id, yield_time_ms=30000)
        out = json.loads(result.text)
        assert out[0] == 0 and out[2] == 20, out
        assert out[1].startswith("interrupted: the call of `slow` was in flight"), out
        runs = log.read_text().splitlines()
        # The answered call ran once; the interrupted one was not run again.
        assert runs == ["start 0", "start 1", "start 2"], runs
        session.delete()
    assert code_mode.kept_sessions(state_dir) == []


def test_kept_session_options_are_checked():
    import pytest

    with pytest.raises(TypeError, match="session_id"):
        code_mode.Session([], state_dir="somewhere")
    with pytest.raises(TypeError, match="state_dir"):
        code_mode.Session([], session_id="x")
    with pytest.raises(ValueError, match="on_interrupt"):
        code_mode.Session([], state_dir="somewhere", session_id="x", on_interrupt="maybe")
