#!/usr/bin/env bash
# Sets up what is missing (ONNX Runtime), then builds once in release and runs the whole test
# suite: unit tests, the real encoder and head through ONNX Runtime, training on the shared data,
# and the real gRPC server on 127.0.0.1:0. Needs ../shared/data beside the repo (or
# SWITCHYARD_DATA pointing at it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
cargo test --release --locked "$@"
