#!/usr/bin/env bash
# Regenerates the committed gRPC stubs from proto/ (tests/test_client.py checks they are current).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python3 -m grpc_tools.protoc -I "$here/../../proto" --python_out="$here/src" --grpc_python_out="$here/src" --pyi_out="$here/src" \
  "$here/../../proto/pointsman/v1/router.proto"
