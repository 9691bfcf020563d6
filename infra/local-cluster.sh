#!/usr/bin/env bash
# A local Strata cluster on loopback from the built binary: Garage (S3), 3 metadata members,
# 3 storage nodes (3 replicas per shard, one zone each), 2 proxies and a billing service (on
# SQLite), each process with its own config file and data directory under DIR.
#
#   infra/local-cluster.sh up DIR     # start (writes DIR/cluster-credentials.env)
#   infra/local-cluster.sh down DIR   # stop everything it started
#   infra/local-cluster.sh start DIR NAME   # start one process again after it died, such as
#                                           # storage-2 (from DIR/storage-2.toml)
#   infra/local-cluster.sh add DIR storage-4  # a new storage node (storage-4 to storage-9)
#
# Ports start at STRATA_PORT_BASE (default 19000): metadata +1..+3, storage +11..+19, proxies
# +21/+22 (API) and +31/+32 (admin), billing +41 (API) and +42 (admin), the /metrics listeners of
# metadata +51..+53 and storage +61..+69. The binary is STRATA_BIN, else target/release/strata, else
# target/debug/strata. Garage listens on fixed ports, so there is one per machine: the one of
# STRATA_GARAGE_DIR (default target/garage, shared with the test command), started if needed
# and stopped by `down` only if `up` started it. Each cluster keeps its objects (segments,
# copies of metadata snapshots) under its own key prefix in the bucket (DIR's name and the port
# base), so clusters running at once never share keys.
#
# The internal plane is mutual TLS: `up` makes a CA in DIR/tls (once) and a certificate for
# every process with `strata certs`, named in each config's [tls] section, and one for an
# operator (STRATA_TLS_* in DIR/cluster-credentials.env).
#
# STRATA_FORMAT_CAPPED="storage-3 metadata-3" starts those processes reading format generations
# only up to STRATA_FORMAT_CAP (default 0), as processes of an older release would
# (docs/formats.md, rolling upgrades; the rolling-upgrade test).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BASE=${STRATA_PORT_BASE:-19000}

binary() {
  if [ -n "${STRATA_BIN:-}" ]; then echo "$STRATA_BIN"
  elif [ -x "$ROOT/target/release/strata" ]; then echo "$ROOT/target/release/strata"
  elif [ -x "$ROOT/target/debug/strata" ]; then echo "$ROOT/target/debug/strata"
  else echo "build strata first (cargo build --release -p strata)" >&2; exit 1
  fi
}

# The [object_store] section of every role that writes to the bucket: Garage, under this
# cluster's own key prefix.
object_store_section() { # dir
  cat <<CONF
[object_store]
kind = "s3"
endpoint = "$STRATA_TEST_S3_ENDPOINT"
bucket = "$STRATA_TEST_S3_BUCKET"
region = "$STRATA_TEST_S3_REGION"
access_key_id = "$STRATA_TEST_S3_ACCESS_KEY_ID"
secret_access_key = "$STRATA_TEST_S3_SECRET_ACCESS_KEY"
prefix = "local-cluster-$(basename "$1")-$BASE"
CONF
}

# The config line that caps a process's format generation, if STRATA_FORMAT_CAPPED names it.
format_cap_line() { # name
  case " ${STRATA_FORMAT_CAPPED:-} " in
    *" $1 "*) echo "format_generation_max = ${STRATA_FORMAT_CAP:-0}" ;;
  esac
}

# A new certificate of the cluster's CA for one process, as the [tls] section of its config.
tls_section() { # dir role name
  "$BIN" certs --ca-dir "$1/tls" --role "$2" --name "$3"
}

