#!/usr/bin/env bash
# The Socket.IO peer for the benchmarks (examples/loadgen/peer/server.js).
#
#   scripts/socketio.sh            install (if needed) and start the peer; prints its URL for
#                                  `loadgen --target socketio --url ...`
#   scripts/socketio.sh install    only install socket.io (npm) into .services/socketio
#   scripts/socketio.sh pid        prints the running peer's pid
#   scripts/socketio.sh stop       stops the peer this script started
#
# Needs Node.js and npm (Debian: `apt-get install -y nodejs npm`; installed here if missing).
# `socket.io` comes from npm, pinned in examples/loadgen/peer/package.json, installed once into
# `.services/socketio/` in the work tree (gitignored; cached: a second run installs nothing).
# Environment: MESSENGER_SOCKETIO_PORT (default 13000).
set -euo pipefail
cd "$(dirname "$0")/.."

port="${MESSENGER_SOCKETIO_PORT:-13000}"
base="$PWD/.services/socketio"
pidfile="$base/server.pid"
url="ws://127.0.0.1:$port/socket.io/?EIO=4&transport=websocket"

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

install() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "installing nodejs and npm from Debian" >&2
    sudo_or_not=""
    [[ "$(id -u)" != 0 ]] && sudo_or_not="sudo"
    $sudo_or_not apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_or_not apt-get install -y -qq nodejs npm >&2
  fi
  mkdir -p "$base"
  if ! cmp -s examples/loadgen/peer/package.json "$base/package.json" \
    || [[ ! -d "$base/node_modules/socket.io" ]]; then
    cp examples/loadgen/peer/package.json "$base/package.json"
    (cd "$base" && npm install --no-audit --no-fund --loglevel=error >&2)
  fi
}

stop() {
  if running; then
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid"
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    echo "socket.io peer (pid $pid) stopped" >&2
  fi
  rm -f "$pidfile"
}

start() {
  install
  if running; then
    echo "$url"
    return
  fi
  NODE_PATH="$base/node_modules" PORT="$port" \
    nohup node examples/loadgen/peer/server.js >"$base/server.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if grep -q "^listening on" "$base/server.log" 2>/dev/null; then
      echo "$url"
      return
    fi
    running || break
    sleep 0.1
  done
  echo "the socket.io peer did not start; see $base/server.log:" >&2
  cat "$base/server.log" >&2
  exit 1
}

case "${1:-start}" in
  start) start ;;
  install) install ;;
  pid) running && cat "$pidfile" ;;
  stop) stop ;;
  *) echo "usage: $0 [start|install|pid|stop]" >&2; exit 2 ;;
esac
