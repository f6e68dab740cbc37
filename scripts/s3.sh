#!/usr/bin/env bash
# Starts a private S3-compatible server (moto's server mode) for the media tests, or stops it.
#
#   scripts/s3.sh          install (if needed) and start; creates the bucket `messenger-media`
#                          and prints the --media-store URL to use
#   scripts/s3.sh stop     stops the server this script started
#
# moto is installed from PyPI into a virtualenv under `.services/s3/venv` in the work tree
# (gitignored; reused by later runs). Needs `python3` with the venv module (Debian:
# python3-venv, installed if missing). The server keeps objects in memory, bound to
# 127.0.0.1. It accepts any credentials; the tests sign with AWS_ACCESS_KEY_ID=test.
# Idempotent: a second run while the server answers only prints the URL again.
#
# Environment: MESSENGER_S3_PORT (default 9010).
set -euo pipefail
cd "$(dirname "$0")/.."

port="${MESSENGER_S3_PORT:-9010}"
base="$PWD/.services/s3"
venv="$base/venv"
pidfile="$base/moto.pid"
logfile="$base/moto.log"
bucket="messenger-media"
url="s3://${bucket}?endpoint=http://127.0.0.1:${port}&region=us-east-1"

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {
  "$venv/bin/python" - "$port" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=2)
PY
}

install() {
  if [[ -x "$venv/bin/moto_server" ]]; then
    return 0
  fi
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    echo "installing python3-venv (Debian package)" >&2
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv >&2
  fi
  echo "installing moto[server] from PyPI into $venv" >&2
  mkdir -p "$base"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5,<6' >&2
}

stop() {
  if running; then
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    echo "s3 (moto) on $port stopped"
  fi
  rm -f "$pidfile"
}

create_bucket() {
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$venv/bin/python" - "$port" "$bucket" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1")
names = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
if sys.argv[2] not in names:
    s3.create_bucket(Bucket=sys.argv[2])
PY
}

case "${1:-start}" in
  stop)
    stop
    ;;
  start)
    install
    if ! (running && answers); then
      mkdir -p "$base"
      rm -f "$pidfile"
      nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 &
      echo $! >"$pidfile"
      for _ in $(seq 1 150); do
        answers && break
        sleep 0.1
      done
      if ! answers; then
        echo "moto did not start on $port (port taken? see its log):" >&2
        tail -n 20 "$logfile" >&2 || true
        exit 1
      fi
    fi
    create_bucket
    echo "$url"
    ;;
  *)
    echo "usage: $0 [start|stop]" >&2
    exit 2
    ;;
esac
