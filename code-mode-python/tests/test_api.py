"""The API: run, Session and AsyncSession, tools sync and async, results, errors."""

import asyncio
import json
import threading

import pytest

import code_mode


def add(a: int, b: int) -> int:
    """Adds two numbers.

    More text that is not part of the summary.
    """
    return a + b


async def slow_upper(text: str, delay_ms: int = 10) -> str:
    """Upper-cases text, after a pause."""
    await asyncio.sleep(delay_ms / 1000)
    return text.upper()


def explode(reason: str) -> None:
    """Always fails."""
    raise RuntimeError(f"exploded: {reason}")


def test_run_calls_a_sync_tool_and_returns_the_text():
    result = code_mode.run("text(await tools.add({a: 2, b: 40}))", tools=[add])
    assert result.text == "42"
    assert result.status == "completed" and result.ok and not result.running
    assert result.error is None and result.failure is None
    assert result.items == [code_mode.TextItem("42")]
    assert result.model_text.startswith("Script completed")


def test_an_async_tool_runs_in_a_blocking_session():
    with code_mode.Session([slow_upper]) as session:
        result = session.exec("text(await tools.slow_upper({text: 'abc'}))")
    assert result.text == "ABC"


def test_an_async_session_runs_sync_and_async_tools_on_its_loop():
    seen = []

    async def note(value: str) -> str:
        seen.append((value, threading.current_thread() is threading.main_thread()))
        return value

    async def main():
        async with code_mode.AsyncSession([add, note]) as session:
            result = await session.exec(
                "const [x, y] = await Promise.all([tools.add({a: 1, b: 2}), tools.note({value: 'v'})]); text(x); text(y)"
            )
            return result

    result = asyncio.run(main())
    assert result.text == "3\nv"
    # The async tool ran on the session's own event loop, in the main thread.
    assert seen == [("v", True)]


def test_a_tool_that_raises_rejects_the_call_and_the_cell_goes_on():
    source = """
    try { await tools.explode({reason: 'boom'}); } catch (error) { text('caught: ' + error); }
    text('after');
    """
    result = code_mode.run(source, tools=[explode])
    assert result.text == "caught: exploded: boom\nafter"
    uncaught = code_mode.run("await tools.explode({reason: 'x'})", tools=[explode])
    assert uncaught.failure == "script_error"
    assert "exploded: x" in uncaught.error
    with pytest.raises(code_mode.CellError, match="exploded: x"):
        uncaught.raise_for_error()


def test_arguments_are_checked_against_the_schema():
    result = code_mode.run(
        "try { await tools.add({a: 'one'}); } catch (e) { text(String(e)); }", tools=[add]
    )
    assert result.text.startswith("invalid arguments:"), result.text
    assert "a" in result.text and "b" in result.text


def test_a_result_that_is_not_json_is_a_clear_error():
    def handle() -> object:
        """Returns something JSON cannot hold."""
        return object()

    result = code_mode.run("try { await tools.handle(); } catch (e) { text(String(e)); }", tools=[handle])
    assert result.text.startswith("the tool's result is not JSON"), result.text


def test_yield_then_wait_then_terminate():
    with code_mode.Session() as session:
        first = session.exec(
            "text('one'); await new Promise((r) => setTimeout(r, 300)); text('two')",
            yield_time_ms=50,
        )
        assert first.running and first.text == "one"
        done = session.wait(first.cell_id, yield_time_ms=5000)
        assert done.status == "completed" and done.text == "two"
        endless = session.exec("text('x'); await new Promise((r) => setTimeout(r, 60000))", yield_time_ms=50)
        assert endless.running
        stopped = session.terminate(endless.cell_id)
        assert stopped.status == "terminated"


def test_stored_values_last_across_cells_and_can_start_a_session():
    with code_mode.Session(stored_values={"seed": {"n": 1}}) as session:
        session.exec("store('k', load('seed').n + 1)")
        assert session.exec("text(load('k'))").text == "2"
        assert session.stored_values == {"seed": {"n": 1}, "k": 2}


