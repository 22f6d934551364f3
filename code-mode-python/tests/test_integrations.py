"""The integrations, each driven by its framework's own offline model: Pydantic AI's
FunctionModel, and a scripted model for the OpenAI Agents SDK (as the SDK's own tests
script theirs)."""

import asyncio
import json

from code_mode.agents import code_mode_tools
from code_mode.pydantic_ai import CodeModeToolset

CELL = "const r = await tools.weather({city: 'Paris'}); text(`${r.city}: ${r.celsius} C`)"


async def weather(city: str) -> dict:
    """Today's weather in a city."""
    return {"city": city, "celsius": 21}


def test_pydantic_ai_runs_the_cell_its_model_writes():
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    seen_tools = []

    def model(messages, info: AgentInfo) -> ModelResponse:
        seen_tools.append(sorted(tool.name for tool in info.function_tools))
        returns = [
            part
            for message in messages
            for part in getattr(message, "parts", [])
            if isinstance(part, ToolReturnPart)
        ]
        if not returns:
            return ModelResponse(parts=[ToolCallPart(tool_name="exec", args={"code": CELL})])
        return ModelResponse(parts=[TextPart(content=f"done: {returns[-1].content}")])

    toolset = CodeModeToolset([weather])

    async def main():
        agent = Agent(FunctionModel(model), toolsets=[toolset])
        try:
            return await agent.run("What is the weather in Paris?")
        finally:
            await toolset.aclose()

    result = asyncio.run(main())
    assert seen_tools[0] == ["exec", "wait"]
    assert "Paris: 21 C" in result.output
    assert result.output.startswith("done: Script completed")


def test_openai_agents_runs_the_cell_its_model_writes():
    from agents import Agent, ModelSettings, RunConfig, Runner
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    class Scripted(Model):
        """Calls `exec` once with the cell, then answers with what it returned."""

        def __init__(self) -> None:
            self.tools_seen = []

        async def get_response(self, system_instructions, input, model_settings, tools, *args, **kwargs):
            self.tools_seen.append(sorted(tool.name for tool in tools))
            outputs = [item for item in input if isinstance(item, dict) and item.get("type") == "function_call_output"]
            if not outputs:
                call = ResponseFunctionToolCall(
                    arguments=json.dumps({"code": CELL}),
                    call_id="call_1",
                    name="exec",
                    type="function_call",
                    id="fc_1",
                    status="completed",
                )
                return ModelResponse(output=[call], usage=Usage(), response_id=None)
            text = ResponseOutputText(text=f"done: {outputs[-1]['output']}", type="output_text", annotations=[])
            message = ResponseOutputMessage(
                id="msg_1", content=[text], role="assistant", status="completed", type="message"
            )
            return ModelResponse(output=[message], usage=Usage(), response_id=None)

        def stream_response(self, *args, **kwargs):  # pragma: no cover - not streamed here
            raise NotImplementedError

    model = Scripted()

    async def main():
        agent = Agent(name="weather", model=model, tools=code_mode_tools([weather]), model_settings=ModelSettings())
        return await Runner.run(agent, "What is the weather in Paris?", run_config=RunConfig(tracing_disabled=True))

    result = asyncio.run(main())
    assert model.tools_seen[0] == ["exec", "wait"]
    assert "Paris: 21 C" in result.final_output
    assert result.final_output.startswith("done: Script completed")


def test_the_examples_run_offline():
    import pathlib
    import subprocess
    import sys

    examples = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"
    expected = {"pydantic_ai_agent.py": "top customer: ada (59.75)", "openai_agents.py": "B2"}
    for script, last_line in expected.items():
        run = subprocess.run([sys.executable, examples / script], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip().splitlines()[-1] == last_line, run.stdout
