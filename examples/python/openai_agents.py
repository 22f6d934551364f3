"""An OpenAI Agents SDK agent in code mode: `exec` and `wait` as function tools whose
cells call the agent's own Python tools in the sandboxed runtime.

Runs offline: the model is scripted (it writes one cell, then answers with its output).
Drop `model=` for a real one.

    pip install 'code-mode-runtime[openai-agents]'
    python examples/python/openai_agents.py
"""

import asyncio
import json

from agents import Agent, RunConfig, Runner
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from code_mode.agents import code_mode_tools


def stock(sku: str) -> int:
    """Units in stock for a SKU."""
    return {"A1": 4, "B2": 0, "C3": 17}.get(sku, 0)


CELL = """
const skus = ['A1', 'B2', 'C3'];
const counts = await Promise.all(skus.map((sku) => tools.stock({sku})));
text(skus.filter((_, i) => counts[i] === 0).join(', ') || 'nothing');
"""


class ScriptedModel(Model):
    async def get_response(self, system_instructions, input, model_settings, tools, *args, **kwargs):
        outputs = [i for i in input if isinstance(i, dict) and i.get("type") == "function_call_output"]
        if not outputs:
            call = ResponseFunctionToolCall(
                arguments=json.dumps({"code": CELL}), call_id="call_1", name="exec", type="function_call"
            )
            return ModelResponse(output=[call], usage=Usage(), response_id=None)
        text = ResponseOutputText(text=outputs[-1]["output"], type="output_text", annotations=[])
        message = ResponseOutputMessage(id="m1", content=[text], role="assistant", status="completed", type="message")
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args, **kwargs):
        raise NotImplementedError


async def main() -> None:
    agent = Agent(name="stock", model=ScriptedModel(), tools=code_mode_tools([stock]))
    result = await Runner.run(agent, "What is out of stock?", run_config=RunConfig(tracing_disabled=True))
    print(result.final_output)


if __name__ == "__main__":
    asyncio.run(main())