def test_cancelling_an_async_exec_terminates_its_cell():
    started = threading.Event()
    late = []

    def mark() -> str:
        """Marks the cell as started."""
        started.set()
        return "ok"

    def after() -> str:
        """Called once the cell's timer fires: never, once the cell is terminated."""
        late.append(True)
        return "late"

    async def main():
        async with code_mode.AsyncSession([mark, after]) as session:
            # Not terminated, the cell would end within the wait below, with `after` called.
            task = asyncio.ensure_future(
                session.exec(
                    "await tools.mark(); await new Promise((r) => setTimeout(r, 300)); "
                    "await tools.after(); text('finished')"
                )
            )
            while not started.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The exec's own answer was the cell's terminated one, taken, which closes the
            # cell: a wait on it answers that it is not found, once the runtime has the word
            # that the answer was taken (a wait that overtakes that word is refused as a
            # second observer).
            for _ in range(100):
                try:
                    gone = await session.wait("1", yield_time_ms=5000)
                    break
                except code_mode.CodeModeError as error:
                    assert "active observer" in str(error), error
                    await asyncio.sleep(0.01)
            else:
                raise AssertionError("the cancelled cell kept an observer")
            # A cell started after it outlives its timer: had it gone on, `after` ran.
            later = await session.exec("await new Promise((r) => setTimeout(r, 600)); text('later')")
            return gone, later

    gone, later = asyncio.run(main())
    assert (gone.status, gone.failure, gone.error, gone.items) == (
        "completed",
        "not_found",
        "exec cell 1 not found",
        [],
    ), gone.model_text
    assert later.text == "later" and later.ok, later.model_text
    assert late == []


def test_tool_specs_declare_the_tools_in_typescript():
    with code_mode.Session([add]) as session:
        specs = session.tool_specs()
    assert [spec["name"] for spec in specs] == ["exec", "wait"]
    description = specs[0]["description"]
    assert "add" in description and "Adds two numbers." in description
    assert "a: number" in description and "b: number" in description
    assert specs[1]["parameters"]["required"] == ["cell_id"]


