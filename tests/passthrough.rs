//! Pass-through routes (`passthrough = true`): the ClientHello is only peeked to choose the
//! route, then the raw TLS bytes go to a backend that is itself a TLS server with its own
//! certificate; the client verifies that certificate, not tlsfront's. A ClientHello that does
//! not fit its first record is refused, one that never completes is closed at
//! `handshake_timeout`, and `alpn_match` picks between routes for the same name.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::pki::*;
use common::*;
use rustls::pki_types::ServerName;
use rustls::ClientConnection;

/// Two CAs: tlsfront's certificates come from `srv`, the pass-through backends' from `be`.
struct Setup {
    env: TestEnv,
    srv: Ca,
    be: Ca,
    default_cert: Issued,
}

impl Setup {
    fn new() -> Setup {
        let env = TestEnv::new();
        let srv = Ca::new(&env, "srv");
        let be = Ca::new(&env, "be");
        let default_cert = srv.server("default", &["default.test", "frag.test"]);
        Setup {
            env,
            srv,
            be,
            default_cert,
        }
    }
}

fn passthrough(name: &str, sni: &[&str], backend: SocketAddr, extra: &[&str]) -> String {
    let mut lines = vec!["passthrough = true"];
    lines.extend_from_slice(extra);
    route_toml(name, sni, backend, None, &lines)
}

/// tlsfront with a default route (backend "default") and one pass-through route `pt.test`
/// to a TLS backend "pt" with its own certificate; `service_extra` goes into the service.
struct PtEdge {
    proxy: Proxy,
    pt_cert: Issued,
    pt: Backend,
    default: Backend,
}

impl Setup {
    fn pt_edge(&self, service_extra: &[&str]) -> PtEdge {
        let pt_cert = self.be.server("pt", &["pt.test"]);
        let pt = tls_backend("pt", &pt_cert, TlsBackendOpts::default());
        let default = named_backend("default");
        let mut toml = global_toml(&[]);
        toml += &service_toml(
            "edge",
            Some(default.addr),
            &self.default_cert,
            service_extra,
        );
        toml += &passthrough("pt", &["pt.test"], pt.addr, &[]);
        PtEdge {
            proxy: serve(&self.env, &toml),
            pt_cert,
            pt,
            default,
        }
    }
}

#[test]
fn passthrough_relays_the_backends_own_tls_byte_exact_both_ways() {
    let s = Setup::new();
    let PtEdge {
        proxy,
        pt_cert,
        pt,
        default,
    } = s.pt_edge(&[]);

    // Trusting only the backend's CA: a terminating proxy could not pass this handshake.
    let client = s.be.tls_client(None);
    let mut tls = tls_connect_sni(proxy.addr(), &client, "pt.test").expect("handshake");
    assert!(
        server_cert(&tls) == pt_cert.der,
        "not the backend's certificate"
    );
    assert_eq!(backend_name(&mut tls), "pt");
    let data = random_bytes(MIB);
    assert_echo(&mut tls, &data, "1 MiB through the pass-through route");
    assert_eq!(pt.bytes_received(), MIB as u64);

    // Half-close travels too: the backend answers our close_notify with its own.
    let end = close_session(&mut tls, Duration::from_secs(10));
    assert!(
        !end.timed_out && end.eof.as_ref().is_some_and(Eof::is_clean),
        "{}",
        end.summary()
    );
    assert_eq!(default.connections(), 0);
}

/// An idle pass-through connection holds no pipe: each direction borrows one from the
/// worker's pool while bytes flow and hands it back empty (16 idle connections would
/// otherwise hold 32 pipes, 64 descriptors).
#[test]
fn idle_passthrough_connections_hold_no_pipes() {
    let s = Setup::new();
    let PtEdge { proxy, pt, .. } = s.pt_edge(&[]);
    let client = s.be.tls_client(None);
    let before = unpooled_pipe_fds(&proxy);
    let mut held = Vec::new();
    for i in 0..16 {
        let mut tls = tls_connect_sni(proxy.addr(), &client, "pt.test").expect("handshake");
        assert_eq!(backend_name(&mut tls), "pt");
        assert_echo(&mut tls, format!("conn {i}\n").as_bytes(), "echo");
        held.push(tls);
    }
    assert_eq!(pt.connections(), 16);
    assert_idle_connections_hold_no_pipes(&proxy, before, &mut held);
}

