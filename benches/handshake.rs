//! Costs through tlsfront's own TLS driver (`conn::tls::ServerTls`), in memory:
//! a full TLS 1.3 handshake against a rustls client (both sides' CPU; ECDSA P-256, X25519 or
//! X25519MLKEM768) and sealing 16 KiB of application data.
//! Issue 6 extends this to every suite, key type and group.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustls::pki_types::CertificateDer;
use tlsfront::conn::tls::{out_capacity, OutBuf, ServerTls, MAX_RECORD_PLAINTEXT, MAX_RECORD_WIRE};
use tlsfront::tls::{build_server_config, CertSource, TlsPolicy, Version};

fn server_config(groups: &[&str]) -> (Arc<rustls::ServerConfig>, CertificateDer<'static>) {
    let dir = std::env::temp_dir().join(format!("tlsfront-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
    let policy = TlsPolicy {
        min_version: Version::Tls13,
        ciphers: Some(vec!["TLS13_AES_128_GCM_SHA256".into()]),
        groups: Some(groups.iter().map(|g| g.to_string()).collect()),
        ..TlsPolicy::default()
    };
    let built = build_server_config(&policy, &CertSource::Files { cert, key }).unwrap();
    (Arc::new(built.config), generated.cert.der().clone())
}

fn client_config(root: CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

struct Bufs {
    incoming: Vec<u8>,
    plain: Vec<u8>,
    out: OutBuf,
}

/// Runs one handshake between a rustls client and `ServerTls`; returns the server side.
fn handshake(
    server_cfg: &Arc<rustls::ServerConfig>,
    client_cfg: &Arc<rustls::ClientConfig>,
    b: &mut Bufs,
) -> ServerTls {
    let mut client =
        rustls::ClientConnection::new(client_cfg.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut server = ServerTls::new(server_cfg.clone()).unwrap();
    while client.is_handshaking() || server.is_handshaking() {
        while client.wants_write() {
            client.write_tls(&mut b.incoming).unwrap();
        }
        server
            .read(&mut b.incoming, &mut b.plain, &mut b.out)
            .unwrap();
        let mut bytes = b.out.as_slice();
        while !bytes.is_empty() {
            client.read_tls(&mut bytes).unwrap();
            client.process_new_packets().unwrap();
        }
        let len = b.out.filled();
        let (storage, _) = b.out.take(vec![]);
        debug_assert!(len <= storage.len());
        b.out.restore(storage);
    }
    server
}

fn bench(c: &mut Criterion) {
    let mut bufs = Bufs {
        incoming: Vec::with_capacity(MAX_RECORD_WIRE * 2),
        plain: Vec::with_capacity(MAX_RECORD_PLAINTEXT * 2),
        out: OutBuf::with_capacity(out_capacity(64 * 1024)),
    };
    let mut group = c.benchmark_group("handshake");
    for groups in [&["X25519"][..], &["X25519MLKEM768"][..]] {
        let (server_cfg, root) = server_config(groups);
        let client_cfg = client_config(root);
        group.bench_function(format!("tls13_full_ecdsa_p256_{}", groups[0]), |bench| {
            bench.iter(|| black_box(handshake(&server_cfg, &client_cfg, &mut bufs)))
        });
    }
    group.finish();

    let (server_cfg, root) = server_config(&["X25519"]);
    let client_cfg = client_config(root);
    let mut server = handshake(&server_cfg, &client_cfg, &mut bufs);
    let chunk = vec![0x5a; 16 * 1024];
    let mut group = c.benchmark_group("seal");
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    group.bench_function("tls13_aes128gcm_16k", |bench| {
        bench.iter(|| {
            server
                .encrypt(&mut bufs.incoming, black_box(&chunk), &mut bufs.out)
                .unwrap();
            let (storage, _) = bufs.out.take(vec![]);
            bufs.out.restore(storage);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
