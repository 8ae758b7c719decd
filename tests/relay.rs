//! Data relay through the proxy with the rustls client: cipher suites, large transfers,
//! concurrency and TCP/TLS half-close in both directions.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use rustls::{ProtocolVersion, SupportedCipherSuite};

/// Forces `suite` on the client, checks the negotiated version/suite and a byte-exact echo.
fn check_suite(suite: SupportedCipherSuite, version: ProtocolVersion) {
    let env = TestEnv::new();
    let backend = Backend::echo();
    let proxy = env.config(backend.addr).start();
    let cfg = env.client_with(&ClientOpts::only_suite(suite));

    let mut tls = tls_connect_ok(proxy.addr(), &cfg);
    let (v, s) = negotiated(&tls);
    assert_eq!(v, Some(version), "negotiated protocol version");
    assert_eq!(s, Some(suite.suite()), "negotiated cipher suite");

    let data = random_bytes(100 * KIB + 7);
    assert_echo(&mut tls, &data, "echo");
    // A second, tiny message on the same connection.
    assert_echo(&mut tls, b"ping\n", "second echo");
}

#[test]
fn tls13_aes128gcm_echo() {
    check_suite(suites::TLS13_AES_128_GCM_SHA256, ProtocolVersion::TLSv1_3);
}

#[test]
fn tls13_aes256gcm_echo() {
    check_suite(suites::TLS13_AES_256_GCM_SHA384, ProtocolVersion::TLSv1_3);
}

#[test]
fn tls13_chacha20_echo() {
    check_suite(
        suites::TLS13_CHACHA20_POLY1305_SHA256,
        ProtocolVersion::TLSv1_3,
    );
}

#[test]
fn tls12_ecdhe_ecdsa_aes128gcm_echo() {
    check_suite(
        suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ProtocolVersion::TLSv1_2,
    );
}

#[test]
fn tls12_ecdhe_ecdsa_aes256gcm_echo() {
    check_suite(
        suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ProtocolVersion::TLSv1_2,
    );
}

#[test]
fn tls12_ecdhe_ecdsa_chacha20_echo() {
    check_suite(
        suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ProtocolVersion::TLSv1_2,
    );
}

/// Many small TLS records arriving in a single TCP write.
#[test]
fn many_records_in_one_tcp_write() {
    let env = TestEnv::new();
    let backend = Backend::echo();
    let proxy = env.config(backend.addr).start();
    let mut tls = tls_connect_ok(proxy.addr(), &env.client());
    let _ = take_tls_bytes(&mut tls); // nothing pending after the handshake, normally

    let mut expected = Vec::new();
    for i in 0..50 {
        let msg = format!("record number {i};");
        tls.conn.writer().write_all(msg.as_bytes()).unwrap();
        expected.extend_from_slice(msg.as_bytes());
    }
    let wire = take_tls_bytes(&mut tls);
    tls.sock.write_all(&wire).unwrap();
    let out = read_plain(&mut tls, expected.len(), Duration::from_secs(10));
    assert!(out.eof.is_none() && !out.timed_out, "{}", out.summary());
    assert_same_bytes("50 coalesced records", &out.received, &expected);
}

