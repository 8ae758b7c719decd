#!/usr/bin/env bash
# Capacity run with tlsfront-load (issue 5). From the repository root:
#   cargo build --release -p tlsfront -p tlsfront-load
#   bash tuning/runs/2026-11-22-load/run.sh          # everything, ~6 minutes
#   bash tuning/runs/2026-11-22-load/run.sh stime    # only steps whose name matches
# Layout: tlsfront (1 worker) pinned to CPU 0; the load tool and the backends on CPU 1;
# 127.0.0.1 only. Every step is bounded by `timeout`. Outputs go to raw/NAME.{txt,json}.
set -euo pipefail

RUN_DIR=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$(pwd)/target/release}
ONLY=${1:-}
D=${DURATION:-10s}
cd "$RUN_DIR"
mkdir -p raw
[ -f ca.pem ] && [ -f cert.pem ] && [ -f key.pem ] || {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=run CA" \
        -days 30 -keyout ca-key.pem -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -keyout key.pem -out req.pem 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n' >ext.cnf
    openssl x509 -req -in req.pem -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
        -extfile ext.cnf -out cert.pem 2>/dev/null
    rm -f req.pem ext.cnf ca.srl
}

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
want() { [ -z "$ONLY" ] || [[ "$1" == *"$ONLY"* ]]; }

# Backends on CPU 1, one thread each: echo :19101, sink :19102, source :19103.
for spec in echo:19101 sink:19102 source:19103; do
    taskset -c 1 "$BIN/tlsfront-load" backend --"${spec%%:*}" --listen "127.0.0.1:${spec##*:}" \
        --threads 1 --cpus 1 >/dev/null &
    PIDS+=($!)
done
cat >proxy.toml <<TOML
[global]
workers = 1
cpus = [0]

[[service]]
name = "echo"
listen = "127.0.0.1:20101"
backend = "127.0.0.1:19101"
cert = "cert.pem"
key = "key.pem"

[[service]]
name = "sink"
listen = "127.0.0.1:20102"
backend = "127.0.0.1:19102"
cert = "cert.pem"
key = "key.pem"

[[service]]
name = "source"
listen = "127.0.0.1:20103"
backend = "127.0.0.1:19103"
cert = "cert.pem"
key = "key.pem"
TOML
"$BIN/tlsfront" serve --config proxy.toml --log-level warn 2>raw/proxy.log &
PROXY=$!; PIDS+=($PROXY)
for _ in $(seq 50); do [ -n "$(ss -ltnH 'sport = :20103')" ] && break; sleep 0.1; done

load() {   # load NAME SUBCOMMAND ARGS... : one tlsfront-load run on CPU 1
    local name=$1; shift
    want "$name" || return 0
    echo "== $name"
    timeout 300 taskset -c 1 "$BIN/tlsfront-load" "$@" --threads 1 --cpus 1 --quiet \
        --json "raw/$name.json" | tee "raw/$name.txt" || true
}
TLS=(--sni localhost --ca ca.pem)

# 1. Client efficiency: one tlsfront-load thread vs four `openssl s_time -new` on CPU 1.
if want stime; then
    echo "== stime-x4"
    before=$(awk '{print $14 + $15}' /proc/$PROXY/stat)
    for i in 1 2 3 4; do
        # The subshell reports its waited-for child's CPU (cutime + cstime) when done.
        taskset -c 1 bash -c 'openssl s_time -connect 127.0.0.1:20101 -new -time 10 >"$1" 2>&1;
            awk "{print \"client_cpu_ticks\", \$16 + \$17}" /proc/$$/stat >>"$1"' _ "raw/stime-$i.txt" &
    done
    wait_for=$(jobs -p | tail -4); for p in $wait_for; do wait "$p" || true; done
    after=$(awk '{print $14 + $15}' /proc/$PROXY/stat)
    echo "proxy_cpu_ticks $((after - before)) (CLK_TCK $(getconf CLK_TCK))" >raw/stime-x4.txt
    cat raw/stime-{1,2,3,4}.txt >>raw/stime-x4.txt
    grep -h "connections in" raw/stime-x4.txt | grep real || true
fi
load handshake-full handshake --connect 127.0.0.1:20101 "${TLS[@]}" --concurrency 64 \
    --duration "$D" --warmup 1s --pid $PROXY
load handshake-resumed handshake --connect 127.0.0.1:20101 "${TLS[@]}" --concurrency 64 \
    --resume --duration "$D" --warmup 1s --pid $PROXY
load handshake-full-tls12 handshake --connect 127.0.0.1:20101 "${TLS[@]}" --tls-version 1.2 \
    --concurrency 64 --duration "$D" --warmup 1s --pid $PROXY

# 2. tlsfront vs direct to the backend; AES-GCM vs ChaCha20.
for suite in aes128gcm aes256gcm chacha20; do
    load "send-$suite" throughput --connect 127.0.0.1:20102 "${TLS[@]}" --suite $suite \
        --direction send --streams 2 --duration "$D" --warmup 1s --pid $PROXY
    load "receive-$suite" throughput --connect 127.0.0.1:20103 "${TLS[@]}" --suite $suite \
        --direction receive --streams 2 --duration "$D" --warmup 1s --pid $PROXY
done
load send-direct throughput --connect 127.0.0.1:19102 --plain --direction send --streams 2 \
    --duration "$D" --warmup 1s
load receive-direct throughput --connect 127.0.0.1:19103 --plain --direction receive \
    --streams 2 --duration "$D" --warmup 1s
for rate in 2000 10000; do
    load "latency-$rate" latency --connect 127.0.0.1:20101 "${TLS[@]}" --rate $rate \
        --connections 32 --size 64 --duration "$D" --warmup 1s --pid $PROXY \
        --hlog "raw/latency-$rate.hlog" --plot "raw/latency-$rate.svg"
    load "latency-$rate-direct" latency --connect 127.0.0.1:19101 --plain --rate $rate \
        --connections 32 --size 64 --duration "$D" --warmup 1s
done

# 3. Handshake ramp: highest new-connection rate with p99 ≤ 10 ms.
load ramp-handshake ramp --connect 127.0.0.1:20101 "${TLS[@]}" --of connections \
    --start 500 --step 250 --max-rate 6000 --slo-p99 10 --concurrency 512 --duration 3s \
    --warmup 500ms --pid $PROXY --plot raw/ramp-handshake.svg

# 4. Idle connections: the proxy's memory and fds per held TLS connection.
load hold-5000 hold --connect 127.0.0.1:20101 "${TLS[@]}" --connections 5000 --concurrency 64 \
    --duration 8s --pid $PROXY
