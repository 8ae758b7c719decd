//! The admin endpoint (`[global] admin`): `/metrics` counts a known load exactly and parses
//! with the Prometheus project's own Python parser; `/ready` turns 503 on SIGTERM while the
//! listeners still accept (`shutdown_delay`); `/live`; a Unix socket endpoint; bad requests.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::*;
use common::*;

/// True when the Python Prometheus client (its text parser) is installed; panics when the
/// peers must be there (CI).
fn have_parser(test: &str) -> bool {
    have_peer(
        test,
        &["python3", "-c", "import prometheus_client.parser"],
        "prometheus_client (pip install -r tests/peers/requirements.txt)",
    )
}

/// Sends `request` and returns (status, body).
fn exchange(mut stream: impl Read + Write, request: &str) -> (u16, String) {
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    exchange(
        stream,
        &format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n"),
    )
}

/// One parsed sample: name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// Parses exposition text with `prometheus_client.parser` (which fails on malformed input).
fn parse(text: &str) -> Vec<Sample> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the output: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sum of the samples called `name` whose labels include every pair in `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[test]
fn metrics_count_a_known_load_exactly_and_parse_as_prometheus_text() {
    if !have_parser("metrics_count_a_known_load_exactly_and_parse_as_prometheus_text") {
        return;
    }
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .global("admin = \"127.0.0.1:0\"")
        .start();
    let admin = admin_addr(&proxy);

    // Four full handshakes (three one-off clients, the first connection of a resuming one),
    // two resumed ones, each echoing a different number of bytes; then one client that
    // does not speak TLS.
    let mut no_resumption = (*env.client_with(&ClientOpts::tls13())).clone();
    no_resumption.resumption = rustls::client::Resumption::disabled();
    let fresh = std::sync::Arc::new(no_resumption);
    let resuming = resuming_client(&env, &ClientOpts::tls13());
    let mut total = 0u64;
    for (i, cfg) in [&fresh, &fresh, &fresh, &resuming, &resuming, &resuming]
        .into_iter()
        .enumerate()
    {
        let mut tls = tls_connect_ok(proxy.addr(), cfg);
        let data = random_bytes(10_000 + 1_000 * i);
        assert_echo(&mut tls, &data, "echo");
        total += data.len() as u64;
        let end = close_session(&mut tls, Duration::from_secs(10));
        assert!(
            end.eof.as_ref().is_some_and(Eof::is_clean),
            "{}",
            end.summary()
        );
    }
    let mut garbage = TcpStream::connect(proxy.addr()).unwrap();
    garbage.write_all(b"HELO not TLS\r\n\r\n").unwrap();
    let _ = garbage.read(&mut [0u8; 64]);
    let garbage_peer = garbage.local_addr().unwrap();
    let garbage_reason = close_reason(&proxy, garbage_peer);
    assert!(
        proxy.wait_for_log_count("closed", 7, Duration::from_secs(10)),
        "{}",
        proxy.log()
    );

    let (status, text) = get(admin, "/metrics");
    assert_eq!(status, 200, "{text}");
    let m = parse(&text);
    let svc = [("service", "svc"), ("worker", "0")];
    let ok = |resumed: &str| {
        sum(
            &m,
            "tlsfront_handshakes_total",
            &[
                svc[0],
                ("result", "ok"),
                ("version", "TLSv1.3"),
                ("suite", "TLS13_AES_128_GCM_SHA256"),
                ("resumed", resumed),
            ],
        )
    };
    assert_eq!(ok("false"), 4.0, "{text}");
    assert_eq!(ok("true"), 2.0, "{text}");
    assert_eq!(
        sum(
            &m,
            "tlsfront_handshakes_total",
            &[svc[0], ("result", &garbage_reason)]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(sum(&m, "tlsfront_handshakes_total", &[]), 7.0, "{text}");
    assert_eq!(
        sum(
            &m,
            "tlsfront_bytes_total",
            &[svc[0], ("direction", "client_to_backend")]
        ),
        total as f64
    );
    assert_eq!(
        sum(
            &m,
            "tlsfront_bytes_total",
            &[svc[0], ("direction", "backend_to_client")]
        ),
        total as f64
    );
    assert_eq!(sum(&m, "tlsfront_connections_accepted_total", &svc), 7.0);
    assert_eq!(sum(&m, "tlsfront_connections_active", &svc), 0.0);
    assert_eq!(sum(&m, "tlsfront_connections_closed_total", &svc), 7.0);
    assert_eq!(
        sum(
            &m,
            "tlsfront_connections_closed_total",
            &[svc[0], ("reason", "done")]
        ),
        6.0,
        "{text}"
    );
    assert_eq!(
        sum(&m, "tlsfront_handshake_duration_seconds_count", &svc),
        6.0
    );
    assert_eq!(
        sum(
            &m,
            "tlsfront_handshake_duration_seconds_bucket",
            &[svc[0], ("le", "+Inf")]
        ),
        6.0
    );
    assert_eq!(sum(&m, "tlsfront_offload_total", &svc), 6.0, "{text}");
    assert_eq!(
        sum(&m, "tlsfront_worker_handshakes_total", &[("worker", "0")]),
        6.0
    );
    assert_eq!(
        sum(&m, "tlsfront_worker_handshakes_resumed_total", &[]),
        2.0
    );
    assert_eq!(sum(&m, "tlsfront_worker_accepted_total", &[]), 7.0);
    assert_eq!(
        sum(&m, "tlsfront_backend_connect_failures_total", &svc),
        0.0
    );
    assert_eq!(sum(&m, "tlsfront_ready", &[]), 1.0);
    assert_eq!(sum(&m, "tlsfront_draining", &[]), 0.0);
    assert_eq!(
        sum(&m, "tlsfront_ticket_keys", &[svc[0], ("source", "random")]),
        1.0,
        "{text}"
    );
}

#[test]
fn ready_turns_503_on_sigterm_while_the_listeners_still_accept() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let mut proxy = env
        .config(echo.addr)
        .global("admin = \"127.0.0.1:0\"")
        .global("shutdown_delay = \"3s\"")
        .start();
    let admin = admin_addr(&proxy);
    assert_eq!(get(admin, "/ready"), (200, "ready\n".into()));
    let cfg = env.client_with(&ClientOpts::tls13());
    let mut open = tls_connect_ok(proxy.addr(), &cfg);
    assert_echo(&mut open, b"before", "before SIGTERM");

    proxy.signal(Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while get(admin, "/ready").0 != 503 {
        assert!(Instant::now() < deadline, "/ready still 200 after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(admin, "/ready"), (503, "draining\n".into()));
    assert_eq!(get(admin, "/live").0, 200);
    // Not ready, yet still serving: new connections and the open one.
    let mut late = tls_connect_ok(proxy.addr(), &cfg);
    assert_echo(
        &mut late,
        b"after SIGTERM",
        "a connection made after SIGTERM",
    );
    assert_echo(&mut open, b"still open", "the open connection");
    let (_, metrics) = get(admin, "/metrics");
    assert!(metrics.contains("\ntlsfront_draining 1\n"), "{metrics}");
    assert!(metrics.contains("\ntlsfront_ready 0\n"), "{metrics}");

    // After the delay the listeners close and the drain begins.
    assert!(
        wait_until(Duration::from_secs(8), || TcpStream::connect(proxy.addr())
            .is_err()),
        "the listener still accepts after shutdown_delay:\n{}",
        proxy.log()
    );
    drop((open, late));
    let status = proxy.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        proxy.log()
    );
}

#[test]
fn a_unix_socket_endpoint_answers_and_its_file_goes_at_exit() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let path = env.dir.path().join("admin.sock");
    let mut proxy = env
        .config(echo.addr)
        .global(&format!("admin = {}", toml_path(&path)))
        .start();
    let ask = |request: &str| exchange(UnixStream::connect(&path).unwrap(), request);
    assert_eq!(ask("GET /live HTTP/1.1\r\n\r\n"), (200, "live\n".into()));
    assert_eq!(ask("GET /ready HTTP/1.0\r\n\r\n").0, 200);
    // Bad requests get an HTTP error and the endpoint goes on answering.
    assert_eq!(ask("DELETE /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(ask("GET /admin HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(ask("\u{16}\u{3}\u{1} garbage\r\n\r\n").0, 400);
    let (status, text) = ask("GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE tlsfront_handshakes_total counter"),
        "{text}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);

    proxy.signal(Signal::TERM);
    assert!(proxy
        .wait_exit(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    assert!(!path.exists(), "the admin socket file outlived the process");
}

#[test]
fn a_bad_admin_address_is_a_config_error() {
    let env = TestEnv::new();
    let toml = env
        .config("127.0.0.1:9")
        .global("admin = \"not an address\"")
        .to_toml();
    expect_config_error(&env, &toml, "admin =", "admin");
}

#[test]
fn an_admin_address_in_use_stops_start_up_with_its_name() {
    let env = TestEnv::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap();
    let path = env.write_config(
        &env.config("127.0.0.1:9")
            .global(&format!("admin = \"{at}\""))
            .to_toml(),
    );
    let out = run_tlsfront(
        ["serve".as_ref(), "--config".as_ref(), path.as_os_str()],
        Duration::from_secs(15),
    );
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains(&format!("admin {at}")), "{out:?}");
    assert!(!out.stderr.contains("ready workers="), "{out:?}");
}
