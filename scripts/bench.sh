#!/usr/bin/env bash
# The benchmark suite of docs/benchmarks.md, one scenario per command:
#
#   scripts/bench.sh idle        # 1. memory per idle connection (19k per process, then SO_REUSEPORT)
#   scripts/bench.sh handshake   # 2. connections/s, then every client reconnecting at once
#   scripts/bench.sh latency     # 3. 1:1 send→deliver latency at increasing rates (the reference
#                                #    server twice: durable acks, then --durability relaxed), for
#                                #    two client behaviours: `apps` (100 pairs, OS socket options,
#                                #    delivered receipts) and `many` (1000 pairs, TCP_NODELAY)
#   scripts/bench.sh fanout      # 4. one 10,000-member group, and 100 groups of 100
#   scripts/bench.sh all
#
# Each scenario runs the same load against the reference server (embedded store, durable
# acks), the `baseline` tokio-tungstenite server and the Socket.IO peer, in the same run. It
# builds what it needs (release), installs the peer (scripts/socketio.sh), starts and stops
# every server itself, and writes one JSON result per run into $BENCH_OUT (default
# target/bench) next to the human summaries on stdout.
#
# The box has 2 cores: by default the server under test is pinned to CPU 0 and the load
# generator to CPU 1 (`taskset`), so neither steals the other's core. BENCH_SERVER_CPUS and
# BENCH_LOADGEN_CPUS change that (empty: no pinning). Sizes: see the variables below.
#
# BENCH_BEFORE=PATH (a reference-server binary of an earlier commit) adds that server to
# every scenario as `messenger-before`, with the same flags and load, so a change is measured
# against what it replaced in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."

scenario="${1:-all}"
out="${BENCH_OUT:-$PWD/target/bench}"
port="${BENCH_PORT:-20400}"
server_cpus="${BENCH_SERVER_CPUS-0}"
loadgen_cpus="${BENCH_LOADGEN_CPUS-1}"
idle_connections="${BENCH_IDLE_CONNECTIONS:-19000}"
idle_processes="${BENCH_IDLE_PROCESSES:-6}"
idle_total="${BENCH_IDLE_TOTAL:-100000}"
handshake_connections="${BENCH_HANDSHAKE_CONNECTIONS:-10000}"
latency_pairs="${BENCH_LATENCY_PAIRS:-1000}"
apps_pairs="${BENCH_APPS_PAIRS:-100}"
# The reference server saturates near 5,000 durable messages/s on one core; past saturation
# its queues stay full for the following steps, so its curve is finer and stops earlier.
latency_rates="${BENCH_LATENCY_RATES:-1000,2000,3000,4000,5000,6000,8000}"
peer_latency_rates="${BENCH_PEER_LATENCY_RATES:-2000,5000,10000,20000,40000,80000}"
step_secs="${BENCH_STEP_SECS:-5}"
big_group="${BENCH_BIG_GROUP:-10000}"
big_group_rates="${BENCH_BIG_GROUP_RATES:-5,20,50,100}"
small_group_rates="${BENCH_SMALL_GROUP_RATES:-100,1000,5000,10000}"
before="${BENCH_BEFORE:-}"

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target_dir/release"
mkdir -p "$out"
work="$(mktemp -d)"
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  scripts/socketio.sh stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

pin() { # pin CPUS COMMAND...
  local cpus="$1"; shift
  if [[ -n "$cpus" ]]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

echo "building (release)..." >&2
cargo build --release -q -p loadgen -p reference-server
scripts/socketio.sh install >/dev/null

# Starts a server in the background; waits for its "listening on" line. Sets server_pid.
start() { # start LOG COMMAND...
  local log="$1"; shift
  # Emptied here, not by the background job's redirect: otherwise the wait below can read the
  # previous server's "listening on" line before the new one truncates the file.
  : >"$log"
  # taskset execs the server, so $! is the server's pid.
  if [[ -n "$server_cpus" ]]; then
    taskset -c "$server_cpus" "$@" >"$log" 2>&1 &
  else
    "$@" >"$log" 2>&1 &
  fi
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 1 200); do
    grep -q "listening on" "$log" 2>/dev/null && return
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "server did not start: $*" >&2; cat "$log" >&2; exit 1
}

stop() { # stop PID...
  for pid in "$@"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

# Starts one of the three servers on $port; sets server_pid and url.
start_target() { # start_target messenger|messenger-before|baseline|socketio [extra flags]
  local target="$1"; shift
  local server="$bin/reference-server"
  case "$target" in
    messenger | messenger-before)
      [[ "$target" == messenger-before ]] && server="$before"
      rm -rf "$work/data"
      RUST_LOG=warn start "$work/ref.log" "$server" --listen "127.0.0.1:$port" \
        --data-dir "$work/data" --max-connections 19900 --max-group-members 20000 "$@"
      url="ws://127.0.0.1:$port/ws" ;;
    baseline)
      start "$work/baseline.log" "$bin/baseline" --listen "127.0.0.1:$port" "$@"
      url="ws://127.0.0.1:$port" ;;
    socketio)
      NODE_PATH="$PWD/.services/socketio/node_modules" PORT="$port" \
        start "$work/peer.log" node examples/loadgen/peer/server.js
      url="ws://127.0.0.1:$port/socket.io/?EIO=4&transport=websocket" ;;
  esac
}

