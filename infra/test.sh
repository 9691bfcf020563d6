#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, lints, and every test against real
# components. Installs and starts what the tests need (Garage for S3; PostgreSQL for billing; the
# AWS CLI, boto3 and moto's server for the SQS tests; Prometheus and promtool for the
# observability tests) idempotently.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== real components"
infra/garage.sh install
# The SQS API is tested with the real AWS CLI and boto3, and compared with moto's SQS server.
if ! command -v aws >/dev/null || ! command -v moto_server >/dev/null || ! python3 -c 'import boto3' 2>/dev/null; then
    python3 -m pip install --quiet awscli boto3 'moto[server]'
fi
GARAGE_DIR="${STRATA_GARAGE_DIR:-$PWD/target/garage}"
eval "$(infra/garage.sh start "$GARAGE_DIR")"
infra/postgres.sh install
# Prometheus and promtool, for the observability tests (they start their own server).
infra/prometheus.sh install
# Its directory is outside the checkout: the server runs as the `postgres` user, which may not
# traverse the directories above the checkout.
eval "$(infra/postgres.sh start "${STRATA_POSTGRES_DIR:-/tmp/strata-postgres}")"

echo "== tests"
# The process tests drive the real `strata` binary.
cargo build -p strata --bin strata
cargo nextest run --workspace --no-fail-fast
