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
