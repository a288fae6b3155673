#!/usr/bin/env bash
# Checks the deployment files without a cluster or a Docker daemon (deploy/check.py says what):
# Kubernetes manifests against kubernetes-validate's bundled schemas (strict, offline), the
# ConfigMap's pointsman.toml against config/pointsman.toml, the Dockerfile by parsing, then a
# negative self-test on broken copies.
#   deploy/check.sh                  PYTHON defaults to .runtime/python/bin/python
#   deploy/check.sh --sync-catalog   copy config/pointsman.toml's catalog into the ConfigMap
# Installs deploy/requirements.txt (PyPI) into $PYTHON when kubernetes_validate is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.runtime/python/bin/python}
if [ ! -x "$python" ] && ! command -v "$python" >/dev/null; then
  echo "deploy/check: no Python at $python (scripts/bootstrap.sh --python makes .runtime/python, or set PYTHON)" >&2
  exit 1
fi
if ! "$python" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  echo "deploy/check: installing deploy/requirements.txt into $python" >&2
  "$python" -m pip install --quiet -r "$root/deploy/requirements.txt"
fi
exec "$python" "$root/deploy/check.py" "$@"
