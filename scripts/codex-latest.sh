#!/usr/bin/env bash
# Codex's newest release against our host, the day it ships: installs npm's latest
# @openai/codex into a temporary directory (or the version named: codex-latest.sh 0.172.0)
# and runs the Codex front's checks with it in place of the committed oracles (0.169.0 and
# 0.171.0): the differential corpus and the JSON protocol against its own
# codex-code-mode-host, its CLI's turns on our host, and the 0.171 checks (catalog
# revisions, heartbeats, several subscriptions) on both hosts. A failure is drift to look
# at: docs/CODEX.md says which versions are checked.
#
# Needs the network to npm (not run by .ci/run, whose tests use the committed locks).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
version="${1:-latest}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
# No install scripts: the package's binaries are all that is needed.
npm install --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error "@openai/codex@$version"
vendor="$dir/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl"
for binary in codex codex-code-mode-host; do
  if [ ! -x "$vendor/bin/$binary" ]; then
    echo "codex-latest: $vendor/bin/$binary is missing" >&2
    exit 1
  fi
done
installed="$(node -p "require('$dir/node_modules/@openai/codex/package.json').version")"
echo "codex-latest: checking @openai/codex $installed"
if [ -f ../shared/v8/env.sh ]; then
  # shellcheck disable=SC1091
  source ../shared/v8/env.sh
fi
# Both oracles are the newest (the 0.169 and 0.171 checks alike run against it).
export CODE_MODE_CODEX_PACKAGE="$vendor" CODE_MODE_CODEX_LATEST_PACKAGE="$vendor"
cargo build -p code-mode-bin
cargo test -p codex-code-mode-host --test codex -- \
  differential json:: cli:: catalog_revisions heartbeats several_subscriptions
echo "codex-latest: @openai/codex $installed passes the Codex front's checks"
