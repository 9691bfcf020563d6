#!/usr/bin/env bash
# Installs Prometheus and promtool (Debian's `prometheus` package) for the observability tests,
# unless both are already on PATH. The tests start their own Prometheus on loopback with a
# config of their own (never the system service).
#
#   infra/prometheus.sh install
set -euo pipefail

install() {
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    return 0
  fi
  echo "installing prometheus" >&2
  # The package's service is not wanted: policy-rc.d keeps it from being started.
  local policy=/usr/sbin/policy-rc.d created=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=yes
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >&2; }
  [ -n "$created" ] && rm -f "$policy"
  command -v promtool >/dev/null || { echo "promtool is missing after installing prometheus" >&2; exit 1; }
}

case "${1:-}" in
  install) install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
