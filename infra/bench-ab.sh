#!/usr/bin/env bash
# A/B of two strata binaries in one run (the machine's speed changes from hour to hour: only
# ratios from one run mean anything): send throughput (16 senders x 10 x 1 KiB, 10 s), send
# latency at 2,000 msg/s (10 s), drain (16 receivers), each on a fresh `strata dev`, A B A B
# (`ROUNDS=4` for four of each).
# Usage: infra/bench-ab.sh OLD_BINARY NEW_BINARY (release builds). `A_ENV` and `B_ENV` set
# variables for each side's `strata dev` (`B_ENV="OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317"`
# compares one binary with traces exported and without).
set -euo pipefail
run() {
  local bin=$1 label=$2 vars=$3 dir
  dir=$(mktemp -d /tmp/ab-XXXX)
  # shellcheck disable=SC2086 # the variables are words on purpose
  env $vars "$bin" dev --data-dir "$dir/dev" --port 29324 --metadata-port 29325 --storage-port 29326 --admin-port 29327 >"$dir/log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do [ -f "$dir/dev/dev-credentials.env" ] && break; sleep 0.2; done
  sleep 1
  # shellcheck disable=SC1091
  source "$dir/dev/dev-credentials.env"
  "$bin" bench --throughput-seconds 10 --latency-seconds 10 --receivers 16 2>/dev/null \
    | python3 -c "import json,sys; d=json.load(sys.stdin); print('$label', 'send', round(d['send_throughput']['messages_per_second']), 'p99_ms', d['send_throughput']['request_latency']['p99_ms'], 'fixed-rate p99_ms', d['send_latency_fixed_rate']['latency']['p99_ms'], 'drain', round(d['drain']['messages_per_second']))"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
for _ in $(seq 1 "${ROUNDS:-2}"); do
  run "$1" "A" "${A_ENV:-}"
  run "$2" "B" "${B_ENV:-}"
done
