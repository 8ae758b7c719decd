//! Server-side handshake cost through tlsfront's own TLS driver (`conn::tls::ServerTls`),
//! in memory against a rustls client: full TLS 1.3 handshakes per certificate key type
//! (ECDSA P-256, RSA-2048, Ed25519) and per key-exchange group (X25519, P-256,
//! X25519MLKEM768), and a resumed handshake. Only the server's calls are timed
//! (`iter_custom`), so the figures are what one proxy core spends per handshake.
//! The record layer is in `benches/records.rs`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rcgen::{KeyPair, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PKCS_RSA_SHA256};
use rustls::pki_types::CertificateDer;
use tlsfront::conn::tls::{out_capacity, OutBuf, ServerTls, MAX_RECORD_PLAINTEXT, MAX_RECORD_WIRE};
use tlsfront::tls::{build_server_config, per_worker_config, CertSource, TlsPolicy, Version};

struct Setup {
    server: Arc<rustls::ServerConfig>,
    root: CertificateDer<'static>,
}

fn setup(alg: &'static SignatureAlgorithm, group: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("tlsfront-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = KeyPair::generate_for(alg).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let policy = TlsPolicy {
        min_version: Version::Tls13,
        groups: Some(vec![group.to_string()]),
        ..TlsPolicy::default()
    };
    let source = CertSource::Files {
        cert: cert_path,
        key: key_path,
    };
    let built = build_server_config(&policy, &source, None).unwrap();
    // A worker's copy, with its session cache (stateful TLS 1.3 resumption).
    let server = per_worker_config(&built.config, &built.certified, 1024, false);
    Setup {
        server,
        root: cert.der().clone(),
    }
}

fn client_config(root: &CertificateDer<'static>, resume: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.resumption = if resume {
        rustls::client::Resumption::in_memory_sessions(64)
    } else {
        rustls::client::Resumption::disabled()
    };
    Arc::new(cfg)
}

struct Bufs {
    incoming: Vec<u8>,
    plain: Vec<u8>,
    out: OutBuf,
}

impl Bufs {
    fn new() -> Self {
        Bufs {
            incoming: Vec::with_capacity(MAX_RECORD_WIRE * 2),
            plain: Vec::with_capacity(MAX_RECORD_PLAINTEXT * 2),
            out: OutBuf::with_capacity(out_capacity(64 * 1024)),
        }
    }
}

/// One handshake; returns the time spent in the server and whether it resumed.
fn handshake(
    server_cfg: &Arc<rustls::ServerConfig>,
    client_cfg: &Arc<rustls::ClientConfig>,
    b: &mut Bufs,
) -> (Duration, bool) {
    let mut client =
        rustls::ClientConnection::new(client_cfg.clone(), "localhost".try_into().unwrap()).unwrap();
    let t0 = Instant::now();
    let mut server = ServerTls::new(server_cfg.clone()).unwrap();
    let mut spent = t0.elapsed();
    while client.is_handshaking() || server.is_handshaking() {
        while client.wants_write() {
            client.write_tls(&mut b.incoming).unwrap();
        }
        let t = Instant::now();
        server
            .read(&mut b.incoming, &mut b.plain, &mut b.out)
            .unwrap();
        spent += t.elapsed();
        // The client takes in everything, tickets included (for the resumed case).
        let mut bytes = b.out.as_slice();
        while !bytes.is_empty() {
            client.read_tls(&mut bytes).unwrap();
            client.process_new_packets().unwrap();
        }
        let (storage, _) = b.out.take(vec![]);
        b.out.restore(storage);
    }
    let resumed = client.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    black_box(server);
    (spent, resumed)
}

fn bench_server(c: &mut Criterion, name: &str, setup: &Setup, resume: bool) {
    let client_cfg = client_config(&setup.root, resume);
    let mut bufs = Bufs::new();
    if resume {
        // Prime the client's ticket cache, and check that resumption really happens.
        handshake(&setup.server, &client_cfg, &mut bufs);
        assert!(
            handshake(&setup.server, &client_cfg, &mut bufs).1,
            "{name}: not resumed"
        );
    }
    c.bench_function(name, |bench| {
        bench.iter_custom(|iters| {
            (0..iters)
                .map(|_| handshake(&setup.server, &client_cfg, &mut bufs).0)
                .sum()
        })
    });
    // Every measured handshake was of the kind the name says.
    let resumed = (0..100)
        .filter(|_| handshake(&setup.server, &client_cfg, &mut bufs).1)
        .count();
    assert_eq!(resumed, if resume { 100 } else { 0 }, "{name}");
}

fn bench(c: &mut Criterion) {
    for (key, alg) in [
        ("ecdsa_p256", &PKCS_ECDSA_P256_SHA256),
        ("rsa2048", &PKCS_RSA_SHA256),
        ("ed25519", &PKCS_ED25519),
    ] {
        let s = setup(alg, "X25519");
        bench_server(c, &format!("server_full/{key}/X25519"), &s, false);
    }
    for group in ["P-256", "X25519MLKEM768"] {
        let s = setup(&PKCS_ECDSA_P256_SHA256, group);
        bench_server(c, &format!("server_full/ecdsa_p256/{group}"), &s, false);
    }
    let s = setup(&PKCS_ECDSA_P256_SHA256, "X25519");
    bench_server(c, "server_resumed/ecdsa_p256/X25519", &s, true);
}

criterion_group!(benches, bench);
criterion_main!(benches);
