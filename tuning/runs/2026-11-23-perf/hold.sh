#!/bin/bash
# Idle memory per TLS connection at scale (issue 9): tlsfront (one worker, CPU 0) in front of
# tlsfront-load's echo backend, N idle TLS 1.3 connections held by tlsfront-load (CPU 1),
# the proxy's RSS and fds per connection read from /proc. On this host N is at most 9500: the
# proxy needs two descriptors per connection and the hard RLIMIT_NOFILE is 20000 (root here
# lacks CAP_SYS_RESOURCE, so it cannot be raised). 50,000 run inside User-Mode Linux, whose
# kernel has its own limits:  UML_MEM=8G UML_TIMEOUT=1500 scripts/uml-run \
#     tuning/runs/2026-11-23-perf/hold.sh 50000 600s
# Past ~30,000 connections to one destination, connect() slows to a crawl: it tries ports of
# one parity first, so past half of ip_local_port_range every connect() walks the used ones.
# Above 25,000 the clients and the proxy's backend connections are therefore spread over
# 127.0.0.1, 127.0.0.2, ... (one `hold` per address; the proxy listens on 0.0.0.0 and its
# backend pool has one address per hold), and the proxy's RSS and fds are read here.
# The kTLS relay in UML (HOLD_KTLS=auto) needs the host's vm.max_map_count raised (e.g.
# sysctl -w vm.max_map_count=1048576): UML maps guest pages one by one, and at ~32,000 kTLS
# connections the proxy's host process hit 65,530 maps ("UML ran out of memory on the host
# side") and the guest killed it.
# (--insecure: a self-signed certificate; verification costs the proxy nothing.)
set -euo pipefail
N=${1:-9500}
DURATION=${2:-5s} # opening takes a while inside UML: e.g. 600s for 50,000
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=$ROOT/target/release
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
PIN0=(taskset -c 0) PIN1=(taskset -c 1)
if grep -qs "UML" /proc/cpuinfo; then
    # Inside User-Mode Linux (scripts/uml-run): its own kernel, so its own limits — room
    # for 50,000 connections (three sockets each across the processes) and their ports.
    # One CPU there: nothing to pin.
    ulimit -Hn 1048576
    sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
    PIN0=() PIN1=()
fi
ulimit -n "$(ulimit -Hn)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$W/key.pem" -out "$W/cert.pem" -days 2 2>/dev/null
PER_ADDR=${HOLD_PER_ADDR:-25000}
SPREAD=$(((N + PER_ADDR - 1) / PER_ADDR))
ADDRS=() POOL=""
for i in $(seq 1 "$SPREAD"); do
    ADDRS+=("127.0.0.$i")
    POOL+="${POOL:+, }\"127.0.0.$i:18181\""
done
"${PIN1[@]}" "$BIN/tlsfront-load" backend --echo --listen 0.0.0.0:18181 >/dev/null 2>&1 &
cat >"$W/tlsfront.toml" <<CONF
[global]
workers = 1
pin = false
allow_root = true
[[service]]
name = "hold"
listen = "0.0.0.0:18443"
backend = [$POOL]
cert = "cert.pem"
key = "key.pem"
max_connections = $((N + 100))
idle_timeout = "30m"
# No TCP keepalive: inside UML, 50,000 connections' probes come due together and the guest's
# loopback drops enough of them that connections time out after ~117 s (60 s + 5 × 10 s).
keepalive = false
# The userspace relay (what this host runs); HOLD_KTLS=auto measures the kTLS relay where the
# kernel has it (UML does).
ktls = "${HOLD_KTLS:-off}"
CONF
"${PIN0[@]}" "$BIN/tlsfront" serve --config "$W/tlsfront.toml" --log-level warn &
PID=$!
sleep 3
if [ "$SPREAD" = 1 ]; then
    "${PIN1[@]}" "$BIN/tlsfront-load" hold --connect 127.0.0.1:18443 --sni localhost \
        --insecure --connections "$N" --concurrency 64 --duration "$DURATION" --threads 1 \
        --pid "$PID"
    exit
fi
sample() { # RSS (kB), fds, established client connections
    echo "$(awk '/^VmRSS/ {print $2}' /proc/$PID/status) $(ls /proc/$PID/fd | wc -l)" \
        "$(ss -Htn state established '( sport = :18443 )' | wc -l)"
}
read -r RSS0 FDS0 _ < <(sample)
HOLDS=()
for i in "${!ADDRS[@]}"; do
    SHARE=$(((i + 1) * N / SPREAD - i * N / SPREAD))
    "${PIN1[@]}" "$BIN/tlsfront-load" hold --connect "${ADDRS[$i]}:18443" --sni localhost \
        --insecure --connections "$SHARE" --concurrency $((64 / SPREAD)) \
        --duration "$DURATION" --threads 1 -q >"$W/hold-$i.txt" 2>&1 &
    HOLDS+=($!)
done
# Wait until every connection is established, or the holds end.
START=$SECONDS
while sleep 10; do
    read -r RSS FDS OPEN < <(sample)
    echo "[$((SECONDS - START))s] $OPEN connections established, proxy RSS ${RSS} kB"
    [ "$OPEN" -ge "$N" ] && break
    kill -0 "${HOLDS[@]}" 2>/dev/null || break
done
sleep 5 # let the last handshakes' buffers go back to the pools
read -r RSS FDS OPEN < <(sample)
echo "held $OPEN of $N across ${ADDRS[*]} (one hold each)"
echo "proxy RSS $RSS0 kB -> $RSS kB, fds $FDS0 -> $FDS"
awk -v r0="$RSS0" -v r="$RSS" -v f0="$FDS0" -v f="$FDS" -v n="$OPEN" 'BEGIN {
    printf "per connection: %.1f KB RSS, %.2f fds\n", (r - r0) * 1024 / n / 1000, (f - f0) / n }'
kill "${HOLDS[@]}" 2>/dev/null || true
wait "${HOLDS[@]}" 2>/dev/null || true
echo "(each hold's own report follows; this script stopped them once measured, hence"
echo " their \"interrupted\")"
cat "$W"/hold-*.txt
