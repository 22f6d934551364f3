#!/usr/bin/env bash
# The Node package's benchmarks (docs/BENCHMARKS.md, "The Node package"): builds the
# release package (scripts/node-package.sh) and the Rust API's peer (`python_peer`,
# release), installs the pinned alternatives once (`npm ci` in code-mode-node/bench), then
#   scripts/node-bench.sh binding [--rounds 8] [--iterations 60]   the binding ÷ the Rust API
#   scripts/node-bench.sh compare [samples]                         against isolated-vm and QuickJS
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${RUSTY_V8_ARCHIVE:-}" && -f ../shared/v8/env.sh ]]; then
  # shellcheck disable=SC1091
  source ../shared/v8/env.sh
fi
which="${1:-}"
case "$which" in
  binding | compare) shift ;;
  *)
    echo "node-bench: say which: binding or compare" >&2
    exit 2
    ;;
esac
# The package, and code-mode-node/node_modules/code-mode-runtime, which the scripts import.
scripts/node-package.sh >/dev/null
case "$which" in
  binding)
    peer="$(scripts/bench-peer.sh)"
    # The peer's runtime is the one the package ships.
    CODE_MODE_BIN="$PWD/code-mode-node/npm/linux-x64-gnu/bin/code-mode-bin" \
      node code-mode-node/bench/binding.mjs --peer "$peer" "$@"
    ;;
  compare)
    bench=code-mode-node/bench
    if [ ! -f $bench/node_modules/.package-lock.json ] || [ $bench/package-lock.json -nt $bench/node_modules/.package-lock.json ]; then
      (cd $bench && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
    node $bench/compare.mjs "$@"
    ;;
esac
