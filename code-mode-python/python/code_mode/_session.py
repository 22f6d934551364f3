"""Sessions: ``Session`` (blocking) and ``AsyncSession`` (asyncio), the ``Result`` of a
cell, and ``run``, one cell in one call.

A session's cells run in the runtime process the package ships (a V8 crash or a heap
bomb ends a cell there, never Python). Nested tool calls come back to Python: an async
tool runs on the event loop of the session (``AsyncSession``) or on a background loop
(``Session``), a sync tool on a worker thread; the GIL is released while Rust waits.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import json
import os
import threading
import weakref
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, Union

from . import _native
from ._approvals import Approval, input_json
from ._tools import Tool, ToolInputError, as_tool, to_json

__all__ = [
    "AsyncSession",
    "configure_tracing",
    "AudioItem",
    "ImageItem",
    "Item",
    "Result",
    "Session",
    "TextItem",
    "run",
]

CodeModeError = _native.CodeModeError
CellError = _native.CellError
LimitExceeded = _native.LimitExceeded
RuntimeUnavailable = _native.RuntimeUnavailable
RuntimeLost = _native.RuntimeLost
SessionClosed = _native.SessionClosed

# Failures that are a limit reached rather than the script's own error.
_LIMITS = {"out_of_memory", "cpu_budget"}


@dataclasses.dataclass(frozen=True)
class TextItem:
    """Text the cell output (``text(...)``)."""

    text: str


@dataclasses.dataclass(frozen=True)
class ImageItem:
    """An image the cell output (``image(...)``): a data URL and its detail."""

    image_url: str
    detail: str


@dataclasses.dataclass(frozen=True)
class AudioItem:
    """Audio the cell output (``audio(...)``), as a data URL."""

    audio_url: str


Item = Union[TextItem, ImageItem, AudioItem]


def _item(item: _native.Item) -> Item:
    if item.kind == "input_text":
        return TextItem(item.text or "")
    if item.kind == "input_image":
        return ImageItem(item.image_url or "", item.detail or "auto")
    return AudioItem(item.audio_url or "")


# A response's kind (the API's) as a ``Result``'s status.
_STATUS = {"result": "completed", "yielded": "running", "terminated": "terminated"}


@dataclasses.dataclass(frozen=True)
class Result:
    """What one observation of a cell answered (an ``exec``, ``wait`` or ``terminate``)."""

    cell_id: str
    """The cell's id in its session; ``wait`` and ``terminate`` take it."""
    items: list[Item]
    """What the cell output since the last observation, in order."""
    status: Literal["completed", "running", "terminated"]
    error: str | None
    """The text a model reads of the cell's failure, or ``None``."""
    failure: str | None
    """The failure's kind (``script_error``, ``out_of_memory``, ``cpu_budget``, ...)."""
    wall_time_ms: float
    model_text: str
    """The whole answer as a model reads it: status line, wall time and output."""

    @property
    def text(self) -> str:
        """The text items, joined by newlines."""
        return "\n".join(item.text for item in self.items if isinstance(item, TextItem))

    @property
    def running(self) -> bool:
        """The cell yielded and goes on: ``wait`` for more."""
        return self.status == "running"

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> "Result":
        """Raises ``LimitExceeded`` or ``CellError`` if the cell failed; returns ``self``."""
        if self.error is None:
            return self
        if self.failure in _LIMITS:
            raise LimitExceeded(self.error)
        raise CellError(self.error)

    @classmethod
    def _of(cls, response: _native.Response) -> "Result":
        """The result of the native session's typed answer."""
        return cls(
            cell_id=response.cell_id,
            items=[_item(item) for item in response.content_items],
            status=_STATUS[response.kind],  # type: ignore[arg-type]
            error=response.error_text or None,
            failure=response.failure,
            wall_time_ms=response.wall_time_ms,
            model_text="\n".join(
                item.text or "" for item in response.model_items if item.kind == "input_text"
            ),
        )


