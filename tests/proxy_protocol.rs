//! `proxy_protocol = "v1" | "v2"`: the backend gets a PROXY header before the client's bytes.
//! The header is read back by a parser written here from HAProxy's proxy-protocol.txt,
//! independent of the project's encoder (the `ppp` crate).

mod common;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// What the independent parser found.
#[derive(Debug, Default)]
struct Parsed {
    src: Option<SocketAddr>,
    dst: Option<SocketAddr>,
    tlvs: Vec<(u8, Vec<u8>)>,
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    s.read_exact(&mut v).expect("header bytes");
    v
}

/// Reads one v2 header (TCP over IPv4 only, as these tests use) off the socket.
fn parse_v2(s: &mut TcpStream) -> Parsed {
    let fixed = read_exact(s, 16);
    assert_eq!(&fixed[..12], V2_SIGNATURE, "v2 signature");
    assert_eq!(fixed[12], 0x21, "version 2, command PROXY");
    assert_eq!(fixed[13], 0x11, "AF_INET, STREAM");
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let body = read_exact(s, len);
    let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let mut p = Parsed {
        src: Some(SocketAddr::new(ip(&body[0..4]), port(&body[8..10]))),
        dst: Some(SocketAddr::new(ip(&body[4..8]), port(&body[10..12]))),
        ..Default::default()
    };
    let mut rest = &body[12..];
    while !rest.is_empty() {
        let kind = rest[0];
        let n = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        p.tlvs.push((kind, rest[3..3 + n].to_vec()));
        rest = &rest[3 + n..];
    }
    p
}

/// Reads a v1 line (up to the CRLF) off the socket.
fn read_v1_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        line.extend(read_exact(s, 1));
        assert!(line.len() <= 107, "v1 header longer than the spec allows");
    }
    String::from_utf8(line).unwrap()
}

/// A backend that hands the parsed header to the test, then echoes.
fn header_backend<T: Send + 'static>(
    parse: fn(&mut TcpStream) -> T,
) -> (Backend, mpsc::Receiver<T>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::start(move |mut s, stats| {
        let header = parse(&mut s);
        let _ = tx.lock().unwrap().send(header);
        echo_conn(s, stats);
    });
    (backend, rx)
}

#[test]
fn v2_carries_addresses_alpn_authority_and_tls_details() {
    let env = TestEnv::new();
    let (backend, headers) = header_backend(parse_v2);
    let proxy = env
        .config(backend.addr)
        .service(r#"proxy_protocol = "v2""#)
        .service(r#"alpn = ["imap"]"#)
        .start();
    let opts = ClientOpts {
        alpn: vec![b"imap".to_vec()],
        ..ClientOpts::tls13()
    };
    let mut tls = tls_connect_ok(proxy.addr(), &env.client_with(&opts));
    assert_echo(&mut tls, b"a1 NOOP\r\n", "echo after the header");
    let client_addr = tls.sock.local_addr().unwrap();
    let suite = negotiated(&tls).1.unwrap();
    let h = headers.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(h.src, Some(client_addr));
    assert_eq!(h.dst, Some(proxy.addr()));
    let tlv = |kind: u8| {
        h.tlvs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("TLV {kind:#x} missing in {:?}", h.tlvs))
    };
    assert_eq!(tlv(0x01), b"imap");
    assert_eq!(tlv(0x02), b"localhost");
    let ssl = tlv(0x20);
    assert_eq!(ssl[0], 0x01, "PP2_CLIENT_SSL");
    assert_ne!(
        &ssl[1..5],
        &[0, 0, 0, 0],
        "no client certificate was verified"
    );
    let mut subs = Vec::new();
    let mut rest = &ssl[5..];
    while !rest.is_empty() {
        let n = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        subs.push((rest[0], String::from_utf8(rest[3..3 + n].to_vec()).unwrap()));
        rest = &rest[3 + n..];
    }
    let expected_cipher = suite.as_str().unwrap().replace("TLS13_", "TLS_");
    assert_eq!(
        subs,
        [(0x21, "TLSv1.3".to_string()), (0x23, expected_cipher)]
    );
}

#[test]
fn v1_is_a_text_line_with_the_client_address() {
    let env = TestEnv::new();
    let (backend, headers) = header_backend(read_v1_line);
    let proxy = env
        .config(backend.addr)
        .service(r#"proxy_protocol = "v1""#)
        .start();
    let mut tls = tls_connect_ok(proxy.addr(), &env.client_with(&ClientOpts::tls12()));
    assert_echo(&mut tls, b"EHLO example\r\n", "echo after the header");
    let client = tls.sock.local_addr().unwrap();
    let line = headers.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        line,
        format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            client.ip(),
            proxy.addr().ip(),
            client.port(),
            proxy.addr().port()
        )
    );
}

