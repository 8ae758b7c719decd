//! Failure handling: unreachable backends, silent clients, non-TLS garbage.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Connects to `addr`, tries to use the connection, and returns how long it took until the
/// proxy closed it (handshake failure, EOF, close_notify, alert or reset). Panics if the
/// connection is still open after `limit`, or if any payload comes back.
fn time_until_closed(addr: std::net::SocketAddr, env: &TestEnv, limit: Duration) -> Duration {
    let t0 = Instant::now();
    match tls_connect(addr, &env.client()) {
        Err(e) => {
            // Closed during the handshake; must not be a client-side timeout.
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "handshake hung instead of being closed: {e}"
            );
            t0.elapsed()
        }
        Ok(mut tls) => {
            let out = Transfer::until_eof(b"hello?\n")
                .timeout(limit)
                .run(&mut tls);
            assert!(
                !out.timed_out,
                "connection not closed within {limit:?}: {}",
                out.summary()
            );
            assert!(
                out.received.is_empty(),
                "no backend, yet data came back: {}",
                out.summary()
            );
            t0.elapsed()
        }
    }
}

#[test]
fn backend_refused_closes_client_and_other_service_works() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let down = closed_port_addr();
    let proxy = env
        .config(down)
        .service(r#"connect_timeout = "2s""#)
        .add_service("up", echo.addr, &[])
        .start();

    let took = time_until_closed(proxy.service_addr("svc"), &env, Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(3),
        "closed only after {took:?} (connect_timeout is 2s, refused should be immediate)"
    );
    assert!(
        proxy.wait_for_log("reason=backend_connect", Duration::from_secs(5)),
        "no `reason=backend_connect...` log line"
    );
    let lines = proxy.log_lines("reason=backend_connect");
    assert!(
        lines.iter().any(|l| l.contains("WARN")),
        "backend connect failure should be logged at WARN: {lines:?}"
    );

    // The working service is unaffected.
    let mut tls = tls_connect_ok(proxy.service_addr("up"), &env.client());
    assert_echo(&mut tls, b"still alive\n", "echo via working service");

    // And the broken one keeps failing fast (the proxy did not get stuck).
    let took = time_until_closed(proxy.service_addr("svc"), &env, Duration::from_secs(10));
    assert!(took < Duration::from_secs(3), "second attempt: {took:?}");
}

#[test]
fn backend_connect_timeout_closes_client() {
    let env = TestEnv::new();
    let hole = BlackholeBackend::start();
    let proxy = env
        .config(hole.addr)
        .service(r#"connect_timeout = "1s""#)
        .service(r#"handshake_timeout = "10s""#)
        .start();

    let took = time_until_closed(proxy.addr(), &env, Duration::from_secs(10));
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before connect_timeout (1s) could have expired"
    );
    assert!(
        took <= Duration::from_secs(3),
        "closed only after {took:?} (connect_timeout is 1s)"
    );
    assert!(
        proxy.wait_for_log("reason=backend_connect_timeout", Duration::from_secs(5)),
        "no `reason=backend_connect_timeout` log line"
    );
}

#[test]
fn silent_client_closed_at_handshake_timeout() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .service(r#"handshake_timeout = "1s""#)
        .start();

    let t0 = Instant::now();
    let mut s = tcp_connect(proxy.addr()).expect("connect");
    let end = raw_read_until_closed(&mut s, t0, Duration::from_secs(6));
    assert!(
        end.closed(),
        "silent connection still open after {:?}",
        end.elapsed
    );
    assert!(
        end.elapsed >= Duration::from_millis(500) && end.elapsed <= Duration::from_secs(3),
        "closed after {:?}, expected about 1s (handshake_timeout)",
        end.elapsed
    );
    assert!(
        proxy.wait_for_log("reason=handshake_timeout", Duration::from_secs(3)),
        "no `reason=handshake_timeout` log line"
    );
}

/// Sends `garbage` instead of a ClientHello and checks the proxy closes the connection quickly
/// (well before handshake_timeout), answering at most with a TLS alert.
fn garbage_is_rejected(addr: std::net::SocketAddr, garbage: &[u8], what: &str) {
    let t0 = Instant::now();
    let mut s = tcp_connect(addr).expect("connect");
    // The proxy may close before we finish writing: a write error is fine.
    let _ = s.write_all(garbage);
    let end = raw_read_until_closed(&mut s, t0, Duration::from_secs(8));
    assert!(
        end.closed(),
        "{what}: connection still open after {:?}",
        end.elapsed
    );
    assert!(
        end.elapsed < Duration::from_secs(3),
        "{what}: closed only after {:?} (handshake_timeout is 10s)",
        end.elapsed
    );
    assert!(
        end.bytes.is_empty() || (end.bytes[0] == 0x15 && end.bytes.len() <= 64),
        "{what}: expected nothing or a TLS alert record, got {} bytes: {:02x?}",
        end.bytes.len(),
        &end.bytes[..end.bytes.len().min(32)]
    );
}

#[test]
fn garbage_client_hello_is_rejected_without_disturbing_others() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .service(r#"handshake_timeout = "10s""#)
        .start();
    let addr = proxy.addr();

    let mut good = tls_connect_ok(addr, &env.client());
    let before = random_bytes(32 * KIB);
    assert_echo(&mut good, &before, "echo before garbage");

    let mut random = random_bytes(4 * KIB);
    random[0] = 0xEE; // never a valid TLS content type
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("4 KiB random", random),
    ];
    let handles: Vec<_> = garbage
        .into_iter()
        .map(|(what, bytes)| thread::spawn(move || garbage_is_rejected(addr, &bytes, what)))
        .collect();

    // Meanwhile the established connection keeps working.
    let during = random_bytes(MIB);
    assert_echo(&mut good, &during, "echo while garbage arrives");
    for h in handles {
        h.join().expect("garbage client failed");
    }
    let after = random_bytes(32 * KIB);
    assert_echo(&mut good, &after, "echo after garbage");

    // Nothing of the garbage reached the backend.
    assert_eq!(
        echo.bytes_received(),
        (before.len() + during.len() + after.len()) as u64,
        "backend received bytes other than the legitimate client's"
    );
    assert!(
        proxy
            .log_lines("reason=")
            .iter()
            .any(|l| l.contains("WARN")),
        "rejected connections should produce a WARN line with reason="
    );
}

