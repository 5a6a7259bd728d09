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
echo "== cargo doc -D warnings (with and without the cli feature)"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --locked
RUSTDOCFLAGS=-Dwarnings cargo doc -p rotate-cli --no-deps --no-default-features --locked
echo "== the embedding example, built alone (rotate-cli without its command line)"
cargo build -p rotate-embed-example --locked
echo "== fuzz targets: build and smoke-run 5 s each"
# Only a stable toolchain exists here; RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags.
export PATH="$PWD/target/tools/cargo-fuzz/bin:$PATH"
for t in $(cargo fuzz list --fuzz-dir fuzz); do
  log="target/fuzz-$t.log"
  if (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time=5 -print_final_stats=0) >"$log" 2>&1; then
    echo "$t: $(tail -n 1 "$log")"
  else
    echo "fuzz target $t FAILED; the end of its output ($log):"
    tail -n 80 "$log"
    exit 1
  fi
done
echo "== cargo test"
cargo test --workspace --locked
