#!/usr/bin/env bash
# Builds the Rust API's side of the packages' benchmarks (`python_peer`, benches/python_peer.rs,
# release) and prints its executable's path: scripts/python-bench.sh and
# scripts/node-bench.sh run it between their own rounds. Cargo's errors go to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo bench --quiet -p code-mode-benches --bench python_peer --no-run --message-format=json |
  python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])'
