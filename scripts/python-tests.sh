#!/usr/bin/env bash
# The Python package's tests (code-mode-python/tests): builds the tests' wheel
# (scripts/python-package.sh debug, which needs `cargo build -p code-mode-bin` first) and
# the CLI's MCP fixture server,
# installs it into the package's pinned virtualenv and runs pytest there, from the tests'
# directory so that `import code_mode` is the installed wheel. `.ci/run` runs it after the
# Rust tests. Arguments go to pytest (e.g. `-k crash`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The MCP server the tools-file test starts (the CLI's deterministic fixture; after
# `cargo test --workspace` it is built already).
cargo build --quiet -p code-mode-cli --example mcp-fixture
wheel="$(scripts/python-package.sh debug)"
cd code-mode-python
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$wheel"
cd tests
CODE_MODE_WHEEL="$wheel" exec ../.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