#[test]
fn sni_chooses_between_a_passthrough_and_a_terminating_route() {
    let s = Setup::new();
    let pt_cert = s.be.server("pt", &["pt.test"]);
    let term_cert = s.srv.server("term", &["term.test"]);
    let pt = tls_backend("pt", &pt_cert, TlsBackendOpts::default());
    let (term, default) = (named_backend("term"), named_backend("default"));
    let mut toml = global_toml(&[]);
    toml += &service_toml("edge", Some(default.addr), &s.default_cert, &[]);
    toml += &passthrough("pt", &["pt.test"], pt.addr, &[]);
    toml += &route_toml("term", &["term.test"], term.addr, Some(&term_cert), &[]);
    let proxy = serve(&s.env, &toml);
    let client = client_config(&[&s.srv, &s.be], &ClientOpts::default(), None);

    for _ in 0..2 {
        assert_eq!(
            reached(proxy.addr(), &client, "term.test", &term_cert),
            "term"
        );
        assert_eq!(reached(proxy.addr(), &client, "pt.test", &pt_cert), "pt");
        assert_eq!(
            reached(proxy.addr(), &client, "default.test", &s.default_cert),
            "default"
        );
    }
    assert_eq!(
        (pt.connections(), term.connections(), default.connections()),
        (2, 2, 2)
    );
}

/// Writes `bytes` (the proxy may close before all are taken) and expects the connection to be
/// closed well before the 10 s handshake_timeout, with nothing but maybe an alert coming back.
fn refused_quickly(addr: SocketAddr, bytes: &[u8], what: &str) -> SocketAddr {
    let t0 = Instant::now();
    let mut sock = tcp_connect(addr).expect("connect");
    let local = sock.local_addr().unwrap();
    let _ = sock.write_all(bytes);
    let end = raw_read_until_closed(&mut sock, t0, Duration::from_secs(8));
    assert!(
        end.closed() && end.elapsed < Duration::from_secs(3),
        "{what}: not closed promptly: {end:?}"
    );
    assert!(
        end.bytes.is_empty() || (end.bytes[0] == 0x15 && end.bytes.len() <= 64),
        "{what}: expected nothing or an alert, got {:02x?}",
        &end.bytes[..end.bytes.len().min(32)]
    );
    local
}

