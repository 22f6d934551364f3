"""A Pydantic AI agent in code mode whose tool needs a person's approval: the cell's call
of `refund` waits, the run ends with Pydantic AI's own `DeferredToolRequests`, and the
app's `DeferredToolResults` decide it, here approved with an edited amount
(`ToolApproved(override_args=...)`); `ToolDenied("...")` would deny it. The call is
kept in the session's state directory while it waits, so any process could decide it
(`code_mode.approve(state_dir, id)`), days later.

Runs offline: the model is Pydantic AI's FunctionModel, writing the cell a model would.

    pip install 'code-mode-runtime[pydantic-ai]'
    python examples/python/pydantic_ai_approval.py
"""

import asyncio
import tempfile

from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, ToolApproved
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from code_mode import Tool
from code_mode.pydantic_ai import CodeModeToolset

ORDERS = {"A-17": 59.75, "B-02": 12.5}
REFUNDED: list[tuple[str, float]] = []


def order_total(order: str) -> float:
    """The amount an order was paid."""
    return ORDERS[order]


def refund(order: str, amount: float) -> str:
    """Refunds an amount of an order."""
    REFUNDED.append((order, amount))
    return f"refunded {order}: {amount}"


CELL = """
const total = await tools.order_total({order: 'A-17'});
text(await tools.refund({order: 'A-17', amount: total}));
"""


def model(messages, info: AgentInfo) -> ModelResponse:
    """Writes one cell, then answers with what it printed."""
    returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
    if not returns:
        return ModelResponse(parts=[ToolCallPart(tool_name="exec", args={"code": CELL})])
    return ModelResponse(parts=[TextPart(content=str(returns[-1].content).splitlines()[-1])])


async def main() -> None:
    with tempfile.TemporaryDirectory() as state_dir:
        tools = [order_total, Tool.from_function(refund, approval=True, approval_reason="it moves money")]
        toolset = CodeModeToolset(tools, state_dir=state_dir, session_id="support")
        agent = Agent(FunctionModel(model), toolsets=[toolset], output_type=[str, DeferredToolRequests])
        try:
            result = await agent.run("Refund order A-17.")
            requests = result.output
            assert isinstance(requests, DeferredToolRequests)
            decisions = {}
            for call in requests.approvals:
                waiting = requests.metadata[call.tool_call_id]
                print(f"waiting: {waiting['tool']} {waiting['input']} ({waiting['reason']})")
                assert REFUNDED == []  # nothing runs before a person decides
                # The person approves half the amount.
                edited = dict(waiting["input"], amount=waiting["input"]["amount"] / 2)
                decisions[call.tool_call_id] = ToolApproved(override_args=edited)
            result = await agent.run(
                message_history=result.all_messages(),
                deferred_tool_results=DeferredToolResults(approvals=decisions),
            )
            print(result.output)
        finally:
            await toolset.aclose()


if __name__ == "__main__":
    asyncio.run(main())
