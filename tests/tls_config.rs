//! The TLS knobs of a service are honoured: min/max_version, ciphers, groups, alpn.

mod common;

use rustls::crypto::SupportedKxGroup;
use rustls::{CipherSuite, NamedGroup, ProtocolVersion};

use common::*;

fn handshake_fails(proxy: &Proxy, env: &TestEnv, opts: &ClientOpts, what: &str) {
    if let Ok(tls) = tls_connect(proxy.addr(), &env.client_with(opts)) {
        panic!(
            "{what}: handshake unexpectedly succeeded with {:?}",
            negotiated(&tls)
        );
    }
}

#[test]
fn min_version_13_rejects_tls12() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .service(r#"min_version = "1.3""#)
        .start();
    handshake_fails(&proxy, &env, &ClientOpts::tls12(), "TLS 1.2 client");
    let mut tls = tls_connect_ok(proxy.addr(), &env.client());
    assert_eq!(tls.conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_echo(&mut tls, b"1.3 only\n", "echo");
}

#[test]
fn max_version_12_rejects_tls13() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .service(r#"max_version = "1.2""#)
        .start();
    handshake_fails(&proxy, &env, &ClientOpts::tls13(), "TLS 1.3 client");
    let mut tls = tls_connect_ok(proxy.addr(), &env.client());
    assert_eq!(tls.conn.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_echo(&mut tls, b"1.2 only\n", "echo");
}

#[test]
fn ciphers_restrict_suites() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .service(
            r#"ciphers = ["TLS13_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"]"#,
        )
        .start();
    handshake_fails(
        &proxy,
        &env,
        &ClientOpts::only_suite(suites::TLS13_AES_128_GCM_SHA256),
        "client offering only TLS13_AES_128_GCM_SHA256",
    );
    handshake_fails(
        &proxy,
        &env,
        &ClientOpts::only_suite(suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        "client offering only TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    );
    let tls = tls_connect_ok(proxy.addr(), &env.client_with(&ClientOpts::tls13()));
    assert_eq!(
        negotiated(&tls).1,
        Some(CipherSuite::TLS13_AES_256_GCM_SHA384)
    );
    let mut tls = tls_connect_ok(proxy.addr(), &env.client_with(&ClientOpts::tls12()));
    assert_eq!(
        negotiated(&tls).1,
        Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
    );
    assert_echo(&mut tls, b"chacha\n", "echo");
}

fn only_group(g: &'static dyn SupportedKxGroup, versions: ClientOpts) -> ClientOpts {
    ClientOpts {
        groups: vec![g],
        ..versions
    }
}

#[test]
fn each_configured_group_negotiates() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .service(r#"groups = ["X25519MLKEM768", "X25519", "P-256", "P-384"]"#)
        .start();
    let cases: [(&'static dyn SupportedKxGroup, NamedGroup); 4] = [
        (groups::X25519MLKEM768, NamedGroup::X25519MLKEM768),
        (groups::X25519, NamedGroup::X25519),
        (groups::SECP256R1, NamedGroup::secp256r1),
        (groups::SECP384R1, NamedGroup::secp384r1),
    ];
    for (g, want) in cases {
        let mut tls = tls_connect_ok(
            proxy.addr(),
            &env.client_with(&only_group(g, ClientOpts::tls13())),
        );
        let got = tls.conn.negotiated_key_exchange_group().map(|g| g.name());
        assert_eq!(got, Some(want), "TLS 1.3 key exchange group");
        assert_echo(&mut tls, b"kx\n", "echo");
    }
    // TLS 1.2 ECDHE over P-256.
    let tls = tls_connect_ok(
        proxy.addr(),
        &env.client_with(&only_group(groups::SECP256R1, ClientOpts::tls12())),
    );
    assert_eq!(
        tls.conn.negotiated_key_exchange_group().map(|g| g.name()),
        Some(NamedGroup::secp256r1)
    );
}

#[test]
fn groups_restrict_key_exchange() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .service(r#"groups = ["P-384"]"#)
        .start();
    handshake_fails(
        &proxy,
        &env,
        &only_group(groups::X25519, ClientOpts::tls13()),
        "client offering only X25519",
    );
    let tls = tls_connect_ok(proxy.addr(), &env.client());
    assert_eq!(
        tls.conn.negotiated_key_exchange_group().map(|g| g.name()),
        Some(NamedGroup::secp384r1)
    );
}

#[test]
fn alpn_is_negotiated() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .service(r#"alpn = ["h2", "http/1.1"]"#)
        .start();
    let opts = ClientOpts {
        alpn: vec![b"http/1.1".to_vec()],
        ..Default::default()
    };
    let mut tls = tls_connect_ok(proxy.addr(), &env.client_with(&opts));
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_echo(&mut tls, b"GET / HTTP/1.1\r\n\r\n", "echo");
}
