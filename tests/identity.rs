//! What a backend can learn about the client behind a connection: the identity lookup socket
//! (`[global] identity_socket`, queried by the backend with its peer's port, answered in
//! JSON) and the client-certificate TLVs of PROXY v2 (SSL client bits and verify result,
//! SSL_CN, and tlsfront's URI SAN 0xE0 and certificate SHA-256 0xE1). The PROXY header is read
//! back by a parser written here from HAProxy's proxy-protocol.txt, not the project's encoder.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::pki::*;
use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// The identity socket
// ---------------------------------------------------------------------------------------------

/// Sends each query line on one connection to the identity socket, reading one JSON line
/// back per query.
fn query(socket: &Path, queries: &[String]) -> Vec<Value> {
    let s = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut writer = s;
    queries
        .iter()
        .map(|q| {
            writer.write_all(format!("{q}\n").as_bytes()).unwrap();
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("answer to {q:?}: {e}"));
            assert!(line.ends_with('\n'), "answer to {q:?} not a line: {line:?}");
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
        })
        .collect()
}

/// What a backend learnt on one connection.
#[derive(Debug)]
struct Lookup {
    /// tlsfront's source port (the backend's peer port).
    port: u16,
    /// The backend's own port.
    own_port: u16,
    /// Answers to `P`, `P,Q` and `P,Q'` (a wrong Q).
    by_port: Value,
    by_both: Value,
    by_wrong_pair: Value,
}

fn look_up(socket: &Path, s: &TcpStream) -> Lookup {
    let port = s.peer_addr().unwrap().port();
    let own_port = s.local_addr().unwrap().port();
    let wrong = own_port.wrapping_add(1);
    let mut answers = query(
        socket,
        &[
            format!("{port}"),
            format!("{port},{own_port}"),
            format!("{port},{wrong}"),
        ],
    )
    .into_iter();
    Lookup {
        port,
        own_port,
        by_port: answers.next().unwrap(),
        by_both: answers.next().unwrap(),
        by_wrong_pair: answers.next().unwrap(),
    }
}

type Lookups = mpsc::Receiver<Lookup>;

/// A hook that looks the connection up and hands the answers to the test.
fn lookup_hook(socket: PathBuf) -> (StreamHook, Lookups) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let hook: StreamHook = Arc::new(move |s: &mut TcpStream| {
        let _ = tx.lock().unwrap().send(look_up(&socket, s));
    });
    (hook, rx)
}

/// A plain backend that, once the client's first bytes arrived (so tlsfront surely has the
/// connection registered), looks it up, then echoes them and everything after.
fn lookup_backend(socket: &Path) -> (Backend, Lookups) {
    let (hook, rx) = lookup_hook(socket.to_path_buf());
    let backend = Backend::start(move |mut s, stats| {
        let mut first = [0u8; 4096];
        let Ok(n) = s.read(&mut first) else { return };
        hook(&mut s);
        if s.write_all(&first[..n]).is_ok() {
            echo_conn(s, stats);
        }
    });
    (backend, rx)
}

/// The test's PKI and a service `edge` with routes `db` (terminating, to a lookup backend) and
/// `pt` (pass-through, to a TLS lookup backend), optional client certificates, and the
/// identity socket.
struct Setup {
    _env: TestEnv,
    srv: Ca,
    clients: Ca,
    socket: PathBuf,
    proxy: Proxy,
    pt_cert: Issued,
    db_lookups: Lookups,
    pt_lookups: Lookups,
    default_lookups: Lookups,
    _backends: Vec<Backend>,
}

impl Setup {
    fn new() -> Setup {
        let env = TestEnv::new();
        let srv = Ca::new(&env, "srv");
        let clients = Ca::new(&env, "clients");
        let server_cert = srv.server("edge", &["edge.test", "db.test", "localhost"]);
        let pt_cert = srv.server("pt", &["pt.test"]);
        let socket = env.path("ident.sock");
        let (db, db_lookups) = lookup_backend(&socket);
        let (default, default_lookups) = lookup_backend(&socket);
        let (hook, pt_lookups) = lookup_hook(socket.clone());
        let pt = tls_backend(
            "pt",
            &pt_cert,
            TlsBackendOpts {
                after_first_read: Some(hook),
                ..Default::default()
            },
        );
        let mut toml = global_toml(&[&format!("identity_socket = {}", toml_path(&socket))]);
        toml += &service_toml(
            "edge",
            Some(default.addr),
            &server_cert,
            &[
                r#"client_auth = "optional""#,
                &format!("client_ca = {}", toml_path(&clients.cert_pem)),
            ],
        );
        toml += &route_toml("db", &["db.test"], db.addr, None, &[]);
        toml += &route_toml("pt", &["pt.test"], pt.addr, None, &["passthrough = true"]);
        let proxy = serve(&env, &toml);
        Setup {
            _env: env,
            srv,
            clients,
            socket,
            proxy,
            pt_cert,
            db_lookups,
            pt_lookups,
            default_lookups,
            _backends: vec![db, default, pt],
        }
    }
}