/// One full-size record dribbled to the proxy a few bytes at a time.
#[test]
fn record_split_across_many_tcp_writes() {
    let env = TestEnv::new();
    let backend = Backend::echo();
    let proxy = env.config(backend.addr).start();
    let mut tls = tls_connect_ok(proxy.addr(), &env.client());
    tls.sock.set_nodelay(true).unwrap();

    let data = random_bytes(16 * KIB);
    tls.conn.writer().write_all(&data).unwrap();
    let wire = take_tls_bytes(&mut tls);
    for (i, piece) in wire.chunks(997).enumerate() {
        tls.sock.write_all(piece).unwrap();
        if i % 4 == 0 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    let out = read_plain(&mut tls, data.len(), Duration::from_secs(10));
    assert!(out.eof.is_none() && !out.timed_out, "{}", out.summary());
    assert_same_bytes("dribbled record", &out.received, &data);
    // And the connection keeps working afterwards.
    assert_echo(&mut tls, b"after\n", "echo after dribble");
}

/// 64 MiB each way, full duplex, byte-exact by SHA-256; then a clean close.
fn big_transfer(opts: ClientOpts, version: ProtocolVersion) {
    let env = TestEnv::new();
    let backend = Backend::echo();
    let proxy = env.config(backend.addr).start();
    let cfg = env.client_with(&opts);
    let data = random_bytes(64 * MIB);

    let mut tls = tls_connect_ok(proxy.addr(), &cfg);
    assert_eq!(tls.conn.protocol_version(), Some(version));
    let out = Transfer::echo(&data)
        .timeout(Duration::from_secs(90))
        .run(&mut tls);
    assert!(!out.timed_out, "transfer timed out: {}", out.summary());
    assert_eq!(
        out.sent,
        data.len(),
        "not everything was sent: {}",
        out.summary()
    );
    assert_same_bytes("64 MiB echo", &out.received, &data);
    assert_eq!(backend.bytes_received(), data.len() as u64);

    // Orderly close: client close_notify -> backend EOF -> backend closes -> close_notify.
    let close = close_session(&mut tls, Duration::from_secs(10));
    assert_eq!(
        close.eof,
        Some(Eof::CloseNotify),
        "connection should end with the proxy's close_notify: {}",
        close.summary()
    );
    eprintln!("64 MiB each way over {version:?} in {:?}", out.elapsed);
}

#[test]
fn tls13_64mib_each_way() {
    big_transfer(ClientOpts::tls13(), ProtocolVersion::TLSv1_3);
}

#[test]
fn tls12_64mib_each_way() {
    big_transfer(ClientOpts::tls12(), ProtocolVersion::TLSv1_2);
}

#[test]
fn concurrent_200_connections() {
    const N: usize = 200;
    let env = TestEnv::new();
    let backend = Backend::echo();
    let proxy = env.config(backend.addr).service("backlog = 1024").start();
    let cfg = env.client();
    let addr = proxy.addr();

    // All connections are established first and held open together, then all transfer.
    let barrier = Arc::new(std::sync::Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let cfg = cfg.clone();
            let barrier = barrier.clone();
            thread::spawn(move || -> Result<(), String> {
                let data = random_bytes(64 * KIB);
                let tls = tls_connect(addr, &cfg);
                barrier.wait();
                let mut tls = tls.map_err(|e| format!("conn {i}: handshake: {e}"))?;
                let out = Transfer::echo(&data)
                    .timeout(Duration::from_secs(60))
                    .run(&mut tls);
                if out.received != data || out.eof.is_some() {
                    return Err(format!(
                        "conn {i}: echo not byte-exact: {} (sha256 got {} want {})",
                        out.summary(),
                        sha256_hex(&out.received),
                        sha256_hex(&data)
                    ));
                }
                let close = close_session(&mut tls, Duration::from_secs(20));
                if close.timed_out {
                    return Err(format!("conn {i}: not closed: {}", close.summary()));
                }
                Ok(())
            })
        })
        .collect();
    let failures: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().expect("client thread panicked").err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {N} connections failed, e.g.:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(backend.connections(), N);
    assert_eq!(backend.bytes_received(), (N * 64 * KIB) as u64);
}

/// What a half-close backend observed.
#[derive(Debug)]
struct Seen {
    received: Vec<u8>,
    clean_eof: bool,
}