/// A TLS session over a socket that first sends `header` (as a load balancer would).
fn proxied_tls(addr: SocketAddr, env: &TestEnv, header: &[u8]) -> std::io::Result<TlsStream> {
    use std::io::Write;
    let mut sock = tcp_connect(addr)?;
    sock.write_all(header)?;
    let conn = rustls::ClientConnection::new(env.client(), "localhost".try_into().unwrap())
        .map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// A v2 header built here by hand (TCP over IPv4), independent of the project's encoder.
fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 only here");
    };
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

#[test]
fn inbound_proxy_from_an_allowed_source_names_the_client_in_logs_and_onward() {
    let env = TestEnv::new();
    let (backend, headers) = header_backend(read_v1_line);
    let proxy = env
        .config(backend.addr)
        .service("accept_proxy = true")
        .service(r#"proxy_sources = ["127.0.0.0/8"]"#)
        .service(r#"proxy_protocol = "v1""#)
        .start();
    let addr = proxy.addr();
    let named: SocketAddr = "203.0.113.5:4444".parse().unwrap();
    for header in [
        format!(
            "PROXY TCP4 203.0.113.5 {} 4444 {}\r\n",
            addr.ip(),
            addr.port()
        )
        .into_bytes(),
        v2_header(named, addr),
    ] {
        let mut tls = proxied_tls(addr, &env, &header).expect("handshake after the header");
        assert_echo(&mut tls, b"hello from behind a balancer\n", "echo");
        // The backend hears about the client the balancer named, not the balancer.
        let onward = headers.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            onward.starts_with(&format!("PROXY TCP4 203.0.113.5 {} 4444 ", addr.ip())),
            "{onward}"
        );
        drop(tls);
    }
    assert!(
        proxy.wait_for_log_count(
            "peer=203.0.113.5:4444 proxied_by=127.0.0.1:",
            2,
            Duration::from_secs(10)
        ),
        "{}",
        proxy.log()
    );
}

#[test]
fn inbound_proxy_is_refused_from_others_and_required_from_balancers() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    // Only 10.0.0.0/8 may send PROXY headers: this test's 127.0.0.1 connects directly.
    let direct = env
        .config(echo.addr)
        .service("accept_proxy = true")
        .service(r#"proxy_sources = ["10.0.0.0/8"]"#)
        .start();
    let header = b"PROXY TCP4 203.0.113.5 127.0.0.1 4444 443\r\n";
    assert!(proxied_tls(direct.addr(), &env, header).is_err());
    assert!(
        direct.wait_for_log("reason=proxy_not_allowed", Duration::from_secs(10)),
        "{}",
        direct.log()
    );
    // The same service still serves direct clients.
    let mut tls = tls_connect_ok(direct.addr(), &env.client());
    assert_echo(&mut tls, b"direct\n", "direct client");

    // 127.0.0.1 is a balancer here: its connections must start with a header.
    let env2 = TestEnv::new();
    let behind = env2
        .config(echo.addr)
        .service("accept_proxy = true")
        .service(r#"proxy_sources = ["127.0.0.1"]"#)
        .start();
    assert!(tls_connect(behind.addr(), &env2.client()).is_err());
    assert!(
        behind.wait_for_log("reason=proxy_header_missing", Duration::from_secs(10)),
        "{}",
        behind.log()
    );
    assert!(proxied_tls(behind.addr(), &env2, b"PROXY TCP4 1.2.3.4 nonsense\r\n").is_err());
    assert!(
        behind.wait_for_log("reason=proxy_header_invalid", Duration::from_secs(10)),
        "{}",
        behind.log()
    );
    // Another connection is unaffected.
    let mut tls = proxied_tls(behind.addr(), &env2, b"PROXY UNKNOWN\r\n").unwrap();
    assert_echo(&mut tls, b"health check style\n", "LOCAL/UNKNOWN header");
}
