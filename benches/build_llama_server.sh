#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` for benches/speed.py, from the llama.cpp
# sources vendored in the llama-cpp-python sdist (the same llama.cpp version as
# the in-process peer). About 10 minutes on 2 cores. Output:
# benches/.peer/build/bin/llama-server (benches/.peer is ignored by git).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VERSION=0.3.36
PY="$(cd .. && pwd)/.venv/bin/python"  # absolute: the script changes directory below
mkdir -p .peer
cd .peer
if [ ! -d "llama_cpp_python-$VERSION" ]; then
    "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d .
    tar xzf "llama_cpp_python-$VERSION.tar.gz"
fi
# Native CPU flags without AMX, as scripts/dev builds the in-process peer (AMX
# dies of an illegal instruction where the OS does not enable it); no network features.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "llama_cpp_python-$VERSION/vendor/llama.cpp" -B build -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >/dev/null
cmake --build build --target llama-server -j"$(nproc)"
echo "built $(pwd)/build/bin/llama-server"
