#!/usr/bin/env bash
# Builds the Python package's wheel (code-mode-python → code-mode-python/dist/*.whl) with
# maturin from the pinned virtualenv (code-mode-python/.venv, made from
# requirements-test.txt, every package pinned and installed with --no-deps; rebuilt when
# the pins change). The wheel ships the runtime executable, stripped, beside the extension.
#   scripts/python-package.sh          the wheel users install: the release runtime,
#                                      stripped (what the `dist` profile would give), and a
#                                      release extension (builds the runtime if need be)
#   scripts/python-package.sh release-in-process
#                                      the same with the `in-process` feature (V8 in the
#                                      extension too: for the benchmark, or to build your own)
#   scripts/python-package.sh debug    the tests' wheel, from target/debug (quicker), with
#                                      the `in-process` feature (V8 in the extension too,
#                                      so `in_process=True` is tested; too big to ship)
# Prints the wheel's path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode="${1:-release}"
target="${CARGO_TARGET_DIR:-$PWD/target}"

command -v python3 >/dev/null || {
  echo "python-package: python3 (3.10 or later) is not installed" >&2
  exit 1
}
case "$mode" in
  release | release-in-process)
    cargo build --quiet --release -p code-mode-bin
    runtime="$target/release/code-mode-bin"
    release=(--release)
    features=()
    [ "$mode" = release ] || features=(--features in-process)
    ;;
  debug)
    runtime="$target/debug/code-mode-bin"
    release=()
    features=(--features in-process)
    [ -x "$runtime" ] || {
      echo "python-package: $runtime is missing; run \`cargo build -p code-mode-bin\` first" >&2
      exit 1
    }
    ;;
  *)
    echo "python-package: unknown mode $mode (release, release-in-process or debug)" >&2
    exit 2
    ;;
esac

cd code-mode-python
venv=.venv
if [ ! -x "$venv/bin/python" ] || ! cmp -s requirements-test.txt "$venv/requirements.installed"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r requirements-test.txt
  "$venv/bin/python" -c "import maturin, pytest, pydantic, pydantic_ai, agents"
  cp requirements-test.txt "$venv/requirements.installed"
fi

mkdir -p python/code_mode/bin
strip -o python/code_mode/bin/code-mode-bin "$runtime"
rm -rf dist
"$venv/bin/maturin" build --quiet "${release[@]}" "${features[@]}" --out dist --interpreter "$venv/bin/python" >&2
ls "$PWD"/dist/*.whl
