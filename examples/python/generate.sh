#!/usr/bin/env bash
# Generates the Python stubs from the contract into ./gen (not committed).
set -euo pipefail
cd "$(dirname "$0")"
rm -rf gen && mkdir gen
python3 -m grpc_tools.protoc -I ../../proto --python_out=gen --grpc_python_out=gen \
  blog/auth/v1/users.proto blog/auth/v1/auth.proto blog/posts/v1/posts.proto
