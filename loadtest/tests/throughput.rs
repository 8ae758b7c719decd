//! End-to-end: the backend in-process on port 0, the throughput client against
//! it, over plain TCP and over TLS (through a small rustls relay in the test).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use tlsfront_load::backend::{Backend, Mode};
use tlsfront_load::throughput::{run, Config, Direction, Report};
use tlsfront_load::tls::{client_config, server_name, Trust};

const WINDOW: Duration = Duration::from_millis(500);

fn plain(addr: SocketAddr, streams: usize, direction: Direction) -> Report {
    let cfg = Config {
        connect: addr,
        tls: None,
        streams,
        duration: WINDOW,
        direction,
    };
    let report = run(&cfg);
    assert!(!report.failed(), "{report:#?}");
    report
}

#[test]
fn plain_send_to_sink_delivers_every_byte() {
    let backend = Backend::bind("127.0.0.1:0", Mode::Sink).unwrap();
    let stats = backend.stats();
    let report = plain(backend.spawn().unwrap(), 2, Direction::Send);
    assert!(report.sent() > 0);
    // The client waited for the sink's EOF, so the sink has counted everything.
    assert_eq!(stats.bytes_in.load(Relaxed), report.sent());
    assert_eq!(stats.pattern_errors.load(Relaxed), 0);
    assert_eq!(stats.connections.load(Relaxed), 2);
}

#[test]
fn plain_receive_from_source_checks_pattern() {
    let addr = Backend::bind("127.0.0.1:0", Mode::Source)
        .unwrap()
        .spawn()
        .unwrap();
    let report = plain(addr, 1, Direction::Receive);
    assert!(report.received() > 0);
    assert_eq!(report.streams[0].corrupt_at, None);
}

#[test]
fn plain_both_through_echo_gets_everything_back() {
    let addr = Backend::bind("127.0.0.1:0", Mode::Echo)
        .unwrap()
        .spawn()
        .unwrap();
    let report = plain(addr, 2, Direction::Both);
    for s in &report.streams {
        assert!(s.sent > 0);
        assert_eq!(s.sent, s.received + s.drained);
    }
}

#[test]
fn plain_connect_failure_is_reported() {
    // Bind then drop: nothing listens on that port any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = Config {
        connect: addr,
        tls: None,
        streams: 1,
        duration: WINDOW,
        direction: Direction::Send,
    };
    let report = run(&cfg);
    assert!(report.failed());
    assert!(report.streams[0]
        .error
        .as_ref()
        .unwrap()
        .contains("connect"));
}

/// A minimal TLS terminator: TLS on the front, plain TCP to `backend`, one
/// direction copied per thread. Returns its address and the CA PEM file.
fn tls_relay(backend: SocketAddr, dir: &std::path::Path) -> (SocketAddr, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let ca_path = dir.join(format!("ca-{}.pem", backend.port()));
    std::fs::write(&ca_path, cert.pem()).unwrap();
    let config = Arc::new(
        ServerConfig::builder_with_provider(
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for sock in listener.incoming() {
            let config = config.clone();
            thread::spawn(move || relay(sock.unwrap(), config, backend));
        }
    });
    (addr, ca_path)
}

/// Half-duplex relay (TLS client first, then backend reply): enough for sink and echo tails.
fn relay(sock: TcpStream, config: Arc<ServerConfig>, backend: SocketAddr) {
    let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), sock);
    let mut back = TcpStream::connect(backend).unwrap();
    let mut back_rx = back.try_clone().unwrap();
    // Backend replies are buffered until the client is done (echo of up to a few MB).
    let replies = thread::spawn(move || {
        let mut all = Vec::new();
        back_rx.read_to_end(&mut all).unwrap();
        all
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tls.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        back.write_all(&buf[..n]).unwrap();
    }
    back.shutdown(Shutdown::Write).unwrap();
    tls.write_all(&replies.join().unwrap()).unwrap();
    tls.conn.send_close_notify();
    tls.flush().unwrap();
}

fn tls_run(mode: Mode, direction: Direction) -> Report {
    let dir = std::env::temp_dir();
    let backend = Backend::bind("127.0.0.1:0", mode).unwrap().spawn().unwrap();
    let (addr, ca) = tls_relay(backend, &dir);
    let config = client_config(Trust::CaFile(&ca), Some("TLS13_AES_128_GCM_SHA256")).unwrap();
    let name = server_name(Some("localhost"), &addr.to_string()).unwrap();
    let cfg = Config {
        connect: addr,
        tls: Some((config, name)),
        streams: 2,
        duration: WINDOW,
        direction,
    };
    let report = run(&cfg);
    std::fs::remove_file(ca).unwrap();
    assert!(!report.failed(), "{report:#?}");
    assert_eq!(
        report.streams[0].tls.as_deref(),
        Some("TLSv1_3 TLS13_AES_128_GCM_SHA256")
    );
    report
}

#[test]
fn tls_send_verifies_ca_and_closes_cleanly() {
    let report = tls_run(Mode::Sink, Direction::Send);
    assert!(report.sent() > 0);
    assert_eq!(report.streams[0].close, "eof after close_notify");
}

#[test]
fn tls_both_through_echo_gets_everything_back() {
    let report = tls_run(Mode::Echo, Direction::Both);
    for s in &report.streams {
        assert!(s.sent > 0);
        assert_eq!(s.sent, s.received + s.drained);
    }
}

#[test]
fn wrong_ca_fails_the_handshake() {
    let dir = std::env::temp_dir();
    let backend = Backend::bind("127.0.0.1:0", Mode::Sink)
        .unwrap()
        .spawn()
        .unwrap();
    let (addr, _ca) = tls_relay(backend, &dir);
    let (_other, other_ca) = tls_relay(backend, &dir);
    let config = client_config(Trust::CaFile(&other_ca), None).unwrap();
    let name = server_name(None, "localhost:1").unwrap();
    let cfg = Config {
        connect: addr,
        tls: Some((config, name)),
        streams: 1,
        duration: WINDOW,
        direction: Direction::Send,
    };
    let report = run(&cfg);
    assert!(
        report.streams[0]
            .error
            .as_ref()
            .unwrap()
            .contains("handshake"),
        "{report:#?}"
    );
}