def _traceparent() -> str | None:
    """The W3C ``traceparent`` of the OpenTelemetry span current here, when
    ``opentelemetry`` is installed and a span is recording: the call hangs under it."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    flags = int(context.trace_flags)
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"


def _state(options: dict[str, Any]) -> tuple[str, str, bool] | None:
    """Takes the kept-session options out of ``options``: ``state_dir``, ``session_id`` and
    ``on_interrupt`` (``"fail"`` or ``"retry"``)."""
    state_dir = options.pop("state_dir", None)
    session_id = options.pop("session_id", None)
    on_interrupt = options.pop("on_interrupt", "fail")
    if on_interrupt not in ("fail", "retry"):
        raise ValueError(f'on_interrupt must be "fail" or "retry", not {on_interrupt!r}')
    if state_dir is None:
        if session_id is not None:
            raise TypeError("session_id names a session kept in a state_dir: give state_dir too")
        return None
    if not isinstance(session_id, str) or not session_id:
        raise TypeError("a session kept in a state_dir needs a session_id (a non-empty str)")
    return (os.fspath(state_dir), session_id, on_interrupt == "retry")


def kept_sessions(state_dir: str | os.PathLike[str]) -> list[str]:
    """The ids of the sessions an earlier process kept in ``state_dir`` that no session of
    this process took back yet."""
    return list(_native.kept_sessions(os.fspath(state_dir), _default_runtime()))


def _default_runtime() -> str | None:
    """The runtime executable the wheel ships, when it is there."""
    shipped = os.path.join(os.path.dirname(__file__), "bin", "code-mode-bin")
    return shipped if os.path.isfile(shipped) else None


_background: asyncio.AbstractEventLoop | None = None
_background_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    """The event loop async tools of blocking sessions run on (one thread, made once)."""
    global _background
    with _background_lock:
        if _background is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="code-mode-tools", daemon=True)
            thread.start()
            _background = loop
        return _background


class _Dispatcher:
    """Runs the session's tools for its nested calls. The native session calls
    ``run_sync`` for a sync tool on one of its worker threads, and ``dispatch`` and
    ``cancel`` for an async one, which runs on the session's event loop (a background
    loop for a blocking ``Session``) and answers through ``NativeSession.answer``."""

    def __init__(self, tools: Mapping[str, Tool], loop: asyncio.AbstractEventLoop | None) -> None:
        self.tools = dict(tools)
        self.loop = loop
        self.native: "weakref.ReferenceType[_native.NativeSession] | None" = None
        self.running: dict[int, "asyncio.Future[Any]"] = {}

    def _answer(self, token: int, ok: bool, text: str) -> None:
        self.running.pop(token, None)
        native = self.native() if self.native is not None else None
        if native is not None:
            native.answer(token, ok, text)

    def run_sync(self, name: str, input_json: str | None, cell_id: str) -> tuple[bool, str]:
        """Runs a sync tool on the calling (native worker) thread: ``(ok, text)``."""
        tool = self.tools.get(name)
        if tool is None:
            return False, f"no tool named {name}"
        try:
            return True, to_json(tool.fn(**tool.arguments(input_json)))
        except ToolInputError as error:
            return False, str(error)
        except Exception as error:  # the cell's call rejects with the message
            return False, str(error) or type(error).__name__

    def dispatch(self, token: int, name: str, input_json: str | None, cell_id: str) -> None:
        tool = self.tools.get(name)
        if tool is None:
            self._answer(token, False, f"no tool named {name}")
            return
        loop = self.loop or _background_loop()
        loop.call_soon_threadsafe(self._start_async, token, tool, input_json)

    def _start_async(self, token: int, tool: Tool, input_json: str | None) -> None:
        async def call() -> None:
            try:
                result = await tool.fn(**tool.arguments(input_json))
                self._answer(token, True, to_json(result))
            except asyncio.CancelledError:
                self.running.pop(token, None)
            except ToolInputError as error:
                self._answer(token, False, str(error))
            except Exception as error:
                self._answer(token, False, str(error) or type(error).__name__)

        self.running[token] = asyncio.ensure_future(call())

    def cancel(self, token: int) -> None:
        running = self.running.pop(token, None)
        if running is not None:
            running.get_loop().call_soon_threadsafe(running.cancel)


def _options(options: Mapping[str, Any]) -> _native.Options:
    known = {
        "heap_mb",
        "cpu_ms",
        "output_bytes",
        "max_tool_payload_bytes",
        "max_in_flight_tool_calls",
        "max_stored_bytes",
        "surface",
        "hibernate_after_ms",
        "reuse_isolates",
    }
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown session options: {', '.join(sorted(unknown))}")
    given = dict(options)
    # `hibernate_after_ms=None` asks for a session that never hibernates; not giving it
    # keeps the default.
    never = "hibernate_after_ms" in given and given["hibernate_after_ms"] is None
    if never:
        del given["hibernate_after_ms"]
    return _native.Options(never_hibernate=never, **given)


class _Base:
    def __init__(
        self,
        tools: Iterable[Tool | Callable[..., Any]],
        loop: asyncio.AbstractEventLoop | None,
        stored_values: Mapping[str, Any] | None,
        runtime: str | os.PathLike[str] | None,
        sources: tuple[str | os.PathLike[str] | None, Sequence[str]],
        options: Mapping[str, Any],
    ) -> None:
        tools_file, builtins = sources
        options = dict(options)
        state = _state(options)
        in_process = options.pop("in_process", False)
        if not isinstance(in_process, bool):
            raise TypeError(f"in_process must be a bool, not {type(in_process).__name__}")
        described = [as_tool(tool) for tool in tools]
        by_name = {tool.name: tool for tool in described}
        if len(by_name) != len(described):
            raise ValueError("two tools have the same name")
        self._dispatcher = _Dispatcher(by_name, loop)
        path = os.fspath(runtime) if runtime is not None else _default_runtime()
        self._native = _native.NativeSession(
            self._dispatcher,
            json.dumps([tool.description_json() for tool in described]),
            _options(options),
            json.dumps(dict(stored_values)) if stored_values is not None else None,
            path,
            os.fspath(tools_file) if tools_file is not None else None,
            list(builtins),
            state,
            in_process,
        )
        self._dispatcher.native = weakref.ref(self._native)

    @property
    def stored_values(self) -> dict[str, Any]:
        """The values committed cells stored (``store``), as JSON values."""
        return json.loads(self._native.stored_values())

    def tool_specs(self) -> list[dict[str, Any]]:
        """The ``exec`` and ``wait`` tools to give a model: ``exec`` is a freeform tool whose
        description explains cells and declares this session's tools in TypeScript."""
        return json.loads(self._native.tool_specs())

    @property
    def runtime(self) -> str | None:
        """Where the session's cells run now (e.g. ``pid 1234``), once one ran."""
        return self._native.runtime()

    @property
    def closed(self) -> bool:
        return self._native.is_closed()

    def delete(self) -> None:
        """Shuts the session down and deletes it from its ``state_dir``: no later process
        takes it back. (``close`` keeps it: it expires a day after it was last written.)"""
        self._native.delete()