fn recv(lookups: &Lookups, what: &str) -> Lookup {
    lookups
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what}: the backend did not report a lookup"))
}

/// Asserts `v` is `{"error": <string naming port>}`.
fn assert_error(v: &Value, port: u16, what: &str) {
    let e = v
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: expected {{\"error\":..}}, got {v}"));
    assert!(e.contains(&port.to_string()), "{what}: {v}");
}

#[test]
fn the_identity_socket_describes_a_verified_client_while_it_is_connected() {
    let s = Setup::new();
    let id = ClientId::cn("billing")
        .dns("billing.corp.internal")
        .uri("spiffe://corp/ns/billing/sa/api");
    let cert = s.clients.client_cert("billing", &id);
    let cfg = client_config(&[&s.srv], &ClientOpts::tls13(), Some(&cert));
    let mut tls = tls_connect_sni(s.proxy.addr(), &cfg, "db.test").expect("handshake");
    assert_echo(&mut tls, b"hello\n", "echo");
    let client = tls.sock.local_addr().unwrap();
    let suite = negotiated(&tls).1.unwrap();
    let got = recv(&s.db_lookups, "db");

    let want = json!({
        "client": client.to_string(),
        "service": "edge",
        "route": "db",
        "sni": "db.test",
        "tls_version": "TLSv1.3",
        "cipher": suite.as_str().unwrap(),
        "client_cert": {
            "verified": true,
            "cn": "billing",
            "dns": ["billing.corp.internal"],
            "uri": ["spiffe://corp/ns/billing/sa/api"],
            "sha256": cert.sha256_hex(),
            "spki_sha256": cert.spki_sha256_hex(),
        },
    });
    assert_eq!(got.by_port, want, "answer to {}", got.port);
    assert_eq!(got.by_both, want, "answer to {},{}", got.port, got.own_port);
    assert_error(
        &got.by_wrong_pair,
        got.port,
        "a P,Q whose Q is not the backend",
    );

    // Gone once the connection is.
    let end = close_session(&mut tls, Duration::from_secs(10));
    assert!(!end.timed_out, "{}", end.summary());
    closed_line(&s.proxy, client);
    let mut last = Value::Null;
    let forgotten = wait_until(Duration::from_secs(2), || {
        last = query(&s.socket, &[got.port.to_string()]).remove(0);
        last.get("error").is_some()
    });
    assert!(forgotten, "still known after the close: {last}");
    assert_error(&last, got.port, "after the close");
}

#[test]
fn anonymous_sniless_and_passthrough_connections_are_described_too() {
    let s = Setup::new();
    let anonymous = client_config(&[&s.srv], &ClientOpts::tls12(), None);

    let mut tls = tls_connect_sni(s.proxy.addr(), &anonymous, "db.test").expect("handshake");
    assert_echo(&mut tls, b"anonymous\n", "echo");
    let got = recv(&s.db_lookups, "anonymous").by_port;
    assert_eq!(got["client"], tls.sock.local_addr().unwrap().to_string());
    assert_eq!(got["route"], "db", "{got}");
    assert_eq!(got["tls_version"], "TLSv1.2", "{got}");
    assert!(got["client_cert"].is_null(), "{got}");

    let mut tls = tls_connect_sni(s.proxy.addr(), &without_sni(&anonymous), "localhost")
        .expect("handshake without SNI");
    assert_echo(&mut tls, b"no sni\n", "echo");
    let got = recv(&s.default_lookups, "no SNI").by_port;
    assert_eq!(got["client"], tls.sock.local_addr().unwrap().to_string());
    assert_eq!(got["service"], "edge", "{got}");
    assert!(got["sni"].is_null(), "{got}");
    assert!(got["client_cert"].is_null(), "{got}");

    let mut tls = tls_connect_sni(s.proxy.addr(), &s.srv.tls_client(None), "pt.test")
        .expect("pass-through handshake");
    assert!(server_cert(&tls) == s.pt_cert.der);
    assert_eq!(backend_name(&mut tls), "pt");
    assert_echo(&mut tls, b"raw\n", "echo");
    let got = recv(&s.pt_lookups, "pass-through").by_port;
    assert_eq!(
        got,
        json!({
            "client": tls.sock.local_addr().unwrap().to_string(),
            "service": "edge",
            "route": "pt",
            "sni": "pt.test",
            "tls_version": null,
            "cipher": null,
            "client_cert": null,
        })
    );
}

