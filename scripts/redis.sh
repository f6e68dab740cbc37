#!/usr/bin/env bash
# Starts private Redis servers for the tests, or stops them.
#
#   scripts/redis.sh            install (if needed) and start a standalone server; prints its URL
#   scripts/redis.sh cluster    the same for a 6-node Redis Cluster (3 masters, 3 replicas);
#                               prints the node URLs, comma-separated
#   scripts/redis.sh restart    stops and starts the standalone server (its data is lost: no
#                               persistence), as the restart tests need
#   scripts/redis.sh stop       stops every server this script started (standalone and cluster)
#
# Uses Debian's `redis-server`, no persistence (`--save '' --appendonly no`), data, pid and log
# files under `.services/redis/` in the work tree (gitignored), bound to 127.0.0.1. No system
# service is touched. Idempotent: a second run while the servers answer only prints the URLs.
#
# Environment: MESSENGER_REDIS_PORT (default 16379), MESSENGER_REDIS_CLUSTER_PORT (first port of
# the cluster, default 17000; the nodes use it and the next five).
set -euo pipefail
cd "$(dirname "$0")/.."

port="${MESSENGER_REDIS_PORT:-16379}"
cluster_port="${MESSENGER_REDIS_CLUSTER_PORT:-17000}"
base="$PWD/.services/redis"

cluster_ports() {
  for i in 0 1 2 3 4 5; do echo $((cluster_port + i)); done
}

pidfile() { echo "$base/$1/redis.pid"; }

running() {
  local pidfile
  pidfile="$(pidfile "$1")"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {
  [[ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" == "PONG" ]]
}

stop_one() {
  local p="$1" pidfile pid
  pidfile="$(pidfile "$p")"
  if running "$p"; then
    pid="$(cat "$pidfile")"
    kill "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "redis on $p (pid $pid) did not stop in 10 s; sending SIGKILL" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
    echo "redis on $p stopped"
  fi
  rm -f "$pidfile"
}

# Starts one server on port $1 with extra arguments; waits until it answers PING.
start_one() {
  local p="$1" dir
  shift
  dir="$base/$p"
  if running "$p" && answers "$p"; then
    return 0
  fi
  mkdir -p "$dir"
  rm -f "$dir/redis.pid"
  redis-server --bind 127.0.0.1 --port "$p" --save '' --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" "$@"
  for _ in $(seq 1 100); do
    answers "$p" && return 0
    sleep 0.1
  done
  echo "redis on $p did not start (port taken? see its log):" >&2
  tail -n 20 "$dir/redis.log" >&2 || true
  exit 1
}

install() {
  command -v redis-server >/dev/null 2>&1 && return 0
  echo "installing redis-server (Debian package)" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      redis-server redis-tools >&2; then
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      redis-server redis-tools >&2
  fi
}

cluster_ok() {
  local first
  first="$(cluster_ports | head -n 1)"
  redis-cli -h 127.0.0.1 -p "$first" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  # cluster_state:ok comes before the replicas attach: wait for every replica's link too.
  local p replicas=0
  for p in $(cluster_ports); do
    local info
    info="$(redis-cli -h 127.0.0.1 -p "$p" info replication 2>/dev/null)"
    if grep -q '^role:slave' <<<"$info"; then
      grep -q '^master_link_status:up' <<<"$info" || return 1
      replicas=$((replicas + 1))
    fi
  done
  [[ "$replicas" == 3 ]]
}

cluster_urls() {
  local urls=() p
  for p in $(cluster_ports); do urls+=("redis://127.0.0.1:$p/"); done
  (IFS=,; echo "${urls[*]}")
}

case "${1:-start}" in
  stop)
    stop_one "$port"
    for p in $(cluster_ports); do stop_one "$p"; done
    ;;
  restart)
    stop_one "$port" >&2
    install
    start_one "$port"
    echo "redis://127.0.0.1:$port/"
    ;;
  start)
    install
    start_one "$port"
    echo "redis://127.0.0.1:$port/"
    ;;
  cluster)
    install
    if cluster_ok; then
      cluster_urls
      exit 0
    fi
    fresh=0
    for p in $(cluster_ports); do
      if ! (running "$p" && answers "$p"); then
        # A node restarted without its peers cannot rejoin a half-formed cluster: start over.
        rm -f "$base/$p/nodes.conf"
        fresh=1
      fi
    done
    if [[ "$fresh" == 1 ]]; then
      for p in $(cluster_ports); do stop_one "$p" >/dev/null; rm -f "$base/$p/nodes.conf"; done
    fi
    for p in $(cluster_ports); do
      start_one "$p" --cluster-enabled yes --cluster-config-file "$base/$p/nodes.conf" \
        --repl-diskless-sync-delay 0
    done
    if ! redis-cli -h 127.0.0.1 -p "$cluster_port" cluster info 2>/dev/null \
        | grep -q '^cluster_slots_assigned:16384'; then
      nodes=()
      for p in $(cluster_ports); do nodes+=("127.0.0.1:$p"); done
      redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$base/cluster-create.log" 2>&1 || {
        cat "$base/cluster-create.log" >&2
        exit 1
      }
    fi
    for _ in $(seq 1 300); do
      cluster_ok && break
      sleep 0.1
    done
    if ! cluster_ok; then
      echo "the redis cluster did not become healthy in 30 s" >&2
      exit 1
    fi
    cluster_urls
    ;;
  *)
    echo "usage: $0 [start|cluster|restart|stop]" >&2
    exit 2
    ;;
esac
