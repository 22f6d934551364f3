"""A Pydantic AI agent in code mode: the model gets `exec` and `wait`, and its cells call
the agent's own Python tools in the sandboxed runtime.

Runs offline: the model is Pydantic AI's FunctionModel, writing the cell a model would.
Put `Agent("openai:gpt-5", toolsets=[toolset])` for a real one.

    pip install 'code-mode-runtime[pydantic-ai]'
    python examples/python/pydantic_ai_agent.py
"""

import asyncio

from pydantic_ai import Agent
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from code_mode.pydantic_ai import CodeModeToolset

ORDERS = {"ada": [12.5, 40.0, 7.25], "alan": [3.0]}


def customers() -> list[str]:
    """Every customer's name."""
    return sorted(ORDERS)


async def orders(customer: str) -> list[float]:
    """The amounts of a customer's orders."""
    await asyncio.sleep(0.01)
    return ORDERS[customer]


CELL = """
const names = await tools.customers();
const totals = await Promise.all(names.map(async (customer) => {
  const amounts = await tools.orders({customer});
  return [customer, amounts.reduce((a, b) => a + b, 0)];
}));
totals.sort((a, b) => b[1] - a[1]);
text(`top customer: ${totals[0][0]} (${totals[0][1]})`);
"""


def model(messages, info: AgentInfo) -> ModelResponse:
    """Writes one cell, then answers with what it printed."""
    returns = [p for m in messages for p in getattr(m, "parts", []) if isinstance(p, ToolReturnPart)]
    if not returns:
        return ModelResponse(parts=[ToolCallPart(tool_name="exec", args={"code": CELL})])
    return ModelResponse(parts=[TextPart(content=returns[-1].content)])


async def main() -> None:
    toolset = CodeModeToolset([customers, orders])
    agent = Agent(FunctionModel(model), toolsets=[toolset])
    try:
        result = await agent.run("Who is our top customer?")
        print(result.output)
    finally:
        await toolset.aclose()


if __name__ == "__main__":
    asyncio.run(main())
