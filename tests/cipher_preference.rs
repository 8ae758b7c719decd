//! `cipher_preference`: auto (AES-GCM where the CPU accelerates it, but ChaCha20 for a client
//! that lists ChaCha20 first), server (the configured order wins) and client (the client's
//! order wins), checked with rustls clients offering suites in a chosen order and with
//! `openssl s_client`.

mod common;

use rustls::{CipherSuite, SupportedCipherSuite};

use common::*;
use tlsfront::tls::cpu::aes_gcm_accelerated;

/// A client offering exactly these suites in this order (their versions only).
fn offering(order: &[SupportedCipherSuite]) -> ClientOpts {
    let mut versions = Vec::new();
    for s in order {
        let v = if s.tls13().is_some() {
            &rustls::version::TLS13
        } else {
            &rustls::version::TLS12
        };
        if !versions.contains(&v) {
            versions.push(v);
        }
    }
    ClientOpts {
        versions,
        suites: order.to_vec(),
        ..Default::default()
    }
}

fn suite_with(proxy: &Proxy, env: &TestEnv, order: &[SupportedCipherSuite]) -> CipherSuite {
    let mut tls = tls_connect_ok(proxy.addr(), &env.client_with(&offering(order)));
    assert_echo(&mut tls, b"which suite?\n", "echo");
    negotiated(&tls).1.expect("a suite after the handshake")
}

use suites::{
    TLS13_AES_128_GCM_SHA256 as AES128, TLS13_AES_256_GCM_SHA384 as AES256,
    TLS13_CHACHA20_POLY1305_SHA256 as CHACHA, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 as AES128_12,
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 as CHACHA_12,
};

#[test]
fn auto_follows_the_cpu_and_a_client_that_lists_chacha_first() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    // No cipher_preference line: auto is the default.
    let proxy = env.config(echo.addr).start();
    let chacha_first = suite_with(&proxy, &env, &[CHACHA, AES128, AES256]);
    let aes_first = suite_with(&proxy, &env, &[AES128, CHACHA]);
    let chacha_first_12 = suite_with(&proxy, &env, &[CHACHA_12, AES128_12]);
    let aes_first_12 = suite_with(&proxy, &env, &[AES128_12, CHACHA_12]);
    assert_eq!(chacha_first, CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    assert_eq!(chacha_first_12, CHACHA_12.suite());
    if aes_gcm_accelerated() {
        // AES-GCM is preferred: the server's AES order applies (AES-128 first by default).
        assert_eq!(aes_first, CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(aes_first_12, AES128_12.suite());
        assert_eq!(
            suite_with(&proxy, &env, &[AES256, AES128, CHACHA]),
            CipherSuite::TLS13_AES_128_GCM_SHA256,
            "among AES suites the server order holds"
        );
    } else {
        assert_eq!(aes_first, CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        assert_eq!(aes_first_12, CHACHA_12.suite());
    }
}

#[test]
fn server_order_wins_with_server() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .service(r#"cipher_preference = "server""#)
        .service(r#"ciphers = ["TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_128_GCM_SHA256"]"#)
        .start();
    assert_eq!(
        suite_with(&proxy, &env, &[AES128, CHACHA]),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
    let env2 = TestEnv::new();
    let proxy2 = env2
        .config(echo.addr)
        .service(r#"cipher_preference = "server""#)
        .start();
    // The default order puts AES-128-GCM first.
    assert_eq!(
        suite_with(&proxy2, &env2, &[CHACHA, AES256, AES128]),
        CipherSuite::TLS13_AES_128_GCM_SHA256
    );
}

#[test]
fn client_order_wins_with_client() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .service(r#"cipher_preference = "client""#)
        .service(r#"ciphers = ["TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_256_GCM_SHA384", "TLS13_AES_128_GCM_SHA256"]"#)
        .start();
    assert_eq!(
        suite_with(&proxy, &env, &[AES128, CHACHA]),
        CipherSuite::TLS13_AES_128_GCM_SHA256
    );
    assert_eq!(
        suite_with(&proxy, &env, &[AES256, AES128, CHACHA]),
        CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    assert_eq!(
        suite_with(&proxy, &env, &[CHACHA, AES128]),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
}

#[test]
fn openssl_client_listing_chacha_first_gets_chacha_under_auto() {
    if openssl_or_skip("openssl_client_listing_chacha_first_gets_chacha_under_auto").is_none() {
        return;
    }
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env.config(echo.addr).start();
    let run = |suites: &str| {
        s_client(
            proxy.addr(),
            &env.ca_pem,
            &["-tls1_3", "-ciphersuites", suites],
            b"hello\n",
            6,
            std::time::Duration::from_secs(30),
        )
    };
    let chacha = run("TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256");
    assert_eq!(
        chacha.ciphersuite(),
        Some("TLS_CHACHA20_POLY1305_SHA256"),
        "{}",
        chacha.stderr
    );
    let aes = run("TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256");
    let want = if aes_gcm_accelerated() {
        "TLS_AES_128_GCM_SHA256"
    } else {
        "TLS_CHACHA20_POLY1305_SHA256"
    };
    assert_eq!(aes.ciphersuite(), Some(want), "{}", aes.stderr);
}

#[test]
fn ciphers_command_reports_features_speeds_and_an_order() {
    let out = run_tlsfront(
        ["ciphers", "--duration", "20ms", "--json"],
        std::time::Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON on stdout");
    assert_eq!(
        doc["cpu"]["aes_gcm_accelerated"].as_bool(),
        Some(aes_gcm_accelerated())
    );
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 6, "3 suites × 2 record sizes");
    for r in results {
        assert!(r["seal_mb_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["open_mb_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    let order: Vec<&str> = doc["recommended_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(order.len(), 3);
    // The order is the measured one: fastest (seal + open at 16 KiB) first.
    let speed = |suite: &str| {
        results
            .iter()
            .find(|r| r["suite"] == suite && r["record"] == 16384)
            .map(|r| r["seal_mb_s"].as_f64().unwrap() + r["open_mb_s"].as_f64().unwrap())
            .unwrap()
    };
    assert!(speed(order[0]) >= speed(order[1]) && speed(order[1]) >= speed(order[2]));

    let table = run_tlsfront(
        ["ciphers", "--duration", "20ms"],
        std::time::Duration::from_secs(60),
    );
    assert!(
        table.stdout.contains("recommended server order"),
        "{}",
        table.stdout
    );
}