start_role() { # name role
  local dir=$1 name=$2 role=$3
  nohup "$BIN" "$role" --config "$dir/$name.toml" >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

# The metadata members' endpoints, as every client names them.
metadata_endpoints() {
  local endpoints=""
  for i in 1 2 3; do endpoints+="${endpoints:+,}https://127.0.0.1:$((BASE + i))"; done
  echo "$endpoints"
}

# The config of storage node `storage-I`, in zone `zone-I`, with its own certificate.
write_storage_config() { # dir i
  local dir=$1 i=$2
  cat >"$dir/storage-$i.toml" <<CONF
node_id = "storage-$i"
data_dir = "$dir/storage-$i"
listen = "127.0.0.1:$((BASE + 10 + i))"
metadata = "$(metadata_endpoints)"
zone = "zone-$i"
replication_factor = 3
initial_shards = 3
hibernate_after_s = ${STRATA_HIBERNATE_AFTER_S:-300}
admin_listen = "127.0.0.1:$((BASE + 60 + i))"
metrics_token_file = "$dir/tls/metrics-token"
$(format_cap_line "storage-$i")

$(object_store_section "$dir")

$(tls_section "$dir" storage "storage-$i")
CONF
}

up() {
  local dir
  mkdir -p "$1"
  dir="$(cd "$1" && pwd)"
  BIN="$(binary)"
  local garage_dir=${STRATA_GARAGE_DIR:-$ROOT/target/garage}
  if ! { [ -f "$garage_dir/garage.pid" ] && kill -0 "$(cat "$garage_dir/garage.pid")" 2>/dev/null; }; then
    echo "$garage_dir" >"$dir/garage.owned"
  fi
  "$ROOT/infra/garage.sh" install
  eval "$("$ROOT/infra/garage.sh" start "$garage_dir")"

  # The KEK sealing SigV4 secrets at rest, shared by the metadata members (docs/security.md).
  if [ ! -f "$dir/tls/kek-1.secret" ]; then
    mkdir -p -m 700 "$dir/tls"
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/tls/kek-1.secret")
  fi
  # The token Prometheus presents to scrape every process's /metrics.
  if [ ! -f "$dir/tls/metrics-token" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/tls/metrics-token")
  fi
  local members="" metadata_endpoints
  metadata_endpoints="$(metadata_endpoints)"
  for i in 1 2 3; do
    members+="$i = \"https://127.0.0.1:$((BASE + i))\""$'\n'
  done
  for i in 1 2 3; do
    cat >"$dir/metadata-$i.toml" <<CONF
node_id = $i
data_dir = "$dir/metadata-$i"
listen = "127.0.0.1:$((BASE + i))"
initialize = $([ "$i" = 1 ] && echo true || echo false)
backup_interval_s = 30
admin_listen = "127.0.0.1:$((BASE + 50 + i))"
metrics_token_file = "$dir/tls/metrics-token"
$(format_cap_line "metadata-$i")

[members]
$members
$(object_store_section "$dir")

$(tls_section "$dir" metadata "$i")

[[kek]]
id = "kek-1"
file = "$dir/tls/kek-1.secret"
CONF
    start_role "$dir" "metadata-$i" metadata
  done

  for i in 1 2 3; do
    write_storage_config "$dir" "$i"
    start_role "$dir" "storage-$i" storage
  done

  local secret admin_secret
  secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  # Operators' tokens are signed with a key of their own.
  admin_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  for i in 1 2; do
    cat >"$dir/proxy-$i.toml" <<CONF
listen = "127.0.0.1:$((BASE + 20 + i))"
admin_listen = "127.0.0.1:$((BASE + 30 + i))"
metadata = "$metadata_endpoints"
issuer = "strata-local-cluster"
audience = "strata"
admin_audience = "strata-admin"
# Each proxy enforces half of a tenant's rate limits.
fleet_proxies = 2
metrics_token_file = "$dir/tls/metrics-token"

[[keys]]
kid = "local-1"
secret_hex = "$secret"

[[admin_keys]]
kid = "local-admin-1"
secret_hex = "$admin_secret"

$(tls_section "$dir" proxy "proxy-$i")
CONF
    start_role "$dir" "proxy-$i" proxy
  done
  cat >"$dir/billing-1.toml" <<CONF
listen = "127.0.0.1:$((BASE + 41))"
admin_listen = "127.0.0.1:$((BASE + 42))"
metadata = "$metadata_endpoints"
database = "sqlite://$dir/billing.db"
metrics_token_file = "$dir/tls/metrics-token"
issuer = "strata-local-cluster"
audience = "strata"
admin_audience = "strata-admin"

[[keys]]
kid = "local-1"
secret_hex = "$secret"

[[admin_keys]]
kid = "local-admin-1"
secret_hex = "$admin_secret"

$(tls_section "$dir" billing billing-1)
CONF
  start_role "$dir" billing-1 billing

  local endpoint="http://127.0.0.1:$((BASE + 21))"
  local admin_endpoint="http://127.0.0.1:$((BASE + 31))"
  local token admin_token
  token=$("$BIN" token --config "$dir/proxy-1.toml" --tenant dev)
  admin_token=$("$BIN" token --config "$dir/proxy-1.toml" --tenant operator --admin)
  # Ready when a queue can be created: metadata elected, storage placed, proxies up.
  local ready=""
  for _ in $(seq 1 300); do
    if curl -sf -H "Authorization: Bearer $token" -X POST "$endpoint/v1/queues" \
        -d '{"name":"cluster-ready"}' >/dev/null 2>&1; then ready=yes; break; fi
    sleep 0.2
  done
  [ -n "$ready" ] || { echo "the cluster did not come up; see the logs in $dir" >&2; exit 1; }
  local key key_id key_secret
  key=$(STRATA_ADMIN_ENDPOINT=$admin_endpoint STRATA_ADMIN_TOKEN=$admin_token "$BIN" keys create --tenant dev)
  key_id=$(sed -n 's/.*"access_key_id": *"\([^"]*\)".*/\1/p' <<<"$key")
  key_secret=$(sed -n 's/.*"secret_access_key": *"\([^"]*\)".*/\1/p' <<<"$key")
  tls_section "$dir" operator local-operator >/dev/null
  local pids=""
  for f in "$dir"/*.pid; do pids+="${pids:+ }$f"; done
  cat >"$dir/cluster-credentials.env" <<ENV
# Written by infra/local-cluster.sh; \`source\` this file to use the CLI, curl or SDKs.
export STRATA_ENDPOINT=$endpoint
export STRATA_TOKEN=$token
export STRATA_TENANT=dev
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$key_secret
export AWS_DEFAULT_REGION=strata-local
export AWS_ENDPOINT_URL=$endpoint
export STRATA_ADMIN_ENDPOINT=$admin_endpoint
export STRATA_ADMIN_TOKEN=$admin_token
export STRATA_BILLING_ENDPOINT=http://127.0.0.1:$((BASE + 41))
export STRATA_BILLING_ADMIN_ENDPOINT=http://127.0.0.1:$((BASE + 42))
export STRATA_PROXY_ENDPOINTS=http://127.0.0.1:$((BASE + 21)),http://127.0.0.1:$((BASE + 22))
export STRATA_METADATA_ENDPOINTS=$metadata_endpoints
export STRATA_PID_FILES="$pids"
# Prometheus: every process's /metrics, scraped with the bearer token in this file.
export STRATA_METRICS_TOKEN_FILE=$dir/tls/metrics-token
export STRATA_METRICS_TARGETS=$(for p in 31 32 42 51 52 53 61 62 63; do printf '%s' "${sep:-}127.0.0.1:$((BASE + p))"; sep=,; done)
# The internal plane (mutual TLS): its CA and an operator's certificate.
export STRATA_TLS_CA=$dir/tls/ca.pem
export STRATA_TLS_CERT=$dir/tls/operator-local-operator.pem
export STRATA_TLS_KEY=$dir/tls/operator-local-operator.key
ENV
  chmod 600 "$dir/cluster-credentials.env"
  echo "local cluster up; source $dir/cluster-credentials.env"
}

# Adds storage node storage-N (N from 4 to 9) to a running cluster: it registers and holds no
# replica until one is moved to it (strata cluster move-replica) or a shard is added.
add_storage() {
  local dir name i
  dir="$(cd "$1" && pwd)"
  name=$2
  i=${name#storage-}
  case "$name" in storage-[4-9]) ;; *) echo "name a new storage node storage-4 to storage-9, not $name" >&2; exit 2 ;; esac
  [ -f "$dir/cluster-credentials.env" ] || { echo "no cluster in $dir: run up first" >&2; exit 2; }
  [ -f "$dir/$name.toml" ] && { echo "$name exists already: start it with start" >&2; exit 2; }
  BIN="$(binary)"
  # The bucket's settings (Garage is running: the cluster's processes use it).
  eval "$("$ROOT/infra/garage.sh" start "${STRATA_GARAGE_DIR:-$ROOT/target/garage}")"
  write_storage_config "$dir" "$i"
  start_role "$dir" "$name" storage
  echo "$name added"
}

start_one() {
  local dir name role
  dir="$(cd "$1" && pwd)"
  name=$2
  role=${name%-*}
  case "$role" in metadata | storage | proxy | billing) ;; *) echo "no process named $name" >&2; exit 2 ;; esac
  [ -f "$dir/$name.toml" ] || { echo "$dir/$name.toml does not exist: run up first" >&2; exit 2; }
  if [ -f "$dir/$name.pid" ] && kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then
    echo "$name is already running" >&2
    exit 2
  fi
  BIN="$(binary)"
  start_role "$dir" "$name" "$role"
}

down() {
  local dir=$1
  for f in "$dir"/billing-*.pid "$dir"/proxy-*.pid "$dir"/storage-*.pid "$dir"/metadata-*.pid; do
    [ -f "$f" ] || continue
    local pid
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  if [ -f "$dir/garage.owned" ]; then
    "$ROOT/infra/garage.sh" stop "$(cat "$dir/garage.owned")"
    rm -f "$dir/garage.owned"
  fi
  echo "local cluster down"
}

case "${1:-}" in
  up) up "${2:?directory}" ;;
  down) down "${2:?directory}" ;;
  start) start_one "${2:?directory}" "${3:?process name, such as storage-2}" ;;
  add) add_storage "${2:?directory}" "${3:?a new storage node, such as storage-4}" ;;
  *) echo "usage: $0 up DIR | down DIR | start DIR NAME | add DIR storage-N" >&2; exit 2 ;;
esac
