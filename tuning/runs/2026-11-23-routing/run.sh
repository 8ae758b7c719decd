#!/usr/bin/env bash
# What routing costs (issue 7). From the repository root:
#   cargo build --release -p tlsfront -p tlsfront-load
#   bash tuning/runs/2026-11-23-routing/run.sh        # ~2 minutes
# Layout: tlsfront "edge" (1 worker) and tlsfront "pt" (1 worker, a pass-through route in
# front of edge) both on CPU 0; the load tool and the echo/sink/source backends on CPU 1;
# 127.0.0.1 only. Every step is bounded by `timeout`. Outputs go to raw/NAME.{txt,json}.
set -euo pipefail

RUN_DIR=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$(pwd)/target/release}
D=${DURATION:-10s}
cd "$RUN_DIR"
mkdir -p raw pki
cd pki
if [ ! -f ca.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=run CA" \
        -days 30 -keyout ca-key.pem -out ca.pem 2>/dev/null
    for name in localhost a.test b.test c.test; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
            -keyout "$name.key" -out req.pem 2>/dev/null
        printf 'subjectAltName=DNS:%s,DNS:*.%s\nbasicConstraints=critical,CA:FALSE\n' \
            "$name" "$name" >ext.cnf
        openssl x509 -req -in req.pem -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
            -extfile ext.cnf -out "$name.pem" 2>/dev/null
    done
    rm -f req.pem ext.cnf ca.srl
fi
cd ..

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

for spec in echo:19201 sink:19202 source:19203; do
    taskset -c 1 "$BIN/tlsfront-load" backend --"${spec%%:*}" --listen "127.0.0.1:${spec##*:}" \
        --threads 1 --cpus 1 >/dev/null &
    PIDS+=($!)
done
# edge: one service without routes (plain) and one with three routes and a default.
cat >edge.toml <<TOML
[global]
workers = 1
cpus = [0]

[[service]]
name = "plain"
listen = "127.0.0.1:20201"
backend = "127.0.0.1:19201"
cert = "pki/localhost.pem"
key = "pki/localhost.key"

[[service]]
name = "routed"
listen = "127.0.0.1:20202"
backend = "127.0.0.1:19201"
cert = "pki/localhost.pem"
key = "pki/localhost.key"
[[service.route]]
sni = ["a.test", "*.a.test"]
backend = "127.0.0.1:19201"
cert = "pki/a.test.pem"
key = "pki/a.test.key"
[[service.route]]
sni = ["b.test", "*.b.test"]
backend = "127.0.0.1:19201"
cert = "pki/b.test.pem"
key = "pki/b.test.key"
[[service.route]]
sni = ["c.test", "*.c.test"]
backend = "127.0.0.1:19201"
cert = "pki/c.test.pem"
key = "pki/c.test.key"

[[service]]
name = "sink"
listen = "127.0.0.1:20203"
backend = "127.0.0.1:19202"
cert = "pki/localhost.pem"
key = "pki/localhost.key"

[[service]]
name = "source"
listen = "127.0.0.1:20204"
backend = "127.0.0.1:19203"
cert = "pki/localhost.pem"
key = "pki/localhost.key"
TOML
# pt: pass-through routes in front of edge's sink and source services.
cat >pt.toml <<TOML
[global]
workers = 1
cpus = [0]

[[service]]
name = "pt-sink"
listen = "127.0.0.1:20211"
unknown_sni = "reject"
[[service.route]]
sni = "localhost"
passthrough = true
backend = "127.0.0.1:20203"

[[service]]
name = "pt-source"
listen = "127.0.0.1:20212"
unknown_sni = "reject"
[[service.route]]
sni = "localhost"
passthrough = true
backend = "127.0.0.1:20204"
TOML
"$BIN/tlsfront" serve --config edge.toml --log-level warn 2>raw/edge.log &
EDGE=$!; PIDS+=($EDGE)
"$BIN/tlsfront" serve --config pt.toml --log-level warn 2>raw/pt.log &
PT=$!; PIDS+=($PT)
for _ in $(seq 50); do [ -n "$(ss -ltnH 'sport = :20212')" ] && break; sleep 0.1; done

load() {   # load NAME SUBCOMMAND ARGS... : one tlsfront-load run on CPU 1
    local name=$1; shift
    echo "== $name"
    timeout 300 taskset -c 1 "$BIN/tlsfront-load" "$@" --threads 1 --cpus 1 --quiet \
        --ca pki/ca.pem --json "raw/$name.json" | tee "raw/$name.txt" || true
}

# 1. Handshakes: a service without routes vs one choosing among three (exact and wildcard).
load handshake-plain handshake --connect 127.0.0.1:20201 --sni localhost --concurrency 64 \
    --duration "$D" --warmup 1s --pid $EDGE
load handshake-route-exact handshake --connect 127.0.0.1:20202 --sni b.test --concurrency 64 \
    --duration "$D" --warmup 1s --pid $EDGE
load handshake-route-wildcard handshake --connect 127.0.0.1:20202 --sni x.c.test \
    --concurrency 64 --duration "$D" --warmup 1s --pid $EDGE
load handshake-route-default handshake --connect 127.0.0.1:20202 --sni localhost \
    --concurrency 64 --duration "$D" --warmup 1s --pid $EDGE

# 2. Bulk through a pass-through hop (pt → edge → sink/source): pt's own CPU per byte.
load send-direct-edge throughput --connect 127.0.0.1:20203 --sni localhost --direction send \
    --streams 2 --duration "$D" --warmup 1s --pid $EDGE
load send-via-passthrough throughput --connect 127.0.0.1:20211 --sni localhost \
    --direction send --streams 2 --duration "$D" --warmup 1s --pid $PT
load receive-via-passthrough throughput --connect 127.0.0.1:20212 --sni localhost \
    --direction receive --streams 2 --duration "$D" --warmup 1s --pid $PT
