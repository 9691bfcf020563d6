#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, lints, and every test against real
# components. Installs and starts what the tests need (Garage for S3) idempotently.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== real components"
infra/garage.sh install
GARAGE_DIR="${STRATA_GARAGE_DIR:-$PWD/target/garage}"
eval "$(infra/garage.sh start "$GARAGE_DIR")"

echo "== tests"
# The process tests drive the real `strata` binary.
cargo build -p strata --bin strata
cargo nextest run --workspace --no-fail-fast
