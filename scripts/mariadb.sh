#!/usr/bin/env bash
# Starts a private MariaDB for the store's tests, or stops it.
#
#   scripts/mariadb.sh          install (if needed), initialise, start; prints the URL to use
#   scripts/mariadb.sh stop     stops the server this script started
#
# Uses Debian's `mariadb-server` with its own data directory under `.services/mariadb/` in the
# work tree (gitignored), port 13306 on 127.0.0.1, and a user `messenger`/`messenger` owning the
# database `messenger_test`. No system service is touched. Idempotent: a second run while the
# server answers only prints the URL again.
#
# Environment: MESSENGER_MARIADB_PORT (default 13306).
set -euo pipefail
cd "$(dirname "$0")/.."

port="${MESSENGER_MARIADB_PORT:-13306}"
base="$PWD/.services/mariadb"
datadir="$base/data"
socket="$base/mariadb.sock"
pidfile="$base/mariadb.pid"
logfile="$base/mariadb.log"
url="mysql://messenger:messenger@127.0.0.1:${port}/messenger_test"

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {
  mariadb-admin --no-defaults --protocol=socket --socket="$socket" --user=root \
    --connect-timeout=2 ping >/dev/null 2>&1
}

if [[ "${1:-start}" == "stop" ]]; then
  if running; then
    pid="$(cat "$pidfile")"
    kill "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "mariadb (pid $pid) did not stop in 10 s; sending SIGKILL" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
    echo "mariadb stopped"
  else
    echo "mariadb is not running"
  fi
  rm -f "$pidfile"
  exit 0
fi

if [[ "${1:-start}" != "start" ]]; then
  echo "usage: $0 [start|stop]" >&2
  exit 2
fi

if running && answers; then
  echo "$url"
  exit 0
fi

if ! command -v mariadbd >/dev/null 2>&1; then
  echo "installing mariadb-server (Debian package)" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      mariadb-server mariadb-client >&2; then
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      mariadb-server mariadb-client >&2
  fi
fi

mkdir -p "$base"
user_args=()
if [[ "$(id -u)" == 0 ]]; then
  user_args=(--user=root)
fi

fresh=0
if [[ ! -d "$datadir/mysql" ]]; then
  echo "initialising $datadir" >&2
  rm -rf "$datadir"
  mariadb-install-db --no-defaults "${user_args[@]}" --datadir="$datadir" \
    --auth-root-authentication-method=socket --skip-test-db >"$base/install.log" 2>&1 || {
      cat "$base/install.log" >&2
      exit 1
    }
  fresh=1
fi

rm -f "$pidfile"
mariadbd --no-defaults "${user_args[@]}" --datadir="$datadir" --socket="$socket" \
  --port="$port" --bind-address=127.0.0.1 --pid-file="$pidfile" --log-error="$logfile" \
  --skip-name-resolve --innodb-buffer-pool-size=128M --max-connections=500 \
  >/dev/null 2>&1 &
server_pid=$!
disown || true

for _ in $(seq 1 300); do
  answers && break
  # It exits at once when, for example, the port is taken by another server.
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if ! answers; then
  echo "mariadb did not start (port ${port} taken? see its log):" >&2
  tail -n 30 "$logfile" >&2 || true
  exit 1
fi

# The user and database (idempotent, so also repairs a data directory from an interrupted run).
mariadb --no-defaults --protocol=socket --socket="$socket" --user=root <<'SQL'
CREATE DATABASE IF NOT EXISTS messenger_test CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER IF NOT EXISTS 'messenger'@'127.0.0.1' IDENTIFIED BY 'messenger';
CREATE USER IF NOT EXISTS 'messenger'@'localhost' IDENTIFIED BY 'messenger';
GRANT ALL PRIVILEGES ON messenger_test.* TO 'messenger'@'127.0.0.1';
GRANT ALL PRIVILEGES ON messenger_test.* TO 'messenger'@'localhost';
FLUSH PRIVILEGES;
SQL

if [[ "$fresh" == 1 ]]; then
  echo "mariadb initialised and started on 127.0.0.1:${port}" >&2
else
  echo "mariadb started on 127.0.0.1:${port}" >&2
fi
echo "$url"
