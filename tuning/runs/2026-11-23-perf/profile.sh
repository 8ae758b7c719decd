#!/bin/bash
# profile.sh CONF_DIR STEP [perf]: one load step against tlsfront with the backends and
# certificates a `tuning/compare --out DIR` run left in DIR/conf (tlsfront on CPU 0, load and
# backends on CPU 1, 5 s); prints the client's rate and the proxy's user and system CPU
# (clock ticks). With `perf`, also records the proxy's profile (software clock, call graphs)
# to STEP.data in the current directory. STEP: small | bulk | full | resumed | latency.
# CONF=FILE replaces the tlsfront config (e.g. a copy with another buffer_size).
# PROXY=haproxy profiles HAProxy with the run's haproxy.cfg instead of tlsfront.
set -u
C=$1 STEP=$2 PERF=${3:-}
BIN=$(cd "$(dirname "$0")/../../.." && pwd)/target/release
pkill -f "nginx -c $C/backend-nginx.conf"; pkill -f "tlsfront-load backend"; sleep 0.3
taskset -c 1 nginx -c "$C/backend-nginx.conf" -e /dev/null &
taskset -c 1 "$BIN/tlsfront-load" backend --echo --listen 127.0.0.1:18081 >/dev/null 2>&1 &
if [ "${PROXY:-tlsfront}" = haproxy ]; then
    taskset -c 0 haproxy -db -f "$C/haproxy.cfg" >/dev/null 2>&1 &
else
    taskset -c 0 "$BIN/tlsfront" serve --config "${CONF:-$C/tlsfront.toml}" --log-level warn &
fi
TP=$!
sleep 1
TLS=(--connect 127.0.0.1:19444 --sni localhost --ca "$C/ca.pem" --threads 1 --cpus 1 --quiet)
case $STEP in
    small) CMD=(wrk -t1 -c32 -d5s https://127.0.0.1:19443/small) ;;
    bulk) CMD=(wrk -t1 -c4 -d5s https://127.0.0.1:19443/1m) ;;
    full) CMD=("$BIN/tlsfront-load" handshake "${TLS[@]}" --concurrency 64 --duration 5s --warmup 0s) ;;
    resumed) CMD=("$BIN/tlsfront-load" handshake "${TLS[@]}" --concurrency 64 --resume --duration 5s --warmup 0s) ;;
    latency) CMD=("$BIN/tlsfront-load" latency "${TLS[@]}" --rate 2000 --connections 32 --size 64 --duration 5s --warmup 0s) ;;
    *) echo "unknown step $STEP" >&2; exit 2 ;;
esac
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$TP/stat")
if [ -n "$PERF" ]; then
    perf record -e cpu-clock -F 4000 -g -p "$TP" -o "$STEP.data" -- sleep 5 >/dev/null 2>&1 &
    PP=$!
fi
OUT=$(taskset -c 1 "${CMD[@]}" 2>&1)
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$TP/stat")
[ -n "$PERF" ] && wait "$PP"
echo "$OUT" | grep -E "Requests/sec|Transfer/sec|handshakes|requests" | head -3
echo "user $((u1 - u0)) sys $((s1 - s0)) ticks"
kill "$TP"; pkill -f "nginx -c $C/backend-nginx.conf"; pkill -f "tlsfront-load backend"; wait 2>/dev/null
