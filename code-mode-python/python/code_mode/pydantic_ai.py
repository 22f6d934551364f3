"""Code mode for Pydantic AI: a toolset that gives an agent the ``exec`` and ``wait``
tools over its own Python tools.

>>> from pydantic_ai import Agent
>>> from code_mode.pydantic_ai import CodeModeToolset
>>> agent = Agent("openai:gpt-5", toolsets=[CodeModeToolset([search, fetch])])

The model writes a cell (``const hits = await tools.search({q: "..."}); text(hits[0])``);
the cell runs in the sandboxed runtime and calls ``search`` and ``fetch`` as Python
functions. ``exec``'s description is code mode's own, with the tools declared in
TypeScript. Requires ``pydantic-ai-slim`` (``pip install code-mode-runtime[pydantic-ai]``).

A cell's call of a tool that needs a person's approval (``Tool(..., approval=True)``, with
a ``state_dir``) is Pydantic AI's own human-in-the-loop approval: the ``exec`` (or
``wait``) whose cell waits raises ``ApprovalRequired``, so the run ends with
``DeferredToolRequests`` (give the agent ``output_type=[str, DeferredToolRequests]``). Its
``metadata[tool_call_id]`` names the waiting call: ``code_mode_approval`` (its id),
``tool``, ``input``, ``reason``, ``cell_id``, ``call_id``. The next run's
``DeferredToolResults`` decide it: ``True``/``ToolApproved()`` runs it with its input,
``ToolApproved(override_args={...})`` with that input instead (the override is the waiting
call's edited input, not ``exec``'s arguments), ``False``/``ToolDenied(message)`` denies it
(the call never runs; its promise rejects with the message, and the model reads the
message as the ``exec``'s answer). An approved ``exec`` then answers with everything the
cell output, before and after its call waited.

The toolset remembers which run's call waits on which cell. A process that restarts
between the request and the decision (its session kept in ``state_dir``) finds it again
when the results carry the request's metadata: ``DeferredToolResults(approvals=...,
metadata=requests.metadata)``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, Callable, Sequence

from pydantic_ai import RunContext
from pydantic_ai.exceptions import ApprovalRequired, ModelRetry
from pydantic_ai.messages import ModelRequest, ToolReturnPart
from pydantic_ai.toolsets import FunctionToolset
from pydantic_core import ValidationError

from ._approvals import Approval
from ._session import AsyncSession, CodeModeError, Result
from ._tools import Tool

__all__ = ["CodeModeToolset"]

# The key under which validated arguments carry what an approval's ``override_args`` gave
# (the waiting call's edited input), which is not ``exec``'s or ``wait``'s own arguments.
_EDITED = "__code_mode_edited_input__"
_INVALID = "__code_mode_invalid__"
# What the metadata of a deferred request names a waiting call by.
_MARK = "code_mode_approval"


@dataclasses.dataclass(frozen=True)
class _Waiting:
    """A run's call (``exec`` or ``wait``) whose cell waits on a person."""

    approval: str
    cell_id: str
    output: str
    """What the model is given before the cell's next observation: the observations so far."""

    def metadata(self, approval: Approval) -> dict[str, Any]:
        return {
            _MARK: approval.id,
            "tool": approval.tool,
            "input": approval.input,
            "reason": approval.reason,
            "cell_id": approval.cell_id,
            "call_id": approval.call_id,
            "output": self.output,
        }

    @classmethod
    def from_metadata(cls, metadata: Any) -> "_Waiting | None":
        if not isinstance(metadata, dict) or not isinstance(metadata.get(_MARK), str):
            return None
        return cls(metadata[_MARK], str(metadata["cell_id"]), str(metadata.get("output", "")))


