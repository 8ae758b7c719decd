#!/usr/bin/env bash
# Reproduces the 2026-11-22 measurements (see README.md). From the repository root:
#   cargo build --release -p tlsfront -p tlsfront-load
#   bash tuning/runs/2026-11-22/run.sh            # all measurements, ~3 minutes
#   bash tuning/runs/2026-11-22/run.sh bulk-tls-send-4   # only runs whose name matches
# Layout: proxy (1 worker) on CPU 0; load generator and backend on CPU 1; 127.0.0.1 only.
# Every step is bounded by `timeout`. Raw outputs land next to this script as NAME.txt.
set -euo pipefail

RUN_DIR=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$(pwd)/target/release}
ONLY=${1:-}
OUT_DIR=${OUT_DIR:-$RUN_DIR}   # where NAME.txt / NAME.json go
DURATION=${DURATION:-10}
CLK_TCK=$(getconf CLK_TCK)
cd "$RUN_DIR"
mkdir -p "$OUT_DIR"
[ -f cert.pem ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE -days 30 -keyout key.pem -out cert.pem 2>/dev/null

LOGS=$(mktemp -d /tmp/tlsfront-run.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime of the whole process
uticks() { awk '{print $14}' "/proc/$1/stat"; }
sticks() { awk '{print $15}' "/proc/$1/stat"; }
secs() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }'; }

# start_backend MODE PORT [-v]: sets BACKEND_PID once it prints its address.
start_backend() {
    taskset -c 1 "$BIN/tlsfront-load" backend --listen "127.0.0.1:$2" "--$1" ${3:-} >"$LOGS/backend.out" 2>&1 &
    BACKEND_PID=$!; PIDS+=("$BACKEND_PID")
    for _ in $(seq 50); do grep -q '^listening' "$LOGS/backend.out" && return; sleep 0.1; done
    echo "backend did not start" >&2; exit 1
}
# stop_backend OUT: with -v, per-connection lines and their byte totals go to OUT.
stop_backend() {
    kill "$BACKEND_PID"; wait "$BACKEND_PID" 2>/dev/null || true
    if grep -q '^closed' "$LOGS/backend.out"; then
        echo "--- backend connections (bytes the backend itself counted):" >>"$1"
        grep '^closed' "$LOGS/backend.out" >>"$1"
        awk '/^closed/ { for (i = 1; i <= NF; i++) { if ($i ~ /^in=/) a += substr($i, 4); if ($i ~ /^out=/) b += substr($i, 5) } }
             END { printf "--- backend total: in=%.0f out=%.0f\n", a, b }' "$LOGS/backend.out" >>"$1"
    fi
}

# start_proxy CONFIG LEVEL PORT: sets PROXY_PID once PORT is listening.
start_proxy() {
    taskset -c 0 "$BIN/tlsfront" serve --config "$1" --log-level "$2" >"$LOGS/proxy.log" 2>&1 &
    PROXY_PID=$!; PIDS+=("$PROXY_PID")
    for _ in $(seq 50); do [ -n "$(ss -ltnH "sport = :$3")" ] && return; sleep 0.1; done
    echo "proxy did not start" >&2; cat "$LOGS/proxy.log" >&2; exit 1
}
# stop_proxy OUT: SIGTERM, wait (bounded), then summarize its log into OUT.
stop_proxy() {
    kill -TERM "$PROXY_PID"
    for _ in $(seq 150); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$PROXY_PID" 2>/dev/null; then echo "PROXY DID NOT EXIT 15 s AFTER SIGTERM" >>"$1"; kill -KILL "$PROXY_PID"; fi
    wait "$PROXY_PID" 2>/dev/null && rc=0 || rc=$?
    {
        echo "--- proxy: exit status $rc; log has $(wc -l <"$LOGS/proxy.log") lines; WARN/ERROR lines by reason:"
        grep -E ' (WARN|ERROR) ' "$LOGS/proxy.log" | grep -o 'reason=[a-z_]*\|"[a-z ]*failed"\|cannot create TLS session' | sort | uniq -c || true
        echo "--- proxy log, first 5 and last 6 lines:"
        head -5 "$LOGS/proxy.log"; echo "..."; tail -6 "$LOGS/proxy.log"
    } >>"$1"
}

# measure NAME MODE PORT CONFIG LEVEL -- COMMAND...: backend + proxy, run COMMAND (client on
# CPU 1) with CPU accounting for the proxy and the backend, then stop both. The backend logs
# each connection (-v) except for s_time runs (thousands of connections).
measure() {
    local name=$1 mode=$2 port=$3 config=$4 level=$5; shift 6
    [[ -n "$ONLY" && "$name" != *"$ONLY"* ]] && return
    local out="$OUT_DIR/$name.txt" verbose=-v
    [[ "$name" == stime* ]] && verbose=
    echo "== $name"
    start_backend "$mode" "$port" $verbose
    [ "$config" != - ] && start_proxy "$config" "$level" $((port + 1000))
    local proxy="none (client straight to the backend)"
    [ "$config" != - ] && proxy="taskset -c 0 tlsfront serve --config $config --log-level $level"
    { echo "\$ taskset -c 1 $*"; echo "# backend: taskset -c 1 tlsfront-load backend --listen 127.0.0.1:$port --$mode"
      echo "# proxy: $proxy"; echo; } >"$out"
    local p0=0 pu0=0 ps0=0 b0 t0 t1
    [ "$config" != - ] && { p0=$(ticks "$PROXY_PID"); pu0=$(uticks "$PROXY_PID"); ps0=$(sticks "$PROXY_PID"); }
    b0=$(ticks "$BACKEND_PID"); t0=$(date +%s.%N)
    timeout $((DURATION + 30)) taskset -c 1 "$@" >>"$out" 2>&1 || echo "(exit status $?)" >>"$out"
    t1=$(date +%s.%N)
    local wall; wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    echo "--- wall $wall s; backend CPU $(secs $(( $(ticks "$BACKEND_PID") - b0 ))) s" >>"$out"
    if [ "$config" != - ]; then
        echo "--- proxy CPU $(secs $(( $(ticks "$PROXY_PID") - p0 ))) s = user $(secs $(( $(uticks "$PROXY_PID") - pu0 ))) + system $(secs $(( $(sticks "$PROXY_PID") - ps0 ))) (from /proc/PID/stat, CLK_TCK=$CLK_TCK)" >>"$out"
        stop_proxy "$out"
    fi
    stop_backend "$out"
    grep -E 'connections/user|^ total|^bytes|proxy CPU|backend total|ERROR|MISMATCH' "$out" || true
}

LOAD="$BIN/tlsfront-load"
T="${DURATION}s"
S_TIME="/usr/bin/time -f %Us_user_%Ss_sys_%es_wall openssl s_time -connect 127.0.0.1:20001 -new -time $DURATION"

# 1. Handshake rate: openssl s_time, full handshakes, no data (-new, no -www).
measure stime-tls13             sink 19001 proxy-sink.toml warn  -- $S_TIME
measure stime-tls12             sink 19001 proxy-sink.toml warn  -- $S_TIME -tls1_2
measure stime-tls13-logerror    sink 19001 proxy-sink.toml error -- $S_TIME
measure stime-tls12-logerror    sink 19001 proxy-sink.toml error -- $S_TIME -tls1_2

# 2. Bulk, client -> backend (sink), through tlsfront vs. straight to the backend.
TLS_ARGS=(--connect 127.0.0.1:20001 --sni localhost --ca cert.pem)
for n in 1 4; do
    measure "bulk-tls-send-$n"   sink 19001 proxy-sink.toml warn -- "$LOAD" throughput "${TLS_ARGS[@]}" \
        --streams $n --duration $T --direction send --json "$OUT_DIR/bulk-tls-send-$n.json"
    measure "bulk-plain-send-$n" sink 19001 - - -- "$LOAD" throughput --connect 127.0.0.1:19001 --plain \
        --streams $n --duration $T --direction send --json "$OUT_DIR/bulk-plain-send-$n.json"
done
# 3. Bulk, backend (source) -> client.
TLS_ARGS=(--connect 127.0.0.1:20002 --sni localhost --ca cert.pem)
for n in 1 4; do
    measure "bulk-tls-receive-$n"   source 19002 proxy-source.toml warn -- "$LOAD" throughput "${TLS_ARGS[@]}" \
        --streams $n --duration $T --direction receive --json "$OUT_DIR/bulk-tls-receive-$n.json"
    measure "bulk-plain-receive-$n" source 19002 - - -- "$LOAD" throughput --connect 127.0.0.1:19002 --plain \
        --streams $n --duration $T --direction receive --json "$OUT_DIR/bulk-plain-receive-$n.json"
done
# 4. Both directions at once through an echo backend (checks every byte comes back).
measure bulk-tls-both-1 echo 19003 proxy-echo.toml warn -- "$LOAD" throughput --connect 127.0.0.1:20003 \
    --sni localhost --ca cert.pem --streams 1 --duration $T --direction both --json "$OUT_DIR/bulk-tls-both-1.json"

# 5. Extra: sensitivity to the proxy's buffer_size (16 KiB default -> 64 KiB), 1 stream.
measure bulk-tls-send-1-buf64k sink 19001 proxy-sink-buf64k.toml warn -- "$LOAD" throughput \
    --connect 127.0.0.1:20001 --sni localhost --ca cert.pem --streams 1 --duration $T --direction send \
    --json "$OUT_DIR/bulk-tls-send-1-buf64k.json"
measure bulk-tls-receive-1-buf64k source 19002 proxy-source-buf64k.toml warn -- "$LOAD" throughput \
    --connect 127.0.0.1:20002 --sni localhost --ca cert.pem --streams 1 --duration $T --direction receive \
    --json "$OUT_DIR/bulk-tls-receive-1-buf64k.json"
