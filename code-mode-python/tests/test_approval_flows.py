"""A cell's call that waits on a person (issue 86), in each framework's own
human-in-the-loop flow, driven by its offline model: Pydantic AI's deferred tool requests
(`DeferredToolRequests`, decided by the next run's `DeferredToolResults`: approved,
approved with `override_args`, denied), and the OpenAI Agents SDK's run interruptions
(`result.interruptions`, decided through `RunState`: approved, approved with edited
input, rejected). The tool counts its own runs: nothing is sent before an approval."""

import asyncio
import json
import threading

import code_mode

CELL = """
const f = await tools.free({a: 1});
text('free ' + JSON.stringify(f));
try { text('sent ' + JSON.stringify(await tools.send({to: %s}))); }
catch (error) { text('failed ' + String(error)); }
"""

DENIED = "failed denied: the call of `send` was not approved, so it did not run: not to eve"


class Mail:
    """`send` needs an approval, `free` does not; each counts its own runs."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.free_runs = 0
        self.lock = threading.Lock()

    def tools(self) -> list:
        def send(to: str) -> dict:
            """Sends mail."""
            with self.lock:
                self.sent.append(to)
            return {"to": to}

        def free(a: int) -> int:
            """Needs no approval."""
            with self.lock:
                self.free_runs += 1
            return a

        return [code_mode.Tool.from_function(send, approval=True, approval_reason="it sends mail"), free]


async def cell_output(session: code_mode.AsyncSession, cell_id: str) -> list[str]:
    """What a cell output from now until it ends, but the lines that say a call waits."""
    seen: list[str] = []
    for _ in range(600):
        result = await session.wait(cell_id, yield_time_ms=10_000)
        seen.extend(item.text for item in result.items if not item.text.startswith("Waiting for approval:"))
        if not result.running:
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"cell {cell_id} did not end")


def mailing_agent(toolset):
    """A Pydantic AI agent whose FunctionModel mails whom the prompt names in a cell, then
    answers with what `exec` returned."""
    from pydantic_ai import Agent, DeferredToolRequests
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart, UserPromptPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    def model(messages, info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        returns = [part for part in last.parts if isinstance(part, ToolReturnPart)]
        if returns:
            return ModelResponse(parts=[TextPart(content=str(returns[-1].content))])
        prompt = next(part.content for part in last.parts if isinstance(part, UserPromptPart))
        to = prompt.split()[-1]
        return ModelResponse(parts=[ToolCallPart(tool_name="exec", args={"code": CELL % json.dumps(to)})])

    return Agent(FunctionModel(model), toolsets=[toolset], output_type=[str, DeferredToolRequests])


def test_pydantic_ai_defers_a_waiting_call_and_its_results_approve_edit_or_deny_it(tmp_path):
    from pydantic_ai import DeferredToolRequests, DeferredToolResults, ToolApproved, ToolDenied

    from code_mode.pydantic_ai import CodeModeToolset

    mail = Mail()
    toolset = CodeModeToolset(mail.tools(), state_dir=tmp_path, session_id="pydantic")
    agent = mailing_agent(toolset)

    async def deferred(to: str):
        result = await agent.run(f"mail {to}")
        requests = result.output
        assert isinstance(requests, DeferredToolRequests), requests
        (call,) = requests.approvals
        assert call.tool_name == "exec"
        metadata = requests.metadata[call.tool_call_id]
        assert (metadata["tool"], metadata["input"], metadata["reason"], metadata["call_id"]) == (
            "send",
            {"to": to},
            "it sends mail",
            "tool-2",
        )
        assert metadata["code_mode_approval"] in [p.id for p in await toolset.session.pending_approvals()]
        return result, call, metadata

    async def decide(result, call, decision):
        results = DeferredToolResults(approvals={call.tool_call_id: decision})
        return await agent.run(message_history=result.all_messages(), deferred_tool_results=results)

    async def main():
        try:
            asked = await deferred("ada")
            edited = await deferred("bob")
            denied = await deferred("eve")
            assert mail.sent == [], "sent before an approval"
            approved = await decide(asked[0], asked[1], True)
            assert "free 1" in approved.output and 'sent {"to":"ada"}' in approved.output, approved.output
            overridden = await decide(edited[0], edited[1], ToolApproved(override_args={"to": "bob@example.com"}))
            assert 'sent {"to":"bob@example.com"}' in overridden.output, overridden.output
            refused = await decide(denied[0], denied[1], ToolDenied("not to eve"))
            # The model reads the app's message; the cell's call is denied with it, and its
            # cell goes on without it.
            assert refused.output == "not to eve"
            assert await cell_output(toolset.session, denied[2]["cell_id"]) == [DENIED]
            assert await toolset.session.pending_approvals() == []
        finally:
            await toolset.aclose()

    asyncio.run(main())
    assert mail.sent == ["ada", "bob@example.com"]
    # Each model call ran its cell once: the approval's run goes on with the same cell.
    assert mail.free_runs == 3


PYDANTIC_AGENT = r"""
import json, sys, time
from pydantic_ai import DeferredToolRequests
from pydantic_ai.messages import ModelMessagesTypeAdapter
from code_mode.pydantic_ai import CodeModeToolset
from test_approval_flows import Mail, mailing_agent

