#!/usr/bin/env bash
# Builds the release binaries and runs the benchmark: servers on core 0, the
# load generator on core 1. Extra arguments go to blog-bench, e.g.
#   bench/run.sh --postgres postgres://postgres@127.0.0.1:5432
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --bin blog -p blog --bin blog-bench -p blog-bench
exec taskset -c 1 "$target/release/blog-bench" --bin-dir "$target/release" "$@"
