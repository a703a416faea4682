#!/usr/bin/env bash
# install-deps.sh — install what orthod needs to build, test and run, from Debian's packages.
# Idempotent and fast when everything is there (one dpkg-query, no apt-get).
#   deploy/install-deps.sh           everything: build, tests, clients (what `make` uses)
#   deploy/install-deps.sh --build   only what building the daemon and orthoctl needs
#                                    (deploy/Dockerfile's build stage)
set -euo pipefail

BUILD=(
  build-essential cmake pkg-config   # toolchain
  libopenblas-dev liblapacke-dev     # CPU backend: BLAS, LAPACK(E) for SVD/eigh
  libgrpc-dev libuv1-dev             # the daemon: gRPC core (C API), libuv event loop
  protobuf-c-compiler libprotobuf-c-dev  # protoc-c and the protobuf-c runtime (C messages)
)
TESTS=(
  libcunit1-dev                      # unit tests
  python3 python3-numpy              # float64 reference, benchmarks (Debian's /usr/bin/python3)
  valgrind                           # memcheck runs in the test suite
  protobuf-compiler protobuf-compiler-grpc  # protoc + grpc_python_plugin (Python stubs)
  python3-grpcio python3-protobuf    # Python integration tests and client
  python3-torch                      # the training-run tests of the Python client
  python3-yaml                       # test_deploy.py reads deploy/kubernetes
  openssl                            # test certificates for the TLS tests
)
case "${1:-}" in
  "") PACKAGES=("${BUILD[@]}" "${TESTS[@]}") ;;
  --build) PACKAGES=("${BUILD[@]}") ;;
  *) echo "usage: $0 [--build]" >&2; exit 2 ;;
esac

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
# The Node.js client example: any node + npm on PATH will do (e.g. a NodeSource build); without
# them, Debian's.
if [[ "${1:-}" != --build ]] && { ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; }; then
  missing+=(nodejs npm)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