# The servers each scenario runs, in order: the reference server (and the earlier build, with
# BENCH_BEFORE), the baseline, the Socket.IO peer.
targets() {
  echo messenger
  [[ -n "$before" ]] && echo messenger-before
  echo baseline socketio
}

loadgen() { # loadgen NAME ARGS...
  local name="$1"; shift
  echo "\$ loadgen $* --json $out/$name.json" >&2
  pin "$loadgen_cpus" "$bin/loadgen" "$@" --json "$out/$name.json"
}

idle() {
  for target in $(targets); do
    start_target "$target"
    sleep 1
    loadgen "idle-$target" idle --target "${target%-before}" --url "$url" \
      --connections "$idle_connections" --hold-secs 5 --server-pid "$server_pid"
    stop "$server_pid"
  done
  # Several reference-server processes sharing one port (SO_REUSEPORT).
  local all=()
  for i in $(seq 1 "$idle_processes"); do
    rm -rf "$work/data$i"
    RUST_LOG=warn start "$work/ref$i.log" "$bin/reference-server" --listen "127.0.0.1:$port" \
      --data-dir "$work/data$i" --max-connections 19900 --reuse-port --node-id "node-$i"
    all+=("$server_pid")
  done
  sleep 1
  local joined
  joined="$(IFS=,; echo "${all[*]}")"
  loadgen "idle-messenger-reuseport" idle --url "ws://127.0.0.1:$port/ws" \
    --connections "$idle_total" --hold-secs 5 --server-pid "$joined" \
    --label "$idle_processes processes, SO_REUSEPORT"
  stop "${all[@]}"
}

handshake() {
  # Each server's run binds its own source address: 20,000 sessions leave as many ports in
  # TIME_WAIT for a minute, and the next run must not wait for them.
  local source=2
  for target in $(targets); do
    start_target "$target"
    source=$((source + 10))
    loadgen "handshake-$target" handshake --target "${target%-before}" --url "$url" \
      --connections "$handshake_connections" --first-source "$source"
    stop "$server_pid"
  done
}

latency() {
  # The reference server with and without the durable ack: `messenger` fsyncs every group
  # commit before acknowledging (the default); `messenger-relaxed` runs --durability relaxed
  # (no fsync per commit; an ack survives a crash of the process, not of the machine).
  # With BENCH_BEFORE, the earlier build runs durable too (`messenger-before`).
  #
  # Two client behaviours, each against every server:
  # - `apps`: $apps_pairs pairs, the OS's socket options (Nagle on, as most clients leave
  #   them), receivers answering each message with a `delivered` receipt (messenger only);
  # - `many`: $latency_pairs pairs at low rates each, TCP_NODELAY (as the messenger client
  #   library sets it), no receipts.
  # The baseline's figures at the lowest rate are the load generator's own floor.
  local runs=(messenger messenger-relaxed)
  [[ -n "$before" ]] && runs+=(messenger-before)
  for load in apps many; do
    local load_flags=(--pairs "$latency_pairs" --socket nodelay)
    [[ "$load" == apps ]] && load_flags=(--pairs "$apps_pairs" --socket default)
    for run in "${runs[@]}" baseline socketio; do
      local target="${run%-relaxed}" flags=() label=() rates="$peer_latency_rates"
      local receipts=(--receipts none)
      if [[ "$run" == messenger-relaxed ]]; then
        flags=(--durability relaxed)
        label=(--label "reference-server, --durability relaxed, $load")
      else
        label=(--label "$run, $load")
      fi
      start_target "$target" "${flags[@]}"
      if [[ "$target" == messenger* ]]; then
        rates="$latency_rates"
        [[ "$load" == apps ]] && receipts=(--receipts delivered)
      fi
      loadgen "latency-$load-$run" latency --target "${target%-before}" --url "$url" \
        --server-pid "$server_pid" "${load_flags[@]}" "${receipts[@]}" --rates "$rates" \
        --step-secs "$step_secs" --drain-secs 3 "${label[@]}"
      stop "$server_pid"
    done
  done
}

fanout() {
  for target in $(targets); do
    start_target "$target"
    loadgen "fanout-big-$target" fanout --target "${target%-before}" --url "$url" --server-pid "$server_pid" \
      --groups 1 --members "$big_group" --rates "$big_group_rates" --step-secs "$step_secs"
    stop "$server_pid"
    start_target "$target"
    loadgen "fanout-small-$target" fanout --target "${target%-before}" --url "$url" --server-pid "$server_pid" \
      --groups 100 --members 100 --rates "$small_group_rates" --step-secs "$step_secs"
    stop "$server_pid"
  done
}

case "$scenario" in
  idle) idle ;;
  handshake) handshake ;;
  latency) latency ;;
  fanout) fanout ;;
  all) idle; handshake; latency; fanout ;;
  *) echo "usage: $0 idle|handshake|latency|fanout|all" >&2; exit 2 ;;
esac
