#!/usr/bin/env bash
# The whole gate, as CI runs it: install prerequisites, then fmt, clippy, docs, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all --check
cargo fmt --manifest-path fuzz/Cargo.toml --all --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo doc -D warnings"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --locked
echo "== fuzz targets build"
cargo check --manifest-path fuzz/Cargo.toml --locked
echo "== cargo test"
cargo test --workspace --locked
