#!/usr/bin/env bash
# Builds what users install: `codex-code-mode-host`, `code-mode` and `code-mode-bin`, each
# one file, into target/dist/ (or "$CARGO_TARGET_DIR"/dist/).
#
# The `dist` profile (Cargo.toml: link-time optimised, no debug info or symbols), linked
# statically against glibc as a static PIE: the loader maps no shared library and resolves
# no symbol before `main`, which is on every cold start's path (the Codex front forks its
# runtime first thing in `main`). Still position independent, so the kernel places it at a
# random address as before. `--target` keeps the static link to these binaries: without it
# cargo would also build the proc macros and build scripts statically, which rustc refuses.
#
#   scripts/dist.sh                    # all three
#   scripts/dist.sh codex-code-mode-host
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${RUSTY_V8_ARCHIVE:-}" && -f ../shared/v8/env.sh ]]; then
    # shellcheck disable=SC1091
    source ../shared/v8/env.sh
fi
# This machine's own target (glibc's: on a musl target a static link is the default).
target="$(rustc -vV | sed -n 's/^host: //p')"
packages=("$@")
if [[ ${#packages[@]} -eq 0 ]]; then
    packages=(codex-code-mode-host code-mode-cli code-mode-bin)
fi
args=()
for package in "${packages[@]}"; do
    args+=(-p "$package")
done
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --profile dist --target "$target" "${args[@]}"
root="${CARGO_TARGET_DIR:-target}"
mkdir -p "$root/dist"
for package in "${packages[@]}"; do
    case "$package" in
        code-mode-cli) binary=code-mode ;;
        *) binary="$package" ;;
    esac
    cp "$root/$target/dist/$binary" "$root/dist/$binary.tmp"
    mv "$root/dist/$binary.tmp" "$root/dist/$binary"
    echo "$root/dist/$binary"
done
