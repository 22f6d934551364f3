#!/usr/bin/env bash
# Builds the Node package (code-mode-node → code-mode-node/dist/*.tgz): the platform
# package code-mode-runtime-linux-x64-gnu (the napi-rs addon and the runtime executable,
# stripped) and code-mode-runtime (the API, which finds the platform package as an
# optional dependency). napi-rs's CLI comes from code-mode-node/package-lock.json
# (`npm ci`, pinned), and writes native.cjs and native.d.ts (the TypeScript declarations)
# from the Rust side.
#   scripts/node-package.sh          what users install: the runtime as scripts/dist.sh
#                                    builds it (a static PIE, link-time optimised) and the
#                                    addon in the same `dist` profile (builds both if need be)
#   scripts/node-package.sh debug    the tests' package, from target/debug (quicker; needs
#                                    `cargo build -p code-mode-bin` first)
# Install both: npm install code-mode-node/dist/*.tgz. Prints the tarballs' paths.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode="${1:-release}"
target="${CARGO_TARGET_DIR:-$PWD/target}"

command -v npm >/dev/null || {
  echo "node-package: npm (Node.js 20 or later) is not installed" >&2
  exit 1
}
case "$mode" in
  release)
    scripts/dist.sh code-mode-bin >&2
    runtime="$target/dist/code-mode-bin"
    release=(--profile dist)
    ;;
  debug)
    runtime="$target/debug/code-mode-bin"
    release=()
    [ -x "$runtime" ] || {
      echo "node-package: $runtime is missing; run \`cargo build -p code-mode-bin\` first" >&2
      exit 1
    }
    ;;
  *)
    echo "node-package: unknown mode $mode (release or debug)" >&2
    exit 2
    ;;
esac

cd code-mode-node
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2
fi
platform=npm/linux-x64-gnu
node_modules/.bin/napi build --platform "${release[@]}" --js native.cjs --dts native.d.ts >&2
mkdir -p "$platform/bin"
strip -o "$platform/code-mode-runtime.linux-x64-gnu.node" code-mode-runtime.linux-x64-gnu.node
rm code-mode-runtime.linux-x64-gnu.node
strip -o "$platform/bin/code-mode-bin" "$runtime"
# The tests and the examples find the package, and it its platform package, by name.
ln -sfn ../npm/linux-x64-gnu node_modules/code-mode-runtime-linux-x64-gnu
ln -sfn .. node_modules/code-mode-runtime
# The platform package has the API's version: the API refuses one of another version.
node -e '
const fs = require("fs"), file = process.argv[1]
const manifest = JSON.parse(fs.readFileSync(file, "utf8"))
const version = require("./package.json").version
if (manifest.version !== version) {
  manifest.version = version
  fs.writeFileSync(file, JSON.stringify(manifest, null, 2) + "\n")
}
' "$platform/package.json"
rm -rf dist
mkdir -p dist/stage
(cd "$platform" && npm pack --silent --pack-destination ../../dist >/dev/null)
# The API package is packed from a copy without the development scripts and
# dependencies (what users install runs no script of its own), and with its platform
# package as an optional dependency.
CODE_MODE_NODE_PACKAGE=1 npm pack --silent --ignore-scripts --pack-destination dist/stage >/dev/null
tar -xzf dist/stage/code-mode-runtime-*.tgz -C dist/stage
node -e '
const fs = require("fs"), file = "dist/stage/package/package.json"
const manifest = JSON.parse(fs.readFileSync(file, "utf8"))
delete manifest.scripts
delete manifest.devDependencies
// The platform package, added here as the prepublish step of napi-rs adds it: not in the
// package.json of the repository, where npm ci would look for it in the registry.
manifest.optionalDependencies = { "code-mode-runtime-linux-x64-gnu": manifest.version }
manifest.files = manifest.files.filter((entry) => !entry.startsWith("scripts/"))
fs.writeFileSync(file, JSON.stringify(manifest, null, 2) + "\n")
'
rm -rf dist/stage/package/scripts
(cd dist/stage/package && npm pack --silent --ignore-scripts --pack-destination ../.. >/dev/null)
rm -rf dist/stage
ls "$PWD"/dist/*.tgz
