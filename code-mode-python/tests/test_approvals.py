"""Calls that wait on a person (issue 86), on a real state directory: a call of a tool
declared with `approval=True` (or a tools file's `approval = "always"`) never runs before
someone approves it; it is listed with its exact input and reason; approved it runs once
with the input approved (edited or not), denied it never runs and its promise rejects with
the approver's message; a decision is taken once. Decided through `Session` and
`AsyncSession`, through the store-level functions, and from another process while this
one holds the session. The frameworks' own flows are in test_approval_flows.py."""

import asyncio
import json
import pathlib
import subprocess
import sys
import time

import pytest

import code_mode
from test_approval_flows import Mail

WAITING = "Waiting for approval: `send` (call tool-2), because: it sends mail. The cell goes on when a person decides."

# A cell that calls `free` (no approval), then `send` (approval), and prints either.
CELL = """
const f = await tools.free({a: 1});
text('free ' + JSON.stringify(f));
try { text('sent ' + JSON.stringify(await tools.send({to: %s}))); }
catch (error) { text('failed ' + String(error)); }
"""


def texts_until_done(session: code_mode.Session, cell_id: str) -> list[str]:
    """Waits on a cell until it ends: what it output, but the lines that say a call waits."""
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        result = session.wait(cell_id, yield_time_ms=10_000)
        seen.extend(item.text for item in result.items if not item.text.startswith("Waiting for approval:"))
        if not result.running:
            assert result.error is None, result
            return seen
        assert time.monotonic() < deadline, f"cell {cell_id} did not end"
        time.sleep(0.02)


async def texts_until_done_async(session: code_mode.AsyncSession, cell_id: str) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        result = await session.wait(cell_id, yield_time_ms=10_000)
        seen.extend(item.text for item in result.items if not item.text.startswith("Waiting for approval:"))
        if not result.running:
            assert result.error is None, result
            return seen
        assert time.monotonic() < deadline, f"cell {cell_id} did not end"
        await asyncio.sleep(0.02)


def start(session: code_mode.Session, to: str) -> code_mode.Result:
    """Starts a cell whose `send` waits: its hour-long observation ends at once."""
    began = time.monotonic()
    result = session.exec(CELL % json.dumps(to), yield_time_ms=3_600_000)
    assert time.monotonic() - began < 60
    assert result.running, result
    assert [item.text for item in result.items] == ["free 1", WAITING]
    assert WAITING in result.model_text
    return result


def test_a_session_approves_as_asked_approves_edited_and_denies_and_nothing_runs_before(tmp_path):
    mail = Mail()
    with code_mode.Session(mail.tools(), state_dir=tmp_path, session_id="s") as session:
        asked, edited, denied = (start(session, to) for to in ("ada", "bob", "eve"))
        assert mail.sent == [], "sent before an approval"
        assert mail.free_runs == 3

        pending = session.pending_approvals()
        assert [(p.tool, p.input, p.reason, p.cell_id, p.call_id, p.state) for p in pending] == [
            ("send", {"to": "ada"}, "it sends mail", asked.cell_id, "tool-2", "pending"),
            ("send", {"to": "bob"}, "it sends mail", edited.cell_id, "tool-2", "pending"),
            ("send", {"to": "eve"}, "it sends mail", denied.cell_id, "tool-2", "pending"),
        ]
        assert all(p.session == "s" and p.front == "python" and p.waiting_line == WAITING for p in pending)
        assert all(p.age.total_seconds() >= 0 and p.requested_at.tzinfo is not None for p in pending)
        # A wait while it still waits returns at once, with the line again.
        assert [item.text for item in session.wait(asked.cell_id, yield_time_ms=3_600_000).items] == [WAITING]

        ids = [p.id for p in pending]
        # The approval as read right after the decision: approved, or taken to be sent
        # already by the process that holds the call (this one).
        assert session.approve(ids[0]).state in ("approved", "sending")
        assert texts_until_done(session, asked.cell_id) == ['sent {"to":"ada"}']
        assert session.approve(ids[1], {"to": "bob@example.com"}).state in ("approved", "sending")
        assert texts_until_done(session, edited.cell_id) == ['sent {"to":"bob@example.com"}']
        assert session.deny(ids[2], "not to eve").state in ("denied", "told")
        assert texts_until_done(session, denied.cell_id) == [
            "failed denied: the call of `send` was not approved, so it did not run: not to eve"
        ]
        # Each approved call ran once, with the input approved; the denied one never.
        assert mail.sent == ["ada", "bob@example.com"]
        assert session.pending_approvals() == []
        # A decision is taken once.
        for id in ids:
            with pytest.raises(code_mode.CodeModeError, match="is waiting"):
                session.approve(id)
        assert mail.sent == ["ada", "bob@example.com"]


