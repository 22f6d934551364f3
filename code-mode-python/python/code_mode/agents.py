"""Code mode for the OpenAI Agents SDK: the ``exec`` and ``wait`` tools as
``FunctionTool``\\ s over an agent's own Python tools.

>>> from agents import Agent
>>> from code_mode.agents import code_mode_tools
>>> agent = Agent(name="analyst", tools=code_mode_tools([search, fetch]))

Requires ``openai-agents`` (``pip install code-mode-runtime[openai-agents]``).

A cell's call of a tool that needs a person's approval (``Tool(..., approval=True)``, with
a ``state_dir``) is the SDK's own human-in-the-loop approval: the ``exec`` (or ``wait``)
whose cell waits is a run interruption (``result.interruptions``, a ``ToolApprovalItem``
of ``exec``), and ``waiting_call(item)`` says which call of the cell waits (its tool,
input and reason). ``state = result.to_state()``; ``state.approve(item)`` runs it with its
input, ``approve_with_input(state, item, input)`` with that input instead, and
``state.reject(item, rejection_message=...)`` denies it (it never runs; its promise
rejects with the message, which the model reads as the ``exec``'s answer); then
``Runner.run(agent, state)``. An approved ``exec`` answers with everything the cell
output, before and after its call waited.

The ``exec`` and ``wait`` tools run their cell while the SDK asks whether the call needs
an approval (``needs_approval``): a cell whose call waits on a person is the one that
does. The link between an interruption and its cell is kept in this process; a process
started again decides the call from the store (``code_mode.approve``), and the model
reads on with ``wait``.
"""

from __future__ import annotations

import dataclasses
import json
import weakref
from typing import Any, Callable, Sequence

from agents import FunctionTool, RunContextWrapper
from agents.tool import DEFAULT_APPROVAL_REJECTION_MESSAGE
from agents.tool_context import ToolContext

from ._approvals import Approval
from ._session import AsyncSession, CodeModeError, Result
from ._tools import Tool

__all__ = ["approve_with_input", "code_mode_tools", "waiting_call"]

_EXEC_PARAMETERS = {
    "type": "object",
    "properties": {
        "code": {
            "type": "string",
            "description": "The JavaScript source of the cell (raw source, not a fenced block).",
        }
    },
    "required": ["code"],
    "additionalProperties": False,
}


@dataclasses.dataclass
class _Waiting:
    """An ``exec`` or ``wait`` call of the SDK whose cell waits on a person."""

    tool: str
    call: Approval
    output: str
    """What the model is given before the cell's next observation: the observations so far."""
    edited: Any = None
    """The input ``approve_with_input`` gave, sent instead of the call's."""


class _CodeModeTools:
    """What ``exec`` and ``wait`` share: the session, the answers of calls whose cell ran
    while the SDK asked whether they need an approval, and the calls whose cell waits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.answered: dict[str, Result | BaseException] = {}
        self.waiting: dict[str, _Waiting] = {}
        _REGISTRY.add(self)

    async def deny_rejected(self, ctx: RunContextWrapper[Any]) -> None:
        """The calls the SDK's state rejected are denied in the store too (the SDK answers
        a rejected call itself, without the tool)."""
        for call_id, waiting in list(self.waiting.items()):
            if ctx.is_tool_approved(waiting.tool, call_id) is not False:
                continue
            del self.waiting[call_id]
            message = ctx.get_rejection_message(waiting.tool, call_id) or DEFAULT_APPROVAL_REJECTION_MESSAGE
            try:
                await self.session.deny(waiting.call.id, message)
            except CodeModeError:
                pass  # decided already elsewhere: the cell goes on as decided there

    async def needs_approval(self, tool: str, call_id: str, observe: Callable[[], Any]) -> bool:
        """Runs the call's observation once: whether its cell waits on a person."""
        if call_id in self.waiting or call_id in self.answered:
            return call_id in self.waiting
        try:
            result = await observe()
        except Exception as error:  # the call fails with it when invoked
            self.answered[call_id] = error
            return False
        return await self.settle(tool, call_id, result, "")

    async def settle(self, tool: str, call_id: str, result: Result, before: str) -> bool:
        """Keeps ``result`` as the call's answer, or (``True``) as waiting on a person."""
        if result.running:
            waiting = [item for item in await self.session.pending_approvals() if item.cell_id == result.cell_id]
            if waiting:
                self.waiting[call_id] = _Waiting(tool, waiting[0], before + result.model_text + "\n\n")
                return True
        self.answered[call_id] = dataclasses.replace(result, model_text=before + result.model_text)
        return False

    async def invoke(self, tool: str, ctx: ToolContext[Any], observe: Callable[[], Any]) -> str:
        """The call's answer: the one its approval check kept, or (approved) its waiting
        call approved and the cell observed again, or (never asked) the observation now."""
        await self.deny_rejected(ctx)
        call_id = ctx.tool_call_id
        answered = self.answered.pop(call_id, None)
        if isinstance(answered, BaseException):
            raise answered
        if answered is not None:
            return answered.model_text
        waiting = self.waiting.pop(call_id, None)
        if waiting is None:
            return (await observe()).model_text
        try:
            await self.session.approve(waiting.call.id, waiting.edited)
        except CodeModeError:
            pass  # decided already elsewhere: the cell goes on as decided there
        result = await self.session.wait(waiting.call.cell_id)
        # A cell that waits on another call says so; the model's `wait` then asks for it.
        return waiting.output + result.model_text