async def main():
    toolset = CodeModeToolset(Mail().tools(), state_dir=sys.argv[1], session_id="restarted")
    result = await mailing_agent(toolset).run("mail bob")
    assert isinstance(result.output, DeferredToolRequests)
    messages = ModelMessagesTypeAdapter.dump_json(result.all_messages()).decode()
    print(json.dumps({"messages": messages, "metadata": result.output.metadata}), flush=True)
    time.sleep(600)

import asyncio
asyncio.run(main())
"""


def test_pydantic_ai_results_decide_a_call_that_waited_in_a_killed_process(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from pydantic_ai import DeferredToolResults, ToolApproved
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    from code_mode.pydantic_ai import CodeModeToolset

    agent = subprocess.Popen([sys.executable, "-c", PYDANTIC_AGENT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    asked = json.loads(agent.stdout.readline())
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait()

    mail = Mail()
    toolset = CodeModeToolset(mail.tools(), state_dir=tmp_path, session_id="restarted")
    ((call_id, metadata),) = asked["metadata"].items()
    assert (metadata["tool"], metadata["input"]) == ("send", {"to": "bob"})

    async def main():
        try:
            # The app's results carry the request's metadata: the new process's toolset
            # finds the waiting call by it.
            results = DeferredToolResults(
                approvals={call_id: ToolApproved(override_args={"to": "bob@example.com"})},
                metadata=asked["metadata"],
            )
            history = ModelMessagesTypeAdapter.validate_json(asked["messages"])
            return await mailing_agent(toolset).run(message_history=history, deferred_tool_results=results)
        finally:
            await toolset.aclose()

    result = asyncio.run(main())
    assert "free 1" in result.output and 'sent {"to":"bob@example.com"}' in result.output, result.output
    # The cell went on where it waited: `free` ran once (before the kill), `send` once.
    assert mail.sent == ["bob@example.com"] and mail.free_runs == 0


def scripted_model():
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

    class Scripted(Model):
        """Mails whom the prompt names in a cell, then answers with what `exec` returned."""

        async def get_response(self, system_instructions, input, model_settings, tools, *args, **kwargs):
            outputs = [item for item in input if isinstance(item, dict) and item.get("type") == "function_call_output"]
            if not outputs:
                prompt = next(item["content"] for item in input if isinstance(item, dict) and item.get("role") == "user")
                to = prompt.split()[-1]
                code = "text(await tools.free({a: 7}))" if prompt == "no mail" else CELL % json.dumps(to)
                call = ResponseFunctionToolCall(
                    arguments=json.dumps({"code": code}),
                    call_id=f"call_{to}",
                    name="exec",
                    type="function_call",
                    id=f"fc_{to}",
                    status="completed",
                )
                return ModelResponse(output=[call], usage=Usage(), response_id=None)
            text = ResponseOutputText(text=str(outputs[-1]["output"]), type="output_text", annotations=[])
            message = ResponseOutputMessage(
                id="msg_1", content=[text], role="assistant", status="completed", type="message"
            )
            return ModelResponse(output=[message], usage=Usage(), response_id=None)

        def stream_response(self, *args, **kwargs):  # pragma: no cover - not streamed here
            raise NotImplementedError

    return Scripted()


def test_openai_agents_interrupts_on_a_waiting_call_and_its_state_approves_edits_or_rejects_it(tmp_path):
    from agents import Agent, RunConfig, Runner

    from code_mode.agents import approve_with_input, code_mode_tools, waiting_call

    mail = Mail()
    session = code_mode.AsyncSession(mail.tools(), state_dir=tmp_path, session_id="agents")
    agent = Agent(name="mailer", model=scripted_model(), tools=code_mode_tools([], session=session))
    config = RunConfig(tracing_disabled=True)

    async def interrupted(to: str):
        result = await Runner.run(agent, f"mail {to}", run_config=config)
        (item,) = result.interruptions
        assert item.tool_name == "exec"
        call = waiting_call(item)
        assert call is not None
        assert (call.tool, call.input, call.reason, call.call_id) == ("send", {"to": to}, "it sends mail", "tool-2")
        return result.to_state(), item, call

    async def main():
        try:
            asked = await interrupted("ada")
            edited = await interrupted("bob")
            denied = await interrupted("eve")
            assert mail.sent == [], "sent before an approval"
            asked[0].approve(asked[1])
            approved = await Runner.run(agent, asked[0], run_config=config)
            assert "free 1" in approved.final_output and 'sent {"to":"ada"}' in approved.final_output
            approve_with_input(edited[0], edited[1], {"to": "bob@example.com"})
            overridden = await Runner.run(agent, edited[0], run_config=config)
            assert 'sent {"to":"bob@example.com"}' in overridden.final_output, overridden.final_output
            denied[0].reject(denied[1], rejection_message="not to eve")
            refused = await Runner.run(agent, denied[0], run_config=config)
            # The model reads the app's message; the cell's call is denied with it.
            assert refused.final_output == "not to eve"
            assert await cell_output(session, denied[2].cell_id) == [DENIED]
            assert await session.pending_approvals() == []
            # A cell with no call to approve runs while the SDK asks, and its answer is the
            # call's: no interruption, and the cell does not run again.
            plain = await Runner.run(agent, "no mail", run_config=config)
            assert plain.interruptions == [] and "Script completed" in plain.final_output
            assert plain.final_output.endswith("7"), plain.final_output
        finally:
            await session.close()

    asyncio.run(main())
    assert mail.sent == ["ada", "bob@example.com"]
    # Each model call ran its cell once: the approval's run goes on with the same cell.
    assert mail.free_runs == 4


def test_the_approval_examples_run_offline():
    import pathlib
    import subprocess
    import sys

    examples = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"
    expected = {
        "pydantic_ai_approval.py": [
            "waiting: refund {'order': 'A-17', 'amount': 59.75} (it moves money)",
            "refunded A-17: 29.875",
        ],
        "openai_agents_approval.py": [
            "waiting: send_email {'to': 'all@example.com', 'subject': 'Q3 numbers'} (it mails people)",
            "not to the whole company",
            "not mailed: denied: the call of `send_email` was not approved, so it did not run: not to the whole company",
        ],
    }
    for script, lines in expected.items():
        run = subprocess.run([sys.executable, examples / script], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == lines, run.stdout