#[test]
fn the_identity_socket_answers_unknown_ports_with_an_error() {
    let s = Setup::new();
    let unused = closed_port_addr().port();
    let got = query(&s.socket, &[unused.to_string()]).remove(0);
    assert_error(&got, unused, "a port nobody uses");
    // Only the owner and the group may ask (identity_socket_mode's default).
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&s.socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o660);
    let bad = query(&s.socket, &["12ab".to_string(), "1,2,3".to_string()]);
    assert!(bad.iter().all(|b| b["error"].is_string()), "{bad:?}");
}

// ---------------------------------------------------------------------------------------------
// PROXY v2 with client certificates
// ---------------------------------------------------------------------------------------------

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const TLSFRONT_URI_SAN: u8 = 0xE0;
const TLSFRONT_CERT_SHA256: u8 = 0xE1;

#[derive(Debug)]
struct Header {
    src: SocketAddr,
    dst: SocketAddr,
    tlvs: Vec<(u8, Vec<u8>)>,
}

impl Header {
    fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }
}

/// The SSL TLV's value: client bits, verify result, sub-TLVs.
#[derive(Debug)]
struct Ssl {
    client: u8,
    verify: u32,
    subs: Vec<(u8, Vec<u8>)>,
}

fn tlv_list(mut rest: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 3, "truncated TLV: {rest:02x?}");
        let n = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        assert!(rest.len() >= 3 + n, "TLV {:#x} overruns", rest[0]);
        out.push((rest[0], rest[3..3 + n].to_vec()));
        rest = &rest[3 + n..];
    }
    out
}

fn parse_ssl(v: &[u8]) -> Ssl {
    assert!(v.len() >= 5, "SSL TLV too short: {v:02x?}");
    Ssl {
        client: v[0],
        verify: u32::from_be_bytes([v[1], v[2], v[3], v[4]]),
        subs: tlv_list(&v[5..]),
    }
}

/// Reads one v2 header (TCP over IPv4) off the socket, nothing more.
fn parse_v2(s: &mut TcpStream) -> Header {
    let mut fixed = [0u8; 16];
    s.read_exact(&mut fixed).expect("PROXY v2 header");
    assert_eq!(&fixed[..12], V2_SIGNATURE, "v2 signature");
    assert_eq!(fixed[12], 0x21, "version 2, command PROXY");
    assert_eq!(fixed[13], 0x11, "AF_INET, STREAM");
    let mut body = vec![0u8; u16::from_be_bytes([fixed[14], fixed[15]]) as usize];
    s.read_exact(&mut body).expect("PROXY v2 body");
    let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    Header {
        src: SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
        dst: SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
        tlvs: tlv_list(&body[12..]),
    }
}

/// A backend that hands the parsed header to the test, then echoes.
fn header_backend() -> (Backend, mpsc::Receiver<Header>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = Backend::start(move |mut s, stats| {
        let header = parse_v2(&mut s);
        let _ = tx.lock().unwrap().send(header);
        echo_conn(s, stats);
    });
    (backend, rx)
}