class Session(_Base):
    """A session whose calls block (the GIL is released while they wait).

    ``tools`` are functions (sync or async) or ``Tool``\\ s; ``tools_file`` adds the
    command tools and MCP servers of a ``code-mode`` tools file (TOML), and ``builtins``
    the built-ins (``"fs"``, ``"shell"``). Options: ``heap_mb``,
    ``cpu_ms``, ``output_bytes``, ``max_tool_payload_bytes``,
    ``max_in_flight_tool_calls``, ``max_stored_bytes``, ``surface`` (``"contract"`` or
    ``"codex"``), ``hibernate_after_ms`` (``None``: never), ``reuse_isolates``.

    With ``state_dir`` and ``session_id`` the session keeps itself in that directory (SQLite):
    a process started again after a crash opens it with the same id and its running cells
    go on; a call that was in flight at the crash fails (``on_interrupt="fail"``, the
    default) or runs again (``"retry"``), and no call whose answer was kept runs twice.

    A tool with ``approval=True`` (``Tool``) or ``approval = "always"`` (tools file) needs a
    ``state_dir``: each call waits there until a person decides it. The observation of its
    cell ends at once with a line that says which call waits and why; the cell goes on when
    ``approve`` (optionally with edited input) or ``deny`` decides it, here or from any
    process (``code_mode.approve``), and a restarted process finds it waiting still.

    ``in_process=True`` runs the cells on V8 inside this Python process instead of the
    sandboxed runtime process: no process to start or talk to, but nothing between a V8
    crash or a heap bomb and Python. Only a build with the ``in-process`` feature has it
    (``code_mode.IN_PROCESS``); others raise ``RuntimeUnavailable``.
    """

    def __init__(
        self,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        *,
        stored_values: Mapping[str, Any] | None = None,
        runtime: str | os.PathLike[str] | None = None,
        tools_file: str | os.PathLike[str] | None = None,
        builtins: Sequence[str] = (),
        **options: Any,
    ) -> None:
        super().__init__(tools, None, stored_values, runtime, (tools_file, builtins), options)

    def exec(self, source: str, *, yield_time_ms: int | None = None) -> Result:
        """Runs a cell until it completes or yields (its first line may be the
        ``// @exec:`` pragma)."""
        return Result._of(self._native.exec(source, yield_time_ms, _traceparent()))

    def wait(self, cell_id: str, *, yield_time_ms: int | None = None) -> Result:
        """Waits on a running cell until it completes or yields again."""
        return Result._of(self._native.wait(cell_id, yield_time_ms, _traceparent()))

    def terminate(self, cell_id: str) -> Result:
        """Stops a running cell; the result holds what it output and had not returned."""
        return Result._of(self._native.terminate(cell_id, _traceparent()))

    def pending_approvals(self) -> list[Approval]:
        """This session's calls that wait on a person (tools with ``approval=True``, a tools
        file's ``approval = "always"``), oldest first."""
        return Approval._list(self._native.pending_approvals())

    def approve(self, id: str, input: Any = None) -> Approval:
        """Approves this session's waiting call ``id``, once: it runs with its own input, or
        with ``input`` (a JSON value) instead when given; the cell goes on with its answer.
        Raises ``CodeModeError`` when no such call of this session waits. Returns the
        approval as decided."""
        edited = input_json(input) if input is not None else None
        return Approval._one(self._native.decide(id, edited, None))

    def deny(self, id: str, message: str) -> Approval:
        """Denies this session's waiting call ``id``, once: it never runs, and its promise
        rejects with a text that carries ``message`` (the model reads it)."""
        if not isinstance(message, str):
            raise TypeError("message must be a str")
        return Approval._one(self._native.decide(id, None, message))

    def close(self) -> None:
        """Shuts the session down (running cells stop). Idempotent."""
        self._native.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncSession(_Base):
    """A session for asyncio: the same as ``Session``, its calls awaited. Async tools run
    on the event loop the session was opened on; cancelling an ``exec`` terminates its
    cell."""

    def __init__(
        self,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        *,
        stored_values: Mapping[str, Any] | None = None,
        runtime: str | os.PathLike[str] | None = None,
        tools_file: str | os.PathLike[str] | None = None,
        builtins: Sequence[str] = (),
        **options: Any,
    ) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        super().__init__(tools, loop, stored_values, runtime, (tools_file, builtins), options)

    async def _call(self, start: Callable[[_native._Done], Any]) -> Result:
        loop = asyncio.get_running_loop()
        if self._dispatcher.loop is None:
            self._dispatcher.loop = loop
        future: asyncio.Future[tuple[bool, _native._Answer]] = loop.create_future()

        def settle(ok: bool, payload: _native._Answer) -> None:
            if not future.done():
                future.set_result((ok, payload))

        def done(ok: bool, payload: _native._Answer) -> None:  # on a native thread
            loop.call_soon_threadsafe(settle, ok, payload)

        handle = start(done)
        try:
            _, payload = await future
        except asyncio.CancelledError:
            if handle is not None:
                # The cell is terminated; the cancellation ends once it is, so that the
                # caller's next call finds it gone.
                handle.cancel()
                try:
                    await asyncio.shield(future)
                except BaseException:  # noqa: BLE001 - only the wait is of interest
                    pass
            raise
        if isinstance(payload, BaseException):
            raise payload
        return Result._of(payload)

    async def exec(self, source: str, *, yield_time_ms: int | None = None) -> Result:
        """Runs a cell until it completes or yields; cancelling the await terminates it."""
        parent = _traceparent()
        return await self._call(
            lambda done: self._native.exec_async(source, yield_time_ms, done, parent)
        )

    async def wait(self, cell_id: str, *, yield_time_ms: int | None = None) -> Result:
        parent = _traceparent()
        return await self._call(
            lambda done: self._native.wait_async(cell_id, yield_time_ms, done, parent)
        )

    async def terminate(self, cell_id: str) -> Result:
        parent = _traceparent()
        return await self._call(lambda done: self._native.terminate_async(cell_id, done, parent))

    async def pending_approvals(self) -> list[Approval]:
        """This session's calls that wait on a person, oldest first (``Session``'s)."""
        payload = await asyncio.get_running_loop().run_in_executor(None, self._native.pending_approvals)
        return Approval._list(payload)

    async def approve(self, id: str, input: Any = None) -> Approval:
        """Approves this session's waiting call ``id``, once, with ``input`` instead of the
        cell's when given (``Session.approve``)."""
        edited = input_json(input) if input is not None else None
        payload = await asyncio.get_running_loop().run_in_executor(None, self._native.decide, id, edited, None)
        return Approval._one(payload)

    async def deny(self, id: str, message: str) -> Approval:
        """Denies this session's waiting call ``id``, once (``Session.deny``)."""
        if not isinstance(message, str):
            raise TypeError("message must be a str")
        payload = await asyncio.get_running_loop().run_in_executor(None, self._native.decide, id, None, message)
        return Approval._one(payload)

    async def close(self) -> None:
        """Shuts the session down (running cells stop). Idempotent."""
        await asyncio.get_running_loop().run_in_executor(None, self._native.close)

    async def __aenter__(self) -> "AsyncSession":
        if self._dispatcher.loop is None:
            self._dispatcher.loop = asyncio.get_running_loop()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


def run(
    source: str,
    tools: Sequence[Tool | Callable[..., Any]] = (),
    **options: Any,
) -> Result:
    """Runs one cell in a fresh session and returns its result (the session is closed
    after; a cell still running is stopped)."""
    with Session(tools, **options) as session:
        return session.exec(source)


def configure_tracing(
    endpoint: str | None = None,
    *,
    protocol: str | None = None,
    service_name: str | None = None,
) -> bool:
    """Exports the spans of cells and nested calls over OTLP/HTTP: to ``endpoint`` (a base
    URL, ``/v1/traces`` is added) with ``protocol`` (``http/protobuf``, the default, or
    ``http/json``), else as the standard ``OTEL_EXPORTER_OTLP_*`` variables say. Each
    call hangs under the OpenTelemetry span current where it is made. Returns ``False``
    when there is nowhere to send spans. Once per process; what is left is sent at exit.
    """
    configured = _native.configure_tracing(endpoint, protocol, service_name)
    if configured:
        atexit.register(_native.shutdown_tracing)
    return configured


def shutdown_tracing() -> None:
    """Sends the spans not sent yet and stops exporting."""
    _native.shutdown_tracing()
