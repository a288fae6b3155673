#!/usr/bin/env bash
# Sets up what is missing (ONNX Runtime, Envoy, the Python client's env, PostgreSQL and Redis for the fleet tests, Chromium for the report page), then builds once in release and runs the whole test
# suite: unit tests, the real encoder and head through ONNX Runtime, training on the shared data,
# and the real gRPC server on 127.0.0.1:0. The routing data is the repo's own data/ (set
# POINTSMAN_DATA to use another folder of the same layout).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${POINTSMAN_DATA:-data}"
if [ ! -f "$data/zeroeval/train.jsonl.gz" ] || [ ! -f "$data/alpaca_eval2/train.jsonl.gz" ]; then
    echo "test: the routing data is not at $data (expected zeroeval/ and alpaca_eval2/ there);" >&2
    echo "test: restore data/ (git checkout -- data) or set POINTSMAN_DATA to a folder of that layout" >&2
    exit 2
fi
scripts/bootstrap.sh --envoy --python --fleet --browser
cargo test --release --locked --workspace "$@"
# The Python client and its LiteLLM integration, against the binary cargo just built.
LITELLM_LOCAL_MODEL_COST_MAP=True POINTSMAN_BIN="$PWD/target/release/pointsman" \
    .runtime/python/bin/python -m pytest -q -p no:cacheprovider clients/python/tests
# The deployment files: Kubernetes manifests against the API schemas (kubernetes-validate, from
# PyPI), the ConfigMap's config against the shipped keys, the Dockerfile by parsing.
PYTHON="$PWD/.runtime/python/bin/python" deploy/check.sh