class _LenientValidator:
    """``exec``'s or ``wait``'s validator, which lets through an object it refuses, marked:
    an approved call's ``override_args`` are the waiting call's edited input. The toolset
    asks the model to retry any other refused call, with the validator's own message."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def validate_python(self, value: Any, **kwargs: Any) -> Any:
        try:
            return self.inner.validate_python(value, **kwargs)
        except ValidationError as error:
            if not isinstance(value, dict):
                raise
            return {_EDITED: value, _INVALID: str(error)}

    def validate_json(self, value: str | bytes | bytearray, **kwargs: Any) -> Any:
        try:
            return self.inner.validate_json(value, **kwargs)
        except ValidationError as error:
            try:
                parsed = json.loads(value or "{}")
            except ValueError:
                raise error from None
            if not isinstance(parsed, dict):
                raise
            return {_EDITED: parsed, _INVALID: str(error)}


class CodeModeToolset(FunctionToolset[Any]):
    """A toolset of two tools, ``exec`` and ``wait``, whose cells call ``tools``.

    One ``AsyncSession`` serves every run of the agent (stored values last across runs);
    ``session_options`` are ``AsyncSession``'s (``heap_mb``, ``cpu_ms``, ``surface``,
    ``state_dir`` and ``session_id``, ...). ``aclose()`` shuts it down. A cell's call that
    waits on a person becomes a deferred tool request of the run (see the module).
    """

    def __init__(
        self,
        tools: Sequence[Tool | Callable[..., Any]],
        *,
        id: str | None = None,
        **session_options: Any,
    ) -> None:
        self.session = AsyncSession(tools, **session_options)
        self._waiting: dict[str, _Waiting] = {}
        self._messages: list[Any] | None = None
        specs = {spec["name"]: spec for spec in self.session.tool_specs()}
        session = self.session

        async def exec(ctx: RunContext[Any], code: str) -> str:
            resumed = await self._resume(ctx, None)
            if resumed is not None:
                return resumed
            return await self._answer(ctx, await session.exec(code), "")

        async def wait(
            ctx: RunContext[Any],
            cell_id: str,
            yield_time_ms: int | None = None,
            terminate: bool = False,
        ) -> str:
            resumed = await self._resume(ctx, None)
            if resumed is not None:
                return resumed
            if terminate:
                return (await session.terminate(cell_id)).model_text
            return await self._answer(ctx, await session.wait(cell_id, yield_time_ms=yield_time_ms), "")

        super().__init__(id=id)
        self.add_function(exec, name="exec", description=specs["exec"]["description"])
        self.add_function(wait, name="wait", description=specs["wait"]["description"])

    async def for_run(self, ctx: RunContext[Any]) -> "CodeModeToolset":
        # A copy per run (sharing the session and the waiting calls), which keeps the run's
        # messages: when the run ends, the calls its results denied are denied in the store.
        run = copy.copy(self)
        run._messages = None
        return run

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, Any]:
        # Pydantic AI answers a denied call itself, without the tool: the calls a run's
        # results denied are denied in the store before its next model request, and at
        # the latest when the run ends (``__aexit__``).
        self._messages = ctx.messages
        await self._deny_denied()
        tools = await super().get_tools(ctx)
        return {
            name: dataclasses.replace(tool, args_validator=_LenientValidator(tool.args_validator))
            for name, tool in tools.items()
        }

    async def call_tool(self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: Any) -> Any:
        if _EDITED not in tool_args:
            return await super().call_tool(name, tool_args, ctx, tool)
        resumed = await self._resume(ctx, tool_args[_EDITED]) if ctx.tool_call_approved else None
        if resumed is None:
            raise ModelRetry(tool_args[_INVALID])
        return resumed

    async def __aexit__(self, *args: Any) -> bool | None:
        await self._deny_denied()
        return await super().__aexit__(*args)

    async def _deny_denied(self) -> None:
        for message in list(self._messages or ()):
            if not isinstance(message, ModelRequest):
                continue
            for part in message.parts:
                if isinstance(part, ToolReturnPart) and part.outcome == "denied":
                    waiting = self._waiting.pop(part.tool_call_id, None)
                    if waiting is not None:
                        await self._decide(waiting, deny=str(part.content))

    async def _decide(self, waiting: _Waiting, *, deny: str | None = None, input: Any = None) -> None:
        try:
            if deny is not None:
                await self.session.deny(waiting.approval, deny)
            else:
                await self.session.approve(waiting.approval, input)
        except CodeModeError:
            # Decided already (from the store, another process): the cell goes on as
            # decided there, and its next observation says how.
            pass

    async def _resume(self, ctx: RunContext[Any], edited: Any) -> str | None:
        """The answer of an approved call whose cell waited: its waiting call approved
        (with ``edited`` input, when the approval overrode the arguments), then the cell
        observed again. ``None`` for a call that did not wait."""
        if not ctx.tool_call_approved:
            return None
        waiting = self._waiting.pop(ctx.tool_call_id or "", None) or _Waiting.from_metadata(ctx.tool_call_metadata)
        if waiting is None:
            return None
        await self._decide(waiting, input=edited)
        return await self._answer(ctx, await self.session.wait(waiting.cell_id), waiting.output)

    async def _answer(self, ctx: RunContext[Any], result: Result, before: str) -> str:
        """What the model reads of ``result`` (after ``before``), unless the cell waits on a
        person: then the run's call is deferred for approval."""
        output = before + result.model_text
        if not result.running:
            return output
        waiting = [item for item in await self.session.pending_approvals() if item.cell_id == result.cell_id]
        if not waiting:
            return output
        entry = _Waiting(waiting[0].id, result.cell_id, output + "\n\n")
        self._waiting[ctx.tool_call_id or ""] = entry
        raise ApprovalRequired(metadata=entry.metadata(waiting[0]))

    async def aclose(self) -> None:
        """Shuts the session down (running cells stop)."""
        await self.session.close()
