#!/usr/bin/env bash
# The Node package's tests (code-mode-node/test, Node's test runner): builds the tests'
# package (scripts/node-package.sh debug, which needs `cargo build -p code-mode-bin`
# first) and runs them against it, found by its name as an app finds it; the examples
# (examples/node) resolve it, ai and @openai/agents through code-mode-node's node_modules
# (pinned in its package-lock.json, installed by scripts/test-deps.sh). `.ci/run` runs it
# after the Rust tests. Arguments go to `node --test` (e.g. `--test-name-pattern=abort`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The MCP server the tools-file test starts (the CLI's deterministic fixture; after
# `cargo test --workspace` it is built already).
cargo build --quiet -p code-mode-cli --example mcp-fixture
# The addon's own Rust unit tests (`cargo test --workspace` skips the crate: `test = false`).
cargo test --quiet -p code-mode-node --lib
# The runtime as it ships: built alone, without the test crate's hooks, which
# `cargo test --workspace` merges into it.
cargo build --quiet -p code-mode-bin
scripts/node-package.sh debug >/dev/null
ln -sfn ../../code-mode-node/node_modules examples/node/node_modules
cd code-mode-node
# Each test is bounded: a hang fails it rather than stalling the run.
exec node --test --test-concurrency=1 --test-timeout=120000 "$@" test/*.test.mjs
