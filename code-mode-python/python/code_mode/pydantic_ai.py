"""Code mode for Pydantic AI: a toolset that gives an agent the ``exec`` and ``wait``
tools over its own Python tools.

>>> from pydantic_ai import Agent
>>> from code_mode.pydantic_ai import CodeModeToolset
>>> agent = Agent("openai:gpt-5", toolsets=[CodeModeToolset([search, fetch])])

The model writes a cell (``const hits = await tools.search({q: "..."}); text(hits[0])``);
the cell runs in the sandboxed runtime and calls ``search`` and ``fetch`` as Python
functions. ``exec``'s description is code mode's own, with the tools declared in
TypeScript. Requires ``pydantic-ai-slim`` (``pip install code-mode-runtime[pydantic-ai]``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from pydantic_ai.toolsets import FunctionToolset

from ._session import AsyncSession
from ._tools import Tool

__all__ = ["CodeModeToolset"]


class CodeModeToolset(FunctionToolset[Any]):
    """A toolset of two tools, ``exec`` and ``wait``, whose cells call ``tools``.

    One ``AsyncSession`` serves every run of the agent (stored values last across runs);
    ``session_options`` are ``AsyncSession``'s (``heap_mb``, ``cpu_ms``, ``surface``,
    ...). ``aclose()`` shuts it down.
    """

    def __init__(
        self,
        tools: Sequence[Tool | Callable[..., Any]],
        *,
        id: str | None = None,
        **session_options: Any,
    ) -> None:
        self.session = AsyncSession(tools, **session_options)
        specs = {spec["name"]: spec for spec in self.session.tool_specs()}
        session = self.session

        async def exec(code: str) -> str:
            result = await session.exec(code)
            return result.model_text

        async def wait(
            cell_id: str,
            yield_time_ms: int | None = None,
            terminate: bool = False,
        ) -> str:
            if terminate:
                result = await session.terminate(cell_id)
            else:
                result = await session.wait(cell_id, yield_time_ms=yield_time_ms)
            return result.model_text

        super().__init__(id=id)
        self.add_function(exec, name="exec", description=specs["exec"]["description"])
        self.add_function(wait, name="wait", description=specs["wait"]["description"])

    async def aclose(self) -> None:
        """Shuts the session down (running cells stop)."""
        await self.session.close()
