#!/usr/bin/env bash
# What metering costs the send path: `strata dev` with metering off (`--no-metering`) and on,
# measured alternately in one session (docs/performance.md, "Metering cost").
#
#   infra/bench-metering.sh throughput [ROUNDS] [SECONDS]
#       send throughput (`strata bench`, 16 senders, batches of 10 messages of 1 KiB), rounds
#       of off then on, each on a fresh service and data directory; prints every round and the
#       medians.
#   infra/bench-metering.sh instructions [SECONDS]
#       the same send load with the service under valgrind's callgrind, which counts the
#       instructions the whole process (proxy, storage, in-process billing) executes while the
#       load runs and until billing has counted it; prints instructions per message sent. A
#       count, not a time: it does not depend on what else the machine is doing.
#
# Uses target/release/strata (build it first: cargo build --release -p strata).
set -euo pipefail

cd "$(dirname "$0")/.."
strata=target/release/strata
[[ -x $strata ]] || { echo "build first: cargo build --release -p strata" >&2; exit 1; }
port=19324
work=$(mktemp -d /tmp/strata-bench-metering.XXXXXX)
pid=
trap '[[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

# start_dev MODE [WRAPPER...]: starts the service in $work/MODE; sets $pid.
start_dev() {
  local mode=$1
  shift
  local dir=$work/$mode extra=()
  rm -rf "$dir"
  mkdir -p "$dir"
  [[ $mode == off ]] && extra=(--no-metering)
  "$@" "$strata" dev --data-dir "$dir" --port $port --admin-port $((port + 1)) --metadata-port $((port + 76)) \
    --storage-port $((port + 176)) "${extra[@]}" >"$dir.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    if [[ -f $dir/dev-credentials.env ]] && curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; then
      # shellcheck disable=SC1091
      source "$dir/dev-credentials.env"
      return
    fi
    sleep 1
  done
  tail -5 "$dir.log" >&2
  echo "strata dev did not start" >&2
  exit 1
}

stop_dev() {
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

# send_messages SECONDS: runs the send load; prints the messages sent and the rate.
send_messages() {
  local report
  if ! report=$("$strata" bench --throughput-seconds "$1" --latency-seconds 0 --receivers 0 2>"$work/bench.err"); then
    tail -3 "$work/bench.err" >&2
    echo "strata bench failed (under valgrind a call can outlast the service's timeouts: run again)" >&2
    return 1
  fi
  python3 -c 'import json,sys; t=json.load(sys.stdin)["send_throughput"]; print(t["messages"], round(t["messages_per_second"]))' \
    <<<"$report"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

case ${1:-throughput} in
  throughput)
    rounds=${2:-5}
    seconds=${3:-10}
    for round in $(seq 1 "$rounds"); do
      for mode in off on; do
        start_dev $mode
        result=$(send_messages "$seconds")
        read -r _ rate <<<"$result"
        stop_dev
        echo "round $round metering $mode: $rate msg/s"
        echo "$rate" >>"$work/$mode.rates"
      done
    done
    off=$(median <"$work/off.rates")
    on=$(median <"$work/on.rates")
    echo "median off $off msg/s, on $on msg/s, cost $(python3 -c "print(f'{(1 - $on / $off) * 100:.1f}%')")"
    ;;
  instructions)
    seconds=${2:-30}
    command -v callgrind_control >/dev/null || { echo "needs valgrind" >&2; exit 1; }
    for mode in off on; do
      start_dev $mode valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/$mode.cg"
      send_messages 3 >/dev/null # creates the queue, warms the caches
      sleep 3
      callgrind_control -i on "$pid" >/dev/null
      result=$(send_messages "$seconds")
      read -r messages _ <<<"$result"
      sleep 4 # billing counts what was sent (it drains every 500 ms)
      callgrind_control -d "$pid" >/dev/null
      stop_dev
      total=$(grep -h '^totals:' "$work/$mode.cg".* | awk '{s += $2} END {print s}')
      echo "metering $mode: $messages messages, $total instructions, $((total / messages)) per message"
      echo "$((total / messages))" >"$work/$mode.per-message"
    done
    off=$(cat "$work/off.per-message")
    on=$(cat "$work/on.per-message")
    echo "instructions per message: off $off, on $on, cost $(python3 -c "print(f'{($on / $off - 1) * 100:.1f}%')")"
    ;;
  *)
    echo "usage: $0 throughput [ROUNDS] [SECONDS] | instructions [SECONDS]" >&2
    exit 2
    ;;
esac
