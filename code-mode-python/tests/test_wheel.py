"""The wheel as a user gets it: installed into a fresh virtualenv with nothing else, it
runs the README's Python example."""

import os
import pathlib
import re
import subprocess
import sys
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_wheel_in_a_fresh_virtualenv_runs_the_readme_example(tmp_path):
    wheel = os.environ.get("CODE_MODE_WHEEL")
    if not wheel:
        pytest.fail("CODE_MODE_WHEEL is not set: run the tests with scripts/python-tests.sh")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-index", "--disable-pip-version-check", wheel],
        check=True,
    )
    example = tmp_path / "example.py"
    example.write_text(readme_example())
    # Nothing of the build tree: no $CODE_MODE_BIN, and run from elsewhere.
    env = {key: value for key, value in os.environ.items() if key != "CODE_MODE_BIN"}
    run = subprocess.run([python, example], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "3", run.stdout
    assert sys.executable != str(python)


def test_a_wheel_build_without_the_runtime_stops_and_says_what_to_run(tmp_path):
    """`maturin build` (or `pip install ./code-mode-python`) with no runtime copied in stops
    with what to run, instead of making a wheel that installs and fails at its first cell.
    The crate's build script (plain Rust, no dependency) is compiled alone and run as cargo
    runs it, in a directory of its own: as maturin builds (it sets
    `PYO3_ENVIRONMENT_SIGNATURE`) it reports a build error without the runtime, and none
    with it or outside maturin."""
    script = tmp_path / "build-script"
    subprocess.run(
        ["rustc", "--edition", "2024", "-o", script, ROOT / "code-mode-python" / "build.rs"],
        check=True,
        timeout=300,
    )
    crate = tmp_path / "crate"
    crate.mkdir()

    plain = {key: value for key, value in os.environ.items() if key != "PYO3_ENVIRONMENT_SIGNATURE"}

    def build(**env):
        run = subprocess.run([script], cwd=crate, env=dict(plain, **env), capture_output=True, text=True, check=True)
        return [line for line in run.stdout.splitlines() if line.startswith("cargo::error=")]

    under_maturin = {"PYO3_ENVIRONMENT_SIGNATURE": "cpython-3.11-64bit"}
    assert build() == [], "a plain cargo build of the workspace is not checked"
    refused = build(**under_maturin)
    assert len(refused) == 1, refused
    assert "would not carry the runtime" in refused[0], refused
    assert "scripts/python-package.sh" in refused[0], refused
    runtime = crate / "python" / "code_mode" / "bin" / "code-mode-bin"
    runtime.parent.mkdir(parents=True)
    runtime.write_bytes(b"\x7fELF")
    assert len(build(**under_maturin)) == 1, "a runtime that is not executable is no runtime"
    runtime.chmod(0o755)
    assert build(**under_maturin) == []