#[test]
fn an_oversized_or_garbage_client_hello_is_refused_while_others_are_served() {
    let s = Setup::new();
    let PtEdge {
        proxy,
        pt_cert,
        pt,
        default,
    } = s.pt_edge(&[r#"handshake_timeout = "10s""#]);
    let addr = proxy.addr();
    let client = s.be.tls_client(None);

    let mut good = tls_connect_sni(addr, &client, "pt.test").expect("handshake");
    assert_eq!(backend_name(&mut good), "pt");
    assert_echo(&mut good, b"before\n", "before");

    // A handshake record announcing 18 KiB (the limit is 16 KiB), carrying a ClientHello
    // header, then that many bytes.
    let body_len = 18 * KIB;
    let mut oversized = vec![0x16, 0x03, 0x01];
    oversized.extend_from_slice(&(body_len as u16).to_be_bytes());
    oversized.extend_from_slice(&[0x01, 0x00]);
    oversized.extend_from_slice(&((body_len - 4) as u16).to_be_bytes());
    oversized.extend_from_slice(&[0x03, 0x03]);
    oversized.extend(random_bytes(body_len - 6));
    let mut garbage = random_bytes(4 * KIB);
    garbage[0] = 0xEE; // never a TLS content type

    let big = thread::spawn(move || refused_quickly(addr, &oversized, "oversized ClientHello"));
    let junk = thread::spawn(move || refused_quickly(addr, &garbage, "garbage first record"));
    let during = random_bytes(256 * KIB);
    assert_echo(&mut good, &during, "while the bad ones arrive");
    let big = big.join().expect("oversized client");
    let junk = junk.join().expect("garbage client");

    assert_eq!(close_reason(&proxy, big), "client_hello_too_large");
    let junk_reason = close_reason(&proxy, junk);
    assert_ne!(junk_reason, "done", "{}", closed_line(&proxy, junk));
    assert_eq!(pt.connections(), 1, "a refused client reached the backend");
    assert_eq!(
        default.connections(),
        0,
        "a refused client reached the backend"
    );

    assert_echo(&mut good, b"after\n", "after");
    assert_eq!(reached(addr, &client, "pt.test", &pt_cert), "pt");
}

#[test]
fn a_truncated_client_hello_is_closed_at_handshake_timeout_while_others_proceed() {
    let s = Setup::new();
    let PtEdge {
        proxy,
        pt_cert,
        pt,
        default,
    } = s.pt_edge(&[r#"handshake_timeout = "1s""#]);
    let addr = proxy.addr();
    let client = s.be.tls_client(None);
    let hello = client_hello_bytes(&client, "pt.test");
    let half = &hello[..hello.len() / 2];

    // Stalls mid-hello.
    let t0 = Instant::now();
    let mut stalled = tcp_connect(addr).expect("connect");
    let stalled_addr = stalled.local_addr().unwrap();
    stalled.write_all(half).expect("half a ClientHello");
    let other = {
        let client = client.clone();
        let cert = pt_cert.clone();
        thread::spawn(move || reached(addr, &client, "pt.test", &cert))
    };
    let end = raw_read_until_closed(&mut stalled, t0, Duration::from_secs(6));
    assert!(end.closed(), "still open after {:?}", end.elapsed);
    assert!(
        end.elapsed >= Duration::from_millis(800) && end.elapsed <= Duration::from_secs(3),
        "closed after {:?}, handshake_timeout is 1s",
        end.elapsed
    );
    assert_eq!(close_reason(&proxy, stalled_addr), "handshake_timeout");
    assert_eq!(other.join().expect("the other client"), "pt");

    // Sends FIN mid-hello.
    let t0 = Instant::now();
    let mut quitter = tcp_connect(addr).expect("connect");
    let quitter_addr = quitter.local_addr().unwrap();
    quitter.write_all(half).expect("half a ClientHello");
    quitter.shutdown(Shutdown::Write).unwrap();
    let end = raw_read_until_closed(&mut quitter, t0, Duration::from_secs(6));
    assert!(
        end.closed() && end.elapsed < Duration::from_millis(800),
        "FIN mid-hello not closed before the timeout: {end:?}"
    );
    assert_eq!(close_reason(&proxy, quitter_addr), "handshake_eof");
    assert_eq!(pt.connections(), 1, "only the complete client reached it");
    assert_eq!(default.connections(), 0);
}

#[test]
fn alpn_match_picks_between_two_passthrough_backends() {
    let s = Setup::new();
    let cert = s.be.server("svc", &["svc.test"]);
    let backend = |name: &str, alpn: &[&str]| {
        tls_backend(
            name,
            &cert,
            TlsBackendOpts {
                alpn: alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
                ..Default::default()
            },
        )
    };
    let (a, b, plain) = (
        backend("a", &["x-a"]),
        backend("b", &["x-b"]),
        backend("plain", &[]),
    );
    let mut toml = global_toml(&[]);
    // Routes only: no service-level backend (allowed with unknown_sni = "reject").
    toml += &service_toml(
        "edge",
        None,
        &s.default_cert,
        &[r#"unknown_sni = "reject""#],
    );
    toml += &passthrough("a", &["svc.test"], a.addr, &[r#"alpn_match = ["x-a"]"#]);
    toml += &passthrough("b", &["svc.test"], b.addr, &[r#"alpn_match = ["x-b"]"#]);
    toml += &passthrough("plain", &["svc.test"], plain.addr, &[]);
    let proxy = serve(&s.env, &toml);

    for (offer, want, negotiated) in [
        (vec!["x-a"], "a", Some("x-a")),
        (vec!["x-b"], "b", Some("x-b")),
        (vec!["x-c", "x-b"], "b", Some("x-b")),
        (vec![], "plain", None),
        (vec!["x-c"], "plain", None),
        // Both match: the first in file order.
        (vec!["x-b", "x-a"], "a", Some("x-a")),
    ] {
        let opts = ClientOpts {
            alpn: offer.iter().map(|p| p.as_bytes().to_vec()).collect(),
            ..Default::default()
        };
        let client = client_config(&[&s.be], &opts, None);
        let mut tls = tls_connect_sni(proxy.addr(), &client, "svc.test")
            .unwrap_or_else(|e| panic!("offering {offer:?}: {e}"));
        assert_eq!(backend_name(&mut tls), want, "offering {offer:?}");
        assert_eq!(
            tls.conn.alpn_protocol(),
            negotiated.map(str::as_bytes),
            "offering {offer:?}"
        );
        assert_echo(&mut tls, b"hi\n", "echo");
    }
    assert_eq!(
        (a.connections(), b.connections(), plain.connections()),
        (2, 2, 2)
    );
}

/// Sends `cfg`'s ClientHello for `sni` split across two handshake records, then finishes the
/// handshake normally.
fn connect_with_fragmented_hello(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    sni: &str,
) -> TlsStream {
    let mut sock = tcp_connect(addr).expect("connect");
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = ClientConnection::new(cfg.clone(), name).unwrap();
    let mut record = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut record).unwrap();
    }
    assert_eq!(record[0], 0x16, "a handshake record");
    let body = &record[5..];
    assert_eq!(
        body.len(),
        u16::from_be_bytes([record[3], record[4]]) as usize,
        "exactly one record"
    );
    let (first, second) = body.split_at(body.len() / 2);
    let mut wire = Vec::new();
    for part in [first, second] {
        wire.extend_from_slice(&record[..3]);
        wire.extend_from_slice(&(part.len() as u16).to_be_bytes());
        wire.extend_from_slice(part);
    }
    sock.write_all(&wire).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .unwrap_or_else(|e| panic!("handshake after a fragmented hello: {e}"));
    }
    rustls::StreamOwned::new(conn, sock)
}

#[test]
fn a_client_hello_split_across_records_counts_as_no_sni() {
    let s = Setup::new();
    let pt_cert = s.be.server("frag", &["frag.test"]);
    let pt = tls_backend("pt", &pt_cert, TlsBackendOpts::default());
    let default = named_backend("default");
    let mut toml = global_toml(&[]);
    toml += &service_toml(
        "edge",
        Some(default.addr),
        &s.default_cert,
        &[r#"unknown_sni = "default""#],
    );
    toml += &passthrough("frag", &["frag.test"], pt.addr, &[]);
    let proxy = serve(&s.env, &toml);
    let client = client_config(&[&s.srv, &s.be], &ClientOpts::default(), None);

    assert_eq!(reached(proxy.addr(), &client, "frag.test", &pt_cert), "pt");
    // The same name, fragmented: the default route (terminated, default certificate).
    let mut tls = connect_with_fragmented_hello(proxy.addr(), &client, "frag.test");
    assert!(
        server_cert(&tls) == s.default_cert.der,
        "a fragmented hello was routed by its SNI"
    );
    assert_eq!(backend_name(&mut tls), "default");
    assert_echo(&mut tls, b"fragmented\n", "echo");
    assert_eq!((pt.connections(), default.connections()), (1, 1));
}

#[test]
fn a_passthrough_route_may_not_set_tls_keys() {
    let s = Setup::new();
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cert_line = format!("cert = {}", toml_path(&s.default_cert.cert_pem));
    for (line, field) in [
        (cert_line.as_str(), "cert"),
        (r#"min_version = "1.3""#, "min_version"),
        (r#"client_auth = "required""#, "client_auth"),
    ] {
        let mut toml = global_toml(&[]);
        toml += &service_toml("edge", Some(backend), &s.default_cert, &[]);
        toml += &route_toml("term", &["term.test"], backend, None, &[]);
        toml += "\n[[service.route]]\nname = \"pt\"\nsni = \"pt.test\"\npassthrough = true\n";
        toml += "backend = \"127.0.0.1:9\"\n";
        toml += line;
        toml += "\n";
        // The route's key is the last line (the service's own `cert =` comes earlier).
        let at = toml.lines().count();
        expect_config_error_at(&s.env, &toml, at, &format!("service[0].route[1].{field}"));
    }
}
