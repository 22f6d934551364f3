#!/usr/bin/env bash
# Installs what the tests need beyond cargo, pinned in the repository:
# - the reference MCP servers from npm (code-mode-cli/tests/mcp/package-lock.json, `npm ci`);
# - the official Python MCP SDK and Arize Phoenix (the trace store the trace tests send
#   OTLP to) in one virtualenv (code-mode-cli/tests/mcp/requirements.txt, every package
#   pinned and installed with --no-deps);
# - Codex 0.169.0 from npm, the Codex front's test oracle: its CLI and its own
#   codex-code-mode-host (codex-code-mode-host/tests/codex-npm/package-lock.json, `npm ci`),
#   and 0.171.0's host for what 0.171 added (tests/codex-npm-0171);
# - PostgreSQL's server (Debian's `postgresql`), for the state store tests;
# - the Node package's build and test dependencies from npm (napi-rs's CLI, the AI SDK, the
#   OpenAI Agents SDK, Zod: code-mode-node/package-lock.json, `npm ci --ignore-scripts`).
# Idempotent: a second run with nothing changed only checks. `.ci/run` calls it before the tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../code-mode-cli/tests/mcp"

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "test-deps: \`$1\` is not installed; the MCP tests need it ($2)" >&2
    exit 1
  }
}
need npm "Node.js 18 or later runs the reference MCP servers"
need python3 "Python 3.10 or later runs the official Python MCP SDK client"

# npm: reinstall only when the lock file is newer than what is installed.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

# Python: a virtualenv of our own, rebuilt when the pins change.
if [ ! -x .venv/bin/python ] || ! cmp -s requirements.txt .venv/requirements.installed; then
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements.txt
  .venv/bin/python -c "import mcp, phoenix" # the pins are complete (--no-deps) and import together
  cp requirements.txt .venv/requirements.installed
fi
echo "test-deps: MCP servers (npm), the Python MCP SDK and Arize Phoenix are installed under code-mode-cli/tests/mcp"

# Codex: its Linux binaries come in an optional dependency, installed for this platform.
cd ../../../codex-code-mode-host/tests/codex-npm
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
vendor=node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl
for binary in codex codex-code-mode-host; do
  if [ ! -x "$vendor/bin/$binary" ]; then
    echo "test-deps: $vendor/bin/$binary is missing after npm ci" >&2
    exit 1
  fi
done
echo "test-deps: codex 0.169.0 is installed under codex-code-mode-host/tests/codex-npm"

# Codex 0.171.0's own host, the oracle of what 0.171 added (catalog revisions, heartbeats).
cd ../codex-npm-0171
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
for binary in codex codex-code-mode-host; do
  if [ ! -x "$vendor/bin/$binary" ]; then
    echo "test-deps: codex 0.171.0's $binary is missing under $PWD/$vendor" >&2
    exit 1
  fi
done
echo "test-deps: codex 0.171.0 is installed under codex-code-mode-host/tests/codex-npm-0171"

# PostgreSQL: Debian's server package; the tests start throwaway clusters of their own
# (initdb in a temporary directory, on a Unix socket), never the system's.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test-deps: PostgreSQL's server is not installed; as root: apt-get install postgresql" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >/dev/null
fi
echo "test-deps: PostgreSQL's server is installed ($(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | head -1))"

# The Node package: napi-rs's CLI builds it; ai, @openai/agents and zod are what its tests
# and examples run with. --ignore-scripts: its own `prepare` asks for a built package.
cd ../../../code-mode-node
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
fi
echo "test-deps: the Node package's npm dependencies are installed under code-mode-node"