def test_an_async_session_approves_as_asked_approves_edited_and_denies(tmp_path):
    mail = Mail()

    async def main() -> list[str]:
        async with code_mode.AsyncSession(mail.tools(), state_dir=tmp_path, session_id="a") as session:
            cells = []
            for to in ("ada", "bob", "eve"):
                result = await session.exec(CELL % json.dumps(to), yield_time_ms=3_600_000)
                assert result.running and [item.text for item in result.items] == ["free 1", WAITING]
                cells.append(result.cell_id)
            assert mail.sent == [], "sent before an approval"
            pending = await session.pending_approvals()
            assert [(p.input, p.cell_id) for p in pending] == [
                ({"to": "ada"}, cells[0]),
                ({"to": "bob"}, cells[1]),
                ({"to": "eve"}, cells[2]),
            ]
            await session.approve(pending[0].id)
            await session.approve(pending[1].id, input={"to": "bob@example.com"})
            await session.deny(pending[2].id, "not to eve")
            with pytest.raises(code_mode.CodeModeError, match="is waiting"):
                await session.deny(pending[2].id, "twice")
            return [text for cell in cells for text in await texts_until_done_async(session, cell)]

    outputs = asyncio.run(main())
    assert outputs == [
        'sent {"to":"ada"}',
        'sent {"to":"bob@example.com"}',
        "failed denied: the call of `send` was not approved, so it did not run: not to eve",
    ]
    assert mail.sent == ["ada", "bob@example.com"]


def test_the_store_level_functions_list_and_decide_any_sessions_calls(tmp_path):
    mail = Mail()
    with (
        code_mode.Session(mail.tools(), state_dir=tmp_path, session_id="one") as one,
        code_mode.Session(mail.tools(), state_dir=tmp_path, session_id="two") as two,
    ):
        first, second, third = start(one, "ada"), start(two, "bob"), start(two, "eve")
        everyone = code_mode.pending_approvals(tmp_path)
        assert [(p.session, p.input) for p in everyone] == [
            ("one", {"to": "ada"}),
            ("two", {"to": "bob"}),
            ("two", {"to": "eve"}),
        ]
        assert [p.input for p in code_mode.pending_approvals(tmp_path, session_id="two")] == [
            {"to": "bob"},
            {"to": "eve"},
        ]
        assert code_mode.pending_approvals(tmp_path, front="jsonl") == []
        # A session decides only its own calls.
        with pytest.raises(code_mode.CodeModeError, match="is waiting"):
            one.approve(everyone[1].id)
        assert mail.sent == []

        code_mode.approve(tmp_path, everyone[0].id)
        code_mode.approve(tmp_path, everyone[1].id, input={"to": "bob@example.com"})
        code_mode.deny(tmp_path, everyone[2].id, "not to eve")
        assert texts_until_done(one, first.cell_id) == ['sent {"to":"ada"}']
        assert texts_until_done(two, second.cell_id) == ['sent {"to":"bob@example.com"}']
        assert texts_until_done(two, third.cell_id) == [
            "failed denied: the call of `send` was not approved, so it did not run: not to eve"
        ]
        with pytest.raises(code_mode.CodeModeError, match="is waiting"):
            code_mode.approve(tmp_path, everyone[2].id)
        assert code_mode.pending_approvals(tmp_path) == []
    assert mail.sent == ["ada", "bob@example.com"]


APPROVER = """
import json, sys
import code_mode
state_dir, action = sys.argv[1], sys.argv[2]
pending = code_mode.pending_approvals(state_dir, session_id="held")
print(json.dumps([[p.tool, p.input] for p in pending]), flush=True)
if action == "approve":
    code_mode.approve(state_dir, pending[0].id, input={"to": "bob@example.com"})
else:
    code_mode.deny(state_dir, pending[0].id, "no, from afar")
"""


