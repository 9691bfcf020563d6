#!/usr/bin/env bash
# Installs (if needed) and starts a single-node Garage S3 server on loopback for the tests.
# Idempotent: a running instance with the same directory is reused.
#
#   infra/garage.sh install        # cargo install garage@2.5.0 unless that version is present
#   infra/garage.sh start DIR      # start (or reuse) and print `export ...` lines for the tests
#   infra/garage.sh stop DIR
set -euo pipefail

GARAGE_VERSION=2.5.0
# Deterministic test-only credentials (loopback only).
KEY_ID=GK0123456789abcdef01234567
SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
BUCKET=strata-test
S3_PORT=3900

install() {
  if command -v garage >/dev/null 2>&1 && garage --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    return 0
  fi
  echo "installing garage $GARAGE_VERSION (about 11 minutes the first time)" >&2
  cargo install "garage@$GARAGE_VERSION" --locked >&2
}

start() {
  local dir=$1
  mkdir -p "$dir/meta" "$dir/data"
  local conf="$dir/garage.toml"
  if [ ! -f "$conf" ]; then
    cat > "$conf" <<CONF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(printf '%064d' 7)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:3903"
admin_token = "strata-test-admin"
CONF
  fi
  export GARAGE_CONFIG_FILE="$conf"
  if ! garage status >/dev/null 2>&1; then
    nohup garage server >"$dir/garage.log" 2>&1 &
    echo $! >"$dir/garage.pid"
    for _ in $(seq 1 100); do
      garage status >/dev/null 2>&1 && break
      sleep 0.2
    done
    garage status >/dev/null 2>&1 || { echo "garage did not start; see $dir/garage.log" >&2; exit 1; }
  fi
  local node
  node=$(garage node id -q | cut -d@ -f1)
  # Capture first: `grep -q` closing the pipe early makes garage abort on EPIPE.
  local layout
  layout=$(garage layout show 2>/dev/null || true)
  if ! grep -q "Current cluster layout version: [1-9]" <<<"$layout"; then
    garage layout assign -z dc1 -c 1G "$node" >/dev/null
    garage layout apply --version 1 >/dev/null
  fi
  garage key info "$KEY_ID" >/dev/null 2>&1 || garage key import --yes -n strata-test "$KEY_ID" "$SECRET" >/dev/null
  garage bucket info "$BUCKET" >/dev/null 2>&1 || garage bucket create "$BUCKET" >/dev/null
  garage bucket allow --read --write --owner "$BUCKET" --key "$KEY_ID" >/dev/null
  cat <<ENV
export STRATA_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export STRATA_TEST_S3_BUCKET=$BUCKET
export STRATA_TEST_S3_REGION=garage
export STRATA_TEST_S3_ACCESS_KEY_ID=$KEY_ID
export STRATA_TEST_S3_SECRET_ACCESS_KEY=$SECRET
ENV
}

stop() {
  local dir=$1
  if [ -f "$dir/garage.pid" ]; then
    kill "$(cat "$dir/garage.pid")" 2>/dev/null || true
    rm -f "$dir/garage.pid"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start "${2:?directory}" ;;
  stop) stop "${2:?directory}" ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
