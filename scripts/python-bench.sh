#!/usr/bin/env bash
# The Python package's benchmark (benches/python/bench.py): builds the release wheel with
# the `in-process` feature (scripts/python-package.sh release-in-process) and the Rust API's peer (`python_peer`, release), installs
# the wheel and mini-racer (pinned in benches/python/requirements.txt) into a virtualenv
# of their own, and runs the interleaved rounds. Arguments go to bench.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
wheel="$(scripts/python-package.sh release-in-process)"
peer="$(scripts/bench-peer.sh)"
venv=benches/python/.venv
if [ ! -x "$venv/bin/python" ] || ! cmp -s benches/python/requirements.txt "$venv/requirements.installed"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r benches/python/requirements.txt
  cp benches/python/requirements.txt "$venv/requirements.installed"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall "$wheel"
# The peer's runtime is the same release build the wheel ships.
CODE_MODE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/code-mode-bin" "$venv/bin/python" benches/python/bench.py --peer "$peer" "$@"
