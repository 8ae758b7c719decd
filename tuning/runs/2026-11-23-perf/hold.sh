#!/bin/bash
# Idle memory per TLS connection at scale (issue 9): tlsfront (one worker, CPU 0) in front of
# tlsfront-load's echo backend, N idle TLS 1.3 connections held by tlsfront-load (CPU 1),
# the proxy's RSS and fds per connection read from /proc. On this host N is at most 9500: the
# proxy needs two descriptors per connection and the hard RLIMIT_NOFILE is 20000 (root here
# lacks CAP_SYS_RESOURCE, so it cannot be raised). 50,000 run inside User-Mode Linux, whose
# kernel has its own limits:  UML_MEM=8G UML_TIMEOUT=1500 scripts/uml-run \
#     tuning/runs/2026-11-23-perf/hold.sh 50000 600s
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
"${PIN1[@]}" "$BIN/tlsfront-load" backend --echo --listen 127.0.0.1:18181 >/dev/null 2>&1 &
cat >"$W/tlsfront.toml" <<CONF
[global]
workers = 1
pin = false
[[service]]
name = "hold"
listen = "127.0.0.1:18443"
backend = "127.0.0.1:18181"
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
"${PIN1[@]}" "$BIN/tlsfront-load" hold --connect 127.0.0.1:18443 --sni localhost \
    --insecure --connections "$N" --concurrency 64 --duration "$DURATION" --threads 1 \
    --pid "$PID"
