"""An OpenAI Agents SDK agent in code mode whose tool needs a person's approval: the
cell's call of `send_email` waits, the run stops with an interruption (the SDK's own
human-in-the-loop flow), and the app approves or rejects it through `RunState`, here
rejected with a message the model reads (`state.approve(item)` would let it run,
`approve_with_input(state, item, {...})` with edited input). The call is kept in the
session's state directory while it waits, so any process could decide it
(`code_mode.deny(state_dir, id, message)`), days later.

Runs offline: the model is scripted (it writes one cell, then answers with its output).

    pip install 'code-mode-runtime[openai-agents]'
    python examples/python/openai_agents_approval.py
"""

import asyncio
import json
import tempfile

from agents import Agent, RunConfig, Runner
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from code_mode import AsyncSession, Tool
from code_mode.agents import code_mode_tools, waiting_call

SENT: list[str] = []


def send_email(to: str, subject: str) -> str:
    """Sends an email."""
    SENT.append(to)
    return "sent"


CELL = """
try {
  await tools.send_email({to: 'all@example.com', subject: 'Q3 numbers'});
  text('mailed everyone');
} catch (error) {
  text('not mailed: ' + String(error));
}
"""


class ScriptedModel(Model):
    async def get_response(self, system_instructions, input, model_settings, tools, *args, **kwargs):
        outputs = [i for i in input if isinstance(i, dict) and i.get("type") == "function_call_output"]
        if not outputs:
            call = ResponseFunctionToolCall(
                arguments=json.dumps({"code": CELL}), call_id="call_1", name="exec", type="function_call"
            )
            return ModelResponse(output=[call], usage=Usage(), response_id=None)
        text = ResponseOutputText(text=str(outputs[-1]["output"]), type="output_text", annotations=[])
        message = ResponseOutputMessage(id="m1", content=[text], role="assistant", status="completed", type="message")
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args, **kwargs):
        raise NotImplementedError


async def main() -> None:
    with tempfile.TemporaryDirectory() as state_dir:
        tool = Tool.from_function(send_email, approval=True, approval_reason="it mails people")
        session = AsyncSession([tool], state_dir=state_dir, session_id="mailer")
        agent = Agent(name="mailer", model=ScriptedModel(), tools=code_mode_tools([], session=session))
        config = RunConfig(tracing_disabled=True)
        try:
            result = await Runner.run(agent, "Mail the Q3 numbers to everyone.", run_config=config)
            state = result.to_state()
            for item in result.interruptions:
                call = waiting_call(item)
                print(f"waiting: {call.tool} {call.input} ({call.reason})")
                assert SENT == []  # nothing runs before a person decides
                state.reject(item, rejection_message="not to the whole company")
            result = await Runner.run(agent, state, run_config=config)
            print(result.final_output)
            # The cell went on without the call: its promise rejected with the message.
            while True:
                cell = await session.wait(call.cell_id)
                for item in cell.items:
                    if not item.text.startswith("Waiting for approval"):
                        print(item.text)
                if not cell.running:
                    break
        finally:
            await session.close()


if __name__ == "__main__":
    asyncio.run(main())
