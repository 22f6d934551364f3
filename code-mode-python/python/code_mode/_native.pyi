"""Type stubs of the native module (`code-mode-python/src`). The API is `code_mode`'s;
this module is its native half."""

from typing import Any, Callable, Protocol

__version__: str
IN_PROCESS: bool

class CodeModeError(Exception): ...
class RuntimeUnavailable(CodeModeError): ...
class RuntimeLost(CodeModeError): ...
class SessionClosed(CodeModeError): ...
class CellError(CodeModeError): ...
class LimitExceeded(CellError): ...

class _Dispatcher(Protocol):
    def run_sync(self, name: str, input_json: str | None, cell_id: str) -> tuple[bool, str]: ...
    def dispatch(self, token: int, name: str, input_json: str | None, cell_id: str) -> None: ...
    def cancel(self, token: int) -> None: ...

class Item:
    """One content item: ``kind`` is ``input_text`` (``text``), ``input_image``
    (``image_url``, ``detail``) or ``input_audio`` (``audio_url``); the other fields are
    ``None``."""

    kind: str
    text: str | None
    image_url: str | None
    detail: str | None
    audio_url: str | None

class Response:
    """What one observation of a cell answered, typed: ``kind`` is ``result``, ``yielded``
    or ``terminated``; ``model_items`` the answer as a model reads it."""

    cell_id: str
    kind: str
    content_items: list[Item]
    error_text: str | None
    failure: str | None
    missing_cell: bool
    wall_time_ms: float
    model_items: list[Item]

# An async call's answer: the response, or (``ok`` false) the exception of its error.
_Answer = Response | BaseException
_Done = Callable[[bool, _Answer], None]

class ExecHandle:
    def cancel(self) -> None: ...

class Options:
    """A session's options, typed (each ``None`` is the default)."""

    heap_mb: int | None
    cpu_ms: int | None
    output_bytes: int | None
    max_tool_payload_bytes: int | None
    max_in_flight_tool_calls: int | None
    max_stored_bytes: int | None
    surface: str | None
    hibernate_after_ms: int | None
    never_hibernate: bool
    reuse_isolates: bool | None
    def __init__(
        self,
        *,
        heap_mb: int | None = None,
        cpu_ms: int | None = None,
        output_bytes: int | None = None,
        max_tool_payload_bytes: int | None = None,
        max_in_flight_tool_calls: int | None = None,
        max_stored_bytes: int | None = None,
        surface: str | None = None,
        hibernate_after_ms: int | None = None,
        never_hibernate: bool = False,
        reuse_isolates: bool | None = None,
    ) -> None: ...

class NativeSession:
    def __init__(
        self,
        dispatcher: _Dispatcher,
        tools: str,
        options: Options,
        stored: str | None = None,
        runtime: str | None = None,
        tools_file: str | None = None,
        builtins: list[str] = ...,
        state: tuple[str, str, bool] | None = None,
        in_process: bool = False,
    ) -> None: ...
    def exec(self, source: str, yield_time_ms: int | None = None, traceparent: str | None = None) -> Response: ...
    def exec_async(
        self, source: str, yield_time_ms: int | None, done: _Done, traceparent: str | None = None
    ) -> ExecHandle: ...
    def wait(self, cell_id: str, yield_time_ms: int | None = None, traceparent: str | None = None) -> Response: ...
    def wait_async(
        self, cell_id: str, yield_time_ms: int | None, done: _Done, traceparent: str | None = None
    ) -> None: ...
    def terminate(self, cell_id: str, traceparent: str | None = None) -> Response: ...
    def terminate_async(self, cell_id: str, done: _Done, traceparent: str | None = None) -> None: ...
    def stored_values(self) -> str: ...
    def answer(self, token: int, ok: bool, text: str) -> bool: ...
    def tool_specs(self) -> str: ...
    def runtime(self) -> str | None: ...
    def pending_approvals(self) -> str: ...
    def decide(self, id: str, input: str | None = None, deny: str | None = None) -> str: ...
    def close(self) -> None: ...
    def delete(self) -> None: ...
    def is_closed(self) -> bool: ...

def kept_sessions(dir: str, runtime: str | None = None) -> list[str]: ...
def pending_approvals(dir: str, session: str | None = None, front: str | None = None) -> str: ...
def decide_approval(dir: str, id: str, input: str | None = None, deny: str | None = None) -> str: ...

def configure_tracing(
    endpoint: str | None = None, protocol: str | None = None, service_name: str | None = None
) -> bool: ...
def shutdown_tracing() -> None: ...