def test_an_explicit_tool_and_a_deferred_one():
    lookup = code_mode.Tool(
        name="lookup",
        description="Looks a key up.",
        schema={"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]},
        fn=lambda key: {"key": key, "found": True},
        deferred=True,
    )
    with code_mode.Session([lookup]) as session:
        assert "Looks a key up." not in session.tool_specs()[0]["description"]
        result = session.exec("const r = await tools.lookup({key: 'k'}); text(JSON.stringify(r))")
    assert json.loads(result.text) == {"key": "k", "found": True}


def test_options_cross_typed_and_a_bad_one_is_refused_by_name():
    from code_mode import _native

    typed = _native.Options(heap_mb=64, surface="codex", never_hibernate=True)
    assert (typed.heap_mb, typed.surface, typed.never_hibernate, typed.cpu_ms) == (64, "codex", True, None)
    with pytest.raises(ValueError, match="heap_mb: expected a non-negative integer, got -1"):
        code_mode.Session(heap_mb=-1)
    with pytest.raises(ValueError, match='surface: expected "contract" or "codex", got "other"'):
        code_mode.Session(surface="other")
    with pytest.raises(TypeError):
        code_mode.Session(cpu_ms="fast")
    # Given, each option reaches the session: a cell past its CPU budget is stopped.
    with code_mode.Session(cpu_ms=200, hibernate_after_ms=None) as session:
        result = session.exec("while (true) {}")
    assert result.failure == "cpu_budget", result


def test_a_cells_answer_crosses_typed_finished_failed_and_pending(tmp_path):
    from code_mode import _native

    png = "data:image/png;base64,iVBORw0KGgo="
    with code_mode.Session([add]) as session:
        finished = session._native.exec(f"text(await tools.add({{a: 1, b: 2}})); image('{png}', 'low')")
        assert isinstance(finished, _native.Response)
        assert (finished.kind, finished.error_text, finished.failure, finished.missing_cell) == (
            "result", None, None, False,
        )
        text, image = finished.content_items
        assert (text.kind, text.text, text.image_url) == ("input_text", "3", None)
        assert (image.kind, image.image_url, image.detail, image.text) == ("input_image", png, "low", None)
        assert finished.wall_time_ms > 0
        assert finished.model_items[0].kind == "input_text"
        assert finished.model_items[0].text.startswith("Script completed")

        failed = session._native.exec("text('before'); throw new Error('boom')")
        assert (failed.kind, failed.failure, failed.missing_cell) == ("result", "script_error", False)
        assert "boom" in failed.error_text
        assert [item.text for item in failed.content_items] == ["before"]
        assert failed.cell_id != finished.cell_id

        pending = session._native.exec("text('one'); await new Promise((r) => setTimeout(r, 60000))", 50)
        assert (pending.kind, pending.error_text, pending.failure) == ("yielded", None, None)
        assert [item.text for item in pending.content_items] == ["one"]
        # The public Result is made of it, as before.
        result = session.wait(pending.cell_id, yield_time_ms=50)
        assert (result.cell_id, result.status, result.error, result.items) == (pending.cell_id, "running", None, [])
        assert result.model_text.startswith(f"Script running with cell ID {pending.cell_id}\n")
        assert pending.model_items[0].text.startswith(f"Script running with cell ID {pending.cell_id}\n")
        stopped = session._native.terminate(pending.cell_id)
        assert (stopped.kind, stopped.cell_id, stopped.failure) == ("terminated", pending.cell_id, None)

        missing = session._native.wait("999")
        assert (missing.kind, missing.failure, missing.missing_cell) == ("result", "not_found", True)

    # An async call's error crosses as its exception.
    async def main():
        async with code_mode.AsyncSession(runtime=tmp_path / "no-such-runtime") as session:
            await session.exec("text(1)")

    with pytest.raises(code_mode.RuntimeUnavailable, match="to fix it"):
        asyncio.run(main())


def test_unknown_options_and_a_closed_session_are_refused():
    with pytest.raises(TypeError, match="heap_gb"):
        code_mode.Session(heap_gb=1)
    session = code_mode.Session()
    session.close()
    session.close()
    with pytest.raises(code_mode.SessionClosed):
        session.exec("text(1)")


def test_a_missing_runtime_is_runtime_unavailable_with_its_fix(tmp_path):
    with code_mode.Session(runtime=tmp_path / "no-such-runtime") as session:
        with pytest.raises(code_mode.RuntimeUnavailable) as raised:
            session.exec("text(1)")
    assert "no-such-runtime" in str(raised.value)
    assert "to fix it" in str(raised.value) and "CODE_MODE_BIN" in str(raised.value)


def test_in_process_cells_run_inside_python_with_its_tools(tmp_path):
    # The tests' wheel is built with the `in-process` feature (scripts/python-package.sh).
    assert code_mode.IN_PROCESS, "the tests' wheel lacks the in-process feature"
    # A runtime executable that does not exist: in process, none is started.
    missing = tmp_path / "no-such-runtime"
    with code_mode.Session([add, slow_upper], in_process=True, runtime=missing) as session:
        result = session.exec("text(await tools.add({a: 2, b: 40})); text(await tools.slow_upper({text: 'x'}))")
        assert result.text == "42\nX", result.model_text
        assert session.runtime == "in process"
        first = session.exec(
            "store('k', 1); text('a'); await new Promise((r) => setTimeout(r, 200)); text('b')",
            yield_time_ms=50,
        )
        assert first.running and first.text == "a"
        assert session.wait(first.cell_id, yield_time_ms=5000).text == "b"
        assert session.stored_values == {"k": 1}

    async def on_a_loop():
        async with code_mode.AsyncSession([slow_upper], in_process=True, runtime=missing) as session:
            return (await session.exec("text(await tools.slow_upper({text: 'loop'}))")).text

    assert asyncio.run(on_a_loop()) == "LOOP"
    with pytest.raises(ValueError, match="state_dir"):
        code_mode.Session(in_process=True, state_dir=tmp_path / "state", session_id="s")
    with pytest.raises(TypeError, match="in_process"):
        code_mode.Session(in_process="yes")


def test_a_ten_megabyte_argument_hits_a_one_mebibyte_cap_and_passes_the_default():
    received = []

    def echo(text: str) -> int:
        """Returns the length of the text."""
        received.append(len(text))
        return len(text)

    source = (
        "try { text(String(await tools.echo({text: 'x'.repeat(10 * 1024 * 1024)}))); }"
        " catch (e) { text(String(e)); }"
    )
    capped = code_mode.run(source, tools=[echo], max_tool_payload_bytes=1024 * 1024)
    # The argument's JSON, `{"text":"xx...x"}`, is refused before the tool is called.
    argument = 10 * 1024 * 1024 + len('{"text":""}')
    assert capped.text == (
        f"tools.echo was not called: its argument is {argument} bytes of JSON, "
        "more than the limit of 1048576 bytes"
    ), capped.model_text
    assert received == []
    # The default cap (32 MiB) lets the same argument through, whole.
    default = code_mode.run(source, tools=[echo])
    assert default.text == str(10 * 1024 * 1024), default.model_text
    assert received == [10 * 1024 * 1024]