#[test]
fn proxy_v2_names_the_client_certificate() {
    let env = TestEnv::new();
    let srv = Ca::new(&env, "srv");
    let clients = Ca::new(&env, "clients");
    let server_cert = srv.server("edge", &["edge.test"]);
    let cert = clients.client_cert(
        "billing",
        &ClientId::cn("billing").uri("spiffe://corp/ns/billing/sa/api"),
    );
    let (backend, headers) = header_backend();
    let mut toml = global_toml(&[]);
    toml += &service_toml(
        "edge",
        Some(backend.addr),
        &server_cert,
        &[
            r#"proxy_protocol = "v2""#,
            r#"client_auth = "optional""#,
            &format!("client_ca = {}", toml_path(&clients.cert_pem)),
        ],
    );
    let proxy = serve(&env, &toml);

    let cfg = client_config(&[&srv], &ClientOpts::tls13(), Some(&cert));
    let mut tls = tls_connect_sni(proxy.addr(), &cfg, "edge.test").expect("handshake");
    assert_echo(&mut tls, b"with a certificate\n", "echo");
    let h = headers.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(h.src, tls.sock.local_addr().unwrap());
    assert_eq!(h.dst, proxy.addr());
    assert_eq!(h.tlv(PP2_TYPE_AUTHORITY), Some(&b"edge.test"[..]));
    let ssl = parse_ssl(h.tlv(PP2_TYPE_SSL).expect("SSL TLV"));
    assert_eq!(
        ssl.client & (PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN),
        PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN,
        "{ssl:?}"
    );
    assert_eq!(ssl.verify, 0, "a verified certificate: {ssl:?}");
    let cn = ssl.subs.iter().find(|(k, _)| *k == PP2_SUBTYPE_SSL_CN);
    assert_eq!(
        cn.map(|(_, v)| v.as_slice()),
        Some(&b"billing"[..]),
        "{ssl:?}"
    );
    assert_eq!(
        h.tlv(TLSFRONT_URI_SAN),
        Some(&b"spiffe://corp/ns/billing/sa/api"[..])
    );
    let digest = h
        .tlv(TLSFRONT_CERT_SHA256)
        .expect("certificate SHA-256 TLV");
    assert_eq!(digest.len(), 32);
    assert_eq!(hex(digest), cert.sha256_hex());

    // Anonymous: SSL, not verified, and nothing about a certificate.
    let cfg = client_config(&[&srv], &ClientOpts::tls13(), None);
    let mut tls = tls_connect_sni(proxy.addr(), &cfg, "edge.test").expect("handshake");
    assert_echo(&mut tls, b"anonymous\n", "echo");
    let h = headers.recv_timeout(Duration::from_secs(10)).unwrap();
    let ssl = parse_ssl(h.tlv(PP2_TYPE_SSL).expect("SSL TLV"));
    assert_eq!(ssl.client, PP2_CLIENT_SSL, "{ssl:?}");
    assert_ne!(ssl.verify, 0, "{ssl:?}");
    assert!(
        !ssl.subs.iter().any(|(k, _)| *k == PP2_SUBTYPE_SSL_CN),
        "{ssl:?}"
    );
    assert_eq!(h.tlv(TLSFRONT_URI_SAN), None);
    assert_eq!(h.tlv(TLSFRONT_CERT_SHA256), None);
}

#[test]
fn proxy_v2_on_a_passthrough_route_carries_the_sni_but_no_ssl_tlv() {
    let env = TestEnv::new();
    let srv = Ca::new(&env, "srv");
    let server_cert = srv.server("edge", &["edge.test"]);
    let pt_cert = srv.server("pt", &["pt.test"]);
    let (tx, headers) = mpsc::channel();
    let tx = Mutex::new(tx);
    let pt = tls_backend(
        "pt",
        &pt_cert,
        TlsBackendOpts {
            before_tls: Some(Arc::new(move |s: &mut TcpStream| {
                let _ = tx.lock().unwrap().send(parse_v2(s));
            })),
            ..Default::default()
        },
    );
    let default = named_backend("default");
    let mut toml = global_toml(&[]);
    toml += &service_toml(
        "edge",
        Some(default.addr),
        &server_cert,
        &[r#"proxy_protocol = "v2""#],
    );
    toml += &route_toml("pt", &["pt.test"], pt.addr, None, &["passthrough = true"]);
    let proxy = serve(&env, &toml);

    let mut tls =
        tls_connect_sni(proxy.addr(), &srv.tls_client(None), "pt.test").expect("handshake");
    assert_eq!(backend_name(&mut tls), "pt");
    assert_echo(&mut tls, b"raw\n", "echo");
    let h = headers.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(h.src, tls.sock.local_addr().unwrap());
    assert_eq!(h.dst, proxy.addr());
    let kinds: Vec<u8> = h.tlvs.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, [PP2_TYPE_AUTHORITY], "{h:?}");
    assert_eq!(h.tlv(PP2_TYPE_AUTHORITY), Some(&b"pt.test"[..]));
}
