"""Code mode for the OpenAI Agents SDK: the ``exec`` and ``wait`` tools as
``FunctionTool``\\ s over an agent's own Python tools.

>>> from agents import Agent
>>> from code_mode.agents import code_mode_tools
>>> agent = Agent(name="analyst", tools=code_mode_tools([search, fetch]))

Requires ``openai-agents`` (``pip install code-mode-runtime[openai-agents]``).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from agents import FunctionTool, RunContextWrapper

from ._session import AsyncSession
from ._tools import Tool

__all__ = ["code_mode_tools"]

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

    async def run_exec(_: RunContextWrapper[Any], arguments: str) -> str:
        code = json.loads(arguments)["code"]
        return (await session.exec(code)).model_text

    async def run_wait(_: RunContextWrapper[Any], arguments: str) -> str:
        args = json.loads(arguments)
        if args.get("terminate"):
            result = await session.terminate(args["cell_id"])
        else:
            result = await session.wait(args["cell_id"], yield_time_ms=args.get("yield_time_ms"))
        return result.model_text

    return [
        FunctionTool(
            name="exec",
            description=specs["exec"]["description"],
            params_json_schema=_EXEC_PARAMETERS,
            on_invoke_tool=run_exec,
            strict_json_schema=True,
        ),
        FunctionTool(
            name="wait",
            description=specs["wait"]["description"],
            params_json_schema=specs["wait"]["parameters"],
            on_invoke_tool=run_wait,
            strict_json_schema=False,
        ),
    ]