/// (a) Client sends data, then close_notify + TCP shutdown(Write). The backend must see all
/// bytes then EOF, and can still reply afterwards; the client gets the reply, then close_notify.
#[test]
fn half_close_client_to_backend() {
    const REPLY: &[u8] = b"reply sent by the backend after it saw EOF";
    let env = TestEnv::new();
    let (tx, rx) = mpsc::channel::<Seen>();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::start(move |mut s: TcpStream, _| {
        let (received, clean_eof) = read_to_eof(&mut s);
        let _ = tx.lock().unwrap().send(Seen {
            received,
            clean_eof,
        });
        // Reply only after the EOF, slowly, in two pieces.
        thread::sleep(Duration::from_millis(200));
        let _ = s.write_all(&REPLY[..10]);
        thread::sleep(Duration::from_millis(100));
        let _ = s.write_all(&REPLY[10..]);
        let _ = s.shutdown(Shutdown::Write);
    });
    let proxy = env.config(backend.addr).start();
    let cfg = env.client_with(&ClientOpts::tls13());
    let data = random_bytes(300 * KIB);

    let mut tls = tls_connect_ok(proxy.addr(), &cfg);
    let out = Transfer::until_eof(&data)
        .close_after_send()
        .timeout(Duration::from_secs(20))
        .run(&mut tls);

    let seen = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("backend never saw EOF after the client's close_notify");
    assert!(seen.clean_eof, "backend read ended with an error, not EOF");
    assert_same_bytes("client->backend before EOF", &seen.received, &data);

    assert!(!out.timed_out, "client timed out: {}", out.summary());
    assert_eq!(
        out.received,
        REPLY,
        "client must receive the backend's post-EOF reply: {}",
        out.summary()
    );
    assert_eq!(
        out.eof,
        Some(Eof::CloseNotify),
        "after the reply the proxy should send close_notify"
    );
}

/// (b) Backend sends data then shuts down its write side. The client reads everything, then a
/// clean close_notify (rustls read returns Ok(0), not UnexpectedEof); the client can still send
/// data which the backend receives, followed by EOF.
#[test]
fn half_close_backend_to_client() {
    let env = TestEnv::new();
    let payload = random_bytes(500 * KIB);
    let (tx, rx) = mpsc::channel::<Seen>();
    let tx = std::sync::Mutex::new(tx);
    let backend_payload = payload.clone();
    let backend = Backend::start(move |mut s: TcpStream, _| {
        if s.write_all(&backend_payload).is_err() {
            return;
        }
        let _ = s.shutdown(Shutdown::Write);
        let (received, clean_eof) = read_to_eof(&mut s);
        let _ = tx.lock().unwrap().send(Seen {
            received,
            clean_eof,
        });
    });
    let proxy = env.config(backend.addr).start();
    let cfg = env.client_with(&ClientOpts::tls13());

    let mut tls = tls_connect_ok(proxy.addr(), &cfg);
    // Read until the proxy closes the backend->client direction.
    let first = Transfer::until_eof(b"")
        .timeout(Duration::from_secs(20))
        .run(&mut tls);
    assert!(!first.timed_out, "client timed out: {}", first.summary());
    assert_same_bytes("backend->client", &first.received, &payload);
    assert_eq!(
        first.eof,
        Some(Eof::CloseNotify),
        "backend EOF must reach the client as close_notify (clean Ok(0))"
    );
    // And a plain blocking read now returns Ok(0) too.
    let mut b = [0u8; 16];
    assert_eq!(tls.read(&mut b).expect("read after close_notify"), 0);

    // The client->backend direction is still open.
    let late = random_bytes(200 * KIB);
    let second = Transfer::until_eof(&late)
        .close_after_send()
        .timeout(Duration::from_secs(20))
        .run(&mut tls);
    assert_eq!(second.sent, late.len(), "{}", second.summary());
    assert!(
        !matches!(second.eof, Some(Eof::Io(..))),
        "writing after close_notify from the proxy failed: {}",
        second.summary()
    );

    let seen = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("backend never saw EOF of the client's late data");
    assert!(seen.clean_eof, "backend read ended with an error, not EOF");
    assert_same_bytes("client->backend after half-close", &seen.received, &late);
}