#[test]
fn a_client_refusing_the_certificate_is_a_counted_failure_not_a_crash() {
    // The client reads tlsfront's flight, rejects the certificate and answers with an alert:
    // the handshake fails after tlsfront already sent everything it had (nothing left to
    // flush — this once reached a write of an empty buffer, a panic).
    let env = TestEnv::new();
    let stranger = TestEnv::new(); // another CA
    let echo = Backend::echo();
    let proxy = env.config(echo.addr).start();
    for _ in 0..3 {
        let refused = tls_connect(proxy.addr(), &stranger.client()).map(|mut s| {
            // The handshake completes lazily: make it happen.
            s.write_all(b"x").and_then(|_| s.flush())
        });
        assert!(
            matches!(refused, Err(_) | Ok(Err(_))),
            "a client with another CA must refuse tlsfront's certificate"
        );
    }
    assert!(
        proxy.wait_for_log_count("reason=tls_error", 3, Duration::from_secs(5)),
        "{}",
        proxy.log()
    );
    let mut good = tls_connect_ok(proxy.addr(), &env.client());
    assert_echo(
        &mut good,
        &random_bytes(64 * KIB),
        "echo after the refusals",
    );
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}

/// Seals one TLS 1.3 application-data record carrying `inner` (content byte last) with the
/// client's traffic key, as the client's next record.
fn seal_next_record(secrets: rustls::ExtractedSecrets, inner: &[u8]) -> Vec<u8> {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
    let (seq, tx) = secrets.tx;
    let rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv } = tx else {
        panic!("the test offers only AES-128-GCM");
    };
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key.as_ref()).unwrap());
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(iv.as_ref());
    for (i, b) in seq.to_be_bytes().iter().enumerate() {
        nonce[4 + i] ^= b;
    }
    let mut body = inner.to_vec();
    let len = body.len() + 16;
    let header = [0x17, 0x03, 0x03, (len >> 8) as u8, len as u8];
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(header),
        &mut body,
    )
    .unwrap();
    [&header[..], &body].concat()
}

#[test]
fn a_handshake_message_split_across_records_after_the_handshake_does_not_stall_the_worker() {
    // Legal fragmentation: a record holding only the first byte of a KeyUpdate. rustls keeps
    // that record while it waits for the rest, so `incoming` starts with a whole record it
    // cannot use yet; the relay once took that for unread input and spun the worker.
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env.config(echo.addr).start();
    let mut cfg =
        (*env.client_with(&ClientOpts::only_suite(suites::TLS13_AES_128_GCM_SHA256))).clone();
    cfg.enable_secret_extraction = true;
    let mut tls = tls_connect_ok(proxy.addr(), &Arc::new(cfg));
    assert_echo(&mut tls, b"hello\n", "echo before the split message");
    let rustls::StreamOwned { conn, mut sock } = tls;
    let record = seal_next_record(conn.dangerous_extract_secrets().unwrap(), &[0x18, 0x16]);
    sock.write_all(&record).unwrap();

    // The one worker still serves a new client promptly, and the split connection itself
    // just waits for the rest (no close, no reply).
    // (A stuck worker never finishes this handshake: the client's read timeout fails it.)
    let mut other = tls_connect_ok(proxy.addr(), &env.client());
    assert_echo(
        &mut other,
        &random_bytes(16 * KIB),
        "another client meanwhile",
    );
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let r = std::io::Read::read(&mut sock, &mut byte);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "the split connection should simply wait: {r:?}"
    );
}
