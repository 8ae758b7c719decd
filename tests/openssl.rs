//! Interop with `openssl s_client` (OpenSSL 3.x) through the proxy to an echo backend.

mod common;

use std::time::Duration;

use common::*;

/// Runs s_client with `args`, sends `input`, and checks the negotiated protocol/cipher and that
/// exactly `input` comes back on stdout.
fn s_client_echo(test: &str, args: &[&str], input: &[u8], want_proto: &str, want_cipher: &str) {
    if openssl_or_skip(test).is_none() {
        return;
    }
    let env = TestEnv::new();
    let backend = Backend::echo();
    let proxy = env.config(backend.addr).start();

    let run = s_client(
        proxy.addr(),
        &env.ca_pem,
        args,
        input,
        input.len(),
        Duration::from_secs(30),
    );
    assert!(
        run.stderr.contains("Verification: OK"),
        "certificate verification against the test CA did not succeed; s_client stderr:\n{}",
        run.stderr
    );
    assert_eq!(
        run.protocol(),
        Some(want_proto),
        "negotiated protocol; s_client stderr:\n{}",
        run.stderr
    );
    assert_eq!(
        run.ciphersuite(),
        Some(want_cipher),
        "negotiated cipher; s_client stderr:\n{}",
        run.stderr
    );
    if run.stdout.len() != input.len() || run.stdout != input {
        panic!(
            "s_client echo mismatch: got {} bytes (sha256 {}), want {} bytes (sha256 {}); \
             s_client exit {:?}; stderr:\n{}",
            run.stdout.len(),
            sha256_hex(&run.stdout),
            input.len(),
            sha256_hex(input),
            run.status,
            run.stderr
        );
    }
    assert_eq!(backend.bytes_received(), input.len() as u64);
}

const LINE: &[u8] = b"hello through tlsfront via openssl s_client\n";

#[test]
fn openssl_tls13_aes128gcm() {
    s_client_echo(
        "openssl_tls13_aes128gcm",
        &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
        LINE,
        "TLSv1.3",
        "TLS_AES_128_GCM_SHA256",
    );
}

#[test]
fn openssl_tls13_aes256gcm() {
    s_client_echo(
        "openssl_tls13_aes256gcm",
        &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
        LINE,
        "TLSv1.3",
        "TLS_AES_256_GCM_SHA384",
    );
}

#[test]
fn openssl_tls13_chacha20() {
    s_client_echo(
        "openssl_tls13_chacha20",
        &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
        LINE,
        "TLSv1.3",
        "TLS_CHACHA20_POLY1305_SHA256",
    );
}

#[test]
fn openssl_tls12_ecdhe_ecdsa_aes128gcm() {
    s_client_echo(
        "openssl_tls12_ecdhe_ecdsa_aes128gcm",
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        LINE,
        "TLSv1.2",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    );
}

#[test]
fn openssl_tls12_ecdhe_ecdsa_aes256gcm() {
    s_client_echo(
        "openssl_tls12_ecdhe_ecdsa_aes256gcm",
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
        LINE,
        "TLSv1.2",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
    );
}

#[test]
fn openssl_tls12_ecdhe_ecdsa_chacha20() {
    s_client_echo(
        "openssl_tls12_ecdhe_ecdsa_chacha20",
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
        LINE,
        "TLSv1.2",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    );
}

#[test]
fn openssl_tls13_1mib_binary() {
    s_client_echo(
        "openssl_tls13_1mib_binary",
        &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
        &random_bytes(MIB),
        "TLSv1.3",
        "TLS_CHACHA20_POLY1305_SHA256",
    );
}

#[test]
fn openssl_tls12_1mib_binary() {
    s_client_echo(
        "openssl_tls12_1mib_binary",
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        &random_bytes(MIB),
        "TLSv1.2",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    );
}
