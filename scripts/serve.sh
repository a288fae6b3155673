#!/usr/bin/env bash
# Sets up what is missing (ONNX Runtime), builds the release binary, and starts the service with
# the shipped defaults (config/pointsman.toml, 127.0.0.1:50051). Extra arguments go to `serve`,
# e.g. scripts/serve.sh --listen 0.0.0.0:50051
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
cargo build --release --locked --bin pointsman
exec target/release/pointsman serve "$@"
