#!/usr/bin/env bash
# Installs (if needed) and starts a PostgreSQL server on loopback for the billing tests.
# Idempotent: a running server on the same directory is reused.
#
#   infra/postgres.sh install       # apt-get install postgresql unless initdb is present
#   infra/postgres.sh start DIR     # start (or reuse) and print `export ...` lines for the tests
#   infra/postgres.sh stop DIR
#
# The server runs as the `postgres` system user (PostgreSQL refuses root) on 127.0.0.1:5433,
# with a test-only role and database.
set -euo pipefail

PORT=5433
ROLE=strata
PASSWORD=strata-test
DATABASE=strata_test

bin_dir() {
  local initdb
  initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)
  [ -n "$initdb" ] && dirname "$initdb"
}

install() {
  if bin_dir >/dev/null; then
    return 0
  fi
  echo "installing postgresql" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local dir=$1 bin
  bin=$(bin_dir) || { echo "postgresql is not installed (infra/postgres.sh install)" >&2; exit 1; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >"$dir/initdb.log" 2>&1 ||
      { echo "initdb failed; see $dir/initdb.log" >&2; exit 1; }
  fi
  if ! as_postgres "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
      -o "-p $PORT -c listen_addresses=127.0.0.1 -k $dir" start >&2 ||
      { echo "postgresql did not start; see $dir/postgres.log" >&2; exit 1; }
  fi
  local psql=("$bin/psql" -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qtA)
  if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
    "${psql[@]}" -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD' CREATEDB" >/dev/null
  fi
  if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" != 1 ]; then
    "${psql[@]}" -c "CREATE DATABASE $DATABASE OWNER $ROLE" >/dev/null
  fi
  echo "export STRATA_TEST_POSTGRES_URL=postgres://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
}

stop() {
  local bin
  bin=$(bin_dir) || exit 0
  as_postgres "$bin/pg_ctl" -D "$1/data" -m fast stop >&2 || true
}

case "${1:-}" in
  install) install ;;
  start) start "${2:?directory}" ;;
  stop) stop "${2:?directory}" ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