def test_another_process_decides_while_this_one_holds_the_session(tmp_path):
    mail = Mail()
    with code_mode.Session(mail.tools(), state_dir=tmp_path, session_id="held") as session:
        for action, expected in (
            ("approve", 'sent {"to":"bob@example.com"}'),
            ("deny", "failed denied: the call of `send` was not approved, so it did not run: no, from afar"),
        ):
            cell = start(session, "bob")
            approver = subprocess.run(
                [sys.executable, "-c", APPROVER, str(tmp_path), action],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert approver.returncode == 0, approver.stderr
            assert json.loads(approver.stdout) == [["send", {"to": "bob"}]]
            # The holder learns of the other process's decision at its next look.
            assert texts_until_done(session, cell.cell_id) == [expected]
    assert mail.sent == ["bob@example.com"]


def test_nothing_is_sent_without_an_approval_by_the_tools_own_count(tmp_path):
    mail = Mail()
    with code_mode.Session(mail.tools(), state_dir=tmp_path, session_id="count") as session:
        cells = [start(session, f"n{n}").cell_id for n in range(5)]
        # Cells that wait cost nothing and run nothing: later observations, a while after.
        time.sleep(0.5)
        for cell in cells:
            assert [item.text for item in session.wait(cell, yield_time_ms=200).items] == [WAITING]
        assert mail.sent == []
        pending = session.pending_approvals()
        assert len(pending) == 5
        for approval in pending[1:]:
            session.deny(approval.id, "no")
        for cell in cells[1:]:
            texts_until_done(session, cell)
        assert mail.sent == []
        session.approve(pending[0].id)
        texts_until_done(session, cells[0])
        assert mail.sent == ["n0"]


def test_a_tools_file_tool_with_approval_always_waits_in_a_python_session(tmp_path):
    log = tmp_path / "sent.log"
    tools = tmp_path / "tools.toml"
    tools.write_text(
        f"""
[[tool]]
name = "post"
description = "Posts a message."
command = ["python3", "-c", "import sys; open({str(log)!r}, 'a').write(sys.stdin.read() + chr(10)); print('1')"]
approval = "always"
approval_reason = "it posts in public"
"""
    )
    line = "Waiting for approval: `post` (call tool-1), because: it posts in public. The cell goes on when a person decides."
    with code_mode.Session(tools_file=tools, state_dir=tmp_path / "state", session_id="f") as session:
        cell = session.exec("text('posted ' + await tools.post({text: 'hi'}))", yield_time_ms=3_600_000)
        assert cell.running and [item.text for item in cell.items] == [line]
        assert not log.exists(), "posted before an approval"
        (pending,) = session.pending_approvals()
        assert (pending.tool, pending.input, pending.reason) == ("post", {"text": "hi"}, "it posts in public")
        session.approve(pending.id, {"text": "hello"})
        assert texts_until_done(session, cell.cell_id) == ["posted 1"]
    assert [json.loads(entry) for entry in log.read_text().splitlines()] == [{"text": "hello"}]


def test_tools_that_need_approvals_need_a_state_dir(tmp_path):
    mail = Mail()
    with pytest.raises(ValueError, match="approvals are kept in a state store, so give state_dir"):
        code_mode.Session(mail.tools())
    tools = tmp_path / "tools.toml"
    tools.write_text('[[tool]]\nname = "post"\ncommand = "true"\napproval = "always"\n')
    with pytest.raises(ValueError, match="approvals are kept in a state store, so give state_dir"):
        code_mode.Session(tools_file=tools)
    with pytest.raises(ValueError, match='approval must be True, False, "always" or "never"'):
        code_mode.Tool.from_function(lambda: None, approval="sometimes")
    # A session without tools that need approvals has none waiting, and none to decide.
    with code_mode.Session() as session:
        assert session.pending_approvals() == []
        with pytest.raises(code_mode.CodeModeError, match="is waiting"):
            session.approve("nope")


AGENT = r"""
import json, sys, time
import code_mode

state_dir, log = sys.argv[1], sys.argv[2]


def send(to: str) -> dict:
    with open(log, "a") as file:
        file.write(to + "\n")
    return {"to": to}


def free(a: int) -> int:
    return a


tools = [code_mode.Tool.from_function(send, approval=True, approval_reason="it sends mail"), free]
session = code_mode.Session(tools, state_dir=state_dir, session_id="kept")
cells = [session.exec(CELL % json.dumps(to), yield_time_ms=3_600_000).cell_id for to in ("ada", "bob", "eve")]
print(json.dumps(cells), flush=True)
time.sleep(600)
"""


def test_waiting_calls_outlive_a_killed_process_and_are_decided_in_the_next(tmp_path):
    import os
    import signal

    state_dir, log = tmp_path / "state", tmp_path / "sent.log"
    agent = subprocess.Popen(
        [sys.executable, "-c", f"CELL = {CELL!r}\n" + AGENT, str(state_dir), str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    cells = json.loads(agent.stdout.readline())
    assert [p.input for p in code_mode.pending_approvals(state_dir)] == [{"to": "ada"}, {"to": "bob"}, {"to": "eve"}]
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait()

    # Listed still, and decided before any process holds the session again.
    pending = code_mode.pending_approvals(state_dir, session_id="kept")
    assert [p.input for p in pending] == [{"to": "ada"}, {"to": "bob"}, {"to": "eve"}]
    code_mode.approve(state_dir, pending[0].id, input={"to": "ada@example.com"})
    mail = Mail()
    with code_mode.Session(mail.tools(), state_dir=state_dir, session_id="kept") as session:
        assert [p.id for p in session.pending_approvals()] == [p.id for p in pending[1:]]
        session.approve(pending[1].id)
        session.deny(pending[2].id, "not to eve")
        outputs = [texts_until_done(session, cell) for cell in cells]
    assert outputs == [
        ['sent {"to":"ada@example.com"}'],
        ['sent {"to":"bob"}'],
        ["failed denied: the call of `send` was not approved, so it did not run: not to eve"],
    ]
    # Sent once each, by the process that holds the session; never by the killed one.
    assert mail.sent == ["ada@example.com", "bob"]
    assert not log.exists()


def test_once_approved_the_next_observation_waits_for_the_call_and_does_not_say_it_waits(tmp_path):
    mail = Mail()
    with code_mode.Session(mail.tools(), state_dir=tmp_path, session_id="next") as session:
        # Many times over: a decision and the observation right after it once raced.
        for n in range(20):
            cell = start(session, f"n{n}")
            (waiting,) = session.pending_approvals()
            session.approve(waiting.id)
            after = session.wait(cell.cell_id, yield_time_ms=60_000)
            assert not after.running, after
            assert [item.text for item in after.items] == [f'sent {{"to":"n{n}"}}']
    assert mail.sent == [f"n{n}" for n in range(20)]
