#!/usr/bin/env bash
# Checks the deployment files without a cluster or a registry:
# - every manifest in deploy/kubernetes validates strictly against the Kubernetes schemas
#   (kubernetes-validate, pinned in deploy/requirements.txt, in the virtualenv deploy/.venv);
# - the runtime's flags in the Deployment and in the Dockerfile exist, and ports and probe
#   paths agree with what the runtime serves (scripts/check_deploy.py).
# Usage: scripts/check-deploy.sh [path to code-mode-bin, default target/debug/code-mode-bin]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary="${1:-$root/target/debug/code-mode-bin}"
venv="$root/deploy/.venv"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$root/deploy/requirements.txt" "$venv/requirements.installed"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$root/deploy/requirements.txt"
  cp "$root/deploy/requirements.txt" "$venv/requirements.installed"
fi
manifests=()
for file in "$root"/deploy/kubernetes/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] && continue # not a cluster resource
  manifests+=("$file")
done
# The Codex front next to an agent: an example applied on its own, checked the same way.
manifests+=("$root/deploy/kubernetes/codex-front/agent.yaml")
# `mcp --http` replicas on one Postgres: applied on its own, checked the same way.
manifests+=("$root/deploy/kubernetes/mcp/mcp-http.yaml")
"$venv/bin/kubernetes-validate" --strict --quiet "${manifests[@]}"
"$venv/bin/python" "$root/scripts/check_deploy.py" "$root" "$binary"
echo "check-deploy: ${#manifests[@]} manifests valid; Deployments and Dockerfiles agree with $(basename "$binary"), codex-code-mode-host and code-mode"
