#!/usr/bin/env bash
# Client mode (issue 8, first part): what the client-mode hop costs per byte. From the
# repository root:
#   cargo build --release -p tlsfront -p tlsfront-load
#   bash tuning/runs/2026-11-23-client/run.sh        # ~1 minute
# Layout: tlsfront "edge" (server mode, 1 worker) and tlsfront "gw" (client mode, 1 worker)
# both on CPU 0; tlsfront-load and its sink/source backends on CPU 1; 127.0.0.1 only.
# The load speaks plaintext to gw, gw speaks TLS to edge, edge plaintext to the backends.
set -euo pipefail

RUN_DIR=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$(pwd)/target/release}
D=${DURATION:-10s}
cd "$RUN_DIR"
mkdir -p raw pki
if [ ! -f pki/ca.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=run CA" \
        -days 30 -keyout pki/ca-key.pem -out pki/ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -keyout pki/key.pem -out pki/req.pem 2>/dev/null
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n' >pki/ext.cnf
    openssl x509 -req -in pki/req.pem -CA pki/ca.pem -CAkey pki/ca-key.pem -CAcreateserial \
        -days 30 -extfile pki/ext.cnf -out pki/cert.pem 2>/dev/null
fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for spec in sink:19302 source:19303 echo:19301; do
    taskset -c 1 "$BIN/tlsfront-load" backend --"${spec%%:*}" --listen "127.0.0.1:${spec##*:}" \
        --threads 1 --cpus 1 >/dev/null &
    PIDS+=($!)
done
cat >edge.toml <<TOML
[global]
workers = 1
cpus = [0]
[[service]]
name = "sink"
listen = "127.0.0.1:20302"
backend = "127.0.0.1:19302"
cert = "pki/cert.pem"
key = "pki/key.pem"
[[service]]
name = "source"
listen = "127.0.0.1:20303"
backend = "127.0.0.1:19303"
cert = "pki/cert.pem"
key = "pki/key.pem"
[[service]]
name = "echo"
listen = "127.0.0.1:20301"
backend = "127.0.0.1:19301"
cert = "pki/cert.pem"
key = "pki/key.pem"
TOML
cat >gw.toml <<TOML
[global]
workers = 1
cpus = [0]
[[service]]
name = "gw-sink"
mode = "client"
listen = "127.0.0.1:21302"
backend = "127.0.0.1:20302"
server_name = "localhost"
ca = "pki/ca.pem"
[[service]]
name = "gw-source"
mode = "client"
listen = "127.0.0.1:21303"
backend = "127.0.0.1:20303"
server_name = "localhost"
ca = "pki/ca.pem"
[[service]]
name = "gw-echo"
mode = "client"
listen = "127.0.0.1:21301"
backend = "127.0.0.1:20301"
server_name = "localhost"
ca = "pki/ca.pem"
TOML
"$BIN/tlsfront" serve --config edge.toml --log-level warn 2>raw/edge.log &
EDGE=$!; PIDS+=($EDGE)
"$BIN/tlsfront" serve --config gw.toml --log-level warn 2>raw/gw.log &
GW=$!; PIDS+=($GW)
for _ in $(seq 50); do [ -n "$(ss -ltnH 'sport = :21303')" ] && break; sleep 0.1; done

load() {
    local name=$1; shift
    echo "== $name"
    timeout 300 taskset -c 1 "$BIN/tlsfront-load" "$@" --threads 1 --cpus 1 --quiet \
        --json "raw/$name.json" | tee "raw/$name.txt" || true
}
load gw-send throughput --connect 127.0.0.1:21302 --plain --direction send --streams 2 \
    --duration "$D" --warmup 1s --pid $GW
load gw-receive throughput --connect 127.0.0.1:21303 --plain --direction receive --streams 2 \
    --duration "$D" --warmup 1s --pid $GW
load edge-send throughput --connect 127.0.0.1:20302 --sni localhost --ca pki/ca.pem \
    --direction send --streams 2 --duration "$D" --warmup 1s --pid $EDGE
load gw-connections handshake --connect 127.0.0.1:21301 --plain --concurrency 64 \
    --duration "$D" --warmup 1s --pid $GW