_REGISTRY: "weakref.WeakSet[_CodeModeTools]" = weakref.WeakSet()


def _find(item: Any) -> _Waiting | None:
    call_id = getattr(item, "call_id", None)
    for tools in list(_REGISTRY):
        if call_id in tools.waiting:
            return tools.waiting[call_id]
    return None


def waiting_call(item: Any) -> Approval | None:
    """The call of a cell an interruption (``ToolApprovalItem`` of ``exec`` or ``wait``)
    waits on: its tool, input, reason and id; ``None`` for another interruption."""
    waiting = _find(item)
    return waiting.call if waiting is not None else None


def approve_with_input(state: Any, item: Any, input: Any) -> None:
    """Approves interruption ``item`` of ``state`` (``state.approve(item)``) with ``input``
    (a JSON value) sent instead of the waiting call's own: the edited input."""
    waiting = _find(item)
    if waiting is None:
        raise ValueError("the interruption is not a code-mode call waiting on a person")
    waiting.edited = input
    state.approve(item)


def code_mode_tools(
    tools: Sequence[Tool | Callable[..., Any]],
    *,
    session: AsyncSession | None = None,
    **session_options: Any,
) -> list[FunctionTool]:
    """``exec`` and ``wait`` over ``tools``, in one ``AsyncSession`` (``session`` if
    given, else one opened with ``session_options``) that lasts as long as the tools."""
    if session is None:
        session = AsyncSession(tools, **session_options)
    specs = {spec["name"]: spec for spec in session.tool_specs()}
    shared = _CodeModeTools(session)

    def run_exec_of(arguments: dict[str, Any]) -> Callable[[], Any]:
        return lambda: session.exec(arguments["code"])

    def run_wait_of(arguments: dict[str, Any]) -> Callable[[], Any]:
        if arguments.get("terminate"):
            return lambda: session.terminate(arguments["cell_id"])
        return lambda: session.wait(arguments["cell_id"], yield_time_ms=arguments.get("yield_time_ms"))

    def tool_of(name: str, observe_of: Callable[[dict[str, Any]], Callable[[], Any]], **spec: Any) -> FunctionTool:
        # `ToolContext`, not `RunContextWrapper`: the SDK passes the call's id only then.
        async def invoke(ctx: ToolContext[Any], arguments: str) -> str:
            return await shared.invoke(name, ctx, observe_of(json.loads(arguments)))

        async def needs_approval(ctx: RunContextWrapper[Any], params: dict[str, Any], call_id: str) -> bool:
            await shared.deny_rejected(ctx)
            return await shared.needs_approval(name, call_id, observe_of(params))

        async def enabled(ctx: RunContextWrapper[Any], _agent: Any) -> bool:
            await shared.deny_rejected(ctx)
            return True

        return FunctionTool(
            name=name,
            description=specs[name]["description"],
            on_invoke_tool=invoke,
            needs_approval=needs_approval,
            is_enabled=enabled,
            **spec,
        )

    return [
        tool_of("exec", run_exec_of, params_json_schema=_EXEC_PARAMETERS, strict_json_schema=True),
        tool_of("wait", run_wait_of, params_json_schema=specs["wait"]["parameters"], strict_json_schema=False),
    ]
