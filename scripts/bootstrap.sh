#!/usr/bin/env bash
# Installs what Pointsman needs besides crates: the ONNX Runtime shared library, taken from
# the official `onnxruntime` wheel on PyPI (the library inside needs only libc/libstdc++).
# Idempotent: does nothing when the library is already in place.
#   scripts/bootstrap.sh            install into .runtime/ at the repo root
#   ORT_DYLIB_PATH=/path/lib.so     skip this and use another ONNX Runtime 1.24..1.31
set -euo pipefail
ORT_VERSION=1.31.1
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.runtime/onnxruntime-$ORT_VERSION"
lib="$dest/libonnxruntime.so.$ORT_VERSION"

if [ -f "$lib" ]; then
  echo "bootstrap: ONNX Runtime $ORT_VERSION already at $lib"
  exit 0
fi

case "$(uname -m)" in
  x86_64) platform=manylinux_2_28_x86_64 ;;
  aarch64) platform=manylinux_2_28_aarch64 ;;
  *) echo "bootstrap: no ONNX Runtime wheel for $(uname -m); set ORT_DYLIB_PATH" >&2; exit 1 ;;
esac

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "bootstrap: python3 with pip is needed to fetch the onnxruntime wheel" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "bootstrap: fetching onnxruntime==$ORT_VERSION ($platform) from PyPI"
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --platform "$platform" --python-version 3.11 -d "$tmp" "onnxruntime==$ORT_VERSION"
"$python" -m zipfile -e "$tmp"/onnxruntime-*.whl "$tmp/wheel"
mkdir -p "$dest"
cp "$tmp/wheel/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$lib.partial"
mv "$lib.partial" "$lib"
echo "bootstrap: installed $lib"
