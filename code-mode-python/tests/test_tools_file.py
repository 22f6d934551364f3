"""A tools file's tools beside the Python functions: a command tool and an MCP server
(the deterministic fixture server of the CLI's tests, over stdio), as the `code-mode` CLI
reads the same file."""

import json
import pathlib

import pytest

import code_mode

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "target" / "debug" / "examples" / "mcp-fixture"


def add(a: int, b: int) -> int:
    """Adds two numbers."""
    return a + b


def tools_file(tmp_path: pathlib.Path) -> pathlib.Path:
    assert FIXTURE.is_file(), f"{FIXTURE} is missing: scripts/python-tests.sh builds it"
    path = tmp_path / "tools.toml"
    path.write_text(
        f'''
[[tool]]
name = "shout"
description = "Upper-cases the text it is given."
command = ["python3", "-c", "import json, sys; print(json.dumps(json.load(sys.stdin)['text'].upper()))"]
[tool.input_schema]
type = "object"
required = ["text"]
[tool.input_schema.properties.text]
type = "string"

[[mcp_server]]
name = "fx"
command = ["{FIXTURE}"]
'''
    )
    return path


def test_command_tools_and_mcp_servers_run_beside_python_tools(tmp_path):
    with code_mode.Session([add], tools_file=tools_file(tmp_path)) as session:
        description = session.tool_specs()[0]["description"]
        assert "shout" in description and "mcp__fx__echo" in description and "add" in description
        result = session.exec(
            """
            text(await tools.shout({text: 'hi'}));
            text(JSON.stringify(await tools.mcp__fx__echo({text: 'from mcp'})));
            text(await tools.add({a: 1, b: 2}));
            """
        )
    lines = result.text.splitlines()
    assert lines[0] == "HI"
    assert "from mcp" in lines[1], lines[1]
    assert lines[2] == "3"


def test_a_bad_tools_file_and_a_name_clash_are_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[tool]]\nname = 'x'\ncommand = 3\n")
    with pytest.raises(ValueError, match="bad.toml"):
        code_mode.Session(tools_file=bad)

    def shout(text: str) -> str:
        """A Python tool with the file's tool's name."""
        return text

    with pytest.raises(ValueError, match="shout"):
        code_mode.Session([shout], tools_file=tools_file(tmp_path))


def test_the_built_ins_are_offered_on_request(tmp_path):
    (tmp_path / "note.txt").write_text("one\ntwo\n")
    with code_mode.Session(builtins=["fs"]) as session:
        result = session.exec(
            f"const r = await tools.read_file({{path: {json.dumps(str(tmp_path / 'note.txt'))}}}); text(JSON.stringify(r))"
        )
    assert "two" in result.text, result
