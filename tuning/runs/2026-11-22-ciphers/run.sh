#!/usr/bin/env bash
# Cipher and handshake costs on this machine (issue 6). From the repository root:
#   bash tuning/runs/2026-11-22-ciphers/run.sh        # ~4 minutes, pinned to CPU 1
# Writes raw/: tlsfront-ciphers.{txt,json}, openssl-speed-*.txt, bench-*.txt.
set -euo pipefail
RUN_DIR=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$RUN_DIR/raw"
cargo build --release -q
BIN=$(pwd)/target/release/tlsfront
PIN="taskset -c 1"

$PIN "$BIN" ciphers --duration 2s | tee "$RUN_DIR/raw/tlsfront-ciphers.txt"
$PIN "$BIN" ciphers --duration 2s --json >"$RUN_DIR/raw/tlsfront-ciphers.json"
for alg in aes-128-gcm aes-256-gcm chacha20-poly1305; do
    for bytes in 1024 16384; do
        # OpenSSL's EVP AEAD encryption, one process, same core: the reference for "seal".
        $PIN openssl speed -evp "$alg" -bytes "$bytes" -seconds 3 2>&1 \
            | tee "$RUN_DIR/raw/openssl-speed-$alg-$bytes.txt" | tail -1
    done
done
$PIN openssl speed -seconds 3 ecdsap256 rsa2048 ed25519 ecdhx25519 ecdhp256 2>&1 \
    | tee "$RUN_DIR/raw/openssl-speed-sign-ecdh.txt" | tail -12
$PIN cargo bench -q --bench handshake -- --quick 2>&1 | tee "$RUN_DIR/raw/bench-handshake.txt"
$PIN cargo bench -q --bench records -- --quick 2>&1 | tee "$RUN_DIR/raw/bench-records.txt"
