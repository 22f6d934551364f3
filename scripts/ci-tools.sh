#!/usr/bin/env bash
# Installs the cargo tools CI checks the tree with, pinned here, into target/ci-tools
# (built from crates.io by cargo, like every other dependency):
# - cargo-machete: fails on a dependency a crate declares and never uses.
# Idempotent: a second run with the pinned version installed only checks.
# Prints the directory to put on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD/target/ci-tools"
machete_version=0.9.2
if ! "$root/bin/cargo-machete" --version 2>/dev/null | grep -q "$machete_version"; then
  cargo install --quiet --locked --root "$root" --version "$machete_version" cargo-machete >&2
fi
echo "$root/bin"
