#!/usr/bin/env bash
# A/B of two Strata checkouts on a local cluster (infra/local-cluster.sh of each checkout, with
# its own binary), in one run, A B A B: the machine's speed changes from hour to hour, so only
# ratios from one run mean anything. Each round starts a fresh cluster and runs `strata bench`
# through proxy-1: send throughput (16 senders x 10 x 1 KiB, 10 s) with its request p99, and
# send latency at a fixed 1,000 msg/s (10 s). This is how the cost of mutual TLS on the
# internal plane was measured (A: the commit before it, B: with it).
#
# Usage: infra/bench-cluster-ab.sh CHECKOUT_A BINARY_A CHECKOUT_B BINARY_B
# (release builds of the same profile; Garage as infra/test.sh starts it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
run() {
  local checkout=$1 bin=$2 label=$3 dir
  dir=$(mktemp -d /tmp/cluster-ab-XXXX)
  STRATA_BIN="$bin" STRATA_PORT_BASE=29000 STRATA_GARAGE_DIR="$ROOT/target/garage" \
    "$checkout/infra/local-cluster.sh" up "$dir/cluster" >"$dir/up.log" 2>&1
  # shellcheck disable=SC1091
  source "$dir/cluster/cluster-credentials.env"
  "$bin" bench --throughput-seconds 10 --latency-seconds 10 --rate 1000 --receivers 0 2>/dev/null \
    | python3 -c "import json,sys; d=json.load(sys.stdin); t=d['send_throughput']; print('$label', 'send', round(t['messages_per_second']), 'p99_ms', t['request_latency']['p99_ms'], 'fixed-rate p99_ms', d['send_latency_fixed_rate']['latency']['p99_ms'])"
  STRATA_BIN="$bin" STRATA_PORT_BASE=29000 "$checkout/infra/local-cluster.sh" down "$dir/cluster" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
for round in 1 2; do
  run "$1" "$2" "A"
  run "$3" "$4" "B"
done
