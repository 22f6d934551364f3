"""The wheel as a user gets it: installed into a fresh virtualenv with nothing else, it
runs the README's Python example."""

import os
import pathlib
import shutil
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
    Built as maturin builds the extension (it sets `PYO3_ENVIRONMENT_SIGNATURE`); the copied
    runtime is moved away for the build and put back."""
    copied = ROOT / "code-mode-python" / "python" / "code_mode" / "bin"
    away = tmp_path / "bin"
    if copied.exists():
        shutil.move(copied, away)
    try:
        env = dict(os.environ, PYO3_ENVIRONMENT_SIGNATURE="cpython-3.11-64bit")
        build = subprocess.run(
            ["cargo", "build", "--quiet", "-p", "code-mode-python"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        if away.exists():
            shutil.move(away, copied)
    assert build.returncode != 0, build.stderr
    assert "scripts/python-package.sh" in build.stderr, build.stderr
    assert "would not carry the runtime" in build.stderr, build.stderr
