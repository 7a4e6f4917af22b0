#!/usr/bin/env bash
# Regenerates every stub from protos/: Python, TypeScript and Go. Generated code is never edited
# by hand; run this after changing a .proto and commit the result (the tests check it is in sync).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WKT="$($PY -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
BIN="$(dirname "$PY")"

# Python: openai_grpc/v1/*_pb2.py, *_pb2_grpc.py and mypy-protobuf stubs.
out=client_stubs/python
find "$out/openai_grpc/v1" -name '*_pb2*.py*' -delete 2>/dev/null || true
"$PY" -m grpc_tools.protoc -Iprotos -I"$WKT" \
  --python_out="$out" --grpc_python_out="$out" \
  --plugin=protoc-gen-mypy="$BIN/protoc-gen-mypy" --mypy_out="$out" \
  --plugin=protoc-gen-mypy_grpc="$BIN/protoc-gen-mypy_grpc" --mypy_grpc_out="$out" \
  protos/openai_grpc/v1/*.proto
touch "$out/openai_grpc/__init__.py" "$out/openai_grpc/v1/__init__.py" "$out/openai_grpc/py.typed"

# TypeScript (protobuf-es) and Go: buf with local plugins. Only the contract is generated for Go;
# the google/api annotations come from google.golang.org/genproto there.
rm -rf client_stubs/typescript/src/gen client_stubs/go/openai_grpc
"$BIN/buf" generate --template buf.gen.yaml --path protos/openai_grpc
